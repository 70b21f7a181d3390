"""The generation job spec: every input that changes pixels, as one validated record.

Plain pydantic, no host imports: the host builds it (resolving LoRA names to files and
hashing them), serialises it, and the worker validates it here before touching torch.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

SHA256_PATTERN = r"^[0-9a-fA-F]{64}$"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LoraSpec(_Strict):
    """A LoRA the host resolved: the name used in ``<lora:name:...>`` tags and the file."""

    name: str = Field(min_length=1)
    path: str
    sha256: str | None = Field(default=None, pattern=SHA256_PATTERN)
    #: Text-encoder / UNet weights. None: take them from the prompt tag, else 1.0.
    te_weight: float | None = None
    unet_weight: float | None = None
    #: Catalog base model of the LoRA ("SD 1.5", "Pony", ...), cross-checked with the header.
    base_model: str | None = None
    trigger_words: list[str] = Field(default_factory=list)

    @field_validator("name")
    @classmethod
    def _plain_name(cls, v: str) -> str:
        if any(c in v for c in "<>:"):
            raise ValueError("LoRA names cannot contain '<', '>' or ':'")
        return v


class Img2ImgSpec(_Strict):
    init_image: str
    denoise: float = Field(0.75, ge=0.0, le=1.0)


class HiresSpec(_Strict):
    """A1111 hires fix: txt2img at the base size, latent upscale, then an img2img pass."""

    scale: float = Field(2.0, gt=1.0, le=4.0)
    #: Second-pass steps; 0 means "same as the first pass", as in A1111.
    steps: int = Field(0, ge=0, le=150)
    denoise: float = Field(0.5, gt=0.0, le=1.0)
    upscaler: Literal["Latent"] = "Latent"


class GenSpec(_Strict):
    model_path: str
    model_sha256: str = Field(pattern=SHA256_PATTERN)
    #: Shown as ``Model:`` in the PNG metadata; default: the file name without extension.
    model_name: str | None = None
    #: Catalog base model of the checkpoint, cross-checked with the header.
    base_model: str | None = None
    #: Replaces the shipped diffusers config folder (only for the reduced-width test models).
    config_dir: str | None = None

    loras: list[LoraSpec] = Field(default_factory=list)
    prepend_trigger_words: bool = False

    prompt: str
    negative_prompt: str = ""
    steps: int = Field(20, ge=1, le=150)
    cfg_scale: float = Field(7.0, ge=0.0, le=30.0)
    seed: int = Field(ge=0, lt=2**32)
    width: int = Field(512, ge=64, le=2048, multiple_of=8)
    height: int = Field(512, ge=64, le=2048, multiple_of=8)
    batch_size: int = Field(1, ge=1, le=16)
    sampler: str = "Euler a"
    #: A1111 >=1.9 "Schedule type" (Automatic, Karras, ...); may also be part of ``sampler``.
    schedule_type: str | None = None
    #: Seed of the Brownian-tree noise of "DPM++ SDE"; default: ``seed``.
    scheduler_seed: int | None = Field(default=None, ge=0, lt=2**63)
    #: A1111 numbering: 1 = last layer, 2 = penultimate.
    clip_skip: int = Field(1, ge=1, le=12)

    dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    device: Literal["cpu", "cuda"] = "cpu"
    #: torch.set_num_threads; CPU results depend on it, so it is part of the record.
    threads: int | None = Field(default=None, ge=1, le=256)
    #: GPU speed path (fused QKV, channels_last, torch.compile, bf16 VAE): changes low bits.
    optimize: bool = False

    img2img: Img2ImgSpec | None = None
    hires: HiresSpec | None = None

    #: Written as ``Version:``; default ``assetmgr <major.minor>``.
    version_label: str | None = None

    @model_validator(mode="after")
    def _consistent(self) -> GenSpec:
        if self.img2img is not None and self.hires is not None:
            raise ValueError("hires fix applies to txt2img only")
        names = [lora.name for lora in self.loras]
        if len(set(names)) != len(names):
            raise ValueError("LoRA names must be unique")
        if self.device == "cpu" and self.dtype == "float16":
            raise ValueError("float16 on CPU is emulated and very slow; use float32 or bfloat16")
        if self.optimize and self.device != "cuda":
            raise ValueError("the speed path (optimize) is for CUDA only")
        return self

    @property
    def image_seeds(self) -> list[int]:
        """A1111 convention: image i of a batch uses ``seed + i``."""
        return [(self.seed + i) % 2**32 for i in range(self.batch_size)]

    def hires_size(self) -> tuple[int, int]:
        if self.hires is None:
            return self.width, self.height
        # Latent upscaling needs multiples of 8.
        w = int(self.width * self.hires.scale) // 8 * 8
        h = int(self.height * self.hires.scale) // 8 * 8
        return w, h
