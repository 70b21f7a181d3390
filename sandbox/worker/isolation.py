"""What a warm worker resets between jobs, so that jobs sharing it see nothing of each other.

Each job runs with a fresh private scratch folder (``/tmp/<job_id>``, mode 0700) as its
``TMPDIR`` and working directory. When the job ends (its outputs and result already sent), the
worker removes everything under the work root (the job's ``/job/work/<job_id>``), the scratch
folder, and every other entry the job left at the top of ``/tmp`` and ``/dev/shm``; it puts
back the working directory, ``tempfile``'s cached folder and the environment as they were
before the job.

What stays, by design: the worker's caches (`CACHE_NAMES` under ``/tmp``, and what the engine
sets up once, `ENGINE_ENV`), and the Python process itself: the loaded model, imported
plugin modules and anything they changed in memory. That is why only trusted plugin sets
(one trust domain) ever share a worker.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

#: Folders the job may write besides its own, swept after every job.
SCRATCH_ROOTS: tuple[str, ...] = ("/tmp", "/dev/shm")  # noqa: S108  # the container's own tmpfs
#: Cache folders of the worker's libraries under ``/tmp`` (HOME): kept across jobs. Inductor's
#: default cache folder is ``torchinductor_<user>`` (`CACHE_PREFIXES`).
CACHE_NAMES = frozenset({".cache", ".config", ".nv", ".triton", "hf", "torch"})
CACHE_PREFIXES = ("torchinductor_",)
#: Variables the generation engine sets once for the whole worker (where its compile caches
#: are, its logging): kept when a job's other changes to the environment are undone.
ENGINE_ENV = frozenset(
    {
        "TORCHINDUCTOR_CACHE_DIR",
        "TRITON_CACHE_DIR",
        "DIFFUSERS_VERBOSITY",
        "HF_HUB_OFFLINE",
        "HF_HUB_DISABLE_TELEMETRY",
    }
)
_TMP_VARIABLES = ("TMPDIR", "TMP", "TEMP")


def _entries(root: str) -> set[str]:
    try:
        return set(os.listdir(root))
    except OSError:
        return set()


def _remove(path: str) -> None:
    """Remove a file, link or folder without following links."""
    try:
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            os.unlink(path)
    except OSError:
        pass


def _restore_environment(before: dict[str, str]) -> None:
    for key in [k for k in os.environ if k not in before and k not in ENGINE_ENV]:
        del os.environ[key]
    for key, value in before.items():
        if key not in ENGINE_ENV and os.environ.get(key) != value:
            os.environ[key] = value


class JobIsolation:
    """The reset between a warm worker's jobs (see the module docstring)."""

    def __init__(
        self,
        work_root: Path,
        *,
        scratch_roots: tuple[str, ...] = SCRATCH_ROOTS,
        kept: frozenset[str] = CACHE_NAMES,
    ) -> None:
        self.work_root = work_root
        self.scratch_roots = scratch_roots
        self.kept = kept
        self.home_cwd = os.getcwd()

    @contextlib.contextmanager
    def job(self, job_id: str) -> Iterator[Path]:
        """Run one job in its own scratch folder; yields its folder under the work root."""
        environment = dict(os.environ)
        cached_tempdir = tempfile.tempdir
        present = {root: _entries(root) for root in self.scratch_roots}
        scratch = Path(self.scratch_roots[0]) / job_id
        _remove(str(scratch))
        scratch.mkdir(mode=0o700)
        for name in _TMP_VARIABLES:
            os.environ[name] = str(scratch)
        tempfile.tempdir = str(scratch)
        os.chdir(scratch)
        try:
            yield self.work_root / job_id
        finally:
            self._reset(environment, cached_tempdir, present)

    def _reset(
        self, environment: dict[str, str], cached_tempdir: str | None, present: dict[str, set[str]]
    ) -> None:
        try:
            os.chdir(self.home_cwd)
        except OSError:
            os.chdir("/")
        tempfile.tempdir = cached_tempdir
        _restore_environment(environment)
        for name in _entries(str(self.work_root)):
            _remove(str(self.work_root / name))
        for root, before in present.items():
            for name in _entries(root) - before - self.kept:
                if not name.startswith(CACHE_PREFIXES):
                    _remove(os.path.join(root, name))


__all__ = ["CACHE_NAMES", "CACHE_PREFIXES", "ENGINE_ENV", "SCRATCH_ROOTS", "JobIsolation"]
