"""Alembic environment of the catalog.

`catalog.db.upgrade` passes an open connection in ``config.attributes["connection"]``; run by
hand, the URL comes from ``-x url=…`` (or ``sqlalchemy.url``). The target metadata is
`SQLModel.metadata` as defined by `catalog.models`.
"""

from __future__ import annotations

from typing import Any, Literal

from alembic import context
from alembic.autogenerate.api import AutogenContext
from sqlalchemy.engine import Connection
from sqlmodel import SQLModel

import catalog.runs  # noqa: F401  (generation_run)
import catalog.sandbox_records  # noqa: F401  (plugin, plugin_file, sandbox_image tables)
import catalog.usermeta  # noqa: F401  (its table is part of the target metadata)
from catalog.db import include_name, make_engine
from catalog.models import UTCDateTime

target_metadata = SQLModel.metadata


def render_item(type_: str, obj: Any, autogen_context: AutogenContext) -> str | Literal[False]:
    """Render app-level column types as plain SQLAlchemy ones, so migrations never import them."""
    if type_ == "type" and isinstance(obj, UTCDateTime):
        return "sa.DateTime(timezone=True)"
    return False


def _configure(connection: Connection) -> None:
    is_sqlite = connection.dialect.name == "sqlite"
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        compare_type=True,
        render_as_batch=is_sqlite,
        include_name=include_name,
        render_item=render_item,
        # catalog.db makes SQLite transactions real (explicit BEGIN), so DDL is atomic there too.
        transactional_ddl=True,
    )


def run_migrations_online() -> None:
    connection = context.config.attributes.get("connection")
    if isinstance(connection, Connection):
        _configure(connection)
        with context.begin_transaction():
            context.run_migrations()
        return

    url = context.get_x_argument(as_dictionary=True).get("url") or context.config.get_main_option(
        "sqlalchemy.url"
    )
    if not url:
        raise RuntimeError("no database URL: pass -x url=… or use catalog.db.upgrade()")
    engine = make_engine(url)
    try:
        with engine.connect() as own_connection:
            _configure(own_connection)
            with context.begin_transaction():
                context.run_migrations()
            own_connection.commit()
    finally:
        engine.dispose()


if context.is_offline_mode():
    raise RuntimeError("offline (--sql) migrations are not supported; run them on a live database")
run_migrations_online()
