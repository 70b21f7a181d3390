"""The JSON contract of a model (`models show --json`, `models list --json`)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from catalog.access import version_access
from catalog.models import (
    LocalFile,
    Model,
    ModelFile,
    ModelVersion,
)
from catalog.repo.sql import _HASH_COLUMN_BY_TYPE, _utc


def _iso(value: datetime | None) -> str | None:
    if value is None:
        return None
    return _utc(value).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _newest_first(version: ModelVersion) -> tuple[datetime, int]:
    when = version.published_at or version.created_at or datetime.min.replace(tzinfo=UTC)
    return (when, version.id)


def _local_dict(local: LocalFile | None) -> dict[str, Any] | None:
    if local is None:
        return None
    return {"state": local.state, "path": local.path, "verified_at": _iso(local.verified_at)}


def _file_dict(file: ModelFile) -> dict[str, Any]:
    hashes = {
        name: getattr(file, column)
        for name, column in _HASH_COLUMN_BY_TYPE.items()
        if getattr(file, column)
    }
    return {
        "id": file.id,
        "name": file.name,
        "size_kb": file.size_kb,
        "primary": file.is_primary,
        "format": file.format,
        "hashes": hashes,
        "local": _local_dict(file.local),
    }


def model_to_dict(model: Model) -> dict[str, Any]:
    """The model object of the JSON contract (README "Model object").

    Versions newest first (gone versions only when a file of theirs is in the store), the
    primary file first, hashes in Civitai's spelling with only the known ones present.
    """
    versions = [
        v for v in model.versions if v.state != "gone" or any(f.local is not None for f in v.files)
    ]
    versions.sort(key=_newest_first, reverse=True)
    now = datetime.now(UTC)
    return {
        "id": model.id,
        "name": model.name,
        "type": model.type,
        "nsfw": model.nsfw,
        "tags": model.tag_names,
        "creator": model.creator.username if model.creator else None,
        "versions": [
            {
                "id": v.id,
                "name": v.name,
                "base_model": v.base_model,
                "trained_words": v.trained_word_list,
                "published_at": _iso(v.published_at),
                "access": [
                    {"code": rule.code, "until": _iso(rule.until)}
                    for rule in version_access(v, model, now=now)
                ],
                "files": [
                    _file_dict(f) for f in sorted(v.files, key=lambda f: (not f.is_primary, f.id))
                ],
            }
            for v in versions
        ],
    }
