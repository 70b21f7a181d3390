"""What a user feels, in one fresh process: first image, next images, a LoRA weight change.

``--impl baseline``: out-of-the-box diffusers (``from_single_file`` in fp16, ``.to("cuda")``,
its defaults). ``--impl ours``: the worker's engine and ``generate`` as a worker runs them: the
first job eagerly, then ``warm_up`` (what the worker does while idle), then the next jobs.
Times count from the parent's clock just before it started this process (``--t0``), so the
interpreter start and the imports are in "first image" for both.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Any

from gpu_common import NEGATIVE, PROMPT, diff, env_info, result, sync


def _since(t0: float) -> float:
    return round(time.time() - t0, 3)


def _timed(fn: Any) -> tuple[float, Any]:
    sync()
    t = time.perf_counter()
    out = fn()
    sync()
    return time.perf_counter() - t, out


def cmd_session(args: argparse.Namespace) -> None:
    res: dict[str, Any] = {"phase": "session", "impl": args.impl, "kind": args.kind}
    if args.impl == "baseline":
        _baseline(args, res)
    else:
        _ours(args, res)
    res.update(env_info())
    result(res)


def _baseline(args: argparse.Namespace, res: dict[str, Any]) -> None:
    import torch
    from gpu_common import baseline_pipe

    res["imports_s"] = _since(args.t0)
    t = time.perf_counter()
    dtype = "float16" if args.device == "cuda" else "float32"
    pipe = baseline_pipe(args.kind, args.path, dtype, args.device)
    res["load_s"] = round(time.perf_counter() - t, 3)

    def once() -> Any:
        gen = torch.Generator("cpu").manual_seed(1)
        image = pipe(
            PROMPT,
            negative_prompt=NEGATIVE,
            num_inference_steps=args.steps,
            guidance_scale=7.0,
            height=args.size,
            width=args.size,
            generator=gen,
        ).images[0]
        image.load()
        return image

    res["first_image_s"], _ = _timed(once)
    res["first_from_start_s"] = _since(args.t0)
    res["next_s"] = [round(_timed(once)[0], 4) for _ in range(args.runs)]
    res["next_median_s"] = statistics.median(res["next_s"])


def _spec(args: argparse.Namespace, **more: Any) -> dict[str, Any]:
    return {
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
        "dtype": "float16" if args.device == "cuda" else "float32",
        "device": args.device,
        "optimize": args.device == "cuda",
        **more,
    }


def _ours(args: argparse.Namespace, res: dict[str, Any]) -> None:
    from sandbox.worker.generate import generate
    from sandbox.worker.pipeline import Engine

    res["imports_s"] = _since(args.t0)
    engine = Engine(compile_cache_dir=args.cache, compile_scope=args.scope)
    spec = _spec(args)
    first_s, first = _timed(lambda: generate(engine, spec)[0])
    res["first_from_start_s"] = _since(args.t0)
    res["load_s"] = round(engine.timings.load_s, 3)
    res["load_split"] = engine.timings.load_split
    res["first_image_s"] = round(first_s - engine.timings.load_s, 3)
    res["warm_up_s"] = round(engine.warm_up(), 3)  # the worker does this while idle
    times, image = [], None
    for _ in range(args.runs):
        seconds, image = _timed(lambda: generate(engine, spec)[0])
        times.append(round(seconds, 4))
    res["next_s"] = times
    res["next_median_s"] = statistics.median(times)
    res["first_vs_next"] = diff(first.png, image.png)  # eager vs compiled: low bits only
    res["png_s"] = _png_seconds(image)
    # The baseline's output is a PIL image: ours without the PNG encode is the like-for-like.
    res["next_to_pil_s"] = round(res["next_median_s"] - res["png_s"], 4)
    result(dict(res, partial=True))
    if args.lora:
        res["lora"] = _lora_changes(engine, args, image.png)
    graphs = engine.graphs
    if graphs is not None:
        res["graphs"] = {"captures": graphs.captures, "replays": graphs.replays}
    import torch

    if torch.cuda.is_available():
        res["max_mem_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)


def _png_seconds(image: Any) -> float:
    """Median seconds of encoding one of our images as the worker does (PNG + infotext)."""
    import io

    from PIL import Image

    from sandbox.worker import infotext

    pil = Image.open(io.BytesIO(image.png))
    pil.load()
    times = [_timed(lambda: infotext.png_bytes(pil, image.infotext))[0] for _ in range(3)]
    return round(statistics.median(times), 4)


def _lora_changes(engine: Any, args: argparse.Namespace, plain_png: bytes) -> dict[str, Any]:
    """Add a LoRA, repeat the job, change its weight, remove it, weight 0."""
    from sandbox.worker.generate import generate

    def job(weight: float | None) -> tuple[float, Any]:
        loras = [] if weight is None else [{"name": "l", "path": args.lora}]
        prompt = PROMPT if weight is None else f"{PROMPT} <lora:l:{weight:g}>"
        spec = _spec(args, loras=loras, prompt=prompt)
        return _timed(lambda: generate(engine, spec)[0])

    out: dict[str, Any] = {}
    out["add_s"], with_08 = job(0.8)
    out["add_lora_s"] = round(engine.timings.lora_s, 3)
    same = [job(0.8)[0] for _ in range(2)]
    out["same_job_s"] = round(min(same), 4)
    out["change_s"], with_05 = job(0.5)
    out["change_lora_s"] = round(engine.timings.lora_s, 3)
    out["change_over_same_s"] = round(out["change_s"] - out["same_job_s"], 4)
    out["remove_s"], back = job(None)
    out["w0_s"], w0 = job(0.0)
    out["applies"] = with_08.png != plain_png and with_05.png != with_08.png
    out["removed_identical"] = back.png == plain_png
    out["w0_identical"] = diff(w0.png, plain_png)["identical"]  # pixels: the metadata differs
    out["w05_vs_w08"] = diff(with_05.png, with_08.png)
    for key in ("add_s", "change_s", "remove_s", "w0_s"):
        out[key] = round(out[key], 4)
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--impl", choices=["baseline", "ours"], default="ours")
    parser.add_argument("--t0", type=float, default=0.0)
    parser.add_argument("--lora", default=None)


__all__ = ["Path", "add_arguments", "cmd_session"]
