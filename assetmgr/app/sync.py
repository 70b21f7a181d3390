"""The sync use case: what to sync, the page-worker pool policy and the demo fallback."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from catalog.civitai.errors import CivitaiConnectionError
from catalog.sync import (
    POOL_MIN_MODELS,
    SyncProgress,
    SyncProgressCallback,
    SyncRequest,
    SyncSummary,
)

if TYPE_CHECKING:
    from concurrent.futures import ProcessPoolExecutor

    from assetmgr.app.context import AppContext
    from assetmgr.config import Settings


@dataclass(frozen=True)
class SyncOptions:
    """What to fetch from Civitai, as the front ends take it from the user."""

    types: tuple[str, ...] = ()
    base_models: tuple[str, ...] = ()
    query: str | None = None
    tag: str | None = None
    username: str | None = None
    nsfw: bool = False
    page_size: int = 100
    model_ids: tuple[int, ...] = ()
    max_models: int | None = None

    def request(self, api_base: str) -> SyncRequest:
        from catalog.civitai.client import ModelFilters

        return SyncRequest(
            filters=ModelFilters(
                types=list(self.types),
                base_models=list(self.base_models),
                query=self.query,
                tag=self.tag,
                username=self.username,
                nsfw=self.nsfw,
                limit=self.page_size,
            ),
            model_ids=list(self.model_ids),
            max_models=self.max_models,
            api_base=api_base,
        )


@dataclass(frozen=True)
class SyncOutcome:
    """A finished sync, or the demo catalog seeded in its place when Civitai was unreachable
    and the catalog empty (`unreachable` says why, `demo_counts` what was seeded)."""

    summary: SyncSummary | None
    demo_counts: dict[str, int] = field(default_factory=dict)
    unreachable: str | None = None

    @property
    def demo(self) -> bool:
        return self.summary is None

    def as_json(self) -> dict[str, object]:
        if self.summary is None:
            return {**self.demo_counts, "errors": [], "demo": True}
        return self.summary.as_json()


def pool_workers(settings: Settings, options: SyncOptions) -> int:
    """Page-worker processes for this sync: none for explicit ids or a sync too small to pay
    for them, else ``ASSETMGR_SYNC_WORKERS`` (the settings), else one per spare core."""
    from catalog.sync import sync_workers

    small = bool(options.model_ids) or (
        options.max_models is not None and options.max_models < POOL_MIN_MODELS
    )
    return 0 if small else sync_workers(settings.sync_workers)


class CatalogSync:
    """One sync with its page workers started (see `open_sync`)."""

    def __init__(
        self, ctx: AppContext, options: SyncOptions, pool: ProcessPoolExecutor | None
    ) -> None:
        self.ctx = ctx
        self.options = options
        self.pool = pool

    def run(
        self,
        *,
        progress: SyncProgressCallback | None = None,
        cancel: threading.Event | None = None,
    ) -> SyncOutcome:
        """Sync; with Civitai unreachable and the catalog empty, seed the demo catalog instead
        (a catalog with anything in it is left alone and the error raised)."""
        from catalog import demo as demo_catalog
        from catalog.sync import run_sync

        settings = self.ctx.settings
        engine = self.ctx.engine
        try:
            summary = run_sync(
                engine,
                self.ctx.client(),
                self.options.request(settings.api_base),
                progress=progress,
                cancel=cancel or threading.Event(),
                concurrency=settings.sync_concurrency,
                pool=self.pool,
            )
        except CivitaiConnectionError as exc:
            if not demo_catalog.catalog_is_empty(engine):
                raise
            counts = demo_catalog.seed_demo(engine)
            return SyncOutcome(None, counts, exc.message)
        return SyncOutcome(summary)


@contextmanager
def open_sync(ctx: AppContext, options: SyncOptions) -> Iterator[CatalogSync]:
    """Start the sync's page workers (shut down on exit) and hand back the sync to run.

    Open it before any other thread starts (a progress display, say): the workers are then
    forked, which is much cheaper than starting fresh interpreters for them.
    """
    from catalog.sync import sync_pool

    with sync_pool(pool_workers(ctx.settings, options)) as pool:
        yield CatalogSync(ctx, options, pool)


def sync_catalog(
    ctx: AppContext,
    options: SyncOptions,
    *,
    progress: SyncProgressCallback | None = None,
    cancel: threading.Event | None = None,
) -> SyncOutcome:
    """`open_sync` and run it: for a caller that has no thread of its own to start first."""
    with open_sync(ctx, options) as job:
        return job.run(progress=progress, cancel=cancel)


__all__ = [
    "CatalogSync",
    "CivitaiConnectionError",
    "SyncOptions",
    "SyncOutcome",
    "SyncProgress",
    "SyncProgressCallback",
    "SyncSummary",
    "open_sync",
    "pool_workers",
    "sync_catalog",
]
