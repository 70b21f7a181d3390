"""First run and small terminals: the layouts at 80x24, 100x30 and 160x48, the demo banner,
the detail pane when nothing matches, and the filter line on demand."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import Engine, select
from sqlmodel import Session
from textual.widgets import OptionList, Select, Static

from assetmgr.store import records
from assetmgr.tui.app import AssetMgrApp, make_app
from assetmgr.tui.screens.catalog import CatalogScreen
from assetmgr.tui.services import Services
from assetmgr.tui.widgets.detail import DetailPane
from assetmgr.tui.widgets.model_table import ModelTable, fit_columns
from catalog.models import ModelFile
from tests.app.fakes import FakeJobRunner
from tests.tui.conftest import FakeSandboxInfo, plain, settle, wait_until

SMALL, MEDIUM, WIDE = (80, 24), (100, 30), (160, 48)
NO_MATCH = "No model matches. Change the filters, or press s to sync from Civitai."


def mark_local(engine: Engine, version_id: int) -> None:
    """A demo version's primary file recorded as verified (no bytes needed to show it)."""
    with Session(engine) as session, session.begin():
        file = (
            session.execute(
                select(ModelFile).where(ModelFile.version_id == version_id)  # type: ignore[arg-type]
            )
            .scalars()
            .first()
        )
        assert file is not None and file.sha256
        records.set_local_state(
            session, file_id=file.id, sha256=file.sha256, state="verified", path=None
        )


def shown(widget: Any) -> bool:
    """Displayed, and every container above it too (CSS can hide any of them)."""
    return all(node.display for node in [widget, *widget.ancestors_with_self])


def cell(table: ModelTable, model_id: int, column: str) -> str:
    return str(table.get_cell(str(model_id), column))


@pytest.mark.parametrize(
    ("size", "mode", "columns"),
    [
        (SMALL, "single", ["type", "base", "name", "downloads", "local"]),
        (MEDIUM, "stacked", ["type", "base", "name", "creator", "downloads", "local"]),
        (WIDE, "side", ["type", "base", "name", "creator", "downloads", "local"]),
    ],
)
async def test_layout_keeps_name_type_and_local_at_every_size(
    build_app: Callable[..., AssetMgrApp],
    engine: Engine,
    size: tuple[int, int],
    mode: str,
    columns: list[str],
) -> None:
    mark_local(engine, 920006)  # Detail Tweaker
    mark_local(engine, 920008)  # Film Grain's older version: an update is available
    app = build_app()
    async with app.run_test(size=size) as pilot:
        await settle(pilot)
        screen = app.catalog
        table = screen.query_one(ModelTable)
        assert screen.mode == mode
        assert table.shown_columns == columns
        # Every shown column fits: nothing is cut off at the right edge.
        widths = sum(width + 2 for _, width in table.column_layout)
        assert widths <= table.size.width
        assert cell(table, 910004, "local") == "✓ local"
        assert cell(table, 910005, "local") == "✓ local ↑"
        assert cell(table, 910004, "name") == "Detail Tweaker"
        assert cell(table, 910004, "type") == "LORA"
        detail = screen.query_one(DetailPane)
        type_filter = screen.query_one("#type-filter")
        if mode == "single":
            assert not shown(detail)
            assert not shown(type_filter)
            assert shown(screen.query_one("#more-filters"))
        elif mode == "stacked":
            assert shown(detail) and detail.region.y > table.region.bottom - 1
            assert detail.region.width == table.region.width
            assert not shown(type_filter)
        else:
            assert shown(detail) and detail.region.x >= table.region.right
            assert shown(type_filter)
            assert not shown(screen.query_one("#more-filters"))
        assert shown(screen.query_one("#search"))
        assert shown(screen.query_one("#local-filter"))


def test_columns_fit_any_width() -> None:
    for width in range(40, 200):
        layout = fit_columns(width)
        keys = [c.key for c, _ in layout]
        assert {"name", "type", "local"} <= set(keys)
        if width >= 60:
            assert sum(w + 2 for _, w in layout) <= width - 2, width


async def test_small_terminal_opens_the_detail_in_place_of_the_list(
    build_app: Callable[..., AssetMgrApp],
) -> None:
    app = build_app()
    async with app.run_test(size=SMALL) as pilot:
        await settle(pilot)
        screen = app.catalog
        table, detail = screen.query_one(ModelTable), screen.query_one(DetailPane)
        await pilot.press("down", "down")
        await settle(pilot)
        wanted = table.selected_model_id
        await pilot.press("enter")
        await settle(pilot)
        assert shown(detail) and not shown(table)
        assert detail.detail is not None and detail.detail.id == wanted
        assert app.focused is not None and detail in app.focused.ancestors_with_self
        await pilot.press("escape")  # back to the list, on the same row
        assert shown(table) and not shown(detail)
        assert app.focused is table and table.selected_model_id == wanted
        await pilot.press("v")
        assert shown(detail) and not shown(table)
        await pilot.press("v")
        assert shown(table) and not shown(detail)
        assert not app.jobs.all()  # Escape went back; it cancelled nothing


async def test_wide_terminal_hides_the_detail_on_request(
    build_app: Callable[..., AssetMgrApp],
) -> None:
    app = build_app()
    async with app.run_test(size=WIDE) as pilot:
        await settle(pilot)
        table, detail = app.catalog.query_one(ModelTable), app.catalog.query_one(DetailPane)
        narrow = table.region.width
        await pilot.press("v")
        await pilot.pause()
        assert not shown(detail) and table.region.width > narrow
        await pilot.press("v")
        await pilot.pause()
        assert shown(detail) and table.region.width == narrow


async def test_the_filter_line_opens_on_demand_and_active_filters_stay_visible(
    build_app: Callable[..., AssetMgrApp],
) -> None:
    app = build_app()
    async with app.run_test(size=SMALL) as pilot:
        await settle(pilot)
        screen = app.catalog
        type_filter = screen.query_one("#type-filter", Select)
        table = screen.query_one(ModelTable)
        rows_before = table.region.height
        await pilot.press("f")
        await pilot.pause()
        assert shown(type_filter) and app.focused is type_filter
        assert table.region.height == rows_before - 1  # the second line takes one row
        type_filter.value = "LORA"
        await wait_until(
            pilot, lambda: screen.query_state.types == ("LORA",) and not screen.page_loading
        )
        await settle(pilot)
        await pilot.press("escape", "f")  # leave the bar, close the line
        await pilot.pause()
        assert not shown(type_filter)
        assert table.region.height == rows_before
        # The filter is hidden but still applies, and the status line says so.
        assert "type: LORA" in plain(screen.query_one("#status"))
        assert all(row.type == "LORA" for row in table.rows_by_id.values())
        # The Filters button does the same as the key.
        await pilot.click("#more-filters")
        await pilot.pause()
        assert shown(type_filter)


async def test_resizing_keeps_the_selected_model(build_app: Callable[..., AssetMgrApp]) -> None:
    app = build_app()
    async with app.run_test(size=WIDE) as pilot:
        await settle(pilot)
        table = app.catalog.query_one(ModelTable)
        await pilot.press("down", "down", "down")
        await settle(pilot)
        wanted = table.selected_model_id
        detail = app.catalog.query_one(DetailPane)
        assert detail.detail is not None and detail.detail.id == wanted
        await pilot.resize_terminal(*SMALL)
        await settle(pilot)
        assert app.catalog.mode == "single" and "creator" not in table.shown_columns
        assert table.selected_model_id == wanted and table.row_count == 12
        assert detail.detail is not None and detail.detail.id == wanted
        await pilot.resize_terminal(*MEDIUM)
        await settle(pilot)
        assert app.catalog.mode == "stacked" and shown(detail)
        assert table.selected_model_id == wanted


# --- the demo banner -------------------------------------------------------------------------


def banner(app: AssetMgrApp) -> Static:
    return app.catalog.query_one("#banner", Static)


async def test_the_demo_catalog_says_so_with_the_key_to_sync(
    build_app: Callable[..., AssetMgrApp],
) -> None:
    app = build_app()
    async with app.run_test(size=SMALL) as pilot:
        await settle(pilot)
        assert app.catalog.is_demo and shown(banner(app))
        text = plain(banner(app)).strip()
        assert text == "Demo catalog (offline sample models) · press s to sync from Civitai"
        assert len(text) <= SMALL[0] - 2  # one line at 80 columns


async def test_no_banner_once_real_models_are_in(
    build_app: Callable[..., AssetMgrApp], many: int
) -> None:
    app = build_app()
    async with app.run_test(size=SMALL) as pilot:
        await settle(pilot)
        assert not app.catalog.is_demo and not shown(banner(app))


async def test_a_real_sync_takes_the_banner_away(
    build_fake_app: Callable[..., AssetMgrApp],
) -> None:
    app = build_fake_app()
    async with app.run_test(size=MEDIUM) as pilot:
        await settle(pilot)
        assert shown(banner(app))
        await pilot.press("s")
        await wait_until(pilot, lambda: not app.jobs.active("sync"), what="sync")
        assert app.jobs.all()[-1].status == "done"
        await wait_until(pilot, lambda: not app.catalog.is_demo, what="demo state checked")
        assert not shown(banner(app))


async def test_an_unreachable_civitai_is_named_in_the_banner(
    settings: Any, engine: Engine, runner: FakeJobRunner
) -> None:
    from catalog.civitai.client import CivitaiClient
    from catalog.civitai.retry import RetryPolicy

    def unreachable() -> CivitaiClient:  # a closed port on this machine
        return CivitaiClient(
            base_url="http://127.0.0.1:9",
            retry=RetryPolicy(max_attempts=1, base_delay=0.01, max_delay=0.01),
            sleep=lambda s: None,
        )

    services = Services(
        settings,
        engine,
        client_factory=unreachable,
        runner=runner,
        sandbox_info=FakeSandboxInfo(),
    )
    app = make_app(settings, services=services)
    async with app.run_test(size=SMALL) as pilot:
        await settle(pilot)
        await pilot.press("s")
        await wait_until(pilot, lambda: not app.jobs.active("sync"), what="sync failed")
        await pilot.press("escape")  # the error modal
        text = plain(banner(app)).strip()
        assert text.startswith(
            "Demo catalog · press s to retry the sync · Civitai was unreachable: "
        )
        # The banner wraps at 80 columns: compare with the line breaks taken out.
        assert app.civitai_unreachable is not None
        assert app.civitai_unreachable in " ".join(text.split())


async def test_a_sync_into_an_empty_catalog_with_civitai_unreachable_seeds_the_demo(
    settings: Any, runner: FakeJobRunner
) -> None:
    """As `assetmgr sync`: an empty catalog gets the demo catalog, and the banner says why."""
    from catalog.civitai.client import CivitaiClient
    from catalog.civitai.retry import RetryPolicy
    from catalog.db import open_catalog
    from catalog.demo import catalog_is_empty, is_demo_catalog

    def unreachable() -> CivitaiClient:  # a closed port on this machine
        return CivitaiClient(
            base_url="http://127.0.0.1:9",
            retry=RetryPolicy(max_attempts=1, base_delay=0.01, max_delay=0.01),
            sleep=lambda s: None,
        )

    empty = open_catalog(settings.database_url)
    try:
        assert catalog_is_empty(empty)
        services = Services(
            settings,
            empty,
            client_factory=unreachable,
            runner=runner,
            sandbox_info=FakeSandboxInfo(),
        )
        app = make_app(settings, services=services)
        async with app.run_test(size=SMALL) as pilot:
            await settle(pilot)
            assert not shown(banner(app))
            await pilot.press("s")
            await wait_until(pilot, lambda: not app.jobs.active("sync"), what="sync")
            job = app.jobs.all()[-1]
            assert job.status == "done", job
            assert job.summary.startswith(
                "Civitai is unreachable; seeded the demo catalog instead ("
            )
            await wait_until(pilot, lambda: app.catalog.is_demo, what="demo state checked")
            text = plain(banner(app)).strip()
            assert text.startswith(
                "Demo catalog · press s to retry the sync · Civitai was unreachable: "
            )
            assert app.civitai_unreachable is not None
            assert app.civitai_unreachable in " ".join(text.split())
        assert is_demo_catalog(empty)
    finally:
        empty.dispose()


# --- nothing matches -------------------------------------------------------------------------


async def test_a_search_that_matches_nothing_clears_the_detail(
    build_app: Callable[..., AssetMgrApp],
) -> None:
    app = build_app()
    async with app.run_test(size=MEDIUM) as pilot:
        await settle(pilot)
        screen: CatalogScreen = app.catalog
        pane = screen.query_one(DetailPane)
        previous = pane.detail
        assert previous is not None and previous.name == "Cinematic Realism XL"
        await pilot.press("slash", *"zzzznothing", "enter")
        await wait_until(
            pilot,
            lambda: screen.total == 0 and screen.loaded == 0 and not screen.page_loading,
            what="empty result",
        )
        await settle(pilot)
        assert pane.detail is None and pane.version is None
        assert plain(pane.query_one("#detail-title")).strip() == NO_MATCH
        for part in ("#detail-meta", "#version-info", "#files", "#description"):
            assert plain(pane.query_one(part)).strip() == "", part
        assert pane.query_one("#versions", OptionList).option_count == 0
        assert not shown(pane.query_one("#versions"))
        assert not any(shown(label) for label in pane.query(".section"))
        assert "no model matches" in plain(screen.query_one("#status"))
        # The old model's detail arriving late is dropped; keys find nothing to act on.
        screen.show_detail(previous)
        assert pane.detail is None
        await pilot.press("escape", "d", "x", "y")
        await settle(pilot)
        assert not app.jobs.all()
        # A search that matches again fills the pane again.
        await pilot.press("slash", "ctrl+u", *"ink wash", "enter")
        await wait_until(pilot, lambda: pane.detail is not None, what="detail again")
        assert pane.detail is not None and pane.detail.name == "Ink Wash Style"
        assert shown(pane.query_one("#versions"))


async def test_a_resize_while_another_screen_is_shown_applies_on_return(
    build_app: Callable[..., AssetMgrApp],
) -> None:
    app = build_app()
    async with app.run_test(size=WIDE) as pilot:
        await settle(pilot)
        await pilot.press("f3")
        await settle(pilot)
        await pilot.resize_terminal(*SMALL)
        await settle(pilot)
        await pilot.press("f2")
        await settle(pilot)
        assert app.catalog.mode == "single"
        assert not shown(app.catalog.query_one(DetailPane))
        assert "creator" not in app.catalog.query_one(ModelTable).shown_columns
