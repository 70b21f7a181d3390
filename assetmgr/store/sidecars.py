"""Sidecars next to an imported model file: read safely, and what each may contribute.

Sidecars are hints, never authority. A ``.civitai.info`` (Civitai Helper) or LoRA Manager's
``civitai`` block may *claim* a Civitai version; `catalog.claims` decides whether the claim is
used. A1111's ``.json`` (activation text, preferred weight, notes), LoRA Manager's usage tips
and notes, and the trained words of a claim the catalog did not already hold go to the user's
own metadata layer (`catalog.usermeta.UserMeta`), shown beside Civitai's data, never in it.

A sidecar is read only when it is a plain regular file of at most `MAX_SIDECAR_BYTES` (a
symlink, FIFO or device is not opened as one); one that cannot be used is listed with a reason
and the model file is imported without it.
"""

from __future__ import annotations

import errno
import json
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from catalog.civitai import types as api

MAX_SIDECAR_BYTES = 4 * 1024 * 1024
_OPEN_FLAGS = os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_NOCTTY | os.O_CLOEXEC


@dataclass(frozen=True)
class SidecarIssue:
    """A sidecar that was not used, or a claim that was refused."""

    path: str
    code: str
    """A stable key: ``sidecar-link``, ``sidecar-unreadable``, ``sidecar-malformed``,
    ``claim-hash-mismatch``, ``claim-ids``, ``claim-contradicted`` or ``claim-not-recorded``."""
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
    issues: list[SidecarIssue] = field(default_factory=list)


def _read_json(path: Path, model_path: Path, issues: list[SidecarIssue]) -> Any:
    def issue(code: str, reason: str) -> None:
        issues.append(SidecarIssue(str(path), code, reason, str(model_path)))

    try:
        fd = os.open(path, _OPEN_FLAGS)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            issue("sidecar-link", "a symlink; sidecars are read only as plain files")
        else:
            issue("sidecar-unreadable", f"cannot be opened ({exc.strerror})")
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            issue("sidecar-unreadable", "not a regular file; not read")
            return None
        if st.st_size > MAX_SIDECAR_BYTES:
            issue("sidecar-unreadable", f"larger than {MAX_SIDECAR_BYTES // 2**20} MiB")
            return None
        with open(fd, "rb", closefd=False) as f:
            raw = f.read(MAX_SIDECAR_BYTES + 1)
        return json.loads(raw.decode("utf-8"))
    except OSError as exc:
        issue("sidecar-unreadable", f"cannot be read ({exc.strerror})")
    except (ValueError, RecursionError):  # bad UTF-8 or JSON (UnicodeDecodeError is one)
        issue("sidecar-malformed", "not valid UTF-8 JSON")
    finally:
        os.close(fd)
    return None


def _claim_from(
    data: dict[str, Any], path: Path, model_path: Path, issues: list[SidecarIssue]
) -> api.ModelVersion | None:
    try:
        version = api.ModelVersion.model_validate(data)
    except ValueError:  # pydantic's ValidationError is one
        issues.append(
            SidecarIssue(
                str(path), "sidecar-malformed", "not a Civitai version object", str(model_path)
            )
        )
        return None
    return version if isinstance(version, api.ModelVersion) else None


def read_sidecars(model_path: Path) -> Sidecars:
    """The sidecars beside `model_path` (same name stem, in the same folder)."""
    stem = model_path.with_suffix("")
    out = Sidecars()
    info_path = Path(f"{stem}.civitai.info")
    info = _read_json(info_path, model_path, out.issues)
    if isinstance(info, dict):
        if not info:
            out.says_unknown = True
        else:
            out.claim = _claim_from(info, info_path, model_path, out.issues)
            out.claim_path = str(info_path) if out.claim is not None else None
    elif info is not None:
        out.issues.append(
            SidecarIssue(str(info_path), "sidecar-malformed", "not a JSON object", str(model_path))
        )
    meta = _read_json(Path(f"{stem}.json"), model_path, out.issues)
    if isinstance(meta, dict):
        out.a1111 = meta
    lm_path = Path(f"{stem}.metadata.json")
    lm = _read_json(lm_path, model_path, out.issues)
    if isinstance(lm, dict):
        out.lora_manager = lm
        civ = lm.get("civitai")
        if out.claim is None and isinstance(civ, dict) and civ.get("id") and civ.get("modelId"):
            out.claim = _claim_from(civ, lm_path, model_path, out.issues)
            out.claim_path = str(lm_path) if out.claim is not None else None
    return out


def _text(value: Any, limit: int) -> str | None:
    return value[:limit] if isinstance(value, str) and value.strip() else None


def _number(value: Any) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return None


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
            ("sd version", "sd_version", 100_000),
        ):
            value = _text(a.get(src), limit)
            if value is not None:
                out[dst] = value
        weight = _number(a.get("preferred weight"))
        if weight is not None:
            out["preferred_weight"] = weight
        out["source"] = "a1111-json"
    if sidecars.lora_manager:
        lm = sidecars.lora_manager
        tips = lm.get("usage_tips")
        if isinstance(tips, str):
            try:
                tips = json.loads(tips)
            except ValueError:
                tips = None
        if isinstance(tips, dict) and "preferred_weight" not in out:
            strength = _number(tips.get("strength"))
            if strength is not None:
                out["preferred_weight"] = strength
        notes = _text(lm.get("notes"), 100_000)
        if notes is not None and "notes" not in out:
            out["notes"] = notes
        out.setdefault("source", "lora-manager")
    if claimed_words and "activation_text" not in out:
        out["activation_text"] = ", ".join(claimed_words)[:10_000]
        out.setdefault("source", "civitai-info")
    return out if len(out) > 1 else None


__all__ = ["MAX_SIDECAR_BYTES", "SidecarIssue", "Sidecars", "read_sidecars", "user_meta"]
