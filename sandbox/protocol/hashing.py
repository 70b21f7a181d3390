"""The one file-hash helper of the sandbox, host and worker (stdlib only): sha256 in chunks."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from typing import BinaryIO

CHUNK = 1 << 20


class FileHash:
    """The sha256 and size of bytes seen so far; `chunks` reads a stream through it."""

    def __init__(self) -> None:
        self._digest = hashlib.sha256()
        self.size = 0

    def update(self, block: bytes) -> None:
        self._digest.update(block)
        self.size += len(block)

    def chunks(self, stream: BinaryIO, chunk: int = CHUNK) -> Iterator[bytes]:
        """Each block of `stream` to its end, hashed (and counted) before it is handed on."""
        while block := stream.read(chunk):
            self.update(block)
            yield block

    def hexdigest(self) -> str:
        return self._digest.hexdigest()


def sha256_file(path: str | os.PathLike[str], chunk: int = CHUNK) -> str:
    """The sha256 of a whole file, read in chunks."""
    h = FileHash()
    with open(path, "rb") as f:
        for _ in h.chunks(f, chunk):
            pass
    return h.hexdigest()


__all__ = ["CHUNK", "FileHash", "sha256_file"]
