"""Errors of the sandbox host side, all under `assetmgr.errors.SandboxError`.

    SandboxError                   (assetmgr.errors)
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

Only the host side imports this module (it needs `assetmgr.errors`); the worker reports errors
as protocol messages instead.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from assetmgr.errors import SandboxError


class EngineUnavailableError(SandboxError):
    title = "Docker engine unavailable"
    hint = "Start the Docker engine (or set DOCKER_HOST) and check `docker info` works."


class ImageError(SandboxError):
    title = "Sandbox image error"
    hint = "Run `assetmgr sandbox build` to build the pinned image."


class ImageMismatchError(ImageError):
    title = "Sandbox image changed"
    hint = (
        "The engine's image no longer matches the recorded build; "
        "run `assetmgr sandbox build` to rebuild and re-record it."
    )


class ImageStaleError(ImageError):
    title = "Sandbox image out of date"
    hint = "Run `assetmgr sandbox build` to rebuild the image with every added plugin's wheels."


class PluginWheelRefusedError(ImageError):
    title = "Plugin requirement refused"
    hint = (
        "A plugin's requirements may not install .pth files or sitecustomize/usercustomize "
        "modules (they would run at every start of Python in the sandbox); drop the plugin "
        "(`assetmgr plugins remove NAME`) or ask its author for a dependency without them."
    )

    def __init__(self, *, wheel: str, member: str, installs_as: str) -> None:
        super().__init__(
            f"plugin requirement wheel {wheel} is refused: its file {member} would install "
            f"{installs_as}, a startup hook"
        )
        self.wheel = wheel
        self.member = member
        self.installs_as = installs_as


class BuildCancelledError(ImageError):
    title = "Sandbox build cancelled"
    hint = "Run `assetmgr sandbox build` again; finished steps are cached."


class PluginError(SandboxError):
    title = "Plugin error"
    hint = "See `assetmgr plugins list` and `assetmgr plugins verify`."


class PluginManifestError(PluginError):
    title = "Plugin refused"
    hint = (
        "Fix the plugin directory; the manifest format is documented in "
        "sandbox/worker/plugin_api.py."
    )


class PluginTamperedError(PluginError):
    title = "Plugin files changed"
    hint = (
        "Nothing was run. Check `assetmgr plugins verify`, then re-add the plugin from a "
        "trusted copy (`assetmgr plugins remove NAME`, then `assetmgr plugins add DIR`)."
    )

    def __init__(self, message: str, *, plugin: str, problems: Sequence[str]) -> None:
        super().__init__(message)
        self.plugin = plugin
        self.problems = list(problems)


class PluginNotFoundError(PluginError, LookupError):
    title = "No such plugin"
    hint = "See `assetmgr plugins list`; add one with `assetmgr plugins add DIR`."
    exit_code = 3


class HostConfigError(SandboxError):
    title = "Unsafe container configuration"
    hint = "This is a bug in assetmgr's sandbox runner; please report it."

    def __init__(self, violations: Sequence[str]) -> None:
        super().__init__("container HostConfig failed the static checks: " + "; ".join(violations))
        self.violations = list(violations)


class JobError(SandboxError):
    title = "Sandbox job failed"

    def __init__(
        self,
        message: str,
        *,
        job_id: str,
        container_exit_code: int | None = None,
        oom_killed: bool = False,
        log_tail: Sequence[str] = (),
        hint: str | None = None,
    ) -> None:
        super().__init__(message, hint=hint)
        self.job_id = job_id
        self.container_exit_code = container_exit_code
        self.oom_killed = oom_killed
        self.log_tail = list(log_tail)


class JobTimeoutError(JobError, TimeoutError):
    title = "Sandbox job timed out"
    hint = "Raise the job's time limit, or check the log tail for where it hung."


class JobCancelledError(JobError):
    title = "Sandbox job cancelled"


OOM_HINT = (
    "The job ran out of memory and the kernel's OOM killer ended it; use a smaller image size "
    "or batch, or give the job more memory."
)


def killed_by_oom(state: Mapping[str, Any]) -> bool:
    """Whether the kernel's OOM killer ended the job, by the engine's container ``State``.

    ``OOMKilled`` alone says some process of the container met the OOM killer; the job itself
    was ended by it only when the container also died of SIGKILL (exit code 137: PID 1 exits
    with the worker's ``128 + signal``).
    """
    return state.get("OOMKilled") is True and state.get("ExitCode") == 137


class JobFailedError(JobError):
    """The worker exited or gave up without a result.

    The hint speaks of memory only when the OOM killer ended the job (`oom_killed`);
    otherwise it points at the worker's own reason: its protocol error (`worker_error_code`,
    in the message) or, without one, its exit code and the end of its log.
    """

    def __init__(
        self,
        message: str,
        *,
        job_id: str,
        container_exit_code: int | None = None,
        oom_killed: bool = False,
        log_tail: Sequence[str] = (),
        hint: str | None = None,
        worker_error_code: str | None = None,
    ) -> None:
        if hint is None:
            hint = failure_hint(
                oom_killed=oom_killed, exit_code=container_exit_code, worker_code=worker_error_code
            )
        super().__init__(
            message,
            job_id=job_id,
            container_exit_code=container_exit_code,
            oom_killed=oom_killed,
            log_tail=log_tail,
            hint=hint,
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
        what = what or f"job {job_id}"
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
        return cls(
            message,
            job_id=job_id,
            container_exit_code=exit_code,
            oom_killed=oom,
            log_tail=log_tail,
            worker_error_code=worker_error[0] if worker_error is not None else None,
        )


def failure_hint(*, oom_killed: bool, exit_code: int | None, worker_code: str | None) -> str:
    """The hint of a failed job: memory only for an OOM kill, else the worker's own reason."""
    if oom_killed:
        return OOM_HINT
    if worker_code:
        return f"The worker stopped the job with its own error ({worker_code}); see the message."
    if exit_code is not None:
        return (
            f"The worker exited with code {exit_code} without saying why; the message quotes "
            "the end of its log."
        )
    return "The worker stopped without a result; check `assetmgr sandbox status`."


class WorkerProtocolError(JobError):
    title = "Sandbox protocol violation"
    hint = "The worker (or a plugin inside it) misbehaved; its output was discarded."


class HostileOutputError(JobError):
    title = "Sandbox output rejected"
    hint = "The job wrote files outside the allowlist; none of its outputs were kept."

    def __init__(self, message: str, *, job_id: str, rejected: Sequence[tuple[str, str]]) -> None:
        super().__init__(message, job_id=job_id)
        self.rejected = list(rejected)


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
    "WorkerProtocolError",
    "failure_hint",
    "killed_by_oom",
]
