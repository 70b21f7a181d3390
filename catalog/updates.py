"""Update detection: a local model whose newest version in the same base-model family is not local.

A version counts as local when one of its files has a verified `LocalFile`. Versions are
grouped by base-model family (`base_model_family`) so that a new Pony version is not reported as
an update of an SDXL file the user has (peers.md: LoRA Manager's per-base grouping). Within a
family the newest version is the latest ``published_at`` (then ``created_at``), ties going to
Civitai's order (`position` 0 first). Gone versions are never offered as updates.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Collection
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Table, select
from sqlalchemy.orm import Session
from sqlmodel import SQLModel

import catalog.models  # noqa: F401  (registers the tables on SQLModel.metadata)

_VARIANT_WORDS = frozenset({"lightning", "turbo", "hyper", "lcm", "inpainting", "refiner"})
_SPACES = re.compile(r"\s+")
_EPOCH = datetime.min.replace(tzinfo=UTC)
_IN_CHUNK = 500


def _table(name: str) -> Table:
    return SQLModel.metadata.tables[name]


def base_model_family(base_model: str | None) -> str:
    """The compatibility family of a Civitai base model ("SDXL Lightning" -> "sdxl").

    Speed-up variants (Lightning, Turbo, Hyper, LCM) share their base's weights layout; the
    version number of SD 1.x/2.x and SDXL releases does not split a family.
    """
    if not base_model:
        return "unknown"
    words = [w for w in _SPACES.split(base_model.strip().lower()) if w]
    words = [w for w in words if w not in _VARIANT_WORDS] or words
    text = " ".join(words)
    if text.startswith("sdxl"):
        return "sdxl"
    match = re.match(r"^sd\s*([12])(\.\d+)?", text)
    if match:
        return f"sd{match.group(1)}"
    if re.match(r"^sd\s*3(\.\d+)?", text):
        return "sd3"
    return text


@dataclass(frozen=True)
class UpdateInfo:
    """One model with a newer version in a family the user already has locally."""

    model_id: int
    model_name: str
    family: str
    local_version_id: int
    local_version_name: str | None
    latest_version_id: int
    latest_version_name: str | None
    latest_base_model: str | None
    latest_published_at: datetime | None


@dataclass(frozen=True)
class _Version:
    id: int
    model_id: int
    name: str | None
    base_model: str | None
    published_at: datetime | None
    created_at: datetime | None
    position: int

    def newness(self) -> tuple[datetime, int, int]:
        when = self.published_at or self.created_at or _EPOCH
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        return (when, -self.position, self.id)


def _local_version_ids(session: Session, model_ids: Collection[int] | None) -> dict[int, int]:
    """Version id -> model id of every version with a verified local file."""
    local = _table("local_file")
    file = _table("model_file")
    version = _table("model_version")
    query = (
        select(version.c.id, version.c.model_id)
        .select_from(
            local.join(file, file.c.id == local.c.file_id).join(
                version, version.c.id == file.c.version_id
            )
        )
        .where(local.c.state == "verified")
        .distinct()
    )
    found: dict[int, int] = {}
    if model_ids is None:
        for row in session.execute(query):
            found[int(row[0])] = int(row[1])
        return found
    ids = sorted(set(model_ids))
    for start in range(0, len(ids), _IN_CHUNK):
        chunk = ids[start : start + _IN_CHUNK]
        for row in session.execute(query.where(version.c.model_id.in_(chunk))):
            found[int(row[0])] = int(row[1])
    return found


def _versions_of(session: Session, model_ids: Collection[int]) -> list[_Version]:
    version = _table("model_version")
    ids = sorted(set(model_ids))
    rows: list[_Version] = []
    for start in range(0, len(ids), _IN_CHUNK):
        chunk = ids[start : start + _IN_CHUNK]
        query = select(
            version.c.id,
            version.c.model_id,
            version.c.name,
            version.c.base_model,
            version.c.published_at,
            version.c.created_at,
            version.c.position,
        ).where(version.c.model_id.in_(chunk))
        for row in session.execute(query):
            values: Any = row
            rows.append(
                _Version(
                    id=int(values[0]),
                    model_id=int(values[1]),
                    name=values[2],
                    base_model=values[3],
                    published_at=values[4],
                    created_at=values[5],
                    position=int(values[6] or 0),
                )
            )
    return rows


def find_updates(session: Session, *, model_ids: Collection[int] | None = None) -> list[UpdateInfo]:
    """Updates for local models (all of them, or those in `model_ids`), sorted by model name."""
    local = _local_version_ids(session, model_ids)
    if not local:
        return []
    version = _table("model_version")
    model = _table("model")
    gone = {
        int(i)
        for i in session.execute(
            select(version.c.id).where(
                version.c.model_id.in_(sorted(set(local.values()))), version.c.state == "gone"
            )
        ).scalars()
    }
    names = {
        int(row[0]): str(row[1])
        for row in session.execute(
            select(model.c.id, model.c.name).where(model.c.id.in_(sorted(set(local.values()))))
        )
    }
    by_family: dict[tuple[int, str], list[_Version]] = defaultdict(list)
    for v in _versions_of(session, set(local.values())):
        by_family[(v.model_id, base_model_family(v.base_model))].append(v)
    updates: list[UpdateInfo] = []
    for (model_id, family), versions in by_family.items():
        mine = [v for v in versions if v.id in local]
        if not mine:
            continue
        offered = [v for v in versions if v.id not in gone]
        if not offered:
            continue
        newest = max(offered, key=_Version.newness)
        if newest.id in local:
            continue
        have = max(mine, key=_Version.newness)
        updates.append(
            UpdateInfo(
                model_id=model_id,
                model_name=names.get(model_id, str(model_id)),
                family=family,
                local_version_id=have.id,
                local_version_name=have.name,
                latest_version_id=newest.id,
                latest_version_name=newest.name,
                latest_base_model=newest.base_model,
                latest_published_at=newest.published_at,
            )
        )
    updates.sort(key=lambda u: (u.model_name.lower(), u.model_id, u.family))
    return updates


def models_with_updates(session: Session, model_ids: Collection[int]) -> set[int]:
    """The subset of `model_ids` that has an update (cheap for a page of a listing)."""
    if not model_ids:
        return set()
    return {u.model_id for u in find_updates(session, model_ids=model_ids)}


__all__ = ["UpdateInfo", "base_model_family", "find_updates", "models_with_updates"]
