"""A first sync into an empty SQLite catalog defers search and hash-lookup maintenance.

Why, with the numbers: docs/decisions/sqlite-deferred-indexes.md. For a sync that starts on an
empty catalog (`defer`):

* in one transaction, the FTS triggers of `model_search` and the ``ix_model_file_<hash>``
  indexes are dropped and their DDL is kept in `deferred_schema`;
* when the sync ends, however it ends, once no page is in flight any more, `restore`
  recreates them from that DDL and rebuilds the FTS index from `model_search`, again in one
  transaction (not as soon as the last page was fetched: see the record).

If the process dies in between, the rows in `deferred_schema` say so: `open_catalog` calls
`restore` on the next open, so search and hash lookups are complete again before anyone reads
them. Restoring is correct at any moment (a rebuild indexes whatever is there), so a second
process that opens the catalog during such a sync merely makes the rest of it slower. While a
first sync runs, hash lookups work (by scanning) and search covers nothing yet.

PostgreSQL is left alone: its writers run in parallel and its tsvector column is generated.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from sqlalchemy import Engine, Table
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection
from sqlmodel import SQLModel

from catalog.db import sqlite_write_transaction
from catalog.models import HASH_COLUMNS, DeferredSchema

log = logging.getLogger(__name__)

DEFERRED_INDEXES: tuple[str, ...] = tuple(f"ix_model_file_{column}" for column in HASH_COLUMNS)
DEFERRED_TRIGGERS: tuple[str, ...] = ("model_fts_ai", "model_fts_ad", "model_fts_au")
_DEFERRED: Table = SQLModel.metadata.tables[DeferredSchema.__tablename__]


def _has_table(connection: Connection, name: str) -> bool:
    row = connection.exec_driver_sql(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,)
    ).first()
    return row is not None


def defer(engine: Engine) -> bool:
    """Set the search and hash-lookup structures aside if the catalog holds no model yet.

    Returns True when they are (or already were) deferred; the caller must then `restore`.
    """
    if engine.dialect.name != "sqlite":
        return False
    names = DEFERRED_INDEXES + DEFERRED_TRIGGERS
    with sqlite_write_transaction(engine) as connection:
        if not _has_table(connection, "deferred_schema"):
            return False
        if connection.exec_driver_sql("SELECT 1 FROM model LIMIT 1").first() is not None:
            return False
        marks = ", ".join("?" * len(names))
        # only "?" placeholders are interpolated; the names are bound
        objects = connection.exec_driver_sql(
            f"SELECT type, name, sql FROM sqlite_master WHERE name IN ({marks})",  # noqa: S608
            names,
        ).all()
        now = datetime.now(UTC)
        for kind, name, sql in objects:
            # Through the model's table, so `deferred_at` is stored as every other timestamp.
            connection.execute(
                sqlite_insert(_DEFERRED)
                .values(name=name, kind=kind, sql=sql, deferred_at=now)
                .on_conflict_do_nothing(index_elements=["name"])
            )
            connection.exec_driver_sql(f'DROP {kind.upper()} "{name}"')
        deferred = connection.exec_driver_sql("SELECT count(*) FROM deferred_schema").scalar()
    return bool(deferred)


def restore(engine: Engine) -> bool:
    """Recreate whatever `defer` set aside and rebuild the FTS index; False if nothing was."""
    if engine.dialect.name != "sqlite":
        return False
    # A plain read first: catalogs opened while another process writes should not queue for
    # the write lock just to find nothing to do.
    with engine.connect() as connection:
        if not _has_table(connection, "deferred_schema"):
            return False
        if connection.exec_driver_sql("SELECT 1 FROM deferred_schema LIMIT 1").first() is None:
            return False
    with sqlite_write_transaction(engine) as connection:
        # Index builds sort every row; let SQLite's sorter use helper threads for that.
        connection.exec_driver_sql("PRAGMA threads=4")
        rows = connection.exec_driver_sql(
            "SELECT name, sql FROM deferred_schema ORDER BY kind, name"
        ).all()
        if not rows:
            return False
        for name, sql in rows:
            present = connection.exec_driver_sql(
                "SELECT 1 FROM sqlite_master WHERE name = ?", (name,)
            ).first()
            if present is None:
                connection.exec_driver_sql(sql)
        connection.exec_driver_sql("INSERT INTO model_fts(model_fts) VALUES ('rebuild')")
        connection.exec_driver_sql("DELETE FROM deferred_schema")
    log.info("restored %d deferred catalog indexes and triggers", len(rows))
    return True


__all__ = ["DEFERRED_INDEXES", "DEFERRED_TRIGGERS", "defer", "restore"]
