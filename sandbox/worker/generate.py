"""Run one job: spec in, PNGs with A1111 metadata out.

``generate(engine, spec)`` loads (or reuses) the checkpoint, switches LoRAs, encodes the
prompts A1111-style, builds the sampler, runs txt2img / img2img / hires fix with one CPU
``torch.Generator`` per image (seed + i), decodes, and writes deterministic PNGs.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import logging
import math
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sandbox.protocol.jobspec import GenSpec, TagError, check_prompt_tags, strip_tags

from . import infotext
from .errors import EngineError, SpecError
from .infotext import parse_parameters
from .pipeline import Engine, LoraUse
from .prompts import LoraRef, prepend_triggers

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]
__all__ = ["CancelledError", "GeneratedImage", "generate", "parse_parameters", "resolve_prompt"]


class CancelledError(EngineError):
    code = "cancelled"


@dataclass(frozen=True)
class GeneratedImage:
    index: int
    seed: int
    width: int
    height: int
    png: bytes
    infotext: str
    sha256: str
    path: Path | None = None


@dataclass(frozen=True)
class ResolvedPrompt:
    """The prompt as encoded (tags removed) and as written to the metadata (tags kept)."""

    text: str
    infotext: str
    loras: list[LoraUse]


def version_label() -> str:
    try:
        v = importlib.metadata.version("assetmgr")
    except importlib.metadata.PackageNotFoundError:
        return "assetmgr"
    return "assetmgr " + ".".join(v.split(".")[:2])


def _tag(name: str, te: float, unet: float) -> str:
    if te == unet:
        return f"<lora:{name}:{infotext.fmt_number(te)}>"
    return f"<lora:{name}:{infotext.fmt_number(te)}:{infotext.fmt_number(unet)}>"


def resolve_prompt(spec: GenSpec) -> ResolvedPrompt:
    """Match ``<lora:...>`` tags to the spec's LoRA files and settle every weight.

    Weights in the spec win over the tag; a spec LoRA with no tag is applied with its own
    weights (default 1.0) and a tag is appended to the metadata prompt so the PNG still says
    what was used.
    """
    try:
        tags = check_prompt_tags(spec.prompt, spec.negative_prompt)
    except TagError as exc:
        raise SpecError(str(exc)) from None
    by_name = {lora.name: lora for lora in spec.loras}
    refs: dict[str, LoraRef] = {}
    for tag in tags:
        if tag.name not in by_name:
            raise SpecError(f"prompt uses LoRA {tag.name!r} but the job has no file for it")
        refs[tag.name] = LoraRef(tag.name, tag.te, tag.unet)

    uses: list[LoraUse] = []
    for lora in spec.loras:
        ref = refs.get(lora.name)
        te = lora.te_weight if lora.te_weight is not None else (ref.te if ref else 1.0)
        if lora.unet_weight is not None:
            unet = lora.unet_weight
        elif ref is not None and lora.te_weight is None:
            unet = ref.unet_weight
        else:
            unet = te
        uses.append(LoraUse(lora.name, lora.path, te, unet, lora.sha256, lora.base_model))
    weights = {u.name: (u.te_weight, u.unet_weight) for u in uses}

    # The metadata prompt keeps the user's tag text where it states the effective weights.
    parts, pos = [], 0
    for tag in tags:
        te, unet = weights[tag.name]
        written = spec.prompt[tag.start : tag.end]
        same = (tag.te, tag.unet_weight) == (te, unet)
        parts += [spec.prompt[pos : tag.start], written if same else _tag(tag.name, te, unet)]
        pos = tag.end
    meta_prompt = "".join([*parts, spec.prompt[pos:]])
    untagged = [u for u in uses if u.name not in refs]
    if untagged:
        extra = " ".join(_tag(u.name, u.te_weight, u.unet_weight) for u in untagged)
        meta_prompt = f"{meta_prompt} {extra}" if meta_prompt.strip() else extra
    text = strip_tags(spec.prompt, tags)
    if spec.prepend_trigger_words:
        triggers = [w for lora in spec.loras for w in lora.trigger_words]
        text = prepend_triggers(text, triggers)
        meta_prompt = prepend_triggers(meta_prompt, triggers)
    return ResolvedPrompt(text, meta_prompt, uses)


def _params(
    spec: GenSpec, seed: int, lora_hashes: Mapping[str, str], model_name: str
) -> dict[str, Any]:
    from .samplers import infotext_fields

    sampler, schedule = infotext_fields(spec.sampler, spec.schedule_type)
    denoise = None
    if spec.img2img is not None:
        denoise = spec.img2img.denoise
    elif spec.hires is not None:
        denoise = spec.hires.denoise
    params: dict[str, Any] = {
        "Steps": spec.steps,
        "Sampler": sampler,
        "Schedule type": schedule,
        "CFG scale": infotext.fmt_number(spec.cfg_scale),
        "Seed": seed,
        "Size": f"{spec.width}x{spec.height}",
        "Model hash": spec.model_sha256[:10].lower(),
        "Model": model_name,
        "Denoising strength": infotext.fmt_number(denoise) if denoise is not None else None,
        "Clip skip": spec.clip_skip if spec.clip_skip > 1 else None,
        # Noise always comes from CPU generators, so results do not depend on the GPU.
        "RNG": "CPU",
    }
    if spec.hires is not None:
        params["Hires upscale"] = infotext.fmt_number(spec.hires.scale)
        params["Hires steps"] = spec.hires.steps or None
        params["Hires upscaler"] = spec.hires.upscaler
    if lora_hashes:
        params["Lora hashes"] = infotext.lora_hashes_value(lora_hashes.items())
    params["Version"] = spec.version_label or version_label()
    return params


def _step_callback(progress: Progress | None, cancel: threading.Event | None, total: int) -> Any:
    if progress is None and cancel is None:
        return None

    def on_step_end(pipe: Any, step: int, _t: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
        if progress is not None:
            progress(step + 1, total)
        if cancel is not None and cancel.is_set():
            pipe._interrupt = True  # diffusers skips the remaining steps
        return kwargs

    return on_step_end


def generate(
    engine: Engine,
    spec: GenSpec | Mapping[str, Any],
    *,
    out_dir: str | Path | None = None,
    verify_model_hash: bool = False,
    progress: Progress | None = None,
    cancel: threading.Event | None = None,
) -> list[GeneratedImage]:
    """Run a generation job; returns one ``GeneratedImage`` per batch item.

    ``spec`` is a ``GenSpec`` or its dict form. With ``out_dir`` the PNGs are also written
    there as ``<index>-<seed>.png``. ``verify_model_hash`` re-hashes the checkpoint (seconds
    per GB); LoRA files with a sha256 in the spec are always verified (they are small).
    """
    if not isinstance(spec, GenSpec):
        spec = GenSpec.model_validate(spec)
    import torch

    if spec.device == "cuda" and not torch.cuda.is_available():
        raise SpecError("the job asks for CUDA but no GPU is visible")
    if spec.threads is not None:
        torch.set_num_threads(spec.threads)
    resolved = resolve_prompt(spec)
    if verify_model_hash:
        from sandbox.protocol.hashing import sha256_file

        got = sha256_file(spec.model_path)
        if got != spec.model_sha256.lower():
            from .errors import HashMismatchError

            raise HashMismatchError(f"checkpoint sha256 {got} != expected {spec.model_sha256}")
    engine.load(
        spec.model_path,
        dtype=spec.dtype,
        device=spec.device,
        config_dir=spec.config_dir,
        base_model=spec.base_model,
        optimize=spec.optimize,
    )
    lora_hashes = engine.set_loras(resolved.loras)
    latents = run_latents(engine, spec, resolved.text, progress=progress, cancel=cancel)
    images = engine.decode(latents)

    model_name = spec.model_name or Path(spec.model_path).stem
    out = Path(out_dir) if out_dir is not None else None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
    results: list[GeneratedImage] = []
    for i, (image, seed) in enumerate(zip(images, spec.image_seeds, strict=True)):
        text = infotext.build(
            resolved.infotext, spec.negative_prompt, _params(spec, seed, lora_hashes, model_name)
        )
        data = infotext.png_bytes(image, text)
        path = None
        if out is not None:
            path = out / f"{i:05d}-{seed}.png"
            path.write_bytes(data)
        results.append(
            GeneratedImage(
                index=i,
                seed=seed,
                width=image.width,
                height=image.height,
                png=data,
                infotext=text,
                sha256=hashlib.sha256(data).hexdigest(),
                path=path,
            )
        )
    return results


def run_latents(
    engine: Engine,
    spec: GenSpec,
    prompt_text: str,
    *,
    progress: Progress | None = None,
    cancel: threading.Event | None = None,
) -> Any:
    """Everything up to the VAE: prompt encoding, sampling, optional hires pass; latents out."""
    import torch

    from .prompts import encode_prompts

    pipe = engine.pipe
    sdxl = engine.arch == "sdxl"
    embeds = encode_prompts(pipe, prompt_text, spec.negative_prompt, spec.clip_skip, sdxl=sdxl)
    noise_seed = spec.scheduler_seed if spec.scheduler_seed is not None else spec.seed

    def generators() -> list[torch.Generator]:
        return [torch.Generator("cpu").manual_seed(s) for s in spec.image_seeds]

    common: dict[str, Any] = {
        **embeds.as_kwargs(),
        "guidance_scale": spec.cfg_scale,
        "num_images_per_prompt": spec.batch_size,
        "output_type": "latent",
    }
    hires_steps = (spec.hires.steps or spec.steps) if spec.hires else 0
    total = spec.steps + hires_steps
    callback = _step_callback(progress, cancel, total)
    if callback is not None:
        common["callback_on_step_end"] = callback

    if spec.img2img is not None:
        init = _load_init_image(spec.img2img.init_image, spec.width, spec.height)
        i2i = engine.img2img_pipe()
        i2i.scheduler = engine.scheduler(spec.sampler, spec.schedule_type, noise_seed)
        latents = i2i(
            image=init,
            strength=spec.img2img.denoise,
            num_inference_steps=spec.steps,
            generator=generators(),
            **common,
        ).images
        _raise_if_cancelled(cancel)
        return latents

    pipe.scheduler = engine.scheduler(spec.sampler, spec.schedule_type, noise_seed)
    latents = pipe(
        num_inference_steps=spec.steps,
        height=spec.height,
        width=spec.width,
        generator=generators(),
        **common,
    ).images
    _raise_if_cancelled(cancel)
    if spec.hires is None:
        return latents

    w2, h2 = spec.hires_size()
    # A1111's "Latent" upscaler: bilinear, no antialiasing.
    upscaled = torch.nn.functional.interpolate(
        latents, size=(h2 // 8, w2 // 8), mode="bilinear", antialias=False
    )
    denoise = min(spec.hires.denoise, 0.999)
    steps = stretched_steps(hires_steps, denoise)
    if callback is not None:
        common["callback_on_step_end"] = _offset_callback(progress, cancel, spec.steps, total)
    i2i = engine.img2img_pipe()
    i2i.scheduler = engine.scheduler(spec.sampler, spec.schedule_type, noise_seed)
    latents = i2i(
        image=upscaled,
        strength=denoise,
        num_inference_steps=steps,
        generator=generators(),
        **common,
    ).images
    _raise_if_cancelled(cancel)
    return latents


def stretched_steps(steps: int, denoise: float) -> int:
    """Schedule length so that img2img at ``denoise`` runs exactly ``steps`` steps.

    That is what A1111's hires pass does; diffusers runs ``int(n * strength)`` of ``n``.
    """
    n = math.ceil(steps / denoise)
    while int(n * denoise) < steps:
        n += 1
    return n


def _offset_callback(
    progress: Progress | None, cancel: threading.Event | None, offset: int, total: int
) -> Any:
    inner = _step_callback(
        (lambda s, t: progress(min(offset + s, total), total)) if progress else None,
        cancel,
        total,
    )
    return inner


def _raise_if_cancelled(cancel: threading.Event | None) -> None:
    if cancel is not None and cancel.is_set():
        raise CancelledError("generation cancelled")


def _load_init_image(path: str, width: int, height: int) -> Any:
    from PIL import Image

    try:
        with Image.open(path) as img:
            rgb = img.convert("RGB")
    except OSError as exc:
        raise SpecError(f"cannot read init image {path}: {exc}") from exc
    if rgb.size != (width, height):
        rgb = rgb.resize((width, height), Image.Resampling.LANCZOS)  # A1111 "Just resize"
    return rgb
