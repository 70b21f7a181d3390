"""Which local models have a newer version, and which local files are duplicates."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session
from sqlmodel import col

from catalog.models import LocalFile, Model, ModelFile, ModelVersion

_FAMILY_PREFIXES: tuple[tuple[str, str], ...] = (
    ("sd 1", "SD 1.x"),
    ("sd 2", "SD 2.x"),
    ("sdxl", "SDXL"),
    ("pony", "Pony"),
    ("illustrious", "Illustrious"),
    ("noobai", "NoobAI"),
    ("flux.1", "Flux.1"),
    ("flux.2", "Flux.2"),
    ("sd 3", "SD 3.x"),
)


def base_model_family(base_model: str | None) -> str:
    """Group base models whose LoRAs and checkpoints are interchangeable (SD 1.4/1.5 → SD 1.x).

    Pony, Illustrious and NoobAI are SDXL architectures but separate families in practice: a
    Pony LoRA is no update for an SDXL 1.0 LoRA user.
    """
    return known_base_model_family(base_model) or base_model or "Other"


def known_base_model_family(base_model: str | None) -> str | None:
    """The family of a base model `base_model_family` knows; None for others ("Other", None)."""
    text = (base_model or "").strip().lower()
    for prefix, family in _FAMILY_PREFIXES:
        if text.startswith(prefix):
            return family
    return None


@dataclass(frozen=True)
class UpdateInfo:
    model_id: int
    model_name: str
    family: str
    local_version_id: int
    local_version_name: str | None
    newest_version_id: int
    newest_version_name: str | None
    newest_published_at: datetime | None

    @property
    def latest_version_id(self) -> int:
        return self.newest_version_id

    def as_json(self) -> dict[str, Any]:
        return {
            "model_id": self.model_id,
            "model_name": self.model_name,
            "base_model_family": self.family,
            "local_version": {"id": self.local_version_id, "name": self.local_version_name},
            "newest_version": {
                "id": self.newest_version_id,
                "name": self.newest_version_name,
                "published_at": self.newest_published_at.isoformat()
                if self.newest_published_at
                else None,
            },
        }


def _newness(v: ModelVersion) -> tuple[int, datetime | None, int]:
    # Civitai's position 0 is the newest; published_at breaks ties for versions from lookups.
    return (-v.position, v.published_at, v.id)


def find_updates(session: Session, *, model_ids: Sequence[int] | None = None) -> list[UpdateInfo]:
    """Local models whose newest version in the same base-model family is not local.

    `model_ids` limits the check to these models (the TUI's detail pane asks for one).
    """
    query = (
        select(col(ModelFile.version_id))
        .join(LocalFile, col(LocalFile.file_id) == col(ModelFile.id))
        .where(col(LocalFile.state) == "verified")
    )
    local_version_ids = set(session.execute(query).scalars())
    if not local_version_ids:
        return []
    local_models = set(
        session.execute(
            select(col(ModelVersion.model_id)).where(col(ModelVersion.id).in_(local_version_ids))
        ).scalars()
    )
    if model_ids is not None:
        local_models &= set(model_ids)
    updates: list[UpdateInfo] = []
    for model in session.execute(
        select(Model).where(col(Model.id).in_(local_models), col(Model.source) == "civitai")
    ).scalars():
        by_family: dict[str, list[ModelVersion]] = defaultdict(list)
        for v in model.versions:
            if v.state == "active":
                by_family[base_model_family(v.base_model)].append(v)
        for family, versions in sorted(by_family.items()):
            local = [v for v in versions if v.id in local_version_ids]
            if not local:
                continue
            newest = max(versions, key=lambda v: (v.published_at is not None, _newness(v)))
            if newest.id in local_version_ids:
                continue
            mine = max(local, key=lambda v: (v.published_at is not None, _newness(v)))
            updates.append(
                UpdateInfo(
                    model.id,
                    model.name,
                    family,
                    mine.id,
                    mine.name,
                    newest.id,
                    newest.name,
                    newest.published_at,
                )
            )
    return sorted(updates, key=lambda u: (u.model_name.lower(), u.family))


def count_verified_local(session: Session) -> int:
    """How many files the store holds verified (what `updates` and `duplicates` look at)."""
    return int(
        session.execute(
            select(func.count()).select_from(LocalFile).where(col(LocalFile.state) == "verified")
        ).scalar_one()
    )


def find_duplicates(session: Session) -> dict[str, list[dict[str, Any]]]:
    """Local files grouped by SHA256 (same bytes) and by AutoV3 (same tensors, other header).

    Only groups with more than one member are returned; an AutoV3 group lists files whose
    SHA256 differ (identical bytes are already a SHA256 group).
    """
    rows = session.execute(
        select(LocalFile, ModelFile, ModelVersion, Model)
        .join(ModelFile, col(ModelFile.id) == col(LocalFile.file_id), isouter=True)
        .join(ModelVersion, col(ModelVersion.id) == col(ModelFile.version_id), isouter=True)
        .join(Model, col(Model.id) == col(ModelVersion.model_id), isouter=True)
        .where(col(LocalFile.state) == "verified")
    ).all()
    by_sha: dict[str, list[dict[str, Any]]] = defaultdict(list)
    by_v3: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for local, file, version, model in rows:
        entry = {
            "file_id": local.file_id,
            "file_name": file.name if file else None,
            "model_id": model.id if model else None,
            "model_name": model.name if model else None,
            "version_id": version.id if version else None,
            "sha256": local.sha256,
            "autov3": local.autov3,
            "path": local.path,
        }
        if local.sha256:
            by_sha[local.sha256].append(entry)
        if local.autov3:
            by_v3[local.autov3].append(entry)
    sha_groups = [{"sha256": k, "files": v} for k, v in sorted(by_sha.items()) if len(v) > 1]
    v3_groups = []
    for key, members in sorted(by_v3.items()):
        if len({m["sha256"] for m in members}) > 1:
            v3_groups.append({"autov3": key, "files": members})
    return {"by_sha256": sha_groups, "by_autov3": v3_groups}
