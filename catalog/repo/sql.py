"""SQL execution of the catalog's writes: compiled statements, executemany, upserts."""

from __future__ import annotations

import json
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from operator import itemgetter
from typing import Any, Literal, NamedTuple, TypeVar, cast

from sqlalchemy import JSON, Select, Table, delete, func, or_
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import ClauseElement
from sqlmodel import SQLModel

from catalog.civitai import types as api
from catalog.errors import CatalogError
from catalog.models import (
    HASH_COLUMNS,
    UTCDateTime,
)

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

    On SQLite an INSERT goes out as multi-row VALUES lists rather than an executemany (why:
    docs/decisions/sync-page-workers.md). Pure (no session), so the sync's workers build them
    before they take their turn at the write lock.
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
