"""GPU benchmark: the sandbox worker's engine against out-of-the-box diffusers, same run.

Runs on the GPU machine (no network): builds random-weight SD1.5 / SDXL single-file
checkpoints at full size (and a LoRA) with ``tests.synth``; every measurement runs in a fresh
process.

* ``all`` (issue 15, what a user feels): per model, out-of-box diffusers three times (the median
  and its spread), then our engine with a fresh compile cache and again with the warm cache:
  time from process start to the first image, the load and its split, the next images in the
  same process, the compile the worker does while idle, and a LoRA weight change against the
  same job without the change (``gpu_session.py``);
* ``steady``: steady-state variants with ``--check`` (against an eager run) and
  ``--lora-check`` (``gpu_steady.py``); ``explore``: where the time goes (``gpu_explore.py``).

Usage::

    python bench/gpu.py all --out "$OUT" --work /tmp/bench [--only sd15|sdxl] [--steps 50]
    python bench/gpu.py steady --out "$OUT" [--extras] [--check] [--lora-check]
    python bench/gpu.py explore --kind sdxl --path /tmp/bench/sdxl.safetensors
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from gpu_common import SIZES
from gpu_explore import cmd_explore
from gpu_session import add_arguments as add_session_arguments
from gpu_session import cmd_session
from gpu_steady import cmd_baseline, cmd_build, cmd_engine


class Runner:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.deadline: float = time.monotonic() + float(args.deadline)
        self.results: list[dict[str, Any]] = []
        self.log = Path(args.out) / "bench_log.txt"

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def sub(self, *argv: str, need: float = 30.0) -> dict[str, Any] | None:
        if self.left() < need:
            self.results.append({"phase": argv[0], "skipped": "deadline", "argv": list(argv)})
            return None
        # "--t0 NOW": the child counts its times from this moment, just before it starts.
        argv = tuple(str(time.time()) if a == "NOW" else a for a in argv)
        cmd = [sys.executable, str(Path(__file__).resolve()), *argv]
        t0 = time.perf_counter()
        try:
            proc = subprocess.run(
                cmd, capture_output=True, text=True, timeout=max(10.0, self.left() - 5)
            )
            out, err, rc = proc.stdout, proc.stderr, proc.returncode
        except subprocess.TimeoutExpired as exc:
            out = exc.stdout.decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
            err, rc = "timeout", -9
        with self.log.open("a") as fh:
            fh.write(f"$ {' '.join(argv)}  ({time.perf_counter() - t0:.1f}s rc={rc})\n")
            fh.write(out[-4000:] + "\n" + err[-6000:] + "\n")
        for line in reversed(out.splitlines()):
            if line.startswith("RESULT "):
                res: dict[str, Any] = json.loads(line[len("RESULT ") :])
                self.results.append(res)
                print(json.dumps(res), flush=True)
                return res
        fail = {"phase": argv[0], "argv": list(argv), "error": err.strip()[-800:], "rc": rc}
        self.results.append(fail)
        print(json.dumps(fail), flush=True)
        return None

    def common(self, kind: str) -> list[str]:
        a = self.args
        size = str(a.size or SIZES[kind])
        return ["--kind", kind, "--path", str(Path(a.work) / f"{kind}.safetensors"),
                "--steps", str(a.steps), "--size", size, "--device", a.device,
                "--dtype", a.dtype, "--runs", str(a.runs)]  # fmt: skip

    def model(self, kind: str, variants: list[tuple[str, str, list[str]]]) -> None:
        a = self.args
        path = Path(a.work) / f"{kind}.safetensors"
        self.sub("build", "--kind", kind, "--path", str(path), need=60)
        if not path.exists():
            return
        common = self.common(kind)
        self.sub("baseline", *common, need=40)
        extras = a.extras is not None and (not a.extras or kind in a.extras)
        for i, (mode, scope, more) in enumerate(variants):
            cache = str(Path(a.work) / f"cache-{kind}-{i}")
            extra = ["--mode", mode, "--scope", scope, "--cache", cache, "--graphs", a.graphs,
                     "--attention", a.attention, "--compile-vae", a.compile_vae,
                     "--work", a.work, *more]  # fmt: skip
            if a.no_compile:
                extra.append("--no-compile")
            checks = ["--check"] if a.check and i == 0 else []
            cold = self.sub("engine", *common, *extra, "--cache-state", "cold", "--save-cache",
                            *checks, need=90)  # fmt: skip
            if cold is None:
                continue  # no cold run (failed or out of time): a "warm" run would be cold
            lora = ["--lora-check"] if a.lora_check and i == 0 and kind == "sd15" else []
            self.sub("engine", *common, *extra, "--cache-state", "warm", *lora, need=40)
            if not extras:
                break

    def session(self, kind: str) -> None:
        """The issue-15 flow: out-of-box x3, ours with a cold then a warm compile cache."""
        a = self.args
        work = Path(a.work)
        path = work / f"{kind}.safetensors"
        lora = work / f"lora-{kind}.safetensors"
        self.sub("build", "--kind", kind, "--path", str(path), "--lora", str(lora), need=60)
        if not path.exists():
            return
        common = self.common(kind)
        for _ in range(a.baseline_runs):
            self.sub("session", *common, "--impl", "baseline", "--t0", "NOW", need=40)
        common += ["--scope", a.scope]
        cache = str(work / f"cache-{kind}-{a.scope}")
        if not a.keep_cache:
            shutil.rmtree(cache, ignore_errors=True)
        self.sub("session", *common, "--impl", "ours", "--cache", cache, "--t0", "NOW",
                 need=90)  # fmt: skip
        for _ in range(a.warm_runs):
            self.sub("session", *common, "--impl", "ours", "--cache", cache, "--t0", "NOW",
                     "--lora", str(lora), need=40)  # fmt: skip


def steady_table(results: list[dict[str, Any]]) -> str:
    rows = [
        "| model | variant | e2e s/img | it/s e2e | speedup | load s | compile s | png s "
        "| vs eager |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    base = {r["kind"]: r for r in results if r.get("phase") == "baseline"}
    for r in results:
        if r.get("phase") not in ("baseline", "engine") or "e2e_s" not in r:
            continue
        steps = r.get("steps", 50)
        b = base.get(r["kind"])
        speed = f"{b['e2e_s'] / r['e2e_s']:.2f}x" if b and r["phase"] == "engine" else "1.00x"
        variant = (
            "diffusers out of the box"
            if r["phase"] == "baseline"
            else (f"ours {r['variant']} ({r['cache_state']} cache)")
        )
        compile_s = f"{r['compile_s']:.1f}" if r.get("compile_s") is not None else "-"
        png = f"{r['png_s']:.3f}" if r.get("png_s") is not None else "-"
        check = r.get("check", {}).get("vs_eager")
        vs = "-"
        if check:
            vs = "identical" if check["identical"] else f"{check['psnr_db']} dB"
        rows.append(
            f"| {r['kind']} | {variant} | {r['e2e_s']:.3f} | {steps / r['e2e_s']:.1f} | {speed} "
            f"| {r['load_s']:.1f} | {compile_s} | {png} | {vs} |"
        )
    return "\n".join(rows)


def _median_spread(values: list[float]) -> str:
    if not values:
        return "-"
    med = statistics.median(values)
    if len(values) == 1:
        return f"{med:.2f}"
    return f"{med:.2f} ({min(values):.2f}-{max(values):.2f})"


def session_table(results: list[dict[str, Any]]) -> str:
    """Per model: out-of-box (median of its runs, min-max) against ours with a warm cache."""
    rows = [
        "| model | measure | out-of-box, median (spread) | ours, warm compile cache | ratio |",
        "|---|---|---|---|---|",
    ]
    sessions = [r for r in results if r.get("phase") == "session" and "next_median_s" in r]
    for kind in dict.fromkeys(r["kind"] for r in sessions):
        base = [r for r in sessions if r["kind"] == kind and r["impl"] == "baseline"]
        ours_all = [r for r in sessions if r["kind"] == kind and r["impl"] == "ours"]
        cold, warm = (ours_all[0], ours_all[1:]) if ours_all else (None, [])
        if not warm:
            warm = ours_all
        for label, key, better in (
            ("first image from process start, s", "first_from_start_s", "lower"),
            ("  of which load, s", "load_s", "lower"),
            ("  of which first image after load, s", "first_image_s", "lower"),
            ("next image, s/img", "next_median_s", "higher"),
            ("next image to PIL (ours less its PNG encode), s/img", "next_to_pil_s", "higher"),
        ):
            base_key = "next_median_s" if key == "next_to_pil_s" else key  # its output is PIL
            b = [float(r[base_key]) for r in base if base_key in r]
            o = [float(r[key]) for r in warm if key in r]
            ratio = "-"
            if b and o:
                bm, om = statistics.median(b), statistics.median(o)
                ratio = f"{bm / om:.2f}x faster" if better == "higher" else f"{om / bm:.2f} of it"
            rows.append(
                f"| {kind} | {label} | {_median_spread(b)} | {_median_spread(o)} | {ratio} |"
            )
        if cold is not None and "warm_up_s" in cold:
            rows.append(
                f"| {kind} | compile while idle after the first image, s (cold / warm cache) "
                f"| - | {cold['warm_up_s']:.1f} / "
                f"{_median_spread([float(r['warm_up_s']) for r in warm if 'warm_up_s' in r])} | - |"
            )
        for r in warm:
            lora = r.get("lora")
            if isinstance(lora, dict) and "change_over_same_s" in lora:
                rows.append(
                    f"| {kind} | LoRA weight change over the same job, s | - "
                    f"| {lora['change_over_same_s']:+.3f} (apply {lora['change_lora_s']:.3f}; "
                    f"add {lora['add_lora_s']:.2f}; removed identical {lora['removed_identical']};"
                    f" weight 0 identical {lora['w0_identical']}) | - |"
                )
            if r.get("load_split"):
                split = ", ".join(f"{k} {v:.2f}" for k, v in r["load_split"].items())
                rows.append(f"| {kind} | ours load split, s | - | {split} | - |")
    return "\n".join(rows)


def cmd_all(args: argparse.Namespace) -> None:
    """What a user feels (issue 15): first image, next images, LoRA changes, per model."""
    Path(args.out).mkdir(parents=True, exist_ok=True)
    Path(args.work).mkdir(parents=True, exist_ok=True)
    runner = Runner(args)
    for kind in [args.only] if args.only else ["sd15", "sdxl"]:
        runner.session(kind)
    text = session_table(runner.results)
    (Path(args.out) / f"gpu_session{args.tag}.json").write_text(
        json.dumps(runner.results, indent=1)
    )
    (Path(args.out) / f"gpu_session{args.tag}.md").write_text(text + "\n")
    gpu = next((r.get("gpu") for r in runner.results if r.get("gpu")), args.device)
    tv = next((r.get("torch") for r in runner.results if r.get("torch")), "?")
    print(f"\nGPU: {gpu}, torch {tv}, {args.steps} steps\n{text}")


def cmd_steady(args: argparse.Namespace) -> None:
    Path(args.out).mkdir(parents=True, exist_ok=True)
    Path(args.work).mkdir(parents=True, exist_ok=True)
    runner = Runner(args)
    kinds = [args.only] if args.only else ["sd15", "sdxl"]
    for kind in kinds:
        # The worker's own choice first ("auto": per-block compile + whole-UNet CUDA graph);
        # --extras [KIND...] adds alternatives.
        variants: list[tuple[str, str, list[str]]] = [("auto", "auto", [])]
        if kind == "sdxl":
            variants.append(("auto", "auto", ["--compile-vae", "off"]))
        else:
            variants.append(("auto", "blocks", []))  # resnets compiled too
        if args.variant:
            mode, _, scope = args.variant.partition("/")
            variants = [(mode, scope or "auto", [])]
        runner.model(kind, variants)
    for r in runner.results:
        r.setdefault("steps", args.steps)
    text = steady_table(runner.results)
    (Path(args.out) / "gpu_steady.json").write_text(json.dumps(runner.results, indent=1))
    (Path(args.out) / "gpu_steady.md").write_text(text + "\n")
    gpu = next((r.get("gpu") for r in runner.results if r.get("gpu")), args.device)
    tv = next((r.get("torch") for r in runner.results if r.get("torch")), "?")
    print(f"\nGPU: {gpu}, torch {tv}\n{text}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    for name in ("all", "steady", "build", "baseline", "engine", "explore", "session"):
        s = sub.add_parser(name)
        s.add_argument("--kind", default="sd15")
        s.add_argument("--path", default="")
        s.add_argument("--steps", type=int, default=50)
        s.add_argument("--size", type=int, default=0)
        s.add_argument("--runs", type=int, default=3)
        s.add_argument("--device", default="cuda")
        s.add_argument("--dtype", default="float16")
        s.add_argument("--no-compile", action="store_true")
        s.add_argument("--mode", default="auto")
        s.add_argument("--scope", default="auto")
        s.add_argument("--cache", default=None)
        s.add_argument("--cache-state", default="cold")
        s.add_argument("--save-cache", action="store_true")
        s.add_argument("--out", default="bench-out")
        s.add_argument("--work", default="/tmp/bench")
        s.add_argument("--only", choices=["sd15", "sdxl"], default=None)
        s.add_argument("--extras", nargs="*", default=None, help="alternatives too [for KINDs]")
        s.add_argument("--variant", default=None, help="mode/scope, e.g. default/blocks")
        s.add_argument("--deadline", type=float, default=560.0)
        s.add_argument("--graphs", default="auto", choices=["auto", "on", "off"])
        s.add_argument("--attention", default="auto")
        s.add_argument("--compile-vae", default="auto", choices=["auto", "on", "off"])
        s.add_argument("--check", action="store_true", help="compare with an eager run")
        s.add_argument("--lora-check", action="store_true")
        s.add_argument("--explore-attention", nargs="*", default=[])
        s.add_argument("--baseline-runs", type=int, default=3)
        s.add_argument("--warm-runs", type=int, default=1)
        s.add_argument("--keep-cache", action="store_true")
        s.add_argument("--tag", default="")
        add_session_arguments(s)
    args = p.parse_args()
    if args.size == 0 and args.cmd != "all":
        args.size = SIZES[args.kind]
    cmds = {"all": cmd_all, "steady": cmd_steady, "build": cmd_build, "baseline": cmd_baseline,
            "engine": cmd_engine, "explore": cmd_explore, "session": cmd_session}  # fmt: skip
    cmds[args.cmd](args)


if __name__ == "__main__":
    main()
