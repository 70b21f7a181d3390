"""`catalog.sync` against the fake Civitai: full, filtered, incremental, resumed, flaky, hostile."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from sqlalchemy import Engine, event, func, select
from sqlmodel import Session

from catalog.civitai.client import CivitaiClient, ModelFilters
from catalog.models import Model, ModelFile, ModelVersion, SyncState, TrainedWord
from catalog.sync import SyncCancelled, SyncRequest, run_sync
from tests.fakeciv import FakeCatalog, FakeCivitai


def snapshot(engine: Engine) -> dict[int, Any]:
    """Everything a user sees of the catalog, in a comparable form."""
    out: dict[int, Any] = {}
    with Session(engine) as session:
        for model in session.execute(select(Model)).scalars():
            versions = {}
            for v in model.versions:
                files = {
                    f.id: (f.name, f.sha256, f.autov2, f.autov3, f.crc32, f.blake3) for f in v.files
                }
                versions[v.id] = (
                    v.name,
                    v.base_model,
                    v.state,
                    [w.word for w in v.trained_words],
                    files,
                )
            out[model.id] = (model.name, model.type, model.state, sorted(model.tag_names), versions)
    return out


@contextmanager
def count_catalog_writes(engine: Engine) -> Iterator[list[str]]:
    """Collect INSERT/UPDATE/DELETE statements except sync bookkeeping."""
    writes: list[str] = []

    def listener(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        head = statement.lstrip().split(None, 1)[0].upper()
        if head in {"INSERT", "UPDATE", "DELETE", "REPLACE"} and "sync_state" not in statement:
            writes.append(statement.split("\n", 1)[0][:120])

    event.listen(engine, "before_cursor_execute", listener)
    try:
        yield writes
    finally:
        event.remove(engine, "before_cursor_execute", listener)


def served_counts(fake_catalog: FakeCatalog, ids: set[int]) -> tuple[int, int]:
    versions = files = 0
    for mid in ids:
        model = fake_catalog.models[mid]
        for v in model.versions:
            if v.status == "Published" and v.files:
                versions += 1
                files += len([f for f in v.files if f.visibility == "Public"])
    return versions, files


def test_full_sync_lands_every_listed_model(
    engine: Engine, client: CivitaiClient, fake: FakeCivitai, fake_catalog: FakeCatalog
) -> None:
    progress: list[int] = []
    summary = run_sync(
        engine,
        client,
        SyncRequest(filters=ModelFilters(limit=20)),
        progress=lambda p: progress.append(p.models),
    )
    expected = fake_catalog.expected_listing_ids(nsfw=False)
    assert summary.models == len(expected)
    assert summary.errors == []
    assert progress and progress[-1] == len(expected)
    with Session(engine) as session:
        ids = set(session.execute(select(Model.id)).scalars())
        assert ids == expected
        n_versions = session.execute(select(func.count()).select_from(ModelVersion)).scalar_one()
        n_files = session.execute(select(func.count()).select_from(ModelFile)).scalar_one()
    assert summary.versions == n_versions
    # A linked VAE's file is listed under several versions but stored once, by its id.
    assert summary.files >= n_files > n_versions
    assert n_versions > len(expected)  # models have several versions
    # A fixture version with ordered trigger words survives exactly.
    with Session(engine) as session:
        words = (
            session.execute(
                select(TrainedWord.word)
                .where(TrainedWord.version_id == 800205)
                .order_by(TrainedWord.position)
            )
            .scalars()
            .all()
        )
    assert words == ["inkwash style", "monochrome brush strokes"]


def test_nsfw_flag_includes_nsfw_models(
    engine: Engine, client: CivitaiClient, fake_catalog: FakeCatalog
) -> None:
    summary = run_sync(engine, client, SyncRequest(filters=ModelFilters(nsfw=True)))
    assert summary.models == len(fake_catalog.expected_listing_ids(nsfw=True))
    assert summary.models > len(fake_catalog.expected_listing_ids(nsfw=False))


@pytest.mark.parametrize(
    ("filters", "check"),
    [
        (ModelFilters(types=("LORA",)), lambda m: m.type == "LORA"),
        (ModelFilters(types=("LORA", "Checkpoint")), lambda m: m.type in ("LORA", "Checkpoint")),
        (
            ModelFilters(base_models=("Pony",)),
            lambda m: all(v.base_model == "Pony" for v in m.versions),
        ),
        (ModelFilters(tag="style"), lambda m: "style" in m.tag_names),
    ],
    ids=["type", "two-types", "base-model", "tag"],
)
def test_filtered_sync_keeps_only_matching_models(
    engine: Engine, client: CivitaiClient, filters: ModelFilters, check: Any
) -> None:
    summary = run_sync(engine, client, SyncRequest(filters=filters))
    assert summary.models > 0
    with Session(engine) as session:
        models = session.execute(select(Model)).scalars().all()
        assert len(models) == summary.models
        assert all(check(m) for m in models)


def test_sync_by_username_query_and_ids(
    engine: Engine, client: CivitaiClient, fake_catalog: FakeCatalog
) -> None:
    listed = sorted(fake_catalog.expected_listing_ids())
    some = [next(mid for mid in listed if fake_catalog.models[mid].creator), *listed[1:3]]
    creator = fake_catalog.models[some[0]].creator["username"]  # type: ignore[index]
    run_sync(engine, client, SyncRequest(filters=ModelFilters(username=creator)))
    with Session(engine) as session:
        assert {m.creator.username for m in session.execute(select(Model)).scalars()} == {creator}

    name_word = fake_catalog.models[some[1]].name.split()[0]
    summary = run_sync(engine, client, SyncRequest(filters=ModelFilters(query=name_word)))
    assert summary.models >= 1
    with Session(engine) as session:
        assert session.get(Model, some[1]) is not None

    summary = run_sync(engine, client, SyncRequest(model_ids=[some[2], 700101]))
    assert summary.models == 2
    with Session(engine) as session:
        assert session.get(Model, 700101) is not None


def test_identical_second_sync_writes_nothing(engine: Engine, client: CivitaiClient) -> None:
    request = SyncRequest(filters=ModelFilters(limit=25))
    first = run_sync(engine, client, request)
    assert first.models_written == first.models
    before = snapshot(engine)
    # In-process, so every statement goes through this engine and its listener.
    with count_catalog_writes(engine) as writes:
        second = run_sync(engine, client, request, pool=None)
    assert second.models == first.models
    assert second.models_written == 0
    assert writes == []
    assert snapshot(engine) == before


_AUDITED = ("model", "model_version", "model_file", "image", "trained_word", "model_tag", "tag")


def test_identical_second_sync_with_page_workers_writes_nothing(
    client: CivitaiClient, tmp_path: Any
) -> None:
    from catalog.db import open_catalog
    from catalog.sync import sync_pool

    # The workers write through their own connections: triggers see every row they touch.
    engine = open_catalog(f"sqlite:///{tmp_path / 'audited.sqlite3'}")
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE audit (tbl TEXT, op TEXT)")
        for table in _AUDITED:
            for op in ("INSERT", "UPDATE", "DELETE"):
                conn.exec_driver_sql(
                    f"CREATE TRIGGER audit_{table}_{op} AFTER {op} ON {table} "
                    f"BEGIN INSERT INTO audit VALUES ('{table}', '{op}'); END"
                )
    request = SyncRequest(filters=ModelFilters(limit=25))
    with sync_pool(2) as pool:
        first = run_sync(engine, client, request, pool=pool)
        with engine.begin() as conn:
            assert conn.exec_driver_sql("SELECT count(*) FROM audit").scalar_one() > first.models
            conn.exec_driver_sql("DELETE FROM audit")
        second = run_sync(engine, client, request, pool=pool)
    assert second.models == first.models and second.models_written == 0
    with engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT tbl, op FROM audit").all() == []
    engine.dispose()


def test_changes_archives_and_removals_are_marked_not_deleted(
    engine: Engine, client: CivitaiClient, fake_catalog: FakeCatalog
) -> None:
    request = SyncRequest()
    run_sync(engine, client, request)
    ids = sorted(fake_catalog.expected_listing_ids())
    archived, deleted, renamed, with_new_version = ids[0], ids[1], ids[2], ids[3]
    fake_catalog.archive_model(archived)
    fake_catalog.delete_model(deleted)
    fake_catalog.update_model(renamed, name="Renamed Model")
    new_version = fake_catalog.add_version(with_new_version, name="v99")
    summary = run_sync(engine, client, request)
    assert summary.models_marked >= 2
    with Session(engine) as session:
        assert session.get(Model, archived).state == "archived"
        assert session.get(Model, deleted).state == "gone"  # still there, marked
        assert session.get(Model, renamed).name == "Renamed Model"
        assert session.get(ModelVersion, new_version.id) is not None
        assert session.get(Model, ids[4]).state == "active"


def test_cancelled_sync_resumes_from_its_cursor(
    engine: Engine, client: CivitaiClient, fake: FakeCivitai, fake_catalog: FakeCatalog
) -> None:
    request = SyncRequest(filters=ModelFilters(limit=10))
    cancel = threading.Event()

    def stop_after_three_pages(p: Any) -> None:
        if p.pages >= 3:
            cancel.set()

    with pytest.raises(SyncCancelled):
        run_sync(engine, client, request, progress=stop_after_three_pages, cancel=cancel)
    with Session(engine) as session:
        state = session.execute(select(SyncState)).scalars().one()
        assert state.status == "running" and state.cursor and state.pages >= 3
        landed = session.execute(select(func.count()).select_from(Model)).scalar_one()
    assert landed >= 30

    fake.reset_log()
    summary = run_sync(engine, client, request)
    assert summary.resumed
    expected = fake_catalog.expected_listing_ids()
    # Only the remaining pages were fetched, not the whole listing again.
    assert fake.count("/api/v1/models") <= (len(expected) - landed) // 10 + 2
    with Session(engine) as session:
        assert set(session.execute(select(Model.id)).scalars()) == expected
        assert session.execute(select(SyncState.status)).scalar_one() == "done"


def test_flaky_server_still_gives_a_complete_catalog(
    engine: Engine,
    client: CivitaiClient,
    fake: FakeCivitai,
    fake_catalog: FakeCatalog,
    tmp_path: Any,
) -> None:
    from catalog.db import open_catalog

    clean_engine = open_catalog(f"sqlite:///{tmp_path / 'clean.sqlite3'}")
    run_sync(clean_engine, client, SyncRequest(filters=ModelFilters(limit=20)))
    fake.faults.random(0.35, ["503", "429", "drop", "reset", "truncate"], seed=3)
    summary = run_sync(engine, client, SyncRequest(filters=ModelFilters(limit=20)))
    assert fake.faults.injected, "the fault injector did not fire"
    assert summary.errors == []
    assert snapshot(engine) == snapshot(clean_engine)
    # 503s carried Retry-After; the policy honoured it (capped) instead of its own backoff.
    assert client.recorded_sleeps  # type: ignore[attr-defined]
    clean_engine.dispose()


def test_hostile_payloads_never_crash_the_sync(
    engine: Engine, client: CivitaiClient, fake_catalog: FakeCatalog
) -> None:
    ids = sorted(fake_catalog.expected_listing_ids())
    # A model without a usable id or name cannot be stored: reported and skipped.
    broken_identity = {
        ids[0]: "missing_id",
        ids[1]: "id_string",
        ids[2]: "missing_name",
        ids[18]: "nulls",
    }
    for mid, kind in broken_identity.items():
        fake_catalog.set_hostile(mid, kind)
    survivable = [
        "stats_string",
        "wrong_types",
        "files_dict",
        "images_junk",
        "extra_keys",
        "bad_hashes",
        "unknown_type",
        "huge_description",
        "huge_lists",
        "script",
        "nul",
        "path_traversal",
        "version_missing_id",
        "file_missing_id",
    ]
    survivors = ids[3 : 3 + len(survivable)]
    assert ids[18] not in survivors
    for mid, kind in zip(survivors, survivable, strict=True):
        fake_catalog.set_hostile(mid, kind)
    summary = run_sync(engine, client, SyncRequest(filters=ModelFilters(limit=50)))
    assert len(summary.errors) == len(broken_identity)
    assert all("error" in e for e in summary.errors)
    with Session(engine) as session:
        landed = set(session.execute(select(Model.id)).scalars())
        for mid in survivors:
            assert mid in landed
        hostile_type = session.get(Model, survivors[survivable.index("unknown_type")])
        assert hostile_type.type == "Other"
        huge = session.get(Model, survivors[survivable.index("huge_description")])
        assert len(huge.description_html or "") <= 200_000
        scripted = session.get(Model, survivors[survivable.index("script")])
        assert "alert" not in (scripted.description_text or "")
        nul = session.get(Model, survivors[survivable.index("nul")])
        assert "\x00" not in nul.name and "\x00" not in (nul.description_html or "")
    assert landed == fake_catalog.expected_listing_ids() - set(broken_identity)
