"""Writes of API payloads into the catalog: incremental upserts, standalone versions, gone."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, select, update
from sqlalchemy.orm import Session

from catalog.civitai import types as api
from catalog.errors import CatalogError
from catalog.local_files import detach_changed
from catalog.models import (
    utcnow,
)
from catalog.repo.mapping import (
    _model_row,
    _model_state,
    _search_row,
    _version_write,
    model_parts,
    payload_hashes,
)
from catalog.repo.sql import (
    _CREATOR,
    _FILE,
    _IMAGE,
    _MODEL,
    _MODEL_TAG,
    _SEARCH,
    _STANDALONE_ONLY,
    _TAG,
    _VERSION,
    _WORD,
    UpsertResult,
    _chunks,
    _delete_where_in,
    _executemany,
    _ExistingVersion,
    _insert_many,
    _pairs,
    _upsert,
    _utc,
    _VersionWrite,
)
from catalog.text import html_to_text

# --- upserts ---------------------------------------------------------------------------------


def upsert_models(
    session: Session, models: Sequence[api.Model], *, seen_at: datetime
) -> UpsertResult:
    """Insert or update `models` with their versions, files, images, tags and trained words.

    Idempotent and incremental (see the module docstring): upserting identical payloads again
    issues no INSERT, UPDATE or DELETE at all. A model with ``mode`` Archived or TakenDown
    gets that state; a model previously marked gone comes back. Duplicate ids in `models`:
    the last one wins.
    """
    seen_at = _utc(seen_at)
    result = UpsertResult()
    by_id = {m.id: m for m in models}
    if not by_id:
        return result

    existing: dict[int, tuple[str | None, str]] = {}
    ids = list(by_id)
    for chunk in _chunks(ids):
        query = select(_MODEL.c.id, _MODEL.c.payload_sha256, _MODEL.c.state).where(
            _MODEL.c.id.in_(chunk)
        )
        for model_id, payload_sha256, state in session.execute(query):
            existing[model_id] = (payload_sha256, state)

    changed: list[tuple[api.Model, str, str, dict[int, str]]] = []
    for model in by_id.values():
        payload_sha256, version_hashes = payload_hashes(model)
        state = _model_state(model.mode)
        if existing.get(model.id) == (payload_sha256, state):
            result.models_unchanged += 1
            result.versions_unchanged += len(model.model_versions)
            result.files_unchanged += sum(len(v.files) for v in model.model_versions)
            continue
        changed.append((model, payload_sha256, state, version_hashes))
        if model.id in existing:
            result.models_updated += 1
        else:
            result.models_inserted += 1
    if changed:
        _write_changed_models(session, changed, set(existing), seen_at, result)
    return result


def _write_changed_models(
    session: Session,
    changed: list[tuple[api.Model, str, str, dict[int, str]]],
    existing_model_ids: set[int],
    seen_at: datetime,
    result: UpsertResult,
) -> None:
    creator_ids = _ensure_creators(session, [m.creator for m, *_ in changed if m.creator])
    tag_ids = _ensure_tags(session, [t for m, *_ in changed for t in m.tags])

    model_rows: list[dict[str, Any]] = []
    tag_rows: list[dict[str, Any]] = []
    search_rows: list[dict[str, Any]] = []
    # version id -> (model, version, position, state, content hash, description text)
    payload_versions: dict[int, tuple[api.Model, api.ModelVersion, int, str, str, str | None]] = {}
    for model, payload_sha256, state, version_hashes in changed:
        parts = model_parts(
            model,
            payload_sha256=payload_sha256,
            state=state,
            version_hashes=version_hashes,
            seen_at=seen_at,
        )
        if parts.username:
            parts.model_row["creator_id"] = creator_ids.get(parts.username)
        model_rows.append(parts.model_row)
        for position, name in enumerate(parts.tags):
            tag_rows.append({"model_id": model.id, "tag_id": tag_ids[name], "position": position})
        for version, position, text, content in parts.versions:
            payload_versions[version.id] = (model, version, position, state, content, text)
        search_rows.append(parts.search_row)

    _upsert(session, _MODEL, model_rows, key=("id",), keep_on_update=("first_seen_at", "source"))
    changed_existing = [m.id for m, *_ in changed if m.id in existing_model_ids]
    _replace_tags(session, tag_rows, changed_existing)

    old_versions = _existing_versions(session, changed_existing, list(payload_versions))
    rewrites: list[_VersionWrite] = []
    count_updates: list[dict[str, Any]] = []
    for version_id, (model, version, position, state, content, text) in payload_versions.items():
        old = old_versions.get(version_id)
        if (
            old is not None
            and old.payload_sha256 == content
            and old.state == state
            and old.model_id == model.id
        ):
            if old.download_count != version.stats.download_count:
                count_updates.append({"b_id": version_id, "b_count": version.stats.download_count})
                result.versions_updated += 1
            else:
                result.versions_unchanged += 1
            result.files_unchanged += len(version.files)
            continue
        rewrites.append(
            _version_write(
                version,
                model_id=model.id,
                position=position,
                description_text=text,
                state=state,
                payload_sha256=content,
            )
        )
        if old is None:
            result.versions_inserted += 1
        else:
            result.versions_updated += 1

    changed_ids = {m.id for m, *_ in changed}
    vanished = [
        version_id
        for version_id, old in old_versions.items()
        if old.model_id in changed_ids
        and version_id not in payload_versions
        and old.state != "gone"
    ]

    _upsert(
        session,
        _VERSION,
        [w.row for w in rewrites],
        key=("id",),
        keep_existing_if_null=_STANDALONE_ONLY,
    )
    _executemany(
        session,
        _VERSION,
        count_updates,
        variant=("download_count",),
        build=lambda _dialect: (
            update(_VERSION)
            .where(_VERSION.c.id == bindparam("b_id"))
            .values(download_count=bindparam("b_count"))
        ),
    )
    for chunk in _chunks(vanished):
        session.execute(update(_VERSION).where(_VERSION.c.id.in_(chunk)).values(state="gone"))
    result.versions_gone += len(vanished)
    _replace_children(session, rewrites, set(old_versions), result)
    _upsert(session, _SEARCH, search_rows, key=("model_id",), only_if_changed=True)


def _replace_tags(
    session: Session, rows: list[dict[str, Any]], stored_model_ids: Sequence[int]
) -> None:
    """Write model↔tag links, skipping models whose ordered tag list did not change."""
    stored: dict[int, list[int]] = {}
    for chunk in _chunks(stored_model_ids):
        query = (
            select(_MODEL_TAG.c.model_id, _MODEL_TAG.c.tag_id)
            .where(_MODEL_TAG.c.model_id.in_(chunk))
            .order_by(_MODEL_TAG.c.model_id, _MODEL_TAG.c.position)
        )
        for model_id, tag_id in _pairs(session, query):
            stored.setdefault(model_id, []).append(tag_id)
    wanted: dict[int, list[int]] = {}
    for row in rows:
        wanted.setdefault(row["model_id"], []).append(row["tag_id"])
    stale = [m for m in stored_model_ids if stored.get(m, []) != wanted.get(m, [])]
    _delete_where_in(session, _MODEL_TAG, "model_id", [m for m in stale if m in stored])
    unchanged = set(stored_model_ids) - set(stale)
    _insert_many(session, _MODEL_TAG, [row for row in rows if row["model_id"] not in unchanged])


def _ensure_creators(
    session: Session, creators: Sequence[api.Creator], *, want_ids: bool = True
) -> dict[str, int]:
    """Creator ids by username (none unless `want_ids`), inserting new creators and
    refreshing changed avatars."""
    rows = {
        c.username: {"username": c.username, "image_url": c.image} for c in creators if c.username
    }
    if not rows:
        return {}
    _upsert(session, _CREATOR, list(rows.values()), key=("username",), only_if_changed=True)
    if not want_ids:
        return {}
    ids: dict[str, int] = {}
    for chunk in _chunks(list(rows)):
        query = select(_CREATOR.c.username, _CREATOR.c.id).where(_CREATOR.c.username.in_(chunk))
        ids.update(_pairs(session, query))
    return ids


def _ensure_tags(session: Session, names: Sequence[str]) -> dict[str, int]:
    """Tag ids by name, inserting the new ones."""
    unique = list(dict.fromkeys(names))
    if not unique:
        return {}
    ids: dict[str, int] = {}
    for chunk in _chunks(unique):
        query = select(_TAG.c.name, _TAG.c.id).where(_TAG.c.name.in_(chunk))
        ids.update(_pairs(session, query))
    missing = [{"name": name} for name in unique if name not in ids]
    if missing:
        _upsert(session, _TAG, missing, key=("name",))
        for chunk in _chunks([row["name"] for row in missing]):
            query = select(_TAG.c.name, _TAG.c.id).where(_TAG.c.name.in_(chunk))
            ids.update(_pairs(session, query))
    return ids


def _existing_versions(
    session: Session, model_ids: Sequence[int], version_ids: Sequence[int]
) -> dict[int, _ExistingVersion]:
    """Stored versions of `model_ids`, plus any of `version_ids` (a version may change model)."""
    columns = (
        _VERSION.c.id,
        _VERSION.c.model_id,
        _VERSION.c.payload_sha256,
        _VERSION.c.state,
        _VERSION.c.download_count,
    )
    found: dict[int, _ExistingVersion] = {}
    for column, values in ((_VERSION.c.model_id, model_ids), (_VERSION.c.id, version_ids)):
        for chunk in _chunks(values):
            for version_id, *rest in session.execute(select(*columns).where(column.in_(chunk))):
                found[version_id] = _ExistingVersion(*rest)
    return found


def _replace_children(
    session: Session,
    writes: Sequence[_VersionWrite],
    stored_version_ids: set[int],
    result: UpsertResult,
) -> None:
    """Replace trained words, images and files of rewritten versions.

    Words and images have no stable identity and are replaced wholesale; files keep their
    Civitai ids (a `LocalFile` points at them) and are upserted, and files that left a
    version are deleted.
    """
    if not writes:
        return
    stored = [w.id for w in writes if w.id in stored_version_ids]
    _delete_where_in(session, _WORD, "version_id", stored)
    _delete_where_in(session, _IMAGE, "version_id", stored)
    words = [row for w in writes for row in w.words]
    if words:
        _insert_many(session, _WORD, words)
    images = [row for w in writes for row in w.images]
    if images:
        _insert_many(session, _IMAGE, images)

    files = {row["id"]: row for w in writes for row in w.files}
    stored_files: dict[int, int] = {}
    for column, values in ((_FILE.c.version_id, stored), (_FILE.c.id, list(files))):
        for chunk in _chunks(values):
            query = select(_FILE.c.id, _FILE.c.version_id).where(column.in_(chunk))
            stored_files.update(_pairs(session, query))
    stored_set = set(stored)
    gone_files = [
        file_id
        for file_id, version_id in stored_files.items()
        if version_id in stored_set and file_id not in files
    ]
    result.files_removed += _delete_where_in(session, _FILE, "id", gone_files)
    _upsert(session, _FILE, list(files.values()), key=("id",))
    detach_changed(session, [file_id for file_id in files if file_id in stored_files])
    inserted = sum(1 for file_id in files if file_id not in stored_files)
    result.files_inserted += inserted
    result.files_updated += len(files) - inserted


def upsert_version(
    session: Session, version: api.ModelVersion, *, seen_at: datetime | None = None
) -> UpsertResult:
    """Store a standalone version (``/model-versions/{id}`` or by-hash, with `modelId`).

    An unknown parent model gets a stub row from the version's ``model{name,type,nsfw,poi}``
    (no payload hash, so the next sync of that model fills it in). An existing model row is
    left alone. Fields the standalone shape lacks (its position, early-access deadline) keep
    their stored values; its files, images and trained words replace the stored ones.
    """
    if version.model_id is None:
        raise CatalogError(f"version {version.id} has no modelId; cannot place it in the catalog")
    seen_at = _utc(seen_at or utcnow())
    model_id = version.model_id
    result = UpsertResult()
    parent = version.model
    state_row = session.execute(select(_MODEL.c.state).where(_MODEL.c.id == model_id)).first()
    if state_row is None:
        state = _model_state(parent.mode if parent else None)
        stub = api.Model(
            id=model_id,
            name=(parent.name if parent and parent.name else f"Model {model_id}"),
            type=parent.type if parent else None,
            # Older payloads (and sidecars) lack these flags: absent means no.
            nsfw=bool(parent and parent.nsfw),
            poi=bool(parent and parent.poi),
            mode=parent.mode if parent else None,
        )
        row = _model_row(
            stub,
            creator_id=None,
            description_text=None,
            payload_sha256=None,
            state=state,
            seen_at=seen_at,
        )
        _insert_many(session, _MODEL, [row])
        result.models_inserted += 1
    else:
        state = state_row.state if state_row.state in ("archived", "taken_down") else "active"
        result.models_unchanged += 1

    # NOT NULL is checked before ON CONFLICT, so a missing index needs the stored position.
    stored_position = session.execute(
        select(_VERSION.c.position).where(_VERSION.c.id == version.id)
    ).scalar_one_or_none()
    stored = stored_position is not None
    position = version.index if version.index is not None else (stored_position or 0)
    write = _version_write(
        version,
        model_id=model_id,
        position=position,
        description_text=html_to_text(version.description),
        state=state,
        payload_sha256=None,
    )
    nullable = {c for c in write.row if c not in ("id", "model_id", "state", "payload_sha256")}
    _upsert(session, _VERSION, [write.row], key=("id",), keep_existing_if_null=nullable)
    if stored:
        result.versions_updated += 1
    else:
        result.versions_inserted += 1
    _replace_children(session, [write], {version.id} if stored else set(), result)
    refresh_search(session, [model_id])
    return result


def refresh_search(session: Session, model_ids: Sequence[int]) -> None:
    """Rebuild the search documents of `model_ids` from the stored rows.

    `upsert_models` builds documents from the payload directly; this is for the other writers
    (`upsert_version`, a local import) and for repairs.
    """
    for chunk in _chunks(list(dict.fromkeys(model_ids))):
        models = session.execute(
            select(
                _MODEL.c.id,
                _MODEL.c.name,
                _MODEL.c.type,
                _MODEL.c.description_text,
                _CREATOR.c.username,
            )
            .select_from(_MODEL.outerjoin(_CREATOR, _CREATOR.c.id == _MODEL.c.creator_id))
            .where(_MODEL.c.id.in_(chunk))
        ).all()
        tags: dict[int, list[str]] = {}
        query = (
            select(_MODEL_TAG.c.model_id, _TAG.c.name)
            .join(_TAG, _TAG.c.id == _MODEL_TAG.c.tag_id)
            .where(_MODEL_TAG.c.model_id.in_(chunk))
            .order_by(_MODEL_TAG.c.model_id, _MODEL_TAG.c.position)
        )
        for model_id, name in session.execute(query):
            tags.setdefault(model_id, []).append(name)
        versions: dict[int, list[tuple[int, str | None, str | None, str | None]]] = {}
        query = (
            select(
                _VERSION.c.model_id,
                _VERSION.c.id,
                _VERSION.c.name,
                _VERSION.c.base_model,
                _VERSION.c.description_text,
            )
            .where(_VERSION.c.model_id.in_(chunk), _VERSION.c.state != "gone")
            .order_by(_VERSION.c.model_id, _VERSION.c.position, _VERSION.c.id)
        )
        for row in session.execute(query):
            versions.setdefault(row[0], []).append((row[1], row[2], row[3], row[4]))
        words: dict[int, list[str]] = {}
        version_ids = [v[0] for vs in versions.values() for v in vs]
        for version_chunk in _chunks(version_ids):
            query = (
                select(_WORD.c.version_id, _WORD.c.word)
                .where(_WORD.c.version_id.in_(version_chunk))
                .order_by(_WORD.c.version_id, _WORD.c.position)
            )
            for version_id, word in session.execute(query):
                words.setdefault(version_id, []).append(word)
        rows = [
            _search_row(
                model_id,
                name=name,
                model_type=model_type,
                creator=username,
                tags=tags.get(model_id, []),
                version_names=[part for v in versions.get(model_id, []) for part in (v[1], v[2])],
                words=[w for v in versions.get(model_id, []) for w in words.get(v[0], [])],
                descriptions=[description, *(v[3] for v in versions.get(model_id, []))],
            )
            for model_id, name, model_type, description, username in models
        ]
        _upsert(session, _SEARCH, rows, key=("model_id",), only_if_changed=True)


def mark_gone(session: Session, model_ids: Sequence[int], *, at: datetime) -> int:
    """Mark `model_ids` as gone (Civitai answered 404); returns how many rows changed."""
    at = _utc(at)
    marked = 0
    for chunk in _chunks(list(dict.fromkeys(model_ids))):
        outcome = session.execute(
            update(_MODEL)
            .where(_MODEL.c.id.in_(chunk), _MODEL.c.state != "gone")
            .values(state="gone", changed_at=at)
        )
        marked += int(getattr(outcome, "rowcount", 0) or 0)
    return marked


def mark_missing(session: Session, *, seen_model_ids: Collection[int], at: datetime) -> int:
    """After a complete, unfiltered listing sync: mark every Civitai model it did not list gone.

    Only call this when the listing really covered everything (no filters, no cap, not
    resumed, SFW and NSFW both listed); otherwise absence means nothing. Rows are kept; a
    model that shows up again is revived by the next upsert.
    """
    stored = session.execute(
        select(_MODEL.c.id).where(_MODEL.c.source == "civitai", _MODEL.c.state != "gone")
    ).scalars()
    seen = set(seen_model_ids)
    return mark_gone(session, [model_id for model_id in stored if model_id not in seen], at=at)
