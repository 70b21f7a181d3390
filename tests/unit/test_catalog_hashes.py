"""`catalog.hashes`: the host's one file-hashing helper."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from assetmgr.store.hashing import compute_hashes
from catalog import hashes


def test_sha256_file_of_a_path_and_of_an_fd_leaves_the_offset_alone(tmp_path: Path) -> None:
    data = os.urandom(3 * hashes.CHUNK_SIZE + 17)
    path = tmp_path / "blob.bin"
    path.write_bytes(data)
    expected = hashlib.sha256(data).hexdigest().upper()
    assert hashes.sha256_file(path) == expected
    seen = bytearray()
    fd = os.open(path, os.O_RDONLY)
    try:
        os.lseek(fd, 5, os.SEEK_SET)
        assert hashes.sha256_file(fd, chunk_size=4096, on_chunk=seen.extend) == expected
        assert os.lseek(fd, 0, os.SEEK_CUR) == 5
    finally:
        os.close(fd)
    assert bytes(seen) == data


def test_the_lanes_give_the_store_s_six_hashes(tmp_path: Path) -> None:
    header = b'{"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}'
    data = len(header).to_bytes(8, "little") + header + os.urandom(3 * hashes.ONE_MIB)
    path = tmp_path / "m.safetensors"
    path.write_bytes(data)
    lanes = (
        hashes.Sha256Lane(),
        hashes.AutoV1Lane(),
        hashes.AutoV3Lane(),
        hashes.Crc32Lane(),
        hashes.Blake3Lane(),
    )
    view = memoryview(data)
    for start in range(0, len(data), 100_000):  # uneven pieces across the AutoV1 window
        for lane in lanes:
            lane.feed(view[start : start + 100_000])
    sha, v1, v3, crc, b3 = lanes
    stored = compute_hashes(path)
    assert (sha.hex(), v1.hex(len(data)), v3.hex(), crc.hex(), b3.hex()) == (
        stored.sha256,
        stored.autov1,
        stored.autov3,
        stored.crc32,
        stored.blake3,
    )
    assert hashes.autov2(sha.hex()) == stored.autov2
    assert v3.hex() == hashlib.sha256(data[8 + len(header) :]).hexdigest()[:12].upper()
