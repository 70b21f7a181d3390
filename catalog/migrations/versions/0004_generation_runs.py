"""Generation runs (spec, image, input and output hashes) for `assetmgr rerun`.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-27
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel.sql.sqltypes
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "generation_run",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("status", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("spec", sa.JSON(none_as_null=True), nullable=False),
        sa.Column("models", sa.JSON(none_as_null=True), nullable=False),
        sa.Column("plugins", sa.JSON(none_as_null=True), nullable=False),
        sa.Column("image_id", sqlmodel.sql.sqltypes.AutoString(), nullable=True),
        sa.Column("model_sha256", sqlmodel.sql.sqltypes.AutoString(), nullable=True),
        sa.Column("lora_hashes", sa.JSON(none_as_null=True), nullable=False),
        sa.Column("outputs", sa.JSON(none_as_null=True), nullable=False),
        sa.Column("error", sqlmodel.sql.sqltypes.AutoString(), nullable=True),
        sa.Column("rerun_of", sa.Integer(), nullable=True),
        sa.ForeignKeyConstraint(
            ["rerun_of"], ["generation_run.id"],
            name=op.f("fk_generation_run_rerun_of_generation_run"), ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_generation_run")),
    )


def downgrade() -> None:
    op.drop_table("generation_run")
