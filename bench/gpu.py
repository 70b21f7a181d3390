"""GPU benchmark: out-of-the-box diffusers vs the sandbox worker's engine, side by side.

Runs on the GPU machine (no network): builds random-weight SD1.5 / SDXL single-file
checkpoints at full size with ``sandbox.worker.synth``, then measures, each in a fresh
process:

* baseline: ``from_single_file(..., torch_dtype=fp16)`` + ``.to("cuda")``, diffusers defaults
  (SDPA, fp32-upcast SDXL VAE), Euler, CFG 7, 50 steps, batch 1;
* ours, cold: ``generate(engine, spec)`` with ``optimize=True`` (fp16, channels_last, fused
  QKV, torch.compile, bf16 VAE), compile caches in a fresh directory;
* ours, warm: a second process on the same cache directory (what a worker restart costs).

End-to-end time is prompt -> PIL image (the baseline's output); PNG encoding is timed
separately. Usage::

    python bench/gpu.py all --out "$OUT" --work /tmp/bench [--only sd15|sdxl] [--extras]
    python bench/gpu.py all --device cpu --steps 2 --size 64 --no-compile ...   # dry run
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

PROMPT = "a photo of an astronaut riding a horse on mars, highly detailed, sharp focus"
NEGATIVE = "blurry, lowres"
SIZES = {"sd15": 512, "sdxl": 1024}


def _result(obj: dict[str, Any]) -> None:
    print("RESULT " + json.dumps(obj), flush=True)


def _env_info() -> dict[str, Any]:
    import diffusers
    import torch
    import transformers

    info: dict[str, Any] = {
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def cmd_build(args: argparse.Namespace) -> None:
    import torch

    from sandbox.worker import synth

    path = Path(args.path)
    if path.exists():
        _result({"phase": "build", "kind": args.kind, "skipped": True})
        return
    device = "cuda" if torch.cuda.is_available() else "cpu"
    t0 = time.perf_counter()
    synth.write_checkpoint(args.kind, path, seed=11, dtype="float16", device=device)
    _result(
        {
            "phase": "build",
            "kind": args.kind,
            "seconds": time.perf_counter() - t0,
            "bytes": path.stat().st_size,
        }
    )


def _sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def cmd_baseline(args: argparse.Namespace) -> None:
    os.environ["HF_HUB_OFFLINE"] = "1"
    import torch
    from diffusers import (
        EulerDiscreteScheduler,
        StableDiffusionPipeline,
        StableDiffusionXLPipeline,
    )

    from sandbox.worker.pipeline import CONFIG_ROOT, load_tokenizer

    t0 = time.perf_counter()
    kw: dict[str, Any] = {
        "config": str(CONFIG_ROOT / args.kind),
        "local_files_only": True,
        "torch_dtype": getattr(torch, args.dtype),
        "tokenizer": load_tokenizer(),
    }
    if args.kind == "sdxl":
        kw["tokenizer_2"] = load_tokenizer("!")
        pipe = StableDiffusionXLPipeline.from_single_file(args.path, **kw)
    else:
        pipe = StableDiffusionPipeline.from_single_file(
            args.path, safety_checker=None, feature_extractor=None, **kw
        )
    pipe.to(args.device)
    euler: Any = EulerDiscreteScheduler
    pipe.scheduler = euler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    _sync()
    load_s = time.perf_counter() - t0

    def once() -> float:
        gen = torch.Generator("cpu").manual_seed(1)
        t = time.perf_counter()
        pipe(
            PROMPT,
            negative_prompt=NEGATIVE,
            num_inference_steps=args.steps,
            guidance_scale=7.0,
            height=args.size,
            width=args.size,
            generator=gen,
        ).images[0].load()
        _sync()
        return time.perf_counter() - t

    first = once()
    times = [once() for _ in range(args.runs)]
    _result(
        {
            "phase": "baseline",
            "kind": args.kind,
            "load_s": load_s,
            "first_s": first,
            "e2e_s": statistics.median(times),
            "runs": times,
            **_env_info(),
        }
    )


def cmd_engine(args: argparse.Namespace) -> None:
    import torch

    from sandbox.worker import infotext
    from sandbox.worker.generate import generate
    from sandbox.worker.pipeline import Engine

    engine = Engine(
        compile_mode=None if args.no_compile else args.mode,
        compile_scope=args.scope,
        compile_cache_dir=args.cache,
    )
    spec = {
        "model_path": args.path,
        "model_sha256": "0" * 64,
        "prompt": PROMPT,
        "negative_prompt": NEGATIVE,
        "steps": args.steps,
        "cfg_scale": 7.0,
        "seed": 1,
        "width": args.size,
        "height": args.size,
        "sampler": "Euler",
        "dtype": args.dtype,
        "device": args.device,
        "optimize": args.device == "cuda",
    }
    t0 = time.perf_counter()
    engine.load(args.path, dtype=args.dtype, device=args.device, optimize=spec["optimize"])
    _sync()
    load_s = time.perf_counter() - t0
    mode, scope = engine._compile_choice()

    def once() -> tuple[float, Any]:
        t = time.perf_counter()
        out = generate(engine, spec)[0]
        return time.perf_counter() - t, out

    first, image = once()
    saved = engine.save_compile_cache() if args.save_cache else None
    times = [once()[0] for _ in range(args.runs)]
    # PNG cost on its own, to compare with the baseline's PIL output.
    import io

    from PIL import Image

    pil = Image.open(io.BytesIO(image.png))
    pil.load()
    t = time.perf_counter()
    for _ in range(3):
        infotext.png_bytes(pil, image.infotext)
    png_s = (time.perf_counter() - t) / 3
    steady = statistics.median(times)
    _result(
        {
            "phase": "engine",
            "kind": args.kind,
            "variant": f"{mode or 'eager'}/{scope}",
            "cache_state": args.cache_state,
            "load_s": load_s,
            "first_s": first,
            "compile_s": max(0.0, first - steady),
            "e2e_png_s": steady,
            "png_s": png_s,
            "e2e_s": steady - png_s,
            "runs": times,
            "mega_cache_bytes": saved.stat().st_size if saved else None,
            "max_mem_gib": torch.cuda.max_memory_allocated() / 2**30
            if torch.cuda.is_available()
            else None,
            **_env_info(),
        }
    )


# --- orchestration ----------------------------------------------------------------------------


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

    def model(self, kind: str, variants: list[tuple[str, str]]) -> None:
        a = self.args
        path = Path(a.work) / f"{kind}.safetensors"
        self.sub("build", "--kind", kind, "--path", str(path), need=60)
        if not path.exists():
            return
        common = self.common(kind)
        self.sub("baseline", *common, need=40)
        for i, (mode, scope) in enumerate(variants):
            cache = str(Path(a.work) / f"cache-{kind}-{i}")
            extra = ["--mode", mode, "--scope", scope, "--cache", cache]
            if a.no_compile:
                extra.append("--no-compile")
            cold = self.sub("engine", *common, *extra, "--cache-state", "cold", "--save-cache",
                            need=90)  # fmt: skip
            if cold is None and i == 0 and len(variants) > 1:
                continue  # primary failed: try the next variant
            self.sub("engine", *common, *extra, "--cache-state", "warm", need=40)
            if not a.extras:
                break


def table(results: list[dict[str, Any]]) -> str:
    rows = [
        "| model | variant | e2e s/img | it/s e2e | speedup | load s | compile s | png s |",
        "|---|---|---|---|---|---|---|---|",
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
        rows.append(
            f"| {r['kind']} | {variant} | {r['e2e_s']:.3f} | {steps / r['e2e_s']:.1f} | {speed} "
            f"| {r['load_s']:.1f} | {compile_s} | {png} |"
        )
    return "\n".join(rows)


def cmd_all(args: argparse.Namespace) -> None:
    Path(args.out).mkdir(parents=True, exist_ok=True)
    Path(args.work).mkdir(parents=True, exist_ok=True)
    runner = Runner(args)
    kinds = [args.only] if args.only else ["sd15", "sdxl"]
    for kind in kinds:
        if kind == "sd15":
            variants = [("reduce-overhead", "unet"), ("max-autotune-no-cudagraphs", "unet"),
                        ("max-autotune-no-cudagraphs", "blocks")]  # fmt: skip
        else:
            variants = [("max-autotune-no-cudagraphs", "blocks"), ("default", "blocks"),
                        ("reduce-overhead", "unet")]  # fmt: skip
        if args.variant:
            mode, _, scope = args.variant.partition("/")
            variants = [(mode, scope or "auto")]
        runner.model(kind, variants)
    for r in runner.results:
        r.setdefault("steps", args.steps)
    text = table(runner.results)
    (Path(args.out) / "gpu_results.json").write_text(json.dumps(runner.results, indent=1))
    (Path(args.out) / "gpu_table.md").write_text(text + "\n")
    gpu = next((r.get("gpu") for r in runner.results if r.get("gpu")), args.device)
    print(f"\nGPU: {gpu}\n{text}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    for name in ("all", "build", "baseline", "engine"):
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
        s.add_argument("--extras", action="store_true")
        s.add_argument("--variant", default=None, help="mode/scope, e.g. default/blocks")
        s.add_argument("--deadline", type=float, default=560.0)
    args = p.parse_args()
    if args.size == 0 and args.cmd != "all":
        args.size = SIZES[args.kind]
    {"all": cmd_all, "build": cmd_build, "baseline": cmd_baseline, "engine": cmd_engine}[args.cmd](
        args
    )


if __name__ == "__main__":
    main()
