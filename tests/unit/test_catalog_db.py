"""The catalog database: migrations, engine setup, upserts, hash lookups, listings, JSON shape.

Every test that takes `catalog_engine` or `session` runs on SQLite and, when
ASSETMGR_TEST_PG_URL is set, on PostgreSQL too (see tests/dbfixtures.py).
"""

from __future__ import annotations

import copy
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Engine, event, func, inspect, select, text
from sqlmodel import Session, SQLModel

from assetmgr.errors import MigrationError, NotInCatalogError
from assetmgr.wording import describe
from catalog import repo
from catalog.civitai import types as api
from catalog.db import include_name, make_engine, normalize_url, open_catalog, session_scope
from catalog.errors import DatabaseURLError
from catalog.models import (
    Image,
    LocalFile,
    Model,
    ModelFile,
    ModelSearch,
    ModelVersion,
    TrainedWord,
)
from tests import dbfixtures
from tests.dbfixtures import (
    WriteCounter,
    backend,
    file_payload,
    fixture_json,
    fixture_models,
    model_payload,
    synthetic_models,
    version_payload,
)

catalog_engine = dbfixtures.catalog_engine
session = dbfixtures.session

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
LATER = NOW + timedelta(hours=1)


def _head_revision() -> str:
    """The newest migration in catalog/migrations (what `open_catalog` upgrades to)."""
    from pathlib import Path

    from alembic.config import Config
    from alembic.script import ScriptDirectory

    import catalog.migrations as migrations_pkg

    cfg = Config()
    cfg.set_main_option("script_location", str(Path(migrations_pkg.__path__[0])))
    head = ScriptDirectory.from_config(cfg).get_current_head()
    assert head is not None
    return head


def _model(payload: dict[str, Any]) -> api.Model:
    return api.Model.model_validate(payload)


def _upsert(engine: Engine, models: list[api.Model], at: datetime = NOW) -> repo.UpsertResult:
    with session_scope(engine, write=True) as s:
        return repo.upsert_models(s, models, seen_at=at)


def _count(s: Session, entity: type[SQLModel]) -> int:
    return int(s.execute(select(func.count()).select_from(entity)).scalar_one())


# --- migrations and engines -------------------------------------------------------------------


def test_migrations_from_empty_match_the_models(catalog_engine: Engine) -> None:
    with catalog_engine.connect() as conn:
        context = MigrationContext.configure(
            conn, opts={"compare_type": True, "include_name": include_name}
        )
        assert compare_metadata(context, SQLModel.metadata) == []
        assert context.get_current_revision() == _head_revision()
        tables = set(inspect(conn).get_table_names())
    assert {"model", "model_version", "model_file", "model_search", "sync_state"} <= tables


def test_migrations_create_the_search_index(catalog_engine: Engine) -> None:
    with catalog_engine.connect() as conn:
        if backend(catalog_engine) == "sqlite":
            names = set(
                conn.execute(text("SELECT name FROM sqlite_master WHERE name LIKE 'model_fts%'"))
                .scalars()
                .all()
            )
            assert {"model_fts", "model_fts_ai", "model_fts_ad", "model_fts_au"} <= names
        else:
            columns = {c["name"] for c in inspect(conn).get_columns("model_search")}
            assert "search_vector" in columns


def test_upgrade_again_is_a_no_op(catalog_engine: Engine) -> None:
    url = catalog_engine.url.render_as_string(hide_password=False)
    again = open_catalog(url)
    try:
        with again.connect() as conn:
            assert MigrationContext.configure(conn).get_current_revision() == _head_revision()
    finally:
        again.dispose()


def test_downgrade_to_base_and_upgrade_again(catalog_engine: Engine) -> None:
    from alembic import command
    from alembic.config import Config

    from catalog.db import ALEMBIC_INI, MIGRATIONS_DIR, upgrade

    config = Config(str(ALEMBIC_INI))
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    with catalog_engine.begin() as conn:
        config.attributes["connection"] = conn
        command.downgrade(config, "base")
    with catalog_engine.connect() as conn:
        assert set(inspect(conn).get_table_names()) <= {"alembic_version"}
    upgrade(catalog_engine)
    _upsert(catalog_engine, fixture_models())
    with session_scope(catalog_engine) as s:
        assert repo.get_model(s, 700102).name == "Ink Wash Style"


def test_sqlite_engine_settings(tmp_path: Path) -> None:
    db_file = tmp_path / "nested" / "dir" / "catalog.sqlite3"
    engine = make_engine(f"sqlite:///{db_file}")
    try:
        with engine.connect() as conn:
            pragma = {
                name: conn.exec_driver_sql(f"PRAGMA {name}").scalar()
                for name in ("journal_mode", "foreign_keys", "synchronous", "busy_timeout")
            }
        assert db_file.parent.is_dir()
        assert pragma["journal_mode"] == "wal"
        assert pragma["foreign_keys"] == 1
        assert pragma["synchronous"] == 1  # NORMAL
        assert int(pragma["busy_timeout"]) >= 1000
    finally:
        engine.dispose()


def test_in_memory_sqlite_catalog_shares_one_database() -> None:
    engine = open_catalog("sqlite://")
    try:
        _upsert(engine, [_model(model_payload(1))])
        with session_scope(engine) as s:
            assert repo.get_model(s, 1).name == "Test Model 1"
    finally:
        engine.dispose()


def test_normalize_url() -> None:
    assert normalize_url("postgresql://u:p@h/db").drivername == "postgresql+psycopg"
    assert normalize_url("postgres://u:p@h/db").drivername == "postgresql+psycopg"
    assert normalize_url("sqlite:///x.db").drivername == "sqlite"
    with pytest.raises(DatabaseURLError) as unsupported:
        normalize_url("mysql://u:p@h/db")
    assert unsupported.value.backend == "mysql"
    with pytest.raises(DatabaseURLError) as unparsable:
        normalize_url("not a url")
    assert unparsable.value.backend is None
    for error in (unsupported.value, unparsable.value):
        words = describe(error)
        assert words is not None and words.title == "Configuration error" and words.exit_code == 2


def test_failed_migration_raises_migration_error(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'catalog.sqlite3'}"
    engine = make_engine(url)
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql("CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL)")
            conn.exec_driver_sql("INSERT INTO alembic_version VALUES ('ffffffffffff')")
    finally:
        engine.dispose()
    with pytest.raises(MigrationError) as raised:
        open_catalog(url)
    words = describe(raised.value)
    assert words is not None and words.title == "Migration failed" and words.hint


def test_session_scope_commits_and_rolls_back(catalog_engine: Engine) -> None:
    with session_scope(catalog_engine, write=True) as s:
        repo.upsert_models(s, [_model(model_payload(1))], seen_at=NOW)
    with pytest.raises(RuntimeError), session_scope(catalog_engine, write=True) as s:
        repo.upsert_models(s, [_model(model_payload(2))], seen_at=NOW)
        raise RuntimeError("boom")
    with session_scope(catalog_engine) as s:
        assert s.execute(select(Model.id)).scalars().all() == [1]


# --- upserts ------------------------------------------------------------------------------------


def test_upsert_inserts_everything(catalog_engine: Engine) -> None:
    models = fixture_models()
    result = _upsert(catalog_engine, models)
    assert (result.models_inserted, result.versions_inserted, result.files_inserted) == (2, 4, 7)
    assert result.models_written == 2
    with session_scope(catalog_engine) as s:
        assert _count(s, Model) == 2
        assert _count(s, ModelVersion) == 4
        assert _count(s, ModelFile) == 7
        assert _count(s, Image) == sum(len(v.images) for m in models for v in m.model_versions)
        assert _count(s, ModelSearch) == 2
        ink = repo.get_model(s, 700102)
        assert ink.type == "LORA"
        assert ink.creator is not None and ink.creator.username == "quietbrush"
        assert ink.tag_names == ["style", "ink", "traditional art"]
        assert ink.description_text is not None and "<" not in ink.description_text
        assert ink.first_seen_at == NOW and ink.last_seen_at == NOW
        harbor = repo.get_model(s, 700101)
        assert harbor.allow_commercial_use == ["Image", "RentCivit"]
        assert harbor.download_count == 48213


def test_identical_upsert_writes_nothing(catalog_engine: Engine) -> None:
    models = fixture_models()
    _upsert(catalog_engine, models)
    counter = WriteCounter(catalog_engine)
    try:
        again = [api.Model.model_validate(m.model_dump(by_alias=True)) for m in models]
        result = _upsert(catalog_engine, again, at=LATER)
        assert counter.statements == []
    finally:
        counter.close()
    assert (result.models_unchanged, result.versions_unchanged, result.files_unchanged) == (2, 4, 7)
    assert result.models_written == 0
    with session_scope(catalog_engine) as s:
        assert repo.get_model(s, 700101).last_seen_at == NOW  # not even touched


def test_changed_model_is_updated(catalog_engine: Engine) -> None:
    _upsert(catalog_engine, [_model(model_payload(1))])
    changed = model_payload(1, name="Renamed", tags=["style", "new tag"])
    changed["modelVersions"][0]["trainedWords"] = ["fresh"]
    result = _upsert(catalog_engine, [_model(changed)], at=LATER)
    assert (result.models_updated, result.versions_updated, result.files_updated) == (1, 1, 2)
    with session_scope(catalog_engine) as s:
        row = repo.get_model(s, 1)
        assert row.name == "Renamed"
        assert row.tag_names == ["style", "new tag"]
        assert row.versions[0].trained_word_list == ["fresh"]
        assert row.first_seen_at == NOW and row.changed_at == LATER
        assert _count(s, Image) == 2  # replaced, not duplicated


def test_stats_only_change_keeps_version_children(catalog_engine: Engine) -> None:
    _upsert(catalog_engine, [_model(model_payload(1))])
    changed = model_payload(1, stats={"downloadCount": 99, "thumbsUpCount": 3})
    changed["modelVersions"][0]["stats"] = {"downloadCount": 77}
    counter = WriteCounter(catalog_engine)
    try:
        result = _upsert(catalog_engine, [_model(changed)], at=LATER)
        written = counter.tables
    finally:
        counter.close()
    assert result.models_updated == 1 and result.versions_updated == 1
    assert result.files_unchanged == 2 and result.files_updated == 0
    assert not written & {"image", "model_file", "trained_word", "model_tag"}
    with session_scope(catalog_engine) as s:
        row = repo.get_model(s, 1)
        assert row.download_count == 99
        assert row.versions[0].download_count == 77


def test_vanished_version_is_marked_gone_not_deleted(catalog_engine: Engine) -> None:
    two = model_payload(
        1, modelVersions=[version_payload(10, index=0), version_payload(11, index=1)]
    )
    _upsert(catalog_engine, [_model(two)])
    one = model_payload(1, modelVersions=[version_payload(10, index=0)])
    result = _upsert(catalog_engine, [_model(one)], at=LATER)
    assert result.versions_gone == 1
    with session_scope(catalog_engine) as s:
        states = dict(s.execute(select(ModelVersion.id, ModelVersion.state)).all())
        assert states == {10: "active", 11: "gone"}
        assert _count(s, ModelFile) == 4  # the gone version keeps its files
        shown = repo.model_to_dict(repo.get_model(s, 1))
        assert [v["id"] for v in shown["versions"]] == [10]
    # and it comes back when the payload lists it again
    _upsert(catalog_engine, [_model(two)], at=LATER + timedelta(hours=1))
    with session_scope(catalog_engine) as s:
        states = dict(s.execute(select(ModelVersion.id, ModelVersion.state)).all())
        assert states == {10: "active", 11: "active"}


@pytest.mark.parametrize(
    ("mode", "state"), [("Archived", "archived"), ("TakenDown", "taken_down"), (None, "active")]
)
def test_mode_sets_state(catalog_engine: Engine, mode: str | None, state: str) -> None:
    _upsert(catalog_engine, [_model(model_payload(1))])
    _upsert(catalog_engine, [_model(model_payload(1, mode=mode))], at=LATER)
    with session_scope(catalog_engine) as s:
        row = repo.get_model(s, 1)
        assert row.state == state
        assert {v.state for v in row.versions} == {state}


def test_gone_model_is_revived_by_an_identical_payload(catalog_engine: Engine) -> None:
    payload = _model(model_payload(1))
    _upsert(catalog_engine, [payload])
    with session_scope(catalog_engine, write=True) as s:
        assert repo.mark_gone(s, [1, 2], at=LATER) == 1
    with session_scope(catalog_engine) as s:
        assert repo.get_model(s, 1).state == "gone"
        assert repo.list_models(s) == []
    result = _upsert(catalog_engine, [payload], at=LATER)
    assert result.models_updated == 1
    with session_scope(catalog_engine) as s:
        assert repo.get_model(s, 1).state == "active"


def test_mark_missing_after_full_sync(catalog_engine: Engine) -> None:
    _upsert(catalog_engine, [_model(model_payload(i)) for i in (1, 2, 3)])
    with session_scope(catalog_engine, write=True) as s:
        assert repo.mark_missing(s, seen_model_ids=[1, 3], at=LATER) == 1
        assert repo.mark_missing(s, seen_model_ids=[1, 3], at=LATER) == 0
    with session_scope(catalog_engine) as s:
        states = dict(s.execute(select(Model.id, Model.state)).all())
    assert states == {1: "active", 2: "gone", 3: "active"}


def test_trained_words_keep_order_and_commas(catalog_engine: Engine) -> None:
    words = ["masterpiece, best quality", "ink wash", "1girl, solo, (detailed:1.2)", "ink wash"]
    payload = model_payload(1)
    payload["modelVersions"][0]["trainedWords"] = words
    _upsert(catalog_engine, [_model(payload)])
    with session_scope(catalog_engine) as s:
        version = repo.get_model(s, 1).versions[0]
        assert version.trained_word_list == words
        assert repo.model_to_dict(repo.get_model(s, 1))["versions"][0]["trained_words"] == words
        rows = s.execute(select(TrainedWord.word).order_by(TrainedWord.position)).scalars().all()
        assert rows == words


def test_duplicate_ids_in_one_batch_last_wins(catalog_engine: Engine) -> None:
    result = _upsert(
        catalog_engine,
        [_model(model_payload(1, name="first")), _model(model_payload(1, name="last"))],
    )
    assert result.models_inserted == 1
    with session_scope(catalog_engine) as s:
        assert repo.get_model(s, 1).name == "last"


def test_changed_files_are_upserted_and_vanished_files_removed(catalog_engine: Engine) -> None:
    _upsert(catalog_engine, [_model(model_payload(1))])
    with session_scope(catalog_engine, write=True) as s:
        s.add(LocalFile(file_id=101, state="verified", path="/store/b", sha256="X"))
    changed = model_payload(1)
    changed["modelVersions"][0]["files"] = [file_payload(100, primary=True), file_payload(102)]
    result = _upsert(catalog_engine, [_model(changed)], at=LATER)
    assert (result.files_updated, result.files_inserted, result.files_removed) == (1, 1, 1)
    with session_scope(catalog_engine) as s:
        assert sorted(s.execute(select(ModelFile.id)).scalars()) == [100, 102]
        local = s.execute(select(LocalFile)).scalars().one()
        assert local.file_id is None and local.path == "/store/b"  # the store row outlives it


def test_upsert_version_creates_a_stub_model(catalog_engine: Engine) -> None:
    version = api.ModelVersion.model_validate(fixture_json("model-version.json"))
    assert version.model_id is not None
    with session_scope(catalog_engine, write=True) as s:
        result = repo.upsert_version(s, version)
    assert result.models_inserted == 1 and result.versions_inserted == 1
    with session_scope(catalog_engine) as s:
        stub = repo.get_model(s, version.model_id)
        assert stub.name == "Ink Wash Style" and stub.type == "LORA"
        assert stub.payload_sha256 is None
        row = stub.versions[0]
        assert row.air is not None and row.trained_word_list == version.trained_words
    # a later full sync fills the stub in and keeps what only the standalone shape had
    ink = next(m for m in fixture_models() if m.id == version.model_id)
    assert _upsert(catalog_engine, [ink]).models_updated == 1
    with session_scope(catalog_engine) as s:
        full = repo.get_model(s, version.model_id)
        assert full.creator is not None and full.tag_names
        assert next(v for v in full.versions if v.id == version.id).air == row.air


def test_upsert_version_keeps_listing_only_fields(catalog_engine: Engine) -> None:
    models = fixture_models()
    _upsert(catalog_engine, models)
    version = api.ModelVersion.model_validate(fixture_json("model-version-by-hash.json"))
    with session_scope(catalog_engine) as s:
        before = s.get(ModelVersion, version.id)
        assert before is not None
        position, availability = before.position, before.availability
    with session_scope(catalog_engine, write=True) as s:
        result = repo.upsert_version(s, version)
    assert result.models_unchanged == 1 and result.versions_updated == 1
    with session_scope(catalog_engine) as s:
        after = s.get(ModelVersion, version.id)
        assert after is not None
        assert (after.position, after.availability) == (position, availability)
        assert after.usage_control == "Download" and after.air


def test_upsert_version_without_model_id_is_refused(session: Session) -> None:
    version = api.ModelVersion.model_validate(version_payload(5))
    with pytest.raises(Exception, match="modelId"):
        repo.upsert_version(session, version)


def test_timestamps_are_utc_aware(catalog_engine: Engine) -> None:
    _upsert(catalog_engine, fixture_models(), at=NOW.astimezone(UTC))
    with session_scope(catalog_engine) as s:
        model = repo.get_model(s, 700101)
        version = model.versions[0]
        for value in (model.first_seen_at, model.changed_at, version.published_at):
            assert value is not None and value.tzinfo is not None
            assert value.utcoffset() == timedelta(0)
        assert version.published_at == datetime(2025, 11, 5, 9, 12, 44, 201000, tzinfo=UTC)


def test_upsert_of_100_models_is_fast(tmp_path: Path) -> None:
    engine = open_catalog(f"sqlite:///{tmp_path / 'bench.sqlite3'}")
    try:
        batches = [synthetic_models(100, start_id=1_000_000 + 1000 * b) for b in range(3)]
        timings = []
        for batch in batches:
            start = time.perf_counter()
            _upsert(engine, batch)
            timings.append(time.perf_counter() - start)
        # A loose guard against per-row round trips (those take seconds); bench/ measures.
        assert min(timings) < 1.0, timings
    finally:
        engine.dispose()


# --- hash lookups -------------------------------------------------------------------------------


@pytest.mark.parametrize("hash_type", api.HASH_TYPES)
@pytest.mark.parametrize("case", ["upper", "lower"])
def test_find_files_by_each_hash_type(catalog_engine: Engine, hash_type: str, case: str) -> None:
    _upsert(catalog_engine, fixture_models())
    digest = fixture_json("models-list.json")["items"][0]["modelVersions"][0]["files"][0]["hashes"][
        hash_type
    ]
    needle = digest.upper() if case == "upper" else digest.lower()
    with session_scope(catalog_engine) as s:
        matches = repo.find_files_by_hash(s, f"  {needle} ")
    assert matches == [
        {
            "hash_type": hash_type,
            "model_id": 700101,
            "model_name": "Harborlight Mix",
            "version_id": 800201,
            "version_name": "v2.0",
            "file_id": 900301,
            "file_name": "harborlightMix_v20.safetensors",
        }
    ]


def test_find_files_by_unknown_hash(session: Session) -> None:
    assert repo.find_files_by_hash(session, "DEADBEEF") == []
    assert repo.find_files_by_hash(session, "") == []


def test_hash_lookup_is_one_indexed_query(catalog_engine: Engine) -> None:
    _upsert(catalog_engine, fixture_models())
    seen: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        seen.append(statement)

    event.listen(catalog_engine, "before_cursor_execute", record)
    try:
        with session_scope(catalog_engine) as s:
            repo.find_files_by_hash(s, "5ead5dd9")
    finally:
        event.remove(catalog_engine, "before_cursor_execute", record)
    queries = [q for q in seen if q.lstrip().upper().startswith("SELECT")]
    assert len(queries) == 1
    if backend(catalog_engine) == "sqlite":
        with catalog_engine.connect() as conn:
            plan = " ".join(
                str(row[-1])
                for row in conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {queries[0]}", ("X",) * 6)
            )
        assert "MULTI-INDEX OR" in plan
        for column in ("sha256", "autov1", "autov2", "autov3", "crc32", "blake3"):
            assert f"ix_model_file_{column}" in plan


# --- reads and the JSON contract ----------------------------------------------------------------


def test_get_model_missing_raises(session: Session) -> None:
    with pytest.raises(NotInCatalogError):
        repo.get_model(session, 404)


def test_model_to_dict_shape(catalog_engine: Engine) -> None:
    _upsert(catalog_engine, fixture_models())
    with session_scope(catalog_engine, write=True) as s:
        s.add(
            LocalFile(
                file_id=900301,
                state="verified",
                path="/store/blobs/sha256/0bdf",
                verified_at=NOW,
                sha256="0BDFBB4C0B17FCA09F778306440EBC7C6AEF3F7450B272CCE4214C2569ABC39A",
            )
        )
    with session_scope(catalog_engine) as s:
        harbor = repo.model_to_dict(repo.get_model(s, 700101))
        ink = repo.model_to_dict(repo.get_model(s, 700102))
    assert set(harbor) == {"id", "name", "type", "nsfw", "tags", "creator", "versions"}
    assert harbor["id"] == 700101 and harbor["type"] == "Checkpoint" and harbor["nsfw"] is False
    assert harbor["creator"] == "pixel_foundry"
    assert harbor["tags"] == ["base model", "photorealistic", "landscapes"]
    assert [v["id"] for v in harbor["versions"]] == [800201, 800200]  # newest first
    version = harbor["versions"][0]
    assert set(version) == {
        "id",
        "name",
        "base_model",
        "trained_words",
        "published_at",
        "access",
        "files",
    }
    assert version["published_at"] == "2025-11-05T09:12:44.201Z"
    assert version["access"] == []
    first = version["files"][0]
    assert set(first) == {"id", "name", "size_kb", "primary", "format", "hashes", "local"}
    assert first["id"] == 900301 and first["primary"] is True and first["format"] == "SafeTensor"
    assert list(first["hashes"]) == ["SHA256", "AutoV1", "AutoV2", "AutoV3", "CRC32", "BLAKE3"]
    assert first["hashes"]["AutoV2"] == "0BDFBB4C0B"
    assert first["local"] == {
        "state": "verified",
        "path": "/store/blobs/sha256/0bdf",
        "verified_at": "2026-01-02T03:04:05.000Z",
    }
    assert [f["primary"] for f in version["files"]] == [True, False, False]
    assert all(f["local"] is None for f in version["files"][1:])
    assert ink["versions"][0]["trained_words"] == ["inkwash style", "monochrome brush strokes"]


def test_model_to_dict_lists_only_known_hashes(catalog_engine: Engine) -> None:
    payload = model_payload(1)
    payload["modelVersions"][0]["files"] = [
        {"id": 5, "name": "tiny.pt", "primary": True, "hashes": {"sha256": "ab" * 32, "crc32": "x"}}
    ]
    _upsert(catalog_engine, [_model(payload)])
    with session_scope(catalog_engine) as s:
        shown = repo.model_to_dict(repo.get_model(s, 1))
    assert shown["versions"][0]["files"][0]["hashes"] == {"SHA256": "AB" * 32}


def test_list_models_filters(catalog_engine: Engine) -> None:
    models = fixture_models()
    nsfw = model_payload(3, name="Night Study", type="Checkpoint", nsfw=True)
    nsfw["modelVersions"][0]["baseModel"] = "Pony"
    _upsert(catalog_engine, [*models, _model(nsfw)])
    with session_scope(catalog_engine, write=True) as s:
        s.add(LocalFile(file_id=900304, state="verified", path="/store/x"))
        s.add(LocalFile(file_id=900301, state="downloading", path="/store/y"))

    def ids(**kwargs: Any) -> list[int]:
        with session_scope(catalog_engine) as s:
            return [m.id for m in repo.list_models(s, **kwargs)]

    assert ids(sort="name") == [700101, 700102, 3]
    assert ids(sort="downloads")[:2] == [700101, 700102]
    assert ids(types=["checkpoint"], sort="name") == [700101, 3]
    assert ids(types=["LORA"]) == [700102]
    assert ids(base_models=["Pony"], sort="name") == [700102, 3]
    assert ids(base_models=["SD 1.5"]) == [700102]
    assert ids(nsfw=False, sort="name") == [700101, 700102]
    assert ids(local_only=True) == [700102]  # only verified files count
    assert ids(search="ink was") == [700102]
    assert ids(search="harbor", types=["LORA"]) == []
    assert ids(search="   ") == ids()
    assert ids(search="!!!") == []
    assert ids(sort="name", limit=1, offset=1) == [700102]
    assert ids(sort="newest")[0] == 700101
    assert set(ids(sort="updated")) == {700101, 700102, 3}


def test_list_models_loads_everything_model_to_dict_needs(catalog_engine: Engine) -> None:
    _upsert(catalog_engine, fixture_models())
    with session_scope(catalog_engine) as s:
        rows = repo.list_models(s, sort="name")
    # Used after the session closed: all relationships must already be loaded.
    shown = [repo.model_to_dict(m) for m in rows]
    assert [m["name"] for m in shown] == ["Harborlight Mix", "Ink Wash Style"]


def test_payload_hash_is_stable_and_sensitive() -> None:
    model = fixture_models()[0]
    again = api.Model.model_validate(copy.deepcopy(model.model_dump(by_alias=True)))
    first = repo.model_payload_sha256(model)
    version = repo.version_content_sha256(model.model_versions[0])
    assert repo.model_payload_sha256(again) == first
    again.model_versions[0].stats.download_count = 1
    assert repo.model_payload_sha256(again) != first  # stats count for the model
    assert repo.version_content_sha256(again.model_versions[0]) == version  # not the version
    again.model_versions[0].trained_words.append("new")
    assert repo.version_content_sha256(again.model_versions[0]) != version
