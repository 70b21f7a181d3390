"""SVG snapshots of the main screens (``pytest --snapshot-update`` rewrites them; review the SVGs).

Paths on screen come from ASSETMGR_HOME, so these tests pin it to a fixed path after the
catalog was created in the test's own folder; the random seed of the Generate screen is fixed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine
from textual.pilot import Pilot
from textual.widgets import Input, TextArea

from assetmgr.config import Settings
from assetmgr.tui.app import AssetMgrApp, make_app
from assetmgr.tui.services import Services
from tests.tui.conftest import SIZE, FakeGeneration, FakeSandboxInfo, settle

FIXED_HOME = "/home/user/.local/share/assetmgr"


@pytest.fixture
def snapshot_app(
    settings: Settings,
    engine: Engine,
    fake_generation: FakeGeneration,
    monkeypatch: pytest.MonkeyPatch,
) -> Callable[[], AssetMgrApp]:
    def build() -> AssetMgrApp:
        monkeypatch.setenv("ASSETMGR_HOME", FIXED_HOME)
        shown = dataclasses.replace(
            settings, home=Path(FIXED_HOME), database_url=f"sqlite:///{FIXED_HOME}/catalog.sqlite3"
        )
        services = Services(shown, engine, generation=fake_generation, sandbox=FakeSandboxInfo())
        return make_app(shown, services=services)

    return build


async def _steady(pilot: Pilot[Any]) -> None:
    for widget in pilot.app.screen.query("Input, TextArea"):
        if isinstance(widget, Input | TextArea):
            widget.cursor_blink = False
    await settle(pilot)


def test_catalog_browser(snap_compare: Any, snapshot_app: Callable[[], AssetMgrApp]) -> None:
    assert snap_compare(snapshot_app(), terminal_size=SIZE, run_before=_steady)


def test_catalog_search_and_lora_detail(
    snap_compare: Any, snapshot_app: Callable[[], AssetMgrApp]
) -> None:
    async def search(pilot: Pilot[Any]) -> None:
        await _steady(pilot)
        await pilot.press("slash", *"ink wash", "escape")
        await pilot.pause(0.3)
        await settle(pilot)

    assert snap_compare(snapshot_app(), terminal_size=SIZE, run_before=search)


def test_generate_screen(snap_compare: Any, snapshot_app: Callable[[], AssetMgrApp]) -> None:
    async def generate(pilot: Pilot[Any]) -> None:
        await pilot.press("f3")
        await settle(pilot)
        pilot.app.screen.query_one("#seed", Input).value = "1234"
        pilot.app.screen.query_one("#prompt", TextArea).text = "a lighthouse at dusk, <lora:x:0.8>"
        await _steady(pilot)

    assert snap_compare(snapshot_app(), terminal_size=SIZE, run_before=generate)


def test_sandbox_screen(snap_compare: Any, snapshot_app: Callable[[], AssetMgrApp]) -> None:
    assert snap_compare(snapshot_app(), press=["f4"], terminal_size=SIZE, run_before=_steady)


def test_settings_screen(snap_compare: Any, snapshot_app: Callable[[], AssetMgrApp]) -> None:
    assert snap_compare(snapshot_app(), press=["f5"], terminal_size=SIZE, run_before=_steady)


def test_help_screen(snap_compare: Any, snapshot_app: Callable[[], AssetMgrApp]) -> None:
    assert snap_compare(snapshot_app(), press=["f1"], terminal_size=SIZE, run_before=_steady)
