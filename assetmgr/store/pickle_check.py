"""Recognise pickle checkpoints (``.ckpt/.pt/.pth/.bin``) from their bytes, never unpickling.

`import --allow-pickle` stores such files for the sandbox; what it stores must really be one:

* a raw pickle stream (what ``torch.save`` wrote before 1.6, or ``pickle.dump``): a PROTO
  opcode (protocol 2 to 5) first, then well-formed opcodes up to a STOP that leaves exactly
  one object, checked with `pickletools.dis`, which decodes opcodes, tracks the stack and the
  memo, and runs nothing;
* a torch zip archive (``torch.save`` since 1.6): a zip whose central directory has one
  ``<name>/data.pkl`` member, itself such a pickle stream.

Reads are bounded: at most `SNIFF_BYTES` of a pickle stream (a well-formed prefix that long
or an argument longer than that which still fits in the file, counts as a pickle) and a zip
central directory of at most `MAX_ZIP_DIRECTORY_BYTES`, checked before `zipfile` reads it.
"""

from __future__ import annotations

import os
import pickletools
import re
import struct
import zipfile
from typing import BinaryIO, Literal

SNIFF_BYTES = 16 * 1024 * 1024
SNIFF_READS = 200_000
"""Reads (about one per opcode and argument) after which a well-formed stream counts."""
MAX_ZIP_DIRECTORY_BYTES = 64 * 1024 * 1024
_MAX_TEXT_LINE = 64 * 1024
_TORCH_DATA_PKL = re.compile(r"^[^/]+/data\.pkl$")
_EOCD = b"PK\x05\x06"
_ZIP64_LOCATOR = b"PK\x06\x07"
_ZIP64_EOCD = b"PK\x06\x06"
_EOCD_SEARCH = 22 + 0xFFFF  # the record plus the longest comment

PickleKind = Literal["pickle", "torch-zip"]


class _OverBudget(Exception):
    """The stream was well-formed for as long as it was read."""


class _BoundedStream:
    """The file as `pickletools.dis` reads it, within `SNIFF_BYTES` and `SNIFF_READS`."""

    def __init__(self, f: BinaryIO, size: int) -> None:
        self._f = f
        self._size = size
        self._used = 0
        self._calls = 0

    def read(self, n: int = -1) -> bytes:
        if n < 0:
            return b""
        position = self._f.tell()
        if position + n > self._size:
            return self._f.read(max(self._size - position, 0))  # short: dis calls it truncated
        self._calls += 1
        if self._used + n > SNIFF_BYTES or self._calls > SNIFF_READS:
            raise _OverBudget
        self._used += n
        return self._f.read(n)

    def readline(self) -> bytes:
        line = self._f.readline(_MAX_TEXT_LINE)
        self._used += len(line)
        if self._used > SNIFF_BYTES:
            raise _OverBudget
        return line


class _Discard:
    def write(self, text: str) -> int:
        return len(text)


def _is_pickle_stream(f: BinaryIO, size: int) -> bool:
    f.seek(0)
    try:
        # dis checks the mark stack, the memo and that STOP leaves exactly one object.
        pickletools.dis(_BoundedStream(f, size), out=_Discard())  # type: ignore[arg-type]
    except _OverBudget:
        return True
    except (ValueError, OverflowError, struct.error):  # UnicodeDecodeError is a ValueError
        return False
    return True


def _zip_directory_size(f: BinaryIO, size: int) -> int | None:
    """The central directory's size from the end records, or None when there is none."""
    start = max(size - _EOCD_SEARCH, 0)
    f.seek(start)
    tail = f.read(size - start)
    at = tail.rfind(_EOCD)
    if at < 0 or len(tail) - at < 22:
        return None
    (directory_size,) = struct.unpack_from("<I", tail, at + 12)
    if directory_size != 0xFFFFFFFF:
        return int(directory_size)
    locator = at - 20
    if locator < 0 or tail[locator : locator + 4] != _ZIP64_LOCATOR:
        return None
    (record_offset,) = struct.unpack_from("<Q", tail, locator + 8)
    if record_offset + 56 > size:
        return None
    f.seek(record_offset)
    record = f.read(56)
    if len(record) < 56 or record[:4] != _ZIP64_EOCD:
        return None
    (directory_size,) = struct.unpack_from("<Q", record, 40)
    return int(directory_size)


def _is_torch_zip(f: BinaryIO, size: int) -> bool:
    directory_size = _zip_directory_size(f, size)
    if directory_size is None or directory_size > MAX_ZIP_DIRECTORY_BYTES:
        return False
    f.seek(0)
    try:
        with zipfile.ZipFile(f) as archive:
            members = [i for i in archive.infolist() if _TORCH_DATA_PKL.match(i.filename)]
            if len(members) != 1:
                return False
            with archive.open(members[0]) as member:
                head = member.read(2)
                if len(head) < 2 or head[0] != 0x80 or not 2 <= head[1] <= 5:
                    return False
                return _is_pickle_stream(member, members[0].file_size)  # type: ignore[arg-type]
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError):
        return False
    except NotImplementedError:  # a compression method zipfile lacks: not torch's
        return False


def sniff_pickle(source: BinaryIO) -> PickleKind | None:
    """``"pickle"`` or ``"torch-zip"`` when the bytes are one (see the module docstring)."""
    size = source.seek(0, os.SEEK_END)
    source.seek(0)
    head = source.read(4)
    if head == b"PK\x03\x04":
        return "torch-zip" if _is_torch_zip(source, size) else None
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:
        return "pickle" if _is_pickle_stream(source, size) else None
    return None


__all__ = ["MAX_ZIP_DIRECTORY_BYTES", "PickleKind", "SNIFF_BYTES", "sniff_pickle"]
