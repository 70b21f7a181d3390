"""Shared pieces of the GPU benchmark's phases (each phase runs in its own process)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
# Ahead of bench/ itself, whose sandbox.py would shadow the package.
sys.path.insert(0, str(REPO))

PROMPT = "a photo of an astronaut riding a horse on mars, highly detailed, sharp focus"
NEGATIVE = "blurry, lowres"
SIZES = {"sd15": 512, "sdxl": 1024}


def result(obj: dict[str, Any]) -> None:
    print("RESULT " + json.dumps(obj), flush=True)


def env_info() -> dict[str, Any]:
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


def sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def pixels(png: bytes) -> Any:
    import io

    import numpy as np
    from PIL import Image

    with Image.open(io.BytesIO(png)) as img:
        return np.asarray(img.convert("RGB"), dtype=np.int16)


def diff(a: bytes, b: bytes) -> dict[str, Any]:
    import numpy as np

    pa, pb = pixels(a), pixels(b)
    d = np.abs(pa - pb).astype(np.float64)
    mse = float((d**2).mean())
    return {
        "mean_abs": round(float(d.mean()), 3),
        "max_abs": int(d.max()),
        "psnr_db": round(float(10 * np.log10(255.0**2 / mse)), 2) if mse > 0 else None,
        "identical": bool(mse == 0),
        "distinct_values": int(len(np.unique(pa))),
    }


def baseline_pipe(kind: str, path: str, dtype: str, device: str) -> Any:
    """Out-of-the-box diffusers: ``from_single_file`` with the shipped config, Euler, on device."""
    import os

    os.environ["HF_HUB_OFFLINE"] = "1"
    import torch
    from diffusers import EulerDiscreteScheduler, StableDiffusionPipeline, StableDiffusionXLPipeline

    from sandbox.worker.pipeline import CONFIG_ROOT, load_tokenizer

    kw: dict[str, Any] = {
        "config": str(CONFIG_ROOT / kind),
        "local_files_only": True,
        "torch_dtype": getattr(torch, dtype),
        "tokenizer": load_tokenizer(),
    }
    if kind == "sdxl":
        kw["tokenizer_2"] = load_tokenizer("!")
        pipe = StableDiffusionXLPipeline.from_single_file(path, **kw)
    else:
        pipe = StableDiffusionPipeline.from_single_file(
            path, safety_checker=None, feature_extractor=None, **kw
        )
    pipe.to(device)
    euler: Any = EulerDiscreteScheduler
    pipe.scheduler = euler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    sync()
    return pipe
