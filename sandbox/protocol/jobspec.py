"""The ``generate`` job's contract, one definition for both sides: the spec (`GenSpec`), the
bounds of its fields, the sampler names and the A1111 extra-network tag syntax.

The host checks a request against it before any container starts (`assetmgr.app.generate_checks`);
the worker validates the same spec with the same model before touching torch, and parses the
prompt's ``<lora:...>`` tags with the same parser. Stdlib and pydantic only: the image gets a
copy of this file next to `sandbox.protocol` (`sandbox.image.build.SHARED_FILES`).
"""

from __future__ import annotations

import difflib
import math
import re
from dataclasses import dataclass
from typing import Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

SHA256_PATTERN: Final = r"^[0-9a-fA-F]{64}$"


@dataclass(frozen=True)
class Bound:
    """The allowed values of one numeric spec field: `lo`..`hi` inclusive, and a multiple of
    `multiple_of` when set."""

    lo: int | float
    hi: int | float
    multiple_of: int | None = None

    def allows(self, value: float) -> bool:
        if not self.lo <= value <= self.hi:
            return False
        return self.multiple_of is None or value % self.multiple_of == 0


STEPS: Final = Bound(1, 150)
CFG_SCALE: Final = Bound(0.0, 30.0)
SEED: Final = Bound(0, 2**32 - 1)
#: Width and height: the VAE works on 8x8 pixel blocks.
SIZE: Final = Bound(64, 2048, multiple_of=8)
BATCH_SIZE: Final = Bound(1, 16)
#: A1111 numbering: 1 = last layer, 2 = penultimate.
CLIP_SKIP: Final = Bound(1, 12)
THREADS: Final = Bound(1, 256)
HIRES_STEPS: Final = Bound(0, 150)

#: GenSpec field -> its bound, for checks that walk every numeric field.
BOUNDS: Final[dict[str, Bound]] = {
    "steps": STEPS,
    "cfg_scale": CFG_SCALE,
    "seed": SEED,
    "width": SIZE,
    "height": SIZE,
    "batch_size": BATCH_SIZE,
    "clip_skip": CLIP_SKIP,
    "threads": THREADS,
}

#: Characters of the prompt and of the negative prompt each.
PROMPT_MAX_CHARS: Final = 4096
#: Model files one job may mount (`sandbox.protocol.JobSpec.models`): the checkpoint + LoRAs.
MAX_MODEL_FILES: Final = 32
MAX_LORAS: Final = MAX_MODEL_FILES - 1
DTYPES: Final = ("float32", "float16", "bfloat16")
DEVICES: Final = ("cpu", "cuda")


# --- sampler names ----------------------------------------------------------------------------

#: A1111's sampler names (the worker maps each to a diffusers scheduler: `samplers.SAMPLERS`).
SAMPLER_NAMES: Final = (
    "Euler", "Euler a", "Heun", "LMS", "DPM2", "DPM2 a", "DPM++ 2M", "DPM++ 2M SDE",
    "DPM++ SDE", "DDIM", "PLMS", "UniPC", "DEIS", "LCM",
)  # fmt: skip
#: A1111 >=1.9 "Schedule type"; the first two suffixes may also end a sampler name.
SCHEDULE_TYPES: Final = ("Automatic", "Karras", "Exponential", "SGM Uniform")
SCHEDULE_SUFFIXES: Final = ("Karras", "Exponential")
#: The names offered in pickers, in A1111's pre-1.9 "sampler + suffix" form.
LISTED_NAMES: Final = (
    "Euler", "Euler a", "DPM++ 2M", "DPM++ 2M Karras", "DPM++ 2M SDE", "DPM++ 2M SDE Karras",
    "DPM++ SDE", "DPM++ SDE Karras", "DDIM", "UniPC", "Heun", "LMS", "LMS Karras", "DPM2",
    "DPM2 Karras", "DPM2 a", "DPM2 a Karras", "PLMS", "DEIS", "LCM",
)  # fmt: skip


class SamplerNameError(ValueError):
    """An unknown sampler or schedule type, or a sampler suffix that contradicts the schedule."""

    def __init__(self, message: str, *, name: str, suggestions: list[str]) -> None:
        super().__init__(message)
        self.name = name
        self.suggestions = suggestions


def sampler_names() -> list[str]:
    """Every accepted full name: each sampler, alone and with each schedule suffix."""
    return [*SAMPLER_NAMES] + [f"{b} {s}" for b in SAMPLER_NAMES for s in SCHEDULE_SUFFIXES]


def similar_sampler_names(name: str, n: int = 3) -> list[str]:
    """Known full names close to `name` (case-insensitive), best first."""
    by_lower = {known.lower(): known for known in sampler_names()}
    close = difflib.get_close_matches(name.strip().lower(), list(by_lower), n=n, cutoff=0.6)
    return [by_lower[c] for c in close]


def _canonical(name: str, choices: tuple[str, ...]) -> str | None:
    lowered = name.strip().lower()
    return next((c for c in choices if c.lower() == lowered), None)


def split_sampler(name: str, schedule_type: str | None = None) -> tuple[str, str]:
    """("dpm++ 2m karras", None) -> ("DPM++ 2M", "Karras"): canonical spelling, any case.

    Raises `SamplerNameError` for an unknown name or schedule type, or a suffix that
    contradicts `schedule_type`.
    """
    base = _canonical(name, SAMPLER_NAMES)
    sched = "Automatic"
    if schedule_type is not None:
        found = _canonical(schedule_type, SCHEDULE_TYPES)
        if found is None:
            raise SamplerNameError(
                f"unknown schedule type {schedule_type!r}; known: {', '.join(SCHEDULE_TYPES)}",
                name=schedule_type,
                suggestions=[],
            )
        sched = found
    if base is None:
        for suffix in SCHEDULE_SUFFIXES:
            head, sep, tail = name.strip().rpartition(" ")
            if sep and tail.lower() == suffix.lower():
                base = _canonical(head, SAMPLER_NAMES)
                if base is not None:
                    if sched not in ("Automatic", suffix):
                        raise SamplerNameError(
                            f"sampler {name!r} conflicts with schedule type {schedule_type!r}",
                            name=name,
                            suggestions=[],
                        )
                    sched = suffix
                break
    if base is None:
        raise SamplerNameError(
            f"unknown sampler {name!r}", name=name, suggestions=similar_sampler_names(name)
        )
    return base, sched


def canonical_sampler(name: str) -> str:
    """The sampler name as A1111 spells it ("euler A" -> "Euler a"); `split_sampler`'s errors."""
    base, sched = split_sampler(name)
    return base if sched == "Automatic" else f"{base} {sched}"


# --- extra-network tags in prompts ------------------------------------------------------------

LORA_TAG_KINDS: Final = ("lora", "lyco")
_TAG_OPEN = re.compile(r"<(\w+):")
_OTHER_TAG = re.compile(r"<(\w+):([^<>]+)>")
_NUMBER = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_NAMED_ARGS: Final = ("te", "unet", "dyn")
_MAX_SHOWN = 80


@dataclass(frozen=True)
class NetworkTag:
    """One ``<kind:...>`` tag of a prompt; `start`/`end` index it in the prompt text.

    For ``lora``/``lyco``: ``<kind:NAME[:TE[:UNET[:DYN]]]>``, or ``te=``/``unet=``/``dyn=``
    by name; `unet` None means "same as te". Other kinds (hypernet, ...) keep only their text.
    """

    kind: str
    name: str
    start: int
    end: int
    te: float = 1.0
    unet: float | None = None

    @property
    def is_lora(self) -> bool:
        return self.kind in LORA_TAG_KINDS

    @property
    def unet_weight(self) -> float:
        return self.te if self.unet is None else self.unet


TagProblem = Literal["syntax", "unsupported", "duplicate", "negative"]


class TagError(ValueError):
    """A prompt tag the worker would refuse; `position` is its 0-based index in the text.

    `kind`: a malformed tag (``syntax``), a network kind the worker does not run
    (``unsupported``), a LoRA tagged twice (``duplicate``) or a tag in the negative prompt.
    """

    def __init__(
        self,
        problem: str,
        *,
        tag: str,
        position: int,
        field: str = "prompt",
        kind: TagProblem = "syntax",
    ) -> None:
        super().__init__(f"{field}: {tag!r} at character {position + 1}: {problem}")
        self.problem = problem
        self.tag = tag
        self.position = position
        self.field = field
        self.kind: TagProblem = kind


def parse_weight(text: str) -> float:
    """A LoRA weight as written in a tag or ``--lora REF:W``: a finite decimal number."""
    text = text.strip()
    if not _NUMBER.fullmatch(text):
        raise ValueError(f"{text!r} is not a number")
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text!r} is out of range")
    return value


def _shown(text: str) -> str:
    return text if len(text) <= _MAX_SHOWN else text[: _MAX_SHOWN - 1] + "…"


def _lora_tag(kind: str, body: str, start: int, end: int, text: str, field: str) -> NetworkTag:
    def refuse(problem: str) -> TagError:
        return TagError(problem, tag=_shown(text), position=start, field=field)

    positional: list[str] = []
    named: dict[str, str] = {}
    for arg in body.split(":"):
        key, eq, value = arg.partition("=")
        if eq and key.strip().lower() in _NAMED_ARGS:
            if key.strip().lower() in named:
                raise refuse(f"{key.strip()}= is given twice")
            named[key.strip().lower()] = value
        else:
            positional.append(arg.strip())
    name = positional[0] if positional else ""
    if not name:
        raise refuse("the tag has no LoRA name")
    if len(positional) > 4:
        raise refuse("too many fields (at most NAME:TE:UNET:DYN)")
    te_text = named.get("te", positional[1] if len(positional) > 1 else None)
    unet_text = named.get("unet", positional[2] if len(positional) > 2 else None)
    dyn_text = named.get("dyn", positional[3] if len(positional) > 3 else None)
    weights: list[float | None] = []
    for what, value_text in (("weight", te_text), ("unet weight", unet_text), ("dyn", dyn_text)):
        if value_text is None:
            weights.append(None)
            continue
        try:
            weights.append(parse_weight(value_text))
        except ValueError:
            raise refuse(f"{what} {value_text.strip()!r} is not a number") from None
    te = weights[0] if weights[0] is not None else 1.0
    return NetworkTag(kind, name, start, end, te, weights[1])


def scan_tags(text: str, field: str = "prompt") -> tuple[list[NetworkTag], list[TagError]]:
    """Every extra-network tag of `text`, and every malformed ``<lora:``/``<lyco:`` tag.

    Tag kinds match case-insensitively (``<LoRA:x>`` is a LoRA tag), as in A1111. Never
    raises: the prompt editor scans half-typed prompts with it.
    """
    tags: list[NetworkTag] = []
    errors: list[TagError] = []
    pos, close = 0, -2  # close: the next '>' (-1: none left), found again only once passed
    while (m := _TAG_OPEN.search(text, pos)) is not None:
        start, kind = m.start(), m.group(1).lower()
        if kind in LORA_TAG_KINDS:
            if close != -1 and close < m.end():
                close = text.find(">", m.end())
            reopen = text.find("<", m.end())
            if close < 0 or 0 <= reopen < close:
                stop = reopen if reopen >= 0 else len(text)
                errors.append(
                    TagError(
                        "the tag is not closed with '>'",
                        tag=_shown(text[start:stop].rstrip()),
                        position=start,
                        field=field,
                    )
                )
                pos = m.end()
                continue
            body, whole = text[m.end() : close], text[start : close + 1]
            try:
                tags.append(_lora_tag(kind, body, start, close + 1, whole, field))
            except TagError as exc:
                errors.append(exc)
            pos = close + 1
            continue
        other = _OTHER_TAG.match(text, start)
        if other is None:
            pos = m.end()
            continue
        tags.append(NetworkTag(kind, other.group(2), start, other.end()))
        pos = other.end()
    return tags, errors


def parse_tags(text: str, field: str = "prompt") -> list[NetworkTag]:
    """`scan_tags`, raising the first malformed tag as a `TagError`."""
    tags, errors = scan_tags(text, field)
    if errors:
        raise errors[0]
    return tags


_TAG_BREAKING = re.compile(r"[<>:]")
_MODEL_SUFFIXES: Final = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")


def lora_tag_name(name: str) -> str:
    """How a LoRA file (`name`: its file name or its alias) is named in ``<lora:NAME:W>``.

    The name without its model extension, with ``<``, ``>`` and ``:`` (which would end or
    split the tag) as ``_``, without outer spaces (the parser strips them). Completion writes
    this, and the host resolves it back to the file with `lora_tag_matches`.
    """
    stem = name.strip()
    if stem.lower().endswith(_MODEL_SUFFIXES):
        stem = stem.rsplit(".", 1)[0]
    return _TAG_BREAKING.sub("_", stem).strip()


def lora_tag_matches(tag_name: str, file_name: str) -> bool:
    """Whether a tag's LoRA name names this file (the alias rule, case-insensitive)."""
    return lora_tag_name(file_name).casefold() == tag_name.strip().casefold()


def check_prompt_tags(prompt: str, negative: str = "") -> list[NetworkTag]:
    """The LoRA tags of a job's prompts, by the worker's rules; raises `TagError`.

    Every tag well formed, only ``lora``/``lyco`` kinds (the worker runs no hypernetworks),
    each LoRA named once, and none in the negative prompt.
    """
    tags = parse_tags(prompt, "prompt")
    seen: dict[str, NetworkTag] = {}
    for tag in tags:
        shown = _shown(prompt[tag.start : tag.end])
        if not tag.is_lora:
            raise TagError(
                f"<{tag.kind}:...> tags are not supported (only <lora:...> and <lyco:...>)",
                tag=shown,
                position=tag.start,
                kind="unsupported",
            )
        if tag.name in seen:
            raise TagError(
                f"LoRA {tag.name!r} is already tagged at character {seen[tag.name].start + 1}",
                tag=shown,
                position=tag.start,
                kind="duplicate",
            )
        seen[tag.name] = tag
    for tag in parse_tags(negative, "negative_prompt"):
        raise TagError(
            "LoRA and other network tags belong in the positive prompt",
            tag=_shown(negative[tag.start : tag.end]),
            position=tag.start,
            field="negative_prompt",
            kind="negative",
        )
    return tags


def strip_tags(text: str, tags: list[NetworkTag]) -> str:
    """`text` without the given tags (spans from `scan_tags` of this same text)."""
    parts, pos = [], 0
    for tag in sorted(tags, key=lambda t: t.start):
        parts.append(text[pos : tag.start])
        pos = tag.end
    parts.append(text[pos:])
    return "".join(parts)


# --- the spec ---------------------------------------------------------------------------------


def _field(bound: Bound, default: Any = ..., **kw: Any) -> Any:
    return Field(default, ge=bound.lo, le=bound.hi, multiple_of=bound.multiple_of, **kw)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class LoraSpec(_Strict):
    """A LoRA the host resolved: the name used in ``<lora:name:...>`` tags and the file."""

    name: str = Field(min_length=1, max_length=255)
    path: str = Field(max_length=4096)
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
    steps: int = _field(HIRES_STEPS, 0)
    denoise: float = Field(0.5, gt=0.0, le=1.0)
    upscaler: Literal["Latent"] = "Latent"


class GenSpec(_Strict):
    """Everything that changes pixels, as one validated record (see the module docstring)."""

    model_path: str = Field(max_length=4096)
    model_sha256: str = Field(pattern=SHA256_PATTERN)
    #: Shown as ``Model:`` in the PNG metadata; default: the file name without extension.
    model_name: str | None = None
    #: Catalog base model of the checkpoint, cross-checked with the header.
    base_model: str | None = None
    #: Replaces the shipped diffusers config folder (only for the reduced-width test models).
    config_dir: str | None = None

    loras: list[LoraSpec] = Field(default_factory=list, max_length=MAX_LORAS)
    prepend_trigger_words: bool = False

    prompt: str = Field(max_length=PROMPT_MAX_CHARS)
    negative_prompt: str = Field("", max_length=PROMPT_MAX_CHARS)
    steps: int = _field(STEPS, 20)
    cfg_scale: float = _field(CFG_SCALE, 7.0)
    seed: int = _field(SEED)
    width: int = _field(SIZE, 512)
    height: int = _field(SIZE, 512)
    batch_size: int = _field(BATCH_SIZE, 1)
    sampler: str = "Euler a"
    #: A1111 >=1.9 "Schedule type" (Automatic, Karras, ...); may also be part of ``sampler``.
    schedule_type: str | None = None
    #: Seed of the Brownian-tree noise of "DPM++ SDE"; default: ``seed``.
    scheduler_seed: int | None = Field(default=None, ge=0, lt=2**63)
    clip_skip: int = _field(CLIP_SKIP, 1)

    dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    device: Literal["cpu", "cuda"] = "cpu"
    #: torch.set_num_threads; CPU results depend on it, so it is part of the record.
    threads: int | None = _field(THREADS, None)
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
        split_sampler(self.sampler, self.schedule_type)
        check_prompt_tags(self.prompt, self.negative_prompt)
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


__all__ = [
    "BATCH_SIZE",
    "BOUNDS",
    "CFG_SCALE",
    "CLIP_SKIP",
    "DEVICES",
    "DTYPES",
    "LISTED_NAMES",
    "LORA_TAG_KINDS",
    "MAX_LORAS",
    "MAX_MODEL_FILES",
    "PROMPT_MAX_CHARS",
    "SAMPLER_NAMES",
    "SCHEDULE_SUFFIXES",
    "SCHEDULE_TYPES",
    "SEED",
    "SIZE",
    "STEPS",
    "THREADS",
    "Bound",
    "GenSpec",
    "HiresSpec",
    "Img2ImgSpec",
    "LoraSpec",
    "NetworkTag",
    "SamplerNameError",
    "TagError",
    "canonical_sampler",
    "check_prompt_tags",
    "lora_tag_matches",
    "lora_tag_name",
    "parse_tags",
    "parse_weight",
    "sampler_names",
    "scan_tags",
    "similar_sampler_names",
    "split_sampler",
    "strip_tags",
]
