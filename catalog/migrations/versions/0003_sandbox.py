"""Sandbox records: vetted plugins with per-file sha256, and built sandbox images.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-27
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel.sql.sqltypes
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _json() -> sa.JSON:
    return sa.JSON(none_as_null=True)


def _str() -> sqlmodel.sql.sqltypes.AutoString:
    return sqlmodel.sql.sqltypes.AutoString()


def upgrade() -> None:
    op.create_table(
        "plugin",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", _str(), nullable=False),
        sa.Column("version", _str(), nullable=False),
        sa.Column("entry", _str(), nullable=False),
        sa.Column("hooks", _json(), nullable=False),
        sa.Column("requirements", _json(), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("api_version", sa.Integer(), nullable=False),
        sa.Column("tree_sha256", _str(), nullable=False),
        sa.Column("manifest_sha256", _str(), nullable=False),
        sa.Column("manifest_file", _str(), nullable=False),
        sa.Column("file_count", sa.Integer(), nullable=False),
        sa.Column("total_bytes", sa.BigInteger(), nullable=False),
        sa.Column("trusted", sa.Boolean(), nullable=False),
        sa.Column("source_path", sa.Text(), nullable=False),
        sa.Column("added_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_plugin")),
        sa.UniqueConstraint("name", name=op.f("uq_plugin_name")),
    )
    op.create_index(op.f("ix_plugin_tree_sha256"), "plugin", ["tree_sha256"], unique=False)
    op.create_table(
        "plugin_file",
        sa.Column("plugin_id", sa.Integer(), nullable=False),
        sa.Column("path", _str(), nullable=False),
        sa.Column("sha256", _str(), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["plugin_id"], ["plugin.id"],
            name=op.f("fk_plugin_file_plugin_id_plugin"), ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("plugin_id", "path", name=op.f("pk_plugin_file")),
    )
    op.create_table(
        "sandbox_image",
        sa.Column("image_id", _str(), nullable=False),
        sa.Column("tag", _str(), nullable=False),
        sa.Column("layer_diff_ids", _json(), nullable=False),
        sa.Column("lock_sha256", _str(), nullable=False),
        sa.Column("rootfs_sha256", _str(), nullable=True),
        sa.Column("torch_variant", _str(), nullable=False),
        sa.Column("app_version", _str(), nullable=False),
        sa.Column("worker_sha256", _str(), nullable=False),
        sa.Column("inputs_sha256", _str(), nullable=False),
        sa.Column("plugin_requirements", _json(), nullable=False),
        sa.Column("plugin_requirements_sha256", _str(), nullable=True),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("built_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("record_json", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("image_id", name=op.f("pk_sandbox_image")),
    )
    op.create_index(
        op.f("ix_sandbox_image_recorded_at"), "sandbox_image", ["recorded_at"], unique=False
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_sandbox_image_recorded_at"), table_name="sandbox_image")
    op.drop_table("sandbox_image")
    op.drop_table("plugin_file")
    op.drop_index(op.f("ix_plugin_tree_sha256"), table_name="plugin")
    op.drop_table("plugin")
