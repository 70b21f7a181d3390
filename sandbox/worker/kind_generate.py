"""The ``generate`` job kind: diffusers generation inside the container.

The engine (the loaded pipeline) lives at module level, so a warm worker keeps the checkpoint
loaded between jobs; LoRAs are switched per job without fuse/unfuse (see `pipeline.Engine`).
Plugins take part through the plugin host: prompt transforms before encoding, post-process
filters before the PNG (with its A1111 metadata) is written.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from sandbox.protocol import JobSpec, ProgressMessage
from sandbox.worker import plugin_host
from sandbox.worker.channel import Channel

_engine: Any = None


def _get_engine() -> Any:
    global _engine
    if _engine is None:
        from sandbox.worker.pipeline import Engine

        cache = os.environ.get("ASSETMGR_COMPILE_CACHE")
        _engine = Engine(compile_cache_dir=cache or None)
    return _engine


def idle() -> float:
    """While no job waits: compile what the last jobs ran eagerly (see `pipeline.Engine`)."""
    return 0.0 if _engine is None else float(_engine.warm_up())


def run_generate_job(spec: JobSpec, out_dir: Path, channel: Channel) -> dict[str, Any]:
    from sandbox.protocol.jobspec import GenSpec
    from sandbox.worker import infotext
    from sandbox.worker.generate import generate

    gen = GenSpec.model_validate(dict(spec.params))
    prompt, negative = plugin_host.apply_prompt_hooks(
        gen.prompt, gen.negative_prompt, seed=gen.seed, width=gen.width, height=gen.height
    )
    if (prompt, negative) != (gen.prompt, gen.negative_prompt):
        gen = gen.model_copy(update={"prompt": prompt, "negative_prompt": negative})

    total_steps = gen.steps

    def on_step(step: int, total: int) -> None:
        channel.send(
            ProgressMessage(stage="denoise", step=step, total=total, fraction=step / max(1, total))
        )

    channel.send(ProgressMessage(stage="load", fraction=0.0, total=total_steps))
    images = generate(_get_engine(), gen, progress=on_step)
    host = plugin_host.active()
    post = host is not None and any("post_process" in p.hooks for p in host.plugins)
    results = []
    for image in images:
        data = image.png
        if post:
            import io

            from PIL import Image

            with Image.open(io.BytesIO(data), formats=["PNG"]) as im:
                pixels = im.convert("RGB")
            pixels = plugin_host.apply_post_process(pixels, seed=image.seed, index=image.index)
            data = infotext.png_bytes(pixels, image.infotext)
        name = f"{image.index:05d}-{image.seed}.png"
        (out_dir / name).write_bytes(data)
        results.append(
            {
                "name": f"out/{name}",
                "seed": image.seed,
                "width": image.width,
                "height": image.height,
                "infotext": image.infotext,
            }
        )
    channel.send(ProgressMessage(stage="done", fraction=1.0))
    return {"images": results, "prompt": gen.prompt, "negative_prompt": gen.negative_prompt}
