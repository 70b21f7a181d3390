"""Stored plugin folders named by tree hash: the catalog records each plugin's folder.

Rows from before have no folder recorded (their copy is ``<name>-<version>``, which two plugins
could share); `sandbox.service` moves such a copy to its tree-hash folder when it opens the
catalog and records the new name here.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-07
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel.sql.sqltypes
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "plugin",
        sa.Column("store_dir", sqlmodel.sql.sqltypes.AutoString(), nullable=True),
    )


def downgrade() -> None:
    with op.batch_alter_table("plugin") as batch:
        batch.drop_column("store_dir")
