"""The sync's page workers (`catalog.sync.pages`): as in-process; collisions; deaths."""

from __future__ import annotations

import json
import os
import signal
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine, event, select, text
from sqlmodel import Session, col

from catalog.civitai import CivitaiResponseValidationError
from catalog.civitai.client import CivitaiClient, ModelFilters
from catalog.db import open_catalog
from catalog.models import Image, ModelVersion, SyncState, TrainedWord
from catalog.sync import SyncRequest, pages, prepared, run_sync, sync_pool
from tests.fakeciv import FakeCatalog, FakeCivitai

# Columns that legitimately differ between two syncs: times, and ids the database assigns.
_TIMES = {"first_seen_at", "last_seen_at", "changed_at", "updated_at"}
_TABLES = {  # table -> (order, database-assigned columns)
    "model": ("id", {"creator_id"}),
    "model_version": ("id", set()),
    "model_file": ("id", set()),
    "image": ("version_id, position", {"id"}),
    "trained_word": ("version_id, position", {"id"}),
    "model_search": ("model_id", set()),
}


def dump(engine: Engine) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of the catalog's payload tables, minus volatile columns, in a fixed order."""
    out: dict[str, list[tuple[Any, ...]]] = {}
    with engine.connect() as conn:
        for table, (order, assigned) in _TABLES.items():
            result = conn.execute(text(f"SELECT * FROM {table} ORDER BY {order}"))
            keys = list(result.keys())
            keep = [i for i, k in enumerate(keys) if k not in _TIMES and k not in assigned]
            out[table] = [tuple(row[i] for i in keep) for row in result]
        tags = conn.execute(
            text(
                "SELECT mt.model_id, mt.position, t.name FROM model_tag mt "
                "JOIN tag t ON t.id = mt.tag_id ORDER BY mt.model_id, mt.position"
            )
        )
        out["model_tag"] = [tuple(row) for row in tags]
        creators = conn.execute(
            text(
                "SELECT m.id, c.username, c.image_url FROM model m "
                "LEFT JOIN creator c ON c.id = m.creator_id ORDER BY m.id"
            )
        )
        out["creator"] = [tuple(row) for row in creators]
    return out


def test_worker_pool_and_in_process_write_the_same_catalog(
    client: CivitaiClient, fake_catalog: FakeCatalog, tmp_path: Any
) -> None:
    # Both on SQLite, so values compare as stored (the other tests run the pool on both).
    engine = open_catalog(f"sqlite:///{tmp_path / 'pooled.sqlite3'}")
    ids = sorted(fake_catalog.expected_listing_ids())
    for mid, kind in zip(
        ids[:6],
        ["wrong_types", "unknown_type", "huge_lists", "nul", "file_missing_id", "missing_id"],
        strict=True,
    ):
        fake_catalog.set_hostile(mid, kind)
    request = SyncRequest(filters=ModelFilters(limit=25))
    with sync_pool(2) as pool:
        assert pool is not None
        pooled = run_sync(engine, client, request, pool=pool)
    local_engine = open_catalog(f"sqlite:///{tmp_path / 'local.sqlite3'}")
    local = run_sync(local_engine, client, request, pool=None)
    assert pooled.as_json() == local.as_json()
    assert pooled.models_written == pooled.models > 100
    assert len(pooled.errors) == 1  # the item without an id
    ours, theirs = dump(engine), dump(local_engine)
    for table in theirs:
        assert ours[table] == theirs[table], table
    local_engine.dispose()
    engine.dispose()


def _item(model_id: int, version_id: int, file_id: int, word: str) -> dict[str, Any]:
    return {
        "id": model_id,
        "name": f"Model {model_id}",
        "type": "LORA",
        "tags": ["style"],
        "creator": {"username": "someone"},
        "modelVersions": [
            {
                "id": version_id,
                "name": "v1",
                "baseModel": "SD 1.5",
                "trainedWords": [word],
                "files": [
                    {"id": file_id, "name": "a.safetensors", "hashes": {"SHA256": "AB" * 32}}
                ],
                "images": [{"url": "https://example.invalid/1.jpeg", "width": 8, "height": 8}],
            }
        ],
    }


def _write(engine: Engine, items: list[dict[str, Any]]) -> Any:
    now = datetime.now(UTC)
    with Session(engine) as session:
        plans = prepared.insert_plans(session)
        page = pages.prepare_page(items, now, plans)
        result = prepared.write_prepared(session, page.models, items, seen_at=now, plans=plans)
        session.commit()
    return result


class Writer:
    """Writes one page as the in-process sync does, or as a pool's worker does (on SQLite:
    staged in the connection's ``stage`` database, then copied under the write lock)."""

    def __init__(self, engine: Engine, *, worker: bool) -> None:
        self.engine = engine
        self.worker_engine = pages._worker_engine(engine.url) if worker else None
        self.statements: list[str] = []
        if self.worker_engine is not None:
            event.listen(
                self.worker_engine,
                "before_cursor_execute",
                lambda *args: self.statements.append(args[2]),
            )

    def __call__(self, items: list[dict[str, Any]]) -> Any:
        if self.worker_engine is None:
            return _write(self.engine, items)
        with Session(self.worker_engine) as session:
            plans = prepared.insert_plans(session)
        return pages.write_page(self.worker_engine, items, datetime.now(UTC), plans)

    @property
    def staged(self) -> bool:
        return any("FROM stage." in statement for statement in self.statements)


@pytest.fixture(params=["in_process", "worker"])
def write(request: pytest.FixtureRequest, engine: Engine) -> Iterator[Writer]:
    writer = Writer(engine, worker=request.param == "worker")
    previous = pages._WRITE_LOCK
    if writer.worker_engine is not None:
        pages.init_worker(threading.Lock())
    try:
        yield writer
    finally:
        pages.init_worker(previous)
        if writer.worker_engine is not None:
            writer.worker_engine.dispose()


def _staged_as_expected(write: Writer) -> bool:
    # SQLite workers stage a page of new models; PostgreSQL and in-process writes never do.
    worker_on_sqlite = write.worker_engine is not None and write.engine.dialect.name == "sqlite"
    return write.staged == worker_on_sqlite


def test_a_version_that_moved_to_a_new_model_takes_the_update_path(
    engine: Engine, write: Writer
) -> None:
    write([_item(1, 10, 100, "first")])
    # Version 10 now belongs to model 2, which the catalog has never seen: a plain INSERT of
    # the version would collide, so the page falls back to the update path.
    assert _staged_as_expected(write)
    result = write([_item(2, 10, 100, "second")])
    assert result.models_written == 1
    with Session(engine) as session:
        version = session.get(ModelVersion, 10)
        assert version is not None and version.model_id == 2
        words = session.execute(
            select(col(TrainedWord.word)).where(col(TrainedWord.version_id) == 10)
        )
        assert list(words.scalars()) == ["second"]
        images = session.execute(select(col(Image.id)).where(col(Image.version_id) == 10)).all()
        assert len(images) == 1


def test_a_repeated_model_in_one_page_keeps_the_last_payload(engine: Engine, write: Writer) -> None:
    write([_item(3, 30, 300, "old"), _item(3, 30, 300, "new")])
    with Session(engine) as session:
        words = session.execute(
            select(col(TrainedWord.word)).where(col(TrainedWord.version_id) == 30)
        )
        assert list(words.scalars()) == ["new"]


def test_a_file_repeated_across_models_of_one_page_ends_with_the_last(
    engine: Engine, write: Writer
) -> None:
    first, second = _item(6, 60, 600, "a"), _item(7, 70, 600, "b")
    second["tags"] = ["style", "new tag"]
    second["creator"] = {"username": "another"}
    result = write([first, second])
    assert result.models_written == 2
    assert _staged_as_expected(write)
    with Session(engine) as session:
        file_row = session.execute(text("SELECT version_id FROM model_file WHERE id = 600")).one()
        assert file_row.version_id == 70
        tags = session.execute(
            text(
                "SELECT t.name FROM model_tag mt JOIN tag t ON t.id = mt.tag_id "
                "WHERE mt.model_id = 7 ORDER BY mt.position"
            )
        )
        assert list(tags.scalars()) == ["style", "new tag"]
        creators = session.execute(
            text(
                "SELECT m.id, c.username FROM model m JOIN creator c ON c.id = m.creator_id "
                "WHERE m.id IN (6, 7) ORDER BY m.id"
            )
        )
        assert [tuple(row) for row in creators] == [(6, "someone"), (7, "another")]


def test_a_failed_staged_page_leaves_nothing_behind_for_the_next(
    engine: Engine, write: Writer
) -> None:
    write([_item(8, 80, 800, "x")])
    # A page whose new model reuses version 80 falls back to the update path; the one after
    # it must see none of its rows again (a stale stage would insert them twice).
    write([_item(9, 80, 801, "y")])
    write([_item(10, 100, 1000, "z")])
    assert _staged_as_expected(write)
    with Session(engine) as session:
        counts = session.execute(
            text(
                "SELECT (SELECT count(*) FROM model_version), (SELECT count(*) FROM model_file), "
                "(SELECT count(*) FROM image), (SELECT count(*) FROM trained_word)"
            )
        ).one()
    assert tuple(counts) == (2, 2, 2, 2)  # version 80 moved, with its one new file


def test_an_unchanged_page_is_not_rebuilt_and_writes_nothing(engine: Engine) -> None:
    items = [_item(4, 40, 400, "w"), _item(5, 50, 500, "w")]
    _write(engine, items)
    now = datetime.now(UTC)
    with Session(engine) as session:
        plans = prepared.insert_plans(session)
        stored = prepared.stored_payloads(session, items)
        page = pages.prepare_page(items, now, plans, stored)
        assert [pm.rows for pm in page.models] == [None, None]  # hashed, not mapped
        result = prepared.write_prepared(session, page.models, items, seen_at=now, plans=plans)
    assert result.models_unchanged == 2 and result.models_written == 0


def test_a_dead_worker_does_not_lose_pages(
    engine: Engine, client: CivitaiClient, fake_catalog: FakeCatalog
) -> None:
    request = SyncRequest(filters=ModelFilters(limit=20))
    with sync_pool(1) as pool:
        assert pool is not None
        pool.submit(int).result()  # the worker is up
        for process in list(pool._processes.values()):
            assert process.pid is not None
            os.kill(process.pid, signal.SIGKILL)
        summary = run_sync(engine, client, request, pool=pool)
    assert summary.models == len(fake_catalog.expected_listing_ids())
    with Session(engine) as session:
        assert session.execute(text("SELECT count(*) FROM model")).scalar_one() == summary.models


def test_a_page_that_is_not_json_stops_a_pooled_sync_after_the_pages_before_it(
    engine: Engine, client: CivitaiClient, fake: FakeCivitai, fake_catalog: FakeCatalog
) -> None:
    # Workers parse the pages (the fetcher only reads each cursor): a broken third page must
    # still fail the sync with the client's error, keep the two pages before it, and leave
    # a cursor that the next sync resumes from.
    request = SyncRequest(filters=ModelFilters(limit=20))
    fake.faults.schedule(["ok", "ok", "badjson"], path="/api/v1/models")
    with sync_pool(2) as pool, pytest.raises(CivitaiResponseValidationError):
        run_sync(engine, client, request, pool=pool)
    with Session(engine) as session:
        state = session.execute(select(SyncState)).scalars().one()
        landed = session.execute(text("SELECT count(*) FROM model")).scalar_one()
    assert state.status == "running" and state.cursor
    assert landed == 40
    with sync_pool(2) as pool:
        summary = run_sync(engine, client, request, pool=pool)
    assert summary.resumed
    with Session(engine) as session:
        stored = set(session.execute(text("SELECT id FROM model")).scalars())
    assert stored == fake_catalog.expected_listing_ids()


def test_a_page_broken_before_its_cursor_fails_in_the_worker_and_keeps_the_rest(
    engine: Engine,
) -> None:
    # The cursor at the end parses, the items do not: only the worker that parses the page
    # finds out, and its error must reach the caller like the fetcher's own would.
    good = json.dumps({"items": [_item(11, 110, 1100, "a")], "metadata": {"nextCursor": "p2"}})
    broken = '{"items": [}, "metadata": {"nextCursor": "p3"}}'
    bodies = {None: good, "p2": broken}

    def answer(request: httpx.Request) -> httpx.Response:
        body = bodies.get(request.url.params.get("cursor"), '{"items": [], "metadata": {}}')
        return httpx.Response(200, content=body.encode())

    request = SyncRequest(filters=ModelFilters(limit=1))
    with (
        CivitaiClient(base_url="http://civitai.test", transport=httpx.MockTransport(answer)) as c,
        sync_pool(2) as pool,
        pytest.raises(CivitaiResponseValidationError, match="not JSON"),
    ):
        run_sync(engine, c, request, pool=pool)
    with Session(engine) as session:
        assert list(session.execute(text("SELECT id FROM model")).scalars()) == [11]
        state = session.execute(select(SyncState)).scalars().one()
    assert state.cursor == "p2"
