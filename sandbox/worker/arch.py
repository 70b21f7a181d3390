"""Tell the architecture of a checkpoint or LoRA from its safetensors header alone.

Only the 8-byte length and the JSON header are read: no tensor data, no unpickling. Names
and shapes are enough to tell SD1.x from SDXL and to refuse what we don't run (SD2.x,
Flux, SD3, refiner, inpainting, LoHa/LoKr, ...) with a message a user can act on.
"""

from __future__ import annotations

import json
import os
import re
import struct
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from .errors import HeaderError, LoraMismatchError, ModelMismatchError, UnsupportedModelError

Arch = Literal["sd15", "sdxl"]
ARCH_LABEL: dict[str, str] = {"sd15": "SD 1.5", "sdxl": "SDXL"}

#: The safetensors format caps the header at 100 MB; anything bigger is not one.
MAX_HEADER_BYTES = 100_000_000
UNET = "model.diffusion_model."
_ONLY = "only SD 1.5 and SDXL are supported"


@dataclass(frozen=True)
class TensorInfo:
    dtype: str
    shape: tuple[int, ...]


@dataclass(frozen=True)
class SafetensorsHeader:
    tensors: dict[str, TensorInfo]
    metadata: dict[str, str]
    header_bytes: int


@dataclass(frozen=True)
class CheckpointInfo:
    arch: Arch
    #: Width of the first UNet conv (320 for every real SD1.x/SDXL); smaller means a test model.
    unet_channels: int
    context_dim: int
    dtype: str
    n_tensors: int


@dataclass(frozen=True)
class LoraInfo:
    arch: Arch
    kind: Literal["lora", "locon"]
    format: Literal["kohya", "peft", "diffusers-old"]
    #: Number of LoRA modules (down/up pairs) per component, as named in the file.
    modules: dict[str, int] = field(default_factory=dict)
    rank: int = 0

    @property
    def total_modules(self) -> int:
        return sum(self.modules.values())


def read_header(path: str | os.PathLike[str]) -> SafetensorsHeader:
    """Parse the JSON header of a safetensors file; never touches the tensor bytes."""
    p = Path(path)
    try:
        with p.open("rb") as f:
            size = os.fstat(f.fileno()).st_size
            head = f.read(8)
            if len(head) < 8:
                raise HeaderError(f"{p.name}: too short to be a safetensors file")
            if head[:2] == b"PK" or head[:1] == b"\x80":
                raise HeaderError(
                    f"{p.name}: a pickle/zip checkpoint (.ckpt/.pt); only .safetensors files are "
                    "loaded, because unpickling can run code"
                )
            (n,) = struct.unpack("<Q", head)
            if n < 2 or n > MAX_HEADER_BYTES or 8 + n > size:
                raise HeaderError(f"{p.name}: not a safetensors file (header length {n})")
            raw = f.read(n)
    except OSError as exc:
        raise HeaderError(f"{p}: cannot read: {exc}") from exc
    try:
        obj = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise HeaderError(f"{p.name}: safetensors header is not valid JSON") from exc
    if not isinstance(obj, dict):
        raise HeaderError(f"{p.name}: safetensors header is not a JSON object")
    meta_raw = obj.pop("__metadata__", None) or {}
    metadata = {str(k): str(v) for k, v in meta_raw.items()} if isinstance(meta_raw, dict) else {}
    tensors: dict[str, TensorInfo] = {}
    for name, entry in obj.items():
        if not isinstance(entry, dict) or not isinstance(entry.get("shape"), list):
            raise HeaderError(f"{p.name}: malformed header entry {name!r}")
        tensors[name] = TensorInfo(str(entry.get("dtype")), tuple(int(d) for d in entry["shape"]))
    return SafetensorsHeader(tensors, metadata, n)


def _has_prefix(keys: dict[str, Any], prefix: str) -> bool:
    return any(k.startswith(prefix) for k in keys)


def _context_dim(tensors: dict[str, TensorInfo], suffix: str = "attn2.to_k.weight") -> int | None:
    for name, info in tensors.items():
        if name.endswith(suffix) and len(info.shape) == 2:
            return info.shape[1]
    return None


def _refuse_other_families(t: dict[str, Any], name: str) -> None:
    """Refuse what is not an SD 1.x or SDXL base checkpoint, by its keys."""
    keys = t.keys()
    if any("double_blocks." in k or "single_blocks." in k for k in keys):
        raise UnsupportedModelError(f"{name}: a Flux model; {_ONLY}")
    if any("joint_blocks." in k for k in keys):
        raise UnsupportedModelError(f"{name}: an SD3/SD3.5 model; {_ONLY}")
    if "edm_mean" in t or "edm_std" in t:
        raise UnsupportedModelError(f"{name}: a Playground v2.5 (EDM) model; not supported")
    if _has_prefix(t, "conditioner.embedders.0.model.") and not _has_prefix(
        t, "conditioner.embedders.1."
    ):
        raise UnsupportedModelError(f"{name}: an SDXL refiner; only base SDXL models are supported")
    if _has_prefix(t, "cond_stage_model.model."):
        raise UnsupportedModelError(f"{name}: an SD 2.x model (OpenCLIP-H text encoder); {_ONLY}")
    if not _has_prefix(t, UNET):
        if "conv_in.weight" in t and _has_prefix(t, "down_blocks."):
            raise UnsupportedModelError(
                f"{name}: a bare diffusers UNet, not a full single-file checkpoint"
            )
        raise UnsupportedModelError(f"{name}: not a Stable Diffusion checkpoint (no UNet keys)")


def _arch_of(t: dict[str, Any], context: int, name: str) -> Arch:
    """``sd15`` or ``sdxl`` by the UNet's cross-attention width, with its text encoders."""
    if context == 768:
        if not (
            _has_prefix(t, "cond_stage_model.transformer.text_model.")
            or _has_prefix(t, "cond_stage_model.transformer.embeddings.")
        ):
            raise UnsupportedModelError(f"{name}: SD 1.x UNet without its CLIP text encoder")
        return "sd15"
    if context == 2048 and UNET + "label_emb.0.0.weight" in t:
        if not (
            _has_prefix(t, "conditioner.embedders.0.transformer.text_model.")
            and _has_prefix(t, "conditioner.embedders.1.model.")
        ):
            raise UnsupportedModelError(f"{name}: SDXL UNet without both text encoders")
        return "sdxl"
    if context == 1024:
        raise UnsupportedModelError(f"{name}: an SD 2.x model (1024-dim cross-attention); {_ONLY}")
    raise UnsupportedModelError(f"{name}: unknown UNet (cross-attention width {context})")


def detect_checkpoint(header: SafetensorsHeader, name: str = "checkpoint") -> CheckpointInfo:
    """Classify a full single-file checkpoint (LDM layout) as ``sd15`` or ``sdxl``."""
    t = header.tensors
    _refuse_other_families(t, name)
    conv_in = t.get(UNET + "input_blocks.0.0.weight")
    if conv_in is None or len(conv_in.shape) != 4:
        raise UnsupportedModelError(f"{name}: UNet has no input conv; unknown layout")
    if conv_in.shape[1] != 4:
        kinds = {9: "an inpainting", 8: "an instruct-pix2pix"}
        kind = kinds.get(conv_in.shape[1], "a non-standard")
        raise UnsupportedModelError(
            f"{name}: {kind} model ({conv_in.shape[1]} input channels); not supported"
        )
    context = _context_dim({k: v for k, v in t.items() if k.startswith(UNET)})
    if context is None:
        raise UnsupportedModelError(f"{name}: UNet has no cross-attention; unknown layout")
    if not _has_prefix(t, "first_stage_model."):
        raise UnsupportedModelError(f"{name}: no VAE baked in; separate VAE files are unsupported")

    arch = _arch_of(t, context, name)
    dtypes = Counter(info.dtype for k, info in t.items() if k.startswith(UNET))
    return CheckpointInfo(
        arch=arch,
        unet_channels=conv_in.shape[0],
        context_dim=context,
        dtype=dtypes.most_common(1)[0][0],
        n_tensors=len(t),
    )


# --- LoRA -------------------------------------------------------------------------------

_PEFT_DOWN = re.compile(r"\.lora_A(?:\.[\w-]+)?\.weight$")
_OLD_DIFFUSERS_DOWN = re.compile(r"\.lora(?:_linear_layer)?\.down\.weight$|_lora\.down\.weight$")
_KOHYA_COMPONENTS = {
    "lora_te1_": "text_encoder",
    "lora_te2_": "text_encoder_2",
    "lora_te_": "text_encoder",
    "lora_unet_": "unet",
}
_PEFT_COMPONENTS = {
    "text_encoder_2.": "text_encoder_2",
    "text_encoder.": "text_encoder",
    "unet.": "unet",
    "transformer.": "transformer",
}


def _component(name: str, table: dict[str, str]) -> str:
    for prefix, comp in table.items():
        if name.startswith(prefix):
            return comp
    return "other"


def detect_lora(header: SafetensorsHeader, name: str = "LoRA") -> LoraInfo:
    """Classify a LoRA/LoCon file (kohya, peft or old diffusers naming) as SD1.5 or SDXL."""
    t = header.tensors
    keys = list(t)
    if any(k.endswith((".hada_w1_a", ".hada_w1_b")) for k in keys):
        raise UnsupportedModelError(f"{name}: a LyCORIS LoHa; only LoRA and LoCon are supported")
    if any(".lokr_w1" in k for k in keys):
        raise UnsupportedModelError(f"{name}: a LyCORIS LoKr; only LoRA and LoCon are supported")
    if any(
        "double_blocks" in k or "single_blocks" in k or "single_transformer_blocks" in k
        for k in keys
    ):
        raise UnsupportedModelError(f"{name}: a Flux LoRA; {_ONLY}")
    if any("joint_blocks" in k or "context_block" in k for k in keys):
        raise UnsupportedModelError(f"{name}: an SD3 LoRA; {_ONLY}")

    downs: dict[str, TensorInfo] = {}
    fmt: Literal["kohya", "peft", "diffusers-old"]
    if any(k.endswith(".lora_down.weight") for k in keys):
        fmt = "kohya"
        for k in keys:
            if k.endswith(".lora_down.weight"):
                downs[k[: -len(".lora_down.weight")]] = t[k]
        table = _KOHYA_COMPONENTS
    elif any(_PEFT_DOWN.search(k) for k in keys):
        fmt = "peft"
        for k in keys:
            m = _PEFT_DOWN.search(k)
            if m:
                downs[k[: m.start()]] = t[k]
        table = _PEFT_COMPONENTS
    elif any(_OLD_DIFFUSERS_DOWN.search(k) for k in keys):
        fmt = "diffusers-old"
        for k in keys:
            m = _OLD_DIFFUSERS_DOWN.search(k)
            if m:
                downs[k[: m.start()]] = t[k]
        table = _PEFT_COMPONENTS
    else:
        raise UnsupportedModelError(f"{name}: no LoRA down/up weights found; not a LoRA file")

    modules = Counter(_component(mod, table) for mod in downs)
    if modules.get("transformer") or modules.get("other"):
        raise UnsupportedModelError(f"{name}: LoRA for an unknown or DiT architecture")

    arch = _lora_arch(downs, name)
    conv = any(
        len(info.shape) == 4 and info.shape[2] * info.shape[3] > 1 for info in downs.values()
    )
    ranks = Counter(info.shape[0] for info in downs.values())
    return LoraInfo(
        arch=arch,
        kind="locon" if conv else "lora",
        format=fmt,
        modules=dict(sorted(modules.items())),
        rank=ranks.most_common(1)[0][0] if ranks else 0,
    )


def _lora_arch(downs: dict[str, TensorInfo], name: str) -> Arch:
    # Cross-attention k/v input width is the text context width: the surest sign.
    for mod, info in downs.items():
        norm = mod.replace(".", "_")
        if re.search(r"attn2_(to_k|to_v)(_|$)", norm) and len(info.shape) >= 2:
            ctx = info.shape[1]
            if ctx == 768:
                return "sd15"
            if ctx == 2048:
                return "sdxl"
            if ctx == 1024:
                raise UnsupportedModelError(f"{name}: an SD 2.x LoRA (1024-dim cross-attention)")
            raise UnsupportedModelError(f"{name}: LoRA for an unknown UNet (context {ctx})")
    flat = [m.replace(".", "_") for m in downs]
    if any(m.startswith(("lora_te1_", "lora_te2_", "text_encoder_2_")) for m in flat):
        return "sdxl"
    for mod, info in downs.items():
        norm = mod.replace(".", "_")
        if "self_attn_q_proj" in norm and len(info.shape) == 2:
            if info.shape[1] == 768:
                return "sd15"
            if info.shape[1] == 1024:
                raise UnsupportedModelError(f"{name}: an SD 2.x LoRA (OpenCLIP-H text encoder)")
    # UNet-only and no cross-attention: SDXL has no attention in its first level.
    if any(re.search(r"(down_blocks_0_attentions|input_blocks_[12]_1_)", m) for m in flat):
        return "sd15"
    if any(re.search(r"input_blocks_[78]_1_|down_blocks_2_attentions", m) for m in flat):
        return "sdxl"
    raise UnsupportedModelError(f"{name}: cannot tell which base model this LoRA is for")


# --- catalog cross-check ------------------------------------------------------------------


def family_of_base_model(base_model: str) -> str | None:
    """Map a Civitai ``baseModel`` string to an architecture family (None: unknown/no opinion)."""
    s = base_model.strip().lower()
    if s.startswith("pony v7"):
        return "auraflow"
    if s.startswith("sd 1"):
        return "sd15"
    if s.startswith(("sdxl", "pony", "illustrious", "noobai")):
        return "sdxl"
    if s.startswith("sd 2"):
        return "sd2"
    if s.startswith("sd 3"):
        return "sd3"
    if s.startswith("flux"):
        return "flux"
    return None


def check_base_model(arch: Arch, base_model: str | None, what: str = "file") -> None:
    """Raise when the catalog's base model names another family than the file's header."""
    if not base_model:
        return
    family = family_of_base_model(base_model)
    if family is not None and family != arch:
        raise ModelMismatchError(
            f"{what} is {ARCH_LABEL[arch]} by its tensors, but the catalog says {base_model!r}"
        )


def check_lora_fits(lora: LoraInfo, model_arch: Arch, name: str = "LoRA") -> None:
    if lora.arch != model_arch:
        raise LoraMismatchError(
            f"{name} is an {ARCH_LABEL[lora.arch]} LoRA and cannot be used with an "
            f"{ARCH_LABEL[model_arch]} checkpoint"
        )


def inspect_checkpoint(
    path: str | os.PathLike[str], base_model: str | None = None
) -> CheckpointInfo:
    info = detect_checkpoint(read_header(path), Path(path).name)
    check_base_model(info.arch, base_model, Path(path).name)
    return info


def inspect_lora(path: str | os.PathLike[str], base_model: str | None = None) -> LoraInfo:
    info = detect_lora(read_header(path), Path(path).name)
    check_base_model(info.arch, base_model, Path(path).name)
    return info
