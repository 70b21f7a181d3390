"""What the user (or another UI's sidecar) says about a version: activation text, preferred
weight, notes. Kept apart from Civitai's data so a sync never overwrites it."""

# No `from __future__ import annotations`: SQLModel resolves annotations at runtime.

from datetime import datetime

from sqlalchemy import Text
from sqlmodel import Field, SQLModel

from catalog.models import UTCDateTime, utcnow


class UserMeta(SQLModel, table=True):
    __tablename__ = "user_meta"

    version_id: int = Field(
        foreign_key="model_version.id",
        ondelete="CASCADE",
        primary_key=True,
        sa_column_kwargs={"autoincrement": False},
    )
    activation_text: str | None = Field(default=None, sa_type=Text)
    """A1111's "activation text": what to add to the prompt with this LoRA."""
    preferred_weight: float | None = None
    """A1111's "preferred weight" (0 means the default multiplier)."""
    negative_text: str | None = Field(default=None, sa_type=Text)
    notes: str | None = Field(default=None, sa_type=Text)
    description: str | None = Field(default=None, sa_type=Text)
    sd_version: str | None = None
    source: str | None = None
    """Where it came from: ``a1111-json``, ``lora-manager``, ``civitai-info`` or ``user``."""
    updated_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


__all__ = ["UserMeta"]
