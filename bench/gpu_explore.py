"""Where the GPU time goes: UNet step and VAE decode, eager / compiled / graphed, by kernel."""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

from gpu_common import NEGATIVE, PROMPT, env_info, result

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
    res: dict[str, Any] = {"phase": "explore", "kind": args.kind, **env_info()}

    def emit() -> None:
        result(res)

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
