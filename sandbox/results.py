"""Host side: turn the worker's output archive into trusted files, or refuse it.

Everything in the archive is hostile. We read at most `OutputLimits.max_archive_bytes` from the
engine, parse it as an *uncompressed* tar, and accept only:

- the directory ``out`` itself,
- regular files named ``out/<name>.png`` (see `sandbox.protocol.OUTPUT_PNG_RE`), each re-decoded
  with Pillow under a pixel cap (checked on the header, before any pixel is decoded) and
  re-encoded from raw pixels, so no chunk, metadata or trailing bytes of the original survive,
- ``out/result.json``: a JSON object, size-capped, re-serialised,
- side outputs ``out/<name>.txt`` (strict UTF-8 without control characters other than tab and
  newline, re-encoded) and ``out/<name>.json`` (any JSON value, re-serialised); plugins write
  these through their ``extra_outputs`` hook (see `sandbox.protocol.OUTPUT_EXTRA_RE`).

Links, devices, traversal, absolute names, duplicates, unknown names and oversize members are
rejected; `tarfile.data_filter` (PEP 706) runs on every member as a second opinion. Any
rejection rejects the whole archive and nothing is left in the destination.

Warm workers send their outputs in-band instead (`sandbox.protocol.OutputMessage`);
`InlineOutputs` checks those pieces and writes the archive *itself* (the host never parses a tar
the worker wrote), which then goes through `extract_outputs` like an engine's archive.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import os
import shutil
import tarfile
import tempfile
import unicodedata
import uuid
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from PIL import Image, PngImagePlugin

from sandbox.protocol import (
    OUTPUT_CHUNK_BYTES,
    OUTPUT_EXTRA_RE,
    OUTPUT_PNG_RE,
    OUTPUT_RESULT_JSON,
    OutputMessage,
)
from sandbox.protocol.infotext import MAX_PARAMETERS_CHARS

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
MiB = 1024 * 1024


@dataclass(frozen=True)
class OutputLimits:
    max_archive_bytes: int = 300 * MiB
    max_members: int = 64
    max_file_bytes: int = 64 * MiB
    max_pixels: int = 4096 * 4096
    max_side: int = 16384
    max_json_bytes: int = 1 * MiB


@dataclass
class Outputs:
    images: list[Path] = field(default_factory=list)
    result_json: dict[str, Any] | None = None
    result_json_path: Path | None = None
    files: list[Path] = field(default_factory=list)
    """Accepted side outputs (``.txt`` and ``.json`` other than result.json)."""
    rejected: list[tuple[str, str]] = field(default_factory=list)


class ArchiveTooLargeError(ValueError):
    pass


def spool_bounded(chunks: Iterable[bytes], max_bytes: int) -> IO[bytes]:
    """Copy a chunk stream into a temp file, refusing more than `max_bytes`."""
    spool = tempfile.SpooledTemporaryFile(max_size=8 * MiB)
    total = 0
    try:
        for chunk in chunks:
            total += len(chunk)
            if total > max_bytes:
                raise ArchiveTooLargeError(f"output archive exceeds {max_bytes} bytes")
            spool.write(chunk)
    except BaseException:
        spool.close()
        raise
    spool.seek(0)
    return spool


class InlineOutputError(ValueError):
    """The worker's in-band output pieces break the protocol (order, offsets, sizes, base64)."""


class HostileInlineOutput(ValueError):
    """An in-band entry the archive check would reject (name, type, size, count)."""

    def __init__(self, name: str, why: str) -> None:
        super().__init__(f"{name}: {why}")
        self.rejected = [(name, why)]


_ENTRY_PROBLEMS = {
    "dir": "unexpected directory",
    "link": "links are not allowed",
    "other": "not a regular file",
}


class InlineOutputs:
    """Host side of a warm worker's in-band outputs: pieces in, a host-written tar out.

    `add` takes each accepted `OutputMessage` in order and raises `InlineOutputError` on a
    protocol break, `HostileInlineOutput` on the first entry `extract_outputs` would refuse
    (checked early, so a hostile job stops at its first bad piece), and `ArchiveTooLargeError`
    past `OutputLimits.max_archive_bytes`. Files must come whole, one after another, each
    piece `OUTPUT_CHUNK_BYTES` long but the last. `archive` returns the finished tar (spooled
    like `spool_bounded`: in memory up to 8 MiB, then a temp file) for `extract_outputs`.
    """

    def __init__(self, limits: OutputLimits | None = None) -> None:
        self.limits = limits or OutputLimits()
        self._spool: IO[bytes] = tempfile.SpooledTemporaryFile(max_size=8 * MiB)
        self._names: set[str] = set()
        self._current: str | None = None
        self._size = 0
        self._received = 0
        self.total_bytes = 0
        out = tarfile.TarInfo("out")
        out.type = tarfile.DIRTYPE
        out.mode = 0o700
        self._write_header(out)

    def __enter__(self) -> InlineOutputs:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._spool.close()

    def _write_header(self, info: tarfile.TarInfo) -> None:
        self._spool.write(info.tobuf(tarfile.PAX_FORMAT, "utf-8", "strict"))

    def _end_file(self) -> None:
        if self._current is not None:
            if self._received != self._size:
                raise InlineOutputError(
                    f"{self._current}: {self._received} of {self._size} bytes arrived"
                )
            self._spool.write(b"\0" * (-self._size % tarfile.BLOCKSIZE))
            self._current = None

    def add(self, message: OutputMessage) -> None:
        name = message.name
        if name == self._current:
            if message.entry != "file" or message.size != self._size:
                raise InlineOutputError(f"{name}: pieces disagree on the entry")
            if message.offset != self._received:
                raise InlineOutputError(f"{name}: piece at {message.offset}, {self._received} sent")
            if self._received % OUTPUT_CHUNK_BYTES or not self._received:
                raise InlineOutputError(f"{name}: a piece after a short one")
            self._data(message)
            return
        self._end_file()
        if name in self._names:
            raise HostileInlineOutput(name, "duplicate member")
        self._names.add(name)
        if len(self._names) + 1 > self.limits.max_members:  # + the out/ directory
            raise HostileInlineOutput("<archive>", f"more than {self.limits.max_members} members")
        if message.entry != "file":
            raise HostileInlineOutput(name, _ENTRY_PROBLEMS[message.entry])
        if name != OUTPUT_RESULT_JSON and not (
            OUTPUT_PNG_RE.match(name) or OUTPUT_EXTRA_RE.match(name)
        ):
            raise HostileInlineOutput(name, "name not in the output allowlist")
        if message.size > self.limits.max_file_bytes:
            raise HostileInlineOutput(name, f"larger than {self.limits.max_file_bytes} bytes")
        if message.offset != 0:
            raise InlineOutputError(f"{name}: first piece at offset {message.offset}")
        self.total_bytes += message.size
        if self.total_bytes > self.limits.max_archive_bytes:
            raise ArchiveTooLargeError(
                f"output archive exceeds {self.limits.max_archive_bytes} bytes"
            )
        info = tarfile.TarInfo(name)
        info.size = message.size
        info.mode = 0o600
        self._write_header(info)
        self._current, self._size, self._received = name, message.size, 0
        self._data(message)

    def _data(self, message: OutputMessage) -> None:
        try:
            data = base64.b64decode(message.data, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise InlineOutputError(f"{message.name}: bad base64 ({exc})") from exc
        if self._received + len(data) > self._size:
            raise InlineOutputError(f"{message.name}: more data than its size")
        if len(data) > OUTPUT_CHUNK_BYTES:
            raise InlineOutputError(f"{message.name}: a piece over {OUTPUT_CHUNK_BYTES} bytes")
        if not data and self._size:
            raise InlineOutputError(f"{message.name}: an empty piece")
        self._spool.write(data)
        self._received += len(data)
        if self._received == self._size:
            self._end_file()

    def archive(self) -> IO[bytes]:
        """The finished tar, positioned at its start (the caller closes it)."""
        self._end_file()
        self._spool.write(b"\0" * (2 * tarfile.BLOCKSIZE))
        self._spool.seek(0)
        return self._spool


def _reencode_png(data: bytes, limits: OutputLimits) -> bytes:
    if not data.startswith(_PNG_SIGNATURE):
        raise ValueError("not a PNG file")
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with Image.open(io.BytesIO(data), formats=["PNG"]) as im:
            width, height = im.size
            if width <= 0 or height <= 0 or width > limits.max_side or height > limits.max_side:
                raise ValueError(f"bad image size {width}x{height}")
            if width * height > limits.max_pixels:
                raise ValueError(f"{width}x{height} exceeds {limits.max_pixels} pixels")
            im.load()
            mode = im.mode if im.mode in ("RGB", "RGBA", "L", "LA") else "RGBA"
            pixels = im.convert(mode) if mode != im.mode else im
            clean = Image.frombytes(mode, pixels.size, pixels.tobytes())
            parameters = _parameters_text(im)
    out = io.BytesIO()
    info = None
    if parameters is not None:
        # Generation metadata (A1111's "parameters" chunk) is the one text chunk kept;
        # everything else in the container's PNG is dropped with the re-encode.
        info = PngImagePlugin.PngInfo()
        info.add_text("parameters", parameters)
    clean.save(out, format="PNG", optimize=False, pnginfo=info)
    return out.getvalue()


def _parameters_text(im: Image.Image) -> str | None:
    """The ``parameters`` text chunk, if present, bounded and without control characters."""
    text = getattr(im, "text", {}).get("parameters")
    if not isinstance(text, str) or not text:
        return None
    text = text[:MAX_PARAMETERS_CHARS]
    return "".join(ch for ch in text if ch in "\n\t" or unicodedata.category(ch)[0] != "C")


def _parse_json(data: bytes) -> Any:
    def no_constants(name: str) -> Any:
        raise ValueError(f"non-standard JSON constant {name}")

    return json.loads(data.decode("utf-8"), parse_constant=no_constants)


def _parse_result_json(data: bytes) -> dict[str, Any]:
    obj = _parse_json(data)
    if not isinstance(obj, dict):
        raise ValueError("result.json is not a JSON object")
    return obj


_TEXT_CONTROLS_OK = frozenset("\t\n")


def _clean_text(data: bytes) -> bytes:
    """Strict UTF-8 with no control or format characters (tab and newline allowed)."""
    text = data.decode("utf-8").replace("\r\n", "\n")
    for ch in text:
        if ch not in _TEXT_CONTROLS_OK and unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Co"):
            raise ValueError(f"control character U+{ord(ch):04X} in a text output")
    return text.encode("utf-8")


def _member_problem(member: tarfile.TarInfo, staging: Path, seen: set[str]) -> str | None:
    name = member.name.rstrip("/")
    try:
        tarfile.data_filter(member, str(staging))
    except tarfile.FilterError as exc:
        return f"{type(exc).__name__}: {exc}"
    if member.issym() or member.islnk():
        return "links are not allowed"
    if name in seen:
        return "duplicate member"
    if member.isdir():
        return None if name == "out" else "unexpected directory"
    if not member.isfile():
        return "not a regular file"
    if name != OUTPUT_RESULT_JSON and not (
        OUTPUT_PNG_RE.match(name) or OUTPUT_EXTRA_RE.match(name)
    ):
        return "name not in the output allowlist"
    return None


def extract_outputs(archive: IO[bytes], dest: Path, limits: OutputLimits | None = None) -> Outputs:
    """Validate the archive read from ``/job/out`` and write clean copies into `dest`.

    Returns the accepted files, or an `Outputs` whose `rejected` lists (member, reason); in that
    case nothing is written to `dest`.
    """
    limits = limits or OutputLimits()
    dest.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".sandbox-out-", dir=dest))
    outputs = Outputs()
    try:
        try:
            tar = tarfile.open(fileobj=archive, mode="r:")  # plain tar only: no decompression
        except tarfile.TarError as exc:
            outputs.rejected.append(("<archive>", f"not a tar archive: {exc}"))
            return outputs
        with tar:
            kept = _stage_members(tar, staging, limits, outputs)
        if outputs.rejected:
            outputs.result_json = None
            return outputs
        _publish(kept, dest, outputs)
        return outputs
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _stage_members(
    tar: tarfile.TarFile, staging: Path, limits: OutputLimits, outputs: Outputs
) -> list[tuple[Path, str]]:
    """Check every member and write a clean copy of each accepted file into `staging`.

    Problems go to ``outputs.rejected``; returns (staged file, final base name) pairs.
    """
    kept: list[tuple[Path, str]] = []
    seen: set[str] = set()
    total = 0
    count = 0
    while True:
        try:
            member = tar.next()
        except tarfile.TarError as exc:
            outputs.rejected.append(("<archive>", f"corrupt archive: {exc}"))
            break
        if member is None:
            break
        count += 1
        if count > limits.max_members:
            outputs.rejected.append(("<archive>", f"more than {limits.max_members} members"))
            break
        name = member.name.rstrip("/")
        problem = _member_problem(member, staging, seen)
        seen.add(name)
        if problem is None and member.isfile():
            total += member.size
            problem = _size_problem(member.size, total, limits)
        if problem is not None:
            outputs.rejected.append((name, problem))
            continue
        if member.isdir():
            continue
        staged = _stage_file(tar, member, name, staging, limits, outputs)
        if staged is not None:
            kept.append(staged)
    return kept


def _size_problem(size: int, total: int, limits: OutputLimits) -> str | None:
    if size > limits.max_file_bytes:
        return f"larger than {limits.max_file_bytes} bytes"
    if total > limits.max_archive_bytes:
        return "outputs too large in total"
    return None


def _stage_file(
    tar: tarfile.TarFile,
    member: tarfile.TarInfo,
    name: str,
    staging: Path,
    limits: OutputLimits,
    outputs: Outputs,
) -> tuple[Path, str] | None:
    """Read one accepted member, clean it and stage it; a failure is a rejection (None)."""
    fileobj = tar.extractfile(member)
    if fileobj is None:
        outputs.rejected.append((name, "unreadable member"))
        return None
    data = fileobj.read(limits.max_file_bytes + 1)
    try:
        clean = _clean_output(name, data, limits, outputs)
    except Exception as exc:  # any decoder failure is a rejection
        outputs.rejected.append((name, f"{type(exc).__name__}: {exc}"))
        return None
    base = name.split("/", 1)[1]
    tmp = staging / f"{uuid.uuid4().hex}.tmp"
    tmp.write_bytes(clean)
    return tmp, base


def _clean_output(name: str, data: bytes, limits: OutputLimits, outputs: Outputs) -> bytes:
    """The clean bytes to keep for one output file (raises on anything not acceptable)."""
    if name == OUTPUT_RESULT_JSON:
        _check_text_size(data, limits)
        parsed = _parse_result_json(data)
        clean = json.dumps(parsed, ensure_ascii=True, sort_keys=True).encode()
        outputs.result_json = parsed
        return clean
    if name.endswith(".json"):
        _check_text_size(data, limits)
        return json.dumps(_parse_json(data), ensure_ascii=True, sort_keys=True).encode()
    if name.endswith(".txt"):
        _check_text_size(data, limits)
        return _clean_text(data)
    return _reencode_png(data, limits)


def _check_text_size(data: bytes, limits: OutputLimits) -> None:
    if len(data) > limits.max_json_bytes:
        raise ValueError(f"larger than {limits.max_json_bytes} bytes")


def _publish(kept: list[tuple[Path, str]], dest: Path, outputs: Outputs) -> None:
    """Move the staged files into `dest` and list them in `outputs`."""
    for tmp, base in kept:
        final = dest / base
        os.replace(tmp, final)
        if base == OUTPUT_RESULT_JSON.split("/", 1)[1]:
            outputs.result_json_path = final
        elif base.endswith(".png"):
            outputs.images.append(final)
        else:
            outputs.files.append(final)
    outputs.images.sort()
    outputs.files.sort()


__all__ = [
    "ArchiveTooLargeError",
    "HostileInlineOutput",
    "InlineOutputError",
    "InlineOutputs",
    "OutputLimits",
    "Outputs",
    "extract_outputs",
    "spool_bounded",
]
