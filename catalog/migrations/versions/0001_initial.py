"""Initial catalog schema, with full-text search.

Revision ID: 0001
Revises:
Create Date: 2026-11-27

Search: `model_search` holds one pre-tokenized document per model (written by catalog.repo).

* SQLite: `model_fts` is an FTS5 *external-content* table over `model_search` (rowid =
  model id), so the text is stored once. Three triggers on `model_search` keep it in sync:
  insert adds the row to the index, delete removes it with FTS5's 'delete' command (which needs
  the old values, hence triggers rather than application code), update does both. Prefix
  indexes for 1-4 characters serve search-as-you-type. Ranking (bm25 weights) lives in
  catalog.search. Recovery after manual edits: ``INSERT INTO model_fts(model_fts)
  VALUES ('rebuild')``.
* PostgreSQL: `model_search.search_vector` is a generated (STORED) weighted tsvector of the
  same columns with a GIN index, so PostgreSQL maintains it itself.

Neither object is part of the SQLModel metadata; catalog.db.include_name hides them from
autogenerate.
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel.sql.sqltypes
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_FTS_COLUMNS = "name, tags, words, creator, versions, body"


def _text() -> sqlmodel.sql.sqltypes.AutoString:
    return sqlmodel.sql.sqltypes.AutoString()


def _utc() -> sa.DateTime:
    return sa.DateTime(timezone=True)


def _json() -> sa.JSON:
    return sa.JSON(none_as_null=True)


def upgrade() -> None:
    op.create_table(
        "creator",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("username", _text(), nullable=False),
        sa.Column("image_url", _text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_creator")),
        sa.UniqueConstraint("username", name=op.f("uq_creator_username")),
    )
    op.create_table(
        "tag",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", _text(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_tag")),
        sa.UniqueConstraint("name", name=op.f("uq_tag_name")),
    )
    op.create_table(
        "sync_state",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("key", _text(), nullable=False),
        sa.Column("params", _json(), nullable=False),
        sa.Column("cursor", _text(), nullable=True),
        sa.Column("status", _text(), nullable=False),
        sa.Column("pages", sa.Integer(), nullable=False),
        sa.Column("models_written", sa.Integer(), nullable=False),
        sa.Column("started_at", _utc(), nullable=False),
        sa.Column("updated_at", _utc(), nullable=False),
        sa.Column("finished_at", _utc(), nullable=True),
        sa.CheckConstraint(
            "status IN ('running', 'done', 'failed')", name=op.f("ck_sync_state_status")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_sync_state")),
        sa.UniqueConstraint("key", name=op.f("uq_sync_state_key")),
    )
    op.create_table(
        "model",
        sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("name", _text(), nullable=False),
        sa.Column("type", _text(), nullable=False),
        sa.Column("type_raw", _text(), nullable=True),
        sa.Column("nsfw", sa.Boolean(), nullable=False),
        sa.Column("nsfw_level", sa.Integer(), nullable=True),
        sa.Column("poi", sa.Boolean(), nullable=False),
        sa.Column("minor", sa.Boolean(), nullable=False),
        sa.Column("description_html", sa.Text(), nullable=True),
        sa.Column("description_text", sa.Text(), nullable=True),
        sa.Column("creator_id", sa.Integer(), nullable=True),
        sa.Column("allow_commercial_use", _json(), nullable=False),
        sa.Column("allow_no_credit", sa.Boolean(), nullable=True),
        sa.Column("allow_derivatives", sa.Boolean(), nullable=True),
        sa.Column("allow_different_license", sa.Boolean(), nullable=True),
        sa.Column("availability", _text(), nullable=True),
        sa.Column("mode", _text(), nullable=True),
        sa.Column("download_count", sa.BigInteger(), nullable=True),
        sa.Column("thumbs_up_count", sa.BigInteger(), nullable=True),
        sa.Column("state", _text(), nullable=False),
        sa.Column("source", _text(), nullable=False),
        sa.Column("payload_sha256", _text(), nullable=True),
        sa.Column("first_seen_at", _utc(), nullable=False),
        sa.Column("last_seen_at", _utc(), nullable=False),
        sa.Column("changed_at", _utc(), nullable=False),
        sa.CheckConstraint(
            "state IN ('active', 'archived', 'taken_down', 'gone')", name=op.f("ck_model_state")
        ),
        sa.CheckConstraint("source IN ('civitai', 'local')", name=op.f("ck_model_source")),
        sa.ForeignKeyConstraint(
            ["creator_id"],
            ["creator.id"],
            name=op.f("fk_model_creator_id_creator"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_model")),
    )
    op.create_index(op.f("ix_model_creator_id"), "model", ["creator_id"])
    op.create_index(op.f("ix_model_download_count"), "model", ["download_count"])
    op.create_index(op.f("ix_model_name"), "model", ["name"])
    op.create_index(op.f("ix_model_state"), "model", ["state"])
    op.create_index(op.f("ix_model_type"), "model", ["type"])

    op.create_table(
        "model_tag",
        sa.Column("model_id", sa.Integer(), nullable=False),
        sa.Column("tag_id", sa.Integer(), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["model_id"], ["model.id"], name=op.f("fk_model_tag_model_id_model"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["tag_id"], ["tag.id"], name=op.f("fk_model_tag_tag_id_tag"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("model_id", "tag_id", name=op.f("pk_model_tag")),
    )
    op.create_index(op.f("ix_model_tag_tag_id"), "model_tag", ["tag_id"])

    op.create_table(
        "model_search",
        sa.Column("model_id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("tags", sa.Text(), nullable=False),
        sa.Column("words", sa.Text(), nullable=False),
        sa.Column("creator", sa.Text(), nullable=False),
        sa.Column("versions", sa.Text(), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(
            ["model_id"],
            ["model.id"],
            name=op.f("fk_model_search_model_id_model"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("model_id", name=op.f("pk_model_search")),
    )

    op.create_table(
        "model_version",
        sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("model_id", sa.Integer(), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("name", _text(), nullable=True),
        sa.Column("base_model", _text(), nullable=True),
        sa.Column("base_model_type", _text(), nullable=True),
        sa.Column("published_at", _utc(), nullable=True),
        sa.Column("created_at", _utc(), nullable=True),
        sa.Column("description_html", sa.Text(), nullable=True),
        sa.Column("description_text", sa.Text(), nullable=True),
        sa.Column("early_access_deadline", _utc(), nullable=True),
        sa.Column("availability", _text(), nullable=True),
        sa.Column("usage_control", _text(), nullable=True),
        sa.Column("nsfw_level", sa.Integer(), nullable=True),
        sa.Column("air", _text(), nullable=True),
        sa.Column("download_url", _text(), nullable=True),
        sa.Column("download_count", sa.BigInteger(), nullable=True),
        sa.Column("state", _text(), nullable=False),
        sa.Column("payload_sha256", _text(), nullable=True),
        sa.CheckConstraint(
            "state IN ('active', 'archived', 'taken_down', 'gone')",
            name=op.f("ck_model_version_state"),
        ),
        sa.ForeignKeyConstraint(
            ["model_id"],
            ["model.id"],
            name=op.f("fk_model_version_model_id_model"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_model_version")),
    )
    op.create_index(op.f("ix_model_version_base_model"), "model_version", ["base_model"])
    op.create_index(op.f("ix_model_version_model_id"), "model_version", ["model_id"])

    op.create_table(
        "trained_word",
        sa.Column("version_id", sa.Integer(), nullable=False),
        sa.Column("position", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("word", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(
            ["version_id"],
            ["model_version.id"],
            name=op.f("fk_trained_word_version_id_model_version"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("version_id", "position", name=op.f("pk_trained_word")),
    )

    op.create_table(
        "model_file",
        sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("version_id", sa.Integer(), nullable=False),
        sa.Column("name", _text(), nullable=True),
        sa.Column("size_kb", sa.Float(), nullable=True),
        sa.Column("type", _text(), nullable=True),
        sa.Column("is_primary", sa.Boolean(), nullable=False),
        sa.Column("format", _text(), nullable=True),
        sa.Column("fp", _text(), nullable=True),
        sa.Column("size_variant", _text(), nullable=True),
        sa.Column("pickle_scan_result", _text(), nullable=True),
        sa.Column("virus_scan_result", _text(), nullable=True),
        sa.Column("scanned_at", _utc(), nullable=True),
        sa.Column("download_url", _text(), nullable=True),
        sa.Column("sha256", _text(), nullable=True),
        sa.Column("autov1", _text(), nullable=True),
        sa.Column("autov2", _text(), nullable=True),
        sa.Column("autov3", _text(), nullable=True),
        sa.Column("crc32", _text(), nullable=True),
        sa.Column("blake3", _text(), nullable=True),
        sa.ForeignKeyConstraint(
            ["version_id"],
            ["model_version.id"],
            name=op.f("fk_model_file_version_id_model_version"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_model_file")),
    )
    op.create_index(op.f("ix_model_file_version_id"), "model_file", ["version_id"])
    for column in ("sha256", "autov1", "autov2", "autov3", "crc32", "blake3"):
        op.create_index(op.f(f"ix_model_file_{column}"), "model_file", [column])

    op.create_table(
        "image",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("civitai_id", sa.BigInteger(), nullable=True),
        sa.Column("version_id", sa.Integer(), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("url", _text(), nullable=True),
        sa.Column("width", sa.Integer(), nullable=True),
        sa.Column("height", sa.Integer(), nullable=True),
        sa.Column("nsfw_level", sa.Integer(), nullable=True),
        sa.Column("blurhash", _text(), nullable=True),
        sa.Column("type", _text(), nullable=True),
        sa.Column("meta", _json(), nullable=True),
        sa.ForeignKeyConstraint(
            ["version_id"],
            ["model_version.id"],
            name=op.f("fk_image_version_id_model_version"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_image")),
    )
    op.create_index(op.f("ix_image_version_id"), "image", ["version_id"])

    op.create_table(
        "local_file",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("file_id", sa.Integer(), nullable=True),
        sa.Column("state", _text(), nullable=False),
        sa.Column("path", _text(), nullable=True),
        sa.Column("size_bytes", sa.BigInteger(), nullable=True),
        sa.Column("verified_at", _utc(), nullable=True),
        sa.Column("sha256", _text(), nullable=True),
        sa.Column("autov1", _text(), nullable=True),
        sa.Column("autov2", _text(), nullable=True),
        sa.Column("autov3", _text(), nullable=True),
        sa.Column("crc32", _text(), nullable=True),
        sa.Column("blake3", _text(), nullable=True),
        sa.CheckConstraint(
            "state IN ('verified', 'quarantined', 'missing', 'downloading')",
            name=op.f("ck_local_file_state"),
        ),
        sa.ForeignKeyConstraint(
            ["file_id"],
            ["model_file.id"],
            name=op.f("fk_local_file_file_id_model_file"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_local_file")),
        sa.UniqueConstraint("file_id", name=op.f("uq_local_file_file_id")),
    )
    op.create_index(op.f("ix_local_file_sha256"), "local_file", ["sha256"])

    dialect = op.get_bind().dialect.name
    if dialect == "sqlite":
        _create_sqlite_fts()
    elif dialect == "postgresql":
        _create_postgresql_fts()


def _create_sqlite_fts() -> None:
    # prefix='1 2 3 4': index entries for 1- to 4-character prefixes, the common
    # search-as-you-type queries, so they don't merge thousands of terms' doclists.
    op.execute(
        f"""
        CREATE VIRTUAL TABLE model_fts USING fts5(
            {_FTS_COLUMNS},
            content='model_search', content_rowid='model_id',
            tokenize='unicode61 remove_diacritics 2', prefix='1 2 3 4'
        )
        """
    )
    new_values = "new.model_id, new.name, new.tags, new.words, new.creator, new.versions, new.body"
    old_values = "old.model_id, old.name, old.tags, old.words, old.creator, old.versions, old.body"
    insert_new = f"INSERT INTO model_fts(rowid, {_FTS_COLUMNS}) VALUES ({new_values});"
    delete_old = (
        f"INSERT INTO model_fts(model_fts, rowid, {_FTS_COLUMNS}) VALUES ('delete', {old_values});"
    )
    op.execute(f"CREATE TRIGGER model_fts_ai AFTER INSERT ON model_search BEGIN {insert_new} END")
    op.execute(f"CREATE TRIGGER model_fts_ad AFTER DELETE ON model_search BEGIN {delete_old} END")
    op.execute(
        "CREATE TRIGGER model_fts_au AFTER UPDATE ON model_search "
        f"BEGIN {delete_old} {insert_new} END"
    )


def _create_postgresql_fts() -> None:
    op.execute(
        """
        ALTER TABLE model_search ADD COLUMN search_vector tsvector GENERATED ALWAYS AS (
            setweight(to_tsvector('simple'::regconfig, name), 'A')
            || setweight(to_tsvector('simple'::regconfig, tags || ' ' || words || ' ' || creator), 'B')
            || setweight(to_tsvector('simple'::regconfig, versions), 'C')
            || setweight(to_tsvector('simple'::regconfig, body), 'D')
        ) STORED
        """
    )
    op.execute("CREATE INDEX ix_model_search_vector ON model_search USING gin (search_vector)")


def downgrade() -> None:
    dialect = op.get_bind().dialect.name
    if dialect == "sqlite":
        for trigger in ("model_fts_ai", "model_fts_ad", "model_fts_au"):
            op.execute(f"DROP TRIGGER IF EXISTS {trigger}")
        op.execute("DROP TABLE IF EXISTS model_fts")
    elif dialect == "postgresql":
        op.execute("DROP INDEX IF EXISTS ix_model_search_vector")
    for table in (
        "local_file",
        "image",
        "model_file",
        "trained_word",
        "model_version",
        "model_search",
        "model_tag",
        "model",
        "sync_state",
        "tag",
        "creator",
    ):
        op.drop_table(table)
