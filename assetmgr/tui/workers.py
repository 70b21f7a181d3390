"""Every thread worker of the TUI, mixed into the App so one handler sees every failure.

Rules (style guide 6-7): a worker gets plain values, opens its own session, calls a service
with a progress callback and the worker's ``cancelled_event``, and only ever posts messages
(`assetmgr.tui.messages`). It never reads or writes a widget. Each concern has its own
exclusive group, so the newest request wins (a new search cancels the previous one) while a
sync and three downloads run side by side.
"""

from __future__ import annotations

import threading
import time
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlmodel import Session
from textual import work
from textual.worker import Worker, get_current_worker

from assetmgr.app import queries
from assetmgr.tui import messages as m

if TYPE_CHECKING:
    from textual.app import App

    from assetmgr.app.previews import CatalogImage
    from assetmgr.tui.services import GenerateRequest, GenerationProgress, Services

    _Base = App[None]
else:
    _Base = object

PAGE_SIZE = 200
FIRST_PAGE_SIZE = 60
"""Smaller, so the first rows are on screen sooner; a screenful is ~40 rows anyway."""
PREVIEW_PIXELS = 512
SYNC_MAX_MODELS = 500
SYNC_PAGE_SIZE = 100


def _cancelled() -> bool:
    return get_current_worker().is_cancelled


def _cancel_event() -> threading.Event:
    return get_current_worker().cancelled_event


def _human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


class WorkersMixin(_Base):
    """Thread workers; `services` and `job_workers` are set by the App."""

    services: Services
    job_workers: dict[Worker[Any], str]

    # --- catalog reads ---------------------------------------------------------------------

    @work(thread=True, exclusive=True, exit_on_error=False, group="catalog-page")
    def load_page(self, query: queries.BrowseQuery, generation: int, offset: int) -> None:
        started = time.perf_counter()
        limit = FIRST_PAGE_SIZE if offset == 0 else PAGE_SIZE
        with Session(self.services.engine) as session:
            rows = queries.fetch_page(session, query, offset=offset, limit=limit)
        if _cancelled():
            return
        self.post_message(
            m.ModelsPageLoaded(
                generation,
                query,
                offset,
                rows,
                exhausted=len(rows) < limit,
                elapsed_s=time.perf_counter() - started,
            )
        )

    @work(thread=True, exclusive=True, exit_on_error=False, group="catalog-count")
    def count_models(self, query: queries.BrowseQuery, generation: int) -> None:
        with Session(self.services.engine) as session:
            total = queries.count_models(session, query)
        if not _cancelled():
            self.post_message(m.ModelsCounted(generation, total))

    @work(thread=True, exclusive=True, exit_on_error=False, group="catalog-updates")
    def mark_updates(self) -> None:
        with Session(self.services.engine) as session:
            ids = queries.update_model_ids(session)
        if not _cancelled():
            self.post_message(m.UpdatesMarked(ids))

    @work(thread=True, exclusive=True, exit_on_error=False, group="catalog-facets")
    def load_facets(self) -> None:
        with Session(self.services.engine) as session:
            facets = queries.load_facets(session)
        if not _cancelled():
            self.post_message(m.FacetsLoaded(facets))

    @work(thread=True, exclusive=True, exit_on_error=False, group="catalog-demo")
    def check_demo(self) -> None:
        from assetmgr.app.models import is_demo_catalog

        is_demo = is_demo_catalog(self.services)
        if not _cancelled():
            self.post_message(m.DemoChecked(is_demo))

    @work(thread=True, exclusive=True, exit_on_error=False, group="catalog-detail")
    def load_detail(self, model_id: int) -> None:
        with Session(self.services.engine) as session:
            detail = queries.load_detail(session, model_id)
        images = self.services.previews().images([v.id for v in detail.versions])
        if not _cancelled():
            self.post_message(m.ModelDetailLoaded(detail, images))

    @work(thread=True, exclusive=True, exit_on_error=False, group="catalog-preview")
    def load_gallery_image(
        self, version_id: int, image: CatalogImage, key: str, *, reveal: bool
    ) -> None:
        """The cached thumbnail of `image`, else fetched (above the threshold only when
        `reveal`); a failure posts its one line (`gallery.failure_note`)."""
        from assetmgr.errors import EXPECTED_ERRORS
        from assetmgr.tui.gallery import failure_note

        previews = self.services.previews()
        picture = previews.picture(image)
        if picture is None:
            try:
                previews.fetch(image, reveal=reveal)
            except EXPECTED_ERRORS as exc:
                if not _cancelled():
                    self.post_message(m.PreviewLoaded(version_id, None, failure_note(exc), key))
                return
            picture = previews.picture(image)
        if not _cancelled():
            note = "" if picture is not None else "The cached preview could not be read"
            self.post_message(m.PreviewLoaded(version_id, picture, note, key))

    @work(thread=True, exclusive=True, exit_on_error=False, group="catalog-image-meta")
    def load_image_meta(self, version_id: int) -> None:
        """Generation data for a version's images the model payload had none for."""
        from assetmgr.app.image_meta import fill_generation_data
        from assetmgr.errors import EXPECTED_ERRORS

        try:
            fill_generation_data(self.services, version_id)
        except EXPECTED_ERRORS:
            return  # they keep "no generation data"; the preview's own line says if offline
        images = self.services.previews().images([version_id])[version_id]
        if not _cancelled():
            self.post_message(m.ImageMetaLoaded(version_id, images))

    @work(thread=True, exclusive=True, exit_on_error=False, group="catalog-prefetch")
    def prefetch_previews(self, model_id: int, neighbour_ids: list[int]) -> None:
        """Fill the cache for the selected model and its neighbours (never above the NSFW
        threshold); a newer selection cancels it."""
        self.services.previews().prefetch(model_id, neighbour_ids, cancel=_cancel_event())

    @work(thread=True, exclusive=True, exit_on_error=False, group="catalog-preview")
    def load_preview(
        self, version_id: int, path: Path | None, note: str, key: str | None = None
    ) -> None:
        if path is None:
            self.post_message(m.PreviewLoaded(version_id, None, note, key))
            return
        from PIL import Image

        try:
            with Image.open(path) as source:
                image = source.convert("RGB")
            image.thumbnail((PREVIEW_PIXELS, PREVIEW_PIXELS))
        except OSError as exc:
            note = f"cannot read {path.name}: {exc}"
            self.post_message(m.PreviewLoaded(version_id, None, note, key))
            return
        if not _cancelled():
            self.post_message(m.PreviewLoaded(version_id, image, "", key))

    @work(thread=True, exclusive=True, exit_on_error=False, group="completion")
    def find_completions(self, prefix: str) -> None:
        with Session(self.services.engine) as session:
            items = queries.complete(session, prefix)
        if not _cancelled():
            self.post_message(m.CompletionsFound(prefix, items))

    # --- long jobs -------------------------------------------------------------------------

    @work(thread=True, exclusive=True, exit_on_error=False, group="sync", description="sync")
    def run_sync(self, job_id: str, query: queries.BrowseQuery) -> None:
        from assetmgr.app.sync import SyncOptions, SyncProgress, sync_catalog

        options = SyncOptions(
            types=tuple(query.types),
            base_models=tuple(query.base_models),
            query=query.search.strip() or None,
            tag=query.tags[0] if query.tags else None,
            nsfw=query.nsfw,
            page_size=SYNC_PAGE_SIZE,
            max_models=SYNC_MAX_MODELS,
        )

        def progress(p: SyncProgress) -> None:
            text = f"{p.pages} pages · {p.models} models · {p.models_written} written"
            self.post_message(m.JobProgressed(job_id, p.models, p.total_models, text))

        outcome = sync_catalog(self.services, options, progress=progress, cancel=_cancel_event())
        summary = outcome.summary
        if summary is None:
            # As `assetmgr sync`: an empty catalog gets the demo catalog instead.
            text = (
                f"Civitai is unreachable; seeded the demo catalog instead "
                f"({outcome.demo_counts['models']} models)"
            )
        else:
            text = (
                f"synced {summary.models} models ({summary.models_written} written"
                f"{', ' + str(len(summary.errors)) + ' rejected' if summary.errors else ''})"
            )
        self.post_message(m.JobFinished(job_id, text, outcome))
        self.post_message(m.CatalogChanged("sync"))

    def start_pull(self, job_id: str, version_id: int, label: str) -> Worker[None]:
        """A download in its own exclusive group: the same version twice replaces, others queue."""
        return self.run_worker(
            partial(self._pull, job_id, version_id),
            name=job_id,
            group=f"download:{version_id}",
            description=f"download {label}",
            exclusive=True,
            thread=True,
            exit_on_error=False,
        )

    def _pull(self, job_id: str, version_id: int) -> None:
        from assetmgr.app.library import DownloadProgress, pull_one

        def progress(p: DownloadProgress) -> None:
            total = p.total_bytes
            text = f"{_human_bytes(p.done_bytes)}" + (f" / {_human_bytes(total)}" if total else "")
            self.post_message(m.JobProgressed(job_id, p.done_bytes, total, text))

        try:
            result = pull_one(self.services, version_id, progress=progress, cancel=_cancel_event())
        except BaseException:
            # A refused pull changes what the pane shows too: the file's state, and what the
            # refusal taught (early access, downloads disabled).
            self.post_message(m.CatalogChanged("pull"))
            raise
        verb = "already in the store" if result.already_present else "downloaded and verified"
        self.post_message(m.JobFinished(job_id, f"{verb}: {result.sha256[:12]}…", result))
        self.post_message(m.CatalogChanged("pull"))

    @work(thread=True, exclusive=True, exit_on_error=False, group="verify", description="verify")
    def run_verify(self, job_id: str) -> None:
        from assetmgr.app.library import verify

        def progress(done: int, total: int, files: int) -> None:
            text = f"{files} files · {_human_bytes(done)} / {_human_bytes(total)}"
            self.post_message(m.JobProgressed(job_id, done, total or None, text))

        report = verify(self.services, progress=progress, cancel=_cancel_event())
        if report.clean:
            text = f"verified {report.ok} of {report.checked} files: all good"
        else:
            text = (
                f"{len(report.corrupt)} corrupt (quarantined), {len(report.missing)} missing, "
                f"{report.ok} good"
            )
        self.post_message(m.JobFinished(job_id, text, report))
        self.post_message(m.CatalogChanged("verify"))

    @work(thread=True, exclusive=True, exit_on_error=False, group="delete-plan")
    def plan_delete(self, file_id: int, label: str) -> None:
        from assetmgr.app.library import plan_delete

        plan = plan_delete(self.services, file_id)
        self.post_message(m.DeletePlanned(plan, label))

    @work(thread=True, exclusive=True, exit_on_error=False, group="delete", description="delete")
    def run_delete(self, job_id: str, plan: Any) -> None:
        from assetmgr.app.library import delete

        freed = delete(self.services, plan)
        text = f"deleted; freed {_human_bytes(freed)}" if freed else "deleted (the blob is shared)"
        self.post_message(m.JobFinished(job_id, text))
        self.post_message(m.CatalogChanged("delete"))

    @work(thread=True, exclusive=True, exit_on_error=False, group="updates")
    def check_updates(self) -> None:
        from assetmgr.app.updates import find_updates

        found = find_updates(self.services).pull_offers()
        self.post_message(m.UpdatesFound(found))

    @work(thread=True, exclusive=True, exit_on_error=False, group="import", description="import")
    def run_import(self, job_id: str, folder: Path) -> None:
        from assetmgr.app.library import import_models

        def progress(index: int, total: int, path: str) -> None:
            self.post_message(m.JobProgressed(job_id, index, total, Path(path).name))

        report = import_models(
            self.services,
            folder,
            offline_if_no_client=True,
            progress=progress,
            cancel=_cancel_event(),
        )
        text = report.summary()
        if report.stopped is not None:
            text = f"stopped ({report.stopped.reason}): {text}"
        if report.links:
            text += f"; followed {len(report.links)} symlinks"
        self.post_message(m.JobFinished(job_id, text, report))
        self.post_message(m.CatalogChanged("import"))

    # --- generation and the sandbox --------------------------------------------------------

    @work(thread=True, exclusive=True, exit_on_error=False, group="generate-models")
    def load_local_models(self) -> None:
        with Session(self.services.engine) as session:
            checkpoints = queries.local_models(session, queries.CHECKPOINT_TYPES)
            loras = queries.local_models(session, queries.LORA_TYPES)
        self.post_message(m.LocalModelsLoaded(checkpoints, loras))

    @work(thread=True, exclusive=True, exit_on_error=False, group="generate-state")
    def check_generation(self) -> None:
        service = self.services.generation
        state = service.state()
        self.post_message(
            m.GenerationStateChecked(state, list(service.samplers()), list(service.plugins()))
        )

    @work(thread=True, exclusive=True, exit_on_error=False, group="generate-reuse")
    def resolve_generation_data(
        self, meta: dict[str, Any] | None = None, text: str | None = None
    ) -> None:
        """An example image's meta or a pasted parameters block into a Generate request."""
        from assetmgr.app.genparams import from_civitai_meta, from_parameters
        from assetmgr.app.reuse import reuse_generation

        data = from_civitai_meta(meta) if meta is not None else from_parameters(text or "")
        reuse = reuse_generation(self.services, data)
        if not _cancelled():
            self.post_message(m.GenerationDataResolved(reuse))

    @work(thread=True, exclusive=True, exit_on_error=False, group="generate-check")
    def check_generation_request(self, request: GenerateRequest) -> None:
        check = self.services.generation.check(request)
        self.post_message(m.GenerationRequestChecked(request, check))

    @work(thread=True, exclusive=True, exit_on_error=False, group="generate-history")
    def load_history(self) -> None:
        self.post_message(m.HistoryLoaded(self.services.generation.history()))

    @work(
        thread=True, exclusive=True, exit_on_error=False, group="generate", description="generate"
    )
    def run_generation(
        self, job_id: str, request: GenerateRequest | None, rerun_id: int | None = None
    ) -> None:
        from datetime import UTC, datetime

        from assetmgr import paths

        service = self.services.generation

        def progress(p: GenerationProgress) -> None:
            text = p.stage
            if p.step is not None and p.total:
                text = f"{p.stage} {p.step}/{p.total}"
            self.post_message(m.JobProgressed(job_id, p.fraction or 0.0, 1.0, text))
            self.post_message(m.GenerationProgressed(job_id, p.fraction, text))

        started = time.monotonic()
        now = datetime.now(UTC)
        if rerun_id is not None:
            out_dir = paths.runs_dir() / f"rerun-{rerun_id}-{now:%Y%m%d-%H%M%S}"
            record = service.rerun(
                rerun_id, out_dir=out_dir, progress=progress, cancel=_cancel_event()
            )
        else:
            if request is None:
                raise ValueError("a generation needs a request or a run to rerun")
            out_dir = paths.runs_dir() / now.strftime("tui-%Y%m%d-%H%M%S-%f")
            record = service.generate(
                request, out_dir=out_dir, progress=progress, cancel=_cancel_event()
            )
        elapsed = time.monotonic() - started
        image = None
        if record.images:
            from PIL import Image

            with Image.open(record.images[0]) as source:
                image = source.convert("RGB")
        self.post_message(
            m.JobFinished(
                job_id, f"generated {len(record.images)} image(s) in {elapsed:.1f} s", record
            )
        )
        self.post_message(m.GenerationFinished(job_id, record, image, elapsed))
        self.post_message(m.HistoryLoaded(service.history()))

    @work(thread=True, exclusive=True, exit_on_error=False, group="sandbox-info")
    def load_sandbox_info(self) -> None:
        self.post_message(m.SandboxInfoLoaded(self.services.sandbox_info.info()))

    # --- settings --------------------------------------------------------------------------

    @work(thread=True, exclusive=True, exit_on_error=False, group="settings")
    def save_settings(self, api_key: str | None, values: dict[str, Any]) -> None:
        from assetmgr.config import read_config_file, store_api_key, write_config_file

        parts = []
        if api_key:
            where = store_api_key(api_key)
            parts.append(f"API key saved in the {where}")
        if values:
            config = read_config_file()
            config.update(values)
            write_config_file(config)
            parts.append("settings written to the config file")
        self.services.reload_settings()
        self.post_message(m.SettingsSaved("; ".join(parts) or "nothing to save"))


__all__ = ["FIRST_PAGE_SIZE", "PAGE_SIZE", "WorkersMixin"]
