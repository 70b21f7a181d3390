"""GPU benchmark: out-of-the-box diffusers vs the sandbox worker's engine, side by side.

Runs on the GPU machine (no network): builds random-weight SD1.5 / SDXL single-file
checkpoints at full size with ``tests.synth``, then measures, each in a fresh
process:

* baseline: ``from_single_file(..., torch_dtype=fp16)`` + ``.to("cuda")``, diffusers defaults
  (SDPA, fp32-upcast SDXL VAE), Euler, CFG 7, 50 steps, batch 1;
* ours, cold: ``generate(engine, spec)`` with ``optimize=True`` (fp16, channels_last, fused
  QKV, per-block torch.compile, the UNet replayed as a CUDA graph, bf16 VAE), compile caches
  in a fresh directory; ``--check`` also compares its image with the same job run eagerly
  (compile and graphs off) and with a repeat;
* ours, warm: a second process on the same cache directory (what a worker restart costs);
  ``--lora-check`` then runs a synthetic LoRA at weight 1 and 0 and without it (SD1.5).

``compile_s`` is the first run minus a steady run; ``first_run`` in the JSON splits it (UNet
calls, VAE decode, dynamo's own accounting).

End-to-end time is prompt -> PIL image (the baseline's output); PNG encoding is timed
separately. Usage::

    python bench/gpu.py all --out "$OUT" --work /tmp/bench [--only sd15|sdxl] [--extras]
        [--check] [--lora-check] [--variant MODE/SCOPE] [--graphs on|off] [--attention cudnn]
    python bench/gpu.py explore --kind sdxl --path /tmp/bench/sdxl.safetensors  # where time goes
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

    from tests import synth

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
    _sync()
    load_s = time.perf_counter() - t0
    mode, scope = engine._compile_choice()

    def once() -> tuple[float, Any]:
        t = time.perf_counter()
        out = generate(engine, spec)[0]
        return time.perf_counter() - t, out

    with _FirstRunProbe(engine) as probe:
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
        "compile_s": max(0.0, first - steady),
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
        **_env_info(),
    }
    _result(res)  # the timings stand even if a check below fails or runs out of time
    if args.check:
        try:
            res["check"] = _check_against_eager(engine, spec, image.png)
        except Exception as exc:
            res["check"] = {"error": repr(exc)[:500]}
        _result(res)
    if args.lora_check:
        try:
            res["lora"] = _lora_check(engine, spec, image.png, Path(args.work))
        except Exception as exc:
            res["lora"] = {"error": repr(exc)[:800]}
        res["graphs"] = _graph_stats(engine)
        _result(res)


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
            _sync()
            t = time.perf_counter()
            out = inner(*a, **k)
            _sync()
            self.unet.append(time.perf_counter() - t)
            return out

        def timed_decode(latents: Any) -> Any:
            _sync()
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


def _pixels(png: bytes) -> Any:
    import io

    import numpy as np
    from PIL import Image

    with Image.open(io.BytesIO(png)) as img:
        return np.asarray(img.convert("RGB"), dtype=np.int16)


def _diff(a: bytes, b: bytes) -> dict[str, Any]:
    import numpy as np

    pa, pb = _pixels(a), _pixels(b)
    d = np.abs(pa - pb).astype(np.float64)
    mse = float((d**2).mean())
    return {
        "mean_abs": round(float(d.mean()), 3),
        "max_abs": int(d.max()),
        "psnr_db": round(float(10 * np.log10(255.0**2 / mse)), 2) if mse > 0 else None,
        "identical": bool(mse == 0),
        "distinct_values": int(len(np.unique(pa))),
    }


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
    vs = _diff(png, ref.png)
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
        out[f"{label}_vs_none"] = _diff(got.png, png)
    t = time.perf_counter()
    back = generate(engine, spec)[0]
    out["none_again_s"] = round(time.perf_counter() - t, 2)
    out["none_again_identical"] = back.png == png
    out["none_again_vs_none"] = _diff(back.png, png)
    out["applies"] = not out["w1_vs_none"]["identical"]
    return out


# --- explore: component timings in one process -------------------------------------------------


def _cuda_ms(fn: Any, iters: int = 10, warmup: int = 2) -> float:
    """Median milliseconds of ``fn()`` with CUDA events."""
    import torch

    cuda: Any = torch.cuda
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    out = []
    for _ in range(iters):
        a = cuda.Event(enable_timing=True)
        b = cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        out.append(a.elapsed_time(b))
    return float(statistics.median(out))


def _kernel_profile(fn: Any, top: int = 12) -> dict[str, Any]:
    """GPU kernel time of one ``fn()`` by category (and the top kernels)."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    cats: dict[str, float] = {}
    kernels: list[tuple[float, int, str]] = []
    for ev in prof.key_averages():
        us = float(getattr(ev, "device_time_total", 0.0) or getattr(ev, "cuda_time_total", 0.0))
        if us <= 0:
            continue
        name = ev.key
        low = name.lower()
        if any(x in low for x in ("flash", "fmha", "sdpa", "attention", "attn")):
            cat = "attention"
        elif any(x in low for x in ("conv", "fprop", "dgrad", "implicit_gemm", "xmma_fprop")):
            cat = "conv"
        elif any(x in low for x in ("gemm", "nvjet", "cutlass", "sm90_xmma", "cublas", "matmul")):
            cat = "gemm"
        elif low.startswith("triton"):
            cat = "triton"
        elif "memcpy" in low or "memset" in low:
            cat = "copy"
        else:
            cat = "other"
        cats[cat] = cats.get(cat, 0.0) + us / 1000
        kernels.append((us / 1000, int(ev.count), name[:110]))
    kernels.sort(reverse=True)
    return {
        "total_ms": round(sum(cats.values()), 2),
        "by_category_ms": {k: round(v, 2) for k, v in sorted(cats.items(), key=lambda x: -x[1])},
        "top": [(round(ms, 2), n, name) for ms, n, name in kernels[:top]],
    }


def _sdpa_micro(kind: str) -> dict[str, Any]:
    """Each SDPA backend on the UNet's attention shapes (fp16): ms and error vs fp32 math."""
    import torch
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    if kind == "sdxl":
        shapes = {"self64": (2, 10, 4096, 4096, 64), "self32": (2, 20, 1024, 1024, 64),
                  "cross32": (2, 20, 1024, 77, 64)}  # fmt: skip
    else:
        shapes = {"self64": (2, 8, 4096, 4096, 40), "self16": (2, 8, 256, 256, 160),
                  "cross64": (2, 8, 4096, 77, 40)}  # fmt: skip
    backends = {"flash": SDPBackend.FLASH_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION,
                "efficient": SDPBackend.EFFICIENT_ATTENTION}  # fmt: skip
    out: dict[str, Any] = {}
    gen = torch.Generator("cuda").manual_seed(3)
    for label, (b, h, lq, lk, d) in shapes.items():
        q = torch.randn(b, h, lq, d, device="cuda", dtype=torch.float16, generator=gen)
        k = torch.randn(b, h, lk, d, device="cuda", dtype=torch.float16, generator=gen)
        v = torch.randn(b, h, lk, d, device="cuda", dtype=torch.float16, generator=gen)
        ref = F.scaled_dot_product_attention(q.double(), k.double(), v.double()).float()
        row: dict[str, Any] = {}
        with torch.no_grad():
            default_ms = _cuda_ms(lambda q=q, k=k, v=v: F.scaled_dot_product_attention(q, k, v))
            row["default_ms"] = round(default_ms, 4)
            for name, be in backends.items():
                try:
                    with sdpa_kernel([be]):
                        ms = _cuda_ms(lambda q=q, k=k, v=v: F.scaled_dot_product_attention(q, k, v))
                        got = F.scaled_dot_product_attention(q, k, v).float()
                    err = float((got - ref).norm() / ref.norm())
                    row[name] = {"ms": round(ms, 4), "rel_err": f"{err:.2e}"}
                except Exception as exc:
                    row[name] = f"unsupported: {str(exc)[:80]}"
        out[label] = row
    return out


def cmd_explore(args: argparse.Namespace) -> None:
    """Where the time goes: UNet step and VAE decode, eager / compiled / graphed, by kernel."""
    import torch

    from sandbox.worker.cudagraph import UNetGraphs
    from sandbox.worker.generate import generate
    from sandbox.worker.pipeline import Engine

    deadline = time.monotonic() + args.deadline
    res: dict[str, Any] = {"phase": "explore", "kind": args.kind, **_env_info()}

    def emit() -> None:
        _result(res)

    res["sdpa"] = _sdpa_micro(args.kind)
    emit()
    engine: Any = Engine(compile_mode=None, cuda_graphs=False, compile_cache_dir=args.cache)
    spec = {
        "model_path": args.path, "model_sha256": "0" * 64, "prompt": PROMPT,
        "negative_prompt": NEGATIVE, "steps": 2, "cfg_scale": 7.0, "seed": 1,
        "width": args.size, "height": args.size, "sampler": "Euler", "dtype": args.dtype,
        "device": "cuda", "optimize": True,
    }  # fmt: skip
    t = time.perf_counter()
    engine.load(args.path, dtype=args.dtype, device="cuda", optimize=True)
    res["load_s"] = round(time.perf_counter() - t, 2)
    unet = engine.pipe.unet
    captured: dict[str, Any] = {}
    orig_forward = unet.forward

    def grab(sample: Any, timestep: Any, encoder_hidden_states: Any, **kw: Any) -> Any:
        if not captured:
            captured.update(sample=sample.clone(), timestep=timestep,
                            states=encoder_hidden_states.clone(), kw=dict(kw))  # fmt: skip
        return orig_forward(sample, timestep, encoder_hidden_states, **kw)

    unet.forward = grab
    latents_holder: dict[str, Any] = {}
    decode = engine.decode

    def grab_decode(latents: Any) -> Any:
        latents_holder["z"] = latents.clone()
        return decode(latents)

    engine.decode = grab_decode
    generate(engine, spec)
    del unet.forward
    del engine.decode
    c = captured

    def step() -> Any:
        with torch.no_grad():
            return unet(c["sample"], c["timestep"], encoder_hidden_states=c["states"], **c["kw"])[0]

    def vae() -> Any:
        with torch.no_grad():
            return engine.decode(latents_holder["z"])

    def vae_gpu() -> Any:
        with torch.no_grad():
            z = latents_holder["z"].to(engine.vae_dtype) / engine.pipe.vae.config.scaling_factor
            z = z.contiguous(memory_format=torch.channels_last)
            return engine.pipe.vae.decode(z, return_dict=False)[0]

    ref = step().float()
    res["eager_step_ms"] = round(_cuda_ms(step), 2)
    res["eager_vae_ms"] = round(_cuda_ms(vae_gpu, iters=3, warmup=1), 2)
    res["eager_decode_to_pil_ms"] = round(_cuda_ms(vae, iters=3, warmup=1), 2)
    emit()
    res["eager_profile"] = _kernel_profile(step)
    emit()
    g = UNetGraphs.install(unet)
    step()
    res["eager_graph_step_ms"] = round(_cuda_ms(step), 2)
    out = step().float()
    res["eager_graph_rel_err"] = f"{float((out - ref).norm() / ref.norm()):.2e}"
    res["eager_graph_state"] = {"enabled": g.enabled, "captures": g.captures}
    UNetGraphs.uninstall(unet)
    del g
    emit()
    # Per-block compile, default mode (what the worker does), then graphed.
    engine._setup_compile_caches()
    t = time.perf_counter()
    engine._compile(args.mode, "blocks")
    step()
    torch.cuda.synchronize()
    res["compile_blocks_first_call_s"] = round(time.perf_counter() - t, 1)
    res["compiled_step_ms"] = round(_cuda_ms(step), 2)
    out = step().float()
    res["compiled_rel_err"] = f"{float((out - ref).norm() / ref.norm()):.2e}"
    emit()
    res["compiled_profile"] = _kernel_profile(step)
    emit()
    g = UNetGraphs.install(unet)
    step()
    res["compiled_graph_step_ms"] = round(_cuda_ms(step), 2)
    out = step().float()
    res["compiled_graph_rel_err"] = f"{float((out - ref).norm() / ref.norm()):.2e}"
    res["graph_state"] = {"enabled": g.enabled, "captures": g.captures, "replays": g.replays}
    emit()
    # cuDNN's heuristics instead of benchmarking each conv (shorter warm start if as fast).
    torch.backends.cudnn.benchmark = False
    g.reset()
    step()
    res["compiled_graph_step_ms_no_cudnn_benchmark"] = round(_cuda_ms(step), 2)
    torch.backends.cudnn.benchmark = True
    g.reset()
    step()
    emit()
    if time.monotonic() < deadline - 90:
        vref = vae_gpu().float()
        res["vae_profile_eager"] = _kernel_profile(vae_gpu, top=8)
        t = time.perf_counter()
        engine.pipe.vae.decoder.compile(mode="default", fullgraph=True, dynamic=False)
        vae_gpu()
        torch.cuda.synchronize()
        res["vae_compile_s"] = round(time.perf_counter() - t, 1)
        res["compiled_vae_ms"] = round(_cuda_ms(vae_gpu, iters=3, warmup=1), 2)
        vout = vae_gpu().float()
        res["compiled_vae_rel_err"] = f"{float((vout - vref).norm() / vref.norm()):.2e}"
        res["compiled_decode_to_pil_ms"] = round(_cuda_ms(vae, iters=3, warmup=1), 2)
        emit()
        res["vae_profile_compiled"] = _kernel_profile(vae_gpu, top=8)
    for attn in args.explore_attention:
        if time.monotonic() > deadline - 60:
            break
        # The backend is picked when a block is traced: recompile the blocks under it.
        UNetGraphs.uninstall(unet)
        torch._dynamo.reset()
        engine._set_attention(attn)
        t = time.perf_counter()
        step()
        torch.cuda.synchronize()
        res[f"{attn}_compile_s"] = round(time.perf_counter() - t, 1)
        UNetGraphs.install(unet)
        step()
        res[f"{attn}_compiled_graph_step_ms"] = round(_cuda_ms(step), 2)
        out = step().float()
        res[f"{attn}_rel_err"] = f"{float((out - ref).norm() / ref.norm()):.2e}"
        emit()
    res["max_mem_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    emit()


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


def table(results: list[dict[str, Any]]) -> str:
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


def cmd_all(args: argparse.Namespace) -> None:
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
    text = table(runner.results)
    (Path(args.out) / "gpu_results.json").write_text(json.dumps(runner.results, indent=1))
    (Path(args.out) / "gpu_table.md").write_text(text + "\n")
    gpu = next((r.get("gpu") for r in runner.results if r.get("gpu")), args.device)
    tv = next((r.get("torch") for r in runner.results if r.get("torch")), "?")
    print(f"\nGPU: {gpu}, torch {tv}\n{text}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    for name in ("all", "build", "baseline", "engine", "explore"):
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
    args = p.parse_args()
    if args.size == 0 and args.cmd != "all":
        args.size = SIZES[args.kind]
    cmds = {"all": cmd_all, "build": cmd_build, "baseline": cmd_baseline, "engine": cmd_engine,
            "explore": cmd_explore}  # fmt: skip
    cmds[args.cmd](args)


if __name__ == "__main__":
    main()
