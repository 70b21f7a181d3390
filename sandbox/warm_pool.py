"""The sandbox service's warm worker: at most one at a time, closed after an idle time.

A warm worker is kept for the (image, plugin set) it was started with and serves every job
whose model files it mounts (the same checkpoint with the same or fewer LoRAs); a job of
another image, plugin set or model replaces it, so one worker's GPU memory is held at most.
Jobs take turns on it (one at a time), and `idle_s` after the last job ends the container is
removed; `close` removes it at once (the front end's exit).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from sandbox.errors import JobCancelledError
from sandbox.protocol import JobSpec

if TYPE_CHECKING:
    from sandbox.warm import WarmWorker

WarmKey = tuple[str, tuple[tuple[str, str], ...]]
"""The image id and the plugin set (name, tree sha256) a worker was started for."""
T = TypeVar("T")
_WAIT_S = 0.1


def serves(worker: WarmWorker, spec: JobSpec, model_files: Mapping[str, Path] | None) -> bool:
    """Whether `worker` mounts every model file the job needs, from the same host paths."""
    mounted = {(m.name, m.mount_path, m.sha256) for m in worker.models}
    if not {(m.name, m.mount_path, m.sha256) for m in spec.models} <= mounted:
        return False
    files = dict(model_files or {})
    return all(worker.model_files.get(name) == path for name, path in files.items())


class WarmPool:
    """At most one warm worker; jobs run on it one at a time (see the module docstring)."""

    def __init__(self, idle_s: float | None = None) -> None:
        self.idle_s = idle_s
        """Seconds an unused worker is kept; None keeps it until `close`."""
        self.workers: dict[WarmKey, WarmWorker] = {}
        self._lock = threading.Lock()
        self._turn = threading.Lock()
        self._timer: threading.Timer | None = None
        self._uses = 0

    def run(
        self,
        key: WarmKey,
        spec: JobSpec,
        model_files: Mapping[str, Path] | None,
        start: Callable[[], WarmWorker],
        job: Callable[[WarmWorker], T],
        cancel: threading.Event | None = None,
    ) -> T:
        """Run `job` on the worker for `key` that serves `spec`, made with `start` if none."""
        while not self._turn.acquire(timeout=_WAIT_S):
            if cancel is not None and cancel.is_set():
                raise JobCancelledError(f"job {spec.job_id} cancelled", job_id=spec.job_id)
        try:
            worker = self._worker_for(key, spec, model_files, start)
            try:
                return job(worker)
            finally:
                self._keep_until_idle()
        finally:
            self._turn.release()

    def _worker_for(
        self,
        key: WarmKey,
        spec: JobSpec,
        model_files: Mapping[str, Path] | None,
        start: Callable[[], WarmWorker],
    ) -> WarmWorker:
        with self._lock:
            self._stop_timer()
            worker = self.workers.get(key)
            if worker is not None and serves(worker, spec, model_files):
                return worker
            doomed = list(self.workers.values())
            self.workers.clear()
        for old in doomed:  # one warm worker at a time: its GPU memory goes first
            old.close()
        worker = start()
        with self._lock:
            self.workers[key] = worker
        return worker

    def _keep_until_idle(self) -> None:
        with self._lock:
            self._uses += 1
            self._stop_timer()
            if self.idle_s is None or not self.workers:
                return
            timer = threading.Timer(self.idle_s, self._close_if_idle, args=(self._uses,))
            timer.daemon = True
            self._timer = timer
            timer.start()

    def _stop_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _close_if_idle(self, uses: int) -> None:
        if not self._turn.acquire(blocking=False):
            return  # a job is running; its end starts the idle time again
        try:
            with self._lock:
                if uses != self._uses:
                    return
                self._timer = None
                workers = list(self.workers.values())
                self.workers.clear()
            for worker in workers:
                worker.close()
        finally:
            self._turn.release()

    def close_where(self, doomed: Callable[[WarmKey], bool]) -> None:
        """Close the workers whose key `doomed` picks (plugins that changed, say)."""
        with self._lock:
            keys = [k for k in self.workers if doomed(k)]
            workers = [self.workers.pop(k) for k in keys]
        for worker in workers:
            worker.close()

    def close(self) -> None:
        """Close every worker now, even one running a job (the front end is leaving)."""
        with self._lock:
            self._stop_timer()
            workers = list(self.workers.values())
            self.workers.clear()
        for worker in workers:
            worker.close()


__all__ = ["WarmKey", "WarmPool", "serves"]
