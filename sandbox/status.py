"""What `assetmgr sandbox status` reports: the image record, the engine's copy, staleness."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sandbox.image.record import ImageRecord
from sandbox.plugins import InstalledPlugin


@dataclass
class ImageStatus:
    """What `assetmgr sandbox status` reports."""

    record_path: Path
    record: ImageRecord | None
    record_problem: str | None = None
    engine_reachable: bool | None = None
    engine_matches: bool | None = None
    engine_problem: str | None = None
    in_catalog: bool = False
    worker_current: bool | None = None
    app_current: bool | None = None
    added_plugins: list[InstalledPlugin] = field(default_factory=list)
    required: list[str] = field(default_factory=list)
    in_image: list[str] = field(default_factory=list)
    stale_reasons: list[str] = field(default_factory=list)

    @property
    def built(self) -> bool:
        return self.record is not None

    @property
    def stale(self) -> bool:
        return bool(self.stale_reasons)

    required_sets: dict[str, list[str]] = field(default_factory=dict)
    in_image_sets: dict[str, list[str]] = field(default_factory=dict)

    @property
    def missing_from_image(self) -> list[str]:
        """Pins of the added plugins whose requirement set the image lacks."""
        missing = set(self.required_sets) - set(self.in_image_sets)
        return sorted({r for key in missing for r in self.required_sets[key]})

    @property
    def unused_in_image(self) -> list[str]:
        """Pins of requirement sets in the image that no added plugin needs any more."""
        unused = set(self.in_image_sets) - set(self.required_sets)
        return sorted({r for key in unused for r in self.in_image_sets[key]})

    def as_json(self) -> dict[str, Any]:
        r = self.record
        return {
            "record_path": str(self.record_path),
            "built": self.built,
            "record_problem": self.record_problem,
            "image": None
            if r is None
            else {
                "image_id": r.image_id,
                "tag": r.tag,
                "layer_diff_ids": list(r.layer_diff_ids),
                "lock_sha256": r.lock_sha256,
                "rootfs_sha256": r.rootfs_sha256,
                "torch_variant": r.torch_variant,
                "built_at": r.created_at.isoformat(),
                "app_version": r.app_version,
                "worker_sha256": r.worker_sha256,
                "size_bytes": r.size_bytes,
                "plugin_requirements": list(r.plugin_requirements),
                "plugin_requirements_sha256": r.plugin_requirements_sha256,
            },
            "engine": {
                "reachable": self.engine_reachable,
                "matches": self.engine_matches,
                "problem": self.engine_problem,
            },
            "in_catalog": self.in_catalog,
            "worker_current": self.worker_current,
            "app_current": self.app_current,
            "plugins": {
                "added": [
                    {
                        "name": p.name,
                        "version": p.version,
                        "requirements": list(p.requirements),
                        "trusted": p.trusted,
                    }
                    for p in self.added_plugins
                ],
                "required": list(self.required),
                "in_image": list(self.in_image),
                "missing_from_image": self.missing_from_image,
                "unused_in_image": self.unused_in_image,
            },
            "stale": self.stale,
            "stale_reasons": list(self.stale_reasons),
        }


__all__ = ["ImageStatus"]
