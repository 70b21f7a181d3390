"""Output archive validation with hand-made hostile tars (no Docker needed).

Docker's get_archive builds the tar from real file names, so traversal and absolute names can
only come from a compromised or remote engine; they are tested here directly.
"""

from __future__ import annotations

import base64
import io
import json
import os
import struct
import tarfile
import zlib
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from sandbox.protocol import OUTPUT_CHUNK_BYTES, encode_message
from sandbox.results import (
    ArchiveTooLargeError,
    HostileInlineOutput,
    InlineOutputError,
    InlineOutputs,
    OutputLimits,
    extract_outputs,
    spool_bounded,
)


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


# ---------------------------------------------------------------------------------------------
# In-band outputs (warm workers): the worker's pieces, checked, then a tar the host writes


JOB, NONCE = "job-inline", "cd" * 32


def _pieces(out_dir: Path) -> list[Any]:
    """What a warm worker sends for `out_dir`, as the host's reader accepts it."""
    from sandbox.protocol import OutputMessage, ProtocolReader, StreamLimits
    from sandbox.worker.channel import CollectingChannel

    channel = CollectingChannel()
    channel.send_outputs(out_dir, JOB, NONCE)
    reader = ProtocolReader(JOB, NONCE, limits=StreamLimits(max_output_bytes=64 << 20))
    wire = b"".join(encode_message(m) for m in channel.messages)
    accepted = [m for i in range(0, len(wire), 65536) for m in reader.feed(wire[i : i + 65536])]
    assert len(accepted) == len(channel.messages) and not reader.violations
    assert all(isinstance(m, OutputMessage) for m in accepted)
    return accepted


def _inline(messages: list[Any], limits: OutputLimits | None = None) -> InlineOutputs:
    inline = InlineOutputs(limits)
    for m in messages:
        inline.add(m)
    return inline


def piece(name: str = "out/a.png", data: bytes = b"", size: int | None = None, **kw: Any) -> Any:
    from sandbox.protocol import OutputMessage

    return OutputMessage(
        job_id=JOB,
        nonce=NONCE,
        name=name,
        size=len(data) if size is None else size,
        data=base64.b64encode(data).decode(),
        **kw,
    )


def test_inline_outputs_match_the_archive_route(tmp_path: Path) -> None:
    src = tmp_path / "out"
    src.mkdir()
    noise = Image.frombytes("RGB", (256, 256), os.urandom(256 * 256 * 3))
    noise.save(src / "00000-1.png", format="PNG")  # ~200 KB: several pieces
    assert (src / "00000-1.png").stat().st_size > 2 * OUTPUT_CHUNK_BYTES
    (src / "b.png").write_bytes(png(parameters="Steps: 2") + b"trailing-junk")
    (src / "result.json").write_text(json.dumps({"seed": 1}))
    (src / "notes.txt").write_text("")  # an empty file is one piece without data

    messages = _pieces(src)
    assert len(messages) > 4
    with _inline(messages) as inline, inline.archive() as archive:
        inband = extract_outputs(archive, tmp_path / "inband")
    reference = io.BytesIO()
    with tarfile.open(fileobj=reference, mode="w") as tar:
        tar.add(src, arcname="out")
    reference.seek(0)
    classic = extract_outputs(reference, tmp_path / "classic")
    assert inband.rejected == [] == classic.rejected
    assert [p.name for p in inband.images] == ["00000-1.png", "b.png"]
    assert inband.result_json == {"seed": 1} == classic.result_json
    for name in ("00000-1.png", "b.png", "result.json", "notes.txt"):
        assert (tmp_path / "inband" / name).read_bytes() == (
            tmp_path / "classic" / name
        ).read_bytes()
    assert b"trailing-junk" not in (tmp_path / "inband" / "b.png").read_bytes()


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda d: (d / "link.png").symlink_to("/etc/passwd"), "links are not allowed"),
        (lambda d: os.link(d / "a.png", d / "hard.png"), "links are not allowed"),
        (lambda d: (d / "sub").mkdir(), "unexpected directory"),
        (lambda d: os.mkfifo(d / "pipe.png"), "not a regular file"),
        (lambda d: (d / "evil.sh").write_bytes(b"#!/bin/sh\n"), "allowlist"),
        (lambda d: (d / ".hidden.png").write_bytes(png()), "allowlist"),
        (lambda d: (d / "big.png").write_bytes(b"\0" * 2000), "larger than"),
    ],
)
def test_inline_entries_the_archive_check_refuses_are_refused(
    tmp_path: Path, make: Any, reason: str
) -> None:
    src = tmp_path / "out"
    src.mkdir()
    (src / "a.png").write_bytes(png())
    make(src)
    with pytest.raises(HostileInlineOutput) as info:
        _inline(_pieces(src), OutputLimits(max_file_bytes=1000))
    assert reason in info.value.rejected[0][1]


def test_inline_caps_and_protocol_breaks() -> None:
    data = b"x" * (OUTPUT_CHUNK_BYTES + 10)
    first = piece(data=data[:OUTPUT_CHUNK_BYTES], size=len(data))
    rest = piece(data=data[OUTPUT_CHUNK_BYTES:], size=len(data), offset=OUTPUT_CHUNK_BYTES)
    with pytest.raises(HostileInlineOutput, match="duplicate"):
        _inline([piece(data=b"1"), piece(data=b"1")])
    with pytest.raises(HostileInlineOutput, match="more than 2 members"):
        _inline([piece("out/a.png"), piece("out/b.png")], OutputLimits(max_members=2))
    with pytest.raises(ArchiveTooLargeError):
        _inline(
            [piece("out/a.png", b"1" * 60), piece("out/b.png", b"2" * 60)],
            OutputLimits(max_archive_bytes=100),
        )
    breaks = [
        [first],  # never completed
        [first, piece("out/b.png", b"1")],  # another file before the first ended
        [first, piece(data=data[OUTPUT_CHUNK_BYTES:], size=len(data), offset=5)],  # a gap
        [piece(data=b"abc", size=10), piece(data=b"defghij", size=10, offset=3)],  # after short
        [piece(data=b"abc", size=2)],  # more than the size
        [piece(data=b"", size=3)],  # an empty piece of a non-empty file
        [
            first,
            piece(data=data[OUTPUT_CHUNK_BYTES:], size=len(data) + 1, offset=OUTPUT_CHUNK_BYTES),
        ],
    ]
    for messages in breaks:
        with pytest.raises(InlineOutputError):
            _inline(messages).archive()
    bad_b64 = piece(size=3).model_copy(update={"data": "!!!!"})
    with pytest.raises(InlineOutputError, match="base64"):
        _inline([bad_b64])
    with _inline([first, rest]) as ok, ok.archive() as archive:
        with tarfile.open(fileobj=archive, mode="r:") as tar:
            member = tar.extractfile("out/a.png")
            assert member is not None and member.read() == data
