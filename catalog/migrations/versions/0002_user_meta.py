"""User metadata per version (activation text, preferred weight, notes) from sidecars or the user.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel.sql.sqltypes
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "user_meta",
        sa.Column("version_id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("activation_text", sa.Text(), nullable=True),
        sa.Column("preferred_weight", sa.Float(), nullable=True),
        sa.Column("negative_text", sa.Text(), nullable=True),
        sa.Column("notes", sa.Text(), nullable=True),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("sd_version", sqlmodel.sql.sqltypes.AutoString(), nullable=True),
        sa.Column("source", sqlmodel.sql.sqltypes.AutoString(), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["version_id"], ["model_version.id"],
            name=op.f("fk_user_meta_version_id_model_version"), ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("version_id", name=op.f("pk_user_meta")),
    )


def downgrade() -> None:
    op.drop_table("user_meta")
