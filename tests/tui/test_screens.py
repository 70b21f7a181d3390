"""Sandbox and Settings screens, the help screen, the command palette and the key registry."""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import Engine
from textual.widgets import DataTable, Input

from assetmgr.config import Settings, read_config_file
from assetmgr.tui.actions import ACTIONS, SCOPES, bindings_for
from assetmgr.tui.app import AssetMgrApp
from assetmgr.tui.screens.help import HelpScreen
from assetmgr.tui.services import SandboxInfo, SandboxStatusInfo
from tests.app.fakes import FakeJobRunner
from tests.tui.conftest import (
    SIZE,
    FakeSandboxInfo,
    plain,
    settle,
    wait_until,
)


def test_every_action_has_an_id_a_tooltip_and_a_known_scope() -> None:
    ids = [spec.id for spec in ACTIONS]
    assert len(ids) == len(set(ids))
    for spec in ACTIONS:
        assert spec.scope in SCOPES and spec.id.startswith(spec.scope + ".")
        assert spec.tooltip and spec.description
    for scope in SCOPES:
        keys = [b.key for b in bindings_for(scope)]  # type: ignore[union-attr]
        assert len(keys) == len(set(keys)), f"duplicate key in {scope}"


async def test_sandbox_screen_shows_record_plugins_and_workers(
    build_app: Callable[..., AssetMgrApp],
) -> None:
    app = build_app()
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("f4")
        await settle(pilot)
        text = plain(app.sandbox_screen.query_one("#image-info"))
        assert "assetmgr-sandbox:0.1.0" in text and "verified" in text
        assert "hires-helper" in plain(app.sandbox_screen.query_one("#plugins-info"))
        assert "assetmgr-warm-1" in plain(app.sandbox_screen.query_one("#warm-info"))


async def test_sandbox_screen_says_what_is_missing(
    build_app: Callable[..., AssetMgrApp],
) -> None:
    app = build_app(
        sandbox_info=FakeSandboxInfo(
            SandboxInfo(
                image=None,
                image_note="not available: no sandbox image has been built yet",
                plugins_note="not available: plugin admission is not built yet",
                warm_note="not available: the Docker engine is not reachable",
            )
        )
    )
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("f4")
        await settle(pilot)
        for widget_id in ("#image-info", "#plugins-info", "#warm-info"):
            rendered = plain(app.sandbox_screen.query_one(widget_id))
            assert rendered.startswith("not available: ")


def test_real_sandbox_info_says_what_is_missing(engine: Engine) -> None:
    # Whatever this machine has (no image was built in this ASSETMGR_HOME), it is a value.
    from assetmgr.config import Settings
    from assetmgr.context import open_sandbox_service

    service = open_sandbox_service(Settings.load(), engine)
    info = SandboxStatusInfo(lambda: service).info()
    assert info.image is None and info.image_note.startswith("not available")
    assert info.plugins == [] and info.plugins_note


async def test_settings_save_key_masked_and_concurrency(
    build_app: Callable[..., AssetMgrApp],
) -> None:
    app = build_app()
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("f5")
        await settle(pilot)
        screen = app.settings_screen
        assert "(none)" in plain(screen.query_one("#key-current"))
        screen.query_one("#api-key", Input).value = "abcd1234efgh5678ijkl"
        screen.query_one("#download-concurrency", Input).value = "5"
        await pilot.press("ctrl+s")
        await settle(pilot)
        shown = plain(screen.query_one("#key-current"))
        assert "abcd…ijkl" in shown and "abcd1234efgh5678ijkl" not in shown
        assert screen.query_one("#api-key", Input).value == ""
        # ASSETMGR_NO_KEYRING (tests) sends the key to the 0600 config file.
        config = read_config_file()
        assert config["download_concurrency"] == 5
        assert Settings.load().api_key == "abcd1234efgh5678ijkl"
        assert app.services.settings.download_concurrency == 5


async def test_settings_never_show_the_database_password(
    settings: Settings, engine: Engine, runner: FakeJobRunner
) -> None:
    from dataclasses import replace

    from assetmgr.tui.app import make_app
    from assetmgr.tui.services import Services

    shown_settings = replace(
        settings, database_url="postgresql+psycopg://me:s3cret-pw@db.example:5432/catalog"
    )
    app = make_app(
        shown_settings,
        services=Services(shown_settings, engine, runner=runner, sandbox_info=FakeSandboxInfo()),
    )
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("f5")
        await settle(pilot)
        shown = plain(app.settings_screen.query_one("#store-info"))
        assert "db.example:5432/catalog" in shown and "s3cret-pw" not in shown


async def test_help_lists_every_action(build_app: Callable[..., AssetMgrApp]) -> None:
    app = build_app()
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("f1")
        await wait_until(pilot, lambda: isinstance(app.screen, HelpScreen))
        table = app.screen.query_one(DataTable)
        assert table.row_count == len(ACTIONS)
        ids = {table.get_row_at(i)[-1].plain for i in range(table.row_count)}
        assert ids == {spec.id for spec in ACTIONS}
        await pilot.press("escape")
        assert not isinstance(app.screen, HelpScreen)


async def test_command_palette_offers_screen_actions(
    build_app: Callable[..., AssetMgrApp],
) -> None:
    app = build_app()
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        titles = {c.title for c in app.get_system_commands(app.screen)}
        assert {"Sync", "Download", "Updates", "Generate", "Settings"} <= titles
        await pilot.press("ctrl+p", *"sandbox")
        await pilot.pause(0.3)
        await pilot.press("enter")
        await wait_until(pilot, lambda: app.screen.id == "sandbox", what="palette ran it")
