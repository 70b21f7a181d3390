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
from assetmgr.app.queries import BrowseQuery
from assetmgr.app.sync import CivitaiConnectionError, SyncOutcome
from assetmgr.config import Settings
from assetmgr.display import CleanLogFormatter, clean
from assetmgr.store.import_report import ImportReport
from assetmgr.tui import messages as m
from assetmgr.tui.actions import ACTIONS, bindings_for
from assetmgr.tui.jobs import JobBoard, JobError
from assetmgr.tui.screens.catalog import CatalogScreen
from assetmgr.tui.screens.dialogs import ConfirmModal, ErrorModal, PromptModal, UpdatesModal
from assetmgr.tui.screens.generate import GenerateScreen
from assetmgr.tui.screens.help import HelpScreen
from assetmgr.tui.screens.import_report import ImportReportScreen
from assetmgr.tui.screens.sandbox import SandboxScreen
from assetmgr.tui.screens.settings import SettingsScreen
from assetmgr.tui.services import GenerateRequest, Services
from assetmgr.tui.widgets.filter_bar import FilterBar
from assetmgr.tui.widgets.jobs import JobsBar
from assetmgr.tui.widgets.model_table import ModelTable
from assetmgr.tui.workers import WorkersMixin
from assetmgr.wording import describe

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from assetmgr.app.reuse import Reuse

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
FAILED_JOBS_KEPT = 5
"""Failed jobs stay in the jobs bar, with their reason, until dismissed (the newest five)."""


class AssetMgrApp(WorkersMixin, App[None]):
    CSS_PATH = "app.tcss"
    TITLE = "assetmgr"
    SUB_TITLE = "models · LoRAs · sandbox"
    BINDINGS = bindings_for("app")
    # Screen classes for the terminal's size; the catalog adds its own layout classes.
    HORIZONTAL_BREAKPOINTS = [(0, "-narrow"), (100, "-medium"), (140, "-wide")]
    VERTICAL_BREAKPOINTS = [(0, "-short"), (28, "-tall")]

    def __init__(self, services: Services) -> None:
        super().__init__()
        self.services = services
        self.jobs = JobBoard()
        self.job_workers: dict[Worker[Any], str] = {}
        self.download_queue: deque[tuple[str, int, str]] = deque()
        self.pending_prompt: list[str] = []
        self.pending_reuse: Reuse | None = None
        """Generation data for the Generate screen, applied when it mounts."""
        self.last_import: tuple[str, ImportReport] | None = None
        """The newest import's job label and report, for the palette's "Import report"."""
        self.civitai_unreachable: str | None = None
        """Why the last sync could not reach Civitai (None once one got through)."""
        self._log_handler: TextualHandler | None = None
        self.catalog = CatalogScreen()
        self.generate_screen = GenerateScreen()
        self.sandbox_screen = SandboxScreen()
        self.settings_screen = SettingsScreen()

    # --- start and screens -----------------------------------------------------------------

    def on_mount(self) -> None:
        # Records also go to the devtools console (the log file is set up by `run_app`);
        # never to stderr, which is the screen.
        self._log_handler = TextualHandler(stderr=False)
        self._log_handler.setFormatter(CleanLogFormatter())
        logging.getLogger("assetmgr").addHandler(self._log_handler)
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
        if self.last_import is not None:
            yield SystemCommand(
                "Import report",
                "What the newest import did with each file, and why",
                self.open_import_report,
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
            words = describe(error) if error is not None else None
            if job_id and words is not None and words.title in _CANCEL_TITLES:
                self.jobs.finish(job_id, "cancelled", "cancelled")
                self._job_done(worker)
                return
            described = self.describe_error(error)
            job = self.jobs.get(job_id) if job_id else None
            if job is not None and job.kind == "sync":
                self._sync_failed(error)
            if job_id:
                self.jobs.fail(job_id, described)
                self._job_done(worker)
            self.push_screen(ErrorModal(described.title, described.message, described.hint))

    def describe_error(self, error: BaseException | None) -> JobError:
        """Title, message and hint of a failure, written to the log as well; an unexpected
        one gets its traceback logged and a hint that says where the log is."""
        from assetmgr.wording import describe

        words = describe(error) if error is not None else None
        if words is not None:
            log.warning("%s: %s", words.title, words.message)
            return JobError(words.title, words.message, words.hint)
        from assetmgr.logs import record_unexpected, redact_secrets

        log_path = record_unexpected(error or RuntimeError("unknown error"), "assetmgr.tui")
        where = f"the traceback is in {log_path}" if log_path else "the log file is unavailable"
        return JobError(
            "Unexpected error",
            redact_secrets(f"{type(error).__name__}: {error}"),
            f"This is a bug in assetmgr; {where}. Please report it.",
        )

    def show_error(self, error: BaseException | None) -> None:
        described = self.describe_error(error)
        self.push_screen(ErrorModal(described.title, described.message, described.hint))

    @on(JobsBar.DetailsPressed)
    def job_details_pressed(self, event: JobsBar.DetailsPressed) -> None:
        job = self.jobs.get(event.job_id)
        if job is not None and job.error is not None:
            self.push_screen(ErrorModal(job.error.title, job.error.message, job.error.hint))

    @on(JobsBar.DismissPressed)
    def job_dismiss_pressed(self, event: JobsBar.DismissPressed) -> None:
        self.jobs.forget(event.job_id)
        self._jobs_changed()

    def _sync_failed(self, error: BaseException | None) -> None:
        if isinstance(error, CivitaiConnectionError):
            self.civitai_unreachable = error.message
            if self._live(self.catalog):
                self.catalog.show_demo_state(self.catalog.is_demo, self.civitai_unreachable)

    def _job_done(self, worker: Worker[Any]) -> None:
        self.job_workers.pop(worker, None)
        self._start_queued_downloads()
        self._jobs_changed()

    def _jobs_changed(self) -> None:
        self.jobs.prune(
            keep_finished=3, older_than_s=FINISHED_JOB_SHOWN_S, keep_failed=FAILED_JOBS_KEPT
        )
        jobs = self.jobs.all()
        if any(not job.active and job.status != "failed" for job in jobs):
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

    @on(JobsBar.ReportPressed)
    def report_pressed(self, event: JobsBar.ReportPressed) -> None:
        job = self.jobs.get(event.job_id)
        if job is not None and isinstance(job.result, ImportReport):
            job.seen()
            self._jobs_changed()
            self.push_screen(ImportReportScreen(job.result, f"{job.label}: report"))

    def open_import_report(self) -> None:
        if self.last_import is not None:
            label, report = self.last_import
            self.push_screen(ImportReportScreen(report, f"{label}: report"))

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
        status = "done"
        if isinstance(message.result, ImportReport) and message.result.stopped is not None:
            status = "cancelled" if message.result.stopped.code == "cancelled" else "failed"
        job = self.jobs.get(message.job_id)
        if job is not None and job.kind == "sync":
            # A demo catalog seeded in the sync's place keeps saying why (the banner).
            outcome = message.result
            unreachable = outcome.unreachable if isinstance(outcome, SyncOutcome) else None
            self.civitai_unreachable = unreachable
        job = self.jobs.finish(message.job_id, status, message.summary)
        summary = message.summary
        if job is not None and isinstance(message.result, ImportReport):
            # Kept (and openable) even when a cancel already closed the job's line.
            report = message.result
            job.result = report
            job.summary = summary
            self.last_import = (job.label, report)
            clean_run = report.accounted and len(report.imported) == report.scanned
            job.keep = not (clean_run and not report.ignored_sidecars)
            summary += " (Report in the jobs bar, or Import report in the command palette)"
        self._jobs_changed()
        self.notify(
            summary,
            severity="warning" if status == "failed" else "information",
            timeout=6 if job and job.keep else 4,
            markup=False,
        )

    @on(m.CatalogChanged)
    def catalog_changed(self, message: m.CatalogChanged) -> None:
        if self._live(self.catalog):
            self.catalog.refresh_listing(keep_selection=True)
            self.load_facets()
            self.mark_updates()
            self.check_demo()
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

    @on(m.DemoChecked)
    def demo_checked(self, message: m.DemoChecked) -> None:
        if self._live(self.catalog):
            self.catalog.show_demo_state(message.is_demo, self.civitai_unreachable)

    @on(m.UpdatesMarked)
    def updates_marked(self, message: m.UpdatesMarked) -> None:
        if self._live(self.catalog):
            self.catalog.query_one(ModelTable).mark_updates(message.model_ids)

    @on(m.ModelDetailLoaded)
    def detail_loaded(self, message: m.ModelDetailLoaded) -> None:
        if self._live(self.catalog):
            self.catalog.show_detail(message.detail, message.images)

    @on(m.PreviewLoaded)
    def preview_loaded(self, message: m.PreviewLoaded) -> None:
        if self._live(self.catalog):
            self.catalog.show_preview(message.version_id, message.image, message.note, message.key)

    @on(m.ImageMetaLoaded)
    def image_meta_loaded(self, message: m.ImageMetaLoaded) -> None:
        if self._live(self.catalog):
            self.catalog.image_meta_loaded(message.version_id, message.images)

    # --- generate --------------------------------------------------------------------------

    def insert_into_prompt(self, text: str) -> None:
        if self.generate_screen.is_mounted:
            self.generate_screen.insert_prompt_text(text)
        else:
            self.pending_prompt.append(text)

    @on(m.GenerationDataResolved)
    def generation_data_resolved(self, message: m.GenerationDataResolved) -> None:
        """Use this prompt: the Generate screen takes every field of the image's data."""
        self.pending_reuse = message.reuse
        self.action_show_generate()
        if self.generate_screen.is_mounted:
            self.pending_reuse = None
            self.generate_screen.apply_reuse(message.reuse)

    def start_generation(
        self, request: GenerateRequest | None, rerun_id: int | None = None
    ) -> None:
        if self.jobs.active("generate"):
            self.notify("A generation is already running.", severity="warning", timeout=3)
            return
        seed = request.seed if request else ""
        label = f"Rerun {rerun_id}" if rerun_id is not None else f"Generate seed {seed}"
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
            self.generate_screen.show_result(message.result, message.image, message.elapsed_s)

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
        if self._log_handler is not None:
            logging.getLogger("assetmgr").removeHandler(self._log_handler)
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
    from assetmgr.logs import leave_terminal

    leave_terminal()  # log records go to the log file, never over the screen
    make_app(settings).run()


__all__ = ["AssetMgrApp", "make_app", "run_app"]
