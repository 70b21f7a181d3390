"""How generation uses containers, decided here for both front ends.

* The TUI keeps a warm worker (`tui_policy`): jobs with no plugins or only trusted ones share
  one container, kept for the same image, plugin set and model files, replaced by a job of
  another, and removed after the `warm_worker_idle` setting's idle time and on exit.
* A CLI batch (`--count`, `--prompt-file`, a seed range) shares one worker for its jobs and
  removes it when the command ends (`batch_workers`).
* A single CLI job gets its own container (`PER_JOB`).

Untrusted plugin sets always get a container per job: the sandbox service refuses to share one
(`SandboxService.execution_mode`), whatever the policy says.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from assetmgr.config import Settings


@dataclass(frozen=True)
class WorkerPolicy:
    """Whether trusted jobs share a warm worker, and how long an unused one is kept."""

    keep_warm: bool
    idle_s: float | None = None
    """None: kept until the front end closes the sandbox service."""


PER_JOB = WorkerPolicy(keep_warm=False)


def tui_policy(settings: Settings) -> WorkerPolicy:
    """The TUI's: a warm worker kept `warm_worker_idle_s` (0 turns warm workers off)."""
    idle = settings.warm_worker_idle_s
    return WorkerPolicy(keep_warm=idle > 0, idle_s=idle if idle > 0 else None)


def apply_policy(sandbox: Any, policy: WorkerPolicy) -> None:
    """Configure a `SandboxService` for `policy`."""
    sandbox.reuse_workers = policy.keep_warm
    sandbox.warm_idle_s = policy.idle_s


@contextlib.contextmanager
def batch_workers(sandbox: Any, plugins: Sequence[str]) -> Iterator[str]:
    """One warm worker for a batch's jobs, removed when the batch ends however it ends.

    Yields how the jobs run: ``warm`` (one container) or ``per-job`` (untrusted plugins).
    """
    saved = WorkerPolicy(sandbox.reuse_workers, sandbox.warm_idle_s)
    apply_policy(sandbox, WorkerPolicy(keep_warm=True))
    try:
        yield sandbox.execution_mode(sandbox.get_plugins(list(plugins)))
    finally:
        try:
            sandbox.close()
        finally:
            apply_policy(sandbox, saved)


__all__ = ["PER_JOB", "WorkerPolicy", "apply_policy", "batch_workers", "tui_policy"]
