"""One model in detail for the TUI: versions, files and their hash checks, previews, weights."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session
from sqlmodel import SQLModel

from assetmgr import paths
from assetmgr.app.queries.browse import find_update_pairs
from assetmgr.app.queries.tables import _t
from catalog.access import DOWNLOADS_DISABLED as DOWNLOADS_DISABLED
from catalog.access import EARLY_ACCESS as EARLY_ACCESS
from catalog.access import AccessRule, describe, version_access
from catalog.models import HASH_COLUMNS
from catalog.text import html_to_text

# Civitai's image nsfwLevel: 1 = PG; anything above is hidden until the user asks.
SAFE_NSFW_LEVEL = 1
_HASH_NAMES = dict(
    zip(HASH_COLUMNS, ("SHA256", "AutoV1", "AutoV2", "AutoV3", "CRC32", "BLAKE3"), strict=True)
)

# --- one model in detail ---------------------------------------------------------------------


@dataclass(frozen=True)
class HashCheck:
    """One hash of a file: what Civitai published, what the local copy has, and if they agree."""

    name: str
    expected: str | None
    local: str | None

    @property
    def state(self) -> str:
        if not self.expected or not self.local:
            return "unchecked"
        return "match" if self.expected.upper() == self.local.upper() else "mismatch"


@dataclass(frozen=True)
class FileDetail:
    id: int
    name: str
    size_kb: float | None
    format: str | None
    primary: bool
    hashes: list[HashCheck]
    local_state: str | None
    """`LocalFile.state`, or None when the file is not in the store."""
    local_path: str | None
    verified_at: datetime | None
    pickle_scan: str | None
    virus_scan: str | None


@dataclass(frozen=True)
class PreviewImage:
    url: str | None
    nsfw_level: int | None
    width: int | None
    height: int | None
    local_path: Path | None
    meta: dict[str, Any] | None = None
    """Civitai's generation data of the image (outside data: `assetmgr.app.genparams`)."""

    @property
    def is_nsfw(self) -> bool:
        return (self.nsfw_level or 0) > SAFE_NSFW_LEVEL


@dataclass(frozen=True)
class Weight:
    """A LoRA weight to suggest, and where the number came from."""

    value: float
    low: float | None = None
    high: float | None = None
    source: str = "default"

    def label(self) -> str:
        if self.low is not None and self.high is not None and self.low != self.high:
            return f"{self.value:g} ({self.low:g}–{self.high:g}, {self.source})"
        return f"{self.value:g} ({self.source})"


@dataclass(frozen=True)
class VersionDetail:
    id: int
    name: str | None
    base_model: str | None
    published_at: datetime | None
    state: str
    description: str | None
    trained_words: list[str]
    weight: Weight
    files: list[FileDetail]
    images: list[PreviewImage]
    preview_path: Path | None
    access: tuple[AccessRule, ...] = ()
    """What Civitai will refuse a download for (`catalog.access`)."""

    @property
    def is_local(self) -> bool:
        return any(f.local_state == "verified" for f in self.files)


@dataclass(frozen=True)
class ModelDetail:
    id: int
    name: str
    type: str
    creator: str | None
    nsfw: bool
    tags: list[str]
    description: str
    downloads: int | None
    versions: list[VersionDetail]
    update_version_ids: list[int] = field(default_factory=list)
    """Versions newer than the local ones in the same base-model family (`catalog.updates`)."""


_WEIGHT_RE = re.compile(
    r"(?:weight|strength)s?\D{0,24}?(-?\d+(?:\.\d+)?)(?:\s*(?:-|–|~|to)\s*(-?\d+(?:\.\d+)?))?",
    re.IGNORECASE,
)


def suggest_weight(descriptions: Sequence[str | None], prompts: Sequence[str]) -> Weight:
    """The weight a creator recommends: "weight 0.6-0.9" in a description, else the most
    common ``<lora:…:w>`` in the preview prompts, else 1."""
    for text in descriptions:
        if not text:
            continue
        match = _WEIGHT_RE.search(text)
        if match is None:
            continue
        low = float(match.group(1))
        high = float(match.group(2)) if match.group(2) else low
        if not -5 <= low <= 5 or not -5 <= high <= 5:
            continue
        low, high = min(low, high), max(low, high)
        middle = round((low + high) / 2 * 20) / 20  # to 0.05
        return Weight(middle, low, high, "description")
    from sandbox.protocol.jobspec import scan_tags

    seen: dict[float, int] = {}
    for prompt in prompts:
        for tag in scan_tags(prompt)[0]:
            if tag.is_lora:
                seen[tag.te] = seen.get(tag.te, 0) + 1
    if seen:
        best = max(seen.items(), key=lambda kv: (kv[1], -abs(kv[0] - 1)))[0]
        return Weight(best, min(seen), max(seen), "preview prompts")
    return Weight(1.0)


def preview_path(version_id: int, images: Sequence[PreviewImage] = ()) -> Path | None:
    """A picture on disk for a version: an image already local, a user preview under
    ``$ASSETMGR_HOME/previews/<version_id>.*``, else the demo catalog's bundled PNG."""
    for image in images:
        if image.local_path is not None:
            return image.local_path
    folder = paths.home() / "previews"
    for suffix in (".png", ".jpg", ".jpeg", ".webp"):
        candidate = folder / f"{version_id}{suffix}"
        if candidate.is_file():
            return candidate
    from catalog.demo import demo_preview_path

    return demo_preview_path(version_id)


def _user_meta(session: Session, version_ids: Sequence[int]) -> dict[int, dict[str, Any]]:
    """What the user (or an imported sidecar) set per version: activation text, weight."""
    try:
        import catalog.usermeta  # noqa: F401  (registers the table)
    except ImportError:
        return {}
    table = SQLModel.metadata.tables.get("user_meta")
    if table is None or not version_ids:
        return {}
    rows = session.execute(
        select(table.c.version_id, table.c.activation_text, table.c.preferred_weight).where(
            table.c.version_id.in_(list(version_ids))
        )
    ).all()
    return {int(r[0]): {"activation_text": r[1], "preferred_weight": r[2]} for r in rows}


def _image_local_path(url: str | None) -> Path | None:
    if not url:
        return None
    if url.startswith("file://"):
        candidate = Path(url[len("file://") :])
    elif url.startswith("/"):
        candidate = Path(url)
    else:
        return None
    return candidate if candidate.is_file() else None


def load_detail(session: Session, model_id: int) -> ModelDetail:
    """Everything the detail pane shows about one model, newest version first."""
    from catalog import repo

    row = repo.get_model(session, model_id)
    image_table = _t("image")
    images_by_version: dict[int, list[PreviewImage]] = {}
    prompts_by_version: dict[int, list[str]] = {}
    version_ids = [v.id for v in row.versions]
    if version_ids:
        for r in session.execute(
            select(
                image_table.c.version_id,
                image_table.c.url,
                image_table.c.nsfw_level,
                image_table.c.width,
                image_table.c.height,
                image_table.c.meta,
            )
            .where(image_table.c.version_id.in_(version_ids))
            .order_by(image_table.c.version_id, image_table.c.position)
        ):
            meta = r.meta if isinstance(r.meta, dict) else {}
            images_by_version.setdefault(int(r.version_id), []).append(
                PreviewImage(
                    r.url, r.nsfw_level, r.width, r.height, _image_local_path(r.url), meta or None
                )
            )
            prompt = meta.get("prompt")
            if isinstance(prompt, str):
                prompts_by_version.setdefault(int(r.version_id), []).append(prompt)
    model_text = html_to_text(row.description_html) or ""
    user_meta = _user_meta(session, version_ids)
    versions: list[VersionDetail] = []
    ordered = sorted(
        (v for v in row.versions if v.state != "gone" or any(f.local is not None for f in v.files)),
        key=lambda v: (v.position, -v.id),
    )
    for v in ordered:
        files: list[FileDetail] = []
        for f in sorted(v.files, key=lambda f: (not f.is_primary, f.id)):
            local = f.local
            files.append(
                FileDetail(
                    id=f.id,
                    name=f.name or f"file-{f.id}",
                    size_kb=f.size_kb,
                    format=f.format,
                    primary=f.is_primary,
                    hashes=[
                        HashCheck(
                            _HASH_NAMES[column],
                            getattr(f, column),
                            getattr(local, column) if local is not None else None,
                        )
                        for column in HASH_COLUMNS
                    ],
                    local_state=local.state if local is not None else None,
                    local_path=local.path if local is not None else None,
                    verified_at=local.verified_at if local is not None else None,
                    pickle_scan=f.pickle_scan_result,
                    virus_scan=f.virus_scan_result,
                )
            )
        images = images_by_version.get(v.id, [])
        version_text = html_to_text(v.description_html)
        meta = user_meta.get(v.id, {})
        weight = suggest_weight([version_text, model_text], prompts_by_version.get(v.id, []))
        if meta.get("preferred_weight"):
            weight = Weight(float(meta["preferred_weight"]), source="your setting")
        words = v.trained_word_list
        activation = meta.get("activation_text")
        if activation and activation not in words:
            words = [activation, *words]
        versions.append(
            VersionDetail(
                id=v.id,
                name=v.name,
                base_model=v.base_model,
                published_at=v.published_at,
                state=v.state,
                description=version_text,
                trained_words=words,
                weight=weight,
                files=files,
                images=images,
                preview_path=preview_path(v.id, images),
                access=tuple(version_access(v, row)),
            )
        )
    updates = [vid for mid, vid in find_update_pairs(session) if mid == model_id]
    return ModelDetail(
        id=row.id,
        name=row.name,
        type=row.type,
        creator=row.creator.username if row.creator else None,
        nsfw=row.nsfw,
        tags=row.tag_names,
        description=model_text,
        downloads=row.download_count,
        versions=versions,
        update_version_ids=updates,
    )


def describe_access(rule: AccessRule) -> str:
    """A download restriction in words (`catalog.access.describe`), for the detail pane."""
    return describe(rule)
