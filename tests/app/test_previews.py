"""The preview use cases the TUI calls (`ctx.previews()`), on a real catalog and cache against
the fake Civitai serving images: a version's images, placeholders, the NSFW threshold, fetch,
remembered refusals, one request for one image, background prefetch, and generation data."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from sqlalchemy import Engine

from assetmgr.app.context import AppContext
from assetmgr.app.models import show_model
from assetmgr.app.previews import CatalogImage, PreviewHeldBackError
from assetmgr.config import Settings
from assetmgr.store.thumbnails import ImageRejectedError
from catalog import repo
from catalog.civitai.client import CivitaiClient, ModelFilters
from catalog.db import session_scope
from tests.fakeciv import FakeCatalog, FakeCivitai
from tests.fakeciv.images import FakeImages


@pytest.fixture
def images() -> FakeImages:
    return FakeImages()


@pytest.fixture
def fake(images: FakeImages) -> Iterator[FakeCivitai]:
    catalog = FakeCatalog.generate(8, seed=3, images_per_version=(2, 3))
    with FakeCivitai(catalog, images=images) as server:
        yield server


@pytest.fixture
def ctx(fake: FakeCivitai, engine: Engine) -> Iterator[AppContext]:
    with CivitaiClient(base_url=fake.base_url) as client:
        models = list(client.iter_models(ModelFilters(nsfw=True)))
    with session_scope(engine, write=True) as session:
        repo.upsert_models(session, models, seen_at=datetime.now(UTC))
    settings = Settings.load(api_base=fake.base_url)
    with AppContext(settings, engine=engine) as context:
        yield context


def all_images(ctx: AppContext) -> dict[int, list[CatalogImage]]:
    from sqlmodel import col, select

    from catalog.models import ModelVersion

    with session_scope(ctx.engine) as session:
        ids = list(session.exec(select(col(ModelVersion.id))))
    return ctx.previews().images(ids)


def a_still(ctx: AppContext, *, above: bool) -> CatalogImage:
    service = ctx.previews()
    return next(
        i
        for images in all_images(ctx).values()
        for i in images
        if i.is_still and service.held_back(i) == above
    )


def test_images_placeholders_and_the_threshold(ctx: AppContext) -> None:
    service = ctx.previews()
    by_version = all_images(ctx)
    every = [i for images in by_version.values() for i in images]
    assert every and all(i.origin == "civitai" and i.key == i.url for i in every)
    for images in by_version.values():
        assert [i.position for i in images] == sorted(i.position for i in images)
    still = a_still(ctx, above=False)
    picture = service.placeholder(still)
    assert picture is not None and picture.mode == "RGB"
    assert max(picture.size) == 32
    assert (picture.width < picture.height) == ((still.width or 0) < (still.height or 0))
    broken = CatalogImage(**{**still.__dict__, "blurhash": "not a blurhash"})
    assert service.placeholder(broken) is None
    above = a_still(ctx, above=True)
    assert (above.nsfw_level or 0) > 1
    unrated = CatalogImage(**{**still.__dict__, "nsfw_level": None})
    assert service.held_back(unrated)
    assert not service.held_back(CatalogImage(**{**unrated.__dict__, "origin": "sidecar"}))


def test_fetch_cached_and_reveal(ctx: AppContext, fake: FakeCivitai) -> None:
    service = ctx.previews()
    still = a_still(ctx, above=False)
    assert service.cached(still) is None
    assert service.picture(still) is None  # never fetches by itself
    fetched = service.fetch(still)
    assert fetched.path.exists()
    shown = service.picture(still)
    assert shown is not None and shown.size == (fetched.width, fetched.height)
    assert still.nsfw_name == "PG"
    again = service.cached(still)
    assert again is not None and again.path == fetched.path
    assert again.last_used >= fetched.last_used
    above = a_still(ctx, above=True)
    fake.reset_log()
    with pytest.raises(PreviewHeldBackError):
        service.fetch(above)
    assert fake.count_prefix("/img/") == 0  # held back: not even asked for
    assert service.fetch(above, reveal=True).path.exists()


def test_a_refusal_is_remembered_for_the_session(
    ctx: AppContext, fake: FakeCivitai, images: FakeImages
) -> None:
    service = ctx.previews()
    still = a_still(ctx, above=False)
    assert still.url is not None
    images.make_hostile(int(still.url.rsplit("/", 1)[1].split(".")[0]), "bomb")
    with pytest.raises(ImageRejectedError):
        service.fetch(still)
    asked = fake.count_prefix("/img/")
    with pytest.raises(ImageRejectedError):
        service.fetch(still)
    assert fake.count_prefix("/img/") == asked  # not asked again
    with pytest.raises(ImageRejectedError):
        service.fetch(still, retry=True)
    assert fake.count_prefix("/img/") == asked + 1
    assert service.cached(still) is None


def test_one_image_is_asked_for_once_by_several_threads(ctx: AppContext, fake: FakeCivitai) -> None:
    service = ctx.previews()
    still = a_still(ctx, above=False)
    fake.reset_log()
    fake.faults.schedule(["delay:0.3"], path="/img/")  # the first one is slow to answer
    results = []
    threads = [
        threading.Thread(target=lambda: results.append(service.fetch(still))) for _ in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({r.path for r in results}) == 1 and len(results) == 4
    assert fake.count_prefix("/img/") == 1


def test_prefetch_fills_the_selected_model_and_its_neighbours(ctx: AppContext) -> None:
    service = ctx.previews()
    by_model: dict[int, list[CatalogImage]] = {}
    for images in all_images(ctx).values():
        for image in images:
            by_model.setdefault(image.model_id, []).append(image)
    selected, *neighbours = sorted(by_model)
    items = service.prefetch(selected, neighbours[:2])
    states = {(i.image.key, i.state, i.reason) for i in items}
    for image in by_model[selected]:
        if image.is_still and not service.held_back(image):
            assert (image.key, "fetched", None) in states
        elif image.is_still:
            assert (image.key, "skipped", "nsfw") in states
    for neighbour in neighbours[:2]:
        versions = {i.version_id for i in by_model[neighbour]}
        assert sum(1 for i in items if i.image.model_id == neighbour) == len(versions)
    assert all(i.image.model_id in (selected, *neighbours[:2]) for i in items)
    stop = threading.Event()
    stop.set()
    assert {i.reason for i in service.prefetch(neighbours[-1], cancel=stop)} <= {"cancelled"}


def test_show_lists_generation_data_from_a_standalone_version(
    ctx: AppContext, fake: FakeCivitai
) -> None:
    version = next(v for v in fake.catalog.versions.values() if any(i.meta for i in v.images))
    with CivitaiClient(base_url=fake.base_url) as client:
        standalone = client.get_model_version(version.id)
    with session_scope(ctx.engine, write=True) as session:
        repo.upsert_version(session, standalone, seen_at=datetime.now(UTC))
    shown = show_model(ctx, version.model_id)
    listed = next(v for v in shown["versions"] if v["id"] == version.id)["images"]
    metas = [i["meta"] for i in listed if i["meta"]]
    assert metas and metas == [i.meta for i in version.images if i.meta][: len(metas)]
    assert {i["url"].rsplit("/", 1)[1] for i in listed} <= {
        i.url.rsplit("/", 1)[1] for i in version.images
    }
