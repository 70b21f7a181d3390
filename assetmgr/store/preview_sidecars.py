"""Preview pictures beside an imported model file, read like any hostile image.

A1111 and Civitai Helper keep ``X.preview.png`` (or ``X.png``, and ``.jpg``/``.jpeg``/
``.webp`` in both forms) beside ``X.safetensors``; LoRA Manager names its preview in
``X.metadata.json`` (``preview_url``, a path, with ``preview_nsfw_level``). `read_preview`
takes the first of these that is a plain regular file of at most `MAX_PREVIEW_FILE_BYTES` in
the model's own folder and that `assetmgr.store.thumbnails` turns into a thumbnail; a symlink,
a special file, a path elsewhere or a refused image is listed as a `SidecarIssue` instead (and
the next candidate is tried). Nothing beside the model is modified.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

from assetmgr.store.sidecars import SidecarIssue, read_plain_file
from assetmgr.store.thumbnails import ImageRejectedError, Thumbnail, make_thumbnail

MAX_PREVIEW_FILE_BYTES = 32 << 20
PREVIEW_SUFFIXES = (
    ".preview.png",
    ".png",
    ".preview.jpg",
    ".jpg",
    ".preview.jpeg",
    ".jpeg",
    ".preview.webp",
    ".webp",
)
"""A1111's lookup order (its ``.gif`` previews are not images this cache decodes)."""
_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


@dataclass(frozen=True)
class PreviewSidecar:
    path: Path
    thumbnail: Thumbnail
    nsfw_level: int | None
    """LoRA Manager's ``preview_nsfw_level`` when it has one; else not known."""


def _lora_manager_level(lora_manager: dict[str, Any] | None) -> int | None:
    level = (lora_manager or {}).get("preview_nsfw_level")
    return level if type(level) is int and level > 0 else None


def _lora_manager_candidate(
    model_path: Path, lora_manager: dict[str, Any] | None, issues: list[SidecarIssue]
) -> Path | None:
    """LoRA Manager's preview, when its ``preview_url`` names a file in the model's folder."""
    url = (lora_manager or {}).get("preview_url")
    if not isinstance(url, str) or not url.strip():
        return None
    name = PureWindowsPath(url).name if "\\" in url else PurePosixPath(url).name
    named_folder = url[: len(url) - len(name)].rstrip("/\\")
    folder = str(model_path.parent)
    if named_folder and os.path.normpath(named_folder) != os.path.normpath(folder):
        issues.append(
            SidecarIssue(
                f"{model_path.with_suffix('')}.metadata.json",
                "preview-outside",
                "its preview_url points outside the model's folder; not read",
                str(model_path),
            )
        )
        return None
    if not name.lower().endswith(_IMAGE_SUFFIXES) or name in ("", ".", ".."):
        return None  # a video preview, or nothing usable
    return model_path.parent / name


def _read(path: Path, model_path: Path, issues: list[SidecarIssue]) -> bytes | None:
    """The file's bytes when it is a plain regular file under the size cap; None otherwise
    (an absent file silently, anything else with an issue)."""
    return read_plain_file(
        path,
        model_path,
        issues,
        limit=MAX_PREVIEW_FILE_BYTES,
        what="previews",
        too_large="; not read",
    )


def read_preview(
    model_path: Path, *, lora_manager: dict[str, Any] | None = None
) -> tuple[PreviewSidecar | None, list[SidecarIssue]]:
    """The first usable preview beside `model_path`, and the issues of those not used."""
    issues: list[SidecarIssue] = []
    stem = str(model_path.with_suffix(""))
    # LoRA Manager rates the model's preview; whichever picture is used, that is the one.
    level = _lora_manager_level(lora_manager)
    candidates: list[Path] = []
    own = _lora_manager_candidate(model_path, lora_manager, issues)
    if own is not None:
        candidates.append(own)
    for suffix in PREVIEW_SUFFIXES:
        path = Path(stem + suffix)
        if path not in candidates:
            candidates.append(path)
    for path in candidates:
        data = _read(path, model_path, issues)
        if data is None:
            continue
        try:
            thumbnail = make_thumbnail(data, source=str(path))
        except ImageRejectedError as exc:
            issues.append(
                SidecarIssue(
                    str(path), "preview-refused", f"{exc.detail}; not used", str(model_path)
                )
            )
            continue
        return PreviewSidecar(path, thumbnail, level), issues
    return None, issues


__all__ = ["MAX_PREVIEW_FILE_BYTES", "PREVIEW_SUFFIXES", "PreviewSidecar", "read_preview"]
