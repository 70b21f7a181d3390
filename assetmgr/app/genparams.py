"""Generation data from outside as one record (`GenerationData`): a Civitai image's ``meta``,
a pasted A1111 parameters block, or a PNG's ``parameters`` chunk.

Every value is outside input. The text goes through the one parser
(`sandbox.protocol.infotext`); each number is checked against the job contract's bounds and
dropped with a note when it does not fit (never clamped: a clamped value would make another
image); prompts are cleaned like any shown text (`assetmgr.display.clean`, so an escape
sequence arrives as ``␛[...``); names are cut to the contract's length; at most
`MAX_LORA_REFS` LoRAs are kept. A PNG is read under the project's output-image caps
(`sandbox.results.OutputLimits`) with every chunk's length checked before Pillow sees it.
`assetmgr.app.reuse` resolves the resources to local files.
"""

from __future__ import annotations

import io
import math
import os
import stat
import struct
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from itertools import islice
from pathlib import Path
from typing import Any, Final, Literal

from assetmgr.display import clean
from assetmgr.errors import AssetMgrError
from sandbox.protocol import infotext, jobspec

#: Civitai's hash forms by length (A1111 "Model hash" is AutoV2, "Lora hashes" AutoV3).
HASH_TYPES: Final = {8: "AutoV1", 10: "AutoV2", 12: "AutoV3", 64: "SHA256"}
#: LoRA references kept from one image (a job takes `jobspec.MAX_LORAS`).
MAX_LORA_REFS: Final = 64
#: A ``parameters`` chunk's bytes: the text's bound, four UTF-8 bytes a character at most.
MAX_TEXT_CHUNK_BYTES: Final = 4 * infotext.MAX_PARAMETERS_CHARS + 1024
MAX_PNG_CHUNKS: Final = 1 << 16
_NAME_CHARS = 255
_MAX_WEIGHT = 100.0
_SHOWN = 60
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_TEXT_CHUNKS = (b"tEXt", b"zTXt", b"iTXt")
_LORA_RESOURCE_TYPES = ("lora", "locon", "lycoris", "dora")
_CHECKPOINT_RESOURCE_TYPES = ("checkpoint", "model")
_CIVITAI_KEYS = {
    "steps": "Steps",
    "sampler": "Sampler",
    "scheduler": "Schedule type",
    "cfgScale": "CFG scale",
    "seed": "Seed",
    "clipSkip": "Clip skip",
    "denoise": "Denoising strength",
}

Problem = Literal["not-png", "too-large", "bomb", "chunk", "unreadable", "none", "too-long"]


class GenerationDataError(AssetMgrError):
    """Generation data that cannot be read; `source` names it (a file, "the pasted text"),
    `problem` says what is wrong and `detail` the facts."""

    exit_code = 2

    def __init__(self, source: str, problem: Problem, detail: str) -> None:
        super().__init__(f"{source}: {detail}")
        self.source = source
        self.problem: Problem = problem
        self.detail = detail


@dataclass(frozen=True)
class ResourceRef:
    """A model the image was made with, as the image names it."""

    kind: Literal["checkpoint", "lora"]
    name: str | None = None
    hash: str | None = None
    """Upper-case hex of one of `HASH_TYPES`."""
    version_id: int | None = None
    weight: float | None = None

    @property
    def hash_type(self) -> str | None:
        return HASH_TYPES.get(len(self.hash)) if self.hash else None

    @property
    def label(self) -> str:
        if self.name:
            return self.name
        if self.hash:
            return f"{self.hash_type} {self.hash}"
        return f"version {self.version_id}"


@dataclass(frozen=True)
class GenerationData:
    """What an image says about its generation; None where it says nothing usable."""

    prompt: str = ""
    negative: str = ""
    steps: int | None = None
    sampler: str | None = None
    """A name the pickers list (``DPM++ 2M Karras``): the schedule joined when it can be."""
    schedule_type: str | None = None
    """Only a schedule no sampler name can carry (``SGM Uniform``)."""
    cfg: float | None = None
    seed: int | None = None
    width: int | None = None
    height: int | None = None
    clip_skip: int | None = None
    hires_scale: float | None = None
    hires_steps: int | None = None
    hires_denoise: float | None = None
    checkpoint: ResourceRef | None = None
    loras: tuple[ResourceRef, ...] = ()
    notes: tuple[str, ...] = ()
    """What was dropped or cannot be reproduced, one line each."""


def _shown(value: object) -> str:
    text = str(value)
    return repr(text if len(text) <= _SHOWN else text[: _SHOWN - 1] + "…")


def _weight(value: object) -> float | None:
    """A LoRA weight from JSON: a finite number (Python's JSON also reads NaN and Infinity)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    return number if math.isfinite(number) and abs(number) <= _MAX_WEIGHT else None


def _text(value: object) -> str | None:
    """A scalar as text; anything else (objects, lists, booleans) is not a value here."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, str | int | float):
        return str(value).strip()
    return None


@dataclass
class _Builder:
    """Collects checked fields and the notes about those that did not pass."""

    fields: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def integer(self, name: str, label: str, raw: object, bound: jobspec.Bound) -> None:
        text = _text(raw)
        if text is None or not text:
            return
        digits = text.removeprefix("-")
        if not digits.isdigit() or not digits.isascii() or len(digits) > 20:
            self.notes.append(f"{label} {_shown(text)} is not a whole number; not used")
            return
        value = int(text)
        if not bound.allows(value):
            self.notes.append(
                f"{label} {value} is outside {bound.lo}..{bound.hi}; the form keeps its own"
            )
            return
        self.fields[name] = value

    def number(
        self, name: str, label: str, raw: object, lo: float, hi: float, *, above: bool = False
    ) -> None:
        text = _text(raw)
        if text is None or not text:
            return
        try:
            value = jobspec.parse_weight(text)
        except ValueError:
            self.notes.append(f"{label} {_shown(text)} is not a number; not used")
            return
        if not (lo < value if above else lo <= value) or value > hi:
            self.notes.append(f"{label} {value:g} is out of range; the form keeps its own")
            return
        self.fields[name] = value


def _hash(raw: object, what: str, notes: list[str]) -> str | None:
    text = _text(raw)
    if not text:
        return None
    digest = text.upper()
    if len(digest) not in HASH_TYPES or any(c not in "0123456789ABCDEF" for c in digest):
        notes.append(f"the hash {_shown(text)} of {what} is not a Civitai hash; not used")
        return None
    return digest


def _name(raw: object) -> str | None:
    text = _text(raw)
    return clean(text)[:_NAME_CHARS] if text else None


def _sampler(b: _Builder, raw_sampler: object, raw_schedule: object) -> None:
    name, schedule = _text(raw_sampler), _text(raw_schedule)
    if not name:
        return
    try:
        base, sched = jobspec.split_sampler(name, schedule or None)
    except jobspec.SamplerNameError:
        shown = f"{name} + {schedule}" if schedule else name
        b.notes.append(f"the sampler {_shown(shown)} is not available here; the form keeps its own")
        return
    if sched in jobspec.SCHEDULE_SUFFIXES:
        b.fields["sampler"] = f"{base} {sched}"
    else:
        b.fields["sampler"] = base
        if sched != "Automatic":
            b.fields["schedule_type"] = sched


def _size(b: _Builder, raw: Mapping[str, Any]) -> None:
    size = _text(raw.get("Size"))
    width, height = raw.get("width"), raw.get("height")
    if size:
        w, sep, h = size.lower().partition("x")
        width, height = (w.strip(), h.strip()) if sep else (None, None)
        if not sep:
            b.notes.append(f"Size {_shown(size)} is not WIDTHxHEIGHT; not used")
    b.integer("width", "Width", width, jobspec.SIZE)
    b.integer("height", "Height", height, jobspec.SIZE)


def _hires(b: _Builder, raw: Mapping[str, Any]) -> None:
    has_hires = _text(raw.get("Hires upscale")) is not None
    if has_hires:
        b.number("hires_scale", "Hires upscale", raw.get("Hires upscale"), 1.0, 4.0, above=True)
        b.integer("hires_steps", "Hires steps", raw.get("Hires steps"), jobspec.HIRES_STEPS)
        b.number("hires_denoise", "Denoising strength", raw.get("Denoising strength"), 0, 1.0)
        upscaler = _text(raw.get("Hires upscaler"))
        if upscaler and upscaler != "Latent":
            b.notes.append(
                f"the hires upscaler {_shown(upscaler)} is not available; Latent is used"
            )
    elif _text(raw.get("Denoising strength")):
        b.notes.append("a denoising strength without hires fix is for img2img; not used")


def _mapping(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _items(value: object) -> list[Any]:
    """The first entries of a JSON list (a hostile one may hold millions)."""
    return value[: MAX_LORA_REFS * 2] if isinstance(value, list) else []


def _checkpoint(raw: Mapping[str, Any], civitai: Iterable[Any], notes: list[str]) -> ResourceRef:
    hashes = _mapping(raw.get("hashes"))
    name = _name(raw.get("Model"))
    model = next(
        (_mapping(r) for r in _items(raw.get("resources")) if _mapping(r).get("type") == "model"),
        _mapping(None),
    )
    digest = (
        _hash(raw.get("Model hash"), "the checkpoint", notes)
        or _hash(hashes.get("model"), "the checkpoint", notes)
        or _hash(model.get("hash"), "the checkpoint", notes)
    )
    name = name or _name(model.get("name"))
    version_id = next(
        (vid for kind, vid, _ in _civitai_resources(civitai) if kind in _CHECKPOINT_RESOURCE_TYPES),
        None,
    )
    return ResourceRef("checkpoint", name, digest, version_id)


def _civitai_resources(items: Iterable[Any]) -> list[tuple[str, int, float | None]]:
    """(type, modelVersionId, weight) of Civitai's ``civitaiResources`` entries."""
    out: list[tuple[str, int, float | None]] = []
    for item in items:
        if not isinstance(item, Mapping):
            continue
        vid, kind = item.get("modelVersionId"), _text(item.get("type"))
        if not isinstance(vid, int) or isinstance(vid, bool) or not kind or abs(vid) >= 2**63:
            continue
        out.append((kind.lower(), vid, _weight(item.get("weight"))))
    return out


class _Loras:
    """LoRA references merged by name (or version id), bounded by `MAX_LORA_REFS`."""

    def __init__(self, notes: list[str]) -> None:
        self.refs: list[ResourceRef] = []
        self.dropped = 0
        self.notes = notes

    def add(
        self, name: object, digest: object, *, weight: object = None, vid: int | None = None
    ) -> None:
        shown_name = _name(name)
        what = f"the LoRA {_shown(shown_name)}" if shown_name else "a LoRA"
        ref = ResourceRef(
            "lora",
            shown_name,
            _hash(digest, what, self.notes),
            vid,
            _weight(weight),
        )
        for i, known in enumerate(self.refs):
            same_name = (
                ref.name
                and known.name
                and infotext.lora_hash_name(ref.name).casefold()
                == infotext.lora_hash_name(known.name).casefold()
            )
            if same_name or (vid is not None and known.version_id == vid and not ref.name):
                self.refs[i] = replace(
                    known,
                    hash=known.hash or ref.hash,
                    version_id=known.version_id or ref.version_id,
                    weight=known.weight if known.weight is not None else ref.weight,
                )
                return
        if len(self.refs) >= MAX_LORA_REFS:
            self.dropped += 1
            return
        self.refs.append(ref)


def _collect_loras(raw: Mapping[str, Any], civitai: Iterable[Any], notes: list[str]) -> _Loras:
    loras = _Loras(notes)
    listed = raw.get("Lora hashes")
    if isinstance(listed, str):
        entries, dropped = infotext.lora_hash_entries(listed)
        loras.dropped += dropped
        for name, digest in entries:
            loras.add(name, digest)
    elif isinstance(listed, Mapping):
        for name, digest in islice(listed.items(), MAX_LORA_REFS * 2):
            loras.add(name, digest)
    hashes = raw.get("hashes")
    if isinstance(hashes, Mapping):
        for key, digest in islice(hashes.items(), MAX_LORA_REFS * 2):
            if isinstance(key, str) and key.lower().startswith("lora:"):
                loras.add(key[5:], digest)
    for item in map(_mapping, _items(raw.get("resources"))):
        if _text(item.get("type")) in _LORA_RESOURCE_TYPES:
            loras.add(item.get("name"), item.get("hash"), weight=item.get("weight"))
    for kind, vid, weight in _civitai_resources(civitai):
        if kind in _LORA_RESOURCE_TYPES:
            loras.add(None, None, weight=weight, vid=vid)
    if loras.dropped:
        notes.append(f"{loras.dropped} more LoRA entries ignored (at most {MAX_LORA_REFS})")
    return loras


def _from_raw(prompt: object, negative: object, raw: Mapping[str, Any]) -> GenerationData:
    b = _Builder()
    for key, text in (("prompt", prompt), ("negative", negative)):
        value = _text(text) if not isinstance(text, str) else text
        if value and len(value) > infotext.MAX_PARAMETERS_CHARS:
            b.notes.append(f"the {key} was cut to {infotext.MAX_PARAMETERS_CHARS} characters")
            value = value[: infotext.MAX_PARAMETERS_CHARS]
        b.fields[key] = clean(value or "", multiline=True)
    b.integer("steps", "Steps", raw.get("Steps"), jobspec.STEPS)
    _sampler(b, raw.get("Sampler"), raw.get("Schedule type"))
    b.number("cfg", "CFG scale", raw.get("CFG scale"), jobspec.CFG_SCALE.lo, jobspec.CFG_SCALE.hi)
    b.integer("seed", "Seed", raw.get("Seed"), jobspec.SEED)
    _size(b, raw)
    b.integer("clip_skip", "Clip skip", raw.get("Clip skip"), jobspec.CLIP_SKIP)
    _hires(b, raw)
    civitai_items = _items(raw.get("civitaiResources"))
    checkpoint = _checkpoint(raw, civitai_items, b.notes)
    loras = _collect_loras(raw, civitai_items, b.notes)
    has_checkpoint = checkpoint.name or checkpoint.hash or checkpoint.version_id is not None
    return GenerationData(
        **b.fields,
        checkpoint=checkpoint if has_checkpoint else None,
        loras=tuple(loras.refs),
        notes=tuple(b.notes),
    )


def from_civitai_meta(meta: Mapping[str, Any]) -> GenerationData:
    """An example image's ``meta`` as the catalog stores it from Civitai."""
    raw: dict[str, Any] = {
        _CIVITAI_KEYS.get(k, k): v for k, v in meta.items() if isinstance(k, str)
    }
    return _from_raw(meta.get("prompt"), meta.get("negativePrompt"), raw)


def from_parameters(text: str, source: str = "the pasted text") -> GenerationData:
    """An A1111 parameters block (pasted, or a PNG's chunk); `GenerationDataError` when it
    is too long or holds nothing."""
    try:
        parsed = infotext.parse_parameters(text)
    except infotext.ParametersTooLongError as exc:
        raise GenerationDataError(
            source,
            "too-long",
            f"the parameters text is {exc.chars} characters; at most {exc.limit} are read",
        ) from None
    if not parsed["prompt"].strip() and len(parsed) <= 2:
        raise GenerationDataError(source, "none", "holds no generation parameters")
    data = _from_raw(parsed.pop("prompt"), parsed.pop("negative_prompt"), parsed)
    if len(parsed) < 3:
        note = "no parameters line (Steps: ..., Seed: ...) was found; only the prompt is used"
        data = replace(data, notes=(note, *data.notes))
    return data


# --- PNG --------------------------------------------------------------------------------------


def _read_bounded(path: Path, limit: int) -> bytes:
    source = path.name
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError as exc:
        raise GenerationDataError(
            source, "unreadable", f"cannot open it ({exc.strerror})"
        ) from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise GenerationDataError(source, "unreadable", "is not a regular file")
    with os.fdopen(fd, "rb") as fh:
        data = fh.read(limit + 1)
    if len(data) > limit:
        raise GenerationDataError(source, "too-large", f"is larger than {limit} bytes")
    return data


def _check_chunks(data: bytes, source: str, max_pixels: int, max_side: int) -> None:
    """Refuse a PNG whose chunk lengths, image size or text chunks pass the caps, before
    Pillow reads it (a size check after decoding would be too late for a bomb)."""
    if not data.startswith(_PNG_SIGNATURE):
        raise GenerationDataError(source, "not-png", "is not a PNG file")
    pos, count = len(_PNG_SIGNATURE), 0
    while pos + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        count += 1
        if pos + 12 + length > len(data) or count > MAX_PNG_CHUNKS:
            raise GenerationDataError(source, "chunk", "is truncated or has too many chunks")
        if kind in _TEXT_CHUNKS and length > MAX_TEXT_CHUNK_BYTES:
            raise GenerationDataError(
                source,
                "chunk",
                f"has a text chunk of {length} bytes; at most {MAX_TEXT_CHUNK_BYTES}",
            )
        if kind == b"IHDR" and length >= 8:
            width, height = struct.unpack(">II", data[pos + 8 : pos + 16])
            if width > max_side or height > max_side or width * height > max_pixels:
                raise GenerationDataError(
                    source, "bomb", f"is {width}x{height} pixels; at most {max_pixels} are decoded"
                )
        if kind == b"IEND":
            return
        pos += 12 + length
    raise GenerationDataError(source, "chunk", "is truncated or has too many chunks")


def read_png_parameters(path: Path) -> str:
    """The ``parameters`` text of a PNG file, read under the output-image caps."""
    from PIL import Image

    from sandbox.results import OutputLimits

    limits = OutputLimits()
    source = path.name
    data = _read_bounded(path, limits.max_file_bytes)
    _check_chunks(data, source, limits.max_pixels, limits.max_side)
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            with Image.open(io.BytesIO(data), formats=["PNG"]) as image:
                text = image.info.get("parameters")
                if text is None:  # a chunk after the pixels is read with them
                    text = getattr(image, "text", {}).get("parameters")
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError, Warning) as exc:
            raise GenerationDataError(source, "unreadable", f"cannot be read ({exc})") from None
    if not isinstance(text, str):
        raise GenerationDataError(
            source, "none", "has no generation parameters (no 'parameters' text)"
        )
    return text


def parameters_text(data: bytes, source: str) -> str:
    """A parameters block read from a file or stdin (at most `MAX_TEXT_CHUNK_BYTES` of them
    were read: one more byte means the text is too long), as text."""
    if len(data) > MAX_TEXT_CHUNK_BYTES:
        raise GenerationDataError(
            source, "too-long", f"is larger than {MAX_TEXT_CHUNK_BYTES} bytes; no such block is"
        )
    return data.decode("utf-8", errors="replace")


def read_parameters_file(path: Path) -> str:
    """A pasted A1111 block saved in a file, read bounded."""
    return parameters_text(_read_bounded(path, MAX_TEXT_CHUNK_BYTES + 1), path.name)


def from_png(path: Path) -> GenerationData:
    """A PNG's ``parameters`` chunk (`read_png_parameters`), parsed."""
    return from_parameters(read_png_parameters(path), source=path.name)


__all__ = [
    "HASH_TYPES",
    "MAX_LORA_REFS",
    "MAX_TEXT_CHUNK_BYTES",
    "GenerationData",
    "GenerationDataError",
    "ResourceRef",
    "from_civitai_meta",
    "from_parameters",
    "from_png",
    "parameters_text",
    "read_parameters_file",
    "read_png_parameters",
]
