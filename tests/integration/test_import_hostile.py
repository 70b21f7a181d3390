"""`assetmgr import` against a hostile folder, through the real CLI.

Each test performs one attack on a real folder (real symlinks, FIFOs, sidecars, pickles) and
checks that no harm is done (the catalog keeps Civitai's data, the store holds no foreign
bytes) and what the user is told.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import socket
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine, select
from sqlmodel import Session

from assetmgr.config import Settings
from assetmgr.store.blobs import BlobStore
from catalog import repo
from catalog.db import open_catalog
from catalog.models import LocalFile, Model
from catalog.usermeta import UserMeta
from tests.fakeciv import FakeCatalog, FakeCivitai
from tests.integration.test_import_export import sd15_lora

ASSETMGR = Path(sys.executable).parent / "assetmgr"


def cli(*args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    """The installed `assetmgr` script, as a user runs it (a hang fails the test)."""
    return subprocess.run(
        [str(ASSETMGR), *args], capture_output=True, text=True, timeout=timeout, check=False
    )


def cli_json(*args: str) -> Any:
    result = cli(*args, "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def sha256_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest().upper()


@pytest.fixture
def catalog(db_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Engine]:
    """The CLI's catalog (SQLite or PostgreSQL), also open here to read what it holds."""
    monkeypatch.setenv("ASSETMGR_DB_URL", db_url)
    engine = open_catalog(db_url)
    try:
        yield engine
    finally:
        engine.dispose()


@pytest.fixture
def store() -> BlobStore:
    return BlobStore(Path(os.environ["ASSETMGR_HOME"]) / "store")


def stored_blobs(store: BlobStore) -> set[str]:
    return {sha for sha, _ in store.iter_blobs()}


def show(engine: Engine, model_id: int) -> dict[str, Any]:
    with Session(engine) as session:
        return repo.model_to_dict(repo.get_model(session, model_id))


def version_of(shown: dict[str, Any], version_id: int) -> dict[str, Any]:
    return next(v for v in shown["versions"] if v["id"] == version_id)


def open_version_with_words(fake_catalog: FakeCatalog, skip_models: set[int]) -> int:
    for m in fake_catalog.models.values():
        if m.id in skip_models or m.mode is not None or m.status != "Published" or m.nsfw:
            continue
        for v in m.published_versions:
            if (
                v.trained_words
                and v.files
                and not v.require_auth
                and v.usage_control == "Download"
                and v.early_access_deadline is None
            ):
                return int(v.id)
    raise AssertionError("no open version with trained words")


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- sidecars are hints, never authority -----------------------------------------------------


@pytest.mark.parametrize("online", [True, False], ids=["online", "offline"])
def test_sidecar_claiming_a_synced_version_rewrites_nothing(
    catalog: Engine,
    store: BlobStore,
    fake: FakeCivitai,
    fake_catalog: FakeCatalog,
    tmp_path: Path,
    online: bool,
) -> None:
    vid = open_version_with_words(fake_catalog, set())
    mid = fake_catalog.versions[vid].model_id
    cli_json("sync", "--model-id", str(mid), "--api-base", fake.base_url)
    truth = version_of(show(catalog, mid), vid)
    true_sha = truth["files"][0]["hashes"]["SHA256"]
    assert truth["trained_words"]

    # The attack: other bytes, and a genuine .civitai.info of the synced version edited to
    # list their SHA256 and the attacker's trigger words.
    evil_bytes = sd15_lora(fill=66)
    evil_sha = sha256_of(evil_bytes)
    claim = httpx.get(f"{fake.base_url}/api/v1/model-versions/{vid}").json()
    claim["files"][0]["hashes"] = {"SHA256": evil_sha}
    claim["trainedWords"] = ["attacker trigger"]
    folder = tmp_path / "hostile"
    folder.mkdir()
    (folder / "evil.safetensors").write_bytes(evil_bytes)
    info = folder / "evil.civitai.info"
    info.write_text(json.dumps(claim))
    where = ["--api-base", fake.base_url] if online else ["--offline"]

    data = cli_json("import", str(folder), *where)

    held = ", ".join(sorted({(f["hashes"].get("SHA256") or "?")[:12] for f in truth["files"]}))
    reason = (
        f"claims version {vid}, whose files on Civitai differ"
        if online
        else f"claims version {vid}, which the catalog holds with other files (SHA256 {held}...)"
    )
    assert data["ignored_sidecars"] == [
        {
            "path": str(info),
            "code": "claim-contradicted",
            "reason": reason,
            "file": str(folder / "evil.safetensors"),
        }
    ]
    (imported,) = data["imported"]
    assert (imported["source"], imported["identified_by"]) == ("local", "local")
    assert imported["version_id"] < 0 and imported["sha256"] == evil_sha
    after = version_of(show(catalog, mid), vid)
    assert after["files"] == truth["files"]
    assert after["trained_words"] == truth["trained_words"]
    assert true_sha not in stored_blobs(store)

    # The plain output says the same, with a hint; a second import changes nothing either.
    plain = cli("import", str(folder), *where)
    assert plain.returncode == 0, plain.stderr
    assert f"ignored sidecar {info}: {reason}\n" in plain.stderr
    assert "hint: A sidecar never changes what the catalog holds;" in plain.stderr

    # `path VERSION` does not lead to the attacker's file.
    path = cli("path", str(vid))
    assert (path.returncode, path.stdout) == (3, "")
    assert path.stderr == (
        f"error: no verified local file for {vid}\nhint: Run `assetmgr pull {vid}` first.\n"
    )

    # A later sync leaves the truth in place.
    cli_json("sync", "--model-id", str(mid), "--api-base", fake.base_url)
    synced = version_of(show(catalog, mid), vid)
    assert synced["files"] == truth["files"]
    assert synced["trained_words"] == truth["trained_words"]
    assert cli("path", str(vid)).returncode == 3


@pytest.mark.parametrize(
    ("honest", "online"),
    [(True, False), (False, False), (False, True)],
    ids=["honest-offline", "lying-offline", "lying-online"],
)
def test_sidecar_for_a_version_the_catalog_lacks(
    catalog: Engine,
    store: BlobStore,
    fake: FakeCivitai,
    fake_catalog: FakeCatalog,
    tmp_path: Path,
    honest: bool,
    online: bool,
) -> None:
    vid = open_version_with_words(fake_catalog, set())
    mid = fake_catalog.versions[vid].model_id
    words = list(fake_catalog.versions[vid].trained_words)
    data_bytes = sd15_lora(fill=71)
    sha = sha256_of(data_bytes)
    if honest:  # the bytes really are the version's file
        real = fake_catalog.add_file_bytes(vid, data_bytes)
    claim = httpx.get(f"{fake.base_url}/api/v1/model-versions/{vid}").json()
    if not honest:  # a real version the catalog lacks, claimed for other bytes
        claim["files"] = claim["files"][:1]
        claim["files"][0]["hashes"] = {"SHA256": sha}
    claimed_file = next(f for f in claim["files"] if f["hashes"].get("SHA256") == sha)
    folder = tmp_path / "models"
    folder.mkdir()
    (folder / "thing.safetensors").write_bytes(data_bytes)
    info = folder / "thing.civitai.info"
    info.write_text(json.dumps(claim))

    where = ["--api-base", fake.base_url] if online else ["--offline"]
    data = cli_json("import", str(folder), *where)
    (imported,) = data["imported"]

    if online:  # Civitai is asked about the claimed version, and refutes it
        assert (imported["source"], imported["identified_by"]) == ("local", "local")
        assert imported["version_id"] < 0
        assert [(i["code"], i["reason"]) for i in data["ignored_sidecars"]] == [
            ("claim-contradicted", f"claims version {vid}, whose files on Civitai differ")
        ]
        with Session(catalog) as session:
            assert session.get(Model, mid) is None  # nothing was written from the claim
        return

    # Offline, nothing contradicts it: a hint, recorded as that version with only the
    # matched file and no trained words; the words are the user's own metadata.
    assert data["ignored_sidecars"] == []
    assert (imported["source"], imported["identified_by"]) == ("sidecar", "sidecar")
    assert (imported["version_id"], imported["file_id"]) == (vid, claimed_file["id"])
    hinted = version_of(show(catalog, mid), vid)
    assert [f["id"] for f in hinted["files"]] == [claimed_file["id"]]
    assert hinted["files"][0]["hashes"]["SHA256"] == sha
    assert hinted["trained_words"] == []
    with Session(catalog) as session:
        meta = session.get(UserMeta, vid)
        assert meta is not None and meta.source == "civitai-info"
        assert meta.activation_text == ", ".join(words)
    path = cli("path", str(vid))
    assert path.stdout == f"{store.blob_path(sha)}\n"

    # Civitai's data replaces the hint at the next sync.
    cli_json("sync", "--model-id", str(mid), "--api-base", fake.base_url)
    synced = version_of(show(catalog, mid), vid)
    assert synced["trained_words"] == words
    path = cli("path", str(vid))
    if honest:
        assert synced["files"][0]["hashes"]["SHA256"] == real.hashes["SHA256"] == sha
        assert path.stdout == f"{store.blob_path(sha)}\n"
        return
    # The claimed file id now has Civitai's hash: the attacker's bytes are detached from it.
    synced_file = next(f for f in synced["files"] if f["id"] == claimed_file["id"])
    assert synced_file["hashes"]["SHA256"] != sha and synced_file["local"] is None
    assert path.returncode == 3 and path.stdout == ""
    with Session(catalog) as session:
        row = session.execute(select(LocalFile).where(LocalFile.sha256 == sha)).scalar_one()
        assert row.file_id is None and row.state == "verified"


def test_an_old_sidecar_with_civitai_unreachable_does_not_abort_the_import(
    catalog: Engine, tmp_path: Path
) -> None:
    folder = tmp_path / "Lora"
    folder.mkdir()
    old = sd15_lora(fill=81)
    (folder / "old.safetensors").write_bytes(old)
    # Civitai Helper wrote this before `model` carried nsfw/poi; it used to crash the import.
    (folder / "old.civitai.info").write_text(
        json.dumps(
            {
                "id": 424242,
                "modelId": 434343,
                "name": "v1.0",
                "baseModel": "SD 1.5",
                "trainedWords": ["oldword", "older word"],
                "model": {"name": "Old LoRA", "type": "LORA"},
                "files": [
                    {"id": 444444, "name": "old.safetensors", "hashes": {"SHA256": sha256_of(old)}}
                ],
            }
        )
    )
    damaged = sd15_lora(fill=82)
    (folder / "damaged.safetensors").write_bytes(damaged)
    (folder / "damaged.civitai.info").write_text(
        json.dumps(
            {"id": 5, "name": "x", "files": [{"id": 6, "hashes": {"SHA256": sha256_of(damaged)}}]}
        )
    )
    (folder / "garbage.safetensors").write_bytes(sd15_lora(fill=83))
    (folder / "garbage.civitai.info").write_bytes(b'{"id": 7, \xff')
    unreachable = f"http://127.0.0.1:{closed_port()}"

    data = cli_json("import", str(folder), "--api-base", unreachable)

    assert data["lookup_error"].startswith("cannot reach Civitai")
    sources = {Path(f["path"]).name: f["source"] for f in data["imported"]}
    assert sources == {
        "old.safetensors": "sidecar",
        "damaged.safetensors": "local",
        "garbage.safetensors": "local",
    }
    assert sorted(
        (Path(i["path"]).name, i["code"], i["reason"]) for i in data["ignored_sidecars"]
    ) == [
        (
            "damaged.civitai.info",
            "claim-ids",
            "has no usable model, version or file id (old or damaged sidecar)",
        ),
        ("garbage.civitai.info", "sidecar-malformed", "not valid JSON"),
    ]
    shown = show(catalog, 434343)
    assert (shown["name"], shown["type"], shown["nsfw"]) == ("Old LoRA", "LORA", False)
    with Session(catalog) as session:
        meta = session.get(UserMeta, 424242)
        assert meta is not None and meta.activation_text == "oldword, older word"

    plain = cli("import", str(folder), "--api-base", unreachable)
    assert plain.returncode == 0, plain.stderr
    assert "warning: Civitai lookup failed (cannot reach Civitai" in plain.stderr
    assert (
        f"ignored sidecar {folder / 'damaged.civitai.info'}: has no usable model, version or "
        "file id (old or damaged sidecar)\n" in plain.stderr
    )


# --- import accepts content, not names -------------------------------------------------------


def torch_zip(payload: object) -> bytes:
    """An archive laid out as `torch.save` writes it (``archive/data.pkl`` and storages)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr("archive/data.pkl", pickle.dumps(payload, protocol=2))
        archive.writestr("archive/byteorder", "little")
        archive.writestr("archive/data/0", bytes(range(256)) * 4)
        archive.writestr("archive/version", "3\n")
    return buf.getvalue()


def skips(data: dict[str, Any]) -> dict[str, tuple[str, str, str | None]]:
    return {Path(s["path"]).name: (s["code"], s["reason"], s["target"]) for s in data["skipped"]}


def test_a_link_to_a_secret_outside_the_folder_never_enters_the_store(
    store: BlobStore, tmp_path: Path
) -> None:
    secret_dir = tmp_path / "elsewhere"
    secret_dir.mkdir()
    secret = secret_dir / "shadow"
    secret_bytes = b"root:$6$saltsalt$hashhashhash:19700:0:99999:7:::\nuser:$6$x$y:19700::::::\n"
    secret.write_bytes(secret_bytes)
    folder = tmp_path / "models"
    folder.mkdir()
    (folder / "x.ckpt").symlink_to(secret)
    (folder / "shadow.ckpt").symlink_to("/etc/shadow")
    (folder / "good.safetensors").write_bytes(sd15_lora(fill=91))
    secret_json = secret_dir / "tokens.json"
    secret_json.write_text(json.dumps({"notes": "api_token=s3cr3t", "activation text": "s3cr3t"}))
    (folder / "good.json").symlink_to(secret_json)  # a sidecar that is a link is not read

    data = cli_json("import", str(folder), "--offline", "--allow-pickle")

    assert [Path(f["path"]).name for f in data["imported"]] == ["good.safetensors"]
    assert data["ignored_sidecars"] == [
        {
            "path": str(folder / "good.json"),
            "code": "sidecar-link",
            "reason": "a symlink; sidecars are read only as plain files",
            "file": str(folder / "good.safetensors"),
        }
    ]
    engine = open_catalog(Settings.load().database_url)
    with Session(engine) as session:
        assert session.get(UserMeta, data["imported"][0]["version_id"]) is None
    engine.dispose()
    found = skips(data)
    assert found["x.ckpt"] == (
        "not-a-model",
        "its bytes are neither safetensors, a pickle stream nor a torch zip archive",
        str(secret),
    )
    # /etc/shadow is unreadable unless the tests run as root; either way it stays out.
    assert found["shadow.ckpt"][0] in {"unreadable", "not-a-model"}
    assert found["shadow.ckpt"][2] == "/etc/shadow"
    assert {(Path(li["path"]).name, li["target"], li["outside"]) for li in data["links"]} == {
        ("x.ckpt", str(secret), True),
        ("shadow.ckpt", "/etc/shadow", True),
    }
    assert stored_blobs(store) == {data["imported"][0]["sha256"]}
    assert sha256_of(secret_bytes) not in stored_blobs(store)
    provenance = store.provenance_path.read_text()
    assert str(secret) not in provenance and "shadow" not in provenance

    plain = cli("import", str(folder), "--offline", "--allow-pickle")
    assert plain.returncode == 0, plain.stderr
    assert f"followed link {folder / 'x.ckpt'} -> {secret} (outside the folder)\n" in plain.stderr
    assert (
        f"skipped {folder / 'x.ckpt'} (link to {secret}): its bytes are neither safetensors, "
        "a pickle stream nor a torch zip archive\n" in plain.stderr
    )
    assert "hint: Only files whose bytes are a valid model are imported" in plain.stderr


def test_pickles_are_taken_by_their_bytes_and_only_with_allow_pickle(
    catalog: Engine, store: BlobStore, tmp_path: Path
) -> None:
    folder = tmp_path / "Stable-diffusion"
    folder.mkdir()
    raw = pickle.dumps({"state_dict": {"w": [0.25] * 64}, "epoch": 3}, protocol=2)
    archive = torch_zip({"state_dict": {"w": "storage 0"}})
    (folder / "raw.ckpt").write_bytes(raw)
    (folder / "zipped.pt").write_bytes(archive)
    (folder / "fake.pth").write_bytes(b"\x80\x04garbage that is no pickle stream at all")
    no_pkl = io.BytesIO()
    with zipfile.ZipFile(no_pkl, "w") as z:
        z.writestr("notes.txt", "just a zip")
    (folder / "plainzip.bin").write_bytes(no_pkl.getvalue())
    (folder / "pickle_named.safetensors").write_bytes(raw)
    refused = "its bytes are neither safetensors, a pickle stream nor a torch zip archive"

    data = cli_json("import", str(folder), "--offline")

    assert data["imported"] == []
    found = skips(data)
    assert found["raw.ckpt"] == (
        "pickle-refused",
        "pickle checkpoint (a raw pickle stream) refused",
        None,
    )
    assert found["zipped.pt"] == (
        "pickle-refused",
        "pickle checkpoint (a torch zip archive) refused",
        None,
    )
    assert found["fake.pth"] == ("not-a-model", refused, None)
    assert found["plainzip.bin"] == ("not-a-model", refused, None)
    assert found["pickle_named.safetensors"][0] == "invalid-safetensors"
    assert stored_blobs(store) == set()
    plain = cli("import", str(folder), "--offline")
    assert "hint: Pickle checkpoints can run code when loaded; pass --allow-pickle" in plain.stderr

    data = cli_json("import", str(folder), "--offline", "--allow-pickle")

    imported = {Path(f["path"]).name: f for f in data["imported"]}
    assert set(imported) == {"raw.ckpt", "zipped.pt"}
    assert {f["source"] for f in imported.values()} == {"local"}
    assert stored_blobs(store) == {sha256_of(raw), sha256_of(archive)}
    assert store.blob_path(sha256_of(raw)).read_bytes() == raw
    assert set(skips(data)) == {"fake.pth", "plainzip.bin", "pickle_named.safetensors"}
    with Session(catalog) as session:
        model = repo.get_model(session, imported["raw.ckpt"]["model_id"])
        assert model.versions[0].files[0].format == "PickleTensor"


def test_random_bytes_named_safetensors_are_skipped(store: BlobStore, tmp_path: Path) -> None:
    folder = tmp_path / "Lora"
    folder.mkdir()
    (folder / "noise.safetensors").write_bytes(os.urandom(1 << 16))
    (folder / "short.safetensors").write_bytes(b"abc")

    data = cli_json("import", str(folder), "--offline", "--allow-pickle")

    found = skips(data)
    assert data["imported"] == [] and stored_blobs(store) == set()
    assert found["noise.safetensors"][0] == "invalid-safetensors"
    assert found["noise.safetensors"][1].startswith("safetensors header length")
    assert found["short.safetensors"] == (
        "invalid-safetensors",
        "file is 3 bytes, too small for a safetensors header (needs 8 or more)",
        None,
    )


def test_fifos_devices_and_fifo_sidecars_are_never_opened_as_models(
    store: BlobStore, tmp_path: Path
) -> None:
    folder = tmp_path / "Lora"
    folder.mkdir()
    os.mkfifo(folder / "x.safetensors")  # opening it for reading would block forever
    outside_fifo = tmp_path / "pipe"
    os.mkfifo(outside_fifo)
    (folder / "y.ckpt").symlink_to(outside_fifo)
    (folder / "zero.safetensors").symlink_to("/dev/zero")
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(folder / "s.safetensors"))
    good = sd15_lora(fill=93)
    (folder / "good.safetensors").write_bytes(good)
    os.mkfifo(folder / "good.civitai.info")

    data = cli_json("import", str(folder), "--offline", "--allow-pickle")
    listener.close()

    assert [Path(f["path"]).name for f in data["imported"]] == ["good.safetensors"]
    assert skips(data) == {
        "x.safetensors": ("special-file", "a FIFO, not a regular file; not opened", None),
        "y.ckpt": ("special-file", "a FIFO, not a regular file; not opened", str(outside_fifo)),
        "zero.safetensors": (
            "special-file",
            "a character device, not a regular file; not opened",
            "/dev/zero",
        ),
        "s.safetensors": ("special-file", "a socket, not a regular file; not opened", None),
    }
    assert data["scanned"] == 5
    assert [(Path(i["path"]).name, i["code"], i["reason"]) for i in data["ignored_sidecars"]] == [
        ("good.civitai.info", "sidecar-unreadable", "not a regular file; not read")
    ]
    assert stored_blobs(store) == {sha256_of(good)}


def test_symlink_loops_end_and_linked_folders_are_followed_and_reported(
    store: BlobStore, tmp_path: Path
) -> None:
    other_drive = tmp_path / "other-drive" / "loras"
    other_drive.mkdir(parents=True)
    far = sd15_lora(fill=95)
    (other_drive / "far.safetensors").write_bytes(far)
    folder = tmp_path / "models"
    (folder / "Lora" / "deeper").mkdir(parents=True)
    (folder / "Lora" / "deeper" / "up").symlink_to("../..")  # a loop back to models/
    (folder / "Lora" / "self.safetensors").symlink_to("self.safetensors")  # ELOOP
    (folder / "Lora" / "linked").symlink_to(other_drive)
    (folder / "Lora" / "again").symlink_to(other_drive)  # a second link to the same folder
    near = sd15_lora(fill=96)
    (folder / "Lora" / "near.safetensors").write_bytes(near)

    result = cli("import", str(folder), "--offline", "--json", timeout=120)

    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert sorted(Path(f["path"]).name for f in data["imported"]) == [
        "far.safetensors",
        "near.safetensors",
    ]
    assert stored_blobs(store) == {sha256_of(far), sha256_of(near)}
    found = skips(data)
    walked_once = "a link to a folder already walked (a loop or a second link); not entered"
    assert found["up"] == ("link-loop", walked_once, str(folder))
    assert found["linked"] == ("link-loop", walked_once, str(other_drive))  # "again" came first
    assert found["self.safetensors"][0] == "broken-link"
    assert found["self.safetensors"][1].startswith("a link to nothing usable (")
    assert [
        (Path(li["path"]).name, li["target"], li["is_dir"], li["outside"]) for li in data["links"]
    ] == [("again", str(other_drive), True, True)]
    assert data["scanned"] == 3


@pytest.mark.parametrize("mode", ["auto", "copy"])
@pytest.mark.parametrize("how", ["replaced", "rewritten-in-place"])
def test_a_file_changed_between_its_check_and_the_store_is_not_imported(
    engine: Engine, store: BlobStore, tmp_path: Path, mode: str, how: str
) -> None:
    from assetmgr.store.importer import import_folder

    folder = tmp_path / "Lora"
    folder.mkdir()
    checked = sd15_lora(fill=101)
    swapped = sd15_lora(fill=102)  # the same size, other bytes
    (folder / "a.safetensors").write_bytes(checked)
    (folder / "b.safetensors").write_bytes(sd15_lora(fill=103))

    def meanwhile(index: int, total: int, path: str) -> None:
        # Called before b is checked: a is checked and hashed, not yet in the store.
        if path.endswith("b.safetensors"):
            if how == "replaced":
                (folder / "a.new").write_bytes(swapped)
                os.replace(folder / "a.new", folder / "a.safetensors")
            else:
                with open(folder / "a.safetensors", "r+b") as f:
                    f.write(swapped)
                st = os.stat(folder / "a.safetensors")
                os.utime(folder / "a.safetensors", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))

    report = import_folder(engine, store, None, folder, mode=mode, progress=meanwhile)

    assert [Path(f.path).name for f in report.imported] == ["b.safetensors"]
    assert [(Path(s.path).name, s.code, s.reason) for s in report.skipped] == [
        ("a.safetensors", "changed", "the file changed while it was imported")
    ]
    assert sha256_of(checked) not in stored_blobs(store)
    assert sha256_of(swapped) not in stored_blobs(store)
    with Session(engine) as session:
        assert repo.find_files_by_hash(session, sha256_of(checked)) == []
    assert (folder / "a.safetensors").read_bytes() == swapped  # the user's file untouched
