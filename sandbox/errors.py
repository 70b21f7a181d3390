"""Errors of the sandbox host side: data for the front end, which words them.

    SandboxError                   root; `message` (plain, one line), `reason` (a short code)
    ├── EngineUnavailableError     the Docker engine cannot be reached
    ├── ImageError                 building, importing or verifying the pinned image failed
    │   ├── ImageMismatchError     the engine's image no longer matches the recorded one
    │   ├── ImageStaleError        the image lacks what a job needs (plugin requirements)
    │   ├── PluginWheelRefusedError a plugin's requirement wheel carries a startup hook
    │   └── BuildCancelledError    the caller cancelled the build
    ├── PluginError                a plugin could not be added, found or used
    │   ├── PluginManifestError    the plugin directory or its manifest was refused
    │   ├── PluginTamperedError    a stored plugin's files no longer match their recorded hashes
    │   └── PluginNotFoundError    no plugin of that name was added
    ├── HostConfigError            a container's HostConfig is not the hardened one (static check)
    └── JobError                   a job ran but did not produce an acceptable result
        ├── JobTimeoutError        killed at its wall-clock limit
        ├── JobCancelledError      cancelled by the caller
        ├── JobFailedError         the worker exited non-zero, was OOM-killed or sent no result
        ├── WorkerProtocolError    the worker's stdout broke the protocol (flood, forged result)
        └── HostileOutputError     the output archive held something outside the allowlist

Titles, hints and exit codes live with the front ends (`assetmgr.wording.sandbox`); `reason`
names the case where one class covers several (``"offline-no-rootfs"``, ``"untrusted-warm"``).
Only the host side imports this module; the worker reports errors as protocol messages.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any


class SandboxError(Exception):
    """The container sandbox failed or refused to run."""

    def __init__(self, message: str, *, reason: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason

    def __str__(self) -> str:
        return self.message


class EngineUnavailableError(SandboxError):
    pass


class ImageError(SandboxError):
    pass


class ImageMismatchError(ImageError):
    pass


class ImageStaleError(ImageError):
    pass


class PluginWheelRefusedError(ImageError):
    def __init__(self, *, wheel: str, member: str, installs_as: str) -> None:
        super().__init__(
            f"plugin requirement wheel {wheel} is refused: its file {member} would install "
            f"{installs_as}, a startup hook"
        )
        self.wheel = wheel
        self.member = member
        self.installs_as = installs_as


class BuildCancelledError(ImageError):
    pass


class PluginError(SandboxError):
    pass


class PluginManifestError(PluginError):
    pass


class PluginTamperedError(PluginError):
    def __init__(self, message: str, *, plugin: str, problems: Sequence[str]) -> None:
        super().__init__(message)
        self.plugin = plugin
        self.problems = list(problems)


class PluginNotFoundError(PluginError, LookupError):
    def __init__(self, message: str, *, plugin: str = "") -> None:
        super().__init__(message)
        self.plugin = plugin


class HostConfigError(SandboxError):
    def __init__(self, violations: Sequence[str]) -> None:
        super().__init__("container HostConfig failed the static checks: " + "; ".join(violations))
        self.violations = list(violations)


class JobError(SandboxError):
    """A job that ran without an acceptable result; `job_id` and what the engine said."""

    def __init__(
        self,
        message: str,
        *,
        job_id: str,
        container_exit_code: int | None = None,
        oom_killed: bool = False,
        log_tail: Sequence[str] = (),
        reason: str = "",
    ) -> None:
        super().__init__(message, reason=reason)
        self.job_id = job_id
        self.container_exit_code = container_exit_code
        self.oom_killed = oom_killed
        self.log_tail = list(log_tail)


class JobTimeoutError(JobError, TimeoutError):
    pass


class JobCancelledError(JobError):
    pass


def killed_by_oom(state: Mapping[str, Any]) -> bool:
    """Whether the kernel's OOM killer ended the job, by the engine's container ``State``.

    ``OOMKilled`` alone says some process of the container met the OOM killer; the job itself
    was ended by it only when the container also died of SIGKILL (exit code 137: PID 1 exits
    with the worker's ``128 + signal``).
    """
    return state.get("OOMKilled") is True and state.get("ExitCode") == 137


class JobFailedError(JobError):
    """The worker exited or gave up without a result.

    `oom_killed` says the OOM killer ended the job; otherwise `worker_error_code` (the worker's
    protocol error, also in the message) or the exit code and the end of the log say why.
    """

    def __init__(
        self,
        message: str,
        *,
        job_id: str,
        container_exit_code: int | None = None,
        oom_killed: bool = False,
        log_tail: Sequence[str] = (),
        worker_error_code: str | None = None,
    ) -> None:
        super().__init__(
            message,
            job_id=job_id,
            container_exit_code=container_exit_code,
            oom_killed=oom_killed,
            log_tail=log_tail,
        )
        self.worker_error_code = worker_error_code

    @classmethod
    def from_state(
        cls,
        job_id: str,
        state: Mapping[str, Any],
        *,
        worker_error: tuple[str, str] | None = None,
        log_tail: Sequence[str] = (),
        what: str = "",
    ) -> JobFailedError:
        """The failure of a job whose container ended with `state` (the engine's ``State``),
        after the worker sent `worker_error` (code, message) or nothing."""
        oom = killed_by_oom(state)
        code = state.get("ExitCode")
        exit_code = code if isinstance(code, int) and not isinstance(code, bool) else None
        message = _failure_message(
            what or f"job {job_id}", state, oom, exit_code, worker_error, log_tail
        )
        return cls(
            message,
            job_id=job_id,
            container_exit_code=exit_code,
            oom_killed=oom,
            log_tail=log_tail,
            worker_error_code=worker_error[0] if worker_error is not None else None,
        )


def _failure_message(
    what: str,
    state: Mapping[str, Any],
    oom: bool,
    exit_code: int | None,
    worker_error: tuple[str, str] | None,
    log_tail: Sequence[str],
) -> str:
    if oom:
        message = f"{what} was killed by the kernel's OOM killer without a result"
    elif exit_code is None:
        message = f"{what} ended without a result"
    else:
        message = f"{what} exited with code {exit_code} without a result"
        if state.get("OOMKilled") is True:
            message += " (a process inside it was OOM-killed)"
    if worker_error is not None:
        message += f": {worker_error[1] or worker_error[0]}"
    elif not oom:
        last = next((line.strip() for line in reversed(log_tail) if line.strip()), "")
        if last:
            message += f"; its log ends: {last[:300]}"
    return message


class WorkerProtocolError(JobError):
    pass


class HostileOutputError(JobError):
    def __init__(self, message: str, *, job_id: str, rejected: Sequence[tuple[str, str]]) -> None:
        super().__init__(message, job_id=job_id)
        self.rejected = list(rejected)


class TransportChoiceError(SandboxError):
    """The model transport setting is not one of auto, bind, volume."""

    def __init__(self, message: str, *, value: str) -> None:
        super().__init__(message)
        self.value = value


__all__ = [
    "BuildCancelledError",
    "EngineUnavailableError",
    "HostConfigError",
    "HostileOutputError",
    "ImageError",
    "ImageMismatchError",
    "ImageStaleError",
    "JobCancelledError",
    "JobError",
    "JobFailedError",
    "JobTimeoutError",
    "PluginError",
    "PluginManifestError",
    "PluginNotFoundError",
    "PluginTamperedError",
    "PluginWheelRefusedError",
    "SandboxError",
    "TransportChoiceError",
    "WorkerProtocolError",
    "killed_by_oom",
]
