"""`assetmgr.store.service.plan_delete`: links and rows go; a blob only when nothing uses it."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from sqlalchemy import Engine, select
from sqlmodel import Session

from assetmgr import paths
from assetmgr.errors import NotInCatalogError
from assetmgr.store import records
from assetmgr.store.blobs import BlobStore
from assetmgr.store.service import plan_delete
from catalog.models import LocalFile


def put_blob(store: BlobStore, data: bytes) -> str:
    sha = hashlib.sha256(data).hexdigest().upper()
    store.ensure()
    tmp = store.partial_dir / "t.part"
    tmp.write_bytes(data)
    store.promote(tmp, sha)
    return sha


def own(engine: Engine, store: BlobStore, file_id: int | None, sha: str, name: str) -> int:
    with Session(engine) as session, session.begin():
        row = records.set_local_state(
            session, file_id=file_id, sha256=sha, state="verified", path=store.blob_path(sha)
        )
        session.flush()
        assert row.id is not None
        local_id = row.id
    if file_id is not None:
        store.link_name(sha, Path("LORA") / "SD 1.5" / f"{file_id}-{name}")
    return local_id


@pytest.fixture
def store() -> BlobStore:
    return BlobStore(paths.store_dir())


def test_sole_owner_frees_the_blob(engine: Engine, store: BlobStore) -> None:
    sha = put_blob(store, b"x" * 1000)
    own(engine, store, 930006, sha, "detail.safetensors")
    plan = plan_delete(engine, store, file_id=930006)
    assert plan.blob_path == store.blob_path(sha)
    assert plan.expected_freed_bytes == 1000
    assert [p.name for p in plan.links] == ["930006-detail.safetensors"]
    assert plan.execute(engine, store) == 1000
    assert not store.has(sha)
    assert not any(store.names_dir.rglob("930006-*"))
    with Session(engine) as session:
        assert session.execute(select(LocalFile)).first() is None
    events = [json.loads(line) for line in store.provenance_path.read_text().splitlines()]
    assert events[-1]["event"] == "delete" and events[-1]["blob_removed"] is True


def test_shared_blob_stays(engine: Engine, store: BlobStore) -> None:
    sha = put_blob(store, b"same bytes")
    own(engine, store, 930006, sha, "a.safetensors")
    other = own(engine, store, 930003, sha, "b.safetensors")
    plan = plan_delete(engine, store, file_id=930006)
    assert plan.blob_path is None and plan.shared_with == (other,)
    assert plan.expected_freed_bytes == 0
    assert plan.execute(engine, store) == 0
    assert store.has(sha)
    assert [p.name for p in store.names_dir.rglob("*-*.safetensors")] == ["930003-b.safetensors"]


def test_a_foreign_link_keeps_the_blob(engine: Engine, store: BlobStore) -> None:
    sha = put_blob(store, b"linked elsewhere")
    own(engine, store, 930006, sha, "a.safetensors")
    store.link_name(sha, Path("manual") / "kept.safetensors")
    plan = plan_delete(engine, store, file_id=930006)
    assert plan.blob_path is None
    plan.execute(engine, store)
    assert store.has(sha)


def test_local_only_file_by_row_id(engine: Engine, store: BlobStore) -> None:
    sha = put_blob(store, b"imported")
    local_id = own(engine, store, None, sha, "")
    plan = plan_delete(engine, store, local_id=local_id)
    assert plan.file_id is None and plan.blob_path is not None
    plan.execute(engine, store)
    assert not store.has(sha)


def test_nothing_to_delete(engine: Engine, store: BlobStore) -> None:
    with pytest.raises(NotInCatalogError):
        plan_delete(engine, store, file_id=930006)
    with pytest.raises(ValueError):
        plan_delete(engine, store)
