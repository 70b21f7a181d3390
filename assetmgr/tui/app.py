"""The assetmgr terminal UI: `make_app` builds it (tests too), `run_app` runs it.

The App owns the state that outlives a screen (the job board, the download queue) and every
worker (`assetmgr.tui.workers`), so one `Worker.StateChanged` handler turns any failure into an
error modal with the error's title, message and hint. Its ``@on`` handlers receive the workers'
messages and hand the data to the screen that shows it.
"""

from __future__ import annotations

import dataclasses
import logging
from collections import deque
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

from textual import on
from textual.app import App, SystemCommand
from textual.logging import TextualHandler
from textual.notifications import SeverityLevel
from textual.screen import Screen
from textual.widgets import Input, TextArea
from textual.worker import Worker, WorkerState

# textual-image must query the terminal before Textual owns it (see widgets.preview).
import assetmgr.tui.widgets.preview  # noqa: F401
from assetmgr.config import Settings
from assetmgr.display import CleanLogFormatter, clean
from assetmgr.errors import AssetMgrError
from assetmgr.tui import messages as m
from assetmgr.tui.actions import ACTIONS, bindings_for
from assetmgr.tui.jobs import JobBoard
from assetmgr.tui.queries import BrowseQuery
from assetmgr.tui.screens.catalog import CatalogScreen
from assetmgr.tui.screens.dialogs import ConfirmModal, ErrorModal, PromptModal, UpdatesModal
from assetmgr.tui.screens.generate import GenerateScreen
from assetmgr.tui.screens.help import HelpScreen
from assetmgr.tui.screens.sandbox import SandboxScreen
from assetmgr.tui.screens.settings import SettingsScreen
from assetmgr.tui.services import GenerationRequest, Services
from assetmgr.tui.widgets.filter_bar import FilterBar
from assetmgr.tui.widgets.jobs import JobsBar
from assetmgr.tui.widgets.model_table import ModelTable
from assetmgr.tui.workers import WorkersMixin

if TYPE_CHECKING:
    from sqlalchemy import Engine

log = logging.getLogger(__name__)

# Errors that mean "the user cancelled": noted in the jobs bar, never shown as a failure.
_CANCEL_TITLES = frozenset(
    {"Sync cancelled", "Download cancelled", "Hashing cancelled", "Job cancelled"}
)
# Thread workers run on the event loop's default executor; cancelled ones finish in the
# background, so give it room for a sync, the downloads and the UI's queries at once.
_WORKER_THREADS = 32
FINISHED_JOB_SHOWN_S = 10.0
"""How long a finished job stays in the jobs bar (its result was also a notification)."""


class AssetMgrApp(WorkersMixin, App[None]):
    CSS_PATH = "app.tcss"
    TITLE = "assetmgr"
    SUB_TITLE = "models · LoRAs · sandbox"
    BINDINGS = bindings_for("app")

    def __init__(self, services: Services) -> None:
        super().__init__()
        self.services = services
        self.jobs = JobBoard()
        self.job_workers: dict[Worker[Any], str] = {}
        self.download_queue: deque[tuple[str, int, str]] = deque()
        self.pending_prompt: list[str] = []
        self.catalog = CatalogScreen()
        self.generate_screen = GenerateScreen()
        self.sandbox_screen = SandboxScreen()
        self.settings_screen = SettingsScreen()

    # --- start and screens -----------------------------------------------------------------

    def on_mount(self) -> None:
        handler = TextualHandler()
        handler.setFormatter(CleanLogFormatter())
        logging.getLogger("assetmgr").addHandler(handler)
        import asyncio

        asyncio.get_running_loop().set_default_executor(
            ThreadPoolExecutor(max_workers=_WORKER_THREADS, thread_name_prefix="tui-worker")
        )
        self.install_screen(self.catalog, "catalog")
        self.install_screen(self.generate_screen, "generate")
        self.install_screen(self.sandbox_screen, "sandbox")
        self.install_screen(self.settings_screen, "settings")
        self.push_screen("catalog")

    def _show(self, name: str) -> None:
        if self.screen.id == name:
            return
        while len(self.screen_stack) > 2:  # close dialogs before switching
            self.pop_screen()
        self.switch_screen(name)

    def action_show_catalog(self) -> None:
        self._show("catalog")

    def action_show_generate(self) -> None:
        self._show("generate")

    def action_show_sandbox(self) -> None:
        self._show("sandbox")

    def action_show_settings(self) -> None:
        self._show("settings")

    def action_help(self) -> None:
        self.push_screen(HelpScreen())

    def get_system_commands(self, screen: Screen[Any]) -> Iterable[SystemCommand]:
        yield from super().get_system_commands(screen)
        scope = screen.id or ""
        for spec in ACTIONS:
            if not spec.palette or spec.scope not in ("app", scope):
                continue
            target = self if spec.scope == "app" else screen
            yield SystemCommand(
                spec.description,
                f"{spec.tooltip} [{spec.key}]",
                lambda target=target, action=spec.action: self.call_later(
                    target.run_action, action
                ),
            )

    # --- text that leaves the widgets: toasts and the clipboard ----------------------------

    def notify(
        self,
        message: str,
        *,
        title: str = "",
        severity: SeverityLevel = "information",
        timeout: float | None = None,
        markup: bool = True,
    ) -> None:
        """Every toast of the app (widgets' `notify` lands here): messages quote names and
        server text, so they are cleaned and never read as markup."""
        super().notify(
            clean(message, multiline=True),
            title=clean(title),
            severity=severity,
            timeout=timeout,
            markup=False,
        )

    def copy_to_clipboard(self, text: str) -> None:
        """Clipboard writes, cleaned (the catalog's own copies are cleaned to one line before)."""
        super().copy_to_clipboard(clean(text, multiline=True))

    # --- errors ----------------------------------------------------------------------------

    @on(Worker.StateChanged)
    def worker_state_changed(self, event: Worker.StateChanged) -> None:
        worker = event.worker
        job_id = self.job_workers.get(worker)
        if event.state == WorkerState.CANCELLED and job_id:
            self.jobs.finish(job_id, "cancelled", "cancelled")
            self._job_done(worker)
        elif event.state == WorkerState.SUCCESS and job_id:
            self.jobs.finish(job_id, "done")
            self._job_done(worker)
        elif event.state == WorkerState.ERROR:
            error = worker.error
            title = getattr(error, "title", "")
            if job_id:
                cancelled = title in _CANCEL_TITLES
                self.jobs.finish(job_id, "cancelled" if cancelled else "failed", str(error))
                self._job_done(worker)
                if cancelled:
                    return
            self.show_error(error)

    def show_error(self, error: BaseException | None) -> None:
        if isinstance(error, AssetMgrError):
            title, message, hint = error.title, error.message, error.hint
        else:
            title = "Unexpected error"
            message = f"{type(error).__name__}: {error}"
            hint = "This is a bug in assetmgr; the log has the traceback."
            log.error("worker failed", exc_info=error)
        self.push_screen(ErrorModal(title, message, hint))

    def _job_done(self, worker: Worker[Any]) -> None:
        self.job_workers.pop(worker, None)
        self._start_queued_downloads()
        self._jobs_changed()

    def _jobs_changed(self) -> None:
        self.jobs.prune(keep_finished=3, older_than_s=FINISHED_JOB_SHOWN_S)
        jobs = self.jobs.all()
        if any(not job.active for job in jobs):
            self.set_timer(FINISHED_JOB_SHOWN_S + 0.1, self._jobs_changed)
        for screen in (self.catalog, self.generate_screen):
            if self._live(screen):
                screen.query_one(JobsBar).sync_jobs(jobs)

    def _track(self, worker: Worker[Any], job_id: str) -> None:
        self.job_workers[worker] = job_id
        self._jobs_changed()

    # --- jobs ------------------------------------------------------------------------------

    def action_cancel_job(self) -> None:
        # Escape first leaves a text field, so a stray Escape while typing cancels nothing.
        if isinstance(self.focused, Input | TextArea):
            self.screen.focus_next()
            return
        job = self.jobs.newest_active()
        if job is None:
            return
        self.cancel_job(job.id)

    @on(JobsBar.CancelPressed)
    def cancel_pressed(self, event: JobsBar.CancelPressed) -> None:
        self.cancel_job(event.job_id)

    def cancel_job(self, job_id: str) -> None:
        for entry in list(self.download_queue):
            if entry[0] == job_id:
                self.download_queue.remove(entry)
                self.jobs.finish(job_id, "cancelled", "removed from the queue")
                self._jobs_changed()
                return
        for worker, wid in list(self.job_workers.items()):
            if wid == job_id:
                worker.cancel()
        self.notify("Cancelling…", timeout=2)

    def start_sync(self, query: BrowseQuery) -> None:
        if self.jobs.active("sync"):
            self.notify("A sync is already running.", severity="warning", timeout=3)
            return
        what = query.search.strip() or ", ".join(query.types + query.base_models) or "all models"
        job = self.jobs.add("sync", f"Sync {what}")
        self._track(self.run_sync(job.id, query), job.id)

    def enqueue_pull(self, version_id: int, label: str) -> None:
        busy = [j for j in self.jobs.active("download") if j.label == label]
        if busy:
            self.notify(f"{label} is already queued.", severity="warning", timeout=3)
            return
        job = self.jobs.add("download", label, status="queued")
        self.download_queue.append((job.id, version_id, label))
        self._start_queued_downloads()
        self._jobs_changed()

    def _start_queued_downloads(self) -> None:
        limit = max(1, self.services.settings.download_concurrency)
        running = sum(1 for j in self.jobs.active("download") if j.status == "running")
        while self.download_queue and running < limit:
            job_id, version_id, label = self.download_queue.popleft()
            job = self.jobs.get(job_id)
            if job is None or not job.active:
                continue
            job.status = "running"
            self.job_workers[self.start_pull(job_id, version_id, label)] = job_id
            running += 1

    def start_verify(self) -> None:
        job = self.jobs.add("verify", "Verify the store")
        self._track(self.run_verify(job.id), job.id)

    @on(m.DeletePlanned)
    def delete_planned(self, message: m.DeletePlanned) -> None:
        plan = message.plan
        lines = [f"Remove the local copy of {message.label}?", ""]
        lines += [f"name link: {p}" for p in plan.links] or ["no name link"]
        if plan.blob_path is not None:
            lines.append(f"blob: {plan.blob_path} ({plan.expected_freed_bytes:,} bytes freed)")
        else:
            lines.append("the blob stays: another local file uses the same bytes")
        body = "\n".join(lines)

        def answered(yes: bool | None) -> None:
            if yes:
                job = self.jobs.add("delete", f"Delete {message.label}")
                self._track(self.run_delete(job.id, plan), job.id)

        self.push_screen(ConfirmModal("Delete local file", body, yes="Delete"), answered)

    def ask_import(self) -> None:
        state = self.services.import_state()
        if not state.available:
            self.push_screen(ErrorModal("Import not available", state.reason))
            return

        def answered(folder: str | None) -> None:
            if folder:
                path = Path(folder).expanduser()
                job = self.jobs.add("import", f"Import {path}")
                self._track(self.run_import(job.id, path), job.id)

        self.push_screen(
            PromptModal("Import a models folder", placeholder="~/stable-diffusion/models"),
            answered,
        )

    @on(m.JobProgressed)
    def job_progressed(self, message: m.JobProgressed) -> None:
        self.jobs.progress(message.job_id, message.done, message.total, message.text)
        self._jobs_changed()

    @on(m.JobFinished)
    def job_finished(self, message: m.JobFinished) -> None:
        self.jobs.finish(message.job_id, "done", message.summary)
        self._jobs_changed()
        self.notify(message.summary, timeout=4, markup=False)

    @on(m.CatalogChanged)
    def catalog_changed(self, message: m.CatalogChanged) -> None:
        if self._live(self.catalog):
            self.catalog.refresh_listing(keep_selection=True)
            self.load_facets()
            self.mark_updates()
        if self._live(self.generate_screen):
            self.load_local_models()

    @on(m.UpdatesFound)
    def updates_found(self, message: m.UpdatesFound) -> None:
        if self._live(self.catalog):
            self.catalog.query_one(ModelTable).mark_updates({u[0] for u in message.updates})

        def answered(result: tuple[str, list[tuple[int, int]]] | None) -> None:
            if result is None:
                return
            verb, pairs = result
            if verb == "show":
                self._show("catalog")
                self.catalog.select_model(pairs[0][0])
            else:
                for _, version_id in pairs:
                    self.enqueue_pull(version_id, f"update {version_id}")

        self.push_screen(UpdatesModal(message.updates), answered)

    # --- the catalog's data ----------------------------------------------------------------

    def _live(self, screen: Screen[Any]) -> bool:
        """Whether `screen` can take data: mounted, and the app is not shutting down.

        Worker messages can still arrive while the app exits and its widgets go away: Textual
        clears `_running` first when it shuts down, then prunes the screens' widgets.
        """
        closing = self._exit or self._closing or screen._closing or screen._pruning
        return screen.is_mounted and self._running and not closing

    @on(m.ModelsPageLoaded)
    def models_page_loaded(self, message: m.ModelsPageLoaded) -> None:
        if self._live(self.catalog) and message.generation == self.catalog.generation:
            self.catalog.show_page(message)

    @on(m.ModelsCounted)
    def models_counted(self, message: m.ModelsCounted) -> None:
        if self._live(self.catalog) and message.generation == self.catalog.generation:
            self.catalog.show_count(message.total)

    @on(m.FacetsLoaded)
    def facets_loaded(self, message: m.FacetsLoaded) -> None:
        if self._live(self.catalog):
            self.catalog.query_one(FilterBar).set_facets(message.facets)

    @on(m.UpdatesMarked)
    def updates_marked(self, message: m.UpdatesMarked) -> None:
        if self._live(self.catalog):
            self.catalog.query_one(ModelTable).mark_updates(message.model_ids)

    @on(m.ModelDetailLoaded)
    def detail_loaded(self, message: m.ModelDetailLoaded) -> None:
        if self._live(self.catalog):
            self.catalog.show_detail(message.detail)

    @on(m.PreviewLoaded)
    def preview_loaded(self, message: m.PreviewLoaded) -> None:
        if self._live(self.catalog):
            self.catalog.show_preview(message.version_id, message.image, message.note)

    # --- generate --------------------------------------------------------------------------

    def insert_into_prompt(self, text: str) -> None:
        if self.generate_screen.is_mounted:
            self.generate_screen.insert_prompt_text(text)
        else:
            self.pending_prompt.append(text)

    def start_generation(
        self, request: GenerationRequest | None, rerun_id: str | None = None
    ) -> None:
        if self.jobs.active("generate"):
            self.notify("A generation is already running.", severity="warning", timeout=3)
            return
        label = (
            f"Rerun {rerun_id}" if rerun_id else f"Generate seed {request.seed if request else ''}"
        )
        job = self.jobs.add("generate", label)
        self._track(self.run_generation(job.id, request, rerun_id), job.id)

    @on(m.GenerationRequestChecked)
    def generation_request_checked(self, message: m.GenerationRequestChecked) -> None:
        """Start the run the check passed; a LoRA for another base model asks first."""
        check, request = message.check, message.request
        if self._live(self.generate_screen):
            self.generate_screen.show_check(check)
        if check.problems:
            return
        mismatch = check.mismatch
        if mismatch is not None:

            def answered(run_anyway: bool | None) -> None:
                if run_anyway:
                    self.start_generation(dataclasses.replace(request, allow_mismatch=True))

            body = (
                f"{mismatch.message}.\n\nRun it anyway? The worker still refuses a LoRA "
                "whose tensors do not fit the checkpoint."
            )
            self.push_screen(
                ConfirmModal("LoRA for another base model", body, yes="Run anyway"), answered
            )
            return
        self.start_generation(request)

    @on(m.CompletionsFound)
    def completions_found(self, message: m.CompletionsFound) -> None:
        if self._live(self.generate_screen):
            self.generate_screen.show_completions(message.prefix, message.items)

    @on(m.LocalModelsLoaded)
    def local_models_loaded(self, message: m.LocalModelsLoaded) -> None:
        if self._live(self.generate_screen):
            self.generate_screen.show_local_models(message.checkpoints, message.loras)

    @on(m.GenerationStateChecked)
    def generation_state_checked(self, message: m.GenerationStateChecked) -> None:
        if self._live(self.generate_screen):
            self.generate_screen.show_state(message.state, message.samplers, message.plugins)

    @on(m.GenerationProgressed)
    def generation_progressed(self, message: m.GenerationProgressed) -> None:
        if self._live(self.generate_screen):
            self.generate_screen.show_progress(message.fraction, message.text)

    @on(m.GenerationFinished)
    def generation_finished(self, message: m.GenerationFinished) -> None:
        if self._live(self.generate_screen):
            self.generate_screen.show_result(message.result, message.image)

    @on(m.HistoryLoaded)
    def history_loaded(self, message: m.HistoryLoaded) -> None:
        if self._live(self.generate_screen):
            self.generate_screen.show_history(message.runs)

    # --- sandbox and settings --------------------------------------------------------------

    @on(m.SandboxInfoLoaded)
    def sandbox_info_loaded(self, message: m.SandboxInfoLoaded) -> None:
        if self._live(self.sandbox_screen):
            self.sandbox_screen.show_info(message.info)

    @on(m.SettingsSaved)
    def settings_saved(self, message: m.SettingsSaved) -> None:
        if self._live(self.settings_screen):
            self.settings_screen.show_settings()
        self.notify(message.summary, timeout=4, markup=False)

    async def on_unmount(self) -> None:
        self.services.close()


def make_app(
    settings: Settings, engine: Engine | None = None, services: Services | None = None
) -> AssetMgrApp:
    """Build the App; tests pass their own engine or a whole `Services` with fakes in it."""
    if services is None:
        if engine is None:
            from assetmgr.context import open_engine

            engine = open_engine(settings)
        services = Services(settings, engine)
    return AssetMgrApp(services)


def run_app(settings: Settings) -> None:
    make_app(settings).run()


__all__ = ["AssetMgrApp", "make_app", "run_app"]
