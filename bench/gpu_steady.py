"""Steady-state phases of the GPU benchmark: build, out-of-box baseline, the engine's variants."""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Any

from gpu_common import NEGATIVE, PROMPT, diff, env_info, result, sync


def cmd_build(args: argparse.Namespace) -> None:
    import torch

    from tests import synth

    path = Path(args.path)
    lora = Path(args.lora) if getattr(args, "lora", None) else None
    if lora is not None and not lora.exists():
        synth.write_lora(args.kind, lora, seed=5, rank=32)
    if path.exists():
        result({"phase": "build", "kind": args.kind, "skipped": True})
        return
    device = "cuda" if torch.cuda.is_available() else "cpu"
    t0 = time.perf_counter()
    synth.write_checkpoint(args.kind, path, seed=11, dtype="float16", device=device)
    result(
        {
            "phase": "build",
            "kind": args.kind,
            "seconds": time.perf_counter() - t0,
            "bytes": path.stat().st_size,
        }
    )


def cmd_baseline(args: argparse.Namespace) -> None:
    import torch
    from gpu_common import baseline_pipe

    t0 = time.perf_counter()
    pipe = baseline_pipe(args.kind, args.path, args.dtype, args.device)
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
        sync()
        return time.perf_counter() - t

    first = once()
    times = [once() for _ in range(args.runs)]
    result(
        {
            "phase": "baseline",
            "kind": args.kind,
            "load_s": load_s,
            "first_s": first,
            "e2e_s": statistics.median(times),
            "runs": times,
            **env_info(),
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
        cuda_graphs=_tristate(args.graphs),
        attention=args.attention,
        compile_vae=_tristate(args.compile_vae),
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
    sync()
    load_s = time.perf_counter() - t0
    mode, scope = engine._compile_choice()

    def once() -> tuple[float, Any]:
        t = time.perf_counter()
        out = generate(engine, spec)[0]
        return time.perf_counter() - t, out

    with _FirstRunProbe(engine) as probe:
        first, image = once()
    warm_up_s = engine.warm_up()  # the first job ran eagerly; the worker compiles when idle
    image = once()[1]
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
    res: dict[str, Any] = {
        "phase": "engine",
        "kind": args.kind,
        "variant": f"{mode or 'eager'}/{scope}"
        + ("+graphs" if engine.graphs is not None else "")
        + (f"+{args.attention}" if args.attention not in ("auto", "default") else "")
        + ("+vae" if engine._vae_compile_choice() and mode else ""),
        "cache_state": args.cache_state,
        "load_s": load_s,
        "first_s": first,
        "compile_s": warm_up_s,
        "e2e_png_s": steady,
        "png_s": png_s,
        "e2e_s": steady - png_s,
        "runs": times,
        "mega_cache_bytes": saved.stat().st_size if saved else None,
        "first_run": probe.report(),
        "graphs": _graph_stats(engine),
        "max_mem_gib": torch.cuda.max_memory_allocated() / 2**30
        if torch.cuda.is_available()
        else None,
        **env_info(),
    }
    result(res)  # the timings stand even if a check below fails or runs out of time
    if args.check:
        try:
            res["check"] = _check_against_eager(engine, spec, image.png)
        except Exception as exc:
            res["check"] = {"error": repr(exc)[:500]}
        result(res)
    if args.lora_check:
        try:
            res["lora"] = _lora_check(engine, spec, image.png, Path(args.work))
        except Exception as exc:
            res["lora"] = {"error": repr(exc)[:800]}
        res["graphs"] = _graph_stats(engine)
        result(res)


def _tristate(value: str) -> bool | str:
    return {"on": True, "off": False}.get(value, value)


def _graph_stats(engine: Any) -> dict[str, int] | None:
    g = engine.graphs
    return None if g is None else {"captures": g.captures, "replays": g.replays}


class _FirstRunProbe:
    """Splits the first (compiling) run: UNet calls, VAE decode, dynamo's own accounting."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine
        self.unet: list[float] = []
        self.decode_s = 0.0
        self.wall = 0.0

    def __enter__(self) -> _FirstRunProbe:
        import torch

        unet = self.engine.pipe.unet
        inner = unet.forward
        decode = self.engine.decode

        def timed_unet(*a: Any, **k: Any) -> Any:
            sync()
            t = time.perf_counter()
            out = inner(*a, **k)
            sync()
            self.unet.append(time.perf_counter() - t)
            return out

        def timed_decode(latents: Any) -> Any:
            sync()
            t = time.perf_counter()
            out = decode(latents)
            self.decode_s = time.perf_counter() - t
            return out

        self._had_forward = "forward" in unet.__dict__
        self._inner = inner
        unet.forward = timed_unet
        self.engine.decode = timed_decode
        self._dynamo0 = _dynamo_times() if torch.cuda.is_available() else {}
        self.wall = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self.wall
        unet = self.engine.pipe.unet
        if self._had_forward:
            unet.forward = self._inner
        else:
            del unet.forward
        del self.engine.decode
        self._dynamo1 = _dynamo_times()

    def report(self) -> dict[str, Any]:
        rest = sorted(self.unet[2:])
        steady = rest[len(rest) // 2] if rest else 0.0
        dyn = {k: round(v - self._dynamo0.get(k, 0.0), 3) for k, v in self._dynamo1.items()}
        return {
            "wall_s": round(self.wall, 3),
            "unet_call1_s": round(self.unet[0], 3) if self.unet else None,
            "unet_call2_s": round(self.unet[1], 3) if len(self.unet) > 1 else None,
            "unet_steady_s": round(steady, 4),
            "unet_total_s": round(sum(self.unet), 3),
            "decode_s": round(self.decode_s, 3),
            "dynamo": dyn,
        }


def _dynamo_times() -> dict[str, float]:
    try:
        from torch._dynamo.utils import compile_times

        got = compile_times(repr="csv")
    except Exception:
        return {}
    if not isinstance(got, tuple):
        return {}
    names, values = got
    wanted = {
        "_compile.compile_inner": "dynamo_total",
        "bytecode_tracing": "tracing",
        "OutputGraph.call_user_compiler": "backend",
        "build_guards": "guards",
        "PyCodeCache.load_by_key_path": "load_modules",
        "async_compile.wait": "async_compile_wait",
    }
    out: dict[str, float] = {}
    for name, value in zip(names, values, strict=False):
        if name in wanted:
            out[wanted[name]] = sum(float(v) for v in str(value).split(",") if v.strip())
    return out


def _check_against_eager(engine: Any, spec: dict[str, Any], png: bytes) -> dict[str, Any]:
    """The same job with torch.compile and CUDA graphs off (same weights, same dtypes)."""
    import torch

    from sandbox.worker.generate import generate

    graphs = engine.graphs
    if graphs is not None:
        graphs.enabled = False
    try:
        stance: Any = getattr(torch.compiler, "set_stance", None)
        if stance is not None:
            with stance("force_eager"):
                ref = generate(engine, spec)[0]
        else:
            ref = generate(engine, spec)[0]
    finally:
        if graphs is not None:
            graphs.enabled = True
    again = generate(engine, spec)[0]
    vs = diff(png, ref.png)
    return {
        "vs_eager": vs,
        "repeat_identical": again.png == png,
        "ok": bool(vs["psnr_db"] is None or vs["psnr_db"] > 30),
    }


def _lora_check(engine: Any, spec: dict[str, Any], png: bytes, work: Path) -> dict[str, Any]:
    """A LoRA on the compiled GPU path: it applies, weight 0 == no LoRA, removal restores."""
    from sandbox.worker.generate import generate
    from tests import synth

    kind = engine.arch
    path = work / f"lora-{kind}.safetensors"
    if not path.exists():
        synth.write_lora(kind, path, seed=5)
    out: dict[str, Any] = {}
    for label, weight in (("w1", 1.0), ("w0", 0.0)):
        job = dict(spec, loras=[{"name": "l", "path": str(path)}])
        job["prompt"] = f"{spec['prompt']} <lora:l:{weight:g}>"
        t = time.perf_counter()
        got = generate(engine, job)[0]
        out[f"{label}_s"] = round(time.perf_counter() - t, 2)
        out[f"{label}_vs_none"] = diff(got.png, png)
    t = time.perf_counter()
    back = generate(engine, spec)[0]
    out["none_again_s"] = round(time.perf_counter() - t, 2)
    out["none_again_identical"] = back.png == png
    out["none_again_vs_none"] = diff(back.png, png)
    out["applies"] = not out["w1_vs_none"]["identical"]
    return out
