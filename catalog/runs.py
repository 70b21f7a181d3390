"""Generation runs: what was asked (the full job spec), with what, and what came out."""

# No `from __future__ import annotations`: SQLModel resolves annotations at runtime.

from datetime import datetime
from typing import Any

from sqlalchemy import JSON
from sqlmodel import Field, SQLModel

from catalog.models import UTCDateTime, utcnow


class GenerationRun(SQLModel, table=True):
    __tablename__ = "generation_run"

    id: int | None = Field(default=None, primary_key=True)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    status: str = "ok"
    """``ok`` or ``failed``."""
    spec: dict[str, Any] = Field(default_factory=dict, sa_type=JSON(none_as_null=True))
    """The generation spec exactly as sent (container paths), so a rerun sends the same."""
    models: dict[str, Any] = Field(default_factory=dict, sa_type=JSON(none_as_null=True))
    """Mount name -> {sha256, version_id, file_id}: the inputs a rerun must find again."""
    plugins: list[Any] = Field(default_factory=list, sa_type=JSON(none_as_null=True))
    image_id: str | None = None
    """The sandbox image the job ran in."""
    model_sha256: str | None = None
    lora_hashes: dict[str, Any] = Field(default_factory=dict, sa_type=JSON(none_as_null=True))
    outputs: list[Any] = Field(default_factory=list, sa_type=JSON(none_as_null=True))
    """[{path, sha256, seed, infotext}] in batch order."""
    error: str | None = None
    rerun_of: int | None = Field(default=None, foreign_key="generation_run.id", ondelete="SET NULL")


__all__ = ["GenerationRun"]
