"""A listing sync: a fetcher thread follows the cursor, page workers write, the cursor is kept.

How it runs:

* A fetcher thread follows the cursor of `/api/v1/models` (pages are a cursor chain: they
  cannot be fetched in parallel) and hands each page's body, as it arrives and unparsed, to a
  small process pool: a worker parses, validates, hashes and maps it to rows and writes it in
  its own transaction (`catalog.sync.pages`). The fetcher reads only the next cursor, from the
  body's end; the CPU-heavy part thus runs outside the GIL of the process that fetches.
  Without spare cores (or with no workers configured), or for a small ``max_models``, pages
  are written in the caller's thread instead.
* The caller's thread takes the pages' outcomes in page order and stores the cursor past the
  pages that all landed (at most once a second, and on a cancel or a failure). Every write is
  an idempotent upsert, so an interrupted sync (Ctrl-C, kill -9, a crash) resumes from the
  stored cursor and redoes at most the last second's pages, which then write nothing.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from sqlalchemy import Engine, select, update
from sqlmodel import Session, col

from catalog.civitai.client import CivitaiClient
from catalog.db import session_scope
from catalog.errors import SyncCancelled
from catalog.models import SyncState
from catalog.sync import bulkload, pages
from catalog.sync.pool import POOL_MIN_MODELS, _Checkpointer, start_pool, sync_workers
from catalog.sync.prepared import InsertPlans, insert_plans
from catalog.sync.request import SyncProgress, SyncRequest, SyncSummary

log = logging.getLogger(__name__)

# How often the stored cursor moves forward during a sync (see `_CursorKeeper`).
CURSOR_EVERY_S = 1.0
# The pool argument of `run_sync`: worker processes, None (none), or "auto" (started here).
PoolChoice = ProcessPoolExecutor | None | Literal["auto"]


def utc_now() -> datetime:
    return datetime.now(UTC)


_DONE = object()


class _Deferred:
    """A page written in the consumer's thread when `result` is asked for (no pool)."""

    def __init__(self, engine: Engine, items: pages.PageItems, plans: InsertPlans) -> None:
        self.engine = engine
        self.items = items
        self.plans = plans

    def result(self) -> pages.PageOutcome:
        return pages.write_page(self.engine, self.items, utc_now(), self.plans)


_PageWork = Future[pages.PageOutcome] | _Deferred


class _PageFetcher(threading.Thread):
    """Follows the cursor in the background, handing each page to a worker as it arrives.

    It queues (next cursor, is last, items, the page's work) in page order, or the error that
    stopped it; the queue's bound also bounds the pages in flight. With `max_models`, items
    past the cap are cut here, before any work is spent on them.

    With `raw_bodies` (a worker pool and no cap), "items" is the page's body, unparsed: the
    worker parses it, and this thread only reads the next cursor from the body's end
    (`cursor_of_body`). Parsing a page holds the GIL for milliseconds, which this process
    needs to keep the requests going back to back.
    """

    def __init__(
        self,
        client: CivitaiClient,
        request: SyncRequest,
        start_cursor: str | None,
        cancel: threading.Event,
        submit: Callable[[pages.PageItems], _PageWork],
        depth: int,
        *,
        raw_bodies: bool = False,
    ) -> None:
        super().__init__(name="civitai-page-fetcher", daemon=True)
        self.client = client
        self.request = request
        self.start_cursor = start_cursor
        self.cancel = cancel
        self.submit = submit
        self.raw_bodies = raw_bodies and request.max_models is None
        self.pages: queue.Queue[object] = queue.Queue(maxsize=depth)

    def _put(self, item: object) -> bool:
        while not self.cancel.is_set():
            try:
                self.pages.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def run(self) -> None:
        # Only the HTTP request and reading the cursor (or, without workers, the JSON parse)
        # happen here, so the next page is requested as soon as this one's cursor is known.
        try:
            stream: Iterator[tuple[pages.PageItems, str | None]]
            if self.raw_bodies:
                stream = self.client.iter_model_page_bodies(
                    self.request.filters, start_cursor=self.start_cursor
                )
            else:
                stream = self.client.iter_raw_model_pages(
                    self.request.filters, start_cursor=self.start_cursor
                )
            taken = 0
            cap = self.request.max_models
            for items, next_cursor in stream:
                last = next_cursor is None
                if cap is not None and isinstance(items, list):  # never a body (see above)
                    if len(items) >= cap - taken:
                        items = items[: cap - taken]
                        last = True
                    taken += len(items)
                if not self._put((next_cursor, last, items, self.submit(items))):
                    return
                if last:
                    return
        except BaseException as exc:  # handed to the consumer, which re-raises it
            self._put(exc)
            return
        self._put(_DONE)


class _CursorKeeper:
    """Stores the cursor past the pages that all landed; at most once a second, or on `flush`.

    Each page commits on its own (in a worker); storing the cursor a little late only means
    a resumed sync redoes a page or two, which writes nothing.
    """

    def __init__(self, engine: Engine, key: str) -> None:
        self.engine = engine
        self.key = key
        self.pages = 0
        self.written = 0
        self.cursor: str | None = None
        self.flushed_at = time.monotonic()

    def landed(self, cursor: str | None, written: int) -> None:
        self.pages += 1
        self.written += written
        self.cursor = cursor
        if time.monotonic() - self.flushed_at >= CURSOR_EVERY_S:
            self.flush()

    def flush(self) -> None:
        self.flushed_at = time.monotonic()
        if not self.pages:
            return
        now = utc_now()
        with session_scope(self.engine, write=True) as session:
            session.execute(
                update(SyncState)
                .where(col(SyncState.key) == self.key)
                .values(
                    cursor=self.cursor,
                    pages=SyncState.pages + self.pages,
                    models_written=SyncState.models_written + self.written,
                    updated_at=now,
                )
            )
        self.pages = 0
        self.written = 0


def _page_outcome(
    work: _PageWork, items: list[Any], engine: Engine, plans: InsertPlans
) -> pages.PageOutcome:
    try:
        return work.result()
    except BrokenProcessPool:
        # A worker died (killed, out of memory) with this page: write it here instead.
        log.warning("a sync worker process died; writing its page in-process")
        return pages.write_page(engine, items, utc_now(), plans)


def _settle(
    fetcher: _PageFetcher,
    own_pool: ProcessPoolExecutor | None,
    keeper: _CursorKeeper | None,
) -> None:
    """Cancel queued page work, wait for what already runs, and keep the cursor of the pages
    that landed right after the last consumed one (`keeper`; None after a failed page)."""
    queued: list[tuple[Any, ...]] = []
    while True:
        try:
            item = fetcher.pages.get_nowait()
        except queue.Empty:
            break
        if isinstance(item, tuple):
            queued.append(item)
    for _, _, _, work in queued:
        if isinstance(work, Future):
            work.cancel()
    in_order = True
    for next_cursor, last, _, work in queued:
        if not isinstance(work, Future) or work.cancelled():
            in_order = False
            continue
        try:
            outcome = work.result(timeout=120)
        except Exception:  # noqa: BLE001 - the next sync redoes this page
            in_order = False
            continue
        if in_order and keeper is not None:
            keeper.landed(None if last else next_cursor, outcome.models_written)
    if own_pool is not None:
        own_pool.shutdown(wait=True, cancel_futures=True)


def load_state(engine: Engine, key: str) -> SyncState | None:
    with Session(engine) as session:
        return session.execute(select(SyncState).where(col(SyncState.key) == key)).scalars().first()


def _restore_deferred(engine: Engine) -> None:
    """`bulkload.restore` once every page has landed (or the sync stopped)."""
    try:
        bulkload.restore(engine)
    except Exception:  # noqa: BLE001 - never mask the sync's own outcome; the next open retries
        log.exception("could not restore the catalog's deferred indexes; the next open will")


def begin_state(
    engine: Engine, key: str, request: SyncRequest, *, resume: bool, started_at: datetime
) -> None:
    with session_scope(engine, write=True) as session:
        state = (
            session.execute(select(SyncState).where(col(SyncState.key) == key)).scalars().first()
        )
        if state is None:
            state = SyncState(key=key, params=json.loads(json.dumps(asdict(request), default=str)))
            session.add(state)
        if not resume:
            state.cursor = None
            state.pages = 0
            state.models_written = 0
            state.started_at = started_at
        state.status = "running"
        state.updated_at = started_at
        state.finished_at = None


def finish_state(engine: Engine, key: str) -> None:
    now = utc_now()
    with session_scope(engine, write=True) as session:
        session.execute(
            update(SyncState)
            .where(col(SyncState.key) == key)
            .values(status="done", cursor=None, finished_at=now, updated_at=now)
        )


@dataclass
class _Listing:
    """One listing sync's moving parts, from `start` to `stop`."""

    engine: Engine
    key: str
    pool: ProcessPoolExecutor | None
    own_pool: ProcessPoolExecutor | None
    plans: InsertPlans
    fetcher: _PageFetcher
    keeper: _CursorKeeper
    deferred: bool
    checkpointer: _Checkpointer | None = None
    seen_ids: set[int] = field(default_factory=set)
    page_failed: bool = False

    def stop(self, completed: bool, cancel: threading.Event) -> None:
        """Stop fetching; pages still in flight finish (or are dropped) before the cursor is
        stored, so nothing writes behind the caller's back once this returns."""
        if not completed:
            cancel.set()
        self.fetcher.join(timeout=5)
        _settle(self.fetcher, self.own_pool, None if self.page_failed else self.keeper)
        if self.checkpointer is not None:
            self.checkpointer.stop()
        self.keeper.flush()
        if self.deferred:
            _restore_deferred(self.engine)


def _start_listing(
    engine: Engine,
    client: CivitaiClient,
    request: SyncRequest,
    key: str,
    start_cursor: str | None,
    cancel: threading.Event,
    pool: PoolChoice,
    workers: int | None,
) -> _Listing:
    with Session(engine) as session:
        plans = insert_plans(session)
    own_pool = None
    if pool == "auto":
        small = request.max_models is not None and request.max_models < POOL_MIN_MODELS
        pool = own_pool = (
            None if small else start_pool(sync_workers() if workers is None else workers)
        )
    depth = pool._max_workers + 2 if pool is not None else 2  # type: ignore[attr-defined]
    # A big sync into an empty catalog builds its search and hash indexes once, after its
    # last page has landed (`catalog.sync.bulkload`).
    deferred = pool is not None and bulkload.defer(engine)
    url = engine.url.render_as_string(hide_password=False)

    def submit(items: pages.PageItems) -> _PageWork:
        if pool is not None:
            try:
                return pool.submit(pages.sync_page, url, items, utc_now(), plans)
            except (BrokenProcessPool, RuntimeError):  # broken or shut down: do it here
                pass
        return _Deferred(engine, items, plans)

    fetcher = _PageFetcher(
        client, request, start_cursor, cancel, submit, depth, raw_bodies=pool is not None
    )
    listing = _Listing(
        engine, key, pool, own_pool, plans, fetcher, _CursorKeeper(engine, key), deferred
    )
    if pool is not None and engine.dialect.name == "sqlite":
        listing.checkpointer = _Checkpointer(engine)
        listing.checkpointer.start()
    fetcher.start()
    return listing


def _tally(outcome: pages.PageOutcome, summary: SyncSummary, counters: SyncProgress) -> None:
    for index, item_id, reason in outcome.rejected:
        log.warning("skipped model item %d (id %s): %s", index, item_id, reason)
        summary.errors.append(
            {"page": summary.pages + 1, "index": index, "id": item_id, "error": reason}
        )
    m, v, f = len(outcome.model_ids), outcome.versions, outcome.files
    summary.models += m
    summary.versions += v
    summary.files += f
    summary.models_written += outcome.models_written
    summary.pages += 1
    counters.pages = summary.pages
    counters.models += m
    counters.versions += v
    counters.files += f
    counters.models_written += outcome.models_written
    counters.rejected = len(summary.errors)


def _next_page(listing: _Listing, cancel: threading.Event) -> tuple[Any, ...] | None:
    """The next page the fetcher queued, None once the listing is done; raises its error."""
    while True:
        if cancel.is_set():
            raise SyncCancelled("sync cancelled; progress is saved")
        try:
            item = listing.fetcher.pages.get(timeout=0.1)
        except queue.Empty:
            continue
        if item is _DONE:
            return None
        if isinstance(item, BaseException):
            raise item
        if not isinstance(item, tuple):
            raise TypeError(f"the page queue held {type(item).__name__}, not a page")
        return item


def sync_listing(
    engine: Engine,
    client: CivitaiClient,
    request: SyncRequest,
    start_cursor: str | None,
    *,
    summary: SyncSummary,
    counters: SyncProgress,
    report: Callable[[], None],
    cancel: threading.Event,
    pool: PoolChoice,
    workers: int | None,
) -> set[int]:
    """Follow the listing from `start_cursor` to its end (or the cap); the model ids it
    showed. A cancel, a failed page or a fetch error raises, with the cursor kept."""
    listing = _start_listing(
        engine, client, request, request.key(), start_cursor, cancel, pool, workers
    )
    completed = False
    try:
        while (page := _next_page(listing, cancel)) is not None:
            next_cursor, last, items, work = page
            listing.page_failed = True
            outcome = _page_outcome(work, items, engine, listing.plans)
            listing.page_failed = False
            listing.keeper.landed(None if last else next_cursor, outcome.models_written)
            listing.seen_ids.update(outcome.model_ids)
            _tally(outcome, summary, counters)
            report()
            if last:
                break
        completed = True
    except KeyboardInterrupt:
        raise SyncCancelled("sync interrupted; progress is saved") from None
    finally:
        listing.stop(completed, cancel)
    return listing.seen_ids
