"""The detail pane's example images against the fake Civitai serving real and hostile
pictures: the BlurHash at once, the fetched thumbnail (snapshot), stepping through a
version's images with their generation data, NSFW blurred and never fetched until revealed,
and a hostile image refused with one line."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from sqlalchemy import Engine, update
from sqlmodel import Session
from textual.widgets import Static

from assetmgr.config import Settings
from assetmgr.tui.app import AssetMgrApp, make_app
from assetmgr.tui.gallery import Entry
from assetmgr.tui.services import Services
from assetmgr.tui.widgets.detail import DetailPane
from assetmgr.tui.widgets.preview import PreviewPane
from catalog.models import Image as ImageRow
from tests.app.fakes import FakeJobRunner
from tests.fakeciv import FakeCatalog, FakeCivitai
from tests.fakeciv.images import FakeImages
from tests.tui.conftest import SIZE, FakeSandboxInfo, plain, settle, sync_models, wait_until

NSFW_X = 8
META = {
    "prompt": "a lighthouse at dusk, [red] markup",
    "negativePrompt": "blurry",
    "sampler": "Euler a",
    "steps": 28,
    "cfgScale": 6.5,
    "seed": 4242,
    "Size": "512x768",
    "Clip skip": 2,
}


@pytest.fixture
def gallery_catalog() -> FakeCatalog:
    """Models whose every version has three still images: PG, PG, then X."""
    catalog = FakeCatalog.generate(8, seed=21, images_per_version=(3, 3))
    for version in catalog.versions.values():
        for image in version.images:
            if image.type != "image":  # a still, served as a JPEG
                image.type, image.url = "image", image.url.rsplit(".", 1)[0] + ".jpeg"
            image.nsfw_level = 1
            image.meta = None
        version.images[2].nsfw_level = NSFW_X
    return catalog


@pytest.fixture
def images() -> FakeImages:
    return FakeImages()


@pytest.fixture
def civitai(gallery_catalog: FakeCatalog, images: FakeImages) -> Iterator[FakeCivitai]:
    with FakeCivitai(gallery_catalog, images=images) as fake:
        yield fake


@pytest.fixture
def model_id(civitai: FakeCivitai, gallery_catalog: FakeCatalog, engine: Engine) -> int:
    """The first model, synced into the catalog; its images carry generation data (as if
    `/api/v1/images` had been asked) except the first."""
    model = next(iter(gallery_catalog.models.values()))
    sync_models(engine, civitai, [model.id])
    with Session(engine) as session, session.begin():
        session.execute(
            update(ImageRow).where(ImageRow.position > 0).values(meta=META)  # type: ignore[arg-type]
        )
    return model.id


@pytest.fixture
def gallery_app(
    settings: Settings, engine: Engine, civitai: FakeCivitai, runner: FakeJobRunner
) -> Callable[[], AssetMgrApp]:
    import dataclasses

    from catalog.civitai.client import CivitaiClient

    shown = dataclasses.replace(settings, api_base=civitai.base_url)

    def build() -> AssetMgrApp:
        services = Services(
            shown,
            engine,
            client_factory=lambda: CivitaiClient(base_url=civitai.base_url),
            runner=runner,
            sandbox_info=FakeSandboxInfo(),
        )
        return make_app(shown, services=services)

    return build


def image_paths(civitai: FakeCivitai) -> list[str]:
    return [r.path for r in civitai.api_requests if r.path.startswith("/img/")]


def image_id(entry: Entry) -> int:
    assert entry.image is not None and entry.image.url is not None
    return int(entry.image.url.rsplit("/", 1)[1].split(".", 1)[0])


async def select(pilot: Any, app: AssetMgrApp, model_id: int) -> DetailPane:
    await settle(pilot)
    app.catalog._request_detail(model_id, immediate=True)
    pane = app.catalog.query_one(DetailPane)
    await wait_until(pilot, lambda: pane.detail is not None and pane.detail.id == model_id)
    await settle(pilot)
    return pane


def note(app: AssetMgrApp) -> str:
    """The preview's note as set (the widget wraps it to its width)."""
    content = app.catalog.query_one(PreviewPane).query_one(".preview-note", Static).content
    return str(getattr(content, "plain", content))


async def test_steps_through_images_with_their_generation_data(
    gallery_app: Callable[[], AssetMgrApp], model_id: int, civitai: FakeCivitai
) -> None:
    app = gallery_app()
    async with app.run_test(size=SIZE) as pilot:
        pane = await select(pilot, app, model_id)
        preview = app.catalog.query_one(PreviewPane)
        assert len(pane.gallery) == 3 and pane.image_index == 0
        assert plain(pane.query_one("#image-caption")).startswith("image 1 of 3 · PG")
        assert "no generation data" in plain(pane.query_one("#image-meta"))
        assert not pane.query_one(".use-prompt").display
        await wait_until(pilot, lambda: preview.has_class("-has-image") and not note(app))
        await pilot.press("full_stop")
        await settle(pilot)
        assert pane.image_index == 1
        assert plain(pane.query_one("#image-caption")).startswith("image 2 of 3 · PG")
        shown = plain(pane.query_one("#image-meta"))
        assert "a lighthouse at dusk, [red] markup" in shown  # as text, never as markup
        assert "negative blurry" in shown
        assert "Euler a · 28 steps · CFG 6.5 · seed 4242 · 512×768 · clip skip 2" in shown
        assert pane.query_one(".use-prompt").display  # "Use this prompt" follows the image
        assert pane.image_meta is not None and pane.image_meta["seed"] == 4242
        await pilot.press("comma", "comma")
        await settle(pilot)
        assert pane.image_index == 2
        assert plain(pane.query_one("#image-caption")).startswith("image 3 of 3 · X")


async def test_nsfw_image_is_blurred_and_fetched_only_when_revealed(
    gallery_app: Callable[[], AssetMgrApp], model_id: int, civitai: FakeCivitai
) -> None:
    app = gallery_app()
    async with app.run_test(size=SIZE) as pilot:
        pane = await select(pilot, app, model_id)
        civitai.reset_log()
        await pilot.press("full_stop", "full_stop")
        await settle(pilot)
        await settle(pilot)  # the prefetch of the model and its neighbours is done too
        held = pane.gallery[2]
        assert pane.image_index == 2 and held.image is not None
        preview = app.catalog.query_one(PreviewPane)
        assert preview.has_class("-has-image") and note(app) == "NSFW · blurred"
        assert "above your NSFW threshold (PG) · press r to reveal" in plain(
            pane.query_one("#image-caption")
        )
        x_ids = {image_id(e) for e in pane.gallery if e.image and e.image.nsfw_level == NSFW_X}
        assert not [p for p in image_paths(civitai) if any(f"/{i}." in p for i in x_ids)]
        await pilot.press("r")
        await wait_until(pilot, lambda: not note(app), what=f"revealed ({note(app)})")
        fetched = [p for p in image_paths(civitai) if f"/{image_id(held)}." in p]
        assert len(fetched) == 1 and "/width=512/" in fetched[0]
        # Only the revealed one: the version's other X images were not fetched with it.
        others = x_ids - {image_id(held)}
        assert not [p for p in image_paths(civitai) if any(f"/{i}." in p for i in others)]


async def test_hostile_image_is_refused_with_one_line(
    gallery_app: Callable[[], AssetMgrApp],
    model_id: int,
    images: FakeImages,
    gallery_catalog: FakeCatalog,
) -> None:
    first = gallery_catalog.models[model_id].published_versions[0].images[0]
    images.make_hostile(first.id, "bomb")
    app = gallery_app()
    async with app.run_test(size=SIZE) as pilot:
        pane = await select(pilot, app, model_id)
        assert pane.image_index == 0 and image_id(pane.gallery[0]) == first.id
        await wait_until(pilot, lambda: note(app).startswith("Preview refused"), what="refusal")
        line = note(app)
        assert "\n" not in line and "decompression bomb" in line
        assert "need the network" not in line
        await pilot.press("full_stop")  # the app goes on: the next image comes
        preview = app.catalog.query_one(PreviewPane)
        await wait_until(pilot, lambda: preview.has_class("-has-image") and not note(app))


async def test_offline_says_why_in_one_line(
    settings: Settings, engine: Engine, runner: FakeJobRunner, model_id: int, civitai: FakeCivitai
) -> None:
    import dataclasses

    from catalog.civitai.client import CivitaiClient
    from catalog.civitai.retry import RetryPolicy

    base_url = civitai.base_url
    civitai.stop()  # the network is gone: nothing answers on the images' origin
    shown = dataclasses.replace(settings, api_base=base_url)
    services = Services(
        shown,
        engine,
        client_factory=lambda: CivitaiClient(
            base_url=base_url,
            retry=RetryPolicy(max_attempts=2, base_delay=0.01, max_delay=0.02),
            sleep=lambda s: None,
        ),
        runner=runner,
        sandbox_info=FakeSandboxInfo(),
    )
    app = make_app(shown, services=services)
    async with app.run_test(size=SIZE) as pilot:
        await select(pilot, app, model_id)
        await wait_until(pilot, lambda: "need the network" in note(app), what=note(app))
        assert note(app).startswith("Civitai previews need the network: ")
        assert "\n" not in note(app)


async def test_missing_generation_data_is_asked_from_the_images_endpoint(
    gallery_app: Callable[[], AssetMgrApp],
    model_id: int,
    civitai: FakeCivitai,
    gallery_catalog: FakeCatalog,
) -> None:
    version = gallery_catalog.models[model_id].published_versions[0]
    version.images[0].meta = {**META, "prompt": "from the images endpoint", "seed": 77}
    version.images[1].meta = {"prompt": "x" * 40_000}  # over the stored bound: refused
    app = gallery_app()
    async with app.run_test(size=SIZE) as pilot:
        pane = await select(pilot, app, model_id)
        await wait_until(
            pilot,
            lambda: "from the images endpoint" in plain(pane.query_one("#image-meta")),
            what="generation data",
        )

        def asked() -> list[Any]:
            wanted = f"modelVersionId={version.id}&"
            return [
                r
                for r in civitai.api_requests
                if r.path == "/api/v1/images" and wanted in r.query + "&"
            ]

        assert len(asked()) == 1
        assert "withMeta=true" in asked()[0].query
        assert pane.image_meta is not None and pane.image_meta["seed"] == 77
        assert pane.query_one(".use-prompt").display
        assert pane.gallery[1].meta == META  # the oversized answer was not stored
        await pilot.press("full_stop", "comma")
        await settle(pilot)
        assert len(asked()) == 1  # asked once a session


def test_detail_pane_with_a_fetched_preview(
    snap_compare: Any, gallery_app: Callable[[], AssetMgrApp], model_id: int
) -> None:
    async def run_before(pilot: Any) -> None:
        app = pilot.app
        await select(pilot, app, model_id)
        preview = app.catalog.query_one(PreviewPane)
        await wait_until(pilot, lambda: preview.has_class("-has-image") and not note(app))
        await settle(pilot)

    assert snap_compare(gallery_app(), terminal_size=SIZE, run_before=run_before)
