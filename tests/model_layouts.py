"""Tiny safetensors files with the key layouts of real model types (weights are a fill byte).

`detect` reads only names and shapes, so a few tensors per file are enough: each builder gives
what its type's header shows, and `fill` makes the bytes (and the SHA256) of each file unique.
"""

from __future__ import annotations

from tests.integration.test_import_export import sd15_lora, st_bytes

U = "model.diffusion_model."
_ATTN2 = "input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"


def sd15_checkpoint(fill: int = 1) -> bytes:
    """A full SD 1.5 checkpoint: UNet, VAE and text encoder (header: Checkpoint, SD 1.5)."""
    return st_bytes(
        {
            U + _ATTN2: (320, 768),
            U + "out.2.weight": (4, 320),
            "first_stage_model.decoder.conv_in.weight": (8, 4, 1, 1),
            "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight": (4, 8),
        },
        fill=fill,
    )


def sd15_unet(fill: int = 1) -> bytes:
    """An SD 1.5 diffusion model alone: a Checkpoint or a UNet-only file, the header can't say."""
    return st_bytes({U + _ATTN2: (320, 768), U + "out.2.weight": (4, 320)}, fill=fill)


def vae(fill: int = 1) -> bytes:
    return st_bytes(
        {"encoder.conv_in.weight": (8, 3, 1, 1), "decoder.conv_out.weight": (3, 8, 1, 1)},
        fill=fill,
    )


def embedding(fill: int = 1) -> bytes:
    """A textual inversion embedding (``emb_params``)."""
    return st_bytes({"emb_params": (2, 768)}, fill=fill)


def esrgan(fill: int = 1) -> bytes:
    """An ESRGAN upscaler: nothing in its header says what it is (``Other``)."""
    return st_bytes(
        {"conv_first.weight": (8, 3, 3, 3), "body.0.rdb1.conv1.weight": (8, 8, 3, 3)}, fill=fill
    )


def controlnet(fill: int = 1) -> bytes:
    """An SD 1.5 ControlNet: the header alone says ``Other``."""
    return st_bytes(
        {"control_model.input_hint_block.0.weight": (16, 3, 3, 3)},
        fill=fill,
    )


def lora(fill: int = 1) -> bytes:
    """An SD 1.5 LoRA without conv layers (a LoRA, or a LyCORIS LoCon that trained none)."""
    return sd15_lora(fill=fill)


__all__ = [
    "controlnet",
    "embedding",
    "esrgan",
    "lora",
    "sd15_checkpoint",
    "sd15_unet",
    "st_bytes",
    "vae",
]
