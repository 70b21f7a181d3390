"""Host side: run one job in a fresh, hardened, network-less container (docker-py).

`run_job` is the entry point. Per job it:

1. checks the pinned image against its record (`verify_image`),
2. creates a fresh tmpfs-backed volume for ``/job`` and a container from the image *id*
   (``containers.create``, never ``run``, which pulls on a miss) with the hardening of
   docs/sandbox.md sections 0-1 (`ContainerPlan`), models mounted read-only one file at a time
   and the job's plugins read-only at ``/plugins/<name>`` (from the host or from volumes, below),
3. checks the created container's ``HostConfig`` statically (`check_host_config`) before it starts,
4. starts it, copies the spec in with ``put_archive``, parses stdout with `ProtocolReader`,
5. on the nonce-carrying result line, reads ``/job/out`` with ``get_archive`` and validates it
   (`sandbox.results`), then kills the container,
6. removes the container and the volume in every case; on a timeout the log tail is attached to
   the exception with ``add_note``.

The job volume is a tmpfs (size = ``limits.output_bytes``; its pages are charged to the job's
memory cgroup), so a job cannot fill the host's disk. A tmpfs volume only exists while the
container runs, which is why the spec goes in after start and outputs come out before the kill.
Inputs and outputs travel through the engine API, so a remote engine (``DOCKER_HOST``) works
unchanged. Models and plugins reach the container one of two ways (`model_transport`, one
decision for both):

- ``bind`` (a local engine, i.e. a unix socket): the store's file, and each plugin's stored
  copy, is bind-mounted read-only.
- ``volume`` (a remote engine: tcp://, ssh://, https://...; or
  ``ASSETMGR_SANDBOX_MODEL_TRANSPORT=volume``): each model file is copied once into a docker
  volume labelled with its SHA256 (`ensure_model_volume`), through ``put_archive`` into a
  never-started helper container of the pinned image (no network, read-only root), as a
  streamed tar whose last member is a completion marker. Later jobs find the volume by label;
  one without a valid marker is removed and rebuilt. Engine API 1.41 has no volume sub-paths,
  so the job mounts the file *inside* the volume (its ``Mountpoint``, a path on the engine's
  host that the engine itself reported) read-only at the same ``/models/<name>`` path a bind
  mount uses, and the worker sees no difference. Plugins go the same way
  (`ensure_plugin_volume`): after `check_plugins` has re-verified the stored copy, exactly the
  recorded files (regular files only, opened without following links, hashed again while the
  tar streams; the tree sha256 checked before the marker) go under ``plugin/`` in a volume
  labelled with the plugin's tree sha256, and the job bind-mounts that directory read-only at
  ``/plugins/<name>`` (the marker stays outside it, so the plugin sees exactly its files).
  ``prune(models=True)`` removes model and plugin volumes.

GPUs: when the engine reports the NVIDIA runtime, ``device_requests`` asks for all GPUs (or the
given ids) with ``capabilities=[["gpu"]]``; otherwise the job runs on CPU. The GPU path cannot
be tested on the CI machine (no GPU there).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import secrets
import stat
import tarfile
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Literal

import docker.errors
import requests.exceptions
from docker.types import DeviceRequest, LogConfig, Mount, Ulimit

from sandbox.engine import (
    engine_client,
    engine_security_problems,
    has_nvidia_runtime,
    is_local_engine,
)
from sandbox.errors import (
    HostConfigError,
    HostileOutputError,
    ImageStaleError,
    JobCancelledError,
    JobFailedError,
    JobTimeoutError,
    PluginError,
    PluginTamperedError,
    SandboxError,
    WorkerProtocolError,
)
from sandbox.image.record import LABEL_PREFIX, ImageRecord, verify_image
from sandbox.plugins import InstalledPlugin, tree_sha256, verify_installed
from sandbox.protocol import (
    JOB_DIR,
    OUT_DIR,
    SPEC_PATH,
    JobSpec,
    Limits,
    ModelRef,
    PluginRef,
    ProtocolReader,
    ResultMessage,
    StreamLimits,
    WorkerMessage,
    bound_text,
)
from sandbox.results import ArchiveTooLargeError, OutputLimits, extract_outputs, spool_bounded

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
MODEL_TRANSPORT_ENV = "ASSETMGR_SANDBOX_MODEL_TRANSPORT"
ModelTransport = Literal["bind", "volume"]
#: In a model volume: the model file, and the marker written after it (its sha256 and size).
MODEL_FILE = "model"
MODEL_MARKER = ".assetmgr-complete"
#: In a plugin volume: the plugin's directory (exactly its recorded files), and the marker
#: (`MODEL_MARKER`, its tree sha256 and file count) written after it, beside the directory.
PLUGIN_DIR = "plugin"
#: Where a model or plugin volume is mounted in its (never started) helper container.
FILL_DIR = "/fill"
MODEL_CHUNK = 1 << 20
#: Identifies this host process's containers and volumes (for `prune(session=...)`).
SESSION_ID = uuid.uuid4().hex[:16]

SANDBOX_USER = "65534:65534"
HOSTNAME = "sandbox"
WORKER_COMMAND = ("/opt/venv/bin/python", "-I", "-B", "-m", "sandbox.worker", SPEC_PATH)
#: The only environment a job sees (plus the image's PATH). Nothing is inherited from the host.
BASE_ENVIRONMENT: Mapping[str, str] = {
    "HOME": "/tmp",
    "TMPDIR": "/tmp",
    "XDG_CACHE_HOME": "/tmp/.cache",
    "HF_HOME": "/tmp/hf",
    "TORCH_HOME": "/tmp/torch",
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


def _app_version() -> str:
    from assetmgr import __version__

    return __version__


def new_job_id() -> str:
    return f"job-{uuid.uuid4().hex[:20]}"


def new_nonce() -> str:
    return secrets.token_hex(32)


# ---------------------------------------------------------------------------------------------
# The plan: every create() argument, and what the static check expects


@dataclass(frozen=True)
class ModelMount:
    source: str
    target: str
    volume: str | None = None
    """The model volume `source` lies in (volume transport); None for a host file."""

    #: What `source` must be inside its volume's ``_data`` (volume transport).
    member = MODEL_FILE


def _propagation(mount: ModelMount) -> str:
    """``rprivate``; ``rslave`` for a file (or plugin directory) inside a volume.

    The engine refuses private binds from inside its own root (``/var/lib/docker``, where local
    volumes live). ``rslave`` only lets the engine host's mount events reach the container,
    never the other way; a single read-only file has nothing mounted below it, and a plugin
    directory in a volume only gets a mount below it if the engine host's root makes one.
    """
    return "rprivate" if mount.volume is None else "rslave"


@dataclass(frozen=True)
class PluginMount(ModelMount):
    """A vetted plugin, bind-mounted read-only at ``/plugins/<name>``: its stored copy, or
    (volume transport) the `PLUGIN_DIR` directory inside its plugin volume."""

    member = PLUGIN_DIR


@dataclass(frozen=True)
class ContainerPlan:
    """Every setting of a job's container, derived from the spec; also what the check expects."""

    image_id: str
    name: str
    volume_name: str
    limits: Limits
    environment: Mapping[str, str]
    labels: Mapping[str, str]
    models: tuple[ModelMount, ...] = ()
    plugins: tuple[PluginMount, ...] = ()
    gpu: DeviceRequest | None = None
    compile_cache: str | None = None
    """GPU jobs only: the writable volume of compiled kernels (see `compile_cache_volume`)."""
    command: tuple[str, ...] = WORKER_COMMAND
    stdin_open: bool = False
    """Only warm workers read job specs from stdin (through the engine's attach API)."""

    def mounts(self) -> list[Mount]:
        mounts = [Mount(JOB_DIR, self.volume_name, type="volume", no_copy=True)]
        mounts += [
            Mount(m.target, m.source, type="bind", read_only=True, propagation=_propagation(m))
            for m in (*self.models, *self.plugins)
        ]
        if self.compile_cache is not None:
            mounts.append(Mount(COMPILE_CACHE_DIR, self.compile_cache, type="volume"))
        return mounts

    def create_kwargs(self) -> dict[str, Any]:
        lim = self.limits
        kwargs: dict[str, Any] = {
            "image": self.image_id,
            "command": list(self.command),
            "name": self.name,
            "hostname": HOSTNAME,
            "user": SANDBOX_USER,
            "working_dir": "/tmp",
            "network_mode": "none",
            # resolv.conf would otherwise carry the host's resolver and search domains
            "dns": [DNS_PLACEHOLDER],
            "dns_search": ["."],
            "read_only": True,
            "tmpfs": {"/tmp": f"{TMPFS_OPTIONS},size={lim.tmpfs_bytes}"},
            "cap_drop": ["ALL"],
            "privileged": False,
            "security_opt": ["no-new-privileges:true"],  # default seccomp stays on
            "pids_limit": lim.pids,
            "mem_limit": lim.memory_bytes,
            "memswap_limit": lim.memory_bytes,  # equal: no swap
            "nano_cpus": int(lim.cpus * 1e9),
            "ulimits": [
                Ulimit(name="nofile", soft=lim.nofile, hard=lim.nofile),
                Ulimit(name="core", soft=0, hard=0),
            ],
            "ipc_mode": "private",
            "shm_size": lim.shm_bytes,
            "init": True,
            "log_config": LogConfig(
                type="local", config={"max-size": LOG_MAX_SIZE, "max-file": LOG_MAX_FILE}
            ),
            "use_config_proxy": False,
            "environment": dict(self.environment),
            "labels": dict(self.labels),
            "mounts": self.mounts(),
            "detach": True,
            "stdin_open": self.stdin_open,
            "tty": False,
            "auto_remove": False,
        }
        if self.gpu is not None:
            kwargs["device_requests"] = [self.gpu]
        return kwargs


def compile_cache_volume(image_id: str, plugin_refs: Sequence[PluginRef]) -> str:
    """The compile-cache volume of jobs with this image and exactly this plugin set.

    torch.compile's artifacts are code that later jobs load. Plugins run in the same process
    and could write there, so a cache is shared only by jobs that trust the same plugins (and
    use the same image); the second run of such a job then loads instead of recompiling.
    """
    plugins = hashlib.sha256(
        "\n".join(sorted(f"{p.name}={p.sha256}" for p in plugin_refs)).encode()
    ).hexdigest()
    image = image_id.removeprefix("sha256:")
    return f"assetmgr-compile-{image[:16]}-{plugins[:16]}"


def ensure_compile_cache(client: Any, name: str, image: ImageRecord) -> None:
    """Create the compile-cache volume `name` once, with a `kernels` directory the sandbox
    user owns (put_archive keeps a tar entry's owner; the volume's root belongs to root)."""
    try:
        client.volumes.get(name)
        return
    except docker.errors.NotFound:
        pass
    labels = {LABEL_COMPILE_CACHE: image.image_id, LABEL_ROLE: "compile-cache"}
    client.volumes.create(name=name, driver="local", labels=labels)
    uid, gid = (int(part) for part in SANDBOX_USER.split(":"))
    entry = tarfile.TarInfo(COMPILE_CACHE_KERNELS)
    entry.type, entry.mode, entry.uid, entry.gid = tarfile.DIRTYPE, 0o700, uid, gid
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        tar.addfile(entry)
    with _volume_helper(client, image, name, writable=True) as helper:
        client.api.put_archive(helper.id, FILL_DIR, buffer.getvalue())


def _gpu_request(client: Any, gpus: GpuRequest) -> DeviceRequest | None:
    if gpus == "none":
        return None
    if gpus == "auto":
        if not has_nvidia_runtime(client):
            return None
        return DeviceRequest(count=-1, capabilities=[["gpu"]])
    if gpus == "all":
        return DeviceRequest(count=-1, capabilities=[["gpu"]])
    return DeviceRequest(device_ids=[str(g) for g in gpus], capabilities=[["gpu"]])


def plan_job(
    spec: JobSpec,
    image: ImageRecord,
    models: Mapping[str, Path] | None = None,
    *,
    client: Any = None,
    gpus: GpuRequest = "auto",
    check_local_paths: bool = True,
    plugin_dirs: Mapping[str, Path] | None = None,
    model_volumes: Mapping[str, StagedModel] | None = None,
    plugin_volumes: Mapping[str, StagedVolume] | None = None,
) -> ContainerPlan:
    """The container plan for `spec`; `models` maps each `ModelRef.name` to its host file.

    Only the files the spec names are mounted, each read-only at its own path. With
    `check_local_paths` each source must be an existing regular file on this machine (symlinks
    are resolved, so a store's relative links mount the blob itself). `plugin_dirs` maps each
    `PluginRef.name` of the spec to its stored (already verified) copy, mounted read-only at
    ``/plugins/<name>``; only the plugins the spec names are mounted. `model_volumes` (from
    `stage_models`, volume transport) replaces the host files by the files in model volumes,
    and `plugin_volumes` (from `stage_plugins`) the stored copies by the plugin volumes'
    directories (keyed by `PluginRef.name`; each must hold the ref's tree sha256).
    """
    return plan_container(
        spec.job_id,
        image,
        spec.limits,
        spec.models,
        models,
        client=client,
        gpus=gpus,
        check_local_paths=check_local_paths,
        plugin_refs=spec.plugins,
        plugin_dirs=plugin_dirs,
        model_volumes=model_volumes,
        plugin_volumes=plugin_volumes,
    )


def plan_container(
    job_id: str,
    image: ImageRecord,
    limits: Limits,
    model_refs: Sequence[ModelRef],
    models: Mapping[str, Path] | None = None,
    *,
    client: Any = None,
    gpus: GpuRequest = "auto",
    check_local_paths: bool = True,
    role: str = "job",
    command: tuple[str, ...] = WORKER_COMMAND,
    stdin_open: bool = False,
    plugin_refs: Sequence[PluginRef] = (),
    plugin_dirs: Mapping[str, Path] | None = None,
    model_volumes: Mapping[str, StagedModel] | None = None,
    plugin_volumes: Mapping[str, StagedVolume] | None = None,
) -> ContainerPlan:
    """`plan_job` for any container role (one-shot job, or a warm worker)."""
    plugin_dirs = dict(plugin_dirs or {})
    wanted_plugins = {p.name for p in plugin_refs}
    if set(plugin_dirs) != wanted_plugins:
        raise SandboxError(
            f"plugin directories given {sorted(plugin_dirs)} do not match the spec's plugins "
            f"{sorted(wanted_plugins)}"
        )
    plugin_mounts = []
    for pref in plugin_refs:
        if plugin_volumes is not None:
            pstaged = plugin_volumes.get(pref.name)
            if pstaged is None or pstaged.sha256 != pref.sha256.lower():
                raise SandboxError(f"plugin {pref.name!r} was not staged into a volume")
            plugin_mounts.append(PluginMount(pstaged.source, pref.mount_path, pstaged.volume))
            continue
        psource = Path(plugin_dirs[pref.name])
        if check_local_paths:
            try:
                psource = psource.resolve(strict=True)
            except OSError as exc:
                raise SandboxError(f"plugin directory of {pref.name!r} is missing: {exc}") from exc
            if not psource.is_dir():
                raise SandboxError(f"plugin source of {pref.name!r} is not a directory")
        elif not psource.is_absolute():
            raise SandboxError(f"plugin source of {pref.name!r} must be an absolute path")
        plugin_mounts.append(PluginMount(str(psource), pref.mount_path))
    models = dict(models or {})
    wanted = {m.name for m in model_refs}
    if set(models) != wanted:
        raise SandboxError(
            f"model files given {sorted(models)} do not match the spec's models {sorted(wanted)}"
        )
    mounts = []
    for ref in model_refs:
        if model_volumes is not None:
            staged = model_volumes.get(ref.name)
            if staged is None or staged.sha256 != ref.sha256.lower():
                raise SandboxError(f"model {ref.name!r} was not staged into a volume")
            mounts.append(ModelMount(staged.source, ref.mount_path, volume=staged.volume))
            continue
        source = Path(models[ref.name])
        if check_local_paths:
            try:
                source = source.resolve(strict=True)
            except OSError as exc:
                raise SandboxError(f"model file for {ref.name!r} is missing: {exc}") from exc
            if not source.is_file():
                raise SandboxError(f"model source for {ref.name!r} is not a regular file")
        elif not source.is_absolute():
            raise SandboxError(f"model source for {ref.name!r} must be an absolute path")
        mounts.append(ModelMount(str(source), ref.mount_path))
    gpu = _gpu_request(client, gpus) if client is not None else None
    env = dict(BASE_ENVIRONMENT)
    threads = str(max(1, int(limits.cpus)))
    env.update({"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads})
    compile_cache = None
    if gpu is not None:
        env.update(GPU_ENVIRONMENT)
        compile_cache = compile_cache_volume(image.image_id, plugin_refs)
        ensure_compile_cache(client, compile_cache, image)
        env[COMPILE_CACHE_ENV] = f"{COMPILE_CACHE_DIR}/{COMPILE_CACHE_KERNELS}"
    labels = {
        LABEL_JOB: job_id,
        LABEL_VERSION: _app_version(),
        LABEL_SESSION: SESSION_ID,
        LABEL_ROLE: role,
    }
    # a random suffix: a reused job id can never make cleanup hit another job's volume
    name = f"assetmgr-{job_id}-{secrets.token_hex(3)}"
    return ContainerPlan(
        image_id=image.image_id,
        name=name,
        volume_name=name,
        limits=limits,
        environment=env,
        labels=labels,
        models=tuple(mounts),
        plugins=tuple(plugin_mounts),
        gpu=gpu,
        compile_cache=compile_cache,
        command=command,
        stdin_open=stdin_open,
    )


# ---------------------------------------------------------------------------------------------
# Static check of the created container (docker-bench style)


_MEMBER_WHAT = {MODEL_FILE: "model file", PLUGIN_DIR: "plugin directory"}


def _env_dict(entries: Sequence[str] | None) -> dict[str, str]:
    out = {}
    for item in entries or []:
        key, _, value = item.partition("=")
        out[key] = value
    return out


def check_host_config(
    attrs: Mapping[str, Any], plan: ContainerPlan, image_env: Sequence[str] = ()
) -> list[str]:
    """Violations of the hardening in `attrs` (``container.attrs``); empty when all hold.

    Catches a regression in the create() arguments even where no behaviour test could see it.
    """
    hc: Mapping[str, Any] = attrs.get("HostConfig") or {}
    cfg: Mapping[str, Any] = attrs.get("Config") or {}
    lim = plan.limits
    bad: list[str] = []

    def need(ok: bool, what: str) -> None:
        if not ok:
            bad.append(what)

    need(hc.get("NetworkMode") == "none", f"NetworkMode is {hc.get('NetworkMode')!r}")
    need(hc.get("ReadonlyRootfs") is True, "root filesystem is writable")
    need(list(hc.get("CapDrop") or []) == ["ALL"], f"CapDrop is {hc.get('CapDrop')!r}")
    need(not hc.get("CapAdd"), f"CapAdd is {hc.get('CapAdd')!r}")
    need(hc.get("Privileged") is False, "privileged")
    secopt = list(hc.get("SecurityOpt") or [])
    need("no-new-privileges:true" in secopt, "no-new-privileges missing")
    need(not any("unconfined" in s for s in secopt), f"unconfined profile in {secopt}")
    need(
        not any(s.startswith(("seccomp", "apparmor", "label")) for s in secopt),
        f"custom security profile in {secopt}",
    )
    need(hc.get("PidsLimit") == lim.pids, f"PidsLimit is {hc.get('PidsLimit')!r}")
    need(hc.get("Memory") == lim.memory_bytes, f"Memory is {hc.get('Memory')!r}")
    need(hc.get("MemorySwap") == hc.get("Memory"), "MemorySwap != Memory (swap allowed)")
    need(not hc.get("OomKillDisable"), "OOM killer disabled")
    need((hc.get("NanoCpus") or 0) > 0, "no CPU limit")
    need(hc.get("IpcMode") == "private", f"IpcMode is {hc.get('IpcMode')!r}")
    need(hc.get("PidMode") in ("", None), f"PidMode is {hc.get('PidMode')!r}")
    need(hc.get("UTSMode") in ("", None), f"UTSMode is {hc.get('UTSMode')!r}")
    need(hc.get("UsernsMode") in ("", None), f"UsernsMode is {hc.get('UsernsMode')!r}")
    need(hc.get("ShmSize") == lim.shm_bytes, f"ShmSize is {hc.get('ShmSize')!r}")
    need(hc.get("Init") is True, "no init process")
    need(hc.get("AutoRemove") is False, "auto-remove on (state would vanish)")
    need((hc.get("RestartPolicy") or {}).get("Name") in ("", "no", None), "restart policy set")
    need(not hc.get("PortBindings") and not hc.get("PublishAllPorts"), "ports published")
    need(not hc.get("Links") and not hc.get("ExtraHosts"), "links or extra hosts")
    need(not hc.get("Devices") and not hc.get("DeviceCgroupRules"), "host devices mapped")
    need(not hc.get("Binds") and not hc.get("VolumesFrom"), "binds or volumes-from")
    need(not hc.get("Sysctls"), "sysctls set")
    need(list(hc.get("Dns") or []) == [DNS_PLACEHOLDER], f"DNS servers {hc.get('Dns')!r}")
    log = hc.get("LogConfig") or {}
    need(
        log.get("Type") == "local" and bool((log.get("Config") or {}).get("max-size")),
        f"log config {log!r} has no size cap",
    )
    tmpfs = hc.get("Tmpfs") or {}
    need(set(tmpfs) == {"/tmp"}, f"tmpfs mounts {sorted(tmpfs)}")
    opts = set(str(tmpfs.get("/tmp", "")).split(","))
    need({"noexec", "nosuid", "nodev"} <= opts, f"/tmp options {sorted(opts)}")
    ulimits = {u.get("Name"): u for u in hc.get("Ulimits") or []}
    need(ulimits.get("core", {}).get("Hard") == 0, "core dumps allowed")
    need(ulimits.get("nofile", {}).get("Hard") == lim.nofile, "nofile ulimit missing")
    requests_ = hc.get("DeviceRequests") or []
    need(len(requests_) == (1 if plan.gpu is not None else 0), f"device requests {requests_!r}")

    mounts = list(hc.get("Mounts") or [])
    expected = {(m.target, m.source) for m in (*plan.models, *plan.plugins)}
    in_volume = {
        (m.target, m.source): m for m in (*plan.models, *plan.plugins) if m.volume is not None
    }
    seen_models = set()
    job_volume = compile_cache = 0
    for m in mounts:
        target, source, kind = m.get("Target"), m.get("Source"), m.get("Type")
        need(
            "docker.sock" not in str(source) and "containerd" not in str(source),
            f"engine socket mounted from {source}",
        )
        if kind == "volume" and target == JOB_DIR and source == plan.volume_name:
            job_volume += 1
        elif kind == "volume" and target == COMPILE_CACHE_DIR and plan.compile_cache is not None:
            # the one writable mount besides the job volume: GPU jobs' compiled kernels
            need(source == plan.compile_cache, f"compile cache volume {source}")
            compile_cache += 1
        elif kind == "bind" and (target, source) in expected:
            seen_models.add((target, source))
            need(m.get("ReadOnly") is True, f"{target} is writable")
            prop = (m.get("BindOptions") or {}).get("Propagation", "rprivate")
            planned = in_volume.get((target, source))
            modes = ("private", "rprivate") if planned is None else ("rslave",)
            need(prop in modes, f"{target} propagation {prop}")
            if planned is not None:  # the model file / plugin dir in its volume, nothing else
                need(
                    PurePosixPath(str(source)).parts[-3:]
                    == (planned.volume, "_data", planned.member),
                    f"{target} is not the {_MEMBER_WHAT[planned.member]} "
                    f"of volume {planned.volume}",
                )
        else:
            bad.append(f"unexpected mount {kind} {source} -> {target}")
    need(job_volume == 1, "job volume not mounted exactly once")
    need(
        compile_cache == (0 if plan.compile_cache is None else 1),
        "compile cache volume not mounted as planned",
    )
    need(seen_models == expected, "model or plugin mounts differ from the plan")

    need(cfg.get("Image") == plan.image_id, f"image {cfg.get('Image')!r} is not the pinned id")
    need(cfg.get("User") == SANDBOX_USER, f"user is {cfg.get('User')!r}")
    need(cfg.get("Hostname") == HOSTNAME, f"hostname is {cfg.get('Hostname')!r}")
    need(not cfg.get("ExposedPorts"), "exposed ports")
    need(not cfg.get("AttachStdin") and not cfg.get("Tty"), "stdin or tty attached")
    need(bool(cfg.get("OpenStdin")) == plan.stdin_open, "stdin open unexpectedly")
    need(list(cfg.get("Cmd") or []) == list(plan.command), f"command is {cfg.get('Cmd')!r}")
    labels = cfg.get("Labels") or {}
    need(all(labels.get(k) == v for k, v in plan.labels.items()), "job labels missing")
    env = _env_dict(cfg.get("Env"))
    allowed = dict(_env_dict(image_env))
    allowed.update(plan.environment)
    extra = sorted(k for k in env if k not in allowed or env[k] != allowed[k])
    need(not extra, f"environment not in the allowlist: {extra}")
    need(all(env.get(k) == v for k, v in plan.environment.items()), "allowlisted env missing")
    return bad


# ---------------------------------------------------------------------------------------------
# Running


@dataclass
class JobResult:
    """A finished job whose outputs passed validation."""

    job_id: str
    result: ResultMessage
    images: list[Path]
    result_json: dict[str, Any] | None
    output_dir: Path
    log_tail: list[str]
    violations: list[str]
    timings_s: dict[str, float] = field(default_factory=dict)


class _LogTail:
    """Bounded view of the worker's stderr: last lines, each cut to a length, with a byte cap
    (kept as data; front ends clean what they show)."""

    def __init__(self, max_lines: int = 200, max_line: int = 1000, max_bytes: int = 64 << 20):
        self.lines: deque[str] = deque(maxlen=max_lines)
        self.max_line = max_line
        self.max_bytes = max_bytes
        self.total = 0
        self.flooded = False
        self._partial = b""

    def feed(self, chunk: bytes) -> None:
        self.total += len(chunk)
        if self.total > self.max_bytes:
            self.flooded = True
            return
        data = self._partial + chunk
        *complete, self._partial = data.split(b"\n")
        if len(self._partial) > self.max_line:
            complete.append(self._partial)
            self._partial = b""
        for raw in complete[-200:]:
            self.lines.append(bound_text(raw[: self.max_line].decode("utf-8", "replace")))


class _Pump(threading.Thread):
    """Follows one log stream of the container and hands chunks to `sink` until it ends."""

    def __init__(
        self,
        client: Any,
        container_id: str,
        *,
        stdout: bool,
        sink: Callable[[bytes], None],
        wake: threading.Event,
    ) -> None:
        super().__init__(daemon=True, name=f"sandbox-{'stdout' if stdout else 'stderr'}")
        self._stream: Iterator[bytes] = client.api.logs(
            container_id, stdout=stdout, stderr=not stdout, stream=True, follow=True
        )
        self._sink = sink
        self._wake = wake
        self.finished = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            for chunk in self._stream:
                self._sink(chunk)
                self._wake.set()
        except Exception as exc:  # the stream breaks when the container is removed
            self.error = exc
        finally:
            self.finished.set()
            self._wake.set()

    def close(self) -> None:
        close = getattr(self._stream, "close", None)
        if close is not None:
            try:
                close()
            except Exception:
                pass


def _spec_archive(spec: JobSpec) -> bytes:
    """job.json (root, read-only), the empty out/ (sandbox user) and, last, the ready marker."""
    buf = io.BytesIO()
    data = spec.to_json_bytes()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        out = tarfile.TarInfo("out")
        out.type = tarfile.DIRTYPE
        out.mode = 0o700
        out.uid = out.gid = 65534
        tar.addfile(out)
        for name, payload in (("job.json", data), ("job.ready", b"")):
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            info.mode = 0o444
            tar.addfile(info, io.BytesIO(payload))
    return buf.getvalue()


class JobContainer:
    """One job's volume and container; a context manager that always removes both.

    ``__enter__`` creates them and runs the static HostConfig check; if anything fails there,
    whatever was created is removed before the error propagates.
    """

    def __init__(self, client: Any, plan: ContainerPlan) -> None:
        self.client = client
        self.plan = plan
        self.container: Any = None
        self.volume: Any = None
        self.created_at = 0.0

    def __enter__(self) -> JobContainer:
        try:
            self.create()
        except BaseException:
            self.remove()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()

    def create(self) -> None:
        lim = self.plan.limits
        self.created_at = time.monotonic()
        self.volume = self.client.volumes.create(
            name=self.plan.volume_name,
            driver="local",
            driver_opts={
                "type": "tmpfs",
                "device": "tmpfs",
                "o": f"size={lim.output_bytes},mode=0755,nosuid,nodev,noexec",
            },
            labels=dict(self.plan.labels),
        )
        self.container = self.client.containers.create(**self.plan.create_kwargs())
        self.container.reload()
        image_env = self.client.images.get(self.plan.image_id).attrs["Config"].get("Env") or []
        violations = check_host_config(self.container.attrs, self.plan, image_env)
        if violations:
            raise HostConfigError(violations)

    def kill(self) -> None:
        if self.container is None:
            return
        try:
            self.container.kill()
        except docker.errors.APIError:
            pass  # already stopped

    def remove(self) -> None:
        if self.container is not None:
            try:
                self.container.remove(force=True, v=True)
            except docker.errors.NotFound:
                pass
            except (docker.errors.APIError, requests.exceptions.RequestException):
                # An engine that takes longer than the client's timeout (seen under load with
                # a killed job still flooding its stdout) must not hide the job's own error;
                # prune() removes what this missed, by label.
                pass
            self.container = None
        if self.volume is not None:
            for _ in range(20):
                try:
                    self.volume.remove(force=True)
                    break
                except docker.errors.NotFound:
                    break
                except docker.errors.APIError:
                    time.sleep(0.1)  # "volume in use" right after the container's removal
            self.volume = None

    def state(self) -> dict[str, Any]:
        try:
            self.container.reload()
        except docker.errors.NotFound:
            return {}
        return dict(self.container.attrs.get("State") or {})

    def run(
        self,
        spec: JobSpec,
        output_dir: Path,
        *,
        on_message: MessageCallback | None = None,
        cancel: threading.Event | None = None,
        stream_limits: StreamLimits | None = None,
        output_limits: OutputLimits | None = None,
    ) -> JobResult:
        """Start the container, feed it the spec, follow it, collect and validate outputs."""
        cancel = cancel or threading.Event()
        reader = ProtocolReader(
            job_id=spec.job_id, nonce=spec.nonce, limits=stream_limits or StreamLimits()
        )
        tail = _LogTail()
        wake = threading.Event()
        lock = threading.Lock()
        timings: dict[str, float] = {}
        pending: list[WorkerMessage] = []

        def on_stdout(chunk: bytes) -> None:
            with lock:
                messages = reader.feed(chunk)
                if reader.ready is not None and "ready" not in timings:
                    timings["ready"] = time.monotonic() - self.created_at
                pending.extend(messages)

        ct = self.container
        t0 = time.monotonic()
        ct.start()
        timings["start"] = time.monotonic() - self.created_at
        pumps = [
            _Pump(self.client, ct.id, stdout=True, sink=on_stdout, wake=wake),
            _Pump(self.client, ct.id, stdout=False, sink=tail.feed, wake=wake),
        ]
        for p in pumps:
            p.start()
        deadline = t0 + spec.limits.timeout_s

        def fail(exc_type: type[Any], message: str, **kw: Any) -> Any:
            return exc_type(message, job_id=spec.job_id, log_tail=list(tail.lines), **kw)

        try:
            ct.put_archive(JOB_DIR, _spec_archive(spec))
            while True:
                with lock:
                    batch, pending[:] = list(pending), []
                if on_message is not None:
                    for m in batch:
                        on_message(m)
                if reader.flooded or tail.flooded or reader.tampered:
                    self.kill()
                    why = "; ".join(reader.violations) or "stderr flood"
                    raise fail(WorkerProtocolError, f"worker output rejected: {why}")
                if reader.result is not None:
                    break
                if pumps[0].finished.is_set():
                    break
                if cancel.is_set():
                    self.kill()
                    raise fail(JobCancelledError, f"job {spec.job_id} cancelled")
                if time.monotonic() > deadline:
                    self.kill()
                    exc = fail(
                        JobTimeoutError, f"job {spec.job_id} exceeded {spec.limits.timeout_s:g}s"
                    )
                    exc.add_note("worker log tail:\n" + "\n".join(list(tail.lines)[-20:]))
                    raise exc
                wake.wait(0.05)
                wake.clear()

            if reader.result is None:
                pumps[0].join(timeout=5)
                with lock:
                    reader.finish()
                state = self.state()
                err = reader.errors[-1].message if reader.errors else ""
                oom = bool(state.get("OOMKilled"))
                code = state.get("ExitCode")
                why = "killed by the OOM killer" if oom else f"exited with code {code}"
                raise fail(
                    JobFailedError,
                    f"job {spec.job_id} {why} without a result" + (f": {err}" if err else ""),
                    container_exit_code=code,
                    oom_killed=oom,
                )

            timings["result"] = time.monotonic() - self.created_at
            limits = output_limits or OutputLimits(
                max_archive_bytes=spec.limits.output_bytes + (1 << 20)
            )
            try:
                stream, _stat = self.client.api.get_archive(ct.id, OUT_DIR)
                spool = spool_bounded(stream, limits.max_archive_bytes)
            except ArchiveTooLargeError as exc:
                raise fail(WorkerProtocolError, str(exc)) from exc
            except docker.errors.NotFound as exc:
                raise fail(JobFailedError, "the job's output directory vanished") from exc
            with spool:
                outputs = extract_outputs(spool, output_dir, limits)
            timings["collected"] = time.monotonic() - self.created_at
            self.kill()
            for p in pumps:
                p.join(timeout=5)
            with lock:
                reader.finish()
            if reader.tampered or reader.flooded:
                for path in (*outputs.images, *outputs.files, outputs.result_json_path):
                    if path is not None:
                        path.unlink(missing_ok=True)  # nothing of a rejected job is kept
                raise fail(
                    WorkerProtocolError, "worker output rejected: " + "; ".join(reader.violations)
                )
            if outputs.rejected:
                detail = "; ".join(f"{n}: {why}" for n, why in outputs.rejected[:10])
                raise HostileOutputError(
                    f"job {spec.job_id} wrote outputs outside the allowlist: {detail}",
                    job_id=spec.job_id,
                    rejected=outputs.rejected,
                )
            return JobResult(
                job_id=spec.job_id,
                result=reader.result,
                images=outputs.images,
                result_json=outputs.result_json,
                output_dir=output_dir,
                log_tail=list(tail.lines),
                violations=list(reader.violations),
                timings_s={k: round(v, 4) for k, v in timings.items()},
            )
        finally:
            for p in pumps:
                p.close()


# ---------------------------------------------------------------------------------------------
# Models in volumes (remote engines)


def engine_is_remote(client: Any) -> bool:
    """Whether host paths of this machine mean nothing to the engine (decided by its URL).

    docker-py's base URL is ``http+docker://localhost`` for a unix socket (and
    ``http+docker://localnpipe`` for a Windows pipe): local. ``http(s)://host:port`` (tcp://)
    and ``http+docker://ssh`` (ssh://) are remote, even when they point at this machine.
    """
    base_url = str(getattr(getattr(client, "api", None), "base_url", "") or "")
    local = ("http+docker://localhost", "http+docker://localnpipe", "unix://", "npipe://")
    return not base_url.startswith(local)


def model_transport(client: Any) -> ModelTransport:
    """``bind`` for a local engine, ``volume`` for a remote one; `MODEL_TRANSPORT_ENV` overrides."""
    choice = os.environ.get(MODEL_TRANSPORT_ENV, "").strip().lower()
    if choice in ("bind", "volume"):
        return choice  # type: ignore[return-value]
    if choice not in ("", "auto"):
        raise SandboxError(
            f"{MODEL_TRANSPORT_ENV}={choice!r} is not one of auto, bind, volume",
            hint=f"Unset {MODEL_TRANSPORT_ENV} or set it to bind or volume.",
        )
    return "volume" if engine_is_remote(client) else "bind"


@dataclass(frozen=True)
class StagedVolume:
    """A model file or plugin directory in its volume: `source` is its path on the engine's host.

    `sha256` is the model's blob sha256, or the plugin's tree sha256.
    """

    sha256: str
    volume: str
    source: str


#: The name from before plugin volumes; the same thing.
StagedModel = StagedVolume

#: Per kind of volume: its sha256 label, and what the job mounts inside ``_data``.
_VOLUME_KINDS: Mapping[str, tuple[str, str]] = {
    "model": (LABEL_MODEL_SHA256, MODEL_FILE),
    "plugin": (LABEL_PLUGIN_SHA256, PLUGIN_DIR),
}


def _marker(sha256: str, **extra: int) -> bytes:
    return json.dumps({"sha256": sha256, **extra}, sort_keys=True).encode()


def _tar_member(name: str, size: int, mode: int = 0o444, kind: bytes = tarfile.REGTYPE) -> bytes:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.size = size
    info.mode = mode
    info.mtime = 0
    return info.tobuf(format=tarfile.PAX_FORMAT)


def _tar_marker(marker: bytes) -> bytes:
    """The completion marker as a tar member (the archive's last)."""
    return _tar_member(MODEL_MARKER, len(marker)) + marker + b"\0" * (-len(marker) % 512)


def model_tar_stream(path: Path, sha256: str, chunk: int = MODEL_CHUNK) -> Iterator[bytes]:
    """A tar of the model file and, last, its marker, in chunks (never the whole file in memory).

    The file is hashed on the way; if it is not `sha256` (or changes size), the generator
    raises before the marker, so the volume stays incomplete. The copy is owned by root and
    keeps the file's read/write bits (always readable), as a bind mount would show them; the
    read-only mount is what stops writes.
    """
    st = path.stat()
    size = st.st_size
    yield _tar_member(MODEL_FILE, size, (st.st_mode & 0o666) | 0o444)
    digest = hashlib.sha256()
    sent = 0
    with path.open("rb") as fh:
        while block := fh.read(chunk):
            sent += len(block)
            if sent > size:
                raise SandboxError(f"model file {path} grew while it was copied")
            digest.update(block)
            yield block
    if sent != size or digest.hexdigest() != sha256:
        raise SandboxError(f"model file {path} is not the blob {sha256} it should be")
    yield b"\0" * (-size % 512)
    yield _tar_marker(_marker(sha256, size=size))
    yield b"\0" * 1024  # end of archive


def _open_beneath(root_fd: int, parts: Sequence[str]) -> int:
    """Open ``root/parts...`` for reading without following a symlink at any level."""
    nofollow = os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
    fd = os.dup(root_fd)
    try:
        for part in parts[:-1]:
            nxt = os.open(part, os.O_RDONLY | os.O_DIRECTORY | nofollow, dir_fd=fd)
            os.close(fd)
            fd = nxt
        return os.open(parts[-1], os.O_RDONLY | os.O_NONBLOCK | nofollow, dir_fd=fd)
    finally:
        os.close(fd)


def plugin_tar_stream(plugin: InstalledPlugin, chunk: int = MODEL_CHUNK) -> Iterator[bytes]:
    """A tar of exactly the plugin's recorded files under `PLUGIN_DIR`, then the marker.

    Only the paths in ``plugin.files`` are read (anything else in the stored copy is left out),
    each opened without following links at any level, and refused unless it is a regular,
    singly-linked file whose bytes hash as recorded; the tree hash is checked last. Any
    difference raises `PluginTamperedError` before the marker, so the volume stays incomplete.
    Directories are ``0555`` and files ``0444`` (owned by root), as the stored copy shows them.
    """
    label = f"plugin {plugin.name} {plugin.version}"

    def refuse(problem: str) -> PluginTamperedError:
        return PluginTamperedError(
            f"{label} was modified after it was added: {problem}",
            plugin=plugin.name,
            problems=[problem],
        )

    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
    try:
        root_fd = os.open(plugin.path, flags)
    except OSError as exc:
        raise refuse(f"its stored copy {plugin.path} cannot be opened: {exc.strerror}") from None
    found: dict[str, str] = {}
    try:
        yield _tar_member(PLUGIN_DIR, 0, 0o555, tarfile.DIRTYPE)
        made: set[str] = set()
        for rel, expected in sorted(plugin.files.items()):
            parts = rel.split("/")
            if any(p in ("", ".", "..") for p in parts):
                raise refuse(f"{rel!r}: not a relative path inside the plugin")
            for i in range(1, len(parts)):
                directory = "/".join(parts[:i])
                if directory not in made:
                    made.add(directory)
                    yield _tar_member(f"{PLUGIN_DIR}/{directory}", 0, 0o555, tarfile.DIRTYPE)
            try:
                fd = _open_beneath(root_fd, parts)
            except OSError as exc:
                raise refuse(f"{rel}: cannot open ({exc.strerror}; a symbolic link?)") from None
            with os.fdopen(fd, "rb") as fh:
                st = os.fstat(fd)
                if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
                    raise refuse(f"{rel}: not a regular, singly-linked file")
                size = st.st_size
                yield _tar_member(f"{PLUGIN_DIR}/{rel}", size, 0o444)
                digest = hashlib.sha256()
                sent = 0
                while block := fh.read(chunk):
                    sent += len(block)
                    if sent > size:
                        raise refuse(f"{rel}: grew while it was copied")
                    digest.update(block)
                    yield block
            got = digest.hexdigest()
            if sent != size or got != expected:
                raise refuse(f"{rel}: expected sha256 {expected}, got {got}")
            found[rel] = got
            yield b"\0" * (-size % 512)
    finally:
        os.close(root_fd)
    if tree_sha256(found) != plugin.tree_sha256:
        raise refuse("the tree hash differs from the recorded one")
    yield _tar_marker(_marker(plugin.tree_sha256, files=len(found)))
    yield b"\0" * 1024  # end of archive


def _remove_volume(volume: Any) -> bool:
    for _ in range(20):
        try:
            volume.remove(force=True)
            return True
        except docker.errors.NotFound:
            return True
        except docker.errors.APIError as exc:
            if "in use" in str(exc):
                return False  # another process is filling or using it
            time.sleep(0.1)
    return False


@contextmanager
def _volume_helper(
    client: Any, image: ImageRecord, volume: str, *, writable: bool
) -> Iterator[Any]:
    """A created, never started container of the pinned image with only `volume` at FILL_DIR."""
    labels = {
        LABEL_JOB: f"volume-helper-{secrets.token_hex(6)}",
        LABEL_VERSION: _app_version(),
        LABEL_SESSION: SESSION_ID,
        LABEL_ROLE: "volume-helper",
    }
    ct = client.containers.create(
        image=image.image_id,
        command=["/bin/false"],
        name=f"assetmgr-volume-helper-{secrets.token_hex(6)}",
        user=SANDBOX_USER,
        network_mode="none",
        read_only=True,
        cap_drop=["ALL"],
        privileged=False,
        security_opt=["no-new-privileges:true"],
        pids_limit=16,
        mem_limit=64 << 20,
        labels=labels,
        environment={},
        mounts=[Mount(FILL_DIR, volume, type="volume", read_only=not writable, no_copy=True)],
        stdin_open=False,
        tty=False,
        auto_remove=False,
    )
    try:
        ct.reload()
        hc = ct.attrs.get("HostConfig") or {}
        mounts = [
            (m.get("Type"), m.get("Source"), m.get("Target"), bool(m.get("ReadOnly")))
            for m in hc.get("Mounts") or []
        ]
        bad = []
        if mounts != [("volume", volume, FILL_DIR, not writable)]:
            bad.append(f"helper mounts {mounts}")
        if hc.get("NetworkMode") != "none" or hc.get("ReadonlyRootfs") is not True:
            bad.append("helper has a network or a writable root")
        if hc.get("Binds") or hc.get("Privileged") or list(hc.get("CapDrop") or []) != ["ALL"]:
            bad.append("helper has binds, privileges or capabilities")
        if bad:
            raise HostConfigError(bad)
        yield ct
    finally:
        try:
            ct.remove(force=True, v=False)
        except docker.errors.APIError:
            pass  # prune() finds it by label


def _volume_is_complete(client: Any, image: ImageRecord, volume: str, marker: bytes) -> bool:
    """Whether `volume` holds a whole copy: its marker (`MODEL_MARKER`) is exactly `marker`."""
    with _volume_helper(client, image, volume, writable=False) as ct:
        try:
            stream, _stat = client.api.get_archive(ct.id, f"{FILL_DIR}/{MODEL_MARKER}")
        except docker.errors.NotFound:
            return False
        data = bytearray()
        for chunk in stream:
            data += chunk
            if len(data) > 64 << 10:
                return False
    try:
        with tarfile.open(fileobj=io.BytesIO(bytes(data)), mode="r:") as tar:
            member = tar.next()
            fh = tar.extractfile(member) if member is not None else None
            payload = fh.read() if fh is not None else b""
    except tarfile.TarError:
        return False
    return payload == marker


def _staged(volume: Any, kind: str, sha256: str) -> StagedVolume:
    label, member = _VOLUME_KINDS[kind]
    volume.reload()
    attrs = volume.attrs or {}
    mountpoint = str(attrs.get("Mountpoint") or "")
    if attrs.get("Driver") != "local" or not mountpoint.startswith("/"):
        raise SandboxError(f"{kind} volume {volume.name} has no local mountpoint on the engine")
    if (attrs.get("Labels") or {}).get(label) != sha256:
        raise SandboxError(f"{kind} volume {volume.name} lost its label (removed while filled?)")
    return StagedVolume(sha256=sha256, volume=volume.name, source=f"{mountpoint}/{member}")


def _ensure_volume(
    client: Any,
    image: ImageRecord,
    kind: str,
    sha256: str,
    marker: bytes,
    archive: Callable[[], Iterator[bytes]],
) -> StagedVolume:
    """The `kind` volume labelled `sha256` whose marker is `marker`; filled from `archive`.

    Volumes are found by their label; one without a valid marker (an interrupted copy) is
    removed, unless it is in use (another process filling it), and a new one is filled.
    """
    label, _member = _VOLUME_KINDS[kind]
    for vol in client.volumes.list(filters={"label": f"{label}={sha256}"}):
        if _volume_is_complete(client, image, vol.name, marker):
            return _staged(vol, kind, sha256)
        _remove_volume(vol)
    volume = client.volumes.create(
        name=f"assetmgr-{kind}-{sha256[:32]}-{secrets.token_hex(3)}",
        driver="local",
        labels={
            label: sha256,
            LABEL_VERSION: _app_version(),
            LABEL_SESSION: SESSION_ID,
            LABEL_ROLE: kind,
        },
    )
    try:
        with _volume_helper(client, image, volume.name, writable=True) as ct:
            if not client.api.put_archive(ct.id, FILL_DIR, archive()):
                raise SandboxError(f"the engine refused the copy of {kind} {sha256}")
        return _staged(volume, kind, sha256)
    except BaseException:
        _remove_volume(volume)
        raise


def ensure_model_volume(client: Any, image: ImageRecord, sha256: str, path: Path) -> StagedModel:
    """The volume holding the model `path` (blob `sha256`), filled now if none is complete.

    Volumes are found by their `LABEL_MODEL_SHA256` label; one without a valid marker (an
    interrupted copy) is removed, unless it is in use (another process filling it).
    """
    sha256 = sha256.lower()
    size = path.stat().st_size
    return _ensure_volume(
        client,
        image,
        "model",
        sha256,
        _marker(sha256, size=size),
        lambda: model_tar_stream(path, sha256),
    )


def ensure_plugin_volume(client: Any, image: ImageRecord, plugin: InstalledPlugin) -> StagedVolume:
    """The volume holding `plugin`'s recorded files, filled now if none is complete.

    Found by its `LABEL_PLUGIN_SHA256` label (the tree sha256) and marker, like model volumes;
    filled from `plugin_tar_stream`, which re-verifies every file while it streams.
    """
    tree = plugin.tree_sha256.lower()
    return _ensure_volume(
        client,
        image,
        "plugin",
        tree,
        _marker(tree, files=len(plugin.files)),
        lambda: plugin_tar_stream(plugin),
    )


def stage_models(
    client: Any, image: ImageRecord, refs: Sequence[ModelRef], files: Mapping[str, Path] | None
) -> dict[str, StagedModel]:
    """`ensure_model_volume` for each model of a job: `ModelRef.name` -> its staged file."""
    files = dict(files or {})
    wanted = {r.name for r in refs}
    if set(files) != wanted:
        raise SandboxError(
            f"model files given {sorted(files)} do not match the spec's models {sorted(wanted)}"
        )
    staged: dict[str, StagedModel] = {}
    by_sha: dict[str, StagedModel] = {}
    for ref in refs:
        sha = ref.sha256.lower()
        if sha not in by_sha:
            try:
                path = Path(files[ref.name]).resolve(strict=True)
            except OSError as exc:
                raise SandboxError(f"model file for {ref.name!r} is missing: {exc}") from exc
            if not path.is_file():
                raise SandboxError(f"model source for {ref.name!r} is not a regular file")
            by_sha[sha] = ensure_model_volume(client, image, sha, path)
        staged[ref.name] = by_sha[sha]
    return staged


def stage_plugins(
    client: Any, image: ImageRecord, plugins: Sequence[InstalledPlugin]
) -> dict[str, StagedVolume]:
    """`ensure_plugin_volume` for each plugin of a job: plugin name -> its staged directory."""
    return {p.name: ensure_plugin_volume(client, image, p) for p in plugins}


def prepare_models(
    client: Any, image: ImageRecord, refs: Sequence[ModelRef], files: Mapping[str, Path] | None
) -> tuple[dict[str, StagedModel] | None, bool]:
    """What a plan needs for the engine's transport: (model volumes or None, check_local_paths)."""
    if model_transport(client) == "volume" and refs:
        return stage_models(client, image, refs, files), False
    return None, is_local_engine(client)


def prepare_plugins(
    client: Any, image: ImageRecord, plugins: Sequence[InstalledPlugin]
) -> dict[str, StagedVolume] | None:
    """Plugin volumes for the volume transport (`model_transport`), else None (bind mounts).

    Call it after `check_plugins`: a tampered plugin is refused before any volume is touched.
    """
    if model_transport(client) == "volume" and plugins:
        return stage_plugins(client, image, plugins)
    return None


def check_plugins(
    spec: JobSpec, plugins: Sequence[InstalledPlugin], image: ImageRecord
) -> dict[str, Path]:
    """Re-verify the job's plugins on the host, before anything runs; their mount sources.

    Each plugin the spec names must be given, match the spec's ref (name, version, tree hash,
    entry, hooks), still hash exactly as recorded (`verify_installed`, which raises
    `PluginTamperedError` naming the file with expected and actual sha256), and have its
    requirements in the image's lock (else `ImageStaleError`).
    """
    given = {p.name: p for p in plugins}
    wanted = [r.name for r in spec.plugins]
    if sorted(given) != sorted(wanted):
        raise PluginError(
            f"plugins given {sorted(given)} do not match the spec's plugins {sorted(wanted)}"
        )
    in_image = set(image.plugin_requirements)
    dirs = {}
    for ref in spec.plugins:
        plugin = given[ref.name]
        if plugin.ref() != ref:
            raise PluginError(f"the job's reference to plugin {ref.name} is not the added one")
        verify_installed(plugin)
        missing = sorted(set(plugin.requirements) - in_image)
        if missing:
            raise ImageStaleError(
                f"the sandbox image was built without plugin {plugin.name}'s requirements "
                f"{', '.join(missing)}"
            )
        dirs[ref.name] = plugin.path
    return dirs


_CHECKED_ENGINES: set[int] = set()


def check_engine(client: Any) -> None:
    """Refuse engines that would run jobs without seccomp (checked once per client)."""
    if id(client) in _CHECKED_ENGINES:
        return
    problems = engine_security_problems(client)
    if problems:
        raise SandboxError(
            "unsafe Docker engine: " + "; ".join(problems),
            hint="Run the Docker engine with its default seccomp profile.",
        )
    _CHECKED_ENGINES.add(id(client))


def run_job(
    spec: JobSpec,
    *,
    image: ImageRecord,
    output_dir: Path,
    models: Mapping[str, Path] | None = None,
    client: Any = None,
    gpus: GpuRequest = "auto",
    on_message: MessageCallback | None = None,
    cancel: threading.Event | None = None,
    stream_limits: StreamLimits | None = None,
    output_limits: OutputLimits | None = None,
    plugins: Sequence[InstalledPlugin] = (),
) -> JobResult:
    """Run `spec` in a fresh hardened container from the pinned `image`; return its outputs.

    `plugins` are the added plugins the spec names; they are re-verified by hash first
    (`check_plugins`) and mounted read-only (from plugin volumes with the volume transport,
    `prepare_plugins`, whose copy re-verifies every file again). Raises `PluginTamperedError`
    or `ImageStaleError` before anything starts, and a `sandbox.errors.JobError` subclass when
    the job times out, fails, is cancelled, breaks the protocol or writes hostile outputs; the
    container and its volume are removed in every case.
    """
    plugin_dirs = check_plugins(spec, plugins, image)
    client = client or engine_client()
    check_engine(client)
    verify_image(image, client)
    model_volumes, check_local = prepare_models(client, image, spec.models, models)
    plugin_volumes = prepare_plugins(client, image, plugins)
    plan = plan_job(
        spec,
        image,
        models,
        client=client,
        gpus=gpus,
        check_local_paths=check_local,
        plugin_dirs=plugin_dirs,
        model_volumes=model_volumes,
        plugin_volumes=plugin_volumes,
    )
    with JobContainer(client, plan) as job:
        return job.run(
            spec,
            output_dir,
            on_message=on_message,
            cancel=cancel,
            stream_limits=stream_limits,
            output_limits=output_limits,
        )


@dataclass
class PruneReport:
    containers: list[str] = field(default_factory=list)
    volumes: list[str] = field(default_factory=list)
    model_volumes: list[str] = field(default_factory=list)
    plugin_volumes: list[str] = field(default_factory=list)
    compile_caches: list[str] = field(default_factory=list)


def prune(
    client: Any = None,
    *,
    session: str | None = None,
    include_running: bool = True,
    models: bool = False,
) -> PruneReport:
    """Remove stray job containers and volumes found by label (all sessions, or one).

    With ``include_running=False`` running containers (another process's jobs or warm workers)
    and the volumes they use are left alone. With `models` the model and plugin volumes of the
    volume transport (`LABEL_MODEL_SHA256`, `LABEL_PLUGIN_SHA256`; of `session` only, if given)
    go too, except those a container that is still there mounts a file or directory of (jobs
    mount the model file or plugin directory, not the volume, so the engine alone would not
    refuse). GPU jobs' compile caches (`LABEL_COMPILE_CACHE`) go with `models` as well; the
    engine itself keeps one that a container still mounts.
    """
    client = client or engine_client()
    label = f"{LABEL_JOB}" if session is None else f"{LABEL_SESSION}={session}"
    report = PruneReport()
    for ct in client.containers.list(all=True, filters={"label": label}):
        if LABEL_JOB not in (ct.labels or {}):
            continue
        if not include_running and ct.status in ("running", "restarting", "paused"):
            continue
        try:
            ct.remove(force=True, v=True)
            report.containers.append(ct.name)
        except docker.errors.APIError:
            pass
    for vol in client.volumes.list(filters={"label": label}):
        if LABEL_JOB not in ((vol.attrs or {}).get("Labels") or {}):
            continue
        try:
            vol.remove(force=True)
            report.volumes.append(vol.name)
        except docker.errors.APIError:
            pass
    if models:
        in_use: set[str] = set()
        members = {member for _label, member in _VOLUME_KINDS.values()}
        for ct in client.containers.list(all=True, filters={"label": LABEL_JOB}):
            for m in (ct.attrs or {}).get("Mounts") or []:
                parts = PurePosixPath(str(m.get("Source") or "")).parts
                if len(parts) >= 3 and parts[-2] == "_data" and parts[-1] in members:
                    in_use.add(parts[-3])
        for kind_label, removed in (
            (LABEL_MODEL_SHA256, report.model_volumes),
            (LABEL_PLUGIN_SHA256, report.plugin_volumes),
            (LABEL_COMPILE_CACHE, report.compile_caches),
        ):
            filters = [kind_label] + ([label] if session is not None else [])
            for vol in client.volumes.list(filters={"label": filters}):
                if kind_label not in ((vol.attrs or {}).get("Labels") or {}):
                    continue
                if vol.name in in_use or not _remove_volume(vol):
                    continue
                removed.append(vol.name)
    return report


__all__ = [
    "BASE_ENVIRONMENT",
    "LABEL_JOB",
    "LABEL_MODEL_SHA256",
    "LABEL_PLUGIN_SHA256",
    "MODEL_TRANSPORT_ENV",
    "LABEL_SESSION",
    "SESSION_ID",
    "WORKER_COMMAND",
    "ContainerPlan",
    "JobContainer",
    "JobResult",
    "PluginMount",
    "PruneReport",
    "StagedModel",
    "StagedVolume",
    "check_engine",
    "check_host_config",
    "check_plugins",
    "engine_is_remote",
    "ensure_model_volume",
    "ensure_plugin_volume",
    "model_transport",
    "new_job_id",
    "new_nonce",
    "plan_container",
    "plan_job",
    "prepare_models",
    "prepare_plugins",
    "prune",
    "run_job",
    "plugin_tar_stream",
    "stage_models",
    "stage_plugins",
]
