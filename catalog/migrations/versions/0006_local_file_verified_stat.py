"""The stat fingerprint of a local file's blob when it was last hashed.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-28
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel.sql.sqltypes
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Rows from before have none: their first mount re-hashes the blob and records one.
    op.add_column(
        "local_file",
        sa.Column("verified_stat", sqlmodel.sql.sqltypes.AutoString(), nullable=True),
    )


def downgrade() -> None:
    with op.batch_alter_table("local_file") as batch:
        batch.drop_column("verified_stat")
