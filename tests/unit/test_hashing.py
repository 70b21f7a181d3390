"""Civitai hashes: the doc's test vectors, incremental feeding, cancel, and the cache."""

from __future__ import annotations

import hashlib
import os
import sqlite3
import struct
import threading
import time
import zlib
from pathlib import Path
from typing import Any

import blake3
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import assetmgr.store as store_pkg
from assetmgr.errors import StoreError
from assetmgr.store import hashing
from assetmgr.store.hashing import (
    FileChangedError,
    FileHashes,
    HashCache,
    Hasher,
    HashingCancelled,
    cached_hashes,
    compute_hashes,
)

MIB = 1 << 20

HELLO = {
    "SHA256": "B94D27B9934D3E08A52E52D7DA7DABFAC484EFE37A5380EE9088F7ACE2EFCDE9",
    "AutoV2": "B94D27B993",
    "AutoV3": "85C76DCAE229",
    "CRC32": "85114A0D",
    "BLAKE3": "D74981EFA70A0C880B8D8C1985D075DBCBF679B99A5F9914E5AAF96B831A9E24",
}
THREE_MIB = {
    "SHA256": "A1FEACF0D812BA4D0B0E463ED45BBD583CEA1DE55C54693116754B30B5794745",
    "AutoV1": "15FFD73B",
    "AutoV2": "A1FEACF0D8",
    "AutoV3": "B35A90214838",
    "CRC32": "78BC6E6B",
}
SAFETENSORS_152 = {
    "SHA256": "98285EC41FD6EC8249A618869B9D06AC5ECABA102507E563287307539DEC93EA",
    "AutoV2": "98285EC41F",
    "AutoV3": "AD73B9ACD6E4",
    "CRC32": "A6E4B9EB",
}


def three_mib() -> bytes:
    return bytes(i % 251 for i in range(3 * MIB))


def safetensors_152() -> bytes:
    header = (
        b'{"__metadata__":{"ss_output_name":"demo_lora"},'
        b'"lora_unet_demo.weight":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}'
    ) + b" " * 7
    assert len(header) == 128
    return struct.pack("<Q", 128) + header + struct.pack("<4f", 1, 2, 3, 4)


def reference(data: bytes) -> dict[str, str]:
    """Straight from Civitai's hash definitions, on bytes in memory."""
    out = {"SHA256": hashlib.sha256(data).hexdigest().upper()}
    out["AutoV2"] = out["SHA256"][:10]
    if len(data) >= 2 * MIB:
        out["AutoV1"] = hashlib.sha256(data[MIB : MIB + 0x10000]).hexdigest()[:8].upper()
    n = struct.unpack("<Q", data[:8])[0] if len(data) >= 8 else 0
    start = 8 + n if n < 16 * MIB else 8
    out["AutoV3"] = hashlib.sha256(data[start:]).hexdigest()[:12].upper()
    out["CRC32"] = struct.pack("<I", zlib.crc32(data)).hex().upper()
    out["BLAKE3"] = blake3.blake3(data).hexdigest().upper()
    return out


def write(tmp_path: Path, data: bytes, name: str = "f.bin") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def one_shot(data: bytes) -> FileHashes:
    hasher = Hasher()
    hasher.update(data)
    return hasher.finalize()


@pytest.mark.parametrize("use_mmap", [True, False])
def test_hello_world_vector(tmp_path: Path, use_mmap: bool) -> None:
    got = compute_hashes(write(tmp_path, b"hello world"), use_mmap=use_mmap)
    assert got.as_civitai_dict() == HELLO
    assert got.autov1 is None
    assert got.size == 11
    assert one_shot(b"hello world") == got


@pytest.mark.parametrize("use_mmap", [True, False])
def test_three_mib_vector(tmp_path: Path, use_mmap: bool) -> None:
    data = three_mib()
    got = compute_hashes(write(tmp_path, data), use_mmap=use_mmap)
    assert {k: v for k, v in got.as_civitai_dict().items() if k != "BLAKE3"} == THREE_MIB
    assert got.as_civitai_dict() == reference(data)
    assert (got.autov1, got.autov2, got.autov3) == ("15FFD73B", "A1FEACF0D8", "B35A90214838")
    assert one_shot(data) == got


@pytest.mark.parametrize("use_mmap", [True, False])
def test_safetensors_vector(tmp_path: Path, use_mmap: bool) -> None:
    data = safetensors_152()
    got = compute_hashes(write(tmp_path, data, "demo.safetensors"), use_mmap=use_mmap)
    assert {k: v for k, v in got.as_civitai_dict().items() if k != "BLAKE3"} == SAFETENSORS_152
    assert got.as_civitai_dict() == reference(data)
    assert got.autov1 is None and got.size == 152


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"abc",  # shorter than the 8 length bytes: AutoV3 of nothing
        struct.pack("<Q", 0),  # exactly 8 bytes, empty header
        struct.pack("<Q", 100) + b"x" * 20,  # header runs past the end
        struct.pack("<Q", 16 * MIB - 1) + b"y" * 50,  # just under the cap: still skipped
        struct.pack("<Q", 16 * MIB) + b"z" * 50,  # at the cap: only the 8 bytes skipped
        os.urandom(2 * MIB - 1),  # one byte short of AutoV1
        os.urandom(2 * MIB),  # smallest file with AutoV1
    ],
    ids=["empty", "3B", "8B", "past-end", "cap-1", "cap", "2MiB-1", "2MiB"],
)
def test_edges_match_reference(tmp_path: Path, data: bytes) -> None:
    expected = reference(data)
    assert compute_hashes(write(tmp_path, data)).as_civitai_dict() == expected
    assert one_shot(data).as_civitai_dict() == expected


def test_empty_input_autov3() -> None:
    assert one_shot(b"abc").autov3 == "E3B0C44298FC"


BIG = os.urandom(5 * MIB + 123)  # crosses AutoV1's window and the threaded-update threshold


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    cuts=st.lists(st.integers(0, len(BIG)), max_size=12),
    prefix=st.sampled_from([b"", struct.pack("<Q", 40), struct.pack("<Q", 3 * MIB)]),
)
def test_incremental_equals_one_shot(cuts: list[int], prefix: bytes) -> None:
    data = prefix + BIG
    points = sorted({0, len(data), *cuts})
    hasher = Hasher()
    for lo, hi in zip(points, points[1:], strict=False):
        hasher.update(memoryview(data)[lo:hi])
    assert hasher.size == len(data)
    assert hasher.finalize().as_civitai_dict() == reference(data)


@settings(max_examples=60, deadline=None)
@given(data=st.binary(max_size=300), sizes=st.lists(st.integers(1, 40), max_size=30))
def test_small_chunkings(data: bytes, sizes: list[int]) -> None:
    hasher, pos = Hasher(), 0
    for n in sizes:
        hasher.update(data[pos : pos + n])
        pos += n
    hasher.update(data[pos:])
    assert hasher.finalize().as_civitai_dict() == reference(data)


@pytest.mark.parametrize("use_mmap", [True, False])
@pytest.mark.parametrize("resume_at", [0, 5, 1 * MIB + 100, 3 * MIB])
def test_resume_refeeds_partial_file(tmp_path: Path, use_mmap: bool, resume_at: int) -> None:
    data = three_mib() + os.urandom(MIB)
    path = write(tmp_path, data)
    hasher = Hasher()
    assert hasher.update_from_file(path, length=resume_at, use_mmap=use_mmap) == resume_at
    hasher.update(data[resume_at:])  # the rest, as if it came from the network
    assert hasher.finalize().as_civitai_dict() == reference(data)


def test_update_from_file_offset_and_fd(tmp_path: Path) -> None:
    data = os.urandom(6 * MIB)
    path = write(tmp_path, data)
    hasher = Hasher()
    hasher.update(data[:100])
    fd = os.open(path, os.O_RDONLY)
    try:
        hasher.update_from_file(fd, offset=100, length=4 * MIB)
    finally:
        os.close(fd)
    hasher.update_from_file(path, offset=100 + 4 * MIB)
    assert hasher.finalize().as_civitai_dict() == reference(data)


def test_unmappable_file_is_read_instead(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise OSError(19, "No such device")

    monkeypatch.setattr(hashing.mmap, "mmap", refuse)
    data = three_mib()
    assert compute_hashes(write(tmp_path, data)).as_civitai_dict() == reference(data)


def test_update_from_file_past_end(tmp_path: Path) -> None:
    path = write(tmp_path, b"x" * 10)
    with pytest.raises(FileChangedError):
        Hasher().update_from_file(path, length=11)


def test_progress_is_monotonic_and_ends_at_size(tmp_path: Path) -> None:
    path = write(tmp_path, os.urandom(8 * MIB))
    seen: list[tuple[int, str]] = []
    compute_hashes(path, progress=lambda n: seen.append((n, threading.current_thread().name)))
    values = [n for n, _ in seen]
    assert values == sorted(values) and len(set(values)) == len(values)
    assert values[-1] == 8 * MIB
    assert {name for _, name in seen} == {threading.current_thread().name}


def test_cancel_before_start(tmp_path: Path) -> None:
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(HashingCancelled) as info:
        compute_hashes(write(tmp_path, os.urandom(MIB)), cancel=cancel)
    assert isinstance(info.value, StoreError)


@pytest.mark.parametrize("use_mmap", [True, False])
def test_cancel_midway_is_prompt(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, use_mmap: bool
) -> None:
    path = write(tmp_path, os.urandom(8 * MIB))
    cancel = threading.Event()
    fed: list[int] = []
    real_crc = hashing._crc32

    def crc_then_cancel(data: bytes | memoryview, value: int) -> int:
        fed.append(len(data))
        if len(fed) == 3:
            cancel.set()
        return real_crc(data, value)

    monkeypatch.setattr(hashing, "_crc32", crc_then_cancel)
    hasher = Hasher()
    with pytest.raises(HashingCancelled):
        hasher.update_from_file(path, cancel=cancel, use_mmap=use_mmap)
    assert sum(fed) < 8 * MIB // 2  # stopped within a slice or two, not at the end
    with pytest.raises(RuntimeError):
        hasher.update(b"more")


def test_file_growing_while_hashed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, os.urandom(8 * MIB))
    real_crc = hashing._crc32
    appended: list[bool] = []

    def crc_and_append(data: bytes | memoryview, value: int) -> int:
        if not appended:
            appended.append(True)
            with open(path, "ab") as f:
                f.write(b"late bytes")
        return real_crc(data, value)

    monkeypatch.setattr(hashing, "_crc32", crc_and_append)
    with pytest.raises(FileChangedError):
        compute_hashes(path)


def test_reset_starts_over() -> None:
    hasher = Hasher()
    hasher.update(b"partial bytes from a download that restarted")
    hasher.reset()
    hasher.update(b"hello world")
    assert hasher.size == 11 and hasher.finalize().as_civitai_dict() == HELLO


def test_finalize_once() -> None:
    hasher = Hasher()
    hasher.finalize()
    with pytest.raises(RuntimeError):
        hasher.finalize()


def test_civitai_dict_and_matches(tmp_path: Path) -> None:
    got = compute_hashes(write(tmp_path, b"hello world"))
    assert list(got.as_civitai_dict()) == ["SHA256", "AutoV2", "AutoV3", "CRC32", "BLAKE3"]
    assert got.matches("b94d27b993") and got.matches(" 85114a0d ")
    assert not got.matches("") and not got.matches("0D4A1185")  # zlib's byte order is not it


def old_mtime(path: Path, seconds_ago: float = 100.0) -> None:
    when = time.time() - seconds_ago
    os.utime(path, (when, when))


def test_cache_hit_and_miss_on_mtime_change(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path, three_mib())
    old_mtime(path)
    cache = HashCache(tmp_path / "cache")
    calls: list[Path] = []
    real = hashing._hash_file

    def counting(p: Path, **kw: Any) -> tuple[FileHashes, os.stat_result]:
        calls.append(p)
        return real(p, **kw)

    monkeypatch.setattr(hashing, "_hash_file", counting)
    first = cached_hashes(path, cache)
    assert len(calls) == 1 and cache.path.exists()
    progress: list[int] = []
    assert cached_hashes(path, cache, progress=progress.append) == first
    assert len(calls) == 1 and progress == [3 * MIB]
    # A second cache object on the same directory (another process) sees the entry too.
    assert HashCache(tmp_path / "cache").get(os.stat(path)) == first

    old_mtime(path, 50.0)
    assert cached_hashes(path, cache) == first
    assert len(calls) == 2
    assert cached_hashes(path, cache) == first
    assert len(calls) == 2


def test_cache_miss_when_content_changes(tmp_path: Path) -> None:
    path = write(tmp_path, b"hello world")
    old_mtime(path)
    cache = HashCache(tmp_path)
    assert cached_hashes(path, cache).as_civitai_dict() == HELLO
    path.write_bytes(b"hello there, world")
    old_mtime(path, 10.0)
    assert cached_hashes(path, cache).as_civitai_dict() == reference(b"hello there, world")


def test_cache_skips_just_modified_files(tmp_path: Path) -> None:
    path = write(tmp_path, b"fresh")
    cache = HashCache(tmp_path)
    cached_hashes(path, cache)
    assert cache.get(os.stat(path)) is None


def test_corrupted_cache_is_ignored_then_replaced(tmp_path: Path) -> None:
    path = write(tmp_path, b"hello world")
    old_mtime(path)
    cache = HashCache(tmp_path / "c")
    cache.path.parent.mkdir()
    cache.path.write_bytes(b"this is not an sqlite file" * 100)
    assert cache.get(os.stat(path)) is None
    assert cached_hashes(path, cache).as_civitai_dict() == HELLO
    assert cache.get(os.stat(path)) is not None  # recreated


def test_cache_rejects_tampered_rows(tmp_path: Path) -> None:
    path = write(tmp_path, b"hello world")
    old_mtime(path)
    cache = HashCache(tmp_path)
    cached_hashes(path, cache)
    with sqlite3.connect(cache.path) as conn:
        conn.execute("UPDATE hashes SET sha256 = 'not hex'")
    conn.close()
    assert cache.get(os.stat(path)) is None


def test_cache_from_threads(tmp_path: Path) -> None:
    paths = []
    for i in range(8):
        p = write(tmp_path, f"file {i}".encode(), f"{i}.bin")
        old_mtime(p)
        paths.append(p)
    cache = HashCache(tmp_path / "cache")
    threads = [threading.Thread(target=cached_hashes, args=(p, cache)) for p in paths]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for p in paths:
        hit = cache.get(os.stat(p))
        assert hit is not None and hit.as_civitai_dict() == reference(p.read_bytes())


def test_store_all_is_sorted() -> None:
    assert store_pkg.__all__ == sorted(store_pkg.__all__)
    for name in store_pkg.__all__:
        assert hasattr(store_pkg, name)
