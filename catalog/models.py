"""SQLModel tables of the local catalog.

Each entity has a `<X>Base` with its descriptive fields and a `<X>` table class that adds keys,
bookkeeping and relationships. API payload types live in `catalog.civitai.types`;
`catalog.repo` maps between the two.

Conventions:

* ids of `Model`, `ModelVersion` and `ModelFile` are Civitai's ids (no autoincrement); models
  that exist only locally must pick ids that cannot collide (the store uses negative ids);
* timestamps are UTC-aware on both backends (`UTCDateTime`);
* rows are never deleted by a sync: models and versions that disappear get ``state='gone'``;
* every parent→child relationship cascades in the ORM and with ``ON DELETE CASCADE`` in the
  database, except `LocalFile.file_id` (``SET NULL``): a file on disk outlives catalog rows.
* `ModelSearch` holds one normalized search document per model; on SQLite an FTS5
  external-content table (``model_fts``) indexes it, on PostgreSQL a generated ``tsvector``
  column does (both created by the migrations, see ``versions/0001_initial.py``).
"""

# No `from __future__ import annotations`: SQLModel resolves relationship annotations at runtime.

from datetime import UTC, datetime
from typing import Any, Optional

from sqlalchemy import JSON, BigInteger, CheckConstraint, DateTime, Dialect, Text
from sqlalchemy.types import TypeDecorator
from sqlmodel import Field, Relationship, SQLModel

# Deterministic constraint names: SQLite batch migrations can only drop constraints by name.
SQLModel.metadata.naming_convention = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

MODEL_STATES: tuple[str, ...] = ("active", "archived", "taken_down", "gone")
MODEL_SOURCES: tuple[str, ...] = ("civitai", "local")
LOCAL_FILE_STATES: tuple[str, ...] = ("verified", "quarantined", "missing", "downloading")
SYNC_STATUSES: tuple[str, ...] = ("running", "done", "failed")
HASH_COLUMNS: tuple[str, ...] = ("sha256", "autov1", "autov2", "autov3", "crc32", "blake3")
"""Hash columns of `ModelFile`/`LocalFile`, in the order of `catalog.civitai.types.HASH_TYPES`."""


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC datetime on every backend.

    SQLite has no time zones: values are stored as naive UTC and come back tagged as UTC, so
    comparisons with aware datetimes never raise.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        value = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _json() -> JSON:
    # none_as_null: Python None is SQL NULL, not the JSON literal 'null'.
    return JSON(none_as_null=True)


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


# --- creators and tags ------------------------------------------------------------------------


class CreatorBase(SQLModel):
    username: str = Field(unique=True)
    image_url: str | None = None


class Creator(CreatorBase, table=True):
    __tablename__ = "creator"

    id: int | None = Field(default=None, primary_key=True)

    models: list["Model"] = Relationship(back_populates="creator", passive_deletes=True)


class Tag(SQLModel, table=True):
    __tablename__ = "tag"

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(unique=True)

    model_links: list["ModelTag"] = Relationship(
        back_populates="tag", cascade_delete=True, passive_deletes=True
    )


class ModelTag(SQLModel, table=True):
    """Link of a model to a tag; `position` keeps Civitai's tag order."""

    __tablename__ = "model_tag"

    model_id: int = Field(foreign_key="model.id", ondelete="CASCADE", primary_key=True)
    tag_id: int = Field(foreign_key="tag.id", ondelete="CASCADE", primary_key=True, index=True)
    position: int = 0

    model: "Model" = Relationship(back_populates="tag_links")
    tag: Tag = Relationship(back_populates="model_links")


# --- models ----------------------------------------------------------------------------------


class ModelBase(SQLModel):
    name: str = Field(index=True)
    type: str = Field(index=True)
    """Canonical model type (`catalog.civitai.types.MODEL_TYPES`); unknown ones are ``Other``."""
    type_raw: str | None = None
    """The type exactly as Civitai sent it."""
    nsfw: bool = False
    nsfw_level: int | None = None
    poi: bool = False
    minor: bool = False
    description_html: str | None = Field(default=None, sa_type=Text)
    description_text: str | None = Field(default=None, sa_type=Text)
    allow_commercial_use: list[str] = Field(default_factory=list, sa_type=_json())
    allow_no_credit: bool | None = None
    allow_derivatives: bool | None = None
    allow_different_license: bool | None = None
    availability: str | None = None
    mode: str | None = None
    download_count: int | None = Field(default=None, sa_type=BigInteger, index=True)
    thumbs_up_count: int | None = Field(default=None, sa_type=BigInteger)


class Model(ModelBase, table=True):
    __tablename__ = "model"
    __table_args__ = (
        CheckConstraint(_in("state", MODEL_STATES), name="state"),
        CheckConstraint(_in("source", MODEL_SOURCES), name="source"),
    )

    id: int = Field(primary_key=True, sa_column_kwargs={"autoincrement": False})
    creator_id: int | None = Field(
        default=None, foreign_key="creator.id", ondelete="SET NULL", index=True
    )
    state: str = Field(default="active", index=True)
    source: str = "civitai"
    payload_sha256: str | None = None
    """SHA-256 of the normalized API payload; an identical payload is not written again."""
    first_seen_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    last_seen_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    """When a sync last wrote this row (unchanged models are not touched; see SyncState)."""
    changed_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)

    creator: Creator | None = Relationship(back_populates="models")
    tag_links: list[ModelTag] = Relationship(
        back_populates="model",
        cascade_delete=True,
        passive_deletes=True,
        sa_relationship_kwargs={"order_by": "ModelTag.position"},
    )
    versions: list["ModelVersion"] = Relationship(
        back_populates="model",
        cascade_delete=True,
        passive_deletes=True,
        sa_relationship_kwargs={"order_by": "ModelVersion.position"},
    )

    @property
    def tag_names(self) -> list[str]:
        return [link.tag.name for link in self.tag_links]


class ModelSearch(SQLModel, table=True):
    """One search document per model, already tokenized by `catalog.text.search_text`.

    Written only by `catalog.repo`; the FTS5 table (SQLite) or the ``search_vector`` column
    (PostgreSQL) that indexes it is kept in sync by the database itself.
    """

    __tablename__ = "model_search"

    model_id: int = Field(
        foreign_key="model.id",
        ondelete="CASCADE",
        primary_key=True,
        sa_column_kwargs={"autoincrement": False},
    )
    name: str = Field(default="", sa_type=Text)
    tags: str = Field(default="", sa_type=Text)
    words: str = Field(default="", sa_type=Text)
    creator: str = Field(default="", sa_type=Text)
    versions: str = Field(default="", sa_type=Text)
    body: str = Field(default="", sa_type=Text)


# --- versions --------------------------------------------------------------------------------


class ModelVersionBase(SQLModel):
    position: int = 0
    """Civitai's `index`: 0 is the version shown first (the newest)."""
    name: str | None = None
    base_model: str | None = Field(default=None, index=True)
    base_model_type: str | None = None
    published_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    created_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    description_html: str | None = Field(default=None, sa_type=Text)
    description_text: str | None = Field(default=None, sa_type=Text)
    early_access_deadline: datetime | None = Field(default=None, sa_type=UTCDateTime)
    availability: str | None = None
    usage_control: str | None = None
    nsfw_level: int | None = None
    air: str | None = None
    download_url: str | None = None
    download_count: int | None = Field(default=None, sa_type=BigInteger)


class ModelVersion(ModelVersionBase, table=True):
    __tablename__ = "model_version"
    __table_args__ = (CheckConstraint(_in("state", MODEL_STATES), name="state"),)

    id: int = Field(primary_key=True, sa_column_kwargs={"autoincrement": False})
    model_id: int = Field(foreign_key="model.id", ondelete="CASCADE", index=True)
    state: str = "active"
    payload_sha256: str | None = None
    """SHA-256 of the version payload without its stats; None when written from a lookup."""

    model: Model = Relationship(back_populates="versions")
    files: list["ModelFile"] = Relationship(
        back_populates="version",
        cascade_delete=True,
        passive_deletes=True,
        sa_relationship_kwargs={"order_by": "ModelFile.id"},
    )
    images: list["Image"] = Relationship(
        back_populates="version",
        cascade_delete=True,
        passive_deletes=True,
        sa_relationship_kwargs={"order_by": "Image.position"},
    )
    trained_words: list["TrainedWord"] = Relationship(
        back_populates="version",
        cascade_delete=True,
        passive_deletes=True,
        sa_relationship_kwargs={"order_by": "TrainedWord.position"},
    )

    @property
    def trained_word_list(self) -> list[str]:
        return [w.word for w in self.trained_words]


class TrainedWord(SQLModel, table=True):
    """One trigger word or phrase; kept as its own row because entries may contain commas."""

    __tablename__ = "trained_word"

    version_id: int = Field(foreign_key="model_version.id", ondelete="CASCADE", primary_key=True)
    position: int = Field(primary_key=True, sa_column_kwargs={"autoincrement": False})
    word: str = Field(sa_type=Text)

    version: ModelVersion = Relationship(back_populates="trained_words")


# --- files and images ------------------------------------------------------------------------


class ModelFileBase(SQLModel):
    name: str | None = None
    size_kb: float | None = None
    type: str | None = None
    is_primary: bool = False
    format: str | None = None
    fp: str | None = None
    size_variant: str | None = None
    """`metadata.size`: ``full`` or ``pruned``."""
    pickle_scan_result: str | None = None
    virus_scan_result: str | None = None
    scanned_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    download_url: str | None = None
    # Uppercase hex as Civitai writes them; each indexed so any-hash lookup is one query.
    sha256: str | None = Field(default=None, index=True)
    autov1: str | None = Field(default=None, index=True)
    autov2: str | None = Field(default=None, index=True)
    autov3: str | None = Field(default=None, index=True)
    crc32: str | None = Field(default=None, index=True)
    blake3: str | None = Field(default=None, index=True)


class ModelFile(ModelFileBase, table=True):
    __tablename__ = "model_file"

    id: int = Field(primary_key=True, sa_column_kwargs={"autoincrement": False})
    version_id: int = Field(foreign_key="model_version.id", ondelete="CASCADE", index=True)

    version: ModelVersion = Relationship(back_populates="files")
    local: Optional["LocalFile"] = Relationship(
        back_populates="file", passive_deletes=True, sa_relationship_kwargs={"uselist": False}
    )


class ImageBase(SQLModel):
    civitai_id: int | None = Field(default=None, sa_type=BigInteger)
    position: int = 0
    url: str | None = None
    width: int | None = None
    height: int | None = None
    nsfw_level: int | None = None
    blurhash: str | None = None
    type: str | None = None
    meta: dict[str, Any] | None = Field(default=None, sa_type=_json())


class Image(ImageBase, table=True):
    """A preview image; a surrogate id because two of the three API shapes omit Civitai's."""

    __tablename__ = "image"

    id: int | None = Field(default=None, primary_key=True)
    version_id: int = Field(foreign_key="model_version.id", ondelete="CASCADE", index=True)

    version: ModelVersion = Relationship(back_populates="images")


# --- local store -----------------------------------------------------------------------------


class LocalFileBase(SQLModel):
    state: str = "downloading"
    path: str | None = None
    size_bytes: int | None = Field(default=None, sa_type=BigInteger)
    verified_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    sha256: str | None = Field(default=None, index=True)
    autov1: str | None = None
    autov2: str | None = None
    autov3: str | None = None
    crc32: str | None = None
    blake3: str | None = None
    verified_stat: str | None = None
    """The blob's device, inode, size, mtime and ctime when its bytes were last hashed
    (``dev:ino:size:mtime_ns:ctime_ns``); a job mounts the file only while it still matches,
    or after a re-hash."""


class LocalFile(LocalFileBase, table=True):
    """A file in the local store (filled by `assetmgr.store`); at most one per catalog file."""

    __tablename__ = "local_file"
    __table_args__ = (CheckConstraint(_in("state", LOCAL_FILE_STATES), name="state"),)

    id: int | None = Field(default=None, primary_key=True)
    file_id: int | None = Field(
        default=None, foreign_key="model_file.id", ondelete="SET NULL", unique=True
    )

    file: ModelFile | None = Relationship(back_populates="local")


# --- sync bookkeeping ------------------------------------------------------------------------


class SyncStateBase(SQLModel):
    key: str = Field(unique=True)
    """SHA-256 of the canonical filter set (`catalog.repo.sync_key`)."""
    params: dict[str, Any] = Field(default_factory=dict, sa_type=_json())
    cursor: str | None = None
    """The cursor of the next page to fetch; an interrupted sync resumes here."""
    status: str = "running"
    pages: int = 0
    models_written: int = 0
    started_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    updated_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    finished_at: datetime | None = Field(default=None, sa_type=UTCDateTime)


class SyncState(SyncStateBase, table=True):
    __tablename__ = "sync_state"
    __table_args__ = (CheckConstraint(_in("status", SYNC_STATUSES), name="status"),)

    id: int | None = Field(default=None, primary_key=True)


class DeferredSchema(SQLModel, table=True):
    """An index or trigger set aside while a first sync fills an empty catalog.

    `catalog.sync.bulkload` drops the hash-lookup indexes and the FTS triggers for that sync and
    keeps their DDL here, in the same transaction; whoever finds rows here (the sync when it
    ends, or the next `open_catalog` after a crash) recreates them and rebuilds the FTS index.
    """

    __tablename__ = "deferred_schema"

    name: str = Field(primary_key=True)
    kind: str
    """``index`` or ``trigger``, as ``sqlite_master.type`` says."""
    sql: str
    deferred_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


__all__ = [
    "HASH_COLUMNS",
    "LOCAL_FILE_STATES",
    "MODEL_SOURCES",
    "MODEL_STATES",
    "SYNC_STATUSES",
    "Creator",
    "CreatorBase",
    "DeferredSchema",
    "Image",
    "ImageBase",
    "LocalFile",
    "LocalFileBase",
    "Model",
    "ModelBase",
    "ModelFile",
    "ModelFileBase",
    "ModelSearch",
    "ModelTag",
    "ModelVersion",
    "ModelVersionBase",
    "SyncState",
    "SyncStateBase",
    "Tag",
    "TrainedWord",
    "UTCDateTime",
    "utcnow",
]
