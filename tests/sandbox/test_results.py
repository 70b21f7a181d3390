"""Output archive validation with hand-made hostile tars (no Docker needed).

Docker's get_archive builds the tar from real file names, so traversal and absolute names can
only come from a compromised or remote engine; they are tested here directly.
"""

from __future__ import annotations

import io
import json
import struct
import tarfile
import zlib
from pathlib import Path

import pytest
from PIL import Image

from sandbox.results import ArchiveTooLargeError, OutputLimits, extract_outputs, spool_bounded


def png(
    width: int = 4, height: int = 4, text: bytes | None = None, parameters: str | None = None
) -> bytes:
    im = Image.new("RGB", (width, height), (1, 2, 3))
    buf = io.BytesIO()
    if text is None and parameters is None:
        im.save(buf, format="PNG")
    else:
        from PIL.PngImagePlugin import PngInfo

        info = PngInfo()
        if text is not None:
            info.add_text("Comment", text.decode())
        if parameters is not None:
            info.add_text("parameters", parameters)
        im.save(buf, format="PNG", pnginfo=info)
    return buf.getvalue()


def bomb_png(side: int) -> bytes:
    def chunk(tag: bytes, data: bytes) -> bytes:
        body = tag + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    comp = zlib.compressobj(9)
    row = b"\0" * (side + 1)
    idat = b"".join(comp.compress(row) for _ in range(side)) + comp.flush()
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def make_tar(*entries: tuple[str, bytes | None, bytes]) -> io.BytesIO:
    """entries: (name, data or None for special, type)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for name, data, kind in entries:
            info = tarfile.TarInfo(name)
            info.type = kind
            if kind == tarfile.DIRTYPE:
                info.mode = 0o755
                tar.addfile(info)
            elif kind in (tarfile.SYMTYPE, tarfile.LNKTYPE):
                info.linkname = (data or b"").decode()
                tar.addfile(info)
            elif kind == tarfile.REGTYPE:
                assert data is not None
                info.size = len(data)
                info.mode = 0o644
                tar.addfile(info, io.BytesIO(data))
            else:
                tar.addfile(info)
    buf.seek(0)
    return buf


D, F = tarfile.DIRTYPE, tarfile.REGTYPE


def test_good_outputs_are_reencoded_keeping_only_the_parameters_chunk(tmp_path: Path) -> None:
    params = "a heron\x07 at dawn\nSteps: 2, Sampler: Euler, Seed: 1"
    tar = make_tar(
        ("out", None, D),
        ("out/a.png", png(text=b"secret prompt", parameters=params) + b"trailing-junk", F),
        ("out/result.json", json.dumps({"seed": 1}).encode(), F),
    )
    outputs = extract_outputs(tar, tmp_path)
    assert outputs.rejected == []
    assert [p.name for p in outputs.images] == ["a.png"]
    assert outputs.result_json == {"seed": 1}
    data = (tmp_path / "a.png").read_bytes()
    assert b"secret prompt" not in data and b"trailing-junk" not in data
    with Image.open(tmp_path / "a.png") as im:
        assert im.size == (4, 4) and im.getpixel((0, 0)) == (1, 2, 3)
        # A1111 metadata survives, without control characters; every other chunk is gone.
        assert im.info["parameters"] == "a heron at dawn\nSteps: 2, Sampler: Euler, Seed: 1"
        assert "Comment" not in im.info
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png", "result.json"]


@pytest.mark.parametrize(
    ("entry", "reason"),
    [
        (("../evil.png", png(), F), "OutsideDestination"),
        (("out/../../evil.png", png(), F), "OutsideDestination"),
        (("/etc/evil.png", png(), F), "allowlist"),  # the data filter strips the "/"
        (("out/link.png", b"/etc/passwd", tarfile.SYMTYPE), "Link"),
        (("out/rel.png", b"a.png", tarfile.SYMTYPE), "links are not allowed"),
        (("out/hard.png", b"out/a.png", tarfile.LNKTYPE), "links are not allowed"),
        (("out/dev.png", None, tarfile.CHRTYPE), "SpecialFile"),
        (("out/fifo.png", None, tarfile.FIFOTYPE), "SpecialFile"),
        (("out/evil.sh", b"#!/bin/sh", F), "allowlist"),
        (("out/.hidden.png", png(), F), "allowlist"),
        (("out/sub/x.png", png(), F), "allowlist"),
        (("out/sub", None, D), "unexpected directory"),
        (("out/fake.png", b"GIF89a....", F), "not a PNG"),
        (("out/bomb.png", bomb_png(8000), F), "pixels"),
        (("out/result.json", b"[1, 2]", F), "not a JSON object"),
        (("out/result.json", b'{"a": NaN}', F), "non-standard"),
    ],
)
def test_hostile_members_reject_the_whole_archive(
    tmp_path: Path, entry: tuple[str, bytes | None, bytes], reason: str
) -> None:
    tar = make_tar(("out", None, D), ("out/a.png", png(), F), entry)
    outputs = extract_outputs(tar, tmp_path / "dest")
    assert outputs.rejected, outputs
    assert any(reason in why for _, why in outputs.rejected), outputs.rejected
    assert outputs.images == [] and outputs.result_json is None
    assert list((tmp_path / "dest").iterdir()) == []
    assert not (tmp_path / "evil.png").exists()


def test_caps_on_members_sizes_and_pixels(tmp_path: Path) -> None:
    many = [(f"out/{i}.png", png(), F) for i in range(10)]
    outputs = extract_outputs(make_tar(*many), tmp_path / "a", OutputLimits(max_members=5))
    assert any("more than 5" in why for _, why in outputs.rejected)

    big = make_tar(("out/a.png", png(64, 64), F))
    outputs = extract_outputs(big, tmp_path / "b", OutputLimits(max_file_bytes=100))
    assert any("larger than" in why for _, why in outputs.rejected)

    wide = make_tar(("out/a.png", png(300, 300), F))
    outputs = extract_outputs(wide, tmp_path / "c", OutputLimits(max_pixels=200 * 200))
    assert any("pixels" in why for _, why in outputs.rejected)

    dupes = make_tar(("out/a.png", png(), F), ("out/a.png", png(8, 8), F))
    outputs = extract_outputs(dupes, tmp_path / "d")
    assert any("duplicate" in why for _, why in outputs.rejected)


def test_compressed_or_corrupt_archives_are_refused(tmp_path: Path) -> None:
    raw = make_tar(("out/a.png", png(), F)).getvalue()
    gz = io.BytesIO()
    import gzip

    gz.write(gzip.compress(raw))
    gz.seek(0)
    assert extract_outputs(gz, tmp_path / "a").rejected
    truncated = io.BytesIO(raw[:700])
    outputs = extract_outputs(truncated, tmp_path / "b")
    assert outputs.rejected and outputs.images == []


def test_spool_is_bounded() -> None:
    with spool_bounded([b"x" * 10, b"y" * 10], 20) as f:
        assert f.read() == b"x" * 10 + b"y" * 10
    with pytest.raises(ArchiveTooLargeError):
        spool_bounded(iter([b"x" * 15, b"y" * 15]), 20)
