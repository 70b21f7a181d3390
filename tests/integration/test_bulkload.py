"""A first sync into an empty catalog builds its FTS and hash indexes at the end (`bulkload`)."""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, text
from sqlmodel import Session

from catalog import repo
from catalog.civitai.client import CivitaiClient, ModelFilters
from catalog.civitai.types import Model
from catalog.db import open_catalog
from catalog.search import search_models
from catalog.sync import (
    SyncCancelled,
    SyncProgress,
    SyncRequest,
    bulkload,
    run_sync,
    sync_pool,
)
from tests.fakeciv import FakeCatalog

DEFERRED = set(bulkload.DEFERRED_INDEXES) | set(bulkload.DEFERRED_TRIGGERS)


def present(engine: Engine) -> set[str]:
    """Which of the deferrable indexes and triggers the schema has now."""
    with engine.connect() as conn:
        names = {row[0] for row in conn.execute(text("SELECT name FROM sqlite_master"))}
    return names & DEFERRED


def set_aside(engine: Engine) -> list[str]:
    with engine.connect() as conn:
        return [r[0] for r in conn.execute(text("SELECT name FROM deferred_schema"))]


def fts_is_consistent(engine: Engine) -> None:
    """FTS5's own check of the index against its content table (raises if they differ)."""
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO model_fts(model_fts, rank) VALUES ('integrity-check', 1)"))


def sha256_lookup_plan(engine: Engine) -> str:
    with engine.connect() as conn:
        rows = conn.execute(
            text("EXPLAIN QUERY PLAN SELECT id FROM model_file WHERE sha256 = 'AB'")
        ).all()
    return " ".join(str(row[-1]) for row in rows)


def search_all(engine: Engine, words: list[str]) -> dict[str, list[int]]:
    with Session(engine) as session:
        return {word: search_models(session, word, limit=500) for word in words}


def some_words(fake_catalog: FakeCatalog) -> list[str]:
    """A few model names' first words (real search terms of this catalog)."""
    words = []
    for fm in list(fake_catalog.models.values())[:40]:
        name = str(getattr(fm, "name", "") or "")
        first = name.split()[0] if name.split() else ""
        if first.isalpha() and len(first) >= 3:
            words.append(first.lower())
    return sorted(set(words))[:8]


def test_a_pooled_first_sync_defers_then_restores_search_and_hash_lookups(
    client: CivitaiClient,
    fake_catalog: FakeCatalog,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    engine = open_catalog(f"sqlite:///{tmp_path / 'pooled.sqlite3'}")
    assert present(engine) == DEFERRED
    deferrals: list[tuple[bool, set[str]]] = []
    real_defer = bulkload.defer

    def spy(target: Engine) -> bool:
        deferred = real_defer(target)
        deferrals.append((deferred, present(target)))
        return deferred

    monkeypatch.setattr(bulkload, "defer", spy)
    request = SyncRequest(filters=ModelFilters(limit=25))
    with sync_pool(2) as pool:
        assert pool is not None
        summary = run_sync(engine, client, request, pool=pool)
    assert summary.models > 100
    # The pages were written with the indexes and triggers set aside ...
    assert deferrals == [(True, set())]
    # ... and they are all back, with an FTS index that matches its content (the rebuild
    # starts when the last page is fetched, so the last pages went through live triggers).
    assert present(engine) == DEFERRED
    assert set_aside(engine) == []
    fts_is_consistent(engine)
    assert "ix_model_file_sha256" in sha256_lookup_plan(engine)

    # Search answers exactly as on a catalog synced in-process (triggers live throughout).
    local = open_catalog(f"sqlite:///{tmp_path / 'local.sqlite3'}")
    run_sync(local, client, request, pool=None)
    words = some_words(fake_catalog)
    assert words
    ours, theirs = search_all(engine, words), search_all(local, words)
    assert ours == theirs
    assert any(ours.values())


def test_a_cancelled_first_sync_puts_everything_back_before_it_returns(
    client: CivitaiClient, tmp_path: Path
) -> None:
    engine = open_catalog(f"sqlite:///{tmp_path / 'c.sqlite3'}")
    cancel = threading.Event()
    seen: list[set[str]] = []

    def stop_after_two_pages(progress: SyncProgress) -> None:
        seen.append(present(engine))
        if progress.pages == 2:
            cancel.set()

    with sync_pool(2) as pool, pytest.raises(SyncCancelled):
        run_sync(
            engine,
            client,
            SyncRequest(filters=ModelFilters(limit=10)),
            pool=pool,
            progress=stop_after_two_pages,
            cancel=cancel,
        )
    assert seen[0] == set()  # the pages were written with the indexes set aside
    assert present(engine) == DEFERRED
    assert set_aside(engine) == []
    fts_is_consistent(engine)
    with engine.connect() as conn:
        landed = conn.execute(text("SELECT count(*) FROM model")).scalar_one()
    assert 0 < landed < 150


def test_a_sync_into_a_filled_catalog_keeps_its_indexes_live(
    client: CivitaiClient, tmp_path: Path
) -> None:
    engine = open_catalog(f"sqlite:///{tmp_path / 'c.sqlite3'}")
    request = SyncRequest(filters=ModelFilters(limit=25))
    run_sync(engine, client, request, pool=None)
    assert bulkload.defer(engine) is False  # not empty: nothing is set aside
    during: list[set[str]] = []
    with sync_pool(2) as pool:
        run_sync(
            engine,
            client,
            SyncRequest(filters=ModelFilters(limit=20)),
            pool=pool,
            progress=lambda _: during.append(present(engine)),
        )
    assert during and all(names == DEFERRED for names in during)
    assert set_aside(engine) == []


def _model(model_id: int, name: str, sha256: str) -> Model:
    return Model.model_validate(
        {
            "id": model_id,
            "name": name,
            "type": "LORA",
            "modelVersions": [
                {
                    "id": model_id * 10,
                    "name": "v1",
                    "baseModel": "SD 1.5",
                    "files": [
                        {
                            "id": model_id * 100,
                            "name": f"{name}.safetensors",
                            "sizeKB": 1.0,
                            "hashes": {"SHA256": sha256},
                        }
                    ],
                }
            ],
        }
    )


def test_the_next_open_restores_what_a_killed_first_sync_set_aside(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'c.sqlite3'}"
    engine = open_catalog(url)
    assert bulkload.defer(engine) is True
    assert present(engine) == set()
    assert sorted(set_aside(engine)) == sorted(DEFERRED)
    # Rows land while nothing maintains the FTS index (as the killed sync's pages did).
    sha = "AA" * 32
    with Session(engine) as session, session.begin():
        repo.upsert_models(session, [_model(7, "Quasarwolf", sha)], seen_at=datetime.now(UTC))
    assert search_all(engine, ["quasarwolf"]) == {"quasarwolf": []}
    engine.dispose()  # the process dies here

    reopened = open_catalog(url)
    assert present(reopened) == DEFERRED
    assert set_aside(reopened) == []
    fts_is_consistent(reopened)
    assert search_all(reopened, ["quasarwolf"]) == {"quasarwolf": [7]}
    assert "ix_model_file_sha256" in sha256_lookup_plan(reopened)
    # Restoring twice is harmless, and later writes are indexed by the triggers again.
    assert bulkload.restore(reopened) is False
    with Session(reopened) as session, session.begin():
        repo.upsert_models(session, [_model(8, "Nebulafox", "BB" * 32)], seen_at=datetime.now(UTC))
    assert search_all(reopened, ["nebulafox"]) == {"nebulafox": [8]}
    reopened.dispose()


def test_defer_needs_an_empty_catalog_and_sqlite(engine: Engine) -> None:
    if engine.dialect.name != "sqlite":
        # PostgreSQL's writers run in parallel and its search column is generated: left alone.
        assert bulkload.defer(engine) is False
        assert bulkload.restore(engine) is False
        return
    with Session(engine) as session, session.begin():
        repo.upsert_models(session, [_model(9, "Emberlynx", "CC" * 32)], seen_at=datetime.now(UTC))
    assert bulkload.defer(engine) is False
    assert present(engine) == DEFERRED


@pytest.mark.parametrize("kind", ["index", "trigger"])
def test_restore_puts_back_each_kind_from_its_recorded_ddl(tmp_path: Path, kind: str) -> None:
    engine = open_catalog(f"sqlite:///{tmp_path / 'c.sqlite3'}")
    with engine.connect() as conn:
        before: dict[str, Any] = {
            row[0]: row[1]
            for row in conn.execute(
                text("SELECT name, sql FROM sqlite_master WHERE type = :kind"), {"kind": kind}
            )
            if row[0] in DEFERRED
        }
    assert before
    bulkload.defer(engine)
    bulkload.restore(engine)
    with engine.connect() as conn:
        after = {
            row[0]: row[1]
            for row in conn.execute(
                text("SELECT name, sql FROM sqlite_master WHERE type = :kind"), {"kind": kind}
            )
            if row[0] in DEFERRED
        }
    assert after == before
