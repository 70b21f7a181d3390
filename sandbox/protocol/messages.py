"""The job protocol between the host and the worker in the container (stdlib + pydantic only).

Shared by both sides, so it must never import docker, assetmgr or anything heavy.

Flow of one job (per-job container; see `sandbox.runner`):

1. The host creates the container with a fresh tmpfs-backed volume at ``/job`` and starts it.
   The worker prints ``{"type": "ready"}`` and waits for ``/job/job.ready``.
2. The host copies in ``job.json`` (a `JobSpec`), the empty ``out/`` directory and, last, the
   ``job.ready`` marker, with `put_archive`.
3. The worker validates the spec again, runs the job, writes files under ``/job/out`` and sends
   ``progress``/``log`` lines, then exactly one ``result`` line carrying the job's nonce (or an
   ``error`` line and a non-zero exit). It then lingers until the host kills it, because the
   tmpfs volume disappears when the container stops.
4. The host reads the output archive with `get_archive` and throws the container away.

Warm workers (`sandbox.warm`) send their outputs in-band instead (why:
docs/decisions/warm-worker-inline-outputs.md): before the result line, the worker sends each
entry of its ``out/`` directory as ``output`` lines (`OutputMessage`: name, size, offset, base64
data, the job's nonce). The host never parses a tar the worker wrote: it checks the pieces
(`sandbox.results.InlineOutputs`), writes the archive itself and validates it exactly like a
``get_archive`` one (allowlist, caps, re-decode and re-encode). Output lines are accepted only
when the reader is given an output budget (`StreamLimits.max_output_bytes`), count against that
budget instead of `StreamLimits.max_total_bytes`, and only with this job's id and nonce.

Wire format: one JSON object per line on the worker's *protocol* channel (the container's
stdout); free-form logs go to stderr. The host parses stdout with `ProtocolReader`, which treats
every byte as hostile: bounded line length, line count and total size, JSON parsed inside
``try``, unknown types ignored, control characters stripped, and only one ``result`` line
accepted, and only if it carries this job's nonce.

Nonce and forged results: plugin code runs in the worker's process, so it can read the nonce
from the spec or from memory and write to any descriptor the worker owns. The worker moves its
protocol channel off fd 1 before any job code runs (fd 1 then points at stderr), so a plugin's
``print()``, a subprocess's output and any accidental JSON lands in the logs, not the protocol;
a line with a wrong nonce is ignored, and a *second* valid result line makes the host reject the
whole job as tampered. A deliberately malicious plugin can still replace the job's result with
its own (by writing to the protocol descriptor first and killing the worker); that only affects
this job's own outputs, which the host validates and re-encodes like any other output. Keeping
plugin code in a separate process with its own descriptors would narrow this further.

Extending: a new job kind registers a params model with `register_kind`; the spec keeps
``params`` as an open JSON object validated against that model on both sides. The ``generate``
kind's params are a full `sandbox.protocol.jobspec.GenSpec`, the contract the host checks requests
against before any container starts.
"""

from __future__ import annotations

import hmac
import json
import re
from dataclasses import dataclass, field
from typing import Annotated, Any, Final, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    JsonValue,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)

from sandbox.protocol.jobspec import MAX_MODEL_FILES, GenSpec

PROTOCOL_VERSION: Final = 1

JOB_DIR: Final = "/job"
SPEC_PATH: Final = "/job/job.json"
READY_MARKER: Final = "/job/job.ready"
OUT_DIR: Final = "/job/out"
#: Warm workers (`sandbox.warm`) keep one directory per job here, owned by the sandbox user.
WORK_DIR: Final = "/job/work"
MODELS_DIR: Final = "/models"
#: Each vetted plugin a job asks for is bind-mounted read-only at ``/plugins/<name>``.
PLUGINS_DIR: Final = "/plugins"
#: In the image: each plugin's requirement wheels, installed apart from the worker's venv in
#: ``/opt/plugin-deps/<requirements key>`` (`PluginRef.deps`); a job appends only its plugins'
#: directories to ``sys.path``, as plain entries (no ``.pth`` processing).
PLUGIN_DEPS_DIR: Final = "/opt/plugin-deps"

MAX_SPEC_BYTES: Final = 256 * 1024
#: In-band outputs (warm workers): raw bytes per `OutputMessage` piece (base64 on the wire).
OUTPUT_CHUNK_BYTES: Final = 96 * 1024
OUTPUT_CHUNK_B64: Final = 4 * OUTPUT_CHUNK_BYTES // 3
MAX_OUTPUT_NAME: Final = 300
MAX_PARAMS_BYTES: Final = 128 * 1024
MAX_TEXT: Final = 4096
#: The longest time limit a job may have (`Limits.timeout_s`).
MAX_TIMEOUT_S: Final = 24 * 3600

#: Output names the host accepts, relative to ``/job`` (the archive holds ``out/...``).
OUTPUT_PNG_RE: Final = re.compile(r"^out/[A-Za-z0-9][A-Za-z0-9_.-]{0,99}\.png$")
OUTPUT_RESULT_JSON: Final = "out/result.json"
#: Text and JSON side outputs (plugins' `extra_outputs`); validated and re-encoded by the host.
OUTPUT_EXTRA_RE: Final = re.compile(r"^out/[A-Za-z0-9][A-Za-z0-9_.-]{0,99}\.(txt|json)$")

#: Plugin names: lower case, usable as a directory, a module-name part and an output prefix.
PLUGIN_NAME_RE: Final = r"^[a-z][a-z0-9_-]{0,47}$"
PLUGIN_VERSION_RE: Final = r"^[0-9A-Za-z][0-9A-Za-z.+_-]{0,63}$"
PLUGIN_ENTRY_RE: Final = r"^[A-Za-z_][A-Za-z0-9_]{0,63}$"
#: The hooks a plugin may declare (see `sandbox.worker.plugin_api`, which repeats them).
PLUGIN_HOOKS: Final = ("prompt_transform", "sampler_provider", "post_process", "extra_outputs")

_NAME_RE: Final = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$"
_JOB_ID_RE: Final = r"^[a-z0-9][a-z0-9-]{0,63}$"
_SHA256_RE: Final = r"^[0-9a-f]{64}$"
_NONCE_RE: Final = r"^[0-9a-f]{32,128}$"

GiB: Final = 1024**3
MiB: Final = 1024**2


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Limits(_Strict):
    """Resource limits of one job; the host turns them into container settings."""

    timeout_s: float = Field(default=600.0, gt=0, le=MAX_TIMEOUT_S)
    """Wall-clock limit from container start; the container is killed after it."""
    memory_bytes: int = Field(default=8 * GiB, ge=64 * MiB)
    """RAM limit (swap is disabled: memswap == memory). tmpfs pages count against it."""
    pids: int = Field(default=256, ge=8, le=65536)
    cpus: float = Field(default=2.0, gt=0, le=1024)
    tmpfs_bytes: int = Field(default=512 * MiB, ge=MiB)
    """Size of the scratch tmpfs at /tmp."""
    shm_bytes: int = Field(default=256 * MiB, ge=MiB)
    output_bytes: int = Field(default=256 * MiB, ge=MiB, le=16 * GiB)
    """Size of the job volume (tmpfs): caps everything the job can write to /job/out."""
    nofile: int = Field(default=4096, ge=64, le=1 << 20)


class ModelRef(_Strict):
    """One model file the job may read, bind-mounted read-only at `mount_path`."""

    name: str = Field(pattern=_NAME_RE)
    mount_path: str
    sha256: str = Field(pattern=_SHA256_RE)

    @field_validator("mount_path")
    @classmethod
    def _under_models(cls, value: str) -> str:
        prefix = MODELS_DIR + "/"
        if not value.startswith(prefix) or not re.match(_NAME_RE, value[len(prefix) :]):
            raise ValueError(f"mount_path must be {MODELS_DIR}/<file name>")
        return value


class PluginRef(_Strict):
    """A vetted plugin the job uses, mounted read-only at ``/plugins/<name>``.

    The host re-hashes the plugin's files against the catalog before every run; `sha256` is
    the plugin's tree hash (over every file's path and sha256), so the worker and the logs can
    tell exactly which content ran. `entry` and `hooks` come from the vetted manifest.
    """

    name: str = Field(pattern=PLUGIN_NAME_RE)
    version: str = Field(pattern=PLUGIN_VERSION_RE)
    sha256: str = Field(pattern=_SHA256_RE)
    entry: str = Field(pattern=PLUGIN_ENTRY_RE)
    hooks: tuple[str, ...] = Field(min_length=1, max_length=len(PLUGIN_HOOKS))
    deps: str | None = Field(default=None, pattern=_SHA256_RE)
    """The key of its requirements' directory under `PLUGIN_DEPS_DIR`; None without any."""

    @field_validator("hooks")
    @classmethod
    def _known_hooks(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        unknown = [h for h in value if h not in PLUGIN_HOOKS]
        if unknown:
            raise ValueError(f"unknown plugin hooks {unknown} (known: {', '.join(PLUGIN_HOOKS)})")
        if len(set(value)) != len(value):
            raise ValueError("plugin hooks must be unique")
        return value

    @property
    def mount_path(self) -> str:
        return f"{PLUGINS_DIR}/{self.name}"


class ProbeCall(_Strict):
    name: str = Field(pattern=r"^[a-z][a-z0-9_]{0,63}$")
    args: dict[str, JsonValue] = Field(default_factory=dict)


class ProbeParams(BaseModel):
    """Params of kind ``probe``: isolation probes run by `sandbox.worker.probes`."""

    model_config = ConfigDict(extra="allow", frozen=True)
    probes: list[ProbeCall] = Field(min_length=1, max_length=64)


class EchoParams(BaseModel):
    """Params of kind ``echo``: write one solid-colour PNG and echo `text` back."""

    model_config = ConfigDict(extra="allow", frozen=True)
    width: int = Field(default=64, ge=1, le=2048)
    height: int = Field(default=64, ge=1, le=2048)
    rgb: tuple[int, int, int] = (0, 128, 255)
    text: str = Field(default="", max_length=MAX_TEXT)
    name: str = Field(default="echo.png", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}\.png$")

    @field_validator("rgb")
    @classmethod
    def _bytes(cls, value: tuple[int, int, int]) -> tuple[int, int, int]:
        if any(not 0 <= c <= 255 for c in value):
            raise ValueError("rgb components must be 0..255")
        return value


class PluginDemoParams(BaseModel):
    """Params of kind ``plugin_demo``: the plugin hooks on a prompt and a synthetic image.

    The prompt goes through every ``prompt_transform`` hook, a seeded gradient PNG through every
    ``post_process`` hook; ``out/result.json`` records the transformed prompt.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)
    prompt: str = Field(default="", max_length=MAX_TEXT)
    negative: str = Field(default="", max_length=MAX_TEXT)
    seed: int = Field(default=0, ge=0, lt=2**32)
    width: int = Field(default=64, ge=8, le=1024)
    height: int = Field(default=64, ge=8, le=1024)
    plugin_options: dict[str, dict[str, JsonValue]] = Field(default_factory=dict)
    """Per-plugin options, keyed by plugin name (each plugin sees only its own)."""


_KIND_PARAMS: dict[str, type[BaseModel]] = {
    "probe": ProbeParams,
    "echo": EchoParams,
    "plugin_demo": PluginDemoParams,
    "generate": GenSpec,
}


def register_kind(kind: str, params_model: type[BaseModel]) -> None:
    """Register a job kind and the model its ``params`` must validate against (both sides)."""
    if not re.match(r"^[a-z][a-z0-9_]{0,31}$", kind):
        raise ValueError(f"invalid job kind name: {kind!r}")
    _KIND_PARAMS[kind] = params_model


def known_kinds() -> tuple[str, ...]:
    return tuple(sorted(_KIND_PARAMS))


class JobSpec(_Strict):
    """What the host asks the worker to do; written to ``/job/job.json``."""

    protocol: Literal[1] = PROTOCOL_VERSION
    job_id: str = Field(pattern=_JOB_ID_RE)
    nonce: str = Field(pattern=_NONCE_RE)
    """Per-job secret the result line must echo (see the module docstring for its limits)."""
    kind: str
    params: dict[str, JsonValue] = Field(default_factory=dict)
    models: list[ModelRef] = Field(default_factory=list, max_length=MAX_MODEL_FILES)
    plugins: list[PluginRef] = Field(default_factory=list, max_length=64)
    limits: Limits = Field(default_factory=Limits)

    @model_validator(mode="after")
    def _check(self) -> JobSpec:
        model = _KIND_PARAMS.get(self.kind)
        if model is None:
            raise ValueError(f"unknown job kind {self.kind!r} (known: {', '.join(known_kinds())})")
        if len(json.dumps(self.params)) > MAX_PARAMS_BYTES:
            raise ValueError(f"params exceed {MAX_PARAMS_BYTES} bytes")
        model.model_validate(self.params)
        names = [m.name for m in self.models]
        paths = [m.mount_path for m in self.models]
        if len(set(names)) != len(names) or len(set(paths)) != len(paths):
            raise ValueError("model names and mount paths must be unique")
        plugin_names = [p.name for p in self.plugins]
        if len(set(plugin_names)) != len(plugin_names):
            raise ValueError("plugin names must be unique")
        return self

    def typed_params(self) -> BaseModel:
        """`params` parsed with the model registered for `kind`."""
        return _KIND_PARAMS[self.kind].model_validate(self.params)

    def to_json_bytes(self) -> bytes:
        data = self.model_dump_json().encode()
        if len(data) > MAX_SPEC_BYTES:
            raise ValueError(f"job spec exceeds {MAX_SPEC_BYTES} bytes")
        return data

    @classmethod
    def from_json_bytes(cls, data: bytes) -> JobSpec:
        if len(data) > MAX_SPEC_BYTES:
            raise ValueError(f"job spec exceeds {MAX_SPEC_BYTES} bytes")
        return cls.model_validate_json(data)


# ---------------------------------------------------------------------------------------------
# Worker -> host messages


class ReadyMessage(_Strict):
    type: Literal["ready"] = "ready"
    protocol: int = PROTOCOL_VERSION
    worker_version: str = Field(default="", max_length=64)


class ProgressMessage(_Strict):
    type: Literal["progress"] = "progress"
    stage: str = Field(default="", max_length=64)
    fraction: float | None = Field(default=None, ge=0.0, le=1.0)
    step: int | None = Field(default=None, ge=0)
    total: int | None = Field(default=None, ge=0)


class LogMessage(_Strict):
    type: Literal["log"] = "log"
    level: Literal["debug", "info", "warning", "error"] = "info"
    message: str = Field(max_length=MAX_TEXT)


class ResultMessage(_Strict):
    type: Literal["result"] = "result"
    job_id: str = Field(pattern=_JOB_ID_RE)
    nonce: str = Field(pattern=_NONCE_RE)
    outputs: list[str] = Field(default_factory=list, max_length=256)
    data: dict[str, JsonValue] = Field(default_factory=dict)


class OutputMessage(_Strict):
    """Warm workers: one piece of one entry of the job's ``out/`` directory, before the result.

    `name` is the entry as an archive member (``out/<name>``). `entry` says what else than a
    regular file it is (a directory, a symbolic or hard link, a device or fifo: no data); the
    host refuses the job for any such entry, as it does for them in a ``get_archive`` tar.
    A file of `size` bytes comes as consecutive pieces (`offset` = bytes sent before), each
    `OUTPUT_CHUNK_BYTES` long but the last; an empty file is one piece without data.
    """

    type: Literal["output"] = "output"
    job_id: str = Field(pattern=_JOB_ID_RE)
    nonce: str = Field(pattern=_NONCE_RE)
    name: str = Field(min_length=1, max_length=MAX_OUTPUT_NAME)
    entry: Literal["file", "dir", "link", "other"] = "file"
    size: int = Field(default=0, ge=0)
    offset: int = Field(default=0, ge=0)
    data: str = Field(default="", max_length=OUTPUT_CHUNK_B64 + 4)
    """Base64 (standard alphabet, padded) of the piece."""


class ErrorMessage(_Strict):
    type: Literal["error"] = "error"
    code: str = Field(default="error", max_length=64)
    message: str = Field(default="", max_length=MAX_TEXT)
    job_id: str | None = Field(default=None, pattern=_JOB_ID_RE)
    """The job it belongs to (a warm worker serves several); None = the worker itself."""


WorkerMessage = Annotated[
    ReadyMessage | ProgressMessage | LogMessage | ResultMessage | ErrorMessage | OutputMessage,
    Field(discriminator="type"),
]
_MESSAGE_ADAPTER: TypeAdapter[WorkerMessage] = TypeAdapter(WorkerMessage)
_KNOWN_TYPES: Final = frozenset({"ready", "progress", "log", "result", "error", "output"})


def encode_message(message: BaseModel) -> bytes:
    """One protocol line (JSON + newline)."""
    return message.model_dump_json().encode() + b"\n"


def bound_text(text: str, max_len: int = MAX_TEXT) -> str:
    """A worker's text as data the host keeps: at most `max_len` characters.

    Terminal controls stay: the text is data here, and the front ends clean it where they
    show it (``assetmgr.display``), like every other outside string. (Lone surrogates never
    get this far: the message models refuse them.)
    """
    return text[:max_len]


@dataclass
class StreamLimits:
    """Bounds on what the host reads from one worker stream."""

    max_line_bytes: int = 256 * 1024
    max_lines: int = 20_000
    max_total_bytes: int = 32 * 1024 * 1024
    max_output_bytes: int = 0
    """Wire bytes of accepted in-band ``output`` lines (warm workers), counted apart from
    `max_total_bytes`; 0: output lines are not accepted at all (one-shot jobs)."""


@dataclass
class ProtocolReader:
    """Host-side parser of the worker's protocol stream; never raises on bad input.

    Feed raw chunks; get back the messages that were accepted. Anything odd is counted or
    recorded in `violations`; the runner decides what is fatal (`flooded`, `tampered`).
    """

    job_id: str
    nonce: str
    limits: StreamLimits = field(default_factory=StreamLimits)
    ready: ReadyMessage | None = None
    result: ResultMessage | None = None
    errors: list[ErrorMessage] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)
    flooded: bool = False
    tampered: bool = False
    total_bytes: int = 0
    output_bytes: int = 0
    """Wire bytes of the accepted output lines (part of `total_bytes`)."""
    output_lines: int = 0
    lines: int = 0
    oversized_lines: int = 0
    invalid_lines: int = 0
    ignored_lines: int = 0
    _buffer: bytearray = field(default_factory=bytearray, repr=False)
    _discarding: bool = field(default=False, repr=False)

    def feed(self, chunk: bytes) -> list[WorkerMessage]:
        if self.flooded:
            return []
        self.total_bytes += len(chunk)
        if self.total_bytes > self.limits.max_total_bytes + self.limits.max_output_bytes:
            self._flood(f"stream exceeded {self.limits.max_total_bytes} bytes")
            return []
        accepted: list[WorkerMessage] = []
        start = 0
        while True:
            nl = chunk.find(b"\n", start)
            piece = chunk[start:] if nl < 0 else chunk[start:nl]
            if not self._discarding:
                if len(self._buffer) + len(piece) > self.limits.max_line_bytes:
                    self.oversized_lines += 1
                    self._buffer.clear()
                    self._discarding = True
                else:
                    self._buffer += piece
            if nl < 0:
                break
            if self._discarding:
                self._discarding = False
            else:
                line = bytes(self._buffer)
                self._buffer.clear()
                message = self._line(line)
                if message is not None:
                    accepted.append(message)
                if self.flooded:
                    break
            start = nl + 1
        # Everything but accepted output lines counts against max_total_bytes (a line still in
        # the buffer is counted once it is complete).
        if (
            not self.flooded
            and self.total_bytes - self.output_bytes - len(self._buffer)
            > self.limits.max_total_bytes
        ):
            self._flood(f"stream exceeded {self.limits.max_total_bytes} bytes")
            return []
        return accepted

    def finish(self) -> list[WorkerMessage]:
        """Flush a last line that had no newline."""
        if self.flooded or self._discarding or not self._buffer:
            return []
        line = bytes(self._buffer)
        self._buffer.clear()
        message = self._line(line)
        return [message] if message is not None else []

    def _flood(self, why: str) -> None:
        self.flooded = True
        self.violations.append(why)
        self._buffer.clear()

    def _line(self, raw: bytes) -> WorkerMessage | None:
        if not raw.strip():
            return None
        obj: Any = None
        if self.limits.max_output_bytes > 0 and raw.startswith(b'{"type":"output"'):
            obj = self._json(raw)
            output = self._output_line(obj, len(raw) + 1)
            if output is not None or self.flooded:
                return output
        self.lines += 1
        if self.lines > self.limits.max_lines:
            self._flood(f"more than {self.limits.max_lines} protocol lines")
            return None
        if obj is None:
            obj = self._json(raw)
        if obj is None:
            self.invalid_lines += 1
            return None
        if not isinstance(obj, dict) or not isinstance(obj.get("type"), str):
            self.invalid_lines += 1
            return None
        if obj["type"] not in _KNOWN_TYPES:
            self.ignored_lines += 1
            return None
        try:
            message = _MESSAGE_ADAPTER.validate_python(obj)
        except (ValidationError, RecursionError):
            self.invalid_lines += 1
            return None
        return self._accept(message)

    @staticmethod
    def _json(raw: bytes) -> Any:
        try:
            return json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError):
            return None

    def _output_line(self, obj: Any, wire_bytes: int) -> OutputMessage | None:
        """An in-band output piece of this job, counted against the output budget; else None
        (the line then goes through the ordinary path and counts like any other line)."""
        if not isinstance(obj, dict) or obj.get("type") != "output" or self.result is not None:
            return None
        try:
            message = OutputMessage.model_validate(obj)
        except (ValidationError, RecursionError):
            return None
        if message.job_id != self.job_id or not hmac.compare_digest(
            message.nonce.encode(), self.nonce.encode()
        ):
            return None
        self.output_bytes += wire_bytes
        self.output_lines += 1
        if self.output_bytes > self.limits.max_output_bytes:
            self._flood(f"in-band outputs exceeded {self.limits.max_output_bytes} bytes")
            return None
        return message

    def _accept(self, message: WorkerMessage) -> WorkerMessage | None:
        if isinstance(message, OutputMessage):
            # not taken by _output_line: no output budget, another job's nonce, or late
            self.violations.append("output line ignored (not expected, or not this job's)")
            return None
        if isinstance(message, ResultMessage):
            if message.job_id != self.job_id or not hmac.compare_digest(
                message.nonce.encode(), self.nonce.encode()
            ):
                self.violations.append("result line with a wrong job id or nonce ignored")
                return None
            if self.result is not None:
                self.violations.append("a second result line carrying the nonce")
                self.tampered = True
                return None
            self.result = message
            return message
        if isinstance(message, LogMessage):
            message = message.model_copy(update={"message": bound_text(message.message)})
        elif isinstance(message, ErrorMessage):
            message = message.model_copy(
                update={
                    "message": bound_text(message.message),
                    "code": bound_text(message.code, 64),
                }
            )
            self.errors.append(message)
        elif isinstance(message, ProgressMessage):
            message = message.model_copy(update={"stage": bound_text(message.stage, 64)})
        elif isinstance(message, ReadyMessage) and self.ready is None:
            self.ready = message
        return message


__all__ = [
    "JOB_DIR",
    "MAX_PARAMS_BYTES",
    "MAX_SPEC_BYTES",
    "MAX_TIMEOUT_S",
    "MAX_OUTPUT_NAME",
    "MODELS_DIR",
    "OUTPUT_CHUNK_B64",
    "OUTPUT_CHUNK_BYTES",
    "OUTPUT_EXTRA_RE",
    "OUTPUT_PNG_RE",
    "OUTPUT_RESULT_JSON",
    "OUT_DIR",
    "PLUGINS_DIR",
    "PLUGIN_DEPS_DIR",
    "PLUGIN_ENTRY_RE",
    "PLUGIN_HOOKS",
    "PLUGIN_NAME_RE",
    "PLUGIN_VERSION_RE",
    "PROTOCOL_VERSION",
    "READY_MARKER",
    "SPEC_PATH",
    "WORK_DIR",
    "EchoParams",
    "ErrorMessage",
    "JobSpec",
    "Limits",
    "LogMessage",
    "ModelRef",
    "OutputMessage",
    "PluginDemoParams",
    "PluginRef",
    "ProbeCall",
    "ProbeParams",
    "ProgressMessage",
    "ProtocolReader",
    "ReadyMessage",
    "ResultMessage",
    "StreamLimits",
    "WorkerMessage",
    "encode_message",
    "known_kinds",
    "register_kind",
    "bound_text",
]
