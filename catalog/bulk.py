"""The sync's page work: validate, hash, map to rows and write, in worker processes.

A page of the listing costs far more CPU to validate, hash, map to rows and bind than to
fetch, and all of that holds the GIL. So `sync_page` runs in a small process pool, one page per
task, each in its own transaction, while the sync's process only follows the cursor:

* `prepare_page` validates each item (the same lenient types and repairs as everywhere else),
  computes the payload hashes and builds every row of a model, already in the driver's
  parameter form (statements compiled once by the caller, `insert_plans`); models whose
  payload the catalog already holds are only hashed;
* `write_prepared` compares with the catalog: unchanged models write nothing, new models are
  inserted from the prepared rows, and the rest (changed models, and the odd cases where ids
  collide) goes through `repo.upsert_models`, the one place that knows how to update a stored
  model.

Pages may land out of order; the caller advances the stored cursor only past pages that all
landed, and every write is an idempotent upsert, so a resumed sync that redoes a page changes
nothing. SQLite serializes the workers' transactions (``BEGIN IMMEDIATE``); PostgreSQL runs
them side by side, and a concurrent duplicate insert falls back to the update path.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pydantic import ValidationError
from sqlalchemy import Engine, Table, select
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session

from catalog import repo
from catalog.civitai import types as api
from catalog.civitai.client import validation_reason
from catalog.db import make_engine, session_scope
from catalog.models import utcnow

# Tables filled from prepared rows, in foreign-key order (after `model` and `model_tag`).
_PREPARED_TABLES: tuple[Table, ...] = (
    repo._VERSION,
    repo._WORD,
    repo._IMAGE,
    repo._FILE,
    repo._SEARCH,
)

InsertPlans = dict[str, repo._Compiled]


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


@dataclass
class PreparedPage:
    """A page after validation and mapping; `rejected` holds (index, id or None, reason)."""

    next_cursor: str | None
    models: list[PreparedModel]
    rejected: list[tuple[int, int | None, str]] = field(default_factory=list)


@dataclass
class PageOutcome:
    """What `sync_page` did with one page (small: it travels back from a worker)."""

    model_ids: list[int]
    versions: int
    files: int
    models_written: int
    rejected: list[tuple[int, int | None, str]]


# Engines of this worker process, by (pid, url): a forked worker must never use connections
# it inherited from its parent.
_ENGINES: dict[tuple[int, str], Engine] = {}


def sync_page(url: str, items: list[Any], seen_at: datetime, plans: InsertPlans) -> PageOutcome:
    """Prepare and write one listing page in its own transaction (a worker process's task)."""
    key = (os.getpid(), url)
    engine = _ENGINES.get(key)
    if engine is None:
        engine = _ENGINES[key] = make_engine(url)
    return write_page(engine, items, seen_at, plans)


def write_page(
    engine: Engine, items: list[Any], seen_at: datetime, plans: InsertPlans
) -> PageOutcome:
    """`prepare_page` then `write_prepared`, committed; retried once if PostgreSQL deadlocks."""
    with Session(engine) as session:
        stored = stored_payloads(session, items)
    page = prepare_page(items, None, seen_at, plans, stored)
    for attempt in (1, 2):
        try:
            with session_scope(engine, write=True) as session:
                result = write_prepared(session, page.models, items, seen_at=seen_at, plans=plans)
            break
        except OperationalError:
            # Two workers upserting the same new tags or creators in different orders can
            # deadlock on PostgreSQL; the loser is rolled back and simply goes again.
            if attempt == 2 or engine.dialect.name != "postgresql":
                raise
    return PageOutcome(
        model_ids=[pm.id for pm in page.models],
        versions=sum(pm.n_versions for pm in page.models),
        files=sum(pm.n_files for pm in page.models),
        models_written=result.models_written,
        rejected=page.rejected,
    )


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
    write = repo._version_write(
        version, model_id=1, position=0, description_text=None, state="active", payload_sha256=""
    )
    parts = repo.model_parts(
        sample, payload_sha256="", state="active", version_hashes={1: ""}, seen_at=utcnow()
    )
    keys = {
        repo._VERSION.name: tuple(write.row),
        repo._WORD.name: tuple(write.words[0]),
        repo._IMAGE.name: tuple(write.images[0]),
        repo._FILE.name: tuple(write.files[0]),
        repo._SEARCH.name: tuple(parts.search_row),
    }
    plans: InsertPlans = {}
    for table in _PREPARED_TABLES:
        if table is repo._FILE:
            # Files keep Civitai's ids and one may move between versions (or repeat in a
            # payload): the same upsert the update path uses, so both paths agree.
            plans[table.name] = repo._upsert_plan(session, table, keys[table.name], key=("id",))
        else:
            plans[table.name] = repo._compile(
                session,
                table,
                keys[table.name],
                ("insert",),
                lambda dialect, table=table: repo._insert(dialect, table),  # type: ignore[misc]
            )
    return plans


def stored_payloads(session: Session, items: Sequence[Any]) -> dict[int, tuple[str | None, str]]:
    """(payload hash, state) of the stored models among raw `items`, by id."""
    ids = [item["id"] for item in items if isinstance(item, dict) and type(item.get("id")) is int]
    stored: dict[int, tuple[str | None, str]] = {}
    for chunk in repo._chunks(ids):
        query = select(repo._MODEL.c.id, repo._MODEL.c.payload_sha256, repo._MODEL.c.state)
        for model_id, payload_sha256, state in session.execute(
            query.where(repo._MODEL.c.id.in_(chunk))
        ):
            stored[model_id] = (payload_sha256, state)
    return stored


def prepare_page(
    items: list[Any],
    next_cursor: str | None,
    seen_at: datetime,
    plans: InsertPlans,
    stored: dict[int, tuple[str | None, str]] | None = None,
) -> PreparedPage:
    """Validate, hash and map one listing page (runs in a worker process; see the module doc).

    `stored` (from `stored_payloads`) lets models whose payload the catalog already holds skip
    the row building: an unchanged re-sync costs validation and hashing only.
    """
    validate = api.Model.model_validate
    page = PreparedPage(next_cursor=next_cursor, models=[])
    for index, item in enumerate(items):
        try:
            model: api.Model = validate(item)
        except ValidationError as exc:
            raw_id = item.get("id") if isinstance(item, dict) else None
            page.rejected.append(
                (index, raw_id if type(raw_id) is int else None, validation_reason(exc))
            )
            continue
        page.models.append(_prepare_model(index, model, seen_at, plans, stored or {}))
    return page


def _prepare_model(
    index: int,
    model: api.Model,
    seen_at: datetime,
    plans: InsertPlans,
    stored: dict[int, tuple[str | None, str]],
) -> PreparedModel:
    payload_sha256, version_hashes = repo.payload_hashes(model)
    state = repo._model_state(model.mode)
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
    parts = repo.model_parts(
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
        write = repo._version_write(
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
        repo._VERSION.name: versions,
        repo._WORD.name: words,
        repo._IMAGE.name: images,
        repo._FILE.name: files,
        repo._SEARCH.name: [parts.search_row],
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
        rows={name: repo.driver_params(plans[name], rows) for name, rows in by_table.items()},
        n_files=len(files),
    )


def write_prepared(
    session: Session,
    models: Sequence[PreparedModel],
    items: Sequence[Any],
    *,
    seen_at: datetime,
    plans: InsertPlans,
) -> repo.UpsertResult:
    """Write one prepared page: skip unchanged models, insert new ones, update the rest.

    `items` are the page's raw items: a model that needs the update path is validated again
    from its item here (rare: only changed models and id collisions).
    """
    result = repo.UpsertResult()
    if not models:
        return result
    existing: dict[int, tuple[str | None, str]] = {}
    ids = [pm.id for pm in models]
    for chunk in repo._chunks(ids):
        query = select(repo._MODEL.c.id, repo._MODEL.c.payload_sha256, repo._MODEL.c.state)
        for model_id, payload_sha256, state in session.execute(
            query.where(repo._MODEL.c.id.in_(chunk))
        ):
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
                _insert_fresh(session, fresh, plans)
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
        result = result + repo.upsert_models(session, again, seen_at=seen_at)
    return result


def _insert_fresh(session: Session, fresh: list[PreparedModel], plans: InsertPlans) -> None:
    # Sorted, so concurrent writers (PostgreSQL) take the same rows' locks in the same order.
    creators = {
        pm.username: api.Creator.model_construct(username=pm.username, image=pm.creator_image)
        for pm in fresh
        if pm.username
    }
    creator_ids = repo._ensure_creators(session, [creators[u] for u in sorted(creators)])
    tag_ids = repo._ensure_tags(session, sorted({t for pm in fresh for t in pm.tags}))
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
    repo._insert_many(session, repo._MODEL, model_rows)
    repo._insert_many(session, repo._MODEL_TAG, tag_rows)
    for table in _PREPARED_TABLES:
        params = [p for pm in fresh if pm.rows for p in pm.rows[table.name]]
        repo._execute_params(session, plans[table.name], params)


__all__ = [
    "InsertPlans",
    "PreparedModel",
    "PreparedPage",
    "insert_plans",
    "PageOutcome",
    "prepare_page",
    "stored_payloads",
    "sync_page",
    "write_page",
    "write_prepared",
]
