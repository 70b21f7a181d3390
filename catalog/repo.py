"""Repository functions of the catalog: bulk upserts of API payloads, lookups and listings.

Every function takes the caller's session (one per unit of work, see `catalog.db.session_scope`)
and never commits. Writes use SQLAlchemy Core with executemany and the dialect's
``INSERT … ON CONFLICT`` (SQLite and PostgreSQL), never per-row ORM round trips.

Incremental upserts: each model's payload is hashed (`payload_sha256`: the validated payload as
JSON, versions and stats included). A model whose hash and state are unchanged is not
written at all, not even `last_seen_at` (`SyncState` records when a sync ran). Inside a changed
model, each version carries its own hash without its stats: a version whose content is unchanged
keeps its files, images and trained words, and only its download count is refreshed. Versions
that vanish from a model's payload are marked ``gone``; nothing is ever deleted by a sync
except a changed version's own children, which are replaced.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from operator import itemgetter
from typing import Any, Literal, NamedTuple, TypeVar, cast

from sqlalchemy import JSON, Select, Table, bindparam, delete, func, or_, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import QueryableAttribute, Session, selectinload
from sqlalchemy.orm.strategy_options import _AbstractLoad
from sqlalchemy.sql.elements import ClauseElement
from sqlmodel import SQLModel

from catalog.access import version_access
from catalog.civitai import types as api
from catalog.errors import CatalogError, NotInCatalogError
from catalog.local_files import detach_changed
from catalog.models import (
    HASH_COLUMNS,
    LocalFile,
    Model,
    ModelFile,
    ModelTag,
    ModelVersion,
    UTCDateTime,
    utcnow,
)
from catalog.search import match_clause, model_filters, search_models
from catalog.text import html_to_text, search_text

T = TypeVar("T")

# Part of every payload hash: bump it when the payload→row mapping changes, so the next sync
# rewrites every model instead of trusting rows written by the old mapping.
MAPPING_VERSION = "1"
_IN_CHUNK = 500  # ids per IN (...) list: far below SQLite's and PostgreSQL's parameter limits
_MULTIROW_ROWS = 200  # rows per multi-row VALUES statement (SQLite)...
_MULTIROW_PARAMS = 30_000  # ...and parameters, under SQLite's default limit of 32766
_HASH_COLUMN_BY_TYPE = dict(zip(api.HASH_TYPES, HASH_COLUMNS, strict=True))

_TABLES = SQLModel.metadata.tables
_CREATOR: Table = _TABLES["creator"]
_TAG: Table = _TABLES["tag"]
_MODEL: Table = _TABLES["model"]
_MODEL_TAG: Table = _TABLES["model_tag"]
_SEARCH: Table = _TABLES["model_search"]
_VERSION: Table = _TABLES["model_version"]
_WORD: Table = _TABLES["trained_word"]
_FILE: Table = _TABLES["model_file"]
_IMAGE: Table = _TABLES["image"]

# Version fields that only the standalone shape carries: a listing payload never erases them.
_STANDALONE_ONLY = frozenset({"created_at", "air", "usage_control"})
# Caps of the search document columns (characters); they keep a PostgreSQL tsvector far below
# its 1 MB limit however large the descriptions.
_DOC_LIMITS = {
    "name": 2_000,
    "tags": 20_000,
    "words": 40_000,
    "creator": 1_000,
    "versions": 40_000,
    "body": 200_000,
}

SortOrder = Literal["relevance", "downloads", "name", "newest", "updated"]


@dataclass
class UpsertResult:
    """What an upsert did; "unchanged" rows were compared and not written."""

    models_inserted: int = 0
    models_updated: int = 0
    models_unchanged: int = 0
    versions_inserted: int = 0
    versions_updated: int = 0
    versions_unchanged: int = 0
    versions_gone: int = 0
    files_inserted: int = 0
    files_updated: int = 0
    files_unchanged: int = 0
    files_removed: int = 0

    @property
    def models_written(self) -> int:
        return self.models_inserted + self.models_updated

    def __add__(self, other: UpsertResult) -> UpsertResult:
        return UpsertResult(
            **{f.name: getattr(self, f.name) + getattr(other, f.name) for f in fields(self)}
        )


class _ExistingVersion(NamedTuple):
    model_id: int
    payload_sha256: str | None
    state: str
    download_count: int | None


@dataclass
class _VersionWrite:
    """Rows of one version to (re)write."""

    row: dict[str, Any]
    files: list[dict[str, Any]]
    images: list[dict[str, Any]]
    words: list[dict[str, Any]]

    @property
    def id(self) -> int:
        return int(self.row["id"])


# --- small helpers ---------------------------------------------------------------------------


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _chunks(values: Sequence[T], size: int = _IN_CHUNK) -> Iterator[Sequence[T]]:
    for start in range(0, len(values), size):
        yield values[start : start + size]


def _insert(dialect: str, table: Table) -> Any:
    """The dialect's INSERT construct (both offer ``on_conflict_do_*`` and ``excluded``)."""
    if dialect == "sqlite":
        return sqlite_insert(table).inline()
    if dialect == "postgresql":
        return pg_insert(table).inline()
    raise CatalogError(f"the catalog does not support {dialect}")


class _Statement(NamedTuple):
    """One driver call: `params` is a flat tuple, or a list of rows when `many`."""

    sql: str
    params: Any
    many: bool


class _Compiled(NamedTuple):
    sql: str
    order: tuple[str, ...]  # parameter order for positional drivers (SQLite); () for named
    converters: tuple[tuple[str, Callable[[Any], Any]], ...]
    multirow: bool  # SQLite: send INSERTs as multi-row VALUES lists (see `_execute_params`)


_COMPILED: dict[tuple[Any, ...], _Compiled] = {}


def _sqlite_datetime(value: datetime | None) -> str | None:
    # SQLAlchemy's own SQLite DATETIME storage format, naive UTC (see models.UTCDateTime).
    if value is None:
        return None
    text = _utc(value).replace(tzinfo=None).isoformat(" ")
    return text if value.microsecond else text + ".000000"


def _aware_datetime(value: datetime | None) -> datetime | None:
    return None if value is None else _utc(value)


def _json_text(value: Any) -> str | None:
    return None if value is None else json.dumps(value)


def _compile(
    session: Session,
    table: Table,
    keys: tuple[str, ...],
    variant: tuple[Any, ...],
    build: Callable[[str], ClauseElement],
) -> _Compiled:
    """Compile a write statement once per dialect, table, columns and variant."""
    dialect = session.get_bind().dialect
    cache_key = (dialect.name, table.name, keys, variant)
    compiled = _COMPILED.get(cache_key)
    if compiled is not None:
        return compiled
    statement = build(dialect.name).compile(
        dialect=dialect, column_keys=list(keys), for_executemany=True
    )
    converters: list[tuple[str, Callable[[Any], Any]]] = []
    for key in keys:
        column = table.c.get(key)
        if column is None:
            continue
        if isinstance(column.type, UTCDateTime):
            sqlite = dialect.name == "sqlite"
            converters.append((key, _sqlite_datetime if sqlite else _aware_datetime))
        elif isinstance(column.type, JSON):
            converters.append((key, _json_text))
    positional = getattr(statement, "positional", False)
    order = tuple(getattr(statement, "positiontup", None) or ()) if positional else ()
    multirow = dialect.name == "sqlite"
    compiled = _Compiled(statement.string, order, tuple(converters), multirow)
    _COMPILED[cache_key] = compiled
    return compiled


def _executemany(
    session: Session,
    table: Table,
    rows: Sequence[dict[str, Any]],
    *,
    variant: tuple[Any, ...],
    build: Callable[[str], ClauseElement],
) -> None:
    """Run `build`'s statement for all `rows` with as few driver calls as possible.

    SQLAlchemy's per-row parameter processing costs more than SQLite's insert itself at this
    volume, so the statement is compiled once (casts included on PostgreSQL) and rows go to
    the driver as plain values; the few types that need it (UTC datetimes, JSON) are
    converted here. It still runs through the connection, so events and the transaction apply.
    """
    if not rows:
        return
    compiled = _compile(session, table, tuple(rows[0]), variant, build)
    _execute_params(session, compiled, driver_params(compiled, rows))


def driver_params(compiled: _Compiled, rows: Sequence[dict[str, Any]]) -> list[Any]:
    """`rows` as the driver takes them: value tuples in statement order, or converted dicts.

    Pure (no session): the sync's worker processes run it, so the main process only binds.
    """
    if not compiled.order:  # named parameters (psycopg)
        params: list[Any] = []
        for row in rows:
            named = dict(row)
            for key, convert in compiled.converters:
                named[key] = convert(named[key])
            params.append(named)
        return params
    width = len(compiled.order)
    index = {key: i for i, key in enumerate(compiled.order)}
    conversions = [(index[key], f) for key, f in compiled.converters if key in index]
    getter = itemgetter(*compiled.order)
    out: list[Any] = []
    for row in rows:
        picked: Any = getter(row)
        if width == 1:
            picked = (picked,)
        if conversions:
            picked = list(picked)
            for i, convert in conversions:
                picked[i] = convert(picked[i])
            picked = tuple(picked)
        out.append(picked)
    return out


def _execute_params(session: Session, compiled: _Compiled, params: Sequence[Any]) -> None:
    """Execute `compiled` for driver-ready `params` (see `driver_params`)."""
    _run_statements(session, list(_statements(compiled, params)))


def _statements(compiled: _Compiled, params: Sequence[Any]) -> Iterator[_Statement]:
    """The driver calls that run `compiled` for driver-ready `params`.

    On SQLite an INSERT goes out as multi-row VALUES lists rather than an executemany: each
    statement has a fixed cost (FTS5 even flushes its pending index data per statement), and
    through SQLAlchemy's connection an executemany of an upsert with many indexes measured
    five times slower than the same rows in 200-row statements. Pure (no session), so the
    sync's workers build them before they take their turn at the write lock.
    """
    if not params:
        return
    if not compiled.order or not compiled.multirow:
        yield _Statement(compiled.sql, list(params), many=True)
        return
    width = len(compiled.order)
    group = "(" + ", ".join("?" * width) + ")"
    head, found, tail = compiled.sql.partition(f" VALUES {group}")
    if not found:  # not a plain INSERT (an UPDATE by key): executemany
        yield _Statement(compiled.sql, list(params), many=True)
        return
    per_statement = max(1, min(_MULTIROW_ROWS, _MULTIROW_PARAMS // width))
    full_sql = ""
    for chunk in _chunks(params, per_statement):
        flat: list[Any] = []
        for values in chunk:
            flat.extend(values)
        if len(chunk) == per_statement:
            full_sql = full_sql or f"{head} VALUES {', '.join([group] * per_statement)}{tail}"
            sql = full_sql
        else:
            sql = f"{head} VALUES {', '.join([group] * len(chunk))}{tail}"
        yield _Statement(sql, tuple(flat), many=False)


def _run_statements(session: Session, statements: Sequence[_Statement]) -> None:
    connection = session.connection()
    for statement in statements:
        connection.exec_driver_sql(statement.sql, statement.params)


def _insert_many(session: Session, table: Table, rows: Sequence[dict[str, Any]]) -> None:
    _executemany(
        session, table, rows, variant=("insert",), build=lambda dialect: _insert(dialect, table)
    )


def _upsert(
    session: Session,
    table: Table,
    rows: Sequence[dict[str, Any]],
    *,
    key: Sequence[str],
    keep_on_update: Collection[str] = (),
    keep_existing_if_null: Collection[str] = (),
    only_if_changed: bool = False,
) -> None:
    """INSERT … ON CONFLICT (key) DO UPDATE for `rows` in one executemany.

    `keep_on_update` columns are only written on insert; `keep_existing_if_null` columns keep
    the stored value when the new one is NULL; `only_if_changed` skips rows (and their
    triggers) whose values are all equal.
    """
    if not rows:
        return
    compiled = _upsert_plan(
        session,
        table,
        tuple(rows[0]),
        key=key,
        keep_on_update=keep_on_update,
        keep_existing_if_null=keep_existing_if_null,
        only_if_changed=only_if_changed,
    )
    _execute_params(session, compiled, driver_params(compiled, rows))


def _upsert_plan(
    session: Session,
    table: Table,
    keys: tuple[str, ...],
    *,
    key: Sequence[str],
    keep_on_update: Collection[str] = (),
    keep_existing_if_null: Collection[str] = (),
    only_if_changed: bool = False,
) -> _Compiled:
    """The compiled upsert of `_upsert` for rows with `keys`."""
    columns = [c for c in keys if c not in key and c not in keep_on_update]

    def build(dialect: str) -> ClauseElement:
        stmt = _insert(dialect, table)
        if not columns:
            return cast(ClauseElement, stmt.on_conflict_do_nothing(index_elements=list(key)))
        excluded = stmt.excluded
        values = {
            c: func.coalesce(excluded[c], table.c[c]) if c in keep_existing_if_null else excluded[c]
            for c in columns
        }
        where = None
        if only_if_changed:
            where = or_(*(table.c[c].is_distinct_from(excluded[c]) for c in columns))
        return cast(
            ClauseElement,
            stmt.on_conflict_do_update(index_elements=list(key), set_=values, where=where),
        )

    variant = (
        "upsert",
        tuple(key),
        tuple(sorted(keep_on_update)),
        tuple(sorted(keep_existing_if_null)),
        only_if_changed,
    )
    return _compile(session, table, keys, variant, build)


def _pairs(session: Session, query: Select[Any]) -> Iterator[tuple[Any, Any]]:
    """Rows of a two-column query as tuples (for ``dict.update``)."""
    for row in session.execute(query):
        yield row[0], row[1]


def _delete_where_in(session: Session, table: Table, column: str, ids: Sequence[int]) -> int:
    removed = 0
    for chunk in _chunks(ids):
        result = session.execute(delete(table).where(table.c[column].in_(chunk)))
        removed += int(getattr(result, "rowcount", 0) or 0)
    return removed


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


# --- the sync's bulk path ---------------------------------------------------------------------
# `catalog.bulk` runs `prepare_model` in worker processes (pure: rows built, nothing written)
# and then `write_prepared`, which inserts new models from those rows and sends everything
# else through `upsert_models`.


# Tables filled from prepared rows, in foreign-key order (after `model` and `model_tag`).
_PREPARED_TABLES: tuple[Table, ...] = (
    _VERSION,
    _WORD,
    _IMAGE,
    _FILE,
    _SEARCH,
)

InsertPlans = dict[str, _Compiled]


@dataclass
class PreparedModel:
    """One validated model, mapped to rows; ``index`` is its position in the page's items."""

    index: int
    id: int
    payload_sha256: str
    state: str
    username: str | None
    creator_image: str | None
    tags: list[str]
    model_row: dict[str, Any]
    version_ids: list[int]
    file_ids: list[int]
    # table name -> driver parameters, per `InsertPlans`; None when the catalog already held
    # this exact payload as the page was fetched (nothing to build; re-checked when writing)
    rows: dict[str, list[Any]] | None
    n_files: int

    @property
    def n_versions(self) -> int:
        return len(self.version_ids)


def _sample_model() -> api.Model:
    """A payload with one of everything, to learn each builder's column keys."""
    return api.Model(
        id=1,
        name="sample",
        model_versions=[
            api.ModelVersion(
                id=1,
                files=[api.ModelFile(id=1)],
                images=[api.ModelImage()],
                trained_words=["w"],
            )
        ],
    )


def insert_plans(session: Session) -> InsertPlans:
    """The compiled single-row INSERT of each prepared table for this session's dialect."""
    sample = _sample_model()
    version = sample.model_versions[0]
    write = _version_write(
        version, model_id=1, position=0, description_text=None, state="active", payload_sha256=""
    )
    parts = model_parts(
        sample, payload_sha256="", state="active", version_hashes={1: ""}, seen_at=utcnow()
    )
    keys = {
        _VERSION.name: tuple(write.row),
        _WORD.name: tuple(write.words[0]),
        _IMAGE.name: tuple(write.images[0]),
        _FILE.name: tuple(write.files[0]),
        _SEARCH.name: tuple(parts.search_row),
    }
    plans: InsertPlans = {}
    for table in _PREPARED_TABLES:
        if table is _FILE:
            # Files keep Civitai's ids and one may move between versions (or repeat in a
            # payload): the same upsert the update path uses, so both paths agree.
            plans[table.name] = _upsert_plan(session, table, keys[table.name], key=("id",))
        else:
            plans[table.name] = _compile(
                session,
                table,
                keys[table.name],
                ("insert",),
                lambda dialect, table=table: _insert(dialect, table),  # type: ignore[misc]
            )
    # The same statement `_insert_many` compiles for new models' rows (staged syncs bind
    # their rows ahead of the write; see `prepared_inserts`).
    plans[_MODEL.name] = _compile(
        session, _MODEL, tuple(parts.model_row), ("insert",), lambda d: _insert(d, _MODEL)
    )
    return plans


def stored_payloads(session: Session, items: Sequence[Any]) -> dict[int, tuple[str | None, str]]:
    """(payload hash, state) of the stored models among raw `items`, by id."""
    ids = [item["id"] for item in items if isinstance(item, dict) and type(item.get("id")) is int]
    stored: dict[int, tuple[str | None, str]] = {}
    for chunk in _chunks(ids):
        query = select(_MODEL.c.id, _MODEL.c.payload_sha256, _MODEL.c.state)
        for model_id, payload_sha256, state in session.execute(query.where(_MODEL.c.id.in_(chunk))):
            stored[model_id] = (payload_sha256, state)
    return stored


def prepare_model(
    index: int,
    model: api.Model,
    seen_at: datetime,
    plans: InsertPlans,
    stored: dict[int, tuple[str | None, str]],
) -> PreparedModel:
    payload_sha256, version_hashes = payload_hashes(model)
    state = _model_state(model.mode)
    if stored.get(model.id) == (payload_sha256, state):
        return PreparedModel(
            index=index,
            id=model.id,
            payload_sha256=payload_sha256,
            state=state,
            username=None,
            creator_image=None,
            tags=[],
            model_row={},
            version_ids=[v.id for v in model.model_versions],
            file_ids=[],
            rows=None,
            n_files=sum(len(v.files) for v in model.model_versions),
        )
    parts = model_parts(
        model,
        payload_sha256=payload_sha256,
        state=state,
        version_hashes=version_hashes,
        seen_at=seen_at,
    )
    versions: list[dict[str, Any]] = []
    words: list[dict[str, Any]] = []
    images: list[dict[str, Any]] = []
    files: list[dict[str, Any]] = []
    for version, position, text, content in parts.versions:
        write = _version_write(
            version,
            model_id=model.id,
            position=position,
            description_text=text,
            state=state,
            payload_sha256=content,
        )
        versions.append(write.row)
        words.extend(write.words)
        images.extend(write.images)
        files.extend(write.files)
    by_table = {
        _VERSION.name: versions,
        _WORD.name: words,
        _IMAGE.name: images,
        _FILE.name: files,
        _SEARCH.name: [parts.search_row],
    }
    return PreparedModel(
        index=index,
        id=model.id,
        payload_sha256=payload_sha256,
        state=state,
        username=parts.username,
        creator_image=model.creator.image if model.creator else None,
        tags=parts.tags,
        model_row=parts.model_row,
        version_ids=[row["id"] for row in versions],
        file_ids=[row["id"] for row in files],
        rows={name: driver_params(plans[name], rows) for name, rows in by_table.items()},
        n_files=len(files),
    )


def write_prepared(
    session: Session,
    models: Sequence[PreparedModel],
    items: Sequence[Any],
    *,
    seen_at: datetime,
    plans: InsertPlans,
    inserts: PreparedInserts | None = None,
) -> UpsertResult:
    """Write one prepared page: skip unchanged models, insert new ones, update the rest.

    `items` are the page's raw items: a model that needs the update path is validated again
    from its item here (rare: only changed models and id collisions). `inserts`, from
    `prepared_inserts`, saves building the new models' statements here when they turn out to
    be exactly the models it was built for (the usual case).
    """
    result = UpsertResult()
    if not models:
        return result
    existing: dict[int, tuple[str | None, str]] = {}
    ids = [pm.id for pm in models]
    for chunk in _chunks(ids):
        query = select(_MODEL.c.id, _MODEL.c.payload_sha256, _MODEL.c.state)
        for model_id, payload_sha256, state in session.execute(query.where(_MODEL.c.id.in_(chunk))):
            existing[model_id] = (payload_sha256, state)

    repeated = {model_id for model_id, n in Counter(ids).items() if n > 1}
    fresh: list[PreparedModel] = []
    slow: list[PreparedModel] = []
    for pm in models:
        if pm.id in repeated:
            slow.append(pm)
        elif pm.id in existing:
            if existing[pm.id] == (pm.payload_sha256, pm.state):
                result.models_unchanged += 1
                result.versions_unchanged += pm.n_versions
                result.files_unchanged += pm.n_files
            else:
                slow.append(pm)
        elif pm.rows is None:  # it was stored when fetched, and is gone now: rare, go slow
            slow.append(pm)
        else:
            fresh.append(pm)
    if fresh:
        try:
            # A version id may be taken already (a version that moved between models, or
            # a payload repeating one): the savepoint undoes the plain INSERTs and those
            # models take the update path, which handles that.
            with session.begin_nested():
                _insert_fresh(session, fresh, plans, inserts)
        except IntegrityError:
            slow.extend(fresh)
        else:
            result.models_inserted += len(fresh)
            result.versions_inserted += sum(pm.n_versions for pm in fresh)
            result.files_inserted += sum(pm.n_files for pm in fresh)
    if slow:
        # Payload order, so the update path's "last duplicate wins" holds.
        slow.sort(key=lambda pm: pm.index)
        again = [api.Model.model_validate(items[pm.index]) for pm in slow]
        result = result + upsert_models(session, again, seen_at=seen_at)
    return result


def _insert_fresh(
    session: Session,
    fresh: list[PreparedModel],
    plans: InsertPlans,
    inserts: PreparedInserts | None,
) -> None:
    if inserts is not None and inserts.model_ids != tuple(pm.id for pm in fresh):
        inserts = None  # built for other models (some were not new after all)
    # Sorted, so concurrent writers (PostgreSQL) take the same rows' locks in the same order.
    creators = {
        pm.username: api.Creator.model_construct(username=pm.username, image=pm.creator_image)
        for pm in fresh
        if pm.username
    }
    ordered_creators = [creators[u] for u in sorted(creators)]
    tag_names = sorted({t for pm in fresh for t in pm.tags})
    if inserts is not None and inserts.staged:
        # The staged copies look creators and tags up by name (`_staged_inserts`).
        _ensure_creators(session, ordered_creators, want_ids=False)
        _ensure_tags(session, tag_names)
        _run_statements(session, inserts.statements)
        return
    creator_ids = _ensure_creators(session, ordered_creators)
    tag_ids = _ensure_tags(session, tag_names)
    model_rows: list[dict[str, Any]] = []
    tag_rows: list[dict[str, Any]] = []
    for pm in fresh:
        row = dict(pm.model_row)
        if pm.username:
            row["creator_id"] = creator_ids.get(pm.username)
        model_rows.append(row)
        tag_rows.extend(
            {"model_id": pm.id, "tag_id": tag_ids[name], "position": position}
            for position, name in enumerate(pm.tags)
        )
    _insert_many(session, _MODEL, model_rows)
    _insert_many(session, _MODEL_TAG, tag_rows)
    if inserts is None:
        inserts = prepared_inserts(fresh, plans)
    _run_statements(session, inserts.statements)


@dataclass
class PreparedInserts:
    """The INSERTs of some new models' rows, as driver calls built in advance.

    Unstaged, `statements` insert the prepared tables' rows and the writer still inserts the
    `model` and `model_tag` rows, which need creator and tag ids. Staged (SQLite, see
    `catalog.bulk`), `staging` binds every row into a connection's in-memory ``stage``
    database ahead of the write, and `statements` copy them into the catalog, resolving those
    ids by name as they go.
    """

    model_ids: tuple[int, ...]
    statements: list[_Statement]
    staging: list[_Statement] = field(default_factory=list)

    @property
    def staged(self) -> bool:
        return bool(self.staging)


def prepared_inserts(
    models: Sequence[PreparedModel], plans: InsertPlans, *, staged: bool = False
) -> PreparedInserts:
    """The driver calls that insert the rows of `models` (those that have rows); pure.

    A sync's worker builds them while it waits for its turn to write, so the write itself
    holds the catalog's write lock only for the driver calls. `staged` (SQLite only) splits
    them into the staging binds and one ``INSERT ... SELECT`` per table: binding the values
    of multi-row VALUES lists was most of a page's time under the lock, and the copy runs in
    SQLite alone.
    """
    built = [pm for pm in models if pm.rows is not None]
    ids = tuple(pm.id for pm in built)
    if staged and plans[_MODEL.name].multirow:
        return _staged_inserts(built, ids, plans)
    statements: list[_Statement] = []
    for table in _PREPARED_TABLES:
        params = [p for pm in built if pm.rows for p in pm.rows[table.name]]
        statements.extend(_statements(plans[table.name], params))
    return PreparedInserts(ids, statements)


# Extra columns of the staged `model` and `model_tag` rows: names resolved to ids on copy.
_STAGE_USERNAME = "stage_username"
_STAGE_TAG_COLUMNS = "model_id, tag_name, position"


def _staged_inserts(
    built: list[PreparedModel], ids: tuple[int, ...], plans: InsertPlans
) -> PreparedInserts:
    staging: list[_Statement] = []
    statements: list[_Statement] = []
    model_plan = plans[_MODEL.name]
    model_params = driver_params(model_plan, [pm.model_row for pm in built])
    staging.extend(
        _stage_statements(
            _MODEL.name,
            f"{_columns(model_plan)}, {_STAGE_USERNAME}",
            [(*row, pm.username) for row, pm in zip(model_params, built, strict=True)],
        )
    )
    staging.extend(
        _stage_statements(
            _MODEL_TAG.name,
            _STAGE_TAG_COLUMNS,
            [(pm.id, name, position) for pm in built for position, name in enumerate(pm.tags)],
        )
    )
    if built:
        creator = (
            "(SELECT c.id FROM main.creator AS c "
            f"WHERE c.username = s.{_STAGE_USERNAME}) AS creator_id"
        )
        model_columns = _columns(model_plan)
        picked = ", ".join(
            creator if name.strip() == "creator_id" else f"s.{name.strip()}"
            for name in model_columns.split(",")
        )
        statements.append(_copy(_MODEL.name, model_columns, picked))
        statements.append(
            _copy(
                _MODEL_TAG.name,
                "model_id, tag_id, position",
                "s.model_id, t.id, s.position",
                join="JOIN main.tag AS t ON t.name = s.tag_name",
            )
        )
    for table in _PREPARED_TABLES:
        compiled = plans[table.name]
        params = [p for pm in built if pm.rows for p in pm.rows[table.name]]
        if not params:
            continue
        columns = _columns(compiled)
        staging.extend(_stage_statements(table.name, columns, params))
        picked = ", ".join(f"s.{name.strip()}" for name in columns.split(","))
        statements.append(_copy(table.name, columns, picked, tail=_after_values(compiled)))
    return PreparedInserts(ids, statements, staging)


def _stage_statements(table: str, columns: str, rows: Sequence[Any]) -> Iterator[_Statement]:
    if not rows:
        return iter(())
    width = columns.count(",") + 1
    group = "(" + ", ".join("?" * width) + ")"
    stage = _Compiled(
        f"INSERT INTO stage.{table} ({columns}) VALUES {group}",
        tuple(f"p{i}" for i in range(width)),
        (),
        True,
    )
    return _statements(stage, rows)


def _copy(table: str, columns: str, picked: str, *, join: str = "", tail: str = "") -> _Statement:
    # ``WHERE true`` lets SQLite's parser tell an upsert clause from a join's ON; rowid order
    # keeps the rows' order, so of two rows with one id the last wins, as with VALUES.
    sql = (
        f"INSERT INTO main.{table} ({columns}) SELECT {picked} FROM stage.{table} AS s {join} "
        f"WHERE true ORDER BY s.rowid{tail}"
    )
    return _Statement(sql, (), many=False)


def _columns(compiled: _Compiled) -> str:
    """The column list of a compiled single-row SQLite INSERT."""
    head = compiled.sql.partition(" VALUES ")[0]
    return head[head.index("(") + 1 : head.rindex(")")]


def _after_values(compiled: _Compiled) -> str:
    """What follows the VALUES group of a compiled single-row SQLite INSERT (an upsert)."""
    group = "(" + ", ".join("?" * len(compiled.order)) + ")"
    return compiled.sql.partition(f" VALUES {group}")[2]


def staged_table_sql(plans: InsertPlans) -> list[str]:
    """DDL of the ``stage`` tables `prepared_inserts(staged=True)` fills: untyped columns."""
    tables = {table.name: _columns(plans[table.name]) for table in _PREPARED_TABLES}
    tables[_MODEL.name] = f"{_columns(plans[_MODEL.name])}, {_STAGE_USERNAME}"
    tables[_MODEL_TAG.name] = _STAGE_TAG_COLUMNS
    return [f"CREATE TABLE IF NOT EXISTS stage.{name} ({cols})" for name, cols in tables.items()]


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


# --- reads -----------------------------------------------------------------------------------


def find_files_by_hash(session: Session, digest: str) -> list[dict[str, Any]]:
    """Files whose hash of any of the six types equals `digest` (any case), in one query.

    Each match is ``{"hash_type", "model_id", "model_name", "version_id", "version_name",
    "file_id", "file_name"}``; oldest published version first, as Civitai resolves
    duplicates.
    """
    needle = digest.strip().upper()
    if not needle:
        return []
    hash_columns = [_FILE.c[column] for column in HASH_COLUMNS]
    query = (
        select(
            *hash_columns,
            _MODEL.c.id,
            _MODEL.c.name,
            _VERSION.c.id,
            _VERSION.c.name,
            _FILE.c.id,
            _FILE.c.name,
        )
        .select_from(
            _FILE.join(_VERSION, _VERSION.c.id == _FILE.c.version_id).join(
                _MODEL, _MODEL.c.id == _VERSION.c.model_id
            )
        )
        .where(or_(*(column == needle for column in hash_columns)))
        .order_by(_VERSION.c.published_at.asc().nulls_last(), _VERSION.c.id, _FILE.c.id)
    )
    matches: list[dict[str, Any]] = []
    for row in session.execute(query):
        values = tuple(row)
        hashes, rest = values[: len(HASH_COLUMNS)], values[len(HASH_COLUMNS) :]
        hash_type = next(
            name for name, value in zip(api.HASH_TYPES, hashes, strict=True) if value == needle
        )
        model_id, model_name, version_id, version_name, file_id, file_name = rest
        matches.append(
            {
                "hash_type": hash_type,
                "model_id": model_id,
                "model_name": model_name,
                "version_id": version_id,
                "version_name": version_name,
                "file_id": file_id,
                "file_name": file_name,
            }
        )
    return matches


def _attr(attribute: Any) -> QueryableAttribute[Any]:
    # SQLModel types relationship attributes as their Python values; loaders want the attribute.
    return cast(QueryableAttribute[Any], attribute)


def _full_load() -> list[_AbstractLoad]:
    """Loader options for everything `model_to_dict` reads, in a fixed number of queries."""
    versions = selectinload(_attr(Model.versions))
    return [
        selectinload(_attr(Model.creator)),
        selectinload(_attr(Model.tag_links)).selectinload(_attr(ModelTag.tag)),
        versions.selectinload(_attr(ModelVersion.files)).selectinload(_attr(ModelFile.local)),
        versions.selectinload(_attr(ModelVersion.trained_words)),
    ]


def get_model(session: Session, model_id: int) -> Model:
    """The model with its creator, tags, versions, files and local files loaded.

    Raises `NotInCatalogError` when the catalog does not hold it.
    """
    query = (
        select(Model)
        .where(_MODEL.c.id == model_id)
        .options(*_full_load())
        .execution_options(populate_existing=True)
    )
    model = session.execute(query).scalars().first()
    if model is None:
        raise NotInCatalogError(
            f"model {model_id} is not in the catalog", kind="model", key=model_id
        )
    return model


def list_models(
    session: Session,
    *,
    types: Sequence[str] | None = None,
    base_models: Sequence[str] | None = None,
    search: str | None = None,
    local_only: bool = False,
    nsfw: bool = True,
    include_gone: bool = False,
    limit: int = 50,
    offset: int = 0,
    sort: SortOrder = "relevance",
) -> list[Model]:
    """Models matching the filters, fully loaded for `model_to_dict`.

    Filters are those of `catalog.search.model_filters`. `search` is full-text (prefix
    matching, see `catalog.search`); text without any word matches nothing. ``relevance``
    sorts by search rank, or by downloads without a search; ``newest`` by the latest
    published version.
    """
    filters = model_filters(
        types=types,
        base_models=base_models,
        nsfw=nsfw,
        local_only=local_only,
        include_gone=include_gone,
    )
    query = select(Model).where(*filters)
    order: list[Any] = []
    if search is not None and search.strip():
        if sort == "relevance":
            ranked = search_models(
                session,
                search,
                limit=limit,
                offset=offset,
                types=types,
                base_models=base_models,
                nsfw=nsfw,
                local_only=local_only,
                include_gone=include_gone,
            )
            return _load_in_order(session, ranked)
        matching = match_clause(session, search)
        if matching is None:
            return []
        query = query.where(matching)
    if sort in ("relevance", "downloads"):
        order.append(_MODEL.c.download_count.desc().nulls_last())
    elif sort == "name":
        order.append(func.lower(_MODEL.c.name))
    elif sort == "newest":
        latest = (
            select(func.max(_VERSION.c.published_at))
            .where(_VERSION.c.model_id == _MODEL.c.id, _VERSION.c.state != "gone")
            .scalar_subquery()
        )
        order.append(latest.desc().nulls_last())
    elif sort == "updated":
        order.append(_MODEL.c.changed_at.desc())
    else:
        raise ValueError(f"unknown sort order {sort!r}")
    order.append(_MODEL.c.id)
    query = (
        query.order_by(*order)
        .limit(limit)
        .offset(offset)
        .options(*_full_load())
        .execution_options(populate_existing=True)
    )
    return list(session.execute(query).scalars())


def _load_in_order(session: Session, model_ids: Sequence[int]) -> list[Model]:
    if not model_ids:
        return []
    query = (
        select(Model)
        .where(_MODEL.c.id.in_(list(model_ids)))
        .options(*_full_load())
        .execution_options(populate_existing=True)
    )
    by_id = {model.id: model for model in session.execute(query).scalars()}
    return [by_id[model_id] for model_id in model_ids if model_id in by_id]


# --- the JSON contract -----------------------------------------------------------------------


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


__all__ = [
    "MAPPING_VERSION",
    "SortOrder",
    "UpsertResult",
    "find_files_by_hash",
    "get_model",
    "list_models",
    "mark_gone",
    "mark_missing",
    "model_payload_sha256",
    "model_to_dict",
    "payload_hashes",
    "refresh_search",
    "upsert_models",
    "upsert_version",
    "version_content_sha256",
]
