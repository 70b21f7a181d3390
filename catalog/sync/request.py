"""What a sync is asked for (`SyncRequest`), how far it got (`SyncProgress`), what it did."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from catalog.civitai.client import ModelFilters

SyncProgressCallback = Callable[["SyncProgress"], None]


@dataclass
class SyncRequest:
    """What to sync: listing filters, explicit ids, and a cap."""

    filters: ModelFilters = field(default_factory=ModelFilters)
    model_ids: Sequence[int] = ()
    max_models: int | None = None
    api_base: str = ""

    def key(self) -> str:
        """A stable id of this filter set, so a rerun finds its interrupted predecessor."""
        payload = {
            "filters": asdict(self.filters),
            "model_ids": sorted(self.model_ids),
            "max_models": self.max_models,
            "api_base": self.api_base,
        }
        return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()

    @property
    def is_full_listing(self) -> bool:
        """True for an unfiltered, uncapped listing sync: only then can absence mean removal."""
        f = self.filters
        return not (
            self.model_ids
            or self.max_models
            or f.types
            or f.base_models
            or f.query
            or f.tag
            or f.username
            or f.ids
        )


@dataclass
class SyncProgress:
    """Counters reported after every page."""

    pages: int = 0
    models: int = 0
    versions: int = 0
    files: int = 0
    models_written: int = 0
    rejected: int = 0
    total_models: int | None = None


@dataclass
class SyncSummary:
    """The result of a sync: what was seen, what was written, and per-item errors."""

    models: int = 0
    versions: int = 0
    files: int = 0
    models_written: int = 0
    models_marked: int = 0
    pages: int = 0
    resumed: bool = False
    errors: list[dict[str, Any]] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        """The CLI contract: ``{"models", "versions", "files", "errors"}`` plus extras."""
        return {
            "models": self.models,
            "versions": self.versions,
            "files": self.files,
            "errors": self.errors,
            "written": self.models_written,
            "marked": self.models_marked,
            "pages": self.pages,
            "resumed": self.resumed,
        }
