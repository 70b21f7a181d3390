"""A refused download in the TUI: the partial file and its "partial download" state go, and
what Civitai said (early access, downloads disabled) shows as a badge before the next try."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import Engine, select
from sqlmodel import Session
from textual.widgets import OptionList, Static

from assetmgr import paths
from assetmgr.store import records
from assetmgr.tui.app import AssetMgrApp
from assetmgr.tui.screens.dialogs import ErrorModal
from assetmgr.tui.widgets.detail import DetailPane
from catalog.models import LocalFile
from tests.tui.conftest import (
    SIZE,
    lora_bytes,
    open_version,
    plain,
    settle,
    sync_models,
    wait_until,
)
from tests.tui.test_actions import show_version

FUTURE = "2099-01-01T00:00:00.000Z"


def local_state(engine: Engine, file_id: int) -> str | None:
    with Session(engine) as session:
        row = (
            session.execute(select(LocalFile).where(LocalFile.file_id == file_id))  # type: ignore[arg-type]
            .scalars()
            .first()
        )
        return row.state if row is not None else None


@pytest.mark.parametrize(
    ("refuse", "badge", "info"),
    [
        (
            {"early_access_deadline": FUTURE},
            "⏳ early access",
            "download    early access until 2099-01-01 00:00 UTC",
        ),
        (
            {"usage_control": "Generation"},
            "⊘ no downloads",
            "download    downloads disabled by the creator (generation on Civitai only)",
        ),
    ],
    ids=["early access", "downloads disabled"],
)
async def test_a_refused_download_clears_the_partial_and_shows_why(
    build_fake_app: Callable[..., AssetMgrApp],
    engine: Engine,
    fake: Any,
    fake_catalog: Any,
    refuse: dict[str, Any],
    badge: str,
    info: str,
) -> None:
    model_id, version_id = open_version(fake_catalog)
    served = fake_catalog.add_file_bytes(version_id, lora_bytes())
    sync_models(engine, fake, [model_id])
    # An earlier transfer was interrupted: its partial file and its "downloading" row.
    part = paths.store_dir() / "partial" / f"file-{served.id}.part"
    part.parent.mkdir(parents=True, exist_ok=True)
    part.write_bytes(lora_bytes()[:1000])
    with Session(engine) as session, session.begin():
        records.set_local_state(
            session,
            file_id=served.id,
            sha256=served.hashes["SHA256"],
            state="downloading",
            path=None,
        )
    fake_catalog.update_version(version_id, **refuse)  # Civitai refuses it from now on
    app = build_fake_app()
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await show_version(app, pilot, model_id, version_id)
        pane = app.catalog.query_one(DetailPane)
        assert "↓ partial download (d resumes it)" in plain(pane.query_one("#files", Static))
        await pilot.press("d")
        await wait_until(pilot, lambda: isinstance(app.screen, ErrorModal), what="error modal")
        await pilot.press("escape")
        await settle(pilot)
        assert not part.exists()
        assert local_state(engine, served.id) is None
        version = pane.version
        assert version is not None and version.id == version_id
        files = plain(pane.query_one("#files", Static))
        assert "partial" not in files and "not local" in files
        assert info in plain(pane.query_one("#version-info", Static))
        options = pane.query_one("#versions", OptionList)
        index = next(i for i, v in enumerate(pane.detail.versions) if v.id == version_id)  # type: ignore[union-attr]
        assert badge in str(options.get_option_at_index(index).prompt)


async def test_the_detail_pane_says_when_downloads_go_without_a_key(
    build_fake_app: Callable[..., AssetMgrApp], engine: Engine, fake: Any, fake_catalog: Any
) -> None:
    """Whether a file needs a login Civitai does not publish; without a key the pane says
    a login may be asked for, and with one it says nothing."""
    model_id, version_id = open_version(fake_catalog)
    sync_models(engine, fake, [model_id])
    app = build_fake_app()
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await show_version(app, pilot, model_id, version_id)
        pane = app.catalog.query_one(DetailPane)
        note = "login       no API key (F5)"
        assert note in plain(pane.query_one("#version-info", Static))
        app.services.settings = dataclasses.replace(app.services.settings, api_key="k" * 32)
        pane.show_version(pane.version_index)
        assert note not in plain(pane.query_one("#version-info", Static))
