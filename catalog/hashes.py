"""File hashing for the host: streaming SHA-256 of a file, and Civitai's six hash forms.

Civitai's forms (its scanner; all upper-case hex):

* SHA256: SHA-256 of the whole file; AutoV2: its first 10 hex digits.
* AutoV1: SHA-256 of the 64 KiB at offset 1 MiB, first 8 hex digits; absent for files < 2 MiB.
* AutoV3: SHA-256 of the bytes after the safetensors header, first 12 hex digits. The first 8
  bytes are a u64 little-endian length ``n``; hashing starts at ``8 + n``, or at 8 when
  ``n >= 16 MiB``. Files shorter than 8 bytes (and headers past the end) hash the empty input.
* CRC32: CRC-32 (IEEE, as zlib) of the whole file, the 32-bit value's bytes in little-endian order.
* BLAKE3: BLAKE3 (32-byte output) of the whole file.

Each form is a "lane" fed the byte stream in order, so a caller can feed them from one read
(or from several threads, one lane per thread at a time). Standard library only; BLAKE3 needs
the optional ``blake3`` package.
"""

from __future__ import annotations

import hashlib
import os
import struct
import zlib
from collections.abc import Callable
from typing import Any, Protocol

_blake3: Any
try:
    import blake3 as _blake3
except ImportError:  # pragma: no cover - an optional dependency of this module
    _blake3 = None

ONE_MIB = 1 << 20
CHUNK_SIZE = ONE_MIB
"""Bytes per read of the streaming helpers."""
AUTOV1_OFFSET = ONE_MIB
AUTOV1_LENGTH = 0x10000
AUTOV1_MIN_SIZE = 2 * ONE_MIB
AUTOV3_MAX_HEADER = 16 * ONE_MIB

Crc32Fn = Callable[[bytes | memoryview, int], int]
FileRef = str | os.PathLike[str] | int
"""A path, or an open file descriptor (read with pread: its offset does not move)."""


def sha256_file(
    file: FileRef,
    *,
    chunk_size: int = CHUNK_SIZE,
    on_chunk: Callable[[memoryview], object] | None = None,
) -> str:
    """Upper-case hex SHA-256 of a file's bytes from start to end; `on_chunk` sees each piece
    (to copy it while it is hashed, say)."""
    digest = hashlib.sha256()
    fd = file if isinstance(file, int) else os.open(file, os.O_RDONLY | os.O_CLOEXEC)
    try:
        buffer = bytearray(chunk_size)
        view = memoryview(buffer)
        offset = 0
        while got := os.preadv(fd, [buffer], offset):
            piece = view[:got]
            digest.update(piece)
            if on_chunk is not None:
                on_chunk(piece)
            offset += got
    finally:
        if not isinstance(file, int):
            os.close(fd)
    return digest.hexdigest().upper()


class Lane(Protocol):
    """One hash form fed the byte stream in order."""

    def feed(self, data: memoryview) -> None: ...


class Sha256Lane:
    def __init__(self) -> None:
        self.h = hashlib.sha256()

    def feed(self, data: memoryview) -> None:
        self.h.update(data)

    def hex(self) -> str:
        return self.h.hexdigest().upper()


class Blake3Lane:
    def __init__(self) -> None:
        if _blake3 is None:
            raise RuntimeError("BLAKE3 needs the blake3 package")
        self.h: Any = _blake3.blake3()

    def feed(self, data: memoryview) -> None:
        self.h.update(data)

    def hex(self) -> str:
        return str(self.h.hexdigest()).upper()


class Crc32Lane:
    """CRC-32 with `crc` (zlib's, or an accelerated one with the same result)."""

    def __init__(self, crc: Crc32Fn = zlib.crc32) -> None:
        self.crc = crc
        self.value = 0

    def feed(self, data: memoryview) -> None:
        self.value = self.crc(data, self.value)

    def hex(self) -> str:
        return struct.pack("<I", self.value & 0xFFFFFFFF).hex().upper()


class AutoV1Lane:
    """Keeps the 64 KiB window at 1 MiB."""

    def __init__(self) -> None:
        self.pos = 0
        self.window = bytearray()

    def feed(self, data: memoryview) -> None:
        start, end = self.pos, self.pos + len(data)
        self.pos = end
        lo, hi = max(start, AUTOV1_OFFSET), min(end, AUTOV1_OFFSET + AUTOV1_LENGTH)
        if lo < hi:
            self.window += data[lo - start : hi - start]

    def hex(self, size: int) -> str | None:
        """AutoV1 of a file of `size` bytes; None below `AUTOV1_MIN_SIZE`."""
        if size < AUTOV1_MIN_SIZE:
            return None
        return hashlib.sha256(bytes(self.window)).hexdigest()[:8].upper()


class AutoV3Lane:
    """SHA-256 of everything after the header whose length the first 8 bytes give."""

    def __init__(self) -> None:
        self.pos = 0
        self.head = bytearray()
        self.skip_to: int | None = None
        self.h = hashlib.sha256()

    def feed(self, data: memoryview) -> None:
        start = self.pos
        self.pos += len(data)
        if self.skip_to is None:
            self.head += data[: 8 - len(self.head)]
            if len(self.head) < 8:
                return
            (n,) = struct.unpack("<Q", self.head)
            self.skip_to = 8 + n if n < AUTOV3_MAX_HEADER else 8
        lo = self.skip_to - start
        if lo <= 0:
            self.h.update(data)
        elif lo < len(data):
            self.h.update(data[lo:])

    def hex(self) -> str:
        return self.h.hexdigest()[:12].upper()


def autov2(sha256_hex: str) -> str:
    """AutoV2 from a file's SHA256."""
    return sha256_hex[:10].upper()


__all__ = [
    "AUTOV1_LENGTH",
    "AUTOV1_MIN_SIZE",
    "AUTOV1_OFFSET",
    "AUTOV3_MAX_HEADER",
    "CHUNK_SIZE",
    "ONE_MIB",
    "AutoV1Lane",
    "AutoV3Lane",
    "Blake3Lane",
    "Crc32Fn",
    "Crc32Lane",
    "FileRef",
    "Lane",
    "Sha256Lane",
    "autov2",
    "sha256_file",
]
