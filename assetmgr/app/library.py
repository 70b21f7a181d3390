"""The store's use cases: pull, import, verify and delete, over `assetmgr.store`."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from assetmgr.store.download import DownloadProgress, PullResult
from assetmgr.store.exporter import ExportReport
from assetmgr.store.import_report import ImportReport
from assetmgr.store.service import DeletePlan, PullOutcome, VerifyReport

if TYPE_CHECKING:
    from assetmgr.app.context import AppContext
    from catalog.civitai.client import CivitaiClient

log = logging.getLogger(__name__)

PullProgress = Callable[[DownloadProgress], None]


def pull_one(
    ctx: AppContext,
    version_id: int,
    *,
    file_id: int | None = None,
    allow_pickle: bool = False,
    progress: PullProgress | None = None,
    cancel: threading.Event | None = None,
) -> PullResult:
    """Download one version's file (its primary by default) into the verified store."""
    return ctx.store_service().pull(
        version_id, file_id=file_id, allow_pickle=allow_pickle, progress=progress, cancel=cancel
    )


def pull_many(
    ctx: AppContext,
    version_ids: Sequence[int],
    *,
    file_id: int | None = None,
    concurrency: int | None = None,
    allow_pickle: bool = False,
    progress: PullProgress | None = None,
    cancel: threading.Event | None = None,
) -> list[PullOutcome]:
    """A download queue over `version_ids` (`concurrency` at a time, default: the settings');
    each outcome carries its result or its error."""
    return ctx.store_service().pull_many(
        [(vid, file_id) for vid in version_ids],
        concurrency=concurrency or ctx.settings.download_concurrency,
        allow_pickle=allow_pickle,
        progress=progress,
        cancel=cancel,
    )


def verify(
    ctx: AppContext,
    *,
    progress: Callable[[int, int, int], None] | None = None,
    cancel: threading.Event | None = None,
) -> VerifyReport:
    """Re-hash every blob; quarantine the corrupt ones (`assetmgr.store.service.verify_store`)."""
    from assetmgr.store.service import verify_store

    return verify_store(ctx.engine, ctx.store, progress=progress, cancel=cancel)


def import_models(
    ctx: AppContext,
    folder: Path,
    *,
    offline: bool = False,
    offline_if_no_client: bool = False,
    copy: bool = False,
    allow_pickle: bool = False,
    progress: Callable[[int, int, str], None] | None = None,
    cancel: threading.Event | None = None,
) -> ImportReport:
    """Hash a models folder, identify its files and add them to the store.

    `offline`: identify by the local catalog and checked sidecars only. With
    `offline_if_no_client` a Civitai client that cannot be built (a bad API base, say) means
    offline too, instead of an error.
    """
    from assetmgr.app.preview_files import import_previews
    from assetmgr.store.importer import import_folder

    client = None if offline else _client(ctx, optional=offline_if_no_client)
    report = import_folder(
        ctx.engine,
        ctx.store,
        client,
        folder.expanduser(),
        mode="copy" if copy else "auto",
        allow_pickle=allow_pickle,
        progress=progress,
        cancel=cancel,
    )
    import_previews(ctx, report)
    return report


def export(
    ctx: AppContext,
    dest: Path,
    *,
    layout: str,
    hardlink: bool = False,
    move_aside: bool = False,
) -> ExportReport:
    """Write the store as an A1111 or ComfyUI models folder, with ``X.preview.png`` pictures
    from the image cache (`assetmgr.store.exporter`)."""
    from assetmgr.app.preview_files import export_previews
    from assetmgr.store.exporter import export_library

    return export_library(
        ctx.engine,
        ctx.store,
        dest.expanduser(),
        layout=layout,
        hardlink=hardlink,
        move_aside=move_aside,
        previews=export_previews(ctx),
    )


def _client(ctx: AppContext, *, optional: bool) -> CivitaiClient | None:
    try:
        return ctx.client()
    except Exception:  # offline or misconfigured: the importer works without Civitai
        if not optional:
            raise
        log.info("importing without Civitai: no client", exc_info=True)
        return None


def plan_delete(ctx: AppContext, file_id: int) -> DeletePlan:
    """What deleting this catalog file's local copy would remove; nothing happens yet."""
    from assetmgr.store.service import plan_delete as plan

    return plan(ctx.engine, ctx.store, file_id=file_id)


def delete(ctx: AppContext, plan: DeletePlan) -> int:
    """Carry out `plan`; returns the bytes freed (0 when the blob is shared)."""
    return plan.execute(ctx.engine, ctx.store)


__all__ = [
    "DeletePlan",
    "DownloadProgress",
    "ExportReport",
    "ImportReport",
    "PullOutcome",
    "PullProgress",
    "PullResult",
    "VerifyReport",
    "delete",
    "export",
    "import_models",
    "plan_delete",
    "pull_many",
    "pull_one",
    "verify",
]
