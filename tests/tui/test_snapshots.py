"""SVG snapshots of the main screens (``pytest --snapshot-update`` rewrites them; review the SVGs).

Paths on screen come from ASSETMGR_HOME, so these tests pin it to a fixed path after the
catalog was created in the test's own folder; the random seed of the Generate screen is fixed.
The browser is shot at 80x24, 100x30 and 160x48 on the demo catalog (two models local, one
with an update), the Generate screen at 80x24 and 160x48.
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
from tests.app.fakes import FakeJobRunner
from tests.tui.conftest import SIZE, FakeSandboxInfo, settle
from tests.tui.test_small_terminals import mark_local

FIXED_HOME = "/home/user/.local/share/assetmgr"
SIZES = {"80x24": (80, 24), "100x30": (100, 30), "160x48": SIZE}


@pytest.fixture
def snapshot_app(
    settings: Settings,
    engine: Engine,
    runner: FakeJobRunner,
    monkeypatch: pytest.MonkeyPatch,
) -> Callable[[], AssetMgrApp]:
    def build() -> AssetMgrApp:
        monkeypatch.setenv("ASSETMGR_HOME", FIXED_HOME)
        shown = dataclasses.replace(
            settings, home=Path(FIXED_HOME), database_url=f"sqlite:///{FIXED_HOME}/catalog.sqlite3"
        )
        services = Services(shown, engine, runner=runner, sandbox_info=FakeSandboxInfo())
        return make_app(shown, services=services)

    return build


async def _steady(pilot: Pilot[Any]) -> None:
    for widget in pilot.app.screen.query("Input, TextArea"):
        if isinstance(widget, Input | TextArea):
            widget.cursor_blink = False
    await settle(pilot)


@pytest.mark.parametrize("size", list(SIZES))
def test_catalog_browser(
    snap_compare: Any, snapshot_app: Callable[[], AssetMgrApp], engine: Engine, size: str
) -> None:
    mark_local(engine, 920006)  # Detail Tweaker
    mark_local(engine, 920008)  # Film Grain's older version: "↑" update badge

    async def select_a_model(pilot: Pilot[Any]) -> None:
        await _steady(pilot)
        await pilot.press("down", "down", "down")  # Watercolor Botanicals
        await pilot.pause(0.2)
        await settle(pilot)

    assert snap_compare(snapshot_app(), terminal_size=SIZES[size], run_before=select_a_model)


def test_catalog_detail_on_a_small_terminal(
    snap_compare: Any, snapshot_app: Callable[[], AssetMgrApp]
) -> None:
    async def open_detail(pilot: Pilot[Any]) -> None:
        await _steady(pilot)
        await pilot.press("down", "enter")  # Retro Pixel Sprites, in the list's place
        await pilot.pause(0.2)
        await settle(pilot)

    assert snap_compare(snapshot_app(), terminal_size=SIZES["80x24"], run_before=open_detail)


def test_catalog_no_match_and_filter_line(
    snap_compare: Any, snapshot_app: Callable[[], AssetMgrApp]
) -> None:
    async def no_match(pilot: Pilot[Any]) -> None:
        await _steady(pilot)
        await pilot.press("f", "escape", "slash", *"zzzznothing", "enter")
        await pilot.pause(0.3)
        await settle(pilot)
        await _steady(pilot)

    assert snap_compare(snapshot_app(), terminal_size=SIZES["100x30"], run_before=no_match)


def test_catalog_search_and_lora_detail(
    snap_compare: Any, snapshot_app: Callable[[], AssetMgrApp]
) -> None:
    async def search(pilot: Pilot[Any]) -> None:
        await _steady(pilot)
        await pilot.press("slash", *"ink wash", "escape")
        await pilot.pause(0.3)
        await settle(pilot)

    assert snap_compare(snapshot_app(), terminal_size=SIZE, run_before=search)


@pytest.mark.parametrize("size", ["80x24", "160x48"])
def test_generate_screen(
    snap_compare: Any, snapshot_app: Callable[[], AssetMgrApp], size: str
) -> None:
    async def generate(pilot: Pilot[Any]) -> None:
        await pilot.press("f3")
        await settle(pilot)
        pilot.app.screen.query_one("#seed", Input).value = "1234"
        pilot.app.screen.query_one("#prompt", TextArea).text = "a lighthouse at dusk, <lora:x:0.8>"
        await _steady(pilot)

    assert snap_compare(snapshot_app(), terminal_size=SIZES[size], run_before=generate)


def test_sandbox_screen(snap_compare: Any, snapshot_app: Callable[[], AssetMgrApp]) -> None:
    assert snap_compare(snapshot_app(), press=["f4"], terminal_size=SIZE, run_before=_steady)


def test_settings_screen(snap_compare: Any, snapshot_app: Callable[[], AssetMgrApp]) -> None:
    assert snap_compare(snapshot_app(), press=["f5"], terminal_size=SIZE, run_before=_steady)


def test_help_screen(snap_compare: Any, snapshot_app: Callable[[], AssetMgrApp]) -> None:
    assert snap_compare(snapshot_app(), press=["f1"], terminal_size=SIZE, run_before=_steady)
