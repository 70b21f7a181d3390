"""Which reason a failed job gives: the OOM hint only when the kernel's OOM killer ended it,
else the worker's own error, else its exit code and the end of its log. The states are shaped
as the Docker engine reports ``State`` in a container's inspect data."""

from __future__ import annotations

from typing import Any

import pytest

from assetmgr.wording import describe
from assetmgr.wording.sandbox import OOM_HINT
from sandbox.errors import JobFailedError, killed_by_oom


def hint_of(exc: Exception) -> str:
    words = describe(exc)
    assert words is not None
    return words.hint


def state(exit_code: int, *, oom: bool) -> dict[str, Any]:
    return {
        "Status": "exited",
        "Running": False,
        "Paused": False,
        "Restarting": False,
        "OOMKilled": oom,
        "Dead": False,
        "Pid": 0,
        "ExitCode": exit_code,
        "Error": "",
        "StartedAt": "2026-03-02T10:15:01.123456789Z",
        "FinishedAt": "2026-03-02T10:15:09.987654321Z",
    }


SEGV = "Fatal Python error: Segmentation fault"
TAIL = ["loading checkpoint", f"  {SEGV}  ", ""]


def test_the_oom_killer_gets_the_memory_hint() -> None:
    exc = JobFailedError.from_state("job-1", state(137, oom=True), log_tail=TAIL)
    assert killed_by_oom(state(137, oom=True))
    assert exc.oom_killed is True and exc.container_exit_code == 137
    assert exc.message == "job job-1 was killed by the kernel's OOM killer without a result"
    assert hint_of(exc) == OOM_HINT


@pytest.mark.parametrize(
    ("container", "worker_error", "message", "hint"),
    [
        (
            state(1, oom=False),
            ("SpecError", "prompt uses LoRA 'x' but the job has no file for it"),
            "job job-1 exited with code 1 without a result: prompt uses LoRA 'x' but the job "
            "has no file for it",
            "The worker stopped the job with its own error (SpecError); see the message.",
        ),
        (
            # Killed by the host (timeout, cancel) or `docker kill`: SIGKILL, but not the OOM
            # killer.
            state(137, oom=False),
            None,
            f"job job-1 exited with code 137 without a result; its log ends: {SEGV}",
            "The worker exited with code 137 without saying why; the message quotes the end "
            "of its log.",
        ),
        (
            # A process inside met the OOM killer, the worker lived on and failed by itself.
            state(1, oom=True),
            ("RuntimeError", "a helper process died"),
            "job job-1 exited with code 1 without a result (a process inside it was "
            "OOM-killed): a helper process died",
            "The worker stopped the job with its own error (RuntimeError); see the message.",
        ),
        (
            state(9, oom=False),
            None,
            f"job job-1 exited with code 9 without a result; its log ends: {SEGV}",
            "The worker exited with code 9 without saying why; the message quotes the end of "
            "its log.",
        ),
        (
            {},  # the container was already gone
            None,
            f"job job-1 ended without a result; its log ends: {SEGV}",
            "The worker stopped without a result; check `assetmgr sandbox status`.",
        ),
    ],
)
def test_anything_else_gets_the_workers_own_reason(
    container: dict[str, Any], worker_error: tuple[str, str] | None, message: str, hint: str
) -> None:
    exc = JobFailedError.from_state("job-1", container, worker_error=worker_error, log_tail=TAIL)
    assert not killed_by_oom(container)
    assert exc.oom_killed is False
    assert (exc.message, hint_of(exc)) == (message, hint)
    assert "memory" not in hint_of(exc).lower()
    assert exc.worker_error_code == (worker_error[0] if worker_error else None)


def test_a_bare_failure_never_blames_memory() -> None:
    exc = JobFailedError("the job's output directory vanished", job_id="job-1")
    assert "memory" not in hint_of(exc).lower() and hint_of(exc)
