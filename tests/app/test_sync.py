"""The sync use case through the real catalog, with the fake Civitai (or a closed port) at
the edge: the pool policy, the demo fallback, and a catalog left alone when it has data."""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from sqlalchemy import Engine

from assetmgr.app.context import AppContext
from assetmgr.app.sync import CivitaiConnectionError, SyncOptions, pool_workers, sync_catalog
from assetmgr.config import Settings
from catalog.civitai.client import CivitaiClient
from catalog.civitai.retry import RetryPolicy
from catalog.demo import catalog_is_empty, is_demo_catalog
from tests.integration.test_import_hostile import closed_port


@pytest.fixture
def fake() -> Iterator[Any]:
    from tests.fakeciv import FakeCatalog, FakeCivitai

    with FakeCivitai(FakeCatalog.generate(12, seed=5)) as server:
        yield server


def _client(base_url: str) -> Callable[[], CivitaiClient]:
    def make() -> CivitaiClient:
        return CivitaiClient(
            base_url=base_url,
            retry=RetryPolicy(max_attempts=1, base_delay=0.01, max_delay=0.01),
            sleep=lambda s: None,
        )

    return make


def _count_models(engine: Engine) -> int:
    from sqlmodel import Session, func, select

    from catalog.models import Model

    with Session(engine) as session:
        return int(session.exec(select(func.count()).select_from(Model)).one())


def test_a_sync_fills_the_catalog_and_reports_progress(
    settings: Settings, engine: Engine, fake: Any
) -> None:
    seen: list[int] = []
    with AppContext(settings, engine=engine, client_factory=_client(fake.base_url)) as ctx:
        outcome = sync_catalog(
            ctx, SyncOptions(page_size=5, nsfw=True), progress=lambda p: seen.append(p.models)
        )
    assert outcome.summary is not None and not outcome.demo
    assert outcome.summary.models == 12 and outcome.unreachable is None
    assert outcome.as_json()["models"] == 12
    assert seen and seen[-1] == 12
    assert _count_models(engine) == 12 and not is_demo_catalog(engine)


def test_a_cancelled_sync_stops_and_says_so(settings: Settings, engine: Engine, fake: Any) -> None:
    from catalog.sync import SyncCancelled

    cancel = threading.Event()
    cancel.set()
    with (
        AppContext(settings, engine=engine, client_factory=_client(fake.base_url)) as ctx,
        pytest.raises(SyncCancelled),
    ):
        sync_catalog(ctx, SyncOptions(page_size=5, nsfw=True), cancel=cancel)
    assert _count_models(engine) < 12


def test_the_pool_policy_reads_the_setting_once_and_skips_small_syncs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ASSETMGR_SYNC_WORKERS", "3")
    settings = Settings.load()
    assert settings.sync_workers == "3"
    assert pool_workers(settings, SyncOptions()) == 3
    assert pool_workers(settings, SyncOptions(max_models=10_000)) == 3
    # Explicit ids, or fewer models than a pool pays for: pages are prepared in-thread.
    assert pool_workers(settings, SyncOptions(model_ids=(1, 2))) == 0
    assert pool_workers(settings, SyncOptions(max_models=500)) == 0
    assert pool_workers(dataclasses.replace(settings, sync_workers="0"), SyncOptions()) == 0


def test_civitai_unreachable_on_an_empty_catalog_seeds_the_demo(
    settings: Settings, engine: Engine
) -> None:
    assert catalog_is_empty(engine)
    unreachable = _client(f"http://127.0.0.1:{closed_port()}")
    with AppContext(settings, engine=engine, client_factory=unreachable) as ctx:
        outcome = sync_catalog(ctx, SyncOptions(max_models=50))
    assert outcome.demo and outcome.summary is None
    assert outcome.unreachable is not None
    assert outcome.unreachable.startswith("cannot reach Civitai (ConnectError")
    assert outcome.demo_counts["models"] == _count_models(engine) > 0
    assert outcome.as_json() == {**outcome.demo_counts, "errors": [], "demo": True}
    assert is_demo_catalog(engine)


def test_civitai_unreachable_leaves_a_catalog_with_data_alone(
    settings: Settings, engine: Engine, fake: Any
) -> None:
    with AppContext(settings, engine=engine, client_factory=_client(fake.base_url)) as ctx:
        sync_catalog(ctx, SyncOptions(page_size=5, nsfw=True))
    unreachable = _client(f"http://127.0.0.1:{closed_port()}")
    with (
        AppContext(settings, engine=engine, client_factory=unreachable) as ctx,
        pytest.raises(CivitaiConnectionError, match="cannot reach Civitai"),
    ):
        sync_catalog(ctx, SyncOptions(max_models=50))
    assert _count_models(engine) == 12 and not is_demo_catalog(engine)
