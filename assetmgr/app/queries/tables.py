"""The catalog tables by name, and the model types, shared by the TUI's queries."""

from __future__ import annotations

from sqlalchemy import Table
from sqlmodel import SQLModel

import catalog.models  # noqa: F401  (registers the tables)

LORA_TYPES = ("LORA", "LoCon", "DoRA")
CHECKPOINT_TYPES = ("Checkpoint",)


def _t(name: str) -> Table:
    return SQLModel.metadata.tables[name]
