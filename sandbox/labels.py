"""Names, labels and the container layout that the sandbox runner's parts share.

Every container and volume the runner creates carries `LABEL_JOB`, `LABEL_VERSION` (the app
version that built its image), `LABEL_SESSION` and `LABEL_ROLE`; `sandbox.prune` finds strays by
them. The layout constants say where models, plugins and the job volume appear inside a
container, and what a model or plugin volume holds (see `sandbox.transport`).
"""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Literal

from sandbox.image.record import LABEL_PREFIX
from sandbox.protocol import SPEC_PATH, WorkerMessage

LABEL_JOB = f"{LABEL_PREFIX}job"
LABEL_VERSION = f"{LABEL_PREFIX}version"
LABEL_SESSION = f"{LABEL_PREFIX}session"
LABEL_ROLE = f"{LABEL_PREFIX}role"
#: On a model volume (volume transport): the SHA256 of the one model file it holds.
LABEL_MODEL_SHA256 = f"{LABEL_PREFIX}model.sha256"
#: On a plugin volume (volume transport): the tree SHA256 of the plugin it holds.
LABEL_PLUGIN_SHA256 = f"{LABEL_PREFIX}plugin.sha256"
#: Chooses how models and plugins reach a job's container: ``bind``, ``volume`` or ``auto``
#: (the default). The name predates plugin volumes; it governs both.
ModelTransport = Literal["bind", "volume"]
#: In a model volume: the model file, and the marker written after it (its sha256 and size).
MODEL_FILE = "model"
MODEL_MARKER = ".assetmgr-complete"
#: In a plugin volume: the plugin's directory (exactly its recorded files), and the marker
#: (`MODEL_MARKER`, its tree sha256 and file count) written after it, beside the directory.
PLUGIN_DIR = "plugin"
#: Under the plugins directory: per-run copies of plugins' recorded files (bind transport),
#: one ``<session>-<random>`` directory per container.
RUN_COPIES_DIR = ".run"
#: Where a model or plugin volume is mounted in its (never started) helper container.
FILL_DIR = "/fill"
MODEL_CHUNK = 1 << 20
#: Identifies this host process's containers and volumes (for `prune(session=...)`).
SESSION_ID = uuid.uuid4().hex[:16]

SANDBOX_USER = "65534:65534"
HOSTNAME = "sandbox"
WORKER_COMMAND = ("/opt/venv/bin/python", "-I", "-B", "-m", "sandbox.worker", SPEC_PATH)
#: PID 1 of every job container, in front of the worker's command (`sandbox.worker.pid1`):
#: a non-dumpable init the job cannot ptrace or stop, instead of docker's ``--init``.
INIT_COMMAND = (
    "/opt/venv/bin/python",
    "-I",
    "-S",
    "-B",
    "/opt/assetmgr/sandbox/worker/pid1.py",
    "--",
)
#: The only environment a job sees (plus the image's PATH). Nothing is inherited from the host.
#: The /tmp paths are the container's own private tmpfs (noexec), not the host's /tmp.
BASE_ENVIRONMENT: Mapping[str, str] = {
    "HOME": "/tmp",  # noqa: S108
    "TMPDIR": "/tmp",  # noqa: S108
    "XDG_CACHE_HOME": "/tmp/.cache",  # noqa: S108
    "HF_HOME": "/tmp/hf",  # noqa: S108
    "TORCH_HOME": "/tmp/torch",  # noqa: S108
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "HF_HUB_DISABLE_IMPLICIT_TOKEN": "1",
    "DO_NOT_TRACK": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "PYTHONUNBUFFERED": "1",
    "PYTHONDONTWRITEBYTECODE": "1",
    "LANG": "C.UTF-8",
    "TZ": "UTC",
}
GPU_ENVIRONMENT: Mapping[str, str] = {"NVIDIA_DRIVER_CAPABILITIES": "compute,utility"}
#: Where a GPU job's torch.compile cache volume is mounted (`compile_cache_volume`); the job
#: writes in its `kernels` directory (the volume's root belongs to root), named by the env.
COMPILE_CACHE_DIR = "/cache/compile"
COMPILE_CACHE_KERNELS = "kernels"
COMPILE_CACHE_ENV = "ASSETMGR_COMPILE_CACHE"
LABEL_COMPILE_CACHE = f"{LABEL_PREFIX}compile-cache"
DNS_PLACEHOLDER = "127.0.0.1"
LOG_MAX_SIZE = "10m"
LOG_MAX_FILE = "2"
TMPFS_OPTIONS = "rw,noexec,nosuid,nodev"

GpuRequest = Literal["auto", "none", "all"] | Sequence[str]
MessageCallback = Callable[[WorkerMessage], None]


def new_job_id() -> str:
    return f"job-{uuid.uuid4().hex[:20]}"


def new_nonce() -> str:
    return secrets.token_hex(32)
