"""The state of long jobs (sync, downloads, verify, delete, import, generation), UI-free.

The App owns one `JobBoard`; worker messages update it and the jobs bar draws it.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field
from typing import Any

RUNNING_STATES = ("queued", "running")


@dataclass(frozen=True)
class JobError:
    """What the error modal shows for a failed job: title, the whole message, the hint."""

    title: str
    message: str
    hint: str = ""


@dataclass
class Job:
    id: str
    kind: str
    """``sync``, ``download``, ``verify``, ``delete``, ``import`` or ``generate``."""
    label: str
    status: str = "queued"
    """``queued``, ``running``, ``done``, ``failed`` or ``cancelled``."""
    done: float = 0.0
    total: float | None = None
    text: str = ""
    summary: str = ""
    """The result line; for a failed job, the first line of the error's message."""
    error: JobError | None = None
    """Why a failed job failed, kept so the jobs bar can show the whole message later."""
    started_at: float = field(default_factory=time.monotonic)
    finished_at: float | None = None
    result: Any = None
    """What the job left to open (an import's report)."""
    keep: bool = False
    """Stays listed after it finished until its result is opened (`seen`)."""

    def seen(self) -> None:
        self.keep = False
        self.finished_at = time.monotonic()

    @property
    def active(self) -> bool:
        return self.status in RUNNING_STATES

    @property
    def fraction(self) -> float | None:
        if not self.total:
            return None
        return max(0.0, min(1.0, self.done / self.total))


class JobBoard:
    """Jobs by id, oldest first; finished ones stay visible until `prune`."""

    def __init__(self) -> None:
        self._jobs: dict[str, Job] = {}
        self._ids = itertools.count(1)

    def add(self, kind: str, label: str, *, status: str = "running") -> Job:
        job = Job(id=f"{kind}-{next(self._ids)}", kind=kind, label=label, status=status)
        self._jobs[job.id] = job
        return job

    def get(self, job_id: str) -> Job | None:
        return self._jobs.get(job_id)

    def all(self) -> list[Job]:
        return list(self._jobs.values())

    def active(self, kind: str | None = None) -> list[Job]:
        return [j for j in self._jobs.values() if j.active and (kind is None or j.kind == kind)]

    def newest_active(self) -> Job | None:
        running = self.active()
        return running[-1] if running else None

    def progress(self, job_id: str, done: float, total: float | None, text: str = "") -> None:
        job = self._jobs.get(job_id)
        if job is None or not job.active:
            return
        job.status = "running"
        job.done, job.total = done, total
        if text:
            job.text = text

    def finish(self, job_id: str, status: str, summary: str = "") -> Job | None:
        job = self._jobs.get(job_id)
        if job is None or not job.active:
            return job
        job.status = status
        job.summary = summary
        job.finished_at = time.monotonic()
        if status == "done" and job.total:
            job.done = job.total
        return job

    def fail(self, job_id: str, error: JobError) -> Job | None:
        """Finish a job as failed, keeping its error; the summary is the message's first line."""
        job = self.finish(job_id, "failed", error.message.strip().split("\n", 1)[0])
        if job is not None and job.status == "failed":
            job.error = error
        return job

    def forget(self, job_id: str) -> None:
        """Drop a finished job (the user dismissed it); running ones stay."""
        job = self._jobs.get(job_id)
        if job is not None and not job.active:
            del self._jobs[job_id]

    def prune(
        self, keep_finished: int = 3, older_than_s: float | None = None, keep_failed: int = 5
    ) -> None:
        """Forget all but the newest `keep_finished` finished jobs, and (with `older_than_s`)
        those finished longer ago than that. Failed jobs are not finished in that sense: the
        newest `keep_failed` stay until the user dismisses them, so their reasons stay readable."""
        failed = [j for j in self._jobs.values() if j.status == "failed"]
        finished = [
            j for j in self._jobs.values() if not j.active and not j.keep and j.status != "failed"
        ]
        drop = finished[:-keep_finished] if keep_finished else finished
        if older_than_s is not None:
            cutoff = time.monotonic() - older_than_s
            drop += [j for j in finished if (j.finished_at or 0) < cutoff and j not in drop]
        drop += failed[:-keep_failed] if keep_failed else failed
        for job in drop:
            del self._jobs[job.id]


__all__ = ["Job", "JobBoard", "JobError"]
