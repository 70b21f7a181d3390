"""Indexes and triggers set aside during a first sync into an empty catalog.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-28
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel.sql.sqltypes
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "deferred_schema",
        sa.Column("name", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("kind", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("sql", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("deferred_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_deferred_schema")),
    )


def downgrade() -> None:
    # Whatever a crashed first sync left set aside comes back before its record goes.
    bind = op.get_bind()
    if bind.dialect.name == "sqlite":
        rows = bind.exec_driver_sql("SELECT name, sql FROM deferred_schema").all()
        for name, sql in rows:
            present = bind.exec_driver_sql(
                "SELECT 1 FROM sqlite_master WHERE name = ?", (name,)
            ).first()
            if present is None:
                bind.exec_driver_sql(sql)
        if rows:
            bind.exec_driver_sql("INSERT INTO model_fts(model_fts) VALUES ('rebuild')")
    op.drop_table("deferred_schema")
