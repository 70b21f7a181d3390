"""Import of existing A1111/ComfyUI folders (with sidecars), export, updates and duplicates."""

from __future__ import annotations

import json
import os
import pickle
import struct
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine, select
from sqlmodel import Session

from assetmgr.store.blobs import BlobStore
from assetmgr.store.exporter import export_library
from assetmgr.store.importer import import_folder
from assetmgr.store.service import StoreService
from catalog.civitai.client import CivitaiClient
from catalog.models import LocalFile, Model
from catalog.updates import find_duplicates, find_updates
from catalog.usermeta import UserMeta
from tests.fakeciv import FakeCatalog, FakeCivitai


def st_bytes(
    tensors: dict[str, tuple[int, ...]], metadata: dict[str, str] | None = None, fill: int = 0
) -> bytes:
    """A valid safetensors file of F16 tensors with the given shapes, filled with `fill`."""
    header: dict[str, Any] = {}
    if metadata:
        header["__metadata__"] = metadata
    offset = 0
    for name, shape in tensors.items():
        n = 2
        for d in shape:
            n *= d
        header[name] = {"dtype": "F16", "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw + bytes([fill % 256]) * offset


ATTN2_TO_K = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k"


def sd15_lora(fill: int = 1, meta: dict[str, str] | None = None) -> bytes:
    return st_bytes(
        {
            "lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight": (4, 768),
            "lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_up.weight": (768, 4),
            f"{ATTN2_TO_K}.lora_down.weight": (4, 768),
            f"{ATTN2_TO_K}.lora_up.weight": (320, 4),
        },
        meta,
        fill,
    )


def open_versions(fake_catalog: FakeCatalog, n: int) -> list[int]:
    out = []
    for m in fake_catalog.models.values():
        if m.mode is None and m.status == "Published" and not m.nsfw and m.id < 700000:
            for v in m.published_versions:
                if (
                    not v.require_auth
                    and v.usage_control == "Download"
                    and v.early_access_deadline is None
                ):
                    out.append(v.id)
                    break
        if len(out) == n:
            return out
    raise AssertionError("not enough open versions")


@pytest.fixture
def store() -> BlobStore:
    return BlobStore(Path(os.environ["ASSETMGR_HOME"]) / "store")


def snapshot_dir(folder: Path) -> dict[str, tuple[int, int, bytes]]:
    return {
        str(p.relative_to(folder)): (p.stat().st_mtime_ns, p.stat().st_size, p.read_bytes())
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_import_a1111_folder_with_sidecars(
    engine: Engine,
    store: BlobStore,
    client: CivitaiClient,
    fake: FakeCivitai,
    fake_catalog: FakeCatalog,
    tmp_path: Path,
) -> None:
    v_hash, v_info, v_lm, v_other = open_versions(fake_catalog, 4)
    src = tmp_path / "webui" / "models" / "Lora"
    src.mkdir(parents=True)
    known = fake_catalog.add_file_bytes(v_hash, sd15_lora(fill=1))
    (src / "known_by_hash.safetensors").write_bytes(known.content)
    (src / "known_by_hash.json").write_text(
        json.dumps(
            {
                "activation text": "inkwash style, brush",
                "preferred weight": 0.7,
                "notes": "mine",
                "sd version": "SD1",
            }
        )
    )
    by_info = fake_catalog.add_file_bytes(v_info, sd15_lora(fill=2))
    (src / "known_by_info.safetensors").write_bytes(by_info.content)
    info = httpx.get(f"{fake.base_url}/api/v1/model-versions/{v_info}").json()
    (src / "known_by_info.civitai.info").write_text(json.dumps(info))
    by_lm = fake_catalog.add_file_bytes(v_lm, sd15_lora(fill=3))
    (src / "lm.safetensors").write_bytes(by_lm.content)
    (src / "lm.metadata.json").write_text(
        json.dumps(
            {
                "sha256": by_lm.hashes["SHA256"].lower(),
                "civitai": info | {"id": v_lm},
                "usage_tips": json.dumps({"strength": 0.55}),
            }
        )
    )
    # A sidecar naming the wrong version: the file's hash decides, the sidecar is listed.
    other = fake_catalog.add_file_bytes(v_other, sd15_lora(fill=6))
    (src / "misnamed.safetensors").write_bytes(other.content)
    (src / "misnamed.civitai.info").write_text(json.dumps(info))
    (src / "my_private_lora.safetensors").write_bytes(sd15_lora(fill=4))
    (src / "my_private_lora.civitai.info").write_text("{}")  # Civitai Helper: not on Civitai
    (src / "broken.safetensors").write_bytes(sd15_lora(fill=5) + b"polyglot tail")
    (src / "evil.ckpt").write_bytes(pickle.dumps({"state_dict": {"w": [0.5] * 8}}, protocol=4))
    before = snapshot_dir(tmp_path / "webui")
    fake.reset_log()

    report = import_folder(engine, store, client, tmp_path / "webui")

    assert snapshot_dir(tmp_path / "webui") == before  # originals untouched
    data = report.as_json()
    assert data["scanned"] == 7
    codes = {Path(s.path).name: s.code for s in report.skipped}
    assert codes == {"broken.safetensors": "invalid-safetensors", "evil.ckpt": "pickle-refused"}
    assert data["links"] == []
    assert data["ignored_sidecars"] == [
        {
            "path": str(src / "misnamed.civitai.info"),
            "code": "claim-overruled",
            "reason": f"claims version {v_info}; the file's SHA256 says version {v_other}",
            "file": str(src / "misnamed.safetensors"),
        }
    ]
    by_name = {Path(f.path).name: f for f in report.imported}
    assert by_name["known_by_hash.safetensors"].source == "civitai"
    assert by_name["known_by_hash.safetensors"].file_id == known.id
    assert by_name["known_by_info.safetensors"].file_id == by_info.id
    assert by_name["misnamed.safetensors"].version_id == v_other
    assert by_name["my_private_lora.safetensors"].source == "local"
    # One bulk by-hash request for the files no sidecar identified.
    assert fake.count("/api/v1/model-versions/by-hash") == 1
    with Session(engine) as session:
        meta = session.get(UserMeta, v_hash)
        assert meta is not None and meta.activation_text == "inkwash style, brush"
        assert meta.preferred_weight == 0.7 and meta.notes == "mine"
        lm_meta = session.get(UserMeta, by_name["lm.safetensors"].version_id)
        assert lm_meta is not None and lm_meta.preferred_weight == 0.55
        local_model = session.get(Model, by_name["my_private_lora.safetensors"].model_id)
        assert local_model.source == "local" and local_model.type == "LORA"
        assert local_model.name == "my_private_lora"
        assert local_model.versions[0].base_model == "SD 1.5"
        states = {r.state for r in session.execute(select(LocalFile)).scalars()}
        assert states == {"verified"}
    for f in report.imported:
        blob = store.blob_path(f.sha256)
        assert blob.exists()
        assert blob.stat().st_ino == Path(f.path).stat().st_ino  # hardlinked, same volume

    # A second import finds everything in the hash cache and changes nothing.
    again = import_folder(engine, store, client, tmp_path / "webui")
    assert sorted(f.file_id for f in again.imported) == sorted(f.file_id for f in report.imported)


def test_unknown_files_appear_in_models_list_local(
    engine: Engine, store: BlobStore, tmp_path: Path
) -> None:
    src = tmp_path / "models"
    src.mkdir()
    (src / "alpha.safetensors").write_bytes(sd15_lora(fill=7))
    report = import_folder(engine, store, None, src)
    assert [f.source for f in report.imported] == ["local"]
    from catalog import repo

    with Session(engine) as session:
        rows = repo.list_models(session, local_only=True, limit=10)
        objects = [repo.model_to_dict(r) for r in rows]
    assert [o["name"] for o in objects] == ["alpha"]
    f = objects[0]["versions"][0]["files"][0]
    assert f["local"]["state"] == "verified"
    assert f["hashes"]["SHA256"] == report.imported[0].sha256


@pytest.mark.parametrize("layout", ["a1111", "comfyui"])
def test_export_then_import_reads_back(
    engine: Engine,
    store: BlobStore,
    client: CivitaiClient,
    fake: FakeCivitai,
    fake_catalog: FakeCatalog,
    tmp_path: Path,
    layout: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    (vid,) = open_versions(fake_catalog, 1)
    f = fake_catalog.add_file_bytes(vid, sd15_lora(fill=9))
    src = tmp_path / "in"
    src.mkdir()
    (src / "x.safetensors").write_bytes(f.content)
    (src / "x.json").write_text(
        json.dumps({"activation text": "zeta word", "preferred weight": 0.8})
    )
    (src / "local_one.safetensors").write_bytes(sd15_lora(fill=11))
    import_folder(engine, store, client, src)

    out = tmp_path / "out"
    report = export_library(engine, store, out, layout=layout)
    assert len(report.written) == 2
    model_files = sorted(out.rglob("*.safetensors"))
    assert len(model_files) == 2
    lora_dir = out / ("models/Lora" if layout == "a1111" else "models/loras")
    assert (lora_dir / "local_one.safetensors") in model_files  # detected as a LoRA
    for path in model_files:
        assert path.resolve().parent.parent.parent == store.blobs_dir.parent
    if layout == "a1111":
        civ_path = next(p for p in model_files if p.name != "local_one.safetensors")
        base = civ_path.with_suffix("")
        info = json.loads(Path(f"{base}.civitai.info").read_text())
        assert info["id"] == vid and info["modelId"] == fake_catalog.versions[vid].model_id
        assert f.hashes["SHA256"] in [x["hashes"].get("SHA256") for x in info["files"]]
        a1111 = json.loads(Path(f"{base}.json").read_text())
        assert a1111["activation text"] == "zeta word" and a1111["preferred weight"] == 0.8

    # Read back into a fresh home, offline: the sidecars alone identify the Civitai file.
    monkeypatch.setenv("ASSETMGR_HOME", str(tmp_path / "second-home"))
    from catalog.db import open_catalog

    engine2 = open_catalog(f"sqlite:///{tmp_path / 'second.sqlite3'}")
    store2 = BlobStore(tmp_path / "second-home" / "store")
    back = import_folder(engine2, store2, None, out)
    # Offline into an empty catalog, the sidecar's claim is checked (its SHA256 is the file's,
    # nothing contradicts it) and accepted as a hint.
    sources = sorted(i.source for i in back.imported)
    assert sources == ["local", "sidecar"]
    civ = next(i for i in back.imported if i.source == "sidecar")
    assert civ.file_id == f.id and civ.version_id == vid
    with Session(engine2) as session:
        meta = session.get(UserMeta, vid)
        assert meta is not None and meta.preferred_weight == 0.8
    engine2.dispose()


def test_updates_and_duplicates(
    engine: Engine,
    store: BlobStore,
    client: CivitaiClient,
    fake: FakeCivitai,
    fake_catalog: FakeCatalog,
    tmp_path: Path,
) -> None:
    (vid,) = open_versions(fake_catalog, 1)
    model_id = fake_catalog.versions[vid].model_id
    f = fake_catalog.add_file_bytes(vid, sd15_lora(fill=21))
    svc = StoreService(engine, store, client)
    svc.pull(vid)
    from catalog.sync import SyncRequest, run_sync

    run_sync(engine, client, SyncRequest(model_ids=[model_id]))
    with Session(engine) as session:
        assert all(u.model_id != model_id for u in find_updates(session))
    base = fake_catalog.versions[vid].base_model
    newer = fake_catalog.add_version(model_id, name="v-next", base_model=base)
    other_family = fake_catalog.add_version(
        model_id, name="v-flux", base_model="Flux.1 D" if not base.startswith("Flux") else "SD 1.5"
    )
    run_sync(engine, client, SyncRequest(model_ids=[model_id]))
    with Session(engine) as session:
        found = [u for u in find_updates(session) if u.model_id == model_id]
    assert [u.newest_version_id for u in found] == [newer.id]
    assert other_family.id not in {u.newest_version_id for u in found}

    # Duplicates: the same bytes under another name, and the same tensors with another header.
    src = tmp_path / "dups"
    src.mkdir()
    (src / "copy_of_pulled.safetensors").write_bytes(f.content)
    (src / "same_tensors.safetensors").write_bytes(sd15_lora(fill=21, meta={"note": "re-saved"}))
    import_folder(engine, store, None, src)
    with Session(engine) as session:
        groups = find_duplicates(session)
    assert any(g["sha256"] == f.hashes["SHA256"] for g in groups["by_sha256"]) or any(
        len(g["files"]) > 1 for g in groups["by_autov3"]
    )
    v3 = [g for g in groups["by_autov3"] if g["autov3"] == f.hashes["AutoV3"]]
    assert v3 and len({m["sha256"] for m in v3[0]["files"]}) == 2
    svc.close()
