"""Pull, import, verify, delete, updates and duplicates through the application layer: the
real catalog and store, the fake Civitai on 127.0.0.1 at the edge."""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine
from sqlmodel import Session, select

from assetmgr.app.context import AppContext
from assetmgr.app.library import delete, import_models, plan_delete, pull_many, pull_one, verify
from assetmgr.app.sync import SyncOptions, sync_catalog
from assetmgr.app.updates import find_duplicates, find_updates
from assetmgr.config import Settings
from assetmgr.store.blobs import BlobStore
from assetmgr.wording import describe
from catalog.civitai.client import CivitaiClient
from catalog.civitai.retry import RetryPolicy
from catalog.models import LocalFile
from tests.fakeciv import FakeCatalog, FakeCivitai
from tests.integration.test_import_export import open_versions, sd15_lora


@pytest.fixture
def fake_catalog() -> FakeCatalog:
    return FakeCatalog.generate(20, seed=7)


@pytest.fixture
def fake(fake_catalog: FakeCatalog) -> Iterator[FakeCivitai]:
    with FakeCivitai(fake_catalog) as server:
        yield server


def _client_factory(base_url: str) -> Callable[[], CivitaiClient]:
    def make() -> CivitaiClient:
        return CivitaiClient(
            base_url=base_url,
            retry=RetryPolicy(max_attempts=2, base_delay=0.01, max_delay=0.01),
            sleep=lambda s: None,
        )

    return make


@pytest.fixture
def online(settings: Settings, engine: Engine, fake: FakeCivitai) -> Iterator[AppContext]:
    """A context on an empty catalog whose Civitai is the fake."""
    live = dataclasses.replace(settings, api_base=fake.base_url)
    with AppContext(live, engine=engine, client_factory=_client_factory(fake.base_url)) as ctx:
        yield ctx


def _local_rows(engine: Engine) -> list[LocalFile]:
    with Session(engine) as session:
        return list(session.exec(select(LocalFile)).all())


def test_pull_verifies_against_civitai_and_reports_each_version(
    online: AppContext, fake_catalog: FakeCatalog
) -> None:
    (vid,) = open_versions(fake_catalog, 1)
    served = fake_catalog.add_file_bytes(vid, sd15_lora(fill=3))
    sync_catalog(online, SyncOptions(model_ids=(fake_catalog.versions[vid].model_id,)))
    done: list[int] = []
    outcomes = pull_many(online, [vid, 99_999_999], progress=lambda p: done.append(p.done_bytes))
    first, missing = outcomes
    assert first.error is None and first.result is not None
    assert first.result.sha256.upper() == served.hashes["SHA256"].upper()
    assert first.result.blob_path.read_bytes() == served.content
    assert done and done[-1] == len(served.content)
    assert missing.result is None and missing.error is not None
    words = describe(missing.error)
    assert words is not None and "99999999" in words.message and words.hint
    again = pull_one(online, vid)
    assert again.already_present and again.blob_path == first.result.blob_path


def test_a_cancelled_pull_stores_nothing(online: AppContext, fake_catalog: FakeCatalog) -> None:
    (vid,) = open_versions(fake_catalog, 1)
    fake_catalog.add_file_bytes(vid, sd15_lora(fill=4))
    sync_catalog(online, SyncOptions(model_ids=(fake_catalog.versions[vid].model_id,)))
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(Exception) as caught:
        pull_one(online, vid, cancel=cancel)
    words = describe(caught.value)
    assert words is not None and words.title == "Download cancelled"
    assert not [r for r in _local_rows(online.engine) if r.state == "verified"]


def test_import_identifies_offline_and_without_a_usable_client(
    settings: Settings, engine: Engine, tmp_path: Path
) -> None:
    first = tmp_path / "models" / "Lora"
    second = tmp_path / "more" / "Lora"
    for folder, fill in ((first, 9), (second, 10)):
        folder.mkdir(parents=True)
        (folder / f"ink{fill}.safetensors").write_bytes(sd15_lora(fill=fill))
    # An API base the client refuses: an error unless offline (or offline_if_no_client).
    broken = dataclasses.replace(settings, api_base="ftp://example.invalid")
    with AppContext(broken, engine=engine) as ctx:
        with pytest.raises(Exception) as caught:
            import_models(ctx, first)
        words = describe(caught.value)
        assert words is not None and words.message.startswith("not an http(s) API base URL")
        assert _local_rows(engine) == []
        offline = import_models(ctx, first, offline=True)
        assert [(i.path, i.source) for i in offline.imported] == [
            (str(first / "ink9.safetensors"), "local")
        ]
        steps: list[int] = []
        report = import_models(
            ctx, second, offline_if_no_client=True, progress=lambda i, n, p: steps.append(i)
        )
    assert [(i.path, i.source) for i in report.imported] == [
        (str(second / "ink10.safetensors"), "local")
    ]
    assert steps and report.lookup_error is None
    assert len(_local_rows(engine)) == 2


def test_verify_quarantines_a_corrupt_blob_and_delete_frees_a_clean_one(
    ctx: AppContext, library: BlobStore
) -> None:
    clean = verify(ctx)
    assert clean.clean and clean.checked == clean.ok == 2
    rows = _local_rows(ctx.engine)
    victim = next(r for r in rows if r.path and "inkwash" not in str(r.path))
    blob = library.blob_path(victim.sha256)
    blob.chmod(0o644)
    with blob.open("r+b") as fh:  # one flipped byte: the hash no longer matches
        fh.seek(100)
        byte = fh.read(1)
        fh.seek(100)
        fh.write(bytes([byte[0] ^ 0xFF]))
    report = verify(ctx)
    assert not report.clean and report.ok == 1
    assert [c["sha256"].lower() for c in report.corrupt] == [victim.sha256.lower()]

    keep = next(r for r in rows if r.id != victim.id)
    plan = plan_delete(ctx, int(keep.file_id))
    assert plan.local_id == keep.id
    freed = delete(ctx, plan)
    assert freed > 0
    assert keep.id not in {r.id for r in _local_rows(ctx.engine)}


def test_updates_and_duplicates_of_local_files(
    online: AppContext, fake_catalog: FakeCatalog, tmp_path: Path
) -> None:
    assert find_updates(online).local_files == 0
    assert find_duplicates(online).empty
    (vid,) = open_versions(fake_catalog, 1)
    model_id = fake_catalog.versions[vid].model_id
    served = fake_catalog.add_file_bytes(vid, sd15_lora(fill=21))
    sync_catalog(online, SyncOptions(model_ids=(model_id,)))
    pull_one(online, vid)
    report = find_updates(online)
    assert report.local_files == 1 and report.updates == []
    newer = fake_catalog.add_version(
        model_id, name="v-next", base_model=fake_catalog.versions[vid].base_model
    )
    sync_catalog(online, SyncOptions(model_ids=(model_id,)))
    report = find_updates(online)
    assert [u.newest_version_id for u in report.updates] == [newer.id]
    assert report.as_json()[0]["newest_version"]["id"] == newer.id
    ((offer_model, offer_version, label),) = report.pull_offers()
    assert (offer_model, offer_version) == (model_id, newer.id) and label.endswith("→ v-next")

    src = tmp_path / "dups"
    src.mkdir()
    (src / "same_tensors.safetensors").write_bytes(sd15_lora(fill=21, meta={"note": "re-saved"}))
    import_models(online, src, offline=True)
    dups = find_duplicates(online)
    assert dups.local_files == 2 and not dups.empty
    (group,) = [g for g in dups.groups["by_autov3"] if g["autov3"] == served.hashes["AutoV3"]]
    assert len({f["sha256"] for f in group["files"]}) == 2
