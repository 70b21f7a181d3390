"""`assetmgr import` of a folder of old, odd and broken sidecars next to real synthetic models.

Through the installed CLI, offline and against the fake Civitai, every file ends with one
outcome (imported + skipped + duplicates == the model files in the folder) and every sidecar
too (read, or listed with a reason). A catalog row that fails skips only its file; only a
cancel, a catalog that goes away or a full store stop the import, and the report still says
what was done and what was not reached.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session as OrmSession
from sqlmodel import Session

from assetmgr.store import blobs
from assetmgr.store.blobs import BlobStore
from assetmgr.store.importer import import_folder
from assetmgr.store.scan import MODEL_SUFFIXES
from assetmgr.store.sidecars import SIDECAR_SUFFIXES
from catalog import repo
from catalog.db import open_catalog
from catalog.models import Model
from catalog.usermeta import UserMeta
from tests import model_layouts as layouts
from tests.fakeciv import FakeCatalog, FakeCivitai
from tests.integration.conftest import PG_URL, _drop_pg, _fresh_pg_url
from tests.integration.test_import_hostile import cli, cli_json, sha256_of, stored_blobs

# --- the folder ------------------------------------------------------------------------------

OLD_HELPER_INFO = {  # Civitai Helper, early 2023: no modelId, files without hashes
    "id": 11745,
    "name": "v1.0",
    "trainedWords": "inkwash, brush strokes",
    "model": {"name": "Inkwash", "type": "LORA"},
    "files": [{"id": 12001, "name": "old_helper.safetensors", "type": "Model"}],
}


def browser_info(sha: str) -> dict[str, Any]:
    """SD-Civitai-Browser saved the whole model object (``modelVersions``) beside the file."""
    return {
        "id": 880001,
        "name": "Browser LoRA",
        "type": "LORA",
        "nsfw": False,
        "modelVersions": [
            {"id": 880003, "name": "v2", "files": [{"id": 880013, "hashes": {"SHA256": "0" * 64}}]},
            {
                "id": 880002,
                "name": "v1",
                "baseModel": "SD 1.5",
                "trainedWords": ["browserword"],
                "files": [{"id": 880012, "name": "browser.safetensors", "hashes": {"SHA256": sha}}],
            },
        ],
    }


def build_odd_folder(root: Path) -> dict[str, bytes]:
    """An A1111 tree and a ComfyUI tree under `root`; returns the model bytes by name."""
    webui = root / "webui" / "models"
    comfy = root / "ComfyUI" / "models"
    for sub in ("Lora", "LyCORIS", "ESRGAN", "ControlNet", "VAE", "Stable-diffusion"):
        (webui / sub).mkdir(parents=True)
    for sub in ("upscale_models", "unet", "loras/sdxl"):
        (comfy / sub).mkdir(parents=True)
    (root / "webui" / "embeddings").mkdir()
    lora = webui / "Lora"
    made: dict[str, bytes] = {}

    def model(path: Path, data: bytes) -> None:
        path.write_bytes(data)
        made[path.name] = data

    model(lora / "old_helper.safetensors", layouts.lora(11))
    (lora / "old_helper.civitai.info").write_text(json.dumps(OLD_HELPER_INFO))
    (lora / "old_helper.json").write_text(
        json.dumps({"activation text": "inkwash", "preferred weight": "0.7", "sd version": "SD1"})
    )
    model(lora / "browser.safetensors", layouts.lora(12))
    sha = sha256_of(made["browser.safetensors"])
    (lora / "browser.civitai.info").write_text(json.dumps(browser_info(sha)))
    model(lora / "bom.safetensors", layouts.lora(13))
    (lora / "bom.json").write_bytes(
        b"\xef\xbb\xbf" + json.dumps({"activation text": ["bom", "word"]}).encode()
    )
    model(lora / "utf16.safetensors", layouts.lora(14))
    lm = {"civitai": None, "usage_tips": '{"strength": 0.55}', "notes": "from LoRA Manager"}
    (lora / "utf16.metadata.json").write_bytes(json.dumps(lm).encode("utf-16"))
    model(lora / "nulls.safetensors", layouts.lora(15))
    (lora / "nulls.civitai.info").write_text("null")
    (lora / "nulls.json").write_text("[]")
    (lora / "nulls.metadata.json").write_text("42")
    model(lora / "garbage.safetensors", layouts.lora(16))
    (lora / "garbage.civitai.info").write_bytes(bytes(range(256)))
    model(lora / "deep.safetensors", layouts.lora(17))
    (lora / "deep.civitai.info").write_text("[" * 100_000)
    # The same bytes, first in name order; the copy with usable sidecars is the one imported.
    (lora / "copy_of_helper.safetensors").write_bytes(made["old_helper.safetensors"])
    (lora / "copy_of_helper.json").write_text('"just a string"')
    model(lora / "actually_a_checkpoint.safetensors", layouts.sd15_checkpoint(18))
    (lora / "broken.safetensors").write_bytes(layouts.lora(19) + b"polyglot tail")
    (lora / "evil.ckpt").write_bytes(pickle.dumps({"state_dict": {"w": [0.5] * 8}}, protocol=4))
    (lora / "not_a_model.pt").write_bytes(b"hello, I am text")
    model(lora / os.fsdecode(b"bad\xffname.safetensors"), layouts.lora(20))
    (lora / "preview.png").write_bytes(b"\x89PNG\r\n\x1a\n")  # neither model nor sidecar
    model(webui / "LyCORIS" / "plain.safetensors", layouts.lora(21))
    model(webui / "ESRGAN" / "4x_ultra.safetensors", layouts.esrgan(22))
    model(webui / "ControlNet" / "canny.safetensors", layouts.controlnet(23))
    model(webui / "Stable-diffusion" / "vae_in_checkpoints.safetensors", layouts.vae(24))
    (webui / "Stable-diffusion" / "vae_in_checkpoints.json").write_text('{"notes": "first"}')
    (webui / "VAE" / "vae.safetensors").write_bytes(made["vae_in_checkpoints.safetensors"])
    (webui / "VAE" / "vae.json").write_text('{"notes": "second"}')
    model(root / "webui" / "embeddings" / "emb.safetensors", layouts.embedding(25))
    model(comfy / "upscale_models" / "x4.safetensors", layouts.esrgan(26))
    model(comfy / "unet" / "bare.safetensors", layouts.sd15_unet(27))
    model(
        comfy / "loras" / "sdxl" / "odd.safetensors",
        layouts.st_bytes({"lora_unet_mid.lora_down.weight": (4, 8)}, fill=28),
    )
    return made


def model_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in MODEL_SUFFIXES]


def sidecar_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.name.endswith(SIDECAR_SUFFIXES)]


def by_name(entries: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {Path(e["path"]).name: e for e in entries}


def assert_every_file_accounted(data: dict[str, Any], root: Path) -> None:
    files = model_files(root)
    counts = data["counts"]
    assert counts["files"] == data["scanned"] == len(files)
    assert counts["imported"] + counts["skipped"] + counts["duplicates"] == len(files)
    outcomes = [e["path"] for e in data["imported"] + data["skipped"] + data["duplicates"]]
    assert sorted(outcomes) == sorted(str(p) for p in files)  # each file exactly once
    read = {s for f in data["imported"] for s in f["sidecars"]}
    ignored = {i["path"] for i in data["ignored_sidecars"]}
    for sidecar in sidecar_files(root):
        assert str(sidecar) in read | ignored, sidecar


@pytest.fixture
def catalog(db_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Engine]:
    monkeypatch.setenv("ASSETMGR_DB_URL", db_url)
    engine = open_catalog(db_url)
    try:
        yield engine
    finally:
        engine.dispose()


@pytest.fixture
def store() -> BlobStore:
    return BlobStore(Path(os.environ["ASSETMGR_HOME"]) / "store")


# --- every file accounted for -----------------------------------------------------------------


def test_a_folder_of_old_odd_and_broken_sidecars_offline(
    catalog: Engine, store: BlobStore, tmp_path: Path
) -> None:
    root = tmp_path / "everything"
    made = build_odd_folder(root)
    lora = root / "webui" / "models" / "Lora"

    data = cli_json("import", str(root), "--offline")

    assert data["stopped"] is None and data["not_reached"] == []
    assert_every_file_accounted(data, root)
    imported = by_name(data["imported"])
    assert {
        (n, f["model_type"], f["base_model"], f["folder_hint"]) for n, f in imported.items()
    } >= {
        ("old_helper.safetensors", "LORA", "SD 1.5", None),
        ("actually_a_checkpoint.safetensors", "Checkpoint", "SD 1.5", None),
        ("plain.safetensors", "LoCon", "SD 1.5", "LyCORIS"),
        ("4x_ultra.safetensors", "Upscaler", "Other", "ESRGAN"),
        ("canny.safetensors", "Controlnet", "Other", "ControlNet"),
        ("vae_in_checkpoints.safetensors", "VAE", "Other", None),
        ("emb.safetensors", "TextualInversion", "SD 1.5", None),
        ("x4.safetensors", "Upscaler", "Other", "upscale_models"),
        ("bare.safetensors", "UNet", "SD 1.5", "unet"),
        ("odd.safetensors", "LORA", "SDXL 1.0", "sdxl"),
    }
    assert imported["browser.safetensors"]["source"] == "sidecar"
    assert imported["browser.safetensors"]["version_id"] == 880002
    assert {f["source"] for n, f in imported.items() if n != "browser.safetensors"} == {"local"}
    assert {(n, s["code"]) for n, s in by_name(data["skipped"]).items()} == {
        ("broken.safetensors", "invalid-safetensors"),
        ("evil.ckpt", "pickle-refused"),
        ("not_a_model.pt", "not-a-model"),
    }
    assert data["duplicates"] == [
        {
            "path": str(lora / "copy_of_helper.safetensors"),
            "sha256": sha256_of(made["old_helper.safetensors"]),
            "duplicate_of": str(lora / "old_helper.safetensors"),
            "target": None,
        },
        {
            "path": str(root / "webui" / "models" / "VAE" / "vae.safetensors"),
            "sha256": sha256_of(made["vae_in_checkpoints.safetensors"]),
            "duplicate_of": str(
                root / "webui" / "models" / "Stable-diffusion" / "vae_in_checkpoints.safetensors"
            ),
            "target": None,
        },
    ]
    ignored = sorted(
        (Path(i["path"]).name, i["code"], i["reason"]) for i in data["ignored_sidecars"]
    )
    first_vae = root / "webui" / "models" / "Stable-diffusion" / "vae_in_checkpoints.safetensors"
    assert ignored == [
        ("copy_of_helper.json", "sidecar-malformed", "not a JSON object"),
        ("deep.civitai.info", "sidecar-malformed", "not valid JSON"),
        ("garbage.civitai.info", "sidecar-malformed", "not valid JSON"),
        ("nulls.civitai.info", "sidecar-malformed", "not a JSON object"),
        ("nulls.json", "sidecar-malformed", "not a JSON object"),
        ("nulls.metadata.json", "sidecar-malformed", "not a JSON object"),
        (
            "old_helper.civitai.info",
            "claim-no-hash",
            "claims version 11745, but lists no SHA256 to check it by (an older sidecar)",
        ),
        (
            "vae.json",
            "sidecar-of-duplicate",
            f"beside a duplicate of {first_vae}, whose sidecars were used",
        ),
    ]
    # The same bytes are stored once; what the sidecars said is the user's own metadata.
    assert len(stored_blobs(store)) == len(imported)
    with Session(catalog) as session:
        helper = session.get(UserMeta, imported["old_helper.safetensors"]["version_id"])
        assert helper is not None
        assert (helper.activation_text, helper.preferred_weight) == ("inkwash", 0.7)
        bom = session.get(UserMeta, imported["bom.safetensors"]["version_id"])
        assert bom is not None and bom.activation_text == "bom, word"
        lm = session.get(UserMeta, imported["utf16.safetensors"]["version_id"])
        assert lm is not None and (lm.preferred_weight, lm.notes) == (0.55, "from LoRA Manager")
        browser = session.get(UserMeta, 880002)
        assert browser is not None and browser.activation_text == "browserword"
        bad = session.get(Model, imported[os.fsdecode(b"bad\xffname.safetensors")]["model_id"])
        assert bad is not None and bad.name == "bad\ufffdname"

    plain = cli("import", str(root), "--offline")
    assert plain.returncode == 0, plain.stderr
    err = plain.stderr
    assert err.startswith(f"imported {len(imported)} of {len(model_files(root))} files (")
    assert "; 3 skipped, 2 duplicates\n" in err
    assert f"skipped {lora / 'evil.ckpt'}: pickle checkpoint (a raw pickle stream) refused\n" in err
    assert (
        f"duplicate {lora / 'copy_of_helper.safetensors'}: the same bytes as "
        f"{lora / 'old_helper.safetensors'}\n" in err
    )
    assert f"ignored sidecar {lora / 'deep.civitai.info'}: not valid JSON\n" in err
    assert "hint: Pickle checkpoints can run code when loaded; pass --allow-pickle" in err
    assert "hint: Older sidecars list no SHA256, so they cannot be checked;" in err
    assert err.count("hint: Sidecars are hints; the file was imported by its content.\n") == 1
    assert "hint: Files with the same bytes (SHA256) are stored once;" in err
    assert "Traceback" not in err


def test_the_same_folder_online_identifies_what_civitai_knows(
    catalog: Engine,
    store: BlobStore,
    fake: FakeCivitai,
    fake_catalog: FakeCatalog,
    tmp_path: Path,
) -> None:
    root = tmp_path / "everything"
    build_odd_folder(root)
    lora = root / "webui" / "models" / "Lora"
    vid = next(
        v.id
        for m in fake_catalog.models.values()
        if m.mode is None and m.status == "Published" and not m.nsfw
        for v in m.published_versions
        if not v.require_auth and v.usage_control == "Download" and v.early_access_deadline is None
    )
    known = fake_catalog.add_file_bytes(vid, layouts.lora(40))
    (lora / "known.safetensors").write_bytes(known.content)
    old = httpx.get(f"{fake.base_url}/api/v1/model-versions/{vid}").json()
    for f in old["files"]:  # an old sidecar of the right version: no modelId, no hashes
        f.pop("hashes", None)
    old.pop("modelId")
    (lora / "known.civitai.info").write_text(json.dumps(old))

    data = cli_json("import", str(root), "--api-base", fake.base_url)

    assert data["lookup_error"] is None and data["stopped"] is None
    assert_every_file_accounted(data, root)
    imported = by_name(data["imported"])
    assert imported["known.safetensors"]["source"] == "civitai"
    assert imported["known.safetensors"]["version_id"] == vid
    assert imported["known.safetensors"]["file_id"] == known.id
    assert "known.civitai.info" not in {Path(i["path"]).name for i in data["ignored_sidecars"]}
    assert imported["browser.safetensors"]["source"] == "sidecar"  # Civitai lacks 880002
    assert data["counts"]["duplicates"] == 2


# --- one bad row skips one file ----------------------------------------------------------------


def refuse_local_file(engine: Engine, sha: str) -> None:
    """A trigger that makes the catalog refuse the local-file row of one SHA256."""
    with engine.begin() as conn:
        if engine.dialect.name == "sqlite":
            conn.exec_driver_sql(
                "CREATE TRIGGER refuse_one BEFORE INSERT ON local_file "
                f"WHEN NEW.sha256 = '{sha}' BEGIN SELECT RAISE(ABORT, 'refused by a test "
                "trigger'); END"
            )
        else:
            conn.exec_driver_sql(
                "CREATE FUNCTION refuse_one() RETURNS trigger AS $$ BEGIN "
                f"IF NEW.sha256 = '{sha}' THEN RAISE EXCEPTION 'refused by a test trigger'; "
                "END IF; RETURN NEW; END $$ LANGUAGE plpgsql"
            )
            conn.exec_driver_sql(
                "CREATE TRIGGER refuse_one BEFORE INSERT ON local_file "
                "FOR EACH ROW EXECUTE FUNCTION refuse_one()"
            )


def test_a_catalog_error_on_one_file_skips_only_that_file(
    catalog: Engine, store: BlobStore, tmp_path: Path
) -> None:
    folder = tmp_path / "Lora"
    folder.mkdir()
    for n in range(3):
        (folder / f"f{n}.safetensors").write_bytes(layouts.lora(50 + n))
    (folder / "f1.json").write_text(json.dumps({"activation text": "lost"}))
    refused = sha256_of(layouts.lora(51))
    refuse_local_file(catalog, refused)

    data = cli_json("import", str(folder), "--offline")

    assert [Path(f["path"]).name for f in data["imported"]] == ["f0.safetensors", "f2.safetensors"]
    (skipped,) = data["skipped"]
    assert (Path(skipped["path"]).name, skipped["code"]) == ("f1.safetensors", "catalog-refused")
    assert skipped["reason"] == "the catalog refused its record (refused by a test trigger)"
    assert data["counts"] == {
        "files": 3,
        "imported": 2,
        "skipped": 1,
        "duplicates": 0,
        "not_reached": 0,
    }
    assert refused not in stored_blobs(store)  # the blob made for it was removed again
    with Session(catalog) as session:  # nothing of it was kept either
        assert repo.find_files_by_hash(session, refused) == []
    assert (folder / "f1.safetensors").read_bytes() == layouts.lora(51)

    plain = cli("import", str(folder), "--offline")
    assert plain.returncode == 0, plain.stderr
    assert (
        f"skipped {folder / 'f1.safetensors'}: the catalog refused its record (refused by a "
        "test trigger)\n" in plain.stderr
    )
    assert "hint: The other files were imported; `assetmgr db upgrade` repairs" in plain.stderr


# --- what may stop an import, and what the report says then -----------------------------------


@pytest.fixture(params=["sqlite", "postgresql"])
def losable_catalog(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[tuple[Engine, Callable[[], None]]]:
    """A catalog, and a function that takes it away (a drive unmounted, a server gone)."""
    if request.param == "sqlite":
        folder = tmp_path / "catalog-drive"
        engine = open_catalog(f"sqlite:///{folder / 'catalog.sqlite3'}")

        def lose() -> None:
            folder.rename(tmp_path / "unmounted")
            engine.dispose()

        yield engine, lose
        engine.dispose()
        return
    if not PG_URL:
        pytest.skip("ASSETMGR_TEST_PG_URL is not set (scripts/test sets it)")
    url = _fresh_pg_url(tmp_path)
    engine = open_catalog(url)
    name = make_url(url).database
    admin = create_engine(make_url(url).set(database="postgres"), isolation_level="AUTOCOMMIT")

    def lose_pg() -> None:
        with admin.connect() as conn:
            conn.execute(text(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false'))
            conn.execute(
                text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = :name AND pid <> pg_backend_pid()"
                ),
                {"name": name},
            )

    try:
        yield engine, lose_pg
    finally:
        engine.dispose()
        with admin.connect() as conn:
            conn.execute(text(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true'))
        admin.dispose()
        _drop_pg(url)


def test_a_catalog_that_goes_away_stops_the_import_with_a_full_report(
    losable_catalog: tuple[Engine, Callable[[], None]], tmp_path: Path
) -> None:
    engine, lose = losable_catalog
    store = BlobStore(tmp_path / "store")
    folder = tmp_path / "Lora"
    folder.mkdir()
    for n in range(4):
        (folder / f"f{n}.safetensors").write_bytes(layouts.lora(60 + n))
    commits = []

    def after_commit(session: OrmSession) -> None:
        commits.append(session)
        if len(commits) == 1:  # the first file is in: now the catalog goes away
            lose()

    event.listen(OrmSession, "after_commit", after_commit)
    try:
        report = import_folder(engine, store, None, folder)
    finally:
        event.remove(OrmSession, "after_commit", after_commit)

    assert [Path(f.path).name for f in report.imported] == ["f0.safetensors"]
    assert report.stopped is not None and report.stopped.code == "catalog-unavailable"
    assert report.stopped.reason.startswith(
        ("the catalog cannot be written (", "the catalog cannot be reached (")
    )
    assert [Path(p).name for p in report.not_reached] == [f"f{n}.safetensors" for n in (1, 2, 3)]
    assert report.skipped == [] and report.accounted
    assert stored_blobs(store) == {sha256_of(layouts.lora(60))}  # f1's blob was removed again


def test_cancelling_stops_between_files_and_keeps_what_was_done(tmp_path: Path) -> None:
    import threading

    engine = open_catalog(f"sqlite:///{tmp_path / 'catalog.sqlite3'}")
    store = BlobStore(tmp_path / "store")
    folder = tmp_path / "Lora"
    folder.mkdir()
    for n in range(3):
        (folder / f"f{n}.safetensors").write_bytes(layouts.lora(70 + n))
    cancel = threading.Event()

    def progress(step: int, steps: int, path: str) -> None:
        if path.endswith("f1.safetensors") and step >= steps // 2:  # f0 stored, f1 next
            cancel.set()

    report = import_folder(engine, store, None, folder, progress=progress, cancel=cancel)
    engine.dispose()

    assert [Path(f.path).name for f in report.imported] == ["f0.safetensors"]
    assert report.stopped is not None
    assert (report.stopped.code, report.stopped.reason) == (
        "cancelled",
        "the import was cancelled",
    )
    assert [Path(p).name for p in report.not_reached] == ["f1.safetensors", "f2.safetensors"]
    assert report.accounted
    assert report.summary() == "imported 1 of 3 files; 2 not reached"


def test_a_duplicate_is_imported_when_the_first_copy_fails(tmp_path: Path) -> None:
    engine = open_catalog(f"sqlite:///{tmp_path / 'catalog.sqlite3'}")
    store = BlobStore(tmp_path / "store")
    folder = tmp_path / "Lora"
    folder.mkdir()
    same = layouts.lora(80)
    (folder / "a.safetensors").write_bytes(same)
    (folder / "b.safetensors").write_bytes(same)
    (folder / "c.safetensors").write_bytes(same)

    def progress(step: int, steps: int, path: str) -> None:
        if step == steps // 2:  # about to store the first copy: another program rewrites it
            with open(folder / "a.safetensors", "r+b") as f:
                f.write(layouts.lora(81))
            st = os.stat(folder / "a.safetensors")
            os.utime(folder / "a.safetensors", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))

    report = import_folder(engine, store, None, folder, mode="copy", progress=progress)
    engine.dispose()

    assert [(Path(s.path).name, s.code) for s in report.skipped] == [("a.safetensors", "changed")]
    assert [Path(f.path).name for f in report.imported] == ["b.safetensors"]
    assert [(Path(d.path).name, Path(d.duplicate_of).name) for d in report.duplicates] == [
        ("c.safetensors", "b.safetensors")
    ]
    assert stored_blobs(store) == {sha256_of(same)} and report.accounted


@pytest.fixture
def small_volume(tmp_path: Path) -> Iterator[Path]:
    """A 2 MiB tmpfs: a store there fills up after a few files (needs root to mount)."""
    mount_point = tmp_path / "small-volume"
    mount_point.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m,mode=0700", "tmpfs", str(mount_point)],
        capture_output=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode(errors='replace')}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


@pytest.mark.parametrize("how", ["predicted", "hit"])
def test_a_full_store_stops_the_import_and_lists_what_was_not_reached(
    small_volume: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    monkeypatch.setattr(blobs, "DISK_HEADROOM_BYTES", 0)
    if how == "hit":  # no free-space check: the write itself runs out of room
        monkeypatch.setattr(BlobStore, "check_free_space", lambda self, *a, **k: None)
    engine = open_catalog(f"sqlite:///{tmp_path / 'catalog.sqlite3'}")
    store = BlobStore(small_volume / "store")
    folder = tmp_path / "Lora"
    folder.mkdir()
    fills = {}
    for n in range(4):  # 700 KiB each: the third does not fit
        data = layouts.st_bytes({"lora_unet_x.lora_down.weight": (350, 1024)}, fill=90 + n)
        (folder / f"f{n}.safetensors").write_bytes(data)
        fills[n] = data

    report = import_folder(engine, store, None, folder, mode="copy")
    engine.dispose()

    assert [Path(f.path).name for f in report.imported] == ["f0.safetensors", "f1.safetensors"]
    assert report.stopped is not None and report.stopped.code == "store-unwritable"
    if how == "hit":
        assert report.stopped.reason == "the store's disk is full (No space left on device)"
    else:
        assert report.stopped.reason.startswith("need 0.00 GiB free in ")
    assert [Path(p).name for p in report.not_reached] == ["f2.safetensors", "f3.safetensors"]
    assert report.accounted
    assert stored_blobs(store) == {hashlib.sha256(fills[n]).hexdigest().upper() for n in (0, 1)}
    assert list((store.root / "partial").iterdir()) == []  # no half-written copy left


def test_the_cli_reports_a_full_store_then_fails_with_a_hint(
    small_volume: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ASSETMGR_HOME", str(small_volume / "home"))
    monkeypatch.setenv("ASSETMGR_DB_URL", f"sqlite:///{tmp_path / 'catalog.sqlite3'}")
    folder = tmp_path / "Lora"
    folder.mkdir()
    for n in range(2):
        (folder / f"f{n}.safetensors").write_bytes(layouts.lora(95 + n))

    result = cli("import", str(folder), "--copy", "--offline", "--json")

    assert result.returncode == 1
    data = json.loads(result.stdout)
    assert data["stopped"]["code"] == "store-unwritable"
    assert data["imported"] == [] and len(data["not_reached"]) == 2
    lines = result.stderr.splitlines()
    assert lines[-2].startswith("error: import stopped: need 0.25 GiB free in ")
    assert lines[-2].endswith("; 2 files not reached")
    assert lines[-1] == (
        "hint: Free some space or move ASSETMGR_HOME to a larger volume, then import again."
    )


def test_an_unforeseen_failure_on_one_file_is_that_files_outcome(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from assetmgr.store import importer

    engine = open_catalog(f"sqlite:///{tmp_path / 'catalog.sqlite3'}")
    store = BlobStore(tmp_path / "store")
    folder = tmp_path / "Lora"
    folder.mkdir()
    cursed = layouts.st_bytes({"lora_unet_x.lora_down.weight": (2, 4)}, {"cursed": "1"}, 1)
    (folder / "a.safetensors").write_bytes(layouts.lora(1))
    (folder / "b.safetensors").write_bytes(cursed)
    (folder / "c.safetensors").write_bytes(layouts.lora(3))
    real_detect = importer.detect

    def detect(info: Any) -> Any:  # a bug that only this file's header triggers
        if info.metadata.get("cursed"):
            raise RuntimeError("boom")
        return real_detect(info)

    monkeypatch.setattr(importer, "detect", detect)

    report = import_folder(engine, store, None, folder)
    engine.dispose()

    assert [Path(f.path).name for f in report.imported] == ["a.safetensors", "c.safetensors"]
    assert [(Path(s.path).name, s.code, s.reason) for s in report.skipped] == [
        ("b.safetensors", "internal-error", "an unexpected RuntimeError (a bug in assetmgr)")
    ]
    assert report.stopped is None and report.accounted
    assert "importing" in caplog.text and "boom" in caplog.text  # the traceback is in the log
