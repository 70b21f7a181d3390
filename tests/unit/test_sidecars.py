"""Sidecars of every shape old and new tools wrote, and of shapes nobody wrote.

Examples pin what each known shape contributes; property tests drive the real `read_sidecars`
and the real importer on generated folders: any JSON value and any bytes in any sidecar give
the model file an outcome (it is imported) and the sidecar one too (read, or listed with a
reason), never an exception.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine
from sqlmodel import Session

from assetmgr.store.blobs import BlobStore
from assetmgr.store.detect import Detected, detect, with_folder_hint
from assetmgr.store.importer import import_folder
from assetmgr.store.safetensors_check import validate_safetensors
from assetmgr.store.sidecars import SIDECAR_SUFFIXES, read_sidecars, user_meta
from catalog import claims
from catalog.db import open_catalog
from catalog.usermeta import UserMeta
from tests import model_layouts as layouts

SHA = "AB" * 32


def write(folder: Path, name: str, content: bytes | str | Any) -> Path:
    path = folder / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif isinstance(content, str):
        path.write_text(content, encoding="utf-8")
    else:
        path.write_text(json.dumps(content), encoding="utf-8")
    return path


def issues(folder: Path) -> list[tuple[str, str, str]]:
    sidecars = read_sidecars(folder / "m.safetensors", sha256=SHA)
    return [(Path(i.path).name, i.code, i.reason) for i in sidecars.issues]


# --- the shapes old and new tools wrote -----------------------------------------------------

OLD_HELPER_INFO = {  # Civitai Helper, early 2023: no modelId, no hashes, words as one string
    "id": 11745,
    "name": "v1.0",
    "trainedWords": "inkwash, brush strokes",
    "baseModel": "SD 1.5",
    "model": {"name": "Inkwash", "type": "LORA"},
    "files": [{"id": 12001, "name": "inkwash.safetensors", "sizeKB": 9000.5, "type": "Model"}],
    "images": [{"url": "https://image.civitai.com/x.jpeg", "nsfw": False}],
}


def test_an_early_civitai_helper_info_is_read_and_its_claim_cannot_be_checked(
    tmp_path: Path,
) -> None:
    write(tmp_path, "m.civitai.info", OLD_HELPER_INFO)
    sidecars = read_sidecars(tmp_path / "m.safetensors", sha256=SHA)
    assert sidecars.issues == []
    claim = sidecars.claim
    assert claim is not None and claim.id == 11745 and claim.model_id is None
    assert claim.trained_words == ["inkwash, brush strokes"]
    assert claim.model is not None and claim.model.poi is None
    refused = claims.claimed_file(claim, SHA)
    assert refused == claims.ClaimRefused(
        "claim-no-hash",
        "claims version 11745, but lists no SHA256 to check it by (an older sidecar)",
    )


def test_a_whole_model_object_gives_the_version_that_lists_the_file(tmp_path: Path) -> None:
    other = {"id": 2, "name": "v2", "files": [{"id": 20, "hashes": {"SHA256": "CD" * 32}}]}
    mine = {"id": 1, "name": "v1", "files": [{"id": 10, "hashes": {"sha256": SHA.lower()}}]}
    write(
        tmp_path,
        "m.civitai.info",
        {"id": 77, "name": "Model", "type": "LoCon", "nsfw": None, "modelVersions": [other, mine]},
    )
    claim = read_sidecars(tmp_path / "m.safetensors", sha256=SHA).claim
    assert claim is not None and (claim.id, claim.model_id) == (1, 77)
    assert claim.model is not None and (claim.model.name, claim.model.type) == ("Model", "LoCon")
    matched = claims.claimed_file(claim, SHA)
    assert isinstance(matched, type(claim.files[0])) and matched.id == 10


def test_a_version_without_model_id_takes_it_from_its_nested_model(tmp_path: Path) -> None:
    info = {"id": 5, "model": {"id": 6, "name": "N"}, "files": [{"id": 7}]}
    write(tmp_path, "m.civitai.info", info)
    claim = read_sidecars(tmp_path / "m.safetensors").claim
    assert claim is not None and claim.model_id == 6


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"", ("sidecar-malformed", "not valid JSON")),
        (b"\x00\x01garbage", ("sidecar-malformed", "not valid JSON")),
        (b"[" * 100_000, ("sidecar-malformed", "not valid JSON")),
        ("null", ("sidecar-malformed", "not a JSON object")),
        ("[{}]", ("sidecar-malformed", "not a JSON object")),
        ({"extensions": {"sd_civitai_helper": {}}}, ("sidecar-no-version", None)),
        ({"id": "not a number"}, ("sidecar-malformed", "not a Civitai version object")),
        ({"modelVersions": "x"}, ("sidecar-no-version", None)),
        (b" " * (4 * 2**20 + 1), ("sidecar-unreadable", "larger than 4 MiB")),
    ],
    ids=[
        "empty",
        "binary",
        "deep",
        "null",
        "list",
        "no-id",
        "bad-id",
        "versions-not-a-list",
        "too-big",
    ],
)
def test_an_unusable_info_is_listed_with_its_reason(
    tmp_path: Path, content: Any, expected: tuple[str, str | None]
) -> None:
    write(tmp_path, "m.civitai.info", content)
    ((name, code, reason),) = issues(tmp_path)
    assert (name, code) == ("m.civitai.info", expected[0])
    if expected[1] is not None:
        assert reason == expected[1]


def test_a1111_json_from_any_tool_and_encoding(tmp_path: Path) -> None:
    body = {
        "activation text": ["inkwash", " brush "],
        "preferred weight": "0.65",
        "notes": "mine\u0000, with a NUL and a lone \ud800 surrogate",
        "sd version": "SDXL",
        "description": 42,
    }
    # Windows tools write a byte-order mark, PowerShell UTF-16.
    write(tmp_path, "m.json", "\ufeff".encode() + json.dumps(body).encode())
    write(
        tmp_path,
        "m.metadata.json",
        json.dumps({"usage_tips": '{"strength": NaN}'}).encode("utf-16"),
    )
    sidecars = read_sidecars(tmp_path / "m.safetensors")
    assert sidecars.issues == []
    meta = user_meta(sidecars, claimed_words=None)
    assert meta == {
        "activation_text": "inkwash, brush",
        "preferred_weight": 0.65,
        "notes": "mine, with a NUL and a lone \ufffd surrogate",
        "sd_version": "SDXL",
        "source": "a1111-json",
    }


def test_non_finite_and_odd_numbers_never_reach_the_catalog(tmp_path: Path) -> None:
    write(tmp_path, "m.json", '{"preferred weight": NaN, "notes": "x"}')
    write(tmp_path, "m.metadata.json", '{"usage_tips": {"strength": 1e999}, "notes": 5}')
    meta = user_meta(read_sidecars(tmp_path / "m.safetensors"), claimed_words=None)
    assert meta == {"notes": "x", "source": "a1111-json"}


def test_lora_manager_block_without_model_id_claims_nothing(tmp_path: Path) -> None:
    write(
        tmp_path,
        "m.metadata.json",
        {"civitai": {"id": 3, "trainedWords": ["w"]}, "usage_tips": '{"strength": "0.8"}'},
    )
    sidecars = read_sidecars(tmp_path / "m.safetensors")
    assert sidecars.claim is None and sidecars.issues == []
    assert user_meta(sidecars, claimed_words=None) == {
        "preferred_weight": 0.8,
        "source": "lora-manager",
    }


# --- folder names as type hints -------------------------------------------------------------


def detected(blob: bytes) -> Detected:
    import io

    return detect(validate_safetensors(io.BytesIO(blob)))


@pytest.mark.parametrize(
    ("blob", "folders", "expected"),
    [
        (layouts.esrgan(), ["ESRGAN", "models"], ("Upscaler", "Other", "ESRGAN")),
        (layouts.esrgan(), ["upscale_models", "models"], ("Upscaler", "Other", "upscale_models")),
        (layouts.esrgan(), ["RealESRGAN"], ("Upscaler", "Other", "RealESRGAN")),
        (layouts.controlnet(), ["ControlNet"], ("Controlnet", "Other", "ControlNet")),
        (layouts.controlnet(), ["controlnet"], ("Controlnet", "Other", "controlnet")),
        (layouts.lora(), ["LyCORIS"], ("LoCon", "SD 1.5", "LyCORIS")),
        (layouts.lora(), ["Lora"], ("LORA", "SD 1.5", None)),
        (layouts.lora(), ["loras"], ("LORA", "SD 1.5", None)),
        (layouts.sd15_unet(), ["unet"], ("UNet", "SD 1.5", "unet")),
        (layouts.sd15_unet(), ["checkpoints"], ("Checkpoint", "SD 1.5", None)),
        # a clear header is never overridden by its folder
        (layouts.sd15_checkpoint(), ["Lora"], ("Checkpoint", "SD 1.5", None)),
        (layouts.sd15_checkpoint(), ["unet"], ("Checkpoint", "SD 1.5", None)),
        (layouts.vae(), ["Lora"], ("VAE", "Other", None)),
        (layouts.embedding(), ["VAE"], ("TextualInversion", "SD 1.5", None)),
        (layouts.lora(), ["ESRGAN"], ("LORA", "SD 1.5", None)),
        # the nearest known name wins; a base-model sub-folder fills only an unknown base
        (layouts.esrgan(), ["sdxl", "Lora", "ESRGAN"], ("LORA", "SDXL 1.0", "Lora")),
        (layouts.lora(), ["sdxl", "Lora"], ("LORA", "SD 1.5", None)),
        (layouts.esrgan(), ["my stuff", "2024"], ("Other", "Other", None)),
    ],
)
def test_folder_names_break_ties_and_fill_unknowns_only(
    blob: bytes, folders: list[str], expected: tuple[str, str, str | None]
) -> None:
    result = with_folder_hint(detected(blob), folders)
    assert (result.model_type, result.base_model, result.hint) == expected


# --- any JSON, any bytes: a per-file outcome, never an exception ----------------------------

json_leaf = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12)
    | st.sampled_from(["$SHA", "\ud800", "a\x00b", "\ufeff", "SDXL", "SD1", "LORA", "0.7"])
)
FIELDS = [
    "id",
    "modelId",
    "model",
    "name",
    "type",
    "files",
    "hashes",
    "SHA256",
    "trainedWords",
    "modelVersions",
    "civitai",
    "usage_tips",
    "strength",
    "activation text",
    "preferred weight",
    "notes",
    "sd version",
    "base_model",
    "primary",
]
json_value = st.recursive(
    json_leaf,
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=4), inner, max_size=5)
    ),
    max_leaves=16,
)
ids = st.integers(-3, 2**31 + 3) | st.sampled_from([0, "12", 1.5, None])
file_like = st.fixed_dictionaries(
    {"id": ids},
    optional={"hashes": st.fixed_dictionaries({"SHA256": st.sampled_from(["$SHA", SHA, "zz"])})},
)
version_like = st.fixed_dictionaries(
    {"id": ids},
    optional={
        "modelId": ids,
        "model": json_value,
        "files": st.lists(file_like, max_size=2),
        "trainedWords": json_value,
        "baseModel": json_value,
    },
)
info_like = version_like | st.fixed_dictionaries(
    {"id": ids, "modelVersions": st.lists(version_like, max_size=2)}, optional={"type": json_leaf}
)
json_text = (json_value | info_like).map(lambda value: json.dumps(value, allow_nan=True).encode())
sidecar_content = (
    st.none()
    | st.binary(max_size=200)
    | json_text
    | st.tuples(st.sampled_from([b"\xef\xbb\xbf", b"\xff\xfe", b""]), json_text).map(
        lambda parts: parts[0] + parts[1]
    )
)
sidecars_strategy = st.tuples(sidecar_content, sidecar_content, sidecar_content)


def place_sidecars(folder: Path, stem: str, contents: tuple[Any, ...], sha: str) -> list[Path]:
    written = []
    for suffix, content in zip(SIDECAR_SUFFIXES, contents, strict=True):
        if content is None:
            continue
        path = folder / f"{stem}{suffix}"
        path.write_bytes(content.replace(b"$SHA", sha.encode()))
        written.append(path)
    return written


def accounted_sidecars(read: list[str], ignored: list[str], written: list[Path]) -> None:
    for path in written:
        assert str(path) in read or str(path) in ignored, path


@settings(max_examples=150, deadline=None)
@given(sidecars_strategy)
def test_read_sidecars_gives_every_sidecar_an_outcome(contents: tuple[Any, ...]) -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        written = place_sidecars(folder, "m", contents, SHA)
        sidecars = read_sidecars(folder / "m.safetensors", sha256=SHA)
        accounted_sidecars(sidecars.read, [i.path for i in sidecars.issues], written)
        meta = user_meta(sidecars, claimed_words=["w"])
        for value in (meta or {}).values():
            if isinstance(value, float):
                assert math.isfinite(value)
            if isinstance(value, str):
                assert "\x00" not in value
                value.encode("utf-8")  # no lone surrogates


@pytest.fixture(scope="module")
def catalog(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Engine, BlobStore, Path]]:
    root = tmp_path_factory.mktemp("sidecar-imports")
    engine = open_catalog(f"sqlite:///{root / 'catalog.sqlite3'}")
    yield engine, BlobStore(root / "store"), root
    engine.dispose()


_fills = itertools.count(1)


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(sidecars_strategy)
def test_any_sidecar_leaves_its_model_file_imported(
    catalog: tuple[Engine, BlobStore, Path], contents: tuple[Any, ...]
) -> None:
    engine, store, root = catalog
    n = next(_fills)
    folder = root / f"case-{n}"
    folder.mkdir()
    model = layouts.st_bytes({"lora_unet_x.lora_down.weight": (2, 4)}, {"case": str(n)}, n)
    (folder / "m.safetensors").write_bytes(model)
    import hashlib

    sha = hashlib.sha256(model).hexdigest().upper()
    written = place_sidecars(folder, "m", contents, sha)

    report = import_folder(engine, store, None, folder)

    assert report.stopped is None and report.skipped == [] and report.accounted
    (imported,) = report.imported
    assert imported.sha256 == sha
    accounted_sidecars(imported.sidecars, [i.path for i in report.ignored_sidecars], written)
    with Session(engine) as session:
        meta = session.get(UserMeta, imported.version_id)
        if meta is not None and meta.preferred_weight is not None:
            assert math.isfinite(meta.preferred_weight)


def test_a_sidecars_base_model_fills_what_the_header_lacks_and_the_folder_comes_after(
    catalog: tuple[Engine, BlobStore, Path],
) -> None:
    engine, store, root = catalog
    folder = root / "base-hints" / "Lora" / "pony"
    folder.mkdir(parents=True)
    no_base = {"lora_unet_mid.lora_down.weight": (4, 8)}  # a LoRA whose base nothing shows
    (folder / "a1111.safetensors").write_bytes(layouts.st_bytes(no_base, fill=201))
    (folder / "a1111.json").write_text(json.dumps({"sd version": "SDXL"}))
    (folder / "lm.safetensors").write_bytes(layouts.st_bytes(no_base, fill=202))
    (folder / "lm.metadata.json").write_text(json.dumps({"base_model": "Illustrious"}))
    (folder / "made_up.safetensors").write_bytes(layouts.st_bytes(no_base, fill=203))
    (folder / "made_up.metadata.json").write_text(json.dumps({"base_model": "\x1b[2J"}))
    (folder / "clear.safetensors").write_bytes(layouts.lora(204))  # the header says SD 1.5
    (folder / "clear.json").write_text(json.dumps({"sd version": "SDXL"}))

    report = import_folder(engine, store, None, root / "base-hints")

    found = {
        Path(f.path).stem: (f.model_type, f.base_model, f.folder_hint) for f in report.imported
    }
    assert found == {
        "a1111": ("LORA", "SDXL 1.0", None),
        "lm": ("LORA", "Illustrious", None),
        "made_up": ("LORA", "Pony", "pony"),
        "clear": ("LORA", "SD 1.5", None),
    }
