"""Front-end words for the sandbox layer's errors (see `assetmgr.wording`)."""

from __future__ import annotations

from assetmgr.context import MODEL_TRANSPORT_ENV
from assetmgr.wording import Wording, words_for
from sandbox import errors as e

# Each class's title and hint; a class without an entry takes its nearest ancestor's.
TITLES: dict[type[e.SandboxError], str] = {
    e.SandboxError: "Sandbox error",
    e.EngineUnavailableError: "Docker engine unavailable",
    e.ImageError: "Sandbox image error",
    e.ImageMismatchError: "Sandbox image changed",
    e.ImageStaleError: "Sandbox image out of date",
    e.PluginWheelRefusedError: "Plugin requirement refused",
    e.BuildCancelledError: "Sandbox build cancelled",
    e.PluginError: "Plugin error",
    e.PluginManifestError: "Plugin refused",
    e.PluginTamperedError: "Plugin files changed",
    e.PluginNotFoundError: "No such plugin",
    e.HostConfigError: "Unsafe container configuration",
    e.JobError: "Sandbox job failed",
    e.JobTimeoutError: "Sandbox job timed out",
    e.JobCancelledError: "Sandbox job cancelled",
    e.WorkerProtocolError: "Sandbox protocol violation",
    e.HostileOutputError: "Sandbox output rejected",
}

HINTS: dict[type[e.SandboxError], str] = {
    e.SandboxError: "Run `assetmgr sandbox status`; `assetmgr sandbox build` rebuilds the image.",
    e.EngineUnavailableError: (
        "Start the Docker engine (or set DOCKER_HOST) and check `docker info` works."
    ),
    e.ImageError: "Run `assetmgr sandbox build` to build the pinned image.",
    e.ImageMismatchError: (
        "The engine's image no longer matches the recorded build; "
        "run `assetmgr sandbox build` to rebuild and re-record it."
    ),
    e.ImageStaleError: (
        "Run `assetmgr sandbox build` to rebuild the image with every added plugin's wheels."
    ),
    e.PluginWheelRefusedError: (
        "A plugin's requirements may not install .pth files or sitecustomize/usercustomize "
        "modules (they would run at every start of Python in the sandbox); drop the plugin "
        "(`assetmgr plugins remove NAME`) or ask its author for a dependency without them."
    ),
    e.BuildCancelledError: "Run `assetmgr sandbox build` again; finished steps are cached.",
    e.PluginError: "See `assetmgr plugins list` and `assetmgr plugins verify`.",
    e.PluginManifestError: (
        "Fix the plugin directory; the manifest format is documented in "
        "sandbox/worker/plugin_api.py."
    ),
    e.PluginTamperedError: (
        "Nothing was run. Check `assetmgr plugins verify`, then re-add the plugin from a "
        "trusted copy (`assetmgr plugins remove NAME`, then `assetmgr plugins add DIR`)."
    ),
    e.PluginNotFoundError: "See `assetmgr plugins list`; add one with `assetmgr plugins add DIR`.",
    e.HostConfigError: "This is a bug in assetmgr's sandbox runner; please report it.",
    e.JobTimeoutError: "Raise the job's time limit, or check the log tail for where it hung.",
    e.WorkerProtocolError: (
        "The worker (or a plugin inside it) misbehaved; its output was discarded."
    ),
    e.HostileOutputError: (
        "The job wrote files outside the allowlist; none of its outputs were kept."
    ),
    e.TransportChoiceError: f"Unset {MODEL_TRANSPORT_ENV} or set it to bind or volume.",
}

# Hints for one case (`SandboxError.reason`) of a class that covers several.
REASON_HINTS: dict[str, str] = {
    "conflicts-image-pins": "A plugin may add packages to the sandbox, never change a pinned one.",
    "already-added": "Pass --replace to swap it for this one, or bump its version.",
    "conflicts-plugin": "Plugins share one image: their pinned requirements must agree.",
    "untrusted-warm": "Add them with `assetmgr plugins add --trust DIR` if you trust them.",
    "no-mirror": "Pass --mirror URL (a Debian mirror) to `assetmgr sandbox build`.",
    "offline-no-rootfs": "Build once with network access to the Debian mirror.",
    "no-debootstrap": "Install it (apt-get install debootstrap).",
    "offline-no-wheels": "Build once with access to the package index.",
    "cpu-torch-for-cuda": (
        "Pass --torch-index-url for the CUDA wheels, or remove the local +cpu wheel "
        "from pip's find-links."
    ),
    "plugin-wheels-unresolvable": (
        "Pin versions that exist as wheels for CPython 3.11 on Linux and agree with "
        "sandbox/image/requirements.in."
    ),
    "plugin-version-clash": "A job may use both plugins: pin requirements that agree.",
    "arch-mismatch": "Build on a host of the engine's architecture, or use --base name@sha256:...",
    "unsafe-engine": "Run the Docker engine with its default seccomp profile.",
}

EXIT_CODES: dict[type[e.SandboxError], int] = {e.PluginNotFoundError: 3}

OOM_HINT = (
    "The job ran out of memory and the kernel's OOM killer ended it; use a smaller image size "
    "or batch, or give the job more memory."
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


def _nearest(table: dict[type[e.SandboxError], str], klass: type) -> str:
    for k in klass.__mro__:
        if k in table:
            return table[k]
    return ""


def _hint(exc: e.SandboxError) -> str:
    if exc.reason in REASON_HINTS:
        return REASON_HINTS[exc.reason]
    if isinstance(exc, e.JobFailedError):
        return failure_hint(
            oom_killed=exc.oom_killed,
            exit_code=exc.container_exit_code,
            worker_code=exc.worker_error_code,
        )
    return _nearest(HINTS, type(exc))


@words_for(e.SandboxError)
def sandbox_words(exc: e.SandboxError) -> Wording:
    exit_code = next((EXIT_CODES[k] for k in type(exc).__mro__ if k in EXIT_CODES), 1)
    return Wording(_nearest(TITLES, type(exc)), exc.message, _hint(exc), exit_code)
