"""What the sandbox keeps in the catalog: vetted plugins with every file's sha256, and the
records of built sandbox images.

Plain tables only: the code that fills them lives on the sandbox side (`sandbox.service`),
because the catalog never imports the sandbox.

* `Plugin`: one row per added plugin (unique name). `tree_sha256` hashes every
  (path, sha256) pair, so it identifies the plugin's exact content; `requirements` are the
  exact pins its manifest asked for, which the image build adds to the wheelhouse lock;
  `trusted` allows its plugin set to share a warm worker; `store_dir` names the stored copy's
  folder (the tree sha256, so two plugins never share one).
* `PluginFile`: every file of the stored copy with its sha256 and size, checked before each run.
* `SandboxImage`: each recorded build (`sandbox.image.ImageRecord`), keyed by the engine's
  image id; `record_json` keeps the whole record, the other columns are for queries.
"""

# No `from __future__ import annotations`: SQLModel resolves annotations at runtime.

from datetime import datetime

from sqlalchemy import JSON, BigInteger, Text
from sqlmodel import Field, Relationship, SQLModel

from catalog.models import UTCDateTime, utcnow


def _json() -> JSON:
    return JSON(none_as_null=True)


class Plugin(SQLModel, table=True):
    __tablename__ = "plugin"

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(unique=True)
    version: str
    entry: str
    hooks: list[str] = Field(default_factory=list, sa_type=_json())
    requirements: list[str] = Field(default_factory=list, sa_type=_json())
    description: str = Field(default="", sa_type=Text)
    api_version: int = 1
    tree_sha256: str = Field(index=True)
    manifest_sha256: str
    manifest_file: str
    file_count: int = 0
    total_bytes: int = Field(default=0, sa_type=BigInteger)
    trusted: bool = False
    source_path: str = Field(default="", sa_type=Text)
    """The directory it was added from (informational only; the stored copy is what runs)."""
    store_dir: str | None = None
    """The stored copy's folder under the plugins directory: its tree sha256. None for rows
    from before folders were named by tree hash, until their copy is moved (on open)."""
    added_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)

    files: list["PluginFile"] = Relationship(
        back_populates="plugin", cascade_delete=True, passive_deletes=True
    )


class PluginFile(SQLModel, table=True):
    __tablename__ = "plugin_file"

    plugin_id: int = Field(foreign_key="plugin.id", ondelete="CASCADE", primary_key=True)
    path: str = Field(primary_key=True)
    sha256: str
    size: int = Field(default=0, sa_type=BigInteger)

    plugin: Plugin = Relationship(back_populates="files")


class SandboxImage(SQLModel, table=True):
    __tablename__ = "sandbox_image"

    image_id: str = Field(primary_key=True)
    tag: str
    layer_diff_ids: list[str] = Field(default_factory=list, sa_type=_json())
    lock_sha256: str
    rootfs_sha256: str | None = None
    torch_variant: str
    app_version: str
    worker_sha256: str
    inputs_sha256: str
    plugin_requirements: list[str] = Field(default_factory=list, sa_type=_json())
    plugin_requirements_sha256: str | None = None
    size_bytes: int = Field(default=0, sa_type=BigInteger)
    built_at: datetime = Field(sa_type=UTCDateTime)
    recorded_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime, index=True)
    record_json: str = Field(sa_type=Text)


__all__ = ["Plugin", "PluginFile", "SandboxImage"]
