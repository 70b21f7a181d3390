"""Helpers shared by the engine tests (plain functions; fixtures live in conftest)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

THREADS = 2  # CPU results depend on the thread count; pin it


def base_spec(model: Path, **over: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "model_path": str(model),
        "model_sha256": "ab" * 32,
        "prompt": "a (red:1.2) fox in [tall] grass",
        "negative_prompt": "blurry",
        "steps": 2,
        "cfg_scale": 7.0,
        "seed": 1234,
        "width": 64,
        "height": 64,
        "sampler": "Euler a",
        "threads": THREADS,
        "version_label": "assetmgr 0.1",
    }
    spec.update(over)
    return spec


def pixels(png: bytes) -> bytes:
    import io

    from PIL import Image

    with Image.open(io.BytesIO(png)) as img:
        return img.convert("RGB").tobytes()
