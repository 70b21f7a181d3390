"""The catalog browser on the demo catalog: listing, search, filters, sort, detail, previews."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

from PIL import Image
from sqlalchemy import Engine
from sqlmodel import Session
from textual.widgets import Input, Select, TextArea

from assetmgr import paths
from assetmgr.app import queries as q
from assetmgr.tui.app import AssetMgrApp
from assetmgr.tui.widgets.detail import DetailPane
from assetmgr.tui.widgets.model_table import ModelTable
from assetmgr.tui.widgets.preview import PreviewPane
from assetmgr.tui.workers import FIRST_PAGE_SIZE, PAGE_SIZE
from catalog import repo
from catalog.civitai.types import Model
from catalog.demo import demo_models
from tests.tui.conftest import SIZE, plain, settle, wait_until


def table_names(app: AssetMgrApp) -> list[str]:
    table = app.catalog.query_one(ModelTable)
    return [row.name for row in table.rows_by_id.values()]


async def test_first_page_detail_and_preview(build_app: Callable[..., AssetMgrApp]) -> None:
    app = build_app()
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        table = app.catalog.query_one(ModelTable)
        assert table.row_count == 12
        assert table_names(app)[0] == "Cinematic Realism XL"  # most downloads first
        assert app.catalog.total == 12
        pane = app.catalog.query_one(DetailPane)
        assert pane.detail is not None and pane.detail.name == "Cinematic Realism XL"
        assert "Cinematic SDXL merge." in pane.detail.description
        # The demo's bundled PNG is drawn in the terminal.
        await wait_until(pilot, lambda: app.catalog.query_one(PreviewPane).has_class("-has-image"))


async def test_search_as_you_type_and_escape(build_app: Callable[..., AssetMgrApp]) -> None:
    app = build_app()
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await pilot.press("slash", *"ink wa")
        await wait_until(pilot, lambda: table_names(app) == ["Ink Wash Style"], what="search")
        assert app.catalog.query_state.sort == "relevance"
        await pilot.press("escape")  # leaves the filter bar
        assert isinstance(app.focused, ModelTable)
        await pilot.press("slash", "ctrl+u", *"zzzznothing")
        await wait_until(pilot, lambda: app.catalog.loaded == 0 and not app.catalog.page_loading)


def expected_count(engine: Engine, **filters: object) -> int:
    with Session(engine) as session:
        return q.count_models(session, q.BrowseQuery(**filters))  # type: ignore[arg-type]


async def test_filters_sort_and_versions(
    build_app: Callable[..., AssetMgrApp], engine: Engine
) -> None:
    checkpoints = expected_count(engine, types=("Checkpoint",))
    sd15 = expected_count(engine, base_models=("SD 1.5",))
    photo = expected_count(engine, tags=("photorealistic",))
    assert 0 < min(checkpoints, sd15, photo) and max(checkpoints, sd15, photo) < 12
    app = build_app()
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        bar = app.catalog.query_one("#filters")
        bar.query_one("#type-filter", Select).value = "Checkpoint"
        await wait_until(pilot, lambda: len(table_names(app)) == checkpoints, what="type filter")
        bar.query_one("#type-filter", Select).clear()
        bar.query_one("#base-filter", Select).value = "SD 1.5"
        await wait_until(pilot, lambda: len(table_names(app)) == sd15, what="base filter")
        bar.query_one("#base-filter", Select).clear()
        tags = bar.query_one("#tag-filter", Input)
        tags.value = "photorealistic"
        await tags.action_submit()
        await wait_until(pilot, lambda: len(table_names(app)) == photo, what="tag filter")
        tags.value = ""
        await tags.action_submit()
        await wait_until(pilot, lambda: len(table_names(app)) == 12)
        app.catalog.query_one(ModelTable).focus()
        await pilot.press("o")  # downloads -> name (A-Z)
        await wait_until(pilot, lambda: app.catalog.query_state.sort == "name")
        await settle(pilot)
        assert table_names(app)[0] == "Cinematic Realism XL"
        assert table_names(app)[-1] == "Watercolor Botanicals"
        await pilot.press("O")  # reverse
        await settle(pilot)
        assert table_names(app)[0] == "Watercolor Botanicals"
        # Header click sorts by that column.
        await pilot.click("#models", offset=(2, 0))
        await settle(pilot)
        assert app.catalog.query_state.sort == "type"
        # Versions: the first model of this order has two; "]" shows the older one.
        await settle(pilot)
        pane = app.catalog.query_one(DetailPane)
        assert pane.detail is not None
        count = len(pane.detail.versions)
        await pilot.press("right_square_bracket")
        assert pane.version_index == min(1, count - 1)


async def test_local_only_and_nsfw_toggle(
    build_app: Callable[..., AssetMgrApp], engine: Engine
) -> None:
    # An NSFW twin of a demo model, with an R-rated preview image.
    base = demo_models()[1].model_dump(by_alias=True)
    base.update(id=919999, name="Spicy Ink", nsfw=True)
    for i, version in enumerate(base["modelVersions"]):
        version["id"] = 929990 + i
        for f in version["files"]:
            f["id"] = f["id"] + 9000
        for image in version.get("images", []):
            image["nsfwLevel"] = 4
    with Session(engine) as session, session.begin():
        repo.upsert_models(session, [Model.model_validate(base)], seen_at=datetime.now(UTC))
    # A user-supplied preview on disk ($ASSETMGR_HOME/previews/<version id>.png).
    previews = paths.home() / "previews"
    previews.mkdir(parents=True)
    Image.new("RGB", (32, 32), (200, 30, 30)).save(previews / "929990.png")
    app = build_app()
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        assert "Spicy Ink" not in table_names(app)  # NSFW is off by default
        await pilot.press("n")
        await wait_until(pilot, lambda: "Spicy Ink" in table_names(app), what="nsfw on")
        await pilot.press("slash", *"spicy", "escape")
        await wait_until(pilot, lambda: table_names(app) == ["Spicy Ink"])
        await settle(pilot)
        preview = app.catalog.query_one(PreviewPane)
        # Above the threshold: only the BlurHash, blurred, until revealed.
        assert "NSFW · blurred" in plain(preview.query_one(".preview-note"))
        await pilot.press("r")
        await settle(pilot)
        await wait_until(
            pilot,
            lambda: (
                preview.has_class("-has-image")
                and not plain(preview.query_one(".preview-note")).strip()
            ),
            what="revealed",
        )
        await pilot.press("l")  # local only: nothing is local
        await wait_until(pilot, lambda: app.catalog.loaded == 0 and not app.catalog.page_loading)


async def test_trigger_words_copy_and_to_prompt(build_app: Callable[..., AssetMgrApp]) -> None:
    app = build_app()
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await pilot.press("slash", *"ink wash", "escape")
        await wait_until(pilot, lambda: table_names(app) == ["Ink Wash Style"])
        await settle(pilot)
        await pilot.press("y")
        assert app.clipboard == "inkwash style, monochrome brush strokes"
        pane = app.catalog.query_one(DetailPane)
        assert pane.version is not None and pane.version.weight.value == 0.75
        await pilot.click(".word")  # one word button copies that word
        assert app.clipboard == "inkwash style"
        await pilot.press("g")
        await pilot.press("f3")
        await settle(pilot)
        prompt = app.generate_screen.query_one("#prompt", TextArea).text
        assert prompt.startswith("<lora:InkWashStyle_v11Pony:0.75>, inkwash style")


async def test_more_rows_load_near_the_end(
    build_app: Callable[..., AssetMgrApp], many: int
) -> None:
    app = build_app()
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        table = app.catalog.query_one(ModelTable)
        total = app.catalog.total
        assert total is not None and total > FIRST_PAGE_SIZE + PAGE_SIZE
        # A small first page, plus one more when the screen shows nearly all of it.
        assert table.row_count in (FIRST_PAGE_SIZE, FIRST_PAGE_SIZE + PAGE_SIZE)
        pages = 1 if table.row_count == FIRST_PAGE_SIZE else 2
        while table.row_count < total:
            before = table.row_count
            await pilot.press("end")  # the cursor near the end asks for the next page
            await wait_until(
                pilot,
                lambda: table.row_count > before,  # noqa: B023  (awaited right here)
                what="next page",
            )
            assert table.row_count - before <= PAGE_SIZE
            pages += 1
        await settle(pilot)
        assert app.catalog.exhausted and pages == 1 + -(-(total - FIRST_PAGE_SIZE) // PAGE_SIZE)
        assert len(table.rows_by_id) == total


async def test_brackets_in_names_are_text_not_markup(
    build_app: Callable[..., AssetMgrApp], engine: Engine
) -> None:
    base = demo_models()[3].model_dump(by_alias=True)
    base.update(id=919998, name="[Pony] Bracket [b]Test[/b]")
    base["creator"]["username"] = "[red]team"
    for i, version in enumerate(base["modelVersions"]):
        version["id"] = 929980 + i
        for f in version["files"]:
            f["id"] = f["id"] + 8000
    with Session(engine) as session, session.begin():
        repo.upsert_models(session, [Model.model_validate(base)], seen_at=datetime.now(UTC))
    app = build_app()
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("slash", *"bracket", "escape")
        await wait_until(pilot, lambda: table_names(app) == ["[Pony] Bracket [b]Test[/b]"])
        await settle(pilot)
        table = app.catalog.query_one(ModelTable)
        assert table.get_row_at(0)[2].plain == "[Pony] Bracket [b]Test[/b]"
        assert table.get_row_at(0)[3].plain == "[red]team"
        assert "[Pony] Bracket [b]Test[/b]" in plain(app.catalog.query_one("#detail-title"))
