"""Sidecars next to an imported model file: read safely, and what each may contribute.

Sidecars are hints, never authority. A ``.civitai.info`` (Civitai Helper, SD-Civitai-Browser)
or LoRA Manager's ``civitai`` block may *claim* a Civitai version; `catalog.claims` decides
whether the claim is used. A1111's ``.json`` (activation text, preferred weight, notes, sd
version), LoRA Manager's usage tips and notes, and the trained words of a claim the catalog did
not already hold go to the user's own metadata layer (`catalog.usermeta.UserMeta`), shown
beside Civitai's data, never in it.

Old and new tools wrote many shapes: a version object with or without ``modelId``, a whole
model object (``modelVersions``), files without hashes, ``trainedWords`` as one string, weights
as strings, a byte-order mark, UTF-16. Each is read for what it can give; whatever else a
sidecar holds (any JSON value, any bytes) costs only that sidecar, listed with a reason, and
the model file is imported without it. `read_sidecars` never raises.

A sidecar is read only when it is a plain regular file of at most `MAX_SIDECAR_BYTES` (a
symlink, FIFO or device is not opened as one). Strings are stored without NUL characters or
lone surrogates, which a database would refuse.
"""

from __future__ import annotations

import errno
import json
import logging
import math
import os
import re
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from catalog.civitai import types as api

log = logging.getLogger(__name__)

MAX_SIDECAR_BYTES = 4 * 1024 * 1024
SIDECAR_SUFFIXES = (".civitai.info", ".json", ".metadata.json")
"""What a sidecar's name adds to its model file's stem: Civitai Helper's info, A1111's user
metadata, LoRA Manager's metadata."""
_OPEN_FLAGS = os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_NOCTTY | os.O_CLOEXEC
_A1111_BASES = {"sd1": "SD 1.5", "sd2": "SD 2.1", "sdxl": "SDXL 1.0"}
"""A1111's ``sd version`` values and the base model each names."""
_SURROGATES = re.compile("[\ud800-\udfff]")
_KNOWN_BASES = frozenset({"SD 1.5", "SD 2.1", "SDXL 1.0", "Pony", "Illustrious", "Flux.1 D"})


@dataclass(frozen=True)
class SidecarIssue:
    """A sidecar that was not used, or a claim that was refused."""

    path: str
    code: str
    """A stable key: ``sidecar-link``, ``sidecar-unreadable``, ``sidecar-malformed``,
    ``sidecar-no-version``, ``sidecar-of-duplicate``, ``claim-hash-mismatch``,
    ``claim-no-hash``, ``claim-ids``, ``claim-contradicted``, ``claim-overruled``,
    ``claim-not-recorded``, or for preview pictures (`assetmgr.store.preview_sidecars`)
    ``preview-refused``, ``preview-outside`` or ``preview-not-cached``."""
    reason: str
    file: str
    """The model file it sits beside."""


@dataclass
class Sidecars:
    """What the sidecars of one model file say."""

    claim: api.ModelVersion | None = None
    """The Civitai version a ``.civitai.info`` or LoRA Manager block says the file is."""
    claim_path: str | None = None
    says_unknown: bool = False
    """Civitai Helper's ``{}``: it looked the file up and Civitai did not know it."""
    a1111: dict[str, Any] | None = None
    lora_manager: dict[str, Any] | None = None
    read: list[str] = field(default_factory=list)
    """The sidecars read as hints: JSON objects (a claim among them may still be refused)."""
    issues: list[SidecarIssue] = field(default_factory=list)


def _clean_strings(value: Any) -> Any:
    """`value` with NUL characters and lone surrogates taken out of every string in it."""

    def fix(text: str) -> str:
        return _SURROGATES.sub("\ufffd", text.replace("\x00", ""))

    def fix_any(item: Any) -> Any:
        return fix(item) if isinstance(item, str) else item

    if isinstance(value, str):
        return fix(value)
    root: list[Any] = [value]
    pending: list[Any] = [value]
    while pending:  # no recursion: depth is the file's to choose
        node = pending.pop()
        if isinstance(node, dict):
            items = list(node.items())
            node.clear()
            for key, item in items:
                node[fix(key)] = fix_any(item)
                if isinstance(item, dict | list):
                    pending.append(item)
        elif isinstance(node, list):
            for i, item in enumerate(node):
                node[i] = fix_any(item)
                if isinstance(item, dict | list):
                    pending.append(item)
    return root[0]


def _finite_float(text: str) -> float | None:
    number = float(text)
    return number if math.isfinite(number) else None


def parse_json(raw: bytes) -> Any:
    """JSON from a sidecar's bytes: UTF-8 (with or without a byte-order mark) or UTF-16/32;
    NaN, Infinity and overflowing numbers become null. Raises `ValueError` (or
    `RecursionError` for absurd nesting)."""
    data = json.loads(raw, parse_constant=lambda _: None, parse_float=_finite_float)
    return _clean_strings(data)


_UNREAD = object()
"""`_read_json`'s answer for a sidecar that is absent or could not be read (null is JSON)."""


def read_plain_file(
    path: Path,
    model_path: Path,
    issues: list[SidecarIssue],
    *,
    limit: int,
    what: str = "sidecars",
    too_large: str = "",
) -> bytes | None:
    """The bytes of a plain regular file beside a model, read without following a link and
    under ``limit``; None when absent (silently) or refused (with an issue)."""

    def issue(code: str, reason: str) -> None:
        issues.append(SidecarIssue(str(path), code, reason, str(model_path)))

    try:
        fd = os.open(path, _OPEN_FLAGS)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            issue("sidecar-link", f"a symlink; {what} are read only as plain files")
        else:
            issue("sidecar-unreadable", f"cannot be opened ({exc.strerror})")
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            issue("sidecar-unreadable", "not a regular file; not read")
            return None
        with open(fd, "rb", closefd=False) as f:
            data = f.read(limit + 1) if st.st_size <= limit else b""
        if st.st_size > limit or len(data) > limit:
            issue("sidecar-unreadable", f"larger than {limit // 2**20} MiB{too_large}")
            return None
        return data
    except OSError as exc:
        issue("sidecar-unreadable", f"cannot be read ({exc.strerror})")
        return None
    finally:
        os.close(fd)


def _read_json(path: Path, model_path: Path, out: Sidecars) -> Any:
    raw = read_plain_file(path, model_path, out.issues, limit=MAX_SIDECAR_BYTES)
    if raw is None:
        return _UNREAD
    try:
        return parse_json(raw)
    except (ValueError, RecursionError):  # bad text or JSON (UnicodeDecodeError is one)
        out.issues.append(
            SidecarIssue(str(path), "sidecar-malformed", "not valid JSON", str(model_path))
        )
    return _UNREAD


def _sha_of(file: Any) -> str | None:
    hashes = file.get("hashes") if isinstance(file, dict) else None
    if not isinstance(hashes, dict):
        return None
    for key, value in hashes.items():
        if isinstance(key, str) and key.lower() == "sha256" and isinstance(value, str):
            return value.strip().upper()
    return None


def _lists_sha(version: Any, sha256: str) -> bool:
    files = version.get("files") if isinstance(version, dict) else None
    return isinstance(files, list) and any(_sha_of(f) == sha256 for f in files)


def civitai_version(data: dict[str, Any], sha256: str | None) -> dict[str, Any] | None:
    """The version object in an info file's shape, or None when it names no version.

    A whole model object (``modelVersions``, saved by older browsers) gives the version that
    lists `sha256` (or its only version), with ``modelId`` and ``model`` filled from the
    model; a version without ``modelId`` takes it from its nested ``model`` when that has an
    id.
    """
    versions = data.get("modelVersions")
    if isinstance(versions, list) and "modelId" not in data:
        dicts = [v for v in versions if isinstance(v, dict)]
        wanted = sha256.upper() if sha256 else None
        chosen = next((v for v in dicts if wanted and _lists_sha(v, wanted)), None)
        if chosen is None and len(dicts) == 1:
            chosen = dicts[0]
        if chosen is None:
            return None
        parent = {k: data[k] for k in ("name", "type", "nsfw", "poi", "mode") if k in data}
        return {**chosen, "modelId": data.get("id"), "model": parent}
    if "id" not in data:
        return None
    model = data.get("model")
    if "modelId" not in data and isinstance(model, dict) and "id" in model:
        return {**data, "modelId": model["id"]}
    return data


def _claim_from(data: dict[str, Any], path: Path, model_path: Path, out: Sidecars) -> None:
    def issue(code: str, reason: str) -> None:
        out.issues.append(SidecarIssue(str(path), code, reason, str(model_path)))

    try:
        version = api.ModelVersion.model_validate(data)
    except (ValueError, RecursionError):  # pydantic's ValidationError is a ValueError
        issue("sidecar-malformed", "not a Civitai version object")
        return
    if isinstance(version, api.ModelVersion):
        out.claim = version
        out.claim_path = str(path)


def _civitai_info(model_path: Path, stem: Path, sha256: str | None, out: Sidecars) -> None:
    info_path = Path(f"{stem}.civitai.info")
    info = _read_json(info_path, model_path, out)
    if info is _UNREAD:
        return
    if not isinstance(info, dict):
        out.issues.append(
            SidecarIssue(str(info_path), "sidecar-malformed", "not a JSON object", str(model_path))
        )
        return
    out.read.append(str(info_path))
    if not info:
        out.says_unknown = True
        return
    version = civitai_version(info, sha256)
    if version is None:
        out.issues.append(
            SidecarIssue(
                str(info_path),
                "sidecar-no-version",
                "names no Civitai version of this file",
                str(model_path),
            )
        )
        return
    _claim_from(version, info_path, model_path, out)


def _a1111_json(model_path: Path, stem: Path, out: Sidecars) -> None:
    meta_path = Path(f"{stem}.json")
    meta = _read_json(meta_path, model_path, out)
    if meta is _UNREAD:
        return
    if isinstance(meta, dict):
        out.read.append(str(meta_path))
        out.a1111 = meta
    else:
        out.issues.append(
            SidecarIssue(str(meta_path), "sidecar-malformed", "not a JSON object", str(model_path))
        )


def _lora_manager(model_path: Path, stem: Path, out: Sidecars) -> None:
    lm_path = Path(f"{stem}.metadata.json")
    lm = _read_json(lm_path, model_path, out)
    if lm is _UNREAD:
        return
    if not isinstance(lm, dict):
        out.issues.append(
            SidecarIssue(str(lm_path), "sidecar-malformed", "not a JSON object", str(model_path))
        )
        return
    out.read.append(str(lm_path))
    out.lora_manager = lm
    civ = lm.get("civitai")
    if out.claim is None and isinstance(civ, dict) and civ.get("id"):
        version = civitai_version(civ, None)
        if version is not None and version.get("modelId"):
            _claim_from(version, lm_path, model_path, out)


def read_sidecars(model_path: Path, *, sha256: str | None = None) -> Sidecars:
    """The sidecars beside `model_path` (same name stem, in the same folder); never raises.

    `sha256` (the file's) picks the version out of a sidecar that holds a whole model.
    """
    stem = model_path.with_suffix("")
    out = Sidecars()
    readers: list[Callable[[], None]] = [
        partial(_civitai_info, model_path, stem, sha256, out),
        partial(_a1111_json, model_path, stem, out),
        partial(_lora_manager, model_path, stem, out),
    ]
    for read_one in readers:
        try:
            read_one()
        except Exception as exc:  # a shape nobody foresaw costs that sidecar, not the file
            log.warning("a sidecar of %s was not used", model_path, exc_info=exc)
            out.issues.append(
                SidecarIssue(
                    f"{stem}.*",
                    "sidecar-malformed",
                    f"could not be used ({type(exc).__name__})",
                    str(model_path),
                )
            )
    return out


def _text(value: Any, limit: int) -> str | None:
    if isinstance(value, list):  # some tools wrote activation text as a list of words
        value = ", ".join(v.strip() for v in value if isinstance(v, str) and v.strip())
    return value[:limit] if isinstance(value, str) and value.strip() else None


def _number(value: Any) -> float | None:
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            return None
    if isinstance(value, int | float) and not isinstance(value, bool):
        number = float(value)
        return number if math.isfinite(number) else None
    return None


def base_model_hint(sidecars: Sidecars) -> str | None:
    """The base model A1111's ``sd version`` or LoRA Manager's ``base_model`` names."""
    a1111 = sidecars.a1111 or {}
    version = a1111.get("sd version")
    if isinstance(version, str) and version.strip().lower() in _A1111_BASES:
        return _A1111_BASES[version.strip().lower()]
    base = (sidecars.lora_manager or {}).get("base_model")
    return base if isinstance(base, str) and base in _KNOWN_BASES else None


def _usage_tips(lm: dict[str, Any]) -> dict[str, Any] | None:
    tips = lm.get("usage_tips")
    if isinstance(tips, str):
        try:
            tips = parse_json(tips.encode("utf-8", "replace"))
        except (ValueError, RecursionError):
            return None
    return tips if isinstance(tips, dict) else None


def user_meta(sidecars: Sidecars, *, claimed_words: list[str] | None) -> dict[str, Any] | None:
    """Fields for `UserMeta` from the sidecars, or None when they say nothing.

    `claimed_words` are the trained words of an accepted claim for a version the catalog did
    not hold: kept as the user's activation text when A1111's sidecar gives none.
    """
    out: dict[str, Any] = {}
    if sidecars.a1111:
        a = sidecars.a1111
        for src, dst, limit in (
            ("activation text", "activation_text", 10_000),
            ("notes", "notes", 100_000),
            ("description", "description", 100_000),
            ("negative text", "negative_text", 100_000),
            ("sd version", "sd_version", 100),
        ):
            value = _text(a.get(src), limit)
            if value is not None:
                out[dst] = value
        weight = _number(a.get("preferred weight"))
        if weight is not None:
            out["preferred_weight"] = weight
        if out:
            out["source"] = "a1111-json"
    if sidecars.lora_manager:
        lm = sidecars.lora_manager
        tips = _usage_tips(lm)
        if tips is not None and "preferred_weight" not in out:
            strength = _number(tips.get("strength"))
            if strength is not None:
                out["preferred_weight"] = strength
        notes = _text(lm.get("notes"), 100_000)
        if notes is not None and "notes" not in out:
            out["notes"] = notes
        if out:
            out.setdefault("source", "lora-manager")
    if claimed_words and "activation_text" not in out:
        out["activation_text"] = ", ".join(claimed_words)[:10_000]
        out.setdefault("source", "civitai-info")
    return out if len(out) > 1 else None


__all__ = [
    "MAX_SIDECAR_BYTES",
    "SIDECAR_SUFFIXES",
    "SidecarIssue",
    "Sidecars",
    "base_model_hint",
    "civitai_version",
    "parse_json",
    "read_sidecars",
    "user_meta",
]
