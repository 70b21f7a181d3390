"""Strict, pure-Python validation of untrusted ``.safetensors`` files (docs/architecture.md).

Only the header is read; tensor bytes are never touched. The checks follow the safetensors
reference validator and go further where its gaps are known:

* the file holds at least 8 bytes; the u64 little-endian header length ``N`` is at most
  `DEFAULT_MAX_HEADER_BYTES` (16 MiB, see below) and ``8 + N`` fits in the file;
* the header is strict UTF-8, starts with ``{`` and may end only in 0x20 padding;
* the JSON has no duplicate keys at any level, nests at most 3 levels (all a valid header needs),
  has no floats, NaN or Infinity and no integer longer than 20 digits;
* ``__metadata__`` maps strings to strings; tensor names are 1 to 1024 characters, with no
  control, format, surrogate, private-use or unassigned characters;
* each tensor entry is exactly ``{dtype, shape, data_offsets}``: dtype in `DTYPE_BITS`, shape a list
  of at most 8 non-negative integers, ``END - BEGIN`` equal to the bytes the shape needs;
* zero-size tensors are refused outright: no SD checkpoint or LoRA has one, and they are how a
  known validator gap let two entries share one offset;
* sorted by offset, the tensors tile the data buffer from 0 with no gap or overlap, and the last one
  ends exactly at the end of the file (no trailing bytes, so no polyglot files).

Header cap: 16 MiB, not the format's 100 MB. SD checkpoints need a few hundred KB and LoRAs with
large training metadata a few MB; Civitai's AutoV3 hash also stops treating the first 8 bytes as a
header length at 16 MiB, so a bigger header would not hash as a safetensors file there either.
"""

from __future__ import annotations

import json
import os
import re
import struct
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Literal, NoReturn

from assetmgr.errors import StoreError

DEFAULT_MAX_HEADER_BYTES = 16 * 1024 * 1024
MAX_NESTING = 3
MAX_RANK = 8
MAX_NAME_CHARS = 1024
MAX_METADATA_KEYS = 10_000
MAX_INT_DIGITS = 20

DTYPE_BITS: Mapping[str, int] = {
    "BOOL": 8,
    "U8": 8,
    "I8": 8,
    "F8_E4M3": 8,
    "F8_E5M2": 8,
    "U16": 16,
    "I16": 16,
    "F16": 16,
    "BF16": 16,
    "U32": 32,
    "I32": 32,
    "F32": 32,
    "U64": 64,
    "I64": 64,
    "F64": 64,
}
"""Accepted dtypes and their sizes in bits (no sub-byte types)."""

PICKLE_SUFFIXES = frozenset({".ckpt", ".pt", ".pth", ".bin", ".pkl", ".pickle"})
"""Extensions refused by `check_pickle_free`: files loaded by unpickling."""

FileFormat = Literal["safetensors", "pickle", "gguf", "unknown"]

_ENTRY_KEYS = frozenset({"dtype", "shape", "data_offsets"})
_BAD_NAME_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn"})
# Metadata values may hold multi-line text, but no other C0 control and no lone surrogate.
_BAD_VALUE_CHAR = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ud800-\udfff]")
# A JSON string, escapes included; used only to blank strings out before checking brackets.
_JSON_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
# A first object whose brackets balance at most 3 deep (MAX_NESTING); what follows it is left to
# the padding check, as json never parses it. Every branch starts
# and ends on a distinct bracket and the gaps are possessive, so matching is linear and a hostile
# "[[[[..." fails at its fourth bracket.
_GAP = r"[^\[\]{}]*+"
_DEPTH1 = rf"(?:\[{_GAP}\]|\{{{_GAP}\}})"
_DEPTH2 = rf"(?:\[{_GAP}(?:{_DEPTH1}{_GAP})*+\]|\{{{_GAP}(?:{_DEPTH1}{_GAP})*+\}})"
_SHALLOW = re.compile(rf"\{{{_GAP}(?:{_DEPTH2}{_GAP})*+\}}")


class UnsafeFileError(StoreError):
    """A file was refused before use because it is, or may be, unsafe to load."""

    title = "Unsafe file refused"
    hint = "The file was not loaded. Delete it; if it came from Civitai, tell the uploader."


class InvalidSafetensorsError(UnsafeFileError):
    """The file is not a well-formed safetensors file."""

    title = "Invalid safetensors file"
    hint = (
        "The file was not loaded: its safetensors header is malformed or hostile. "
        "Delete it or download it again."
    )


class PickleRefusedError(UnsafeFileError):
    """The file is a pickle checkpoint (or a zip/tar that torch would unpickle)."""

    title = "Pickle checkpoint refused"
    hint = (
        "Pickle files can run code when loaded. Use a .safetensors version of the model, "
        "or convert it once inside the sandbox."
    )


@dataclass(frozen=True, slots=True)
class TensorInfo:
    """One tensor entry of a safetensors header."""

    dtype: str
    shape: tuple[int, ...]
    data_offsets: tuple[int, int]
    """[BEGIN, END) relative to the start of the tensor data (after the header)."""

    @property
    def nbytes(self) -> int:
        return self.data_offsets[1] - self.data_offsets[0]

    @property
    def numel(self) -> int:
        count = 1
        for dim in self.shape:
            count *= dim
        return count


@dataclass(frozen=True, slots=True)
class SafetensorsInfo:
    """What a validated safetensors header says; enough to tell SD1.5, SDXL or a LoRA apart."""

    header_length: int
    """N, the JSON header's length in bytes (padding included)."""
    tensor_count: int
    tensors: Mapping[str, TensorInfo]
    """Tensor name -> entry, in header order."""
    metadata: Mapping[str, str]
    """The ``__metadata__`` map ({} when absent)."""
    total_bytes: int
    """Bytes of tensor data: the file size minus 8 minus N."""
    file_size: int

    @property
    def data_start(self) -> int:
        """Offset in the file where tensor data begins."""
        return 8 + self.header_length

    @property
    def parameter_count(self) -> int:
        return sum(t.numel for t in self.tensors.values())


class _Reject(Exception):
    """Raised inside JSON hooks; turned into InvalidSafetensorsError with the same message."""


def _fail(message: str) -> NoReturn:
    raise InvalidSafetensorsError(message)


def _q(text: str, limit: int = 80) -> str:
    """A name quoted for a one-line message: escaped, and shortened if long."""
    if len(text) > limit:
        return repr(text[:limit]) + "..."
    return repr(text)


def _no_duplicates(pairs: list[tuple[str, object]]) -> dict[str, object]:
    out: dict[str, object] = {}
    for key, value in pairs:
        if key in out:
            raise _Reject(f"duplicate key {_q(key)} in safetensors header")
        out[key] = value
    return out


def _reject_float(text: str) -> NoReturn:
    raise _Reject(f"safetensors header contains a float ({text[:40]}); only integers are allowed")


def _reject_constant(text: str) -> NoReturn:
    raise _Reject(f"safetensors header contains the non-standard constant {text}")


def _bounded_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise _Reject(f"safetensors header has an integer of more than {MAX_INT_DIGITS} digits")
    return int(text)


_DECODER = json.JSONDecoder(
    object_pairs_hook=_no_duplicates,
    parse_float=_reject_float,
    parse_int=_bounded_int,
    parse_constant=_reject_constant,
    strict=True,
)


def _check_nesting(text: str) -> None:
    # json recurses per level; a 16 MiB "[[[[..." must be refused before it is parsed.
    if _SHALLOW.match(_JSON_STRING.sub('""', text)) is None:
        _fail(
            f"safetensors header nests deeper than {MAX_NESTING} levels "
            "or its brackets do not balance"
        )


def _bad_char(text: str) -> str | None:
    if text.isascii() and text.isprintable():  # the usual case, decided in C
        return None
    for ch in text:
        if unicodedata.category(ch) in _BAD_NAME_CATEGORIES:
            return ch
    return None


def _is_int(value: object) -> bool:
    return type(value) is int  # bool is an int subclass and must not pass


def _parse_header(raw: bytes) -> dict[str, object]:
    if not raw.startswith(b"{"):
        _fail("safetensors header does not start with '{'")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        _fail(f"safetensors header is not valid UTF-8 (byte {exc.start} of the header)")
    _check_nesting(text)
    try:
        obj, end = _DECODER.raw_decode(text)
    except _Reject as exc:
        _fail(str(exc))
    except json.JSONDecodeError as exc:
        msg = exc.msg.removesuffix(" at")
        _fail(f"safetensors header is not valid JSON: {msg} at character {exc.pos}")
    except (ValueError, RecursionError) as exc:
        _fail(f"safetensors header is not valid JSON: {str(exc)[:80]}")
    tail = text[end:]
    if tail.strip(" "):
        at = len(raw) - len(tail.lstrip(" ").encode("utf-8"))
        _fail(f"safetensors header has bytes other than space padding after the JSON (byte {at})")
    if not isinstance(obj, dict):  # cannot happen after '{', but keeps the types honest
        _fail("safetensors header is not a JSON object")
    return obj


def _check_metadata(value: object) -> dict[str, str]:
    if not isinstance(value, dict):
        _fail(f"__metadata__ must map strings to strings, not {type(value).__name__}")
    if len(value) > MAX_METADATA_KEYS:
        _fail(f"__metadata__ has {len(value)} keys; at most {MAX_METADATA_KEYS} are allowed")
    out: dict[str, str] = {}
    for key, item in value.items():
        if len(key) > MAX_NAME_CHARS:
            _fail(f"__metadata__ key {_q(key)} is longer than {MAX_NAME_CHARS} characters")
        if (ch := _bad_char(key)) is not None:
            _fail(f"__metadata__ key {_q(key)} contains the character U+{ord(ch):04X}")
        if not isinstance(item, str):
            _fail(f"__metadata__ value of {_q(key)} is {type(item).__name__}, not a string")
        if (m := _BAD_VALUE_CHAR.search(item)) is not None:
            _fail(f"__metadata__ value of {_q(key)} contains the character U+{ord(m[0]):04X}")
        out[key] = item
    return out


def _check_entry(name: str, entry: object) -> TensorInfo:
    if not name:
        _fail("a tensor has an empty name")
    if len(name) > MAX_NAME_CHARS:
        _fail(f"tensor name {_q(name)} is longer than {MAX_NAME_CHARS} characters")
    if (ch := _bad_char(name)) is not None:
        _fail(f"tensor name {_q(name)} contains the character U+{ord(ch):04X}")
    t = _q(name)
    if not isinstance(entry, dict):
        _fail(f"tensor {t} entry is {type(entry).__name__}, not an object")
    if set(entry) != _ENTRY_KEYS:
        got = ", ".join(sorted(_q(k, 30) for k in entry))
        _fail(f"tensor {t} has keys [{got}]; expected exactly dtype, shape, data_offsets")
    dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    if not isinstance(dtype, str) or dtype not in DTYPE_BITS:
        shown = _q(dtype, 20) if isinstance(dtype, str) else type(dtype).__name__
        _fail(f"tensor {t} has unsupported dtype {shown}")
    if not isinstance(shape, list) or not all(_is_int(d) and d >= 0 for d in shape):
        _fail(f"tensor {t} shape must be a list of non-negative integers")
    if len(shape) > MAX_RANK:
        _fail(f"tensor {t} has {len(shape)} dimensions; at most {MAX_RANK} are allowed")
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(_is_int(o) and o >= 0 for o in offsets)
    ):
        _fail(f"tensor {t} data_offsets must be two non-negative integers [BEGIN, END]")
    begin, end = offsets
    if end < begin:
        _fail(f"tensor {t} data_offsets [{begin}, {end}] end before they begin")
    info = TensorInfo(dtype, tuple(shape), (begin, end))
    nbytes = info.numel * DTYPE_BITS[dtype] // 8
    if nbytes == 0:
        _fail(f"tensor {t} has zero size (shape {list(shape)}); zero-size tensors are refused")
    if end - begin != nbytes:
        _fail(
            f"tensor {t} data_offsets [{begin}, {end}] do not match shape {list(shape)} "
            f"{dtype} ({nbytes} bytes)"
        )
    return info


def _check_layout(tensors: dict[str, TensorInfo], data_len: int) -> None:
    expected = 0
    previous: tuple[str, TensorInfo] | None = None
    for name, info in sorted(tensors.items(), key=lambda kv: (kv[1].data_offsets, kv[0])):
        begin, end = info.data_offsets
        if begin > expected and previous is None:
            _fail(f"tensor {_q(name)} starts at {begin} but the first tensor must start at 0")
        if begin > expected and previous is not None:
            _fail(
                f"tensor {_q(name)} starts at {begin} but the previous tensor "
                f"{_q(previous[0])} ends at {expected} (a gap)"
            )
        if begin < expected and previous is not None:
            p_begin, p_end = previous[1].data_offsets
            _fail(
                f"tensor {_q(name)} data_offsets [{begin}, {end}] overlap tensor "
                f"{_q(previous[0])} [{p_begin}, {p_end}]"
            )
        expected = end
        previous = (name, info)
    if expected > data_len:
        _fail(f"tensor data runs to byte {expected} but the file holds {data_len} after the header")
    if expected < data_len:
        _fail(
            f"the file has {data_len - expected} bytes after the last tensor "
            f"(tensor data ends at {expected} of {data_len})"
        )


def _read_exact(f: BinaryIO, n: int) -> bytes:
    chunks: list[bytes] = []
    while n > 0:
        chunk = f.read(n)
        if not chunk:
            break
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


def _validate_stream(f: BinaryIO, file_size: int, max_header_bytes: int) -> SafetensorsInfo:
    if file_size < 8:
        _fail(f"file is {file_size} bytes, too small for a safetensors header (needs 8 or more)")
    first = _read_exact(f, 8)
    if len(first) < 8:
        _fail("file ended while reading the safetensors header length")
    (n,) = struct.unpack("<Q", first)
    if n > max_header_bytes:
        _fail(f"safetensors header length {n} exceeds the cap of {max_header_bytes} bytes")
    if 8 + n > file_size:
        _fail(f"safetensors header length {n} runs past the end of the {file_size}-byte file")
    raw = _read_exact(f, n)
    if len(raw) < n:
        _fail("file ended while reading the safetensors header")
    header = _parse_header(raw)
    metadata: dict[str, str] = {}
    tensors: dict[str, TensorInfo] = {}
    for name, entry in header.items():
        if name == "__metadata__":
            metadata = _check_metadata(entry)
        else:
            tensors[name] = _check_entry(name, entry)
    data_len = file_size - 8 - n
    _check_layout(tensors, data_len)
    return SafetensorsInfo(
        header_length=n,
        tensor_count=len(tensors),
        tensors=tensors,
        metadata=metadata,
        total_bytes=data_len,
        file_size=file_size,
    )


def validate_safetensors(
    source: str | os.PathLike[str] | BinaryIO,
    *,
    max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES,
) -> SafetensorsInfo:
    """Validate a safetensors file (a path or a seekable binary file) from its header alone.

    Raises:
        InvalidSafetensorsError: with a one-line message naming the first problem found.
        OSError: the file cannot be read.
    """
    if isinstance(source, (str, os.PathLike)):
        with open(source, "rb") as f:
            return _validate_stream(f, os.fstat(f.fileno()).st_size, max_header_bytes)
    size = source.seek(0, os.SEEK_END)
    source.seek(0)
    return _validate_stream(source, size, max_header_bytes)


def detect_format(path: str | os.PathLike[str]) -> FileFormat:
    """Classify a model file by its first bytes; never parses or unpickles anything.

    ``"pickle"`` covers raw pickles (protocol 2+) and the zip and tar containers ``torch.load``
    opens. ``"safetensors"`` only means the first bytes look right; `validate_safetensors` decides.
    """
    with open(path, "rb") as f:
        head = f.read(512)
        size = os.fstat(f.fileno()).st_size
    if len(head) >= 10:
        (n,) = struct.unpack("<Q", head[:8])
        if 2 <= n <= DEFAULT_MAX_HEADER_BYTES and 8 + n <= size and head[8:9] == b"{":
            return "safetensors"
    if head.startswith(b"GGUF"):
        return "gguf"
    if head[:4] in (b"PK\x03\x04", b"PK\x05\x06") or head[257:262] == b"ustar":
        return "pickle"
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:
        return "pickle"
    return "unknown"


def check_pickle_free(path: str | os.PathLike[str]) -> FileFormat:
    """Refuse pickle checkpoints by extension or magic bytes; returns the detected format.

    Raises:
        PickleRefusedError: a ``.ckpt/.pt/.pth/.bin/.pkl/.pickle`` name, or pickle, zip or tar
            magic bytes.
    """
    name = Path(path).name
    suffix = Path(path).suffix.lower()
    if suffix in PICKLE_SUFFIXES:
        raise PickleRefusedError(f"{name}: {suffix} files are pickle checkpoints and are refused")
    kind = detect_format(path)
    if kind == "pickle":
        raise PickleRefusedError(f"{name} starts with pickle, zip or tar magic bytes; refused")
    return kind


__all__ = [
    "DEFAULT_MAX_HEADER_BYTES",
    "DTYPE_BITS",
    "FileFormat",
    "InvalidSafetensorsError",
    "PICKLE_SUFFIXES",
    "PickleRefusedError",
    "SafetensorsInfo",
    "TensorInfo",
    "UnsafeFileError",
    "check_pickle_free",
    "detect_format",
    "validate_safetensors",
]
