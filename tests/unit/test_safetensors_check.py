"""The safetensors validator: valid files pass, each broken rule names itself, junk is refused."""

from __future__ import annotations

import io
import json
import struct
import tarfile
import zipfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from assetmgr.errors import StoreError
from assetmgr.store.safetensors_check import (
    DEFAULT_MAX_HEADER_BYTES,
    DTYPE_BITS,
    InvalidSafetensorsError,
    PickleRefusedError,
    SafetensorsInfo,
    TensorInfo,
    UnsafeFileError,
    check_pickle_free,
    detect_format,
    validate_safetensors,
)

# --- building files -------------------------------------------------------------------------


def pack(header: bytes | str | dict[str, Any], data: bytes | int = 0, *, pad: int = 0) -> bytes:
    """A file: u64 LE header length, the header (+ `pad` spaces), then `data` (or that many 0s)."""
    if isinstance(header, dict):
        header = json.dumps(header, separators=(",", ":"))
    if isinstance(header, str):
        header = header.encode("utf-8")
    header += b" " * pad
    body = bytes(data) if isinstance(data, int) else data
    return struct.pack("<Q", len(header)) + header + body


def entry(dtype: str, shape: list[int], begin: int, end: int) -> dict[str, Any]:
    return {"dtype": dtype, "shape": shape, "data_offsets": [begin, end]}


def tile(*specs: tuple[str, str, list[int]]) -> tuple[dict[str, Any], int]:
    """Header entries laid out back to back, and the data length they need."""
    header: dict[str, Any] = {}
    pos = 0
    for name, dtype, shape in specs:
        n = DTYPE_BITS[dtype] // 8
        for d in shape:
            n *= d
        header[name] = entry(dtype, shape, pos, pos + n)
        pos += n
    return header, pos


def check(blob: bytes, **kw: Any) -> SafetensorsInfo:
    return validate_safetensors(io.BytesIO(blob), **kw)


def refused(blob: bytes, **kw: Any) -> str:
    with pytest.raises(InvalidSafetensorsError) as info:
        check(blob, **kw)
    assert isinstance(info.value, UnsafeFileError) and isinstance(info.value, StoreError)
    assert "\n" not in info.value.message and info.value.hint
    return info.value.message


DEMO_HEADER = (
    b'{"__metadata__":{"ss_output_name":"demo_lora"},'
    b'"lora_unet_demo.weight":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}'
)
DEMO = pack(DEMO_HEADER, struct.pack("<4f", 1, 2, 3, 4), pad=7)


def one(dtype: str = "F32", shape: list[int] | None = None, begin: int = 0) -> dict[str, Any]:
    shape = [4] if shape is None else shape
    n = DTYPE_BITS.get(dtype, 32) // 8
    for d in shape:
        n *= d
    return {"a": entry(dtype, shape, begin, begin + n)}


# --- valid files ----------------------------------------------------------------------------


def test_doc_example_file(tmp_path: Path) -> None:
    path = tmp_path / "demo.safetensors"
    path.write_bytes(DEMO)
    assert len(DEMO) == 152
    info = validate_safetensors(path)
    assert info.header_length == 128 and info.data_start == 136 and info.file_size == 152
    assert info.tensor_count == 1 and info.total_bytes == 16 and info.parameter_count == 4
    assert info.metadata == {"ss_output_name": "demo_lora"}
    assert info.tensors == {"lora_unet_demo.weight": TensorInfo("F32", (4,), (0, 16))}
    assert info.tensors["lora_unet_demo.weight"].nbytes == 16
    assert detect_format(path) == "safetensors" and check_pickle_free(path) == "safetensors"


def test_offsets_in_any_header_order() -> None:
    header = {
        "z.second": entry("F16", [2, 3], 8, 20),
        "a.first": entry("BF16", [4], 0, 8),
        "m.third": entry("U8", [1, 1, 1, 1, 1, 1, 1, 5], 20, 25),
    }
    info = check(pack(header, 25))
    assert list(info.tensors) == ["z.second", "a.first", "m.third"]  # header order kept
    assert info.tensors["m.third"].shape == (1, 1, 1, 1, 1, 1, 1, 5)
    assert info.total_bytes == 25 and info.metadata == {}


def test_every_dtype() -> None:
    header, size = tile(*((f"t.{d}", d, [3, 2]) for d in DTYPE_BITS))
    info = check(pack(header, size))
    assert {t.dtype for t in info.tensors.values()} == set(DTYPE_BITS)


def test_scalar_no_tensors_padding_and_unicode_names() -> None:
    assert check(pack({"s": entry("F64", [], 0, 8)}, 8)).tensors["s"].shape == ()
    empty = check(pack("{}"))
    assert empty.tensor_count == 0 and empty.total_bytes == 0
    assert check(pack({"__metadata__": {"k": "v"}}, pad=100)).metadata == {"k": "v"}
    name = "text_encoder.emb.<ünï>"
    meta = {"ss_tag_frequency": '{"a":\n\t1}', "ключ": "значение"}
    info = check(pack({"__metadata__": meta, name: entry("I8", [3], 0, 3)}, 3))
    assert name in info.tensors and info.metadata == meta


def test_inner_whitespace_is_json_and_allowed() -> None:
    text = '{\n  "a": {"dtype": "I16", "shape": [2], "data_offsets": [0, 4]}\n}'
    assert check(pack(text, 4)).tensors["a"].nbytes == 4


# --- every rule, broken once ------------------------------------------------------------------

A_HEADER = json.dumps(one(), separators=(",", ":"))

CASES: list[tuple[str, bytes, str]] = [
    (
        "tiny",
        b"\x05\x00\x00",
        "file is 3 bytes, too small for a safetensors header (needs 8 or more)",
    ),
    (
        "huge-n",
        struct.pack("<Q", DEFAULT_MAX_HEADER_BYTES + 1) + b"{}",
        f"safetensors header length {DEFAULT_MAX_HEADER_BYTES + 1} exceeds the cap of "
        f"{DEFAULT_MAX_HEADER_BYTES} bytes",
    ),
    (
        "u64-max",
        struct.pack("<Q", 2**64 - 1) + b"{}",
        f"safetensors header length {2**64 - 1} exceeds the cap of "
        f"{DEFAULT_MAX_HEADER_BYTES} bytes",
    ),
    (
        "past-eof",
        struct.pack("<Q", 500) + b"{}" + bytes(90),
        "safetensors header length 500 runs past the end of the 100-byte file",
    ),
    ("no-brace", pack(b' {"a":1}'), "safetensors header does not start with '{'"),
    ("empty-header", pack(b""), "safetensors header does not start with '{'"),
    ("bom", pack(b"\xef\xbb\xbf{}"), "safetensors header does not start with '{'"),
    (
        "utf8",
        pack(b'{"__metadata__":{"k":"\xff"}}'),
        "safetensors header is not valid UTF-8 (byte 22 of the header)",
    ),
    (
        "utf8-surrogate",
        pack(b'{"__metadata__":{"k":"\xed\xa0\x80"}}'),
        "safetensors header is not valid UTF-8 (byte 22 of the header)",
    ),
    (
        "newline-pad",
        pack(A_HEADER + "\n"),
        "safetensors header has bytes other than space padding after the JSON "
        f"(byte {len(A_HEADER)})",
    ),
    (
        "nul-pad",
        pack(A_HEADER + "  \x00"),
        "safetensors header has bytes other than space padding after the JSON "
        f"(byte {len(A_HEADER) + 2})",
    ),
    (
        "second-object",
        pack(A_HEADER + ' {"b":1}'),
        "safetensors header has bytes other than space padding after the JSON "
        f"(byte {len(A_HEADER) + 1})",
    ),
    (
        "json",
        pack('{"a":}'),
        "safetensors header is not valid JSON: Expecting value at character 5",
    ),
    (
        "raw-control",
        pack('{"__metadata__":{"k":"a\nb"}}'),
        "safetensors header is not valid JSON: Invalid control character at character 23",
    ),
    (
        "dup-top",
        pack('{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"a":{}}', 4),
        "duplicate key 'a' in safetensors header",
    ),
    (
        "dup-inner",
        pack('{"a":{"dtype":"F32","dtype":"F16","shape":[1],"data_offsets":[0,4]}}', 4),
        "duplicate key 'dtype' in safetensors header",
    ),
    (
        "dup-metadata",
        pack('{"__metadata__":{"x":"1","x":"2"}}'),
        "duplicate key 'x' in safetensors header",
    ),
    (
        "dup-metadata-key",
        pack('{"__metadata__":{},"__metadata__":{}}'),
        "duplicate key '__metadata__' in safetensors header",
    ),
    (
        "deep",
        pack('{"a":{"dtype":"F32","shape":[[1]],"data_offsets":[0,4]}}', 4),
        "safetensors header nests deeper than 3 levels or its brackets do not balance",
    ),
    (
        "very-deep",
        pack('{"a":' + "[" * 100_000 + "]" * 100_000 + "}"),
        "safetensors header nests deeper than 3 levels or its brackets do not balance",
    ),
    (
        "unbalanced",
        pack('{"a":[1,2}'),
        "safetensors header nests deeper than 3 levels or its brackets do not balance",
    ),
    (
        "nan",
        pack('{"a":{"dtype":"F32","shape":[NaN],"data_offsets":[0,4]}}', 4),
        "safetensors header contains the non-standard constant NaN",
    ),
    (
        "infinity",
        pack('{"__metadata__":{"k":-Infinity}}'),
        "safetensors header contains the non-standard constant -Infinity",
    ),
    (
        "float",
        pack('{"a":{"dtype":"F32","shape":[1.0],"data_offsets":[0,4]}}', 4),
        "safetensors header contains a float (1.0); only integers are allowed",
    ),
    (
        "float-exp",
        pack('{"a":{"dtype":"F32","shape":[1e999],"data_offsets":[0,4]}}', 4),
        "safetensors header contains a float (1e999); only integers are allowed",
    ),
    (
        "long-int",
        pack('{"a":{"dtype":"F32","shape":[' + "9" * 5000 + '],"data_offsets":[0,4]}}', 4),
        "safetensors header has an integer of more than 20 digits",
    ),
    (
        "metadata-list",
        pack('{"__metadata__":["a"]}'),
        "__metadata__ must map strings to strings, not list",
    ),
    (
        "metadata-int",
        pack('{"__metadata__":{"epochs":10}}'),
        "__metadata__ value of 'epochs' is int, not a string",
    ),
    (
        "metadata-null",
        pack('{"__metadata__":{"k":null}}'),
        "__metadata__ value of 'k' is NoneType, not a string",
    ),
    (
        "metadata-nested",
        pack('{"__metadata__":{"k":{"x":"y"}}}'),
        "__metadata__ value of 'k' is dict, not a string",
    ),
    (
        "metadata-nul",
        pack('{"__metadata__":{"k":"a\\u0000b"}}'),
        "__metadata__ value of 'k' contains the character U+0000",
    ),
    (
        "metadata-surrogate",
        pack('{"__metadata__":{"k":"\\ud800"}}'),
        "__metadata__ value of 'k' contains the character U+D800",
    ),
    (
        "metadata-key-control",
        pack('{"__metadata__":{"k\\u001b[31m":"v"}}'),
        "__metadata__ key 'k\\x1b[31m' contains the character U+001B",
    ),
    (
        "metadata-key-long",
        pack({"__metadata__": {"k" * 1025: "v"}}),
        "__metadata__ key '" + "k" * 80 + "'... is longer than 1024 characters",
    ),
    ("empty-name", pack({"": entry("F32", [1], 0, 4)}, 4), "a tensor has an empty name"),
    (
        "long-name",
        pack({"n" * 1025: entry("F32", [1], 0, 4)}, 4),
        "tensor name '" + "n" * 80 + "'... is longer than 1024 characters",
    ),
    (
        "name-control",
        pack({"a\x07b": entry("F32", [1], 0, 4)}, 4),
        "tensor name 'a\\x07b' contains the character U+0007",
    ),
    (
        "name-bidi",
        pack({"a\u202eb": entry("F32", [1], 0, 4)}, 4),
        "tensor name 'a\\u202eb' contains the character U+202E",
    ),
    (
        "name-surrogate",
        pack('{"\\udc00":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}', 4),
        "tensor name '\\udc00' contains the character U+DC00",
    ),
    ("entry-list", pack('{"a":[1,2]}'), "tensor 'a' entry is list, not an object"),
    ("entry-str", pack('{"a":"F32"}'), "tensor 'a' entry is str, not an object"),
    (
        "missing-key",
        pack('{"a":{"dtype":"F32","shape":[1]}}', 4),
        "tensor 'a' has keys ['dtype', 'shape']; expected exactly dtype, shape, data_offsets",
    ),
    (
        "extra-key",
        pack({"a": {**entry("F32", [1], 0, 4), "x": 1}}, 4),
        "tensor 'a' has keys ['data_offsets', 'dtype', 'shape', 'x']; "
        "expected exactly dtype, shape, data_offsets",
    ),
    ("dtype", pack(one("F4", [2]), 1), "tensor 'a' has unsupported dtype 'F4'"),
    ("dtype-case", pack(one("f32"), 16), "tensor 'a' has unsupported dtype 'f32'"),
    (
        "dtype-int",
        pack('{"a":{"dtype":32,"shape":[1],"data_offsets":[0,4]}}', 4),
        "tensor 'a' has unsupported dtype int",
    ),
    (
        "shape-negative",
        pack({"a": entry("F32", [2, -2], 0, 16)}, 16),
        "tensor 'a' shape must be a list of non-negative integers",
    ),
    (
        "shape-bool",
        pack('{"a":{"dtype":"F32","shape":[true],"data_offsets":[0,4]}}', 4),
        "tensor 'a' shape must be a list of non-negative integers",
    ),
    (
        "shape-str",
        pack('{"a":{"dtype":"F32","shape":"4","data_offsets":[0,16]}}', 16),
        "tensor 'a' shape must be a list of non-negative integers",
    ),
    (
        "rank",
        pack(one("U8", [1] * 9), 1),
        "tensor 'a' has 9 dimensions; at most 8 are allowed",
    ),
    (
        "offsets-three",
        pack('{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4,8]}}', 8),
        "tensor 'a' data_offsets must be two non-negative integers [BEGIN, END]",
    ),
    (
        "offsets-negative",
        pack('{"a":{"dtype":"F32","shape":[1],"data_offsets":[-4,0]}}', 4),
        "tensor 'a' data_offsets must be two non-negative integers [BEGIN, END]",
    ),
    (
        "offsets-bool",
        pack('{"a":{"dtype":"U8","shape":[1],"data_offsets":[false,true]}}', 1),
        "tensor 'a' data_offsets must be two non-negative integers [BEGIN, END]",
    ),
    (
        "offsets-reversed",
        pack({"a": entry("F32", [1], 4, 0)}, 4),
        "tensor 'a' data_offsets [4, 0] end before they begin",
    ),
    (
        "size-mismatch",
        pack({"a": entry("F32", [4], 0, 10)}, 10),
        "tensor 'a' data_offsets [0, 10] do not match shape [4] F32 (16 bytes)",
    ),
    (
        "size-overflow",
        pack({"a": entry("F64", [2**62, 2**62], 0, 16)}, 16),
        "tensor 'a' data_offsets [0, 16] do not match shape "
        f"[{2**62}, {2**62}] F64 ({2**127} bytes)",
    ),
    (
        "zero-size",
        pack({"a": entry("F32", [0, 4], 0, 0)}),
        "tensor 'a' has zero size (shape [0, 4]); zero-size tensors are refused",
    ),
    (
        "zero-size-sharing",
        pack({"a": entry("F32", [1], 0, 4), "b": entry("F32", [0], 0, 0)}, 4),
        "tensor 'b' has zero size (shape [0]); zero-size tensors are refused",
    ),
    (
        "first-not-zero",
        pack(one(begin=4), 20),
        "tensor 'a' starts at 4 but the first tensor must start at 0",
    ),
    (
        "gap",
        pack({"a": entry("F32", [1], 0, 4), "b": entry("F32", [1], 8, 12)}, 12),
        "tensor 'b' starts at 8 but the previous tensor 'a' ends at 4 (a gap)",
    ),
    (
        "overlap",
        pack({"a": entry("F32", [2], 0, 8), "b": entry("F32", [2], 4, 12)}, 12),
        "tensor 'b' data_offsets [4, 12] overlap tensor 'a' [0, 8]",
    ),
    (
        "same-offsets",
        pack({"b": entry("F32", [1], 0, 4), "a": entry("F32", [1], 0, 4)}, 4),
        "tensor 'b' data_offsets [0, 4] overlap tensor 'a' [0, 4]",
    ),
    (
        "past-data",
        pack(one(), 8),
        "tensor data runs to byte 16 but the file holds 8 after the header",
    ),
    (
        "trailing",
        pack(one(), 20),
        "the file has 4 bytes after the last tensor (tensor data ends at 16 of 20)",
    ),
    (
        "polyglot-tail",
        pack(one(), b"\0" * 16 + b"PK\x05\x06" + b"\0" * 18),
        "the file has 22 bytes after the last tensor (tensor data ends at 16 of 38)",
    ),
    (
        "no-tensors-but-data",
        pack("{}", 3),
        "the file has 3 bytes after the last tensor (tensor data ends at 0 of 3)",
    ),
]


@pytest.mark.parametrize(("blob", "message"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_rule_violations(blob: bytes, message: str) -> None:
    assert refused(blob) == message


def test_header_cap_is_a_parameter() -> None:
    blob = pack(one(), 16, pad=100)
    assert check(blob).header_length == len(A_HEADER) + 100
    assert refused(blob, max_header_bytes=50) == (
        f"safetensors header length {len(A_HEADER) + 100} exceeds the cap of 50 bytes"
    )


def test_short_read_from_truncated_stream() -> None:
    class Lying(io.BytesIO):
        def seek(self, pos: int, whence: int = 0) -> int:
            return 1000 if whence == 2 else super().seek(pos, whence)

    message = "file ended while reading the safetensors header"
    with pytest.raises(InvalidSafetensorsError, match=message):
        validate_safetensors(Lying(pack(one(), 16)[:40]))


def test_huge_hostile_header_is_quick() -> None:
    # Within the cap: 8 million brackets must be refused before json recurses into them.
    blob = pack('{"a":' + "[" * 4_000_000 + "]" * 4_000_000 + "}")
    assert "nests deeper" in refused(blob)


# --- format detection and pickle refusal --------------------------------------------------------


def zip_bytes() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("archive/data.pkl", b"\x80\x02}q\x00.")
    return buf.getvalue()


def tar_bytes() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        info = tarfile.TarInfo("pickle")
        info.size = 3
        tf.addfile(info, io.BytesIO(b"\x80\x02."))
    return buf.getvalue()


@pytest.mark.parametrize(
    ("blob", "kind"),
    [
        (DEMO, "safetensors"),
        (pack("{}"), "safetensors"),
        (pack(one(), 16, pad=640 - len(A_HEADER)), "safetensors"),  # N=640: 80 02 ...
        (b"GGUF\x03\x00\x00\x00" + bytes(40), "gguf"),
        (zip_bytes(), "pickle"),
        (tar_bytes(), "pickle"),
        (b"\x80\x02}q\x00.", "pickle"),
        (b"\x80\x05\x95\x10\x00\x00\x00\x00\x00\x00\x00}\x94.", "pickle"),
        (b"\x80\x01junk", "unknown"),
        (b"", "unknown"),
        (b"hello world", "unknown"),
        (bytes(i % 251 for i in range(4096)), "unknown"),
        (struct.pack("<Q", 100) + b"{" + bytes(10), "unknown"),  # header longer than the file
    ],
    ids=[
        "demo",
        "empty-header",
        "n640",
        "gguf",
        "zip",
        "tar",
        "pickle2",
        "pickle5",
        "pickle1",
        "empty",
        "text",
        "ramp",
        "short",
    ],
)
def test_detect_format(tmp_path: Path, blob: bytes, kind: str) -> None:
    path = tmp_path / "model.safetensors"
    path.write_bytes(blob)
    assert detect_format(path) == kind


def test_n640_really_starts_like_a_pickle() -> None:
    blob = pack(one(), 16, pad=640 - len(A_HEADER))
    assert blob[:2] == b"\x80\x02" and check(blob).tensor_count == 1


@pytest.mark.parametrize("suffix", [".ckpt", ".pt", ".PTH", ".bin", ".pkl", ".pickle"])
def test_pickle_extensions_refused(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"model{suffix}"
    path.write_bytes(DEMO)  # even with safetensors bytes inside
    with pytest.raises(PickleRefusedError) as info:
        check_pickle_free(path)
    assert info.value.message == (
        f"model{suffix}: {suffix.lower()} files are pickle checkpoints and are refused"
    )
    assert isinstance(info.value, UnsafeFileError)


@pytest.mark.parametrize("blob", [zip_bytes(), tar_bytes(), b"\x80\x04K\x01."])
def test_pickle_magic_refused(tmp_path: Path, blob: bytes) -> None:
    path = tmp_path / "innocent.safetensors"
    path.write_bytes(blob)
    with pytest.raises(PickleRefusedError, match="starts with pickle, zip or tar magic bytes"):
        check_pickle_free(path)


def test_check_pickle_free_passes_others(tmp_path: Path) -> None:
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF" + bytes(20))
    assert check_pickle_free(gguf) == "gguf"


# --- hostile input never escapes as another exception -----------------------------------------


def outcome(blob: bytes) -> SafetensorsInfo | str:
    try:
        info = check(blob)
    except InvalidSafetensorsError as exc:
        assert exc.message and "\n" not in exc.message
        return exc.message
    # Whatever passes is self-consistent.
    assert info.data_start + info.total_bytes == info.file_size == len(blob)
    assert sum(t.nbytes for t in info.tensors.values()) == info.total_bytes
    assert info.tensor_count == len(info.tensors)
    assert all(t.nbytes > 0 and t.dtype in DTYPE_BITS for t in info.tensors.values())
    assert all(isinstance(v, str) for v in info.metadata.values())
    return info


def consistent(blob: bytes) -> None:
    assert outcome(blob) == outcome(blob)


json_leaf = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=8),
    st.sampled_from(list(DTYPE_BITS) + ["dtype", "shape", "data_offsets", "__metadata__"]),
)
json_value = st.recursive(
    json_leaf,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(
            st.sampled_from(["dtype", "shape", "data_offsets", "__metadata__", "a", "b", ""]),
            inner,
            max_size=4,
        ),
    ),
    max_leaves=20,
)

HOSTILE = settings(max_examples=300, deadline=2000, suppress_health_check=[HealthCheck.too_slow])


@HOSTILE
@given(st.binary(max_size=600))
@example(b"")
@example(struct.pack("<Q", 2) + b"{}")
def test_random_bytes(blob: bytes) -> None:
    consistent(blob)


@HOSTILE
@given(st.binary(max_size=300), st.integers(0, 2**64 - 1))
def test_random_header_lengths(rest: bytes, n: int) -> None:
    consistent(struct.pack("<Q", n) + rest)


@HOSTILE
@given(st.dictionaries(st.text(max_size=6), json_value, max_size=5), st.integers(0, 64))
def test_random_json_headers(header: dict[str, Any], data_len: int) -> None:
    consistent(pack(json.dumps(header), data_len))


@HOSTILE
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["a", "b", "c", "d"]),
            st.sampled_from(list(DTYPE_BITS) + ["F4", "C64"]),
            st.lists(st.integers(-1, 3), max_size=3),
            st.integers(-2, 40),
            st.integers(-2, 40),
        ),
        max_size=5,
    ),
    st.integers(0, 80),
)
def test_random_offsets_and_duplicates(
    specs: list[tuple[str, str, list[int], int, int]], data_len: int
) -> None:
    # Raw text so that repeated names stay duplicate keys instead of collapsing in a dict.
    parts = [
        f'"{name}":{{"dtype":"{dtype}","shape":{shape},"data_offsets":[{b},{e}]}}'
        for name, dtype, shape, b, e in specs
    ]
    consistent(pack("{" + ",".join(parts) + "}", data_len))


VALID = pack(
    {
        "__metadata__": {"format": "pt", "ss_network_dim": "4"},
        **tile(("w.down", "F16", [4, 8]), ("w.up", "BF16", [8, 4]), ("w.alpha", "F32", []))[0],
    },
    132,
)


@HOSTILE
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["flip", "insert", "delete"]),
            st.integers(0, len(VALID) - 1),
            st.integers(0, 255),
        ),
        min_size=1,
        max_size=4,
    )
)
def test_mutated_valid_file(edits: list[tuple[str, int, int]]) -> None:
    assert isinstance(outcome(VALID), SafetensorsInfo)
    blob = bytearray(VALID)
    for op, pos, value in edits:
        pos = min(pos, len(blob) - 1) if blob else 0
        if op == "flip" and blob:
            blob[pos] = value
        elif op == "insert":
            blob.insert(pos, value)
        elif blob:
            del blob[pos]
    consistent(bytes(blob))


@HOSTILE
@given(st.integers(1, 50), st.sampled_from(["[", "{", '{"a":', "[{}", '["{']), st.booleans())
def test_nested_junk(depth: int, opener: str, close: bool) -> None:
    closer = {"[": "]", "{": "}", '{"a":': "}", "[{}": "]", '["{': '"]'}[opener]
    body = opener * depth + (closer * depth if close else "")
    consistent(pack('{"a":' + body + "}"))
    consistent(pack('{"__metadata__":' + body + "}"))
