"""Hostile bodies for the fake's fault kinds: a gzip bomb, endless and mislabelled streams.

`serve` writes one of them on a handler's connection (see `faults` for the kinds). The bomb is
one valid gzip member (correct CRC and length) that inflates to `inflated_bytes` of JSON-ish
whitespace; it takes milliseconds to build, whatever its size, and is cached per size.
"""

from __future__ import annotations

import contextlib
import struct
import threading
import time
import zlib
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tests.fakeciv.faults import FaultInjector
    from tests.fakeciv.server import _Handler

BOMB_PREFIX = b'{"items": ['
_SEGMENT_BYTES = 1 << 20
_STREAM_CHUNK = 64 << 10
_bombs: dict[int, bytes] = {}
_bombs_lock = threading.Lock()


def gzip_bomb(inflated_bytes: int) -> bytes:
    """A gzip member of `BOMB_PREFIX` plus spaces, `inflated_bytes` long (whole MiB segments).

    Each segment ends with a full flush, which resets the compressor, so every segment after
    the first compresses to the same bytes: one is compressed and repeated. The CRC is carried
    across segments by `_crc_step` instead of hashing gigabytes.
    """
    segments = max(1, inflated_bytes // _SEGMENT_BYTES)
    with _bombs_lock:
        cached = _bombs.get(segments)
        if cached is not None:
            return cached
        spaces = b" " * _SEGMENT_BYTES
        compressor = zlib.compressobj(9, zlib.DEFLATED, zlib.MAX_WBITS | 16)
        head = compressor.compress(BOMB_PREFIX) + compressor.flush(zlib.Z_FULL_FLUSH)
        segment = compressor.compress(spaces) + compressor.flush(zlib.Z_FULL_FLUSH)
        again = compressor.compress(spaces) + compressor.flush(zlib.Z_FULL_FLUSH)
        assert segment == again, "zlib no longer repeats a flushed segment; build it in full"
        final_block = compressor.flush(zlib.Z_FINISH)[:-8]  # its trailer saw only 2 segments
        step = _crc_step(spaces)
        crc = zlib.crc32(BOMB_PREFIX)
        for _ in range(segments):
            crc = step(crc)
        size = len(BOMB_PREFIX) + segments * _SEGMENT_BYTES
        bomb = b"".join(
            [head, segment * segments, final_block, struct.pack("<II", crc, size & 0xFFFFFFFF)]
        )
        _bombs[segments] = bomb
        return bomb


def _crc_step(block: bytes) -> Callable[[int], int]:
    """``crc -> zlib.crc32(block, crc)`` without rehashing `block`: the map is affine over GF(2),
    so 33 evaluations give its constant and the 32 columns of its linear part."""
    constant = zlib.crc32(block, 0)
    columns = [zlib.crc32(block, 1 << bit) ^ constant for bit in range(32)]

    def step(crc: int) -> int:
        out = constant
        for bit in range(32):
            if crc >> bit & 1:
                out ^= columns[bit]
        return out

    return step


def serve(handler: _Handler, fate: str, faults: FaultInjector) -> None:
    """Answer with the hostile body `fate` names (``gzipbomb``, ``endless``, ...)."""
    api = handler.server.kind == "api"
    content_type = "application/json; charset=utf-8" if api else "application/octet-stream"
    if fate == "gzipbomb":
        bomb = gzip_bomb(faults.bomb_inflated_bytes)
        head = handler._head(
            200,
            [
                ("Content-Type", content_type),
                ("Content-Encoding", "gzip"),
                ("Content-Length", str(len(bomb))),
            ],
        )
        faults.add_streamed(len(bomb))
        with contextlib.suppress(OSError):
            handler.wfile.write(head + bomb)
        return
    headers: list[tuple[str, str | bytes]] = [("Content-Type", content_type)]
    chunked = fate == "endless"
    if chunked:
        headers.append(("Transfer-Encoding", "chunked"))
    elif fate.startswith("length:"):
        headers.append(("Content-Length", fate.split(":", 1)[1]))
    handler.close_connection = True  # the body ends only when the connection does
    filler = (b'{"id": 1, "name": "x"}, ' * 3000)[:_STREAM_CHUNK] if api else bytes(_STREAM_CHUNK)

    def framed(data: bytes) -> bytes:
        return b"%x\r\n%s\r\n" % (len(data), data) if chunked else data

    frame = framed(filler)
    try:
        handler.wfile.write(handler._head(200, headers) + (framed(BOMB_PREFIX) if api else b""))
        sent = 0
        while sent < faults.endless_bytes:
            handler.connection.sendall(frame)
            sent += len(filler)
            faults.add_streamed(len(filler))
            if faults.bytes_per_second:
                time.sleep(len(filler) / faults.bytes_per_second)
        if chunked:
            handler.connection.sendall(b"0\r\n\r\n")
    except OSError:
        pass  # the client stopped reading and closed: the point of the exercise
    handler._abort()


__all__ = ["BOMB_PREFIX", "gzip_bomb", "serve"]
