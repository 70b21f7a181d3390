"""Host side: run one job in a fresh, hardened, network-less container (docker-py).

`run_job` is the entry point. Per job it:

1. checks the pinned image against its record (`verify_image`),
2. creates a fresh tmpfs-backed volume for ``/job`` and a container from the image *id*
   (``containers.create``, never ``run``, which pulls on a miss) with the hardening of
   `ContainerPlan` (docs/architecture.md), models mounted read-only one file at a time
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
unchanged. Models and plugins reach the container by bind mounts or through docker volumes
(`sandbox.transport`).

The parts live in their own modules, re-exported here: names and labels (`sandbox.labels`), the
plan (`sandbox.plan`), the static check (`sandbox.hostcheck`), transport (`sandbox.transport`)
and the janitor (`sandbox.prune`). This module runs one container.

GPUs: when the engine reports the NVIDIA runtime, ``device_requests`` asks for all GPUs (or the
given ids) with ``capabilities=[["gpu"]]``; otherwise the job runs on CPU. The GPU path cannot
be tested on the CI machine (no GPU there).
"""

from __future__ import annotations

import io
import logging
import tarfile
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker.errors
import requests.exceptions

from sandbox.engine import engine_client, engine_security_problems
from sandbox.errors import (
    HostConfigError,
    HostileOutputError,
    ImageStaleError,
    JobCancelledError,
    JobFailedError,
    JobTimeoutError,
    PluginError,
    SandboxError,
    WorkerProtocolError,
)
from sandbox.hostcheck import check_host_config
from sandbox.image.record import ImageRecord, verify_image
from sandbox.labels import (
    BASE_ENVIRONMENT,
    COMPILE_CACHE_DIR,
    COMPILE_CACHE_ENV,
    COMPILE_CACHE_KERNELS,
    FILL_DIR,
    LABEL_COMPILE_CACHE,
    LABEL_JOB,
    LABEL_MODEL_SHA256,
    LABEL_PLUGIN_SHA256,
    LABEL_ROLE,
    LABEL_SESSION,
    LABEL_VERSION,
    MODEL_FILE,
    MODEL_MARKER,
    PLUGIN_DIR,
    SANDBOX_USER,
    SESSION_ID,
    WORKER_COMMAND,
    GpuRequest,
    MessageCallback,
    new_job_id,
    new_nonce,
)
from sandbox.plan import (
    ContainerPlan,
    ModelMount,
    PluginMount,
    compile_cache_volume,
    ensure_compile_cache,
    plan_container,
    plan_job,
)
from sandbox.plugin_store import verify_installed
from sandbox.plugins import InstalledPlugin
from sandbox.protocol import (
    JOB_DIR,
    OUT_DIR,
    JobSpec,
    ProtocolReader,
    ResultMessage,
    StreamLimits,
    WorkerMessage,
    bound_text,
)
from sandbox.prune import PruneReport, prune
from sandbox.results import (
    ArchiveTooLargeError,
    OutputLimits,
    Outputs,
    extract_outputs,
    spool_bounded,
)
from sandbox.retry import CONTAINER_REMOVAL, VOLUME_REMOVAL
from sandbox.transport import (
    PluginSources,
    StagedModel,
    StagedVolume,
    engine_is_remote,
    ensure_model_volume,
    ensure_plugin_volume,
    model_transport,
    plugin_tar_stream,
    prepare_models,
    prepare_plugins,
    stage_models,
    stage_plugins,
)

_log = logging.getLogger(__name__)


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
            except Exception as exc:  # a stream the engine already cut; nothing left to free
                _log.debug("closing a log stream failed: %s", exc)


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
            for _ in CONTAINER_REMOVAL.attempts():
                try:
                    self.container.remove(force=True, v=True)
                    break
                except docker.errors.NotFound:
                    break
                except (docker.errors.APIError, requests.exceptions.RequestException):
                    # A slow engine usually finishes the removal anyway: ask again; a failure
                    # must not hide the job's own error, and prune() removes what is left.
                    continue
            self.container = None
        if self.volume is not None:
            for _ in VOLUME_REMOVAL.attempts():
                try:
                    self.volume.remove(force=True)
                    break
                except docker.errors.NotFound:
                    break
                except docker.errors.APIError:
                    continue  # "volume in use" right after the container's removal
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
        run = _JobRun(
            spec=spec,
            reader=ProtocolReader(
                job_id=spec.job_id, nonce=spec.nonce, limits=stream_limits or StreamLimits()
            ),
        )

        def on_stdout(chunk: bytes) -> None:
            with run.lock:
                messages = run.reader.feed(chunk)
                if run.reader.ready is not None and "ready" not in run.timings:
                    run.timings["ready"] = time.monotonic() - self.created_at
                run.pending.extend(messages)

        ct = self.container
        t0 = time.monotonic()
        ct.start()
        run.timings["start"] = time.monotonic() - self.created_at
        run.pumps = [
            _Pump(self.client, ct.id, stdout=True, sink=on_stdout, wake=run.wake),
            _Pump(self.client, ct.id, stdout=False, sink=run.tail.feed, wake=run.wake),
        ]
        for p in run.pumps:
            p.start()
        try:
            ct.put_archive(JOB_DIR, _spec_archive(spec))
            self._follow(run, t0 + spec.limits.timeout_s, cancel, on_message)
            result = run.reader.result
            if result is None:
                raise self._no_result_error(run)
            run.timings["result"] = time.monotonic() - self.created_at
            outputs = self._collect(run, output_dir, output_limits)
            return _accepted(run, result, outputs, output_dir)
        finally:
            for p in run.pumps:
                p.close()

    def _follow(
        self,
        run: _JobRun,
        deadline: float,
        cancel: threading.Event,
        on_message: MessageCallback | None,
    ) -> None:
        """Hand messages on until the result line or the end of stdout; kill on any violation,
        a cancel or the deadline."""
        spec, reader, tail = run.spec, run.reader, run.tail
        while True:
            batch = run.take_pending()
            if on_message is not None:
                for m in batch:
                    on_message(m)
            if reader.flooded or tail.flooded or reader.tampered:
                self.kill()
                why = "; ".join(reader.violations) or "stderr flood"
                raise run.fail(WorkerProtocolError, f"worker output rejected: {why}")
            if reader.result is not None or run.pumps[0].finished.is_set():
                return
            if cancel.is_set():
                self.kill()
                raise run.fail(JobCancelledError, f"job {spec.job_id} cancelled")
            if time.monotonic() > deadline:
                self.kill()
                exc = run.fail(
                    JobTimeoutError, f"job {spec.job_id} exceeded {spec.limits.timeout_s:g}s"
                )
                exc.add_note("worker log tail:\n" + "\n".join(list(tail.lines)[-20:]))
                raise exc
            run.wake.wait(0.05)
            run.wake.clear()

    def _no_result_error(self, run: _JobRun) -> JobFailedError:
        """The worker's stdout ended without a result: what the container's state says."""
        run.pumps[0].join(timeout=5)
        with run.lock:
            run.reader.finish()
        last = run.reader.errors[-1] if run.reader.errors else None
        return JobFailedError.from_state(
            run.spec.job_id,
            self.state(),
            worker_error=(last.code, last.message) if last is not None else None,
            log_tail=list(run.tail.lines),
        )

    def _collect(
        self, run: _JobRun, output_dir: Path, output_limits: OutputLimits | None
    ) -> Outputs:
        """Read ``/job/out`` (bounded) and validate it into `output_dir`, then stop the job."""
        ct = self.container
        limits = output_limits or OutputLimits(
            max_archive_bytes=run.spec.limits.output_bytes + (1 << 20)
        )
        try:
            stream, _stat = self.client.api.get_archive(ct.id, OUT_DIR)
            spool = spool_bounded(stream, limits.max_archive_bytes)
        except ArchiveTooLargeError as exc:
            raise run.fail(WorkerProtocolError, str(exc)) from exc
        except docker.errors.NotFound as exc:
            raise run.fail(JobFailedError, "the job's output directory vanished") from exc
        with spool:
            outputs = extract_outputs(spool, output_dir, limits)
        run.timings["collected"] = time.monotonic() - self.created_at
        self.kill()
        for p in run.pumps:
            p.join(timeout=5)
        with run.lock:
            run.reader.finish()
        return outputs


@dataclass
class _JobRun:
    """What following one job shares between the pumps' threads and the job loop."""

    spec: JobSpec
    reader: ProtocolReader
    tail: _LogTail = field(default_factory=_LogTail)
    wake: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)
    timings: dict[str, float] = field(default_factory=dict)
    pending: list[WorkerMessage] = field(default_factory=list)
    pumps: list[_Pump] = field(default_factory=list)

    def take_pending(self) -> list[WorkerMessage]:
        with self.lock:
            batch, self.pending[:] = list(self.pending), []
        return batch

    def fail(self, exc_type: type[Any], message: str, **kw: Any) -> Any:
        return exc_type(message, job_id=self.spec.job_id, log_tail=list(self.tail.lines), **kw)


def _accepted(run: _JobRun, result: ResultMessage, outputs: Outputs, output_dir: Path) -> JobResult:
    """The job's result, unless its stream was tampered with or it wrote outside the allowlist
    (then nothing of it is kept)."""
    reader, spec = run.reader, run.spec
    if reader.tampered or reader.flooded:
        for path in (*outputs.images, *outputs.files, outputs.result_json_path):
            if path is not None:
                path.unlink(missing_ok=True)  # nothing of a rejected job is kept
        raise run.fail(
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
        result=result,
        images=outputs.images,
        result_json=outputs.result_json,
        output_dir=output_dir,
        log_tail=list(run.tail.lines),
        violations=list(reader.violations),
        timings_s={k: round(v, 4) for k, v in run.timings.items()},
    )


def check_plugins(
    spec: JobSpec, plugins: Sequence[InstalledPlugin], image: ImageRecord
) -> dict[str, Path]:
    """Re-verify the job's plugins on the host, before anything runs; their stored folders.

    Each plugin the spec names must be given, match the spec's ref (name, version, tree hash,
    entry, hooks, requirement set), be exactly its recorded files (`verify_installed`, which
    raises `PluginTamperedError` naming the file), and have its requirement set in the image
    (else `ImageStaleError`).
    """
    given = {p.name: p for p in plugins}
    wanted = [r.name for r in spec.plugins]
    if sorted(given) != sorted(wanted):
        raise PluginError(
            f"plugins given {sorted(given)} do not match the spec's plugins {sorted(wanted)}"
        )
    dirs = {}
    for ref in spec.plugins:
        plugin = given[ref.name]
        if plugin.ref() != ref:
            raise PluginError(f"the job's reference to plugin {ref.name} is not the added one")
        verify_installed(plugin)
        if plugin.deps_key is not None and plugin.deps_key not in image.plugin_dep_sets:
            raise ImageStaleError(
                f"the sandbox image was built without plugin {plugin.name}'s requirements "
                f"{', '.join(plugin.requirements)}"
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
            reason="unsafe-engine",
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
    transport: str = "auto",
) -> JobResult:
    """Run `spec` in a fresh hardened container from the pinned `image`; return its outputs.

    `plugins` are the added plugins the spec names; they are re-verified first (`check_plugins`:
    exactly the recorded files, nothing else in the folder) and mounted read-only from a copy
    of their recorded files (a per-run copy, or a plugin volume with the volume transport;
    `prepare_plugins`), re-hashed while it is made. Raises `PluginTamperedError`
    or `ImageStaleError` before anything starts, and a `sandbox.errors.JobError` subclass when
    the job times out, fails, is cancelled, breaks the protocol or writes hostile outputs; the
    container and its volume are removed in every case.
    """
    check_plugins(spec, plugins, image)
    client = client or engine_client()
    check_engine(client)
    verify_image(image, client)
    model_volumes, check_local = prepare_models(client, image, spec.models, models, transport)
    with prepare_plugins(client, image, plugins, transport) as sources:
        plan = plan_job(
            spec,
            image,
            models,
            client=client,
            gpus=gpus,
            check_local_paths=check_local,
            plugin_dirs=sources.dirs,
            model_volumes=model_volumes,
            plugin_volumes=sources.volumes,
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


__all__ = [
    "BASE_ENVIRONMENT",
    "COMPILE_CACHE_DIR",
    "COMPILE_CACHE_ENV",
    "COMPILE_CACHE_KERNELS",
    "FILL_DIR",
    "LABEL_COMPILE_CACHE",
    "LABEL_JOB",
    "LABEL_MODEL_SHA256",
    "LABEL_PLUGIN_SHA256",
    "LABEL_ROLE",
    "LABEL_SESSION",
    "LABEL_VERSION",
    "MODEL_FILE",
    "MODEL_MARKER",
    "PLUGIN_DIR",
    "SANDBOX_USER",
    "SESSION_ID",
    "WORKER_COMMAND",
    "ContainerPlan",
    "GpuRequest",
    "JobContainer",
    "JobResult",
    "MessageCallback",
    "ModelMount",
    "PluginMount",
    "PluginSources",
    "PruneReport",
    "StagedModel",
    "StagedVolume",
    "check_engine",
    "check_host_config",
    "check_plugins",
    "compile_cache_volume",
    "engine_is_remote",
    "ensure_compile_cache",
    "ensure_model_volume",
    "ensure_plugin_volume",
    "model_transport",
    "new_job_id",
    "new_nonce",
    "plan_container",
    "plan_job",
    "plugin_tar_stream",
    "prepare_models",
    "prepare_plugins",
    "prune",
    "run_job",
    "stage_models",
    "stage_plugins",
]
