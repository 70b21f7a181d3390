"""The sync's page workers: how many, how they start, and the WAL checkpointer beside them."""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import threading
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from typing import Any

from sqlalchemy import Engine

from catalog.sync import pages

log = logging.getLogger(__name__)

# How often `_Checkpointer` copies the WAL back while page workers write.
CHECKPOINT_EVERY_S = 0.25
MAX_SYNC_WORKERS = 4
# Below this many models a worker pool costs more to start than it saves (a forkserver start,
# in a process that already has threads such as the TUI, costs a second or more of CPU).
POOL_MIN_MODELS = 2000


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


def sync_workers(configured: str | None = None) -> int:
    """Worker processes for page preparation: `configured` (the user's setting, as text; the
    app passes ``ASSETMGR_SYNC_WORKERS``), else one per spare core."""
    configured = (configured or "").strip()
    if configured:
        try:
            return max(0, min(32, int(configured)))
        except ValueError:
            log.warning("sync workers %r is not a number; using the default", configured)
    cpus = os.cpu_count() or 1
    return max(0, min(MAX_SYNC_WORKERS, cpus - 1))


def start_pool(workers: int) -> ProcessPoolExecutor | None:
    """A process pool for `pages.prepare_page`, or None to prepare in-process.

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
            context.set_forkserver_preload(["catalog.sync.pages"])
        else:
            context = multiprocessing.get_context("spawn")
        # The lock gives the workers their turns at SQLite's write lock (`pages.init_worker`).
        pool = ProcessPoolExecutor(
            max_workers=workers,
            mp_context=context,
            initializer=pages.init_worker,
            initargs=(context.Lock(),),
        )
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
    pool = start_pool(sync_workers() if workers is None else workers)
    try:
        yield pool
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
