"""The jobs bar: one line per running (or just finished) job, with progress and Cancel, and
Report on a finished import.

A failed job keeps its line, with the reason and the hint, until it is dismissed; Details
opens the whole error.
"""

from __future__ import annotations

from dataclasses import dataclass

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.widgets import Button, Label, ProgressBar

from assetmgr.display import clean
from assetmgr.tui.jobs import Job


class JobLine(Horizontal):
    def __init__(self, job: Job) -> None:
        super().__init__(id=f"job-{job.id}", classes="job-line")
        self.job_id = job.id
        self._job = job

    def compose(self) -> ComposeResult:
        # Labels, progress texts and summaries name models and files, and quote errors.
        yield Label(Text(clean(self._job.label)), classes="job-label")
        yield ProgressBar(total=None, show_eta=False, classes="job-bar")
        yield Label("", classes="job-text")
        yield Button("Cancel", classes="job-cancel", compact=True)
        yield Button("Report", classes="job-report", compact=True)
        yield Button("Details", classes="job-details", compact=True, tooltip="The whole error")
        yield Button("✕", classes="job-dismiss", compact=True, tooltip="Dismiss")

    def on_mount(self) -> None:
        self._show(self._job)

    def update_job(self, job: Job) -> None:
        self._job = job
        if self.is_mounted:  # otherwise on_mount shows it
            self._show(job)

    def _show(self, job: Job) -> None:
        bar = self.query_one(ProgressBar)
        if job.total:
            bar.update(total=job.total, progress=job.done)
        elif not job.active:
            bar.update(total=1, progress=1)
        text = job.summary if not job.active else job.text
        status = "" if job.status in ("running", "done") else f"[{job.status}] "
        if job.error is not None and job.error.hint:
            text = f"{text} · hint: {job.error.hint}"
        self.query_one(".job-text", Label).update(Text(clean(f"{status}{text}")))
        failed = job.status == "failed"
        self.set_class(not job.active, "-finished")
        self.set_class(failed, "-failed")
        self.query_one(".job-cancel", Button).display = job.active
        self.query_one(".job-report", Button).display = not job.active and job.result is not None
        self.query_one(".job-details", Button).display = failed and job.error is not None
        self.query_one(".job-dismiss", Button).display = failed


class JobsBar(Vertical):
    """Mirrors the App's `JobBoard`; hidden when there is nothing to show."""

    @dataclass
    class CancelPressed(Message):
        job_id: str

    @dataclass
    class ReportPressed(Message):
        """Open what a finished job left (an import's report)."""

        job_id: str

    @dataclass
    class DetailsPressed(Message):
        """Open the whole error of a failed job."""

        job_id: str

    @dataclass
    class DismissPressed(Message):
        """Take a failed job off the bar."""

        job_id: str

    def sync_jobs(self, jobs: list[Job]) -> None:
        wanted = {job.id: job for job in jobs}
        for line in list(self.query(JobLine)):
            if line.job_id not in wanted:
                line.remove()
        existing = {line.job_id: line for line in self.query(JobLine)}
        for job in jobs:
            found = existing.get(job.id)
            if found is None:
                self.mount(JobLine(job))
            else:
                found.update_job(job)
        self.display = bool(jobs)

    def on_button_pressed(self, event: Button.Pressed) -> None:
        line = next((a for a in event.button.ancestors if isinstance(a, JobLine)), None)
        if line is None:
            return
        event.stop()
        if event.button.has_class("job-report"):
            self.post_message(self.ReportPressed(line.job_id))
        elif event.button.has_class("job-details"):
            self.post_message(self.DetailsPressed(line.job_id))
        elif event.button.has_class("job-dismiss"):
            self.post_message(self.DismissPressed(line.job_id))
        else:
            self.post_message(self.CancelPressed(line.job_id))
