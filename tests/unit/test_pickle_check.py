"""`pickle_check.sniff_pickle`: real pickle streams and torch zip archives, by their bytes."""

from __future__ import annotations

import io
import os
import pickle
import struct
import zipfile
from collections import OrderedDict
from pathlib import Path

import pytest

from assetmgr.store import pickle_check
from assetmgr.store.pickle_check import SNIFF_BYTES, sniff_pickle


class Planted:
    """Loading a pickle of this would create `marker`: the sniff must never do it."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (open, (str(self.marker), "w"))


def sniff(data: bytes) -> str | None:
    return sniff_pickle(io.BytesIO(data))


def torch_zip(member: bytes, *, name: str = "archive/data.pkl", compression: int = 0) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression) as archive:
        archive.writestr(name, member)
        archive.writestr("archive/data/0", b"\x00" * 64)
        archive.writestr("archive/version", "3\n")
    return buf.getvalue()


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_real_pickles_of_every_framed_protocol(protocol: int) -> None:
    state = OrderedDict((f"layer{i}.weight", [0.5] * 16) for i in range(500))
    assert sniff(pickle.dumps(state, protocol=protocol)) == "pickle"


def test_a_hostile_pickle_is_recognised_without_running_it(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    data = pickle.dumps(Planted(marker), protocol=4)
    zipped = torch_zip(data)
    assert sniff(data) == "pickle" and sniff(zipped) == "torch-zip"
    assert not marker.exists()
    pickle.loads(data)  # what loading would have done
    assert marker.exists()


def test_torch_legacy_layout_counts_from_its_first_pickle() -> None:
    magic = pickle.dumps(0x1950A86A20F9469CFC6C, protocol=2)
    assert sniff(magic + os.urandom(4096)) == "pickle"


@pytest.mark.parametrize(
    "data",
    [
        pickle.dumps({"a": 1}, protocol=0),  # no PROTO opcode: not what torch writes
        b"root:x:0:0:root:/root:/bin/bash\n",
        b"\x80\x04garbage that is no pickle stream",
        b"\x80\x02.",  # STOP with nothing on the stack
        b"\x80\x02K\x01K\x02.",  # STOP leaving two objects
        pickle.dumps(list(range(1000)), protocol=4)[:-40],  # truncated
        b"\x80\x04\x8e" + struct.pack("<Q", 1 << 40) + b"\x00" * 64,  # bytes past the end
        b"",
        b"\x80",
    ],
    ids=[
        "protocol0",
        "text",
        "garbage",
        "empty-stack",
        "two-objects",
        "truncated",
        "past-end",
        "empty",
        "one-byte",
    ],
)
def test_other_bytes_are_not_pickles(data: bytes) -> None:
    assert sniff(data) is None


class CountingReader(io.BytesIO):
    largest_read = 0

    def read(self, n: int | None = -1) -> bytes:
        data = super().read(n)
        self.largest_read = max(self.largest_read, len(data))
        return data


def test_a_long_argument_inside_the_file_counts_without_being_read() -> None:
    length = SNIFF_BYTES + 1
    source = CountingReader(b"\x80\x04\x8e" + struct.pack("<Q", length) + b"\x00" * length + b".")
    assert sniff_pickle(source) == "pickle"
    assert source.largest_read < 1024


@pytest.mark.parametrize("compression", [zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED])
def test_torch_zip_archives(compression: int) -> None:
    member = pickle.dumps({"w": "storage 0"}, protocol=2)
    assert sniff(torch_zip(member, compression=compression)) == "torch-zip"


@pytest.mark.parametrize(
    "data",
    [
        torch_zip(pickle.dumps({"w": 1}, protocol=2), name="data.pkl"),  # not under a folder
        torch_zip(pickle.dumps({"w": 1}, protocol=2), name="a/b/data.pkl"),
        torch_zip(b"\x80\x02not a pickle"),
        torch_zip(b"plain text"),
        b"PK\x03\x04" + os.urandom(200),
    ],
    ids=["top-level", "too-deep", "bad-member", "text-member", "not-a-zip"],
)
def test_other_zips_are_not_torch_archives(data: bytes) -> None:
    assert sniff(data) is None


def test_a_zip_directory_over_the_cap_is_refused_before_zipfile_reads_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as archive:
        archive.writestr("archive/data.pkl", pickle.dumps({"w": 1}, protocol=2))
        for i in range(200):
            archive.writestr(f"archive/data/{i}", b"\x00")
    data = buf.getvalue()
    assert sniff(data) == "torch-zip"
    monkeypatch.setattr(pickle_check, "MAX_ZIP_DIRECTORY_BYTES", 4096)  # the directory is larger
    assert sniff(data) is None


def test_a_zip_declaring_a_directory_past_its_end_is_not_an_archive() -> None:
    data = bytearray(torch_zip(pickle.dumps({"w": 1}, protocol=2)))
    eocd = data.rfind(b"PK\x05\x06")
    struct.pack_into("<I", data, eocd + 12, 1 << 30)
    assert sniff(bytes(data)) is None
