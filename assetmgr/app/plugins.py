"""Plugin use cases the CLI adapts: which requirement sets the image holds, the demo job."""

from __future__ import annotations

from pathlib import Path
from typing import Any

DEMO_TIMEOUT_S = 120
DEMO_MEMORY_BYTES = 1 << 30


def image_dep_sets(sandbox: Any) -> set[str] | None:
    """The plugin requirement sets the built image holds (each its own directory of wheels),
    or None when no readable image record exists."""
    from sandbox.errors import ImageError
    from sandbox.image.record import load_record

    try:
        return set(load_record(sandbox.record_path).plugin_dep_sets)
    except ImageError:
        return None


def run_plugin_demo(
    sandbox: Any,
    *,
    plugins: list[str],
    prompt: str,
    negative: str,
    seed: int,
    size: int,
    output_dir: Path,
) -> Any:
    """The plugin demo job (prompt hooks, a post-processed image) in the sandbox, without a
    GPU, within a small time and memory limit."""
    from sandbox.protocol import Limits

    return sandbox.run(
        "plugin_demo",
        {"prompt": prompt, "negative": negative, "seed": seed, "width": size, "height": size},
        output_dir,
        plugins=plugins,
        limits=Limits(timeout_s=DEMO_TIMEOUT_S, memory_bytes=DEMO_MEMORY_BYTES),
        gpus="none",
    )


__all__ = ["image_dep_sets", "run_plugin_demo"]
