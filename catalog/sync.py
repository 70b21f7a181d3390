"""`assetmgr sync`: fill the local catalog from the Civitai API.

How a sync runs:

* A fetcher thread follows the cursor of `/api/v1/models` (pages are a cursor chain: they
  cannot be fetched in parallel) and hands each page to a small process pool that validates,
  hashes and maps it to rows (`catalog.bulk`); the caller's thread only compares with the
  catalog and writes. Fetching, preparing and writing overlap, and the CPU-heavy middle part
  runs outside the GIL of the process that fetches. Without spare cores (or with
  ``ASSETMGR_SYNC_WORKERS=0``) pages are prepared in the caller's thread instead. Explicit
  `--model-id`s are fetched in parallel with a thread pool.
* Pages are written in order, a few per transaction (at most ~1 s of work), each
  transaction together with the cursor that follows its last page, so an interrupted sync
  (kill -9, a crash) resumes from the last transaction that landed and refetches at most
  that second; a cancel (Ctrl-C in the CLI, the cancel event) commits what it has first.
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

from assetmgr.errors import AssetMgrError, CivitaiError
from catalog import bulk, repo
from catalog.civitai.client import CivitaiClient, ModelFilters
from catalog.civitai.errors import NotFoundError
from catalog.civitai.types import Model
from catalog.models import Model as ModelRow
from catalog.models import SyncState

log = logging.getLogger(__name__)

SyncProgressCallback = Callable[["SyncProgress"], None]

# A transaction closes after this much work or this many pages, whichever comes first: large
# enough that commits (and the index pages each one rewrites) stay a small share, small
# enough that a kill loses little.
COMMIT_EVERY_S = 1.0
COMMIT_EVERY_PAGES = 32
MAX_SYNC_WORKERS = 4
# Below this many models a worker pool costs more to start than it saves.
POOL_MIN_MODELS = 300


class SyncCancelled(AssetMgrError):
    """The sync was cancelled; what was written stays and the next sync resumes."""

    title = "Sync cancelled"
    hint = "Run the same `assetmgr sync` command again to resume from where it stopped."
    exit_code = 130


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
    """A page prepared in the consumer's thread, when `result` is asked for (no pool)."""

    def __init__(self, *args: Any) -> None:
        self.args = args

    def result(self) -> bulk.PreparedPage:
        return bulk.prepare_page(*self.args)


_Prepared = Future[bulk.PreparedPage] | _Deferred


class _PageFetcher(threading.Thread):
    """Follows the cursor in the background and queues pages (or the error that stopped it).

    Each queued page carries its preparation, already submitted to the pool, so a worker
    starts on it the moment it arrives; the queue's bound also bounds the work in flight.
    """

    def __init__(
        self,
        client: CivitaiClient,
        filters: ModelFilters,
        start_cursor: str | None,
        cancel: threading.Event,
        engine: Engine,
        pool: ProcessPoolExecutor | None,
        plans: bulk.InsertPlans,
        depth: int = 4,
    ) -> None:
        super().__init__(name="civitai-page-fetcher", daemon=True)
        self.engine = engine
        self.client = client
        self.filters = filters
        self.start_cursor = start_cursor
        self.cancel = cancel
        self.pool = pool
        self.plans = plans
        self.pages: queue.Queue[object] = queue.Queue(maxsize=depth)

    def _put(self, item: object) -> bool:
        while not self.cancel.is_set():
            try:
                self.pages.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _submit(self, items: list[Any], next_cursor: str | None) -> _Prepared:
        with Session(self.engine) as session:
            stored = bulk.stored_payloads(session, items)
        args = (items, next_cursor, _now(), self.plans, stored)
        if self.pool is not None:
            try:
                return self.pool.submit(bulk.prepare_page, *args)
            except (BrokenProcessPool, RuntimeError):  # broken or shut down: do it in-process
                pass
        return _Deferred(*args)

    def run(self) -> None:
        # Only the HTTP request and the JSON parse happen here, so the next page is requested
        # as soon as this one's cursor is known.
        try:
            raw_pages = self.client.iter_raw_model_pages(
                self.filters, start_cursor=self.start_cursor
            )
            for items, next_cursor in raw_pages:
                if not self._put((items, next_cursor, self._submit(items, next_cursor))):
                    return
        except BaseException as exc:  # handed to the consumer, which re-raises it
            self._put(exc)
            return
        self._put(_DONE)


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
        pool = ProcessPoolExecutor(max_workers=workers, mp_context=context)
        # With fork, every worker starts on the first submit: do it now, before the fetcher
        # thread exists.
        pool.submit(int)
        return pool
    except (OSError, ValueError, RuntimeError) as exc:
        log.info("sync worker processes unavailable (%s); preparing pages in-process", exc)
        return None


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
            pool.shutdown(wait=False, cancel_futures=True)


def _prepared(
    handle: _Prepared, items: list[Any], next_cursor: str | None, plans: bulk.InsertPlans
) -> bulk.PreparedPage:
    try:
        return handle.result()
    except BrokenProcessPool:
        # A worker died (killed, out of memory): this page is prepared here instead.
        log.warning("a sync worker process died; preparing the page in-process")
        return bulk.prepare_page(items, next_cursor, _now(), plans)


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
        plans = bulk.insert_plans(session)
    own_pool = None
    if pool == "auto":
        small = request.max_models is not None and request.max_models < POOL_MIN_MODELS
        pool = own_pool = None if small else _start_pool(sync_workers())
    fetcher = _PageFetcher(client, request.filters, start_cursor, cancel, engine, pool, plans)
    fetcher.start()
    completed = False
    writer = _BatchWriter(engine, key)
    try:
        while True:
            if cancel.is_set():
                writer.commit()
                raise SyncCancelled("sync cancelled; progress is saved")
            try:
                item = fetcher.pages.get(timeout=0.1)
            except queue.Empty:
                continue
            if item is _DONE:
                completed = True
                break
            if isinstance(item, BaseException):
                writer.commit()  # the pages before the failure are whole: keep them
                raise item
            assert isinstance(item, tuple)
            items, next_cursor, handle = item
            page = _prepared(handle, items, next_cursor, plans)
            models = page.models
            stop = False
            if request.max_models is not None:
                room = request.max_models - summary.models
                if len(models) >= room:
                    models = models[:room]
                    stop = True
            for index, item_id, reason in page.rejected:
                log.warning("skipped model item %d (id %s): %s", index, item_id, reason)
                summary.errors.append(
                    {"page": summary.pages + 1, "index": index, "id": item_id, "error": reason}
                )
            last = stop or page.next_cursor is None
            written = writer.write(models, items, page.next_cursor, plans, last=last)
            seen_ids.update(m.id for m in models)
            m = len(models)
            v = sum(pm.n_versions for pm in models)
            f = sum(pm.n_files for pm in models)
            summary.models += m
            summary.versions += v
            summary.files += f
            summary.models_written += written
            summary.pages += 1
            counters.pages = summary.pages
            counters.models += m
            counters.versions += v
            counters.files += f
            counters.models_written += written
            counters.rejected = len(summary.errors)
            report()
            if last:
                completed = True
                break
    except KeyboardInterrupt:
        # Interrupted mid-statement perhaps: the open batch is dropped, not committed.
        writer.close()
        raise SyncCancelled("sync interrupted; progress is saved") from None
    finally:
        writer.close()
        cancel_fetcher = not completed
        if cancel_fetcher:
            cancel.set()
        fetcher.join(timeout=5)
        if own_pool is not None:
            own_pool.shutdown(wait=False, cancel_futures=True)

    if completed:
        if request.is_full_listing and not summary.resumed:
            summary.models_marked = _mark_vanished(
                engine, client, seen_ids, request, cancel, concurrency
            )
        _finish_state(engine, key)
    return summary


def _begin_state(
    engine: Engine, key: str, request: SyncRequest, *, resume: bool, started_at: datetime
) -> None:
    with Session(engine) as session, session.begin():
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


class _BatchWriter:
    """Writes prepared pages in order, several per transaction, each with its cursor.

    A transaction is committed after `COMMIT_EVERY_S` of work or `COMMIT_EVERY_PAGES` pages,
    on the last page, and by `commit` (a cancel); `close` drops an open, uncommitted batch.
    """

    def __init__(self, engine: Engine, key: str) -> None:
        self.key = key
        self.session = Session(engine)
        self.pages = 0
        self.written = 0
        self.cursor: str | None = None
        self.started = 0.0

    def write(
        self,
        models: Sequence[bulk.PreparedModel],
        items: Sequence[Any],
        next_cursor: str | None,
        plans: bulk.InsertPlans,
        *,
        last: bool,
    ) -> int:
        if not self.pages:
            self.started = time.monotonic()
        result = bulk.write_prepared(self.session, models, items, seen_at=_now(), plans=plans)
        self.pages += 1
        self.written += result.models_written
        self.cursor = None if last else next_cursor
        if (
            last
            or self.pages >= COMMIT_EVERY_PAGES
            or time.monotonic() - self.started >= COMMIT_EVERY_S
        ):
            self.commit()
        return result.models_written

    def commit(self) -> None:
        """Commit the open batch together with the cursor after its last page."""
        if not self.pages:
            return
        now = _now()
        self.session.execute(
            update(SyncState)
            .where(col(SyncState.key) == self.key)
            .values(
                cursor=self.cursor,
                pages=SyncState.pages + self.pages,
                models_written=SyncState.models_written + self.written,
                updated_at=now,
            )
        )
        self.session.commit()
        self.pages = 0
        self.written = 0

    def close(self) -> None:
        self.session.rollback()
        self.session.close()
        self.pages = 0
        self.written = 0


def _finish_state(engine: Engine, key: str) -> None:
    now = _now()
    with Session(engine) as session, session.begin():
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
    with Session(engine) as session, session.begin():
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
    with Session(engine) as session, session.begin():
        # Archived/taken-down models come back from /models/{id} with `mode`; the upsert marks them.
        result = repo.upsert_models(session, still_there, seen_at=now)
        marked = _mark_gone(session, gone, now)
    return marked + result.models_written
