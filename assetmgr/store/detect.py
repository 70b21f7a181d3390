"""What a safetensors file is, from its header alone (tensor names and shapes; no tensor data).

Used for files Civitai does not know, so they can still be catalogued with a sensible type and
base model. The generation worker has its own, stricter check before loading anything.

The header decides. Where it cannot (``Other``, or a type it cannot tell from a look-alike:
a LoRA without conv layers may be a LyCORIS LoCon, a bare diffusion model a full checkpoint),
the names of the folders the file sits in, as A1111, Forge and ComfyUI lay them out
(``Lora/``, ``LyCORIS/``, ``VAE/``, ``embeddings/``, ``ESRGAN/``, ``loras/``,
``upscale_models/``...), break the tie or fill the unknown (`with_folder_hint`); they never
override a header that is clear.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace

from assetmgr.store.safetensors_check import SafetensorsInfo


@dataclass(frozen=True)
class Detected:
    model_type: str
    """Civitai model type: Checkpoint, LORA, LoCon, VAE, TextualInversion, UNet or Other."""
    base_model: str
    """Civitai base model name: SD 1.5, SD 2.1, SDXL 1.0, Flux.1 D, or Other."""
    look_alikes: frozenset[str] = frozenset()
    """Types the header cannot tell from `model_type`; a folder name may pick one of them."""
    hint: str | None = None
    """The folder name that set the type or base model, when one did."""

    @property
    def unknown(self) -> bool:
        return self.model_type == "Other"


def _context_dim(info: SafetensorsInfo, prefix: str) -> int | None:
    """The cross-attention context width of the first attn2.to_k weight under `prefix`."""
    for name, tensor in info.tensors.items():
        if (
            name.startswith(prefix)
            and "attn2" in name
            and "to_k" in name
            and len(tensor.shape) >= 2
        ):
            if "lora_down" in name or "lora_A" in name:
                return tensor.shape[-1]
            if name.endswith("to_k.weight"):
                return tensor.shape[1]
    return None


def detect(info: SafetensorsInfo) -> Detected:
    names = list(info.tensors)

    def has(prefix: str) -> bool:
        return any(n.startswith(prefix) for n in names)

    def contains(part: str) -> bool:
        return any(part in n for n in names)

    if contains("lora_down") or contains("lora_up") or contains(".lora_A.") or contains("hada_w1"):
        conv_keys = any(
            (
                "lora_down" in n
                and len(info.tensors[n].shape) == 4
                and info.tensors[n].shape[-1] == 3
            )
            for n in names
        )
        model_type = "LoCon" if conv_keys or contains("hada_w1") else "LORA"
        # Without conv layers a LyCORIS LoCon has the very keys of a LoRA.
        alikes = frozenset({"LoCon"}) if model_type == "LORA" else frozenset()
        if has("lora_te1_") or has("lora_te2_") or contains("input_blocks_4_1_transformer"):
            base = "SDXL 1.0"
        else:
            dim = _context_dim(info, "lora_unet_")
            base = {768: "SD 1.5", 1024: "SD 2.1", 2048: "SDXL 1.0"}.get(dim or 0, "Other")
            if base == "Other" and has("lora_te_"):
                base = "SD 1.5"
            if contains("double_blocks") or contains("single_blocks"):
                base = "Flux.1 D"
        return Detected(model_type, base, alikes)
    # A diffusion model without a VAE or text encoder may be a UNet-only file.
    bare = not has("first_stage_model.") and not has("vae.")
    bare_alikes = frozenset({"UNet"}) if bare else frozenset()
    if has("model.diffusion_model."):
        if has("conditioner.embedders.1."):
            return Detected("Checkpoint", "SDXL 1.0")
        if has("cond_stage_model.model."):
            return Detected("Checkpoint", "SD 2.1")
        dim = _context_dim(info, "model.diffusion_model.")
        base = {768: "SD 1.5", 1024: "SD 2.1", 2048: "SDXL 1.0"}.get(dim or 0, "Other")
        if has("cond_stage_model.") or has("conditioner."):
            bare_alikes = frozenset()
        return Detected("Checkpoint", base, bare_alikes)
    if has("double_blocks.") and has("single_blocks."):
        return Detected("Checkpoint", "Flux.1 D", bare_alikes)
    if has("encoder.conv_in.") and has("decoder.conv_out."):
        return Detected("VAE", "Other")
    if has("emb_params") or has("clip_l") or has("clip_g") or names == ["string_to_param.*"]:
        base = "SDXL 1.0" if has("clip_g") else "SD 1.5"
        return Detected("TextualInversion", base)
    return Detected("Other", "Other")


FOLDER_TYPES: dict[str, str] = {
    # A1111 / Forge
    "stable-diffusion": "Checkpoint",
    "lora": "LORA",
    "lycoris": "LoCon",
    "locon": "LoCon",
    "vae": "VAE",
    "embeddings": "TextualInversion",
    "textual_inversion": "TextualInversion",
    "hypernetworks": "Hypernetwork",
    "controlnet": "Controlnet",
    "esrgan": "Upscaler",
    "realesrgan": "Upscaler",
    "swinir": "Upscaler",
    "scunet": "Upscaler",
    "dat": "Upscaler",
    "text_encoder": "TextEncoder",
    # ComfyUI
    "checkpoints": "Checkpoint",
    "loras": "LORA",
    "upscale_models": "Upscaler",
    "t2i_adapter": "Controlnet",
    "unet": "UNet",
    "diffusion_models": "UNet",
    "text_encoders": "TextEncoder",
    "clip": "TextEncoder",
    "clip_vision": "CLIPVision",
    "animatediff_models": "MotionModule",
}
"""Folder names (lower case) of the A1111, Forge and ComfyUI layouts and the type each holds."""

FOLDER_BASES: dict[str, str] = {
    "sd15": "SD 1.5",
    "sd1.5": "SD 1.5",
    "sd1": "SD 1.5",
    "sd_1.5": "SD 1.5",
    "sd2": "SD 2.1",
    "sd21": "SD 2.1",
    "sd2.1": "SD 2.1",
    "sdxl": "SDXL 1.0",
    "xl": "SDXL 1.0",
    "pony": "Pony",
    "illustrious": "Illustrious",
    "flux": "Flux.1 D",
}
"""Sub-folder names users sort by base model; only ever fill a base model the header lacks."""


def with_folder_hint(detected: Detected, folders: Iterable[str]) -> Detected:
    """`detected`, with the type or base model that the nearest known folder name gives where
    the header is ambiguous; `folders` are folder names, nearest first."""
    names = list(folders)
    result = detected
    typed = next((n for n in names if n.lower() in FOLDER_TYPES), None)
    if typed is not None:
        hinted = FOLDER_TYPES[typed.lower()]
        if hinted != result.model_type and (result.unknown or hinted in result.look_alikes):
            result = replace(result, model_type=hinted, look_alikes=frozenset(), hint=typed)
    based = next((n for n in names if n.lower() in FOLDER_BASES), None)
    if based is not None and result.base_model == "Other":
        result = replace(result, base_model=FOLDER_BASES[based.lower()], hint=result.hint or based)
    return result


__all__ = ["FOLDER_BASES", "FOLDER_TYPES", "Detected", "detect", "with_folder_hint"]
