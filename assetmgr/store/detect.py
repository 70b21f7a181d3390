"""What a safetensors file is, from its header alone (tensor names and shapes; no tensor data).

Used for files Civitai does not know, so they can still be catalogued with a sensible type and
base model. The generation worker has its own, stricter check before loading anything.
"""

from __future__ import annotations

from dataclasses import dataclass

from assetmgr.store.safetensors_check import SafetensorsInfo


@dataclass(frozen=True)
class Detected:
    model_type: str
    """Civitai model type: Checkpoint, LORA, LoCon, VAE, TextualInversion or Other."""
    base_model: str
    """Civitai base model name: SD 1.5, SD 2.1, SDXL 1.0, Flux.1 D, or Other."""


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
        if has("lora_te1_") or has("lora_te2_") or contains("input_blocks_4_1_transformer"):
            base = "SDXL 1.0"
        else:
            dim = _context_dim(info, "lora_unet_")
            base = {768: "SD 1.5", 1024: "SD 2.1", 2048: "SDXL 1.0"}.get(dim or 0, "Other")
            if base == "Other" and has("lora_te_"):
                base = "SD 1.5"
            if contains("double_blocks") or contains("single_blocks"):
                base = "Flux.1 D"
        return Detected(model_type, base)
    if has("model.diffusion_model."):
        if has("conditioner.embedders.1."):
            return Detected("Checkpoint", "SDXL 1.0")
        if has("cond_stage_model.model."):
            return Detected("Checkpoint", "SD 2.1")
        dim = _context_dim(info, "model.diffusion_model.")
        base = {768: "SD 1.5", 1024: "SD 2.1", 2048: "SDXL 1.0"}.get(dim or 0, "Other")
        return Detected("Checkpoint", base)
    if has("double_blocks.") and has("single_blocks."):
        return Detected("Checkpoint", "Flux.1 D")
    if has("encoder.conv_in.") and has("decoder.conv_out."):
        return Detected("VAE", "Other")
    if has("emb_params") or has("clip_l") or has("clip_g") or names == ["string_to_param.*"]:
        base = "SDXL 1.0" if has("clip_g") else "SD 1.5"
        return Detected("TextualInversion", base)
    return Detected("Other", "Other")
