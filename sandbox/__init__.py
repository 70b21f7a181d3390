"""The container sandbox: pinned image, hardened runner, job protocol, and the worker.

Host side: `sandbox.image` (build, record, verify), `sandbox.runner` (run a job),
`sandbox.warm` (a reusable worker container), `sandbox.results` (validate outputs),
`sandbox.plugins` (vet, hash and re-verify plugins), `sandbox.service` (what the CLI and TUI
use: plugins in the catalog, image status, running jobs), `sandbox.engine` (the docker-py
client), `sandbox.errors`. Shared: `sandbox.protocol`. Inside the
container: `sandbox.worker`, which must never import the host side, so this module imports
nothing eagerly; the names below resolve on first use (PEP 562).
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "ImageRecord": "sandbox.image",
    "InstalledPlugin": "sandbox.plugins",
    "JobContainer": "sandbox.runner",
    "JobResult": "sandbox.runner",
    "JobSpec": "sandbox.protocol",
    "Limits": "sandbox.protocol",
    "ModelRef": "sandbox.protocol",
    "build_image": "sandbox.image",
    "load_record": "sandbox.image",
    "prune": "sandbox.runner",
    "run_job": "sandbox.runner",
    "verify_image": "sandbox.image",
    "SandboxService": "sandbox.service",
    "WarmWorker": "sandbox.warm",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'sandbox' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
