"""Civitai's six file hashes, computed exactly as Civitai defines them.

`civitai_hashes(source)` takes bytes or a path and reads a file once (besides the 64 KiB AutoV1
window), so hashing a 1 GiB file costs one sequential read. `make_safetensors()` builds small,
valid safetensors files for tests (the 152-byte vector of section 7 is
``make_safetensors({"lora_unet_demo.weight": [1.0, 2.0, 3.0, 4.0]},
metadata={"ss_output_name": "demo_lora"})``).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import struct
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import BinaryIO

import blake3

HASH_ORDER: tuple[str, ...] = ("AutoV1", "AutoV2", "SHA256", "CRC32", "BLAKE3", "AutoV3")
"""Key order inside `hashes`, as in the 2024 capture."""

_ONE_MIB = 0x100000
_CHUNK = 8 << 20

ByteSource = bytes | bytearray | memoryview | str | os.PathLike[str]


def civitai_hashes(source: ByteSource) -> dict[str, str]:
    """The hashes Civitai's scanner stores for these bytes, uppercase hex, in `HASH_ORDER`.

    AutoV1 is absent below 2 MiB, like the scanner. CRC32 is in little-endian byte order.
    """
    if isinstance(source, bytes | bytearray | memoryview):
        data = bytes(source)
        return _hash_stream(io.BytesIO(data), len(data))
    with open(source, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        return _hash_stream(f, size)


def _hash_stream(f: BinaryIO, size: int) -> dict[str, str]:
    head = f.read(8)
    header_len = struct.unpack("<Q", head)[0] if len(head) == 8 else 0
    # The scanner only trusts a safetensors header length below 16 MiB.
    v3_start = 8 + header_len if header_len < 16 * _ONE_MIB else 8
    auto_v1 = None
    if size >= 2 * _ONE_MIB:
        f.seek(_ONE_MIB)
        auto_v1 = hashlib.sha256(f.read(0x10000)).hexdigest()[:8].upper()
    f.seek(0)
    sha, v3 = hashlib.sha256(), hashlib.sha256()
    b3 = blake3.blake3(max_threads=blake3.blake3.AUTO)
    crc = 0
    pos = 0
    while block := f.read(_CHUNK):
        sha.update(block)
        b3.update(block)
        crc = zlib.crc32(block, crc)
        end = pos + len(block)
        if end > v3_start:
            v3.update(memoryview(block)[max(0, v3_start - pos) :])
        pos = end
    sha_hex = sha.hexdigest().upper()
    found = {
        "AutoV1": auto_v1,
        "AutoV2": sha_hex[:10],
        "SHA256": sha_hex,
        "CRC32": struct.pack("<I", crc & 0xFFFFFFFF).hex().upper(),
        "BLAKE3": b3.hexdigest().upper(),
        "AutoV3": v3.hexdigest()[:12].upper(),
    }
    return {k: v for k in HASH_ORDER if (v := found[k]) is not None}


def make_safetensors(
    tensors: Mapping[str, Sequence[float]] | None = None,
    *,
    metadata: Mapping[str, str] | None = None,
    filler_bytes: int = 0,
) -> bytes:
    """A valid safetensors file of float32 tensors.

    Args:
        tensors: name -> flat list of floats (stored as F32, shape ``[len]``).
        metadata: the ``__metadata__`` string map, written first.
        filler_bytes: extra deterministic payload, stored as one U8 tensor named ``filler``,
            to reach a wanted file size cheaply.
    """
    header: dict[str, object] = {}
    if metadata:
        header["__metadata__"] = dict(metadata)
    payload = bytearray()
    for name, values in (tensors or {}).items():
        start = len(payload)
        payload += struct.pack(f"<{len(values)}f", *values)
        header[name] = {
            "dtype": "F32",
            "shape": [len(values)],
            "data_offsets": [start, len(payload)],
        }
    if filler_bytes > 0:
        start = len(payload)
        seed = hashlib.sha256(json.dumps(header, sort_keys=True).encode()).digest()
        payload += (seed * (filler_bytes // len(seed) + 1))[:filler_bytes]
        header["filler"] = {
            "dtype": "U8",
            "shape": [filler_bytes],
            "data_offsets": [start, len(payload)],
        }
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # the format pads the header to 8 bytes with spaces
    return struct.pack("<Q", len(text)) + text + bytes(payload)


def write_big_file(path: str | os.PathLike[str], size: int, *, seed: int = 0) -> Path:
    """Write a `size`-byte file fast (a repeated 1 MiB pseudo-random block), for benchmarks."""
    block = b"".join(hashlib.sha256(f"{seed}:{i}".encode()).digest() for i in range(_ONE_MIB // 32))
    out = Path(path)
    with open(out, "wb") as f:
        left = size
        while left > 0:
            n = min(left, len(block))
            f.write(block[:n])
            left -= n
    return out
