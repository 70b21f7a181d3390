"""The plan of a job's container: every ``containers.create`` argument, derived from the spec.

`plan_job` (one-shot jobs) and `plan_container` (any role, warm workers too) build a
`ContainerPlan` with the hardening (docs/architecture.md, "Where outside bytes are checked");
the static check (`sandbox.hostcheck`) compares the created container against the same plan.
"""

from __future__ import annotations

import hashlib
import io
import secrets
import tarfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker.errors
from docker.types import DeviceRequest, LogConfig, Mount, Ulimit

from sandbox.engine import has_nvidia_runtime
from sandbox.errors import SandboxError
from sandbox.image.record import ImageRecord
from sandbox.labels import (
    BASE_ENVIRONMENT,
    COMPILE_CACHE_DIR,
    COMPILE_CACHE_ENV,
    COMPILE_CACHE_KERNELS,
    DNS_PLACEHOLDER,
    FILL_DIR,
    GPU_ENVIRONMENT,
    HOSTNAME,
    INIT_COMMAND,
    LABEL_COMPILE_CACHE,
    LABEL_JOB,
    LABEL_ROLE,
    LABEL_SESSION,
    LABEL_VERSION,
    LOG_MAX_FILE,
    LOG_MAX_SIZE,
    MODEL_FILE,
    PLUGIN_DIR,
    SANDBOX_USER,
    SESSION_ID,
    TMPFS_OPTIONS,
    WORKER_COMMAND,
    GpuRequest,
)
from sandbox.protocol import JOB_DIR, JobSpec, Limits, ModelRef, PluginRef
from sandbox.transport import StagedModel, StagedVolume, _volume_helper


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
    """The worker's command; the container runs it under `INIT_COMMAND` (`container_command`)."""
    stdin_open: bool = False
    """Only warm workers read job specs from stdin (through the engine's attach API)."""

    @property
    def container_command(self) -> list[str]:
        return [*INIT_COMMAND, *self.command]

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
            "command": self.container_command,
            "name": self.name,
            "hostname": HOSTNAME,
            "user": SANDBOX_USER,
            "working_dir": "/tmp",  # noqa: S108  # the container's own private tmpfs
            "network_mode": "none",
            # resolv.conf would otherwise carry the host's resolver and search domains
            "dns": [DNS_PLACEHOLDER],
            "dns_search": ["."],
            "read_only": True,
            "tmpfs": {"/tmp": f"{TMPFS_OPTIONS},size={lim.tmpfs_bytes}"},  # noqa: S108  # in the container
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
            # our own PID 1 (INIT_COMMAND), not docker-init: tini is dumpable, so the job
            # could ptrace-stop it and outlive its worker until the timeout
            "init": False,
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
    `PluginRef.name` of the spec to the directory mounted read-only at ``/plugins/<name>``:
    a per-run copy of its recorded files (`sandbox.transport.plugin_run_copies`); only the
    plugins the spec names are mounted. `model_volumes` (from
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
    plugin_mounts = _plugin_mounts(
        plugin_refs, plugin_dirs, plugin_volumes, check_local_paths=check_local_paths
    )
    mounts = _model_mounts(model_refs, models, model_volumes, check_local_paths=check_local_paths)
    gpu = _gpu_request(client, gpus) if client is not None else None
    env = _environment(limits, gpu_wanted=gpu is not None)
    compile_cache = None
    if gpu is not None:
        compile_cache = compile_cache_volume(image.image_id, plugin_refs)
        ensure_compile_cache(client, compile_cache, image)
    labels = {
        LABEL_JOB: job_id,
        LABEL_VERSION: image.app_version,
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


def _plugin_mounts(
    plugin_refs: Sequence[PluginRef],
    plugin_dirs: Mapping[str, Path] | None,
    plugin_volumes: Mapping[str, StagedVolume] | None,
    *,
    check_local_paths: bool,
) -> list[PluginMount]:
    """Each plugin's mount: its staged volume, or its checked local directory."""
    plugin_dirs = dict(plugin_dirs or {})
    wanted_plugins = {p.name for p in plugin_refs}
    if plugin_volumes is None and set(plugin_dirs) != wanted_plugins:
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
    return plugin_mounts


def _model_mounts(
    model_refs: Sequence[ModelRef],
    models: Mapping[str, Path] | None,
    model_volumes: Mapping[str, StagedModel] | None,
    *,
    check_local_paths: bool,
) -> list[ModelMount]:
    """Each model's mount: its staged volume, or its checked local regular file."""
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
    return mounts


def _environment(limits: Limits, *, gpu_wanted: bool) -> dict[str, str]:
    """The container's whole environment: fixed values, thread counts, the GPU's settings."""
    env = dict(BASE_ENVIRONMENT)
    threads = str(max(1, int(limits.cpus)))
    env.update({"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads})
    if gpu_wanted:
        env.update(GPU_ENVIRONMENT)
        env[COMPILE_CACHE_ENV] = f"{COMPILE_CACHE_DIR}/{COMPILE_CACHE_KERNELS}"
    return env
