"""Actions against the fake Civitai: sync, pull with progress, verify, delete, cancel, errors,
updates and import. Everything runs in workers; results arrive as messages."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, select
from sqlmodel import Session
from textual.widgets import Input

from assetmgr import paths
from assetmgr.store import records
from assetmgr.tui.app import AssetMgrApp
from assetmgr.tui.screens.dialogs import ConfirmModal, ErrorModal, PromptModal, UpdatesModal
from assetmgr.tui.widgets.detail import DetailPane
from assetmgr.tui.widgets.model_table import ModelTable
from catalog.models import LocalFile, ModelFile
from tests.tui.conftest import SIZE, lora_bytes, open_version, settle, sync_models, wait_until


def local_row(engine: Engine, file_id: int) -> LocalFile | None:
    with Session(engine) as session:
        return (
            session.execute(
                select(LocalFile).where(LocalFile.file_id == file_id)  # type: ignore[arg-type]
            )
            .scalars()
            .first()
        )


async def show_version(app: AssetMgrApp, pilot: Any, model_id: int, version_id: int) -> None:
    app.catalog.select_model(model_id)
    pane = app.catalog.query_one(DetailPane)
    await wait_until(pilot, lambda: pane.detail is not None and pane.detail.id == model_id)
    assert pane.detail is not None
    index = next(i for i, v in enumerate(pane.detail.versions) if v.id == version_id)
    app.catalog.version_chosen(DetailPane.VersionChosen(pane, index))
    await pilot.pause()  # not settle(): other jobs may be running on purpose
    assert pane.version is not None and pane.version.id == version_id
    app.catalog.query_one(ModelTable).focus()


async def test_sync_fills_the_table(
    build_fake_app: Callable[..., AssetMgrApp], fake_catalog: Any
) -> None:
    app = build_fake_app()
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        assert app.catalog.query_one(ModelTable).row_count == 12
        await pilot.press("s")
        await wait_until(pilot, lambda: not app.jobs.active("sync"), what="sync finished")
        job = app.jobs.all()[-1]
        assert job.status == "done", job.summary
        assert job.summary.startswith("synced ")
        await settle(pilot)
        assert app.catalog.total is not None and app.catalog.total > 12


async def test_pull_verify_delete(
    build_fake_app: Callable[..., AssetMgrApp],
    engine: Engine,
    fake: Any,
    fake_catalog: Any,
) -> None:
    model_id, version_id = open_version(fake_catalog)
    served = fake_catalog.add_file_bytes(version_id, lora_bytes())
    sync_models(engine, fake, [model_id])
    app = build_fake_app()
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await show_version(app, pilot, model_id, version_id)
        await pilot.press("d")
        await wait_until(pilot, lambda: not app.jobs.active("download"), what="download")
        job = app.jobs.all()[-1]
        assert job.status == "done", job.summary
        row = local_row(engine, served.id)
        assert row is not None and row.state == "verified"
        await settle(pilot)
        # The detail pane shows the file verified with every published hash matching.
        version = app.catalog.query_one(DetailPane).version
        assert version is not None
        file = next(f for f in version.files if f.id == served.id)
        assert file.local_state == "verified"
        assert {h.state for h in file.hashes if h.expected} == {"match"}

        await pilot.press("V")
        await wait_until(pilot, lambda: not app.jobs.active("verify"), what="verify")
        assert app.jobs.all()[-1].summary == "verified 1 of 1 files: all good"

        blob = Path(row.path or "")
        assert blob.is_file()
        await pilot.press("x")
        await wait_until(pilot, lambda: isinstance(app.screen, ConfirmModal), what="confirm")
        await pilot.press("y")
        await wait_until(
            pilot, lambda: not app.jobs.active("delete") and bool(app.jobs.active()) is False
        )
        await settle(pilot)
        assert local_row(engine, served.id) is None
        assert not blob.exists()
        assert not list((paths.store_dir() / "names").rglob(f"{served.id}-*"))


async def test_cancel_a_slow_download(
    build_fake_app: Callable[..., AssetMgrApp], engine: Engine, fake: Any, fake_catalog: Any
) -> None:
    model_id, version_id = open_version(fake_catalog)
    # The downloader checks for cancellation between 8 MiB blocks: 17 MiB at 8 MB/s.
    served = fake_catalog.add_file_bytes(version_id, lora_bytes(filler=17_000_000))
    sync_models(engine, fake, [model_id])
    fake.storage_faults.throttle(8_000_000)
    app = build_fake_app()
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await show_version(app, pilot, model_id, version_id)
        await pilot.press("d")
        await wait_until(
            pilot, lambda: any(j.done > 0 for j in app.jobs.active("download")), what="progress"
        )
        await pilot.press("escape")
        await wait_until(pilot, lambda: not app.jobs.active("download"), what="cancelled")
        assert app.jobs.all()[-1].status == "cancelled"
        assert not isinstance(app.screen, ErrorModal)
        await pilot.pause(2.5)  # the worker thread stops at its next block
        row = local_row(engine, served.id)
        assert row is None or row.state != "verified"


async def test_error_modal_shows_title_and_hint(
    build_fake_app: Callable[..., AssetMgrApp], engine: Engine, fake: Any, fake_catalog: Any
) -> None:
    model_id, version_id = open_version(fake_catalog)
    fake_catalog.add_file_bytes(version_id, lora_bytes())
    fake_catalog.update_version(version_id, require_auth=True)  # needs an API key now
    sync_models(engine, fake, [model_id])
    app = build_fake_app()
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await show_version(app, pilot, model_id, version_id)
        await pilot.press("d")
        await wait_until(pilot, lambda: isinstance(app.screen, ErrorModal), what="error modal")
        modal = app.screen
        assert isinstance(modal, ErrorModal)
        assert modal.error_title  # the error's own title, e.g. "Login required"
        assert modal.hint  # and what to do about it
        assert app.jobs.all()[-1].status == "failed"
        await pilot.press("escape")
        assert not isinstance(app.screen, ErrorModal)


async def test_updates_are_marked_and_listed(
    build_app: Callable[..., AssetMgrApp], engine: Engine
) -> None:
    # The older Film Grain version (920008) is local; 920007 is newer in the same family (SDXL).
    with Session(engine) as session, session.begin():
        file = (
            session.execute(
                select(ModelFile).where(ModelFile.version_id == 920008)  # type: ignore[arg-type]
            )
            .scalars()
            .first()
        )
        assert file is not None and file.sha256
        records.set_local_state(
            session, file_id=file.id, sha256=file.sha256, state="verified", path=None
        )
    app = build_app()
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        table = app.catalog.query_one(ModelTable)
        assert 910005 in table.update_ids
        await pilot.press("u")
        await wait_until(pilot, lambda: isinstance(app.screen, UpdatesModal), what="updates")
        modal = app.screen
        assert isinstance(modal, UpdatesModal)
        assert [(m, v) for m, v, _ in modal.updates] == [(910005, 920007)]
        await pilot.press("enter")  # jump to the model
        await settle(pilot)
        pane = app.catalog.query_one(DetailPane)
        assert pane.detail is not None and pane.detail.id == 910005
        assert pane.detail.update_version_ids == [920007]


async def test_import_a_folder(build_fake_app: Callable[..., AssetMgrApp], tmp_path: Path) -> None:
    folder = tmp_path / "models" / "Lora"
    folder.mkdir(parents=True)
    (folder / "my_style.safetensors").write_bytes(lora_bytes(filler=10_000, seed=7.0))
    app = build_fake_app()
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await pilot.press("i")
        await wait_until(pilot, lambda: isinstance(app.screen, PromptModal), what="prompt")
        app.screen.query_one("#answer", Input).value = str(tmp_path / "models")
        await pilot.press("enter")
        await wait_until(pilot, lambda: not app.jobs.active("import"), what="import")
        job = app.jobs.all()[-1]
        assert job.status == "done", job.summary
        assert job.summary.startswith("imported 1 of 1")
        await pilot.press("l")  # local only
        await wait_until(pilot, lambda: app.catalog.loaded == 1 and not app.catalog.page_loading)
