"""What `assetmgr import` did with each file of a folder: the report both front ends show.

Every model-named file the walk found has exactly one outcome: imported, skipped (with a
stable `code` and a `reason`), a duplicate of a file imported in the same run, or not reached
because the whole import stopped (`ImportStop`: cancelled, the catalog unavailable, the store
unwritable). `ImportReport.counts` adds them up; `accounted` says they cover every file.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from assetmgr.store.scan import FollowedLink, Skipped
from assetmgr.store.sidecars import SidecarIssue

FOLDER_SKIPS = frozenset({"link-loop", "unreadable-folder"})
"""Skip codes about folders, not files: listed, but not counted among the files."""


@dataclass
class ImportedFile:
    path: str
    sha256: str
    file_id: int
    version_id: int
    model_id: int
    source: str
    """``civitai`` (Civitai's data), ``sidecar`` (a version created from an accepted sidecar
    claim, until Civitai's data replaces it) or ``local`` (unknown to Civitai)."""
    identified_by: str
    """``civitai`` (by-hash), ``catalog`` (a catalog file with this SHA256), ``sidecar`` or
    ``local`` (a new local model)."""
    link_target: str | None = None
    """Where the path points, when it is a symlink."""
    model_type: str | None = None
    base_model: str | None = None
    folder_hint: str | None = None
    """The folder name that set a new local model's type or base model (the header could not)."""
    sidecars: list[str] = field(default_factory=list)
    """The sidecars beside it that were read as hints (a refused claim is also listed among
    the report's ignored sidecars)."""


@dataclass(frozen=True)
class DuplicateFile:
    """A file with the same bytes (SHA256) as one imported in the same run: not stored twice."""

    path: str
    sha256: str
    duplicate_of: str
    """The path of the copy that was imported."""
    target: str | None = None
    """Where the path points, when it is a symlink."""


@dataclass(frozen=True)
class ImportStop:
    """Why the import stopped before every file was handled."""

    code: str
    """``cancelled``, ``catalog-unavailable`` or ``store-unwritable``."""
    reason: str


@dataclass
class ImportReport:
    folder: str = ""
    """The folder that was imported."""
    scanned: int = 0
    """Model-named files the walk found (the files every outcome adds up to)."""
    imported: list[ImportedFile] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    duplicates: list[DuplicateFile] = field(default_factory=list)
    links: list[FollowedLink] = field(default_factory=list)
    """Every symlink the walk followed, with where it points."""
    ignored_sidecars: list[SidecarIssue] = field(default_factory=list)
    lookup_error: str | None = None
    """Why Civitai could not be asked (files were then identified offline)."""
    stopped: ImportStop | None = None
    not_reached: list[str] = field(default_factory=list)
    """Files not handled because the import stopped."""

    def count(self, source: str) -> int:
        return sum(1 for f in self.imported if f.source == source)

    @property
    def skipped_files(self) -> list[Skipped]:
        return [s for s in self.skipped if s.code not in FOLDER_SKIPS]

    @property
    def counts(self) -> dict[str, int]:
        return {
            "files": self.scanned,
            "imported": len(self.imported),
            "skipped": len(self.skipped_files),
            "duplicates": len(self.duplicates),
            "not_reached": len(self.not_reached),
        }

    @property
    def accounted(self) -> bool:
        """Every file the walk found has exactly one outcome."""
        c = self.counts
        return c["imported"] + c["skipped"] + c["duplicates"] + c["not_reached"] == c["files"]

    def summary(self) -> str:
        """One line: what was imported, and how many files had another outcome."""
        c = self.counts
        text = f"imported {c['imported']} of {c['files']} files"
        extra = [
            f"{c['skipped']} skipped" if c["skipped"] else "",
            f"{c['duplicates']} duplicate{'s' if c['duplicates'] != 1 else ''}"
            if c["duplicates"]
            else "",
            f"{c['not_reached']} not reached" if c["not_reached"] else "",
            f"{len(self.ignored_sidecars)} sidecar{'s' if len(self.ignored_sidecars) != 1 else ''}"
            " ignored"
            if self.ignored_sidecars
            else "",
        ]
        parts = [e for e in extra if e]
        return text + (f"; {', '.join(parts)}" if parts else "")

    def as_json(self) -> dict[str, Any]:
        return {
            "folder": self.folder,
            "scanned": self.scanned,
            "counts": self.counts,
            "imported": [asdict(f) for f in self.imported],
            "skipped": [asdict(s) for s in self.skipped],
            "duplicates": [asdict(d) for d in self.duplicates],
            "links": [asdict(link) for link in self.links],
            "ignored_sidecars": [asdict(i) for i in self.ignored_sidecars],
            "lookup_error": self.lookup_error,
            "stopped": asdict(self.stopped) if self.stopped else None,
            "not_reached": list(self.not_reached),
            "civitai": self.count("civitai"),
            "sidecar": self.count("sidecar"),
            "local": self.count("local"),
        }


__all__ = [
    "FOLDER_SKIPS",
    "DuplicateFile",
    "ImportReport",
    "ImportStop",
    "ImportedFile",
]
