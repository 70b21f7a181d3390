"""Warm worker: one long-lived hardened container that takes jobs over stdin (no ports).

The per-job container (`sandbox.runner.run_job`) stays the default for untrusted plugins. A
warm worker saves the container start and, later, the model load, at a price: code that runs
in one job (a plugin) can persist into the next (monkeypatching, files in /tmp) and can read
every later job's nonce. So use one warm worker per trust domain and fixed plugin set, and
recycle it after `max_jobs` jobs and after any error, timeout or protocol violation (done
here automatically).

Transport: the container is created with ``stdin_open``; the host attaches once through the
engine API (``attach_socket``: stdin + stdout, multiplexed frames since there is no TTY),
sends one `JobSpec` JSON line per job, and parses the stdout frames with a fresh
`ProtocolReader` per job. Outputs go to ``/job/work/<job_id>/out`` in the job volume (a
tmpfs, which caps their size) and come back in-band, before the result line: ``output`` lines
carrying the job's nonce (`sandbox.protocol.OutputMessage`), with their own byte budget. The
host checks the pieces and writes the tar itself (`sandbox.results.InlineOutputs`), then
validates it with `extract_outputs` exactly like a one-shot job's ``get_archive`` tar (same
allowlist, caps, re-decode and re-encode); why: docs/decisions/warm-worker-inline-outputs.md.
Same hardening, same static HostConfig check; the container's limits are fixed when it starts
(only a job's ``timeout_s`` applies per job).

Plugins: a warm worker is started with a fixed plugin set (mounted read-only, like one-shot
jobs) and serves only jobs that ask for exactly that set. Before every job the host re-checks
the image against its record and re-hashes the plugins' stored copies (`check_plugins`); a
mismatch refuses the job and recycles the worker. Whether a plugin set may use a warm worker
at all (only trusted ones) is decided by `sandbox.service`.
"""

from __future__ import annotations

import dataclasses
import io
import socket
import struct
import tarfile
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from sandbox.engine import engine_client
from sandbox.errors import (
    HostileOutputError,
    JobCancelledError,
    JobFailedError,
    JobTimeoutError,
    SandboxError,
    WorkerProtocolError,
)
from sandbox.image.record import ImageRecord, verify_image
from sandbox.plugins import InstalledPlugin
from sandbox.protocol import (
    JOB_DIR,
    MAX_OUTPUT_NAME,
    OUTPUT_CHUNK_B64,
    OUTPUT_CHUNK_BYTES,
    WORK_DIR,
    ErrorMessage,
    JobSpec,
    Limits,
    ModelRef,
    OutputMessage,
    ProtocolReader,
    ResultMessage,
    StreamLimits,
)
from sandbox.results import (
    ArchiveTooLargeError,
    HostileInlineOutput,
    InlineOutputError,
    InlineOutputs,
    OutputLimits,
    Outputs,
    extract_outputs,
)
from sandbox.runner import (
    WORKER_COMMAND,
    GpuRequest,
    JobContainer,
    JobResult,
    MessageCallback,
    PluginSources,
    check_engine,
    check_plugins,
    new_job_id,
    plan_container,
    prepare_models,
    prepare_plugins,
)

_STDOUT = 1
#: Wire bytes of one output line besides its base64 data (type, ids, nonce, name, numbers).
_OUTPUT_LINE_OVERHEAD = 512 + MAX_OUTPUT_NAME


def output_budget(limits: OutputLimits) -> int:
    """Wire bytes of the most output lines an archive within `limits` can take."""
    pieces = -(-limits.max_archive_bytes // OUTPUT_CHUNK_BYTES) + limits.max_members
    return pieces * (OUTPUT_CHUNK_B64 + _OUTPUT_LINE_OVERHEAD)


def _work_archive() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        work = tarfile.TarInfo(WORK_DIR.removeprefix(JOB_DIR + "/"))
        work.type = tarfile.DIRTYPE
        work.mode = 0o700
        work.uid = work.gid = 65534
        tar.addfile(work)
    return buf.getvalue()


class _Demux:
    """Splits the attach stream's 8-byte-header frames; keeps stdout payloads only."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        self._buf += data
        out = []
        while len(self._buf) >= 8:
            stream, size = self._buf[0], struct.unpack(">I", self._buf[4:8])[0]
            if len(self._buf) < 8 + size:
                break
            payload = bytes(self._buf[8 : 8 + size])
            del self._buf[: 8 + size]
            if stream == _STDOUT:
                out.append(payload)
        return out


class WarmWorker:
    """A reusable worker container; `run` is the warm counterpart of `run_job`."""

    def __init__(
        self,
        image: ImageRecord,
        *,
        client: Any = None,
        limits: Limits | None = None,
        models: Sequence[ModelRef] = (),
        model_files: Mapping[str, Path] | None = None,
        gpus: GpuRequest = "auto",
        max_jobs: int = 50,
        stream_limits: StreamLimits | None = None,
        plugins: Sequence[InstalledPlugin] = (),
        transport: str = "auto",
    ) -> None:
        self.client = client or engine_client()
        self.transport = transport
        self.plugins = list(plugins)
        self.image = image
        self.limits = limits or Limits()
        self.models = list(models)
        self.model_files = dict(model_files or {})
        self.gpus = gpus
        self.max_jobs = max_jobs
        self.stream_limits = stream_limits or StreamLimits()
        self.jobs_done = 0
        self.ready_s: float | None = None
        self._container: JobContainer | None = None
        self._plugin_sources = PluginSources()
        self._sock: Any = None
        self._demux = _Demux()

    def __enter__(self) -> WarmWorker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def running(self) -> bool:
        return self._container is not None

    def start(self) -> None:
        """Create, check and start the container, and wait for its ready line."""
        if self._container is not None:
            return
        check_engine(self.client)
        verify_image(self.image, self.client)
        model_volumes, check_local = prepare_models(
            self.client, self.image, self.models, self.model_files, self.transport
        )
        self._plugin_sources.close()
        self._plugin_sources = prepare_plugins(
            self.client, self.image, self.plugins, self.transport
        )
        try:
            plan = plan_container(
                new_job_id().replace("job-", "warm-"),
                self.image,
                self.limits,
                self.models,
                self.model_files,
                client=self.client,
                gpus=self.gpus,
                check_local_paths=check_local,
                model_volumes=model_volumes,
                role="warm-worker",
                command=(*WORKER_COMMAND[:-1], "--serve"),
                stdin_open=True,
                plugin_refs=[p.ref() for p in self.plugins],
                plugin_dirs=self._plugin_sources.dirs,
                plugin_volumes=self._plugin_sources.volumes,
            )
            job = JobContainer(self.client, plan)
            job.__enter__()
        except BaseException:
            self._plugin_sources.close()
            raise
        self._container = job
        try:
            ct = job.container
            self._sock = self.client.api.attach_socket(
                ct.id, params={"stdin": 1, "stdout": 1, "stderr": 0, "stream": 1}
            )
            ct.start()
            ct.put_archive(JOB_DIR, _work_archive())
            reader = ProtocolReader(job_id="warm", nonce="0" * 32, limits=self.stream_limits)
            deadline = time.monotonic() + 60
            while reader.ready is None:
                self._pump(reader, deadline, what="worker start")
            self.ready_s = time.monotonic() - job.created_at
            self.jobs_done = 0
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Remove the container and its volume (also ends the worker's stdin)."""
        if self._sock is not None:
            try:
                self._raw_socket().close()
            except OSError:
                pass
            self._sock = None
        if self._container is not None:
            self._container.remove()
            self._container = None
        self._plugin_sources.close()
        self._demux = _Demux()

    def _raw_socket(self) -> socket.socket:
        raw = getattr(self._sock, "_sock", self._sock)
        if not isinstance(raw, socket.socket):
            raise SandboxError("the warm worker is not attached (no socket to its stdin)")
        return raw

    def _pump(self, reader: ProtocolReader, deadline: float, *, what: str) -> list[Any]:
        """Read what is available (up to the deadline) into `reader`; return new messages."""
        sock = self._raw_socket()
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(what)
        sock.settimeout(min(remaining, 0.25))
        try:
            data = sock.recv(1 << 16)
        except TimeoutError:
            return []
        if not data:
            raise EOFError("the warm worker closed its output")
        messages = []
        for payload in self._demux.feed(data):
            messages += reader.feed(payload)
        return messages

    def run(
        self,
        spec: JobSpec,
        output_dir: Path,
        *,
        on_message: MessageCallback | None = None,
        cancel: threading.Event | None = None,
        output_limits: OutputLimits | None = None,
    ) -> JobResult:
        """Run one job in the warm container; recycles it on any failure or after max_jobs."""
        container = self._admit(spec)
        cancel = cancel or threading.Event()
        created = time.monotonic()
        limits = output_limits or OutputLimits(
            max_archive_bytes=self.limits.output_bytes + (1 << 20)
        )
        reader = ProtocolReader(
            job_id=spec.job_id,
            nonce=spec.nonce,
            limits=dataclasses.replace(self.stream_limits, max_output_bytes=output_budget(limits)),
        )
        deadline = created + spec.limits.timeout_s
        ok = False
        inline = InlineOutputs(limits)
        try:
            self._raw_socket().sendall(spec.to_json_bytes() + b"\n")
            result = self._follow(spec, reader, inline, container, deadline, cancel, on_message)
            outputs = self._collect(spec, inline, output_dir, limits)
            ok = True
            self.jobs_done += 1
            return JobResult(
                job_id=spec.job_id,
                result=result,
                images=outputs.images,
                result_json=outputs.result_json,
                output_dir=output_dir,
                log_tail=[],
                violations=list(reader.violations),
                timings_s={"result": round(time.monotonic() - created, 4)},
            )
        finally:
            inline.close()
            if not ok:
                self.close()  # never reuse a worker after a failure

    def _admit(self, spec: JobSpec) -> Any:
        """Check the job fits this worker, re-check image and plugins, (re)start; the container."""
        mounted = {(m.name, m.mount_path, m.sha256) for m in self.models}
        if not {(m.name, m.mount_path, m.sha256) for m in spec.models} <= mounted:
            raise SandboxError("the job needs models this warm worker was not started with")
        if {p.name for p in spec.plugins} != {p.name for p in self.plugins}:
            raise SandboxError("the job's plugins are not this warm worker's plugin set")
        try:
            check_plugins(spec, self.plugins, self.image)
            if self.running:
                verify_image(self.image, self.client)
        except SandboxError:
            self.close()
            raise
        if self.jobs_done >= self.max_jobs:
            self.close()
        self.start()
        if self._container is None:
            raise SandboxError("the warm worker's container did not start")
        return self._container

    def _follow(
        self,
        spec: JobSpec,
        reader: ProtocolReader,
        inline: InlineOutputs,
        container: Any,
        deadline: float,
        cancel: threading.Event,
        on_message: MessageCallback | None,
    ) -> ResultMessage:
        """Read the job's messages until its result line; raise on cancel, timeout, the worker's
        end or error, or a protocol violation."""
        while reader.result is None:
            if cancel.is_set():
                raise JobCancelledError(f"job {spec.job_id} cancelled", job_id=spec.job_id)
            try:
                messages = self._pump(reader, deadline, what="job")
            except TimeoutError as exc:
                raise JobTimeoutError(
                    f"job {spec.job_id} exceeded {spec.limits.timeout_s:g}s",
                    job_id=spec.job_id,
                ) from exc
            except EOFError as exc:
                raise JobFailedError.from_state(
                    spec.job_id,
                    container.state(),
                    what=f"the warm worker of job {spec.job_id}",
                ) from exc
            for m in messages:
                self._handle(m, spec, inline, on_message)
            if reader.flooded or reader.tampered:
                raise WorkerProtocolError(
                    "worker output rejected: " + "; ".join(reader.violations),
                    job_id=spec.job_id,
                )
        return reader.result

    def _handle(
        self,
        message: Any,
        spec: JobSpec,
        inline: InlineOutputs,
        on_message: MessageCallback | None,
    ) -> None:
        """An output piece goes to `inline`; anything else to `on_message`; an error of this
        job ends it."""
        if isinstance(message, OutputMessage):
            self._take_output(inline, message, spec.job_id)
            return
        if on_message is not None:
            on_message(message)
        if isinstance(message, ErrorMessage) and message.job_id in (None, spec.job_id):
            raise JobFailedError(
                f"job {spec.job_id} failed: {message.code}: {message.message}",
                job_id=spec.job_id,
                worker_error_code=message.code,
            )

    @staticmethod
    def _collect(
        spec: JobSpec, inline: InlineOutputs, output_dir: Path, limits: OutputLimits
    ) -> Outputs:
        """Write the in-band pieces as a tar and validate it like a one-shot job's outputs."""
        try:
            archive = inline.archive()
        except InlineOutputError as exc:
            raise WorkerProtocolError(
                f"job {spec.job_id}: bad in-band outputs: {exc}", job_id=spec.job_id
            ) from exc
        outputs = extract_outputs(archive, output_dir, limits)
        if outputs.rejected:
            raise HostileOutputError(
                f"job {spec.job_id} wrote outputs outside the allowlist",
                job_id=spec.job_id,
                rejected=outputs.rejected,
            )
        return outputs

    @staticmethod
    def _take_output(inline: InlineOutputs, message: OutputMessage, job_id: str) -> None:
        try:
            inline.add(message)
        except HostileInlineOutput as exc:
            raise HostileOutputError(
                f"job {job_id} wrote outputs outside the allowlist: {exc}",
                job_id=job_id,
                rejected=exc.rejected,
            ) from exc
        except (InlineOutputError, ArchiveTooLargeError) as exc:
            raise WorkerProtocolError(
                f"job {job_id}: bad in-band outputs: {exc}", job_id=job_id
            ) from exc


__all__ = ["WarmWorker", "output_budget"]
