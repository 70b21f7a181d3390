"""The sync's bulk path: models mapped to rows in a worker, inserted by the page's writer."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Table, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from catalog.civitai import types as api
from catalog.models import (
    utcnow,
)
from catalog.repo.mapping import _model_state, _version_write, model_parts, payload_hashes
from catalog.repo.sql import (
    _FILE,
    _IMAGE,
    _MODEL,
    _MODEL_TAG,
    _SEARCH,
    _VERSION,
    _WORD,
    UpsertResult,
    _chunks,
    _compile,
    _Compiled,
    _insert,
    _insert_many,
    _run_statements,
    _Statement,
    _statements,
    _upsert_plan,
    driver_params,
)
from catalog.repo.upserts import _ensure_creators, _ensure_tags, upsert_models

# --- the sync's bulk path ---------------------------------------------------------------------
# `catalog.sync.pages` runs `prepare_model` in worker processes (pure: rows built, nothing written)
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
    `catalog.sync.pages`), `staging` binds every row into a connection's in-memory ``stage``
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
    them into the staging binds and one ``INSERT ... SELECT`` per table (why:
    docs/decisions/sync-page-workers.md).
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
        # _STAGE_USERNAME is the stage table's own column name, a constant
        creator = (
            "(SELECT c.id FROM main.creator AS c "  # noqa: S608
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
    # table and columns: names of the code's own SQLAlchemy tables; values stay bound (?)
    stage = _Compiled(
        f"INSERT INTO stage.{table} ({columns}) VALUES {group}",  # noqa: S608
        tuple(f"p{i}" for i in range(width)),
        (),
        True,
    )
    return _statements(stage, rows)


def _copy(table: str, columns: str, picked: str, *, join: str = "", tail: str = "") -> _Statement:
    # ``WHERE true`` lets SQLite's parser tell an upsert clause from a join's ON; rowid order
    # keeps the rows' order, so of two rows with one id the last wins, as with VALUES.
    # every part is an identifier or clause built from the code's own tables, never row data
    sql = (
        f"INSERT INTO main.{table} ({columns}) SELECT {picked} FROM stage.{table} AS s {join} "  # noqa: S608
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
