"""A sync page's work in a worker process: parse, validate, hash, map to rows and write it.

Why it is built this way: docs/decisions/sync-page-workers.md.
"""

from __future__ import annotations

import contextlib
import ctypes
import multiprocessing
import multiprocessing.connection
import os
import signal
import sys
import threading
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pydantic import ValidationError
from sqlalchemy import Engine, event
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from catalog.civitai import types as api
from catalog.civitai.listpage import page_items, validation_reason
from catalog.db import make_engine, session_scope
from catalog.sync import prepared


@dataclass
class PreparedPage:
    """A page after validation and mapping; `rejected` holds (index, id or None, reason)."""

    models: list[prepared.PreparedModel]
    rejected: list[tuple[int, int | None, str]] = field(default_factory=list)
    inserts: prepared.PreparedInserts | None = None


@dataclass
class PageOutcome:
    """What `sync_page` did with one page (small: it travels back from a worker)."""

    model_ids: list[int]
    versions: int
    files: int
    models_written: int
    rejected: list[tuple[int, int | None, str]]


# Engines of this worker process, by (pid, url): a forked worker must never use connections
# it inherited from its parent.
_ENGINES: dict[tuple[int, str], Engine] = {}
# The pool's lock around SQLite page writes (`init_worker`); None outside a pool.
_WRITE_LOCK: Any = None
# How long a worker waits for its turn before it leaves the queueing to SQLite.
WRITE_LOCK_WAIT_S = 30.0


def init_worker(write_lock: Any) -> None:
    """Pool initializer: the lock that gives the workers their turns at SQLite's write lock.

    The lock only orders writers; SQLite's own locking still guards the data, so a worker that
    does not get its turn in time (the holder was killed, say) writes anyway.
    """
    global _WRITE_LOCK
    _WRITE_LOCK = write_lock
    die_with_parent()


# prctl(2) option: the signal the kernel sends this process when its parent ends.
_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """End this worker process when the sync's process ends, even by ``kill -9``.

    A worker blocks on the pool's queue, whose pipe its siblings keep open, so without this it
    would outlive a killed sync and keep the catalog open. On Linux the kernel kills it
    (``PR_SET_PDEATHSIG``; a fork server's children get it when the fork server goes, which
    follows its parent); everywhere a thread watches the parent's sentinel, which becomes
    ready when the parent is gone, and ends the process then.
    """
    parent = multiprocessing.parent_process()
    if parent is None:
        return
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):  # no prctl: the sentinel watch below still works
            pass
    # The parent may have died before prctl took effect: the watch sees that at once.
    watch = threading.Thread(
        target=_exit_when_ready, args=(parent.sentinel,), name="parent-watch", daemon=True
    )
    watch.start()


def _exit_when_ready(sentinel: int) -> None:
    multiprocessing.connection.wait([sentinel])
    os._exit(1)


def _worker_engine(url: str) -> Engine:
    engine = make_engine(url)
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", _worker_connection)
    return engine


def _worker_connection(dbapi_connection: Any, _record: Any) -> None:
    dbapi_connection.execute("PRAGMA wal_autocheckpoint=0")
    # Private to this connection and gone with it: where a page's rows wait for the write
    # lock (`write_page`).
    dbapi_connection.execute("ATTACH DATABASE ':memory:' AS stage")


def _stage(
    dbapi_connection: Any, plans: prepared.InsertPlans, inserts: prepared.PreparedInserts
) -> None:
    """Put a page's prepared rows into the connection's ``stage`` tables (no lock needed)."""
    _clear_stage(dbapi_connection)
    dbapi_connection.execute("BEGIN")
    try:
        for ddl in prepared.staged_table_sql(plans):
            dbapi_connection.execute(ddl)
        for statement in inserts.staging:
            if statement.many:
                dbapi_connection.executemany(statement.sql, statement.params)
            else:
                dbapi_connection.execute(statement.sql, statement.params)
    except BaseException:
        dbapi_connection.execute("ROLLBACK")
        raise
    dbapi_connection.execute("COMMIT")


def _clear_stage(dbapi_connection: Any) -> None:
    tables = dbapi_connection.execute("SELECT name FROM stage.sqlite_master WHERE type = 'table'")
    for (name,) in tables.fetchall():
        # the stage schema holds only the tables `staged_table_sql` made from the code's models
        dbapi_connection.execute(f'DELETE FROM stage."{name}"')  # noqa: S608


@contextlib.contextmanager
def _write_turn(engine: Engine) -> Any:
    lock = _WRITE_LOCK
    if lock is None or engine.dialect.name != "sqlite":
        yield
        return
    acquired = lock.acquire(timeout=WRITE_LOCK_WAIT_S)
    try:
        yield
    finally:
        if acquired:
            lock.release()


# A listing page: its items, or its raw JSON body (parsed by whoever writes it).
PageItems = list[Any] | bytes


def sync_page(
    url: str, items: PageItems, seen_at: datetime, plans: prepared.InsertPlans
) -> PageOutcome:
    """Prepare and write one listing page in its own transaction (a worker process's task)."""
    key = (os.getpid(), url)
    engine = _ENGINES.get(key)
    if engine is None:
        engine = _ENGINES[key] = _worker_engine(url)
    return write_page(engine, items, seen_at, plans)


def write_page(
    engine: Engine, items: PageItems, seen_at: datetime, plans: prepared.InsertPlans
) -> PageOutcome:
    """`prepare_page`, then `prepared.write_prepared` committed; once more if PostgreSQL deadlocks.

    In a pool's worker on SQLite, the page's new rows are first bound into the connection's
    in-memory ``stage`` tables, side by side with the other workers; the turn at the write
    lock then copies them with one ``INSERT ... SELECT`` per table (why:
    docs/decisions/sync-page-workers.md).
    """
    if isinstance(items, bytes):
        items = page_items(items)
    with Session(engine) as session:
        stored = prepared.stored_payloads(session, items)
    # Only a worker's engine attaches the stage to its connections (`_worker_engine`).
    staged = event.contains(engine, "connect", _worker_connection)
    page = prepare_page(items, seen_at, plans, stored, staged=staged)
    for attempt in (1, 2):
        try:
            with engine.connect() as connection:
                raw = connection.connection.driver_connection
                if page.inserts is not None and page.inserts.staging:
                    _stage(raw, plans, page.inserts)
                try:
                    with _write_turn(engine), session_scope(connection, write=True) as session:
                        result = prepared.write_prepared(
                            session,
                            page.models,
                            items,
                            seen_at=seen_at,
                            plans=plans,
                            inserts=page.inserts,
                        )
                finally:
                    if staged:
                        _clear_stage(raw)
            break
        except OperationalError:
            # Two workers upserting the same new tags or creators in different orders can
            # deadlock on PostgreSQL; the loser is rolled back and simply goes again.
            if attempt == 2 or engine.dialect.name != "postgresql":
                raise
    return PageOutcome(
        model_ids=[pm.id for pm in page.models],
        versions=sum(pm.n_versions for pm in page.models),
        files=sum(pm.n_files for pm in page.models),
        models_written=result.models_written,
        rejected=page.rejected,
    )


def prepare_page(
    items: list[Any],
    seen_at: datetime,
    plans: prepared.InsertPlans,
    stored: dict[int, tuple[str | None, str]] | None = None,
    *,
    staged: bool = False,
) -> PreparedPage:
    """Validate, hash and map one listing page (runs in a worker process; see the module doc).

    `stored` (from `prepared.stored_payloads`) lets models whose payload the catalog already
    holds skip the row building: an unchanged re-sync costs validation and hashing only.
    """
    validate = api.Model.model_validate
    page = PreparedPage(models=[])
    for index, item in enumerate(items):
        try:
            model: api.Model = validate(item)
        except ValidationError as exc:
            raw_id = item.get("id") if isinstance(item, dict) else None
            page.rejected.append(
                (index, raw_id if type(raw_id) is int else None, validation_reason(exc))
            )
            continue
        page.models.append(prepared.prepare_model(index, model, seen_at, plans, stored or {}))
    page.inserts = prepared.prepared_inserts(page.models, plans, staged=staged)
    return page


__all__ = [
    "PageItems",
    "PageOutcome",
    "PreparedPage",
    "init_worker",
    "prepare_page",
    "sync_page",
    "write_page",
]
