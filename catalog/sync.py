"""`assetmgr sync`: fill the local catalog from the Civitai API.

How a sync runs:

* A fetcher thread follows the cursor of `/api/v1/models` (pages are a cursor chain: they
  cannot be fetched in parallel) and hands each page's body, as it arrives and unparsed, to a
  small process pool: a worker parses, validates, hashes and maps it to rows and writes it in
  its own transaction (`catalog.bulk`). The fetcher reads only the next cursor, from the
  body's end; the CPU-heavy part thus runs outside the GIL of the process that fetches.
  Without spare cores (or with ``ASSETMGR_SYNC_WORKERS=0``), or for a small ``max_models``,
  pages are written in the caller's thread instead. Explicit `--model-id`s are fetched in
  parallel with a thread pool.
* The caller's thread takes the pages' outcomes in page order and stores the cursor past the
  pages that all landed (at most once a second, and on a cancel or a failure). Every write is
  an idempotent upsert, so an interrupted sync (Ctrl-C, kill -9, a crash) resumes from the
  stored cursor and redoes at most the last second's pages, which then write nothing.
* Writes are incremental: a model whose normalized payload did not change writes nothing.
* Items that fail validation are reported in `SyncSummary.errors` and skipped; the rest lands.
* After a complete, unfiltered sync, models the listing no longer shows are looked up one by
  one: a 404 marks them ``gone``, an archived or taken-down model is marked as such; nothing is
  ever deleted.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import multiprocessing
import os
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from sqlalchemy import Engine, select, update
from sqlmodel import Session, col

from catalog import bulk, bulkload, repo
from catalog.civitai.client import CivitaiClient, ModelFilters
from catalog.civitai.errors import CivitaiError, NotFoundError
from catalog.civitai.types import Model
from catalog.db import session_scope
from catalog.errors import SyncCancelled
from catalog.models import Model as ModelRow
from catalog.models import SyncState

log = logging.getLogger(__name__)

SyncProgressCallback = Callable[["SyncProgress"], None]

# How often the stored cursor moves forward during a sync (see `_CursorKeeper`).
CURSOR_EVERY_S = 1.0
# How often `_Checkpointer` copies the WAL back while page workers write.
CHECKPOINT_EVERY_S = 0.25
MAX_SYNC_WORKERS = 4
# Below this many models a worker pool costs more to start than it saves (a forkserver start,
# in a process that already has threads such as the TUI, costs a second or more of CPU).
POOL_MIN_MODELS = 2000


@dataclass
class SyncRequest:
    """What to sync: listing filters, explicit ids, and a cap."""

    filters: ModelFilters = field(default_factory=ModelFilters)
    model_ids: Sequence[int] = ()
    max_models: int | None = None
    api_base: str = ""

    def key(self) -> str:
        """A stable id of this filter set, so a rerun finds its interrupted predecessor."""
        payload = {
            "filters": asdict(self.filters),
            "model_ids": sorted(self.model_ids),
            "max_models": self.max_models,
            "api_base": self.api_base,
        }
        return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()

    @property
    def is_full_listing(self) -> bool:
        """True for an unfiltered, uncapped listing sync: only then can absence mean removal."""
        f = self.filters
        return not (
            self.model_ids
            or self.max_models
            or f.types
            or f.base_models
            or f.query
            or f.tag
            or f.username
            or f.ids
        )


@dataclass
class SyncProgress:
    """Counters reported after every page."""

    pages: int = 0
    models: int = 0
    versions: int = 0
    files: int = 0
    models_written: int = 0
    rejected: int = 0
    total_models: int | None = None


@dataclass
class SyncSummary:
    """The result of a sync: what was seen, what was written, and per-item errors."""

    models: int = 0
    versions: int = 0
    files: int = 0
    models_written: int = 0
    models_marked: int = 0
    pages: int = 0
    resumed: bool = False
    errors: list[dict[str, Any]] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        """The CLI contract: ``{"models", "versions", "files", "errors"}`` plus extras."""
        return {
            "models": self.models,
            "versions": self.versions,
            "files": self.files,
            "errors": self.errors,
            "written": self.models_written,
            "marked": self.models_marked,
            "pages": self.pages,
            "resumed": self.resumed,
        }


_DONE = object()


class _Deferred:
    """A page written in the consumer's thread when `result` is asked for (no pool)."""

    def __init__(self, engine: Engine, items: bulk.PageItems, plans: repo.InsertPlans) -> None:
        self.engine = engine
        self.items = items
        self.plans = plans

    def result(self) -> bulk.PageOutcome:
        return bulk.write_page(self.engine, self.items, _now(), self.plans)


_PageWork = Future[bulk.PageOutcome] | _Deferred


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
        submit: Callable[[bulk.PageItems], _PageWork],
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
            pages: Iterator[tuple[bulk.PageItems, str | None]]
            if self.raw_bodies:
                pages = self.client.iter_model_page_bodies(
                    self.request.filters, start_cursor=self.start_cursor
                )
            else:
                pages = self.client.iter_raw_model_pages(
                    self.request.filters, start_cursor=self.start_cursor
                )
            taken = 0
            cap = self.request.max_models
            for items, next_cursor in pages:
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
        now = _now()
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


class _Checkpointer(threading.Thread):
    """Copies the WAL back into a SQLite catalog while page workers write (theirs never do).

    A checkpoint fsyncs the WAL and the database. Inside a page's commit it would stall the
    write lock that the whole sync queues on; here it runs beside the writers (a PASSIVE
    checkpoint copies what is committed and takes no write lock), so the WAL stays short and
    the commits at the end of the sync find nothing left to copy.
    """

    def __init__(self, engine: Engine, every_s: float = CHECKPOINT_EVERY_S) -> None:
        super().__init__(name="catalog-checkpointer", daemon=True)
        self.engine = engine
        self.every_s = every_s
        self.stopped = threading.Event()

    def run(self) -> None:
        try:
            connection = self.engine.raw_connection()
        except Exception:  # noqa: BLE001 - then the commits checkpoint, as usual
            log.debug("no checkpointer connection", exc_info=True)
            return
        try:
            while not self.stopped.wait(self.every_s):
                try:
                    connection.driver_connection.execute("PRAGMA wal_checkpoint(PASSIVE)")  # type: ignore[union-attr]
                except Exception:  # noqa: BLE001 - a busy or failed checkpoint is retried
                    log.debug("WAL checkpoint failed", exc_info=True)
        finally:
            connection.close()

    def stop(self) -> None:
        self.stopped.set()
        self.join(timeout=10)


def sync_workers() -> int:
    """Worker processes for page preparation: ``ASSETMGR_SYNC_WORKERS``, else spare cores."""
    configured = os.environ.get("ASSETMGR_SYNC_WORKERS", "").strip()
    if configured:
        try:
            return max(0, min(32, int(configured)))
        except ValueError:
            log.warning("ASSETMGR_SYNC_WORKERS=%r is not a number; using the default", configured)
    cpus = os.cpu_count() or 1
    return max(0, min(MAX_SYNC_WORKERS, cpus - 1))


def _start_pool(workers: int) -> ProcessPoolExecutor | None:
    """A process pool for `bulk.prepare_page`, or None to prepare in-process.

    ``fork`` is the cheapest start, but only safe while this process has a single thread (a
    forked child inherits other threads' locks, held); otherwise a forkserver with the
    catalog modules preloaded starts the workers.
    """
    if workers <= 0:
        return None
    methods = multiprocessing.get_all_start_methods()
    try:
        if "fork" in methods and threading.active_count() == 1:
            context: Any = multiprocessing.get_context("fork")
        elif "forkserver" in methods:
            context = multiprocessing.get_context("forkserver")
            context.set_forkserver_preload(["catalog.bulk"])
        else:
            context = multiprocessing.get_context("spawn")
        # The lock gives the workers their turns at SQLite's write lock (`bulk.init_worker`).
        pool = ProcessPoolExecutor(
            max_workers=workers,
            mp_context=context,
            initializer=bulk.init_worker,
            initargs=(context.Lock(),),
        )
        # With fork, every worker starts on the first submit: do it now, before the fetcher
        # thread exists.
        pool.submit(int)
        return pool
    except (OSError, ValueError, RuntimeError) as exc:
        log.info("sync worker processes unavailable (%s); preparing pages in-process", exc)
        return None


def _page_outcome(
    work: _PageWork, items: list[Any], engine: Engine, plans: repo.InsertPlans
) -> bulk.PageOutcome:
    try:
        return work.result()
    except BrokenProcessPool:
        # A worker died (killed, out of memory) with this page: write it here instead.
        log.warning("a sync worker process died; writing its page in-process")
        return bulk.write_page(engine, items, _now(), plans)


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


@contextlib.contextmanager
def sync_pool(workers: int | None = None) -> Iterator[ProcessPoolExecutor | None]:
    """Worker processes for `run_sync`'s `pool`, shut down on exit.

    Open it before any other thread starts (a progress display, say): then the workers are
    forked, which is much cheaper than starting a fresh interpreter for them.
    """
    pool = _start_pool(sync_workers() if workers is None else workers)
    try:
        yield pool
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)


def _now() -> datetime:
    return datetime.now(UTC)


def _load_state(engine: Engine, key: str) -> SyncState | None:
    with Session(engine) as session:
        return session.execute(select(SyncState).where(col(SyncState.key) == key)).scalars().first()


def _count(models: Iterable[Model]) -> tuple[int, int, int]:
    n_models = n_versions = n_files = 0
    for m in models:
        n_models += 1
        n_versions += len(m.model_versions)
        n_files += sum(len(v.files) for v in m.model_versions)
    return n_models, n_versions, n_files


def run_sync(
    engine: Engine,
    client: CivitaiClient,
    request: SyncRequest,
    *,
    progress: SyncProgressCallback | None = None,
    cancel: threading.Event | None = None,
    concurrency: int = 4,
    pool: ProcessPoolExecutor | None | Literal["auto"] = "auto",
) -> SyncSummary:
    """Sync the catalog; see the module docstring for the guarantees.

    `pool`: worker processes that prepare pages (see `sync_pool`); ``"auto"`` starts them
    here for a sync big enough to pay for them, None prepares pages in this thread.
    """
    cancel = cancel or threading.Event()
    summary = SyncSummary()
    counters = SyncProgress(total_models=request.max_models)

    def report() -> None:
        if progress is not None:
            progress(counters)

    if request.model_ids:
        _sync_ids(engine, client, request.model_ids, summary, counters, report, cancel, concurrency)
        return summary

    key = request.key()
    state = _load_state(engine, key)
    start_cursor: str | None = None
    if state is not None and state.status == "running" and state.cursor:
        start_cursor = state.cursor
        summary.resumed = True
        log.info("resuming sync %s from its stored cursor", key[:12])
    started_at = _now()
    _begin_state(engine, key, request, resume=summary.resumed, started_at=started_at)

    seen_ids: set[int] = set()
    with Session(engine) as session:
        plans = repo.insert_plans(session)
    own_pool = None
    if pool == "auto":
        small = request.max_models is not None and request.max_models < POOL_MIN_MODELS
        pool = own_pool = None if small else _start_pool(sync_workers())
    workers = pool._max_workers if pool is not None else 0  # type: ignore[attr-defined]
    # A big sync into an empty catalog builds its search and hash indexes once, after its
    # last page has landed (`catalog.bulkload`).
    deferred = pool is not None and bulkload.defer(engine)
    url = engine.url.render_as_string(hide_password=False)

    def submit(items: bulk.PageItems) -> _PageWork:
        if pool is not None:
            try:
                return pool.submit(bulk.sync_page, url, items, _now(), plans)
            except (BrokenProcessPool, RuntimeError):  # broken or shut down: do it here
                pass
        return _Deferred(engine, items, plans)

    fetcher = _PageFetcher(
        client,
        request,
        start_cursor,
        cancel,
        submit,
        depth=workers + 2,
        raw_bodies=pool is not None,
    )
    checkpointer = None
    if pool is not None and engine.dialect.name == "sqlite":
        checkpointer = _Checkpointer(engine)
        checkpointer.start()
    fetcher.start()
    keeper = _CursorKeeper(engine, key)
    completed = False
    page_failed = False
    try:
        while True:
            if cancel.is_set():
                raise SyncCancelled("sync cancelled; progress is saved")
            try:
                item = fetcher.pages.get(timeout=0.1)
            except queue.Empty:
                continue
            if item is _DONE:
                completed = True
                break
            if isinstance(item, BaseException):
                raise item
            assert isinstance(item, tuple)
            next_cursor, last, items, work = item
            page_failed = True
            outcome = _page_outcome(work, items, engine, plans)
            page_failed = False
            for index, item_id, reason in outcome.rejected:
                log.warning("skipped model item %d (id %s): %s", index, item_id, reason)
                summary.errors.append(
                    {"page": summary.pages + 1, "index": index, "id": item_id, "error": reason}
                )
            keeper.landed(None if last else next_cursor, outcome.models_written)
            seen_ids.update(outcome.model_ids)
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
            report()
            if last:
                completed = True
                break
    except KeyboardInterrupt:
        raise SyncCancelled("sync interrupted; progress is saved") from None
    finally:
        if not completed:
            cancel.set()
        fetcher.join(timeout=5)
        # Pages still in flight finish (or are dropped) before the cursor is stored, so
        # nothing writes behind the caller's back once this returns.
        _settle(fetcher, own_pool, None if page_failed else keeper)
        if checkpointer is not None:
            checkpointer.stop()
        keeper.flush()
        if deferred:
            _restore_deferred(engine)

    if completed:
        if request.is_full_listing and not summary.resumed:
            summary.models_marked = _mark_vanished(
                engine, client, seen_ids, request, cancel, concurrency
            )
        _finish_state(engine, key)
    return summary


def _restore_deferred(engine: Engine) -> None:
    """`bulkload.restore` once every page has landed (or the sync stopped)."""
    try:
        bulkload.restore(engine)
    except Exception:  # noqa: BLE001 - never mask the sync's own outcome; the next open retries
        log.exception("could not restore the catalog's deferred indexes; the next open will")


def _begin_state(
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


def _finish_state(engine: Engine, key: str) -> None:
    now = _now()
    with session_scope(engine, write=True) as session:
        session.execute(
            update(SyncState)
            .where(col(SyncState.key) == key)
            .values(status="done", cursor=None, finished_at=now, updated_at=now)
        )


def _fetch_models(
    client: CivitaiClient, ids: Sequence[int], cancel: threading.Event, concurrency: int
) -> list[tuple[int, Model | None, Exception | None]]:
    """GET /models/{id} for each id in parallel; (id, model or None if 404, other error)."""

    def one(model_id: int) -> tuple[int, Model | None, Exception | None]:
        if cancel.is_set():
            return model_id, None, SyncCancelled("cancelled")
        try:
            return model_id, client.get_model(model_id), None
        except NotFoundError:
            return model_id, None, None
        except CivitaiError as exc:
            return model_id, None, exc

    with ThreadPoolExecutor(max_workers=max(1, concurrency), thread_name_prefix="sync") as pool:
        return list(pool.map(one, ids))


def _sync_ids(
    engine: Engine,
    client: CivitaiClient,
    model_ids: Sequence[int],
    summary: SyncSummary,
    counters: SyncProgress,
    report: Callable[[], None],
    cancel: threading.Event,
    concurrency: int,
) -> None:
    counters.total_models = len(model_ids)
    results = _fetch_models(client, list(dict.fromkeys(model_ids)), cancel, concurrency)
    if cancel.is_set():
        raise SyncCancelled("sync cancelled")
    found = [m for _, m, err in results if m is not None]
    missing = [mid for mid, m, err in results if m is None and err is None]
    for mid, _, err in results:
        if err is not None:
            summary.errors.append({"id": mid, "error": str(err)})
    now = _now()
    with session_scope(engine, write=True) as session:
        result = repo.upsert_models(session, found, seen_at=now)
        summary.models_marked = _mark_gone(session, missing, now)
    m, v, f = _count(found)
    summary.models, summary.versions, summary.files = m, v, f
    summary.models_written = result.models_written
    summary.pages = 1
    counters.models, counters.versions, counters.files = m, v, f
    counters.models_written = result.models_written
    counters.pages = 1
    report()


def _mark_gone(session: Session, model_ids: Sequence[int], now: datetime) -> int:
    if not model_ids:
        return 0
    res = session.execute(
        update(ModelRow)
        .where(col(ModelRow.id).in_(model_ids), col(ModelRow.state) != "gone")
        .values(state="gone", changed_at=now)
    )
    return int(res.rowcount or 0)  # type: ignore[attr-defined]


def _mark_vanished(
    engine: Engine,
    client: CivitaiClient,
    seen_ids: set[int],
    request: SyncRequest,
    cancel: threading.Event,
    concurrency: int,
) -> int:
    """Check models that a full listing no longer shows; mark gone/archived, never delete."""
    with Session(engine) as session:
        query = select(col(ModelRow.id)).where(
            col(ModelRow.source) == "civitai", col(ModelRow.state) == "active"
        )
        if not request.filters.nsfw:
            # Out of scope for an SFW listing: NSFW models are not expected in it.
            query = query.where(col(ModelRow.nsfw).is_(False))
        known = set(session.execute(query).scalars())
    absent = sorted(known - seen_ids)
    if not absent:
        return 0
    log.info("%d catalog models are no longer listed; checking them one by one", len(absent))
    results = _fetch_models(client, absent, cancel, concurrency)
    still_there = [m for _, m, err in results if m is not None]
    gone = [mid for mid, m, err in results if m is None and err is None]
    now = _now()
    with session_scope(engine, write=True) as session:
        # Archived/taken-down models come back from /models/{id} with `mode`; the upsert marks them.
        result = repo.upsert_models(session, still_there, seen_at=now)
        marked = _mark_gone(session, gone, now)
    return marked + result.models_written
