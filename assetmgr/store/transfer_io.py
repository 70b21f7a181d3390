"""The downloader's I/O: the storage GET over plain `http.client`, its headers, early write-back.

Storage is fetched with `http.client` rather than httpx for its `readinto` (no copy per
block), always without credentials: the signed URL carries its own.
"""

from __future__ import annotations

import ctypes
import http.client
import os
import queue
import re
import ssl
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable
from typing import cast

from assetmgr.store.targets import IncompleteDownloadError
from catalog.redact import redact_url

MAX_STORAGE_REDIRECTS = 5
WRITEBACK_WINDOW_BYTES = 32 << 20


class Writeback:
    """Starts the disk writes of a growing file as it grows, so the final fsync is short.

    Linux's sync_file_range: each finished window is queued for writeback without waiting,
    and the one before it is waited for, which bounds the dirty pages to two windows and lets
    the disk work while the network does. Elsewhere (or if the call fails) it does nothing and
    the final fsync does all the work.
    """

    _WAIT_BEFORE, _WRITE, _WAIT_AFTER = 1, 2, 4

    def __init__(self, fd: int, start: int) -> None:
        self.fd = fd
        self.flushed = start  # bytes before this offset were queued for writeback
        self.previous: tuple[int, int] | None = None
        self.call = _sync_file_range()

    def advance(self, end: int) -> None:
        if self.call is None or end - self.flushed < WRITEBACK_WINDOW_BYTES:
            return
        window = (self.flushed, end - self.flushed)
        try:
            if self.call(self.fd, window[0], window[1], self._WRITE) != 0:
                raise OSError("sync_file_range failed")
            if self.previous is not None:
                flags = self._WAIT_BEFORE | self._WRITE | self._WAIT_AFTER
                self.call(self.fd, self.previous[0], self.previous[1], flags)
        except (OSError, ValueError):
            self.call = None
            return
        self.previous = window
        self.flushed = end


class BlockWriter:
    """Writes and hashes received blocks on a second thread, from a small pool of buffers.

    The file write and the hashing release the GIL, so they overlap with receiving the next
    block. After a failure, blocks still handed in are dropped; `failure` holds the error.
    """

    def __init__(
        self,
        fd: int,
        offset: int,
        update: Callable[[memoryview], object],
        block_bytes: int,
        pool: int,
    ) -> None:
        self.blocks: queue.Queue[tuple[bytearray, int] | None] = queue.Queue(maxsize=pool - 1)
        self.free: queue.Queue[bytearray] = queue.Queue()
        for _ in range(pool):
            self.free.put(bytearray(block_bytes))
        self.written = offset
        self.failure: list[BaseException] = []
        self._fd = fd
        self._update = update
        self._writeback = Writeback(fd, offset)
        self._thread = threading.Thread(target=self._run, name="download-writer", daemon=True)
        self._thread.start()

    def hand(self, buf: bytearray, n: int) -> None:
        self.blocks.put((buf, n))

    def close(self) -> None:
        """Write what was handed in, then stop the thread."""
        self.blocks.put(None)
        self._thread.join()

    def _run(self) -> None:
        while (item := self.blocks.get()) is not None:
            buf, n = item
            try:
                if not self.failure:
                    self._write(memoryview(buf)[:n])
            except BaseException as exc:  # reported to the receiving thread
                self.failure.append(exc)
            finally:
                self.free.put(buf)

    def _write(self, block: memoryview) -> None:
        view = block
        while view:
            k = os.write(self._fd, view)
            view = view[k:]
        self._update(block)
        self.written += len(block)
        self._writeback.advance(self.written)


def fill_block(
    response: http.client.HTTPResponse,
    buf: bytearray,
    room: int,
    read_slice: int,
    handoff_after_s: float,
) -> tuple[int, bool, OSError | http.client.HTTPException | None]:
    """Fill `buf` from `response`: (bytes filled, whether the body ended, the read's error).

    Fewer, larger blocks mean fewer hash updates, but a block is handed off early once more
    than `room` bytes arrived (past the bound: stop reading now, not a block later) or the
    link is slow, so the partial file keeps growing and a kill loses little. What arrived
    before an error is still counted, so a resume loses nothing.
    """
    filled = 0
    started = time.monotonic()
    try:
        while filled < len(buf):
            n = response.readinto(memoryview(buf)[filled : filled + read_slice])
            if not n:
                return filled, True, None
            filled += n
            if filled > room or time.monotonic() - started > handoff_after_s:
                break
    except (OSError, http.client.HTTPException) as exc:
        return filled, False, exc
    return filled, False, None


def _sync_file_range() -> Callable[[int, int, int, int], int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        func = libc.sync_file_range
    except (OSError, AttributeError):
        return None
    func.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    func.restype = ctypes.c_int
    return cast(Callable[[int, int, int, int], int], func)


def open_storage(
    url: str, headers: dict[str, str], timeout: float
) -> tuple[http.client.HTTPResponse, http.client.HTTPConnection]:
    """GET a storage URL with plain `http.client` (fast `readinto`), following redirects.

    Redirects are followed without any credentials, and never to a non-HTTP(S) scheme.
    """
    for _ in range(MAX_STORAGE_REDIRECTS + 1):
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise IncompleteDownloadError(f"refusing storage URL {redact_url(url)}")
        conn: http.client.HTTPConnection
        if parts.scheme == "https":
            conn = http.client.HTTPSConnection(
                parts.hostname, parts.port, timeout=timeout, context=ssl.create_default_context()
            )
        else:
            conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
        path = parts.path or "/"
        if parts.query:
            path += "?" + parts.query
        conn.request("GET", path, headers=headers)
        response = conn.getresponse()
        if response.status in (301, 302, 303, 307, 308):
            location = response.getheader("location")
            conn.close()
            if not location:
                raise IncompleteDownloadError("storage redirect without a Location")
            url = urllib.parse.urljoin(url, location)
            continue
        return response, conn
    raise IncompleteDownloadError("too many storage redirects")


def parse_content_range(value: str | None) -> tuple[int | None, int | None]:
    if not value:
        return None, None
    match = re.match(r"bytes\s+(\d+)-(\d+)/(\d+|\*)", value.strip())
    if not match:
        return None, None
    total = None if match.group(3) == "*" else int(match.group(3))
    return int(match.group(1)), total


__all__ = [
    "MAX_STORAGE_REDIRECTS",
    "WRITEBACK_WINDOW_BYTES",
    "BlockWriter",
    "Writeback",
    "fill_block",
    "open_storage",
    "parse_content_range",
]
