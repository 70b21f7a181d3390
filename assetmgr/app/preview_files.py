"""Preview pictures and the user's model folders: read on import, written on export.

Import: the picture beside each imported model file (`assetmgr.store.preview_sidecars`) goes
through the same thumbnail path as a downloaded image and into the image cache as the
version's own preview (``sidecar:<version id>``, shown first). What was used is listed among
the imported file's sidecars, what was refused among the report's ignored sidecars.

Export: a version's picture for ``X.preview.png`` is its own preview, else the first of its
Civitai images that is cached and not above the NSFW threshold; export never fetches.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from assetmgr.errors import EXPECTED_ERRORS
from assetmgr.store.exporter import ExportPreview, PreviewSource
from assetmgr.store.image_cache import sidecar_key
from assetmgr.store.import_report import ImportReport
from assetmgr.store.preview_sidecars import read_preview
from assetmgr.store.sidecars import SidecarIssue, read_sidecars
from assetmgr.store.thumbnails import ImageRejectedError, to_png

if TYPE_CHECKING:
    from assetmgr.app.context import AppContext

log = logging.getLogger(__name__)
_CACHE_ERRORS: tuple[type[Exception], ...] = (*EXPECTED_ERRORS, OSError)


def import_previews(ctx: AppContext, report: ImportReport) -> None:
    """Cache the preview beside each file `report` imported (see the module docstring)."""
    cache = ctx.previews().cache
    for imported in report.imported:
        model_path = Path(imported.path)
        lora_manager = None
        if any(s.endswith(".metadata.json") for s in imported.sidecars):
            lora_manager = read_sidecars(model_path).lora_manager
        found, issues = read_preview(model_path, lora_manager=lora_manager)
        report.ignored_sidecars.extend(issues)
        if found is None:
            continue
        try:
            cache.put(
                sidecar_key(imported.version_id),
                found.thumbnail,
                origin="sidecar",
                version_id=imported.version_id,
                nsfw_level=found.nsfw_level,
            )
        except _CACHE_ERRORS as exc:
            log.warning("preview %s not cached: %s", found.path, exc)
            reason = getattr(exc, "message", None) or f"cannot be stored ({exc})"
            report.ignored_sidecars.append(
                SidecarIssue(str(found.path), "preview-not-cached", reason, imported.path)
            )
            continue
        imported.sidecars.append(str(found.path))


def export_previews(ctx: AppContext) -> PreviewSource:
    """The export's source of ``X.preview.png`` pictures (see the module docstring)."""
    service = ctx.previews()

    def preview(version_id: int) -> ExportPreview | None:
        images = service.images([version_id]).get(version_id, [])
        cached = service.peek(images)
        for image in images:
            entry = cached.get(image.key)
            if entry is None or service.held_back(image):
                continue
            data = service.cache.read(entry)
            if data is None:
                continue
            try:
                return ExportPreview(to_png(data, source=str(entry.path)), image.nsfw_level)
            except ImageRejectedError as exc:
                log.warning("cached preview %s unusable: %s", entry.path, exc)
        return None

    return preview


__all__ = ["export_previews", "import_previews"]
