"""Engines, migrations and sessions of the catalog database (SQLite or PostgreSQL).

One engine per process (`open_catalog`), one `Session` per unit of work (`session_scope`),
committed at its boundary. The schema only ever comes from Alembic (`upgrade`); nothing here
calls ``create_all``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import URL, Connection, make_url
from sqlalchemy.exc import ArgumentError
from sqlalchemy.pool import StaticPool
from sqlmodel import Session

from catalog.errors import DatabaseURLError, MigrationError

logger = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
ALEMBIC_INI = MIGRATIONS_DIR / "alembic.ini"
SQLITE_BUSY_TIMEOUT_MS = 15_000
# Execution option read by the SQLite "begin" hook: "IMMEDIATE" takes the write lock up front.
_BEGIN_OPTION = "assetmgr_sqlite_begin"
_PG_MIGRATION_LOCK = 0x617373657431  # an arbitrary key of assetmgr's own ("asset1")

# Objects the migrations create by hand that the SQLModel metadata does not describe: the FTS5
# table with its shadow tables (SQLite) and the generated tsvector column with its index (PG).
_UNMODELED_TABLE_PREFIX = "model_fts"
_UNMODELED_NAMES = frozenset({"search_vector", "ix_model_search_vector"})


def include_name(name: str | None, type_: str, parent_names: Any) -> bool:
    """Alembic `include_name` hook: leave hand-made search objects out of autogenerate."""
    if name is None:
        return True
    if type_ == "table" and name.startswith(_UNMODELED_TABLE_PREFIX):
        return False
    return name not in _UNMODELED_NAMES


def normalize_url(url: str | URL) -> URL:
    """Parse a database URL; bare ``postgresql://`` (and ``postgres://``) select psycopg 3."""
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise DatabaseURLError(f"invalid database URL: {exc}") from None
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    if parsed.get_backend_name() not in ("sqlite", "postgresql"):
        raise DatabaseURLError(
            f"unsupported database {parsed.get_backend_name()!r}",
            backend=parsed.get_backend_name(),
        )
    return parsed


def _is_memory(url: URL) -> bool:
    database = url.database or ""
    return database in ("", ":memory:") or "mode=memory" in database


def make_engine(url: str | URL) -> Engine:
    """Create the engine for `url`, tuned per backend (SQLite: WAL, foreign keys, busy timeout)."""
    parsed = normalize_url(url)
    if parsed.get_backend_name() == "postgresql":
        return create_engine(parsed, pool_pre_ping=True)

    kwargs: dict[str, Any] = {
        "connect_args": {"check_same_thread": False, "timeout": SQLITE_BUSY_TIMEOUT_MS / 1000}
    }
    if _is_memory(parsed):
        # Every connection to ":memory:" is a new empty database; share one.
        kwargs["poolclass"] = StaticPool
    elif parsed.database and not parsed.database.startswith("file:"):
        Path(parsed.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(parsed, **kwargs)
    event.listen(engine, "connect", _sqlite_on_connect)
    event.listen(engine, "begin", _sqlite_on_begin)
    return engine


def _sqlite_on_connect(dbapi_connection: Any, _record: Any) -> None:
    # The sqlite3 module's own transaction handling skips BEGIN before DDL and SELECT; turn it
    # off and let `_sqlite_on_begin` emit BEGIN, so units of work and migrations are atomic.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA temp_store=MEMORY")
        cursor.execute("PRAGMA cache_size=-65536")  # 64 MiB: keeps the FTS index hot
    finally:
        cursor.close()


def _sqlite_on_begin(conn: Connection) -> None:
    mode = conn.get_execution_options().get(_BEGIN_OPTION, "")
    conn.exec_driver_sql(f"BEGIN {mode}".strip())


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Bring the schema to `revision` with Alembic; failures become `MigrationError`."""
    from alembic import command
    from alembic.config import Config

    config = Config(str(ALEMBIC_INI))
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    where = engine.url.render_as_string(hide_password=True)
    # Two processes may start at once: the version check and the DDL must happen under one
    # lock (SQLite: the write lock from BEGIN IMMEDIATE; PostgreSQL: an advisory lock).
    bind = engine
    if engine.dialect.name == "sqlite":
        bind = engine.execution_options(**{_BEGIN_OPTION: "IMMEDIATE"})
    try:
        with bind.begin() as connection:
            if engine.dialect.name == "postgresql":
                connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_PG_MIGRATION_LOCK})")
            config.attributes["connection"] = connection
            command.upgrade(config, revision)
    except Exception as exc:
        raise MigrationError(
            f"cannot migrate the catalog database {where}: {exc}", where=where
        ) from exc


def open_catalog(url: str | URL) -> Engine:
    """The engine of a ready-to-use catalog: created if needed and migrated to the latest schema.

    Indexes a first sync set aside and did not get to put back (it was killed) are restored
    first (`catalog.sync.bulkload`), so migrations and readers always see the whole schema.
    """
    from catalog.sync import bulkload

    engine = make_engine(url)
    try:
        bulkload.restore(engine)
        upgrade(engine)
    except BaseException:
        engine.dispose()
        raise
    return engine


@contextmanager
def sqlite_write_transaction(engine: Engine) -> Iterator[Connection]:
    """A connection in a ``BEGIN IMMEDIATE`` transaction, committed when the block ends."""
    bind = engine.execution_options(**{_BEGIN_OPTION: "IMMEDIATE"})
    with bind.begin() as connection:
        yield connection


@contextmanager
def session_scope(engine: Engine | Connection, *, write: bool = False) -> Iterator[Session]:
    """One session per unit of work: committed when the block ends, rolled back on error.

    ``write=True`` takes SQLite's write lock when the transaction starts (``BEGIN IMMEDIATE``)
    rather than at the first write; a read-then-write unit of work (an upsert batch) then waits
    for other writers instead of failing with "database is locked". `engine` may be a
    connection outside any transaction, for work that needs one connection's state (the sync
    workers' ``stage``); note that its options then keep ``IMMEDIATE``.
    """
    bind: Engine | Connection = engine
    if write and engine.dialect.name == "sqlite":
        bind = engine.execution_options(**{_BEGIN_OPTION: "IMMEDIATE"})
    with Session(bind, expire_on_commit=False) as session:
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise


__all__ = [
    "ALEMBIC_INI",
    "MIGRATIONS_DIR",
    "include_name",
    "make_engine",
    "normalize_url",
    "open_catalog",
    "session_scope",
    "sqlite_write_transaction",
    "upgrade",
]
