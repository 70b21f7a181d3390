"""API payloads to catalog rows, and the payload hashes that make upserts incremental."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from catalog.civitai import types as api
from catalog.repo.sql import _DOC_LIMITS, _HASH_COLUMN_BY_TYPE, MAPPING_VERSION, _VersionWrite
from catalog.text import html_to_text, search_text


def _model_state(mode: str | None) -> str:
    """The row state for Civitai's `mode` (``Archived``, ``TakenDown`` or nothing)."""
    normalized = (mode or "").replace("_", "").strip().lower()
    return {"archived": "archived", "takendown": "taken_down"}.get(normalized, "active")


def _sha256(*parts: str) -> str:
    digest = hashlib.sha256(MAPPING_VERSION.encode())
    for part in parts:
        digest.update(b"\x00")
        digest.update(part.encode("utf-8", "surrogatepass"))
    return digest.hexdigest()


def version_content_sha256(version: api.ModelVersion) -> str:
    """Hash of a version payload without its stats (download counts change by the minute)."""
    return _sha256(version.model_dump_json(exclude={"stats"}))


def payload_hashes(model: api.Model) -> tuple[str, dict[int, str]]:
    """The model's payload hash (everything, stats included) and each version's content hash.

    Built from one serialization of the payload: the model's own fields, then per version its
    content hash and its stats.
    """
    version_hashes: dict[int, str] = {}
    parts = [model.model_dump_json(exclude={"model_versions"})]
    for version in model.model_versions:
        content = version_content_sha256(version)
        version_hashes[version.id] = content
        parts.append(content)
        parts.append(version.stats.model_dump_json())
    return _sha256(*parts), version_hashes


def model_payload_sha256(model: api.Model) -> str:
    """Hash of a whole model payload: versions, files, images and stats included."""
    return payload_hashes(model)[0]


# --- payload -> rows -------------------------------------------------------------------------


def _model_row(
    model: api.Model,
    *,
    creator_id: int | None,
    description_text: str | None,
    payload_sha256: str | None,
    state: str,
    seen_at: datetime,
) -> dict[str, Any]:
    return {
        "id": model.id,
        "name": model.name,
        "type": model.type,
        "type_raw": model.type_raw,
        "nsfw": model.nsfw,
        "nsfw_level": model.nsfw_level,
        "poi": model.poi,
        "minor": model.minor,
        "description_html": model.description,
        "description_text": description_text,
        "creator_id": creator_id,
        "allow_commercial_use": list(model.allow_commercial_use),
        "allow_no_credit": model.allow_no_credit,
        "allow_derivatives": model.allow_derivatives,
        "allow_different_license": model.allow_different_license,
        "availability": model.availability,
        "mode": model.mode,
        "download_count": model.stats.download_count,
        "thumbs_up_count": model.stats.thumbs_up_count,
        "state": state,
        "source": "civitai",
        "payload_sha256": payload_sha256,
        "first_seen_at": seen_at,
        "last_seen_at": seen_at,
        "changed_at": seen_at,
    }


def _version_write(
    version: api.ModelVersion,
    *,
    model_id: int,
    position: int | None,
    description_text: str | None,
    state: str,
    payload_sha256: str | None,
) -> _VersionWrite:
    row = {
        "id": version.id,
        "model_id": model_id,
        "position": position,
        "name": version.name,
        "base_model": version.base_model,
        "base_model_type": version.base_model_type,
        "published_at": version.published_at,
        "created_at": version.created_at,
        "description_html": version.description,
        "description_text": description_text,
        "early_access_deadline": version.early_access_deadline,
        "availability": version.availability,
        "usage_control": version.usage_control,
        "nsfw_level": version.nsfw_level,
        "air": version.air,
        "download_url": version.download_url,
        "download_count": version.stats.download_count,
        "state": state,
        "payload_sha256": payload_sha256,
    }
    primary = version.primary_file
    files = [
        {
            "id": f.id,
            "version_id": version.id,
            "name": f.name,
            "size_kb": f.size_kb,
            "type": f.type,
            "is_primary": primary is not None and f.id == primary.id,
            "format": f.metadata.format,
            "fp": f.metadata.fp,
            "size_variant": f.metadata.size,
            "pickle_scan_result": f.pickle_scan_result,
            "virus_scan_result": f.virus_scan_result,
            "scanned_at": f.scanned_at,
            "download_url": f.download_url,
            **{column: f.hashes.get(name) for name, column in _HASH_COLUMN_BY_TYPE.items()},
        }
        for f in version.files
    ]
    images = [
        {
            "version_id": version.id,
            "civitai_id": image.id,
            "position": index,
            "url": image.url,
            "width": image.width,
            "height": image.height,
            "nsfw_level": image.nsfw_level,
            "blurhash": image.hash,
            "type": image.type,
            "meta": image.meta,
        }
        for index, image in enumerate(version.images)
    ]
    words = [
        {"version_id": version.id, "position": index, "word": word}
        for index, word in enumerate(version.trained_words)
    ]
    return _VersionWrite(row=row, files=files, images=images, words=words)


def _search_row(
    model_id: int,
    *,
    name: str,
    model_type: str | None,
    creator: str | None,
    tags: Iterable[str],
    version_names: Iterable[str | None],
    words: Iterable[str],
    descriptions: Iterable[str | None],
) -> dict[str, Any]:
    """One `model_search` document; the only place that decides what search sees."""
    texts = {
        "name": (name,),
        "tags": tuple(tags),
        "words": tuple(words),
        "creator": (creator,),
        "versions": (model_type, *version_names),
        "body": tuple(descriptions),
    }
    row: dict[str, Any] = {"model_id": model_id}
    for column, parts in texts.items():
        row[column] = search_text(*parts, limit=_DOC_LIMITS[column])
    return row


@dataclass
class ModelParts:
    """The rows of one model payload, before any database id is known.

    `model_row` has ``creator_id`` None: the writer fills it once the creator row exists.
    """

    model_row: dict[str, Any]
    username: str | None
    tags: list[str]  # distinct, in payload order
    # (version, position, description text, content hash), in payload order
    versions: list[tuple[api.ModelVersion, int, str | None, str]]
    search_row: dict[str, Any]


def model_parts(
    model: api.Model,
    *,
    payload_sha256: str,
    state: str,
    version_hashes: dict[int, str],
    seen_at: datetime,
) -> ModelParts:
    """Map one validated model to its rows (pure: the sync runs it in worker processes)."""
    username = model.creator.username if model.creator else None
    description_text = html_to_text(model.description)
    versions: list[tuple[api.ModelVersion, int, str | None, str]] = []
    version_texts: list[str | None] = []
    for index, version in enumerate(model.model_versions):
        text = html_to_text(version.description)
        version_texts.append(text)
        position = version.index if version.index is not None else index
        versions.append((version, position, text, version_hashes[version.id]))
    search_row = _search_row(
        model.id,
        name=model.name,
        model_type=model.type,
        creator=username,
        tags=model.tags,
        version_names=[part for v in model.model_versions for part in (v.name, v.base_model)],
        words=[w for v in model.model_versions for w in v.trained_words],
        descriptions=[description_text, *version_texts],
    )
    model_row = _model_row(
        model,
        creator_id=None,
        description_text=description_text,
        payload_sha256=payload_sha256,
        state=state,
        seen_at=seen_at,
    )
    return ModelParts(model_row, username, list(dict.fromkeys(model.tags)), versions, search_row)
