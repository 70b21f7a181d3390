"""Files the user owns stay the user's, and the store is private to its user.

Real hardlinked imports whose originals the user later edits: `verify` and the check before a
job mounts a file refuse the changed bytes without touching the user's inode (mode, bytes);
the generation path stops before the engine is contacted. `--copy` (or a reflink) shares
nothing with the original. Mode bits show the store is not readable by other users, even with
a umask of 0.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, select
from sqlmodel import Session

from assetmgr.app.generation import GenerateRequest, build_spec, run_generation
from assetmgr.store.blobs import FICLONE, BlobStore, FileIdentity
from assetmgr.store.hashing import FileChangedError
from assetmgr.store.importer import import_folder
from assetmgr.store.service import BlobChangedError, check_before_mount, verify_store
from catalog.models import LocalFile
from tests.integration.test_export_attacks import sd15_checkpoint
from tests.integration.test_import_export import sd15_lora

REPO_ROOT = Path(__file__).resolve().parents[2]
ASSETMGR = Path(sys.executable).parent / "assetmgr"


@pytest.fixture
def store() -> BlobStore:
    return BlobStore(Path(os.environ["ASSETMGR_HOME"]) / "store")


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def rows(engine: Engine, sha256: str) -> list[LocalFile]:
    with Session(engine) as session:
        found = list(session.execute(select(LocalFile).where(LocalFile.sha256 == sha256)).scalars())
        for row in found:
            session.expunge(row)
        return found


def user_library(tmp_path: Path) -> Path:
    """A models folder the user owns: a checkpoint and a LoRA, mode 0644."""
    src = tmp_path / "user-models"
    src.mkdir()
    for name, data in (
        ("base15.safetensors", sd15_checkpoint()),
        ("inkwash.safetensors", sd15_lora(fill=5)),
    ):
        (src / name).write_bytes(data)
        os.chmod(src / name, 0o644)
    return src


def edit_in_place(path: Path) -> bytes:
    """What a user's editor or a training script does: rewrite bytes in the same inode."""
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    with open(path, "r+b") as fh:
        fh.write(data)
    return bytes(data)


def cli(engine: Engine, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    full_env = {
        **os.environ,
        "ASSETMGR_DB_URL": engine.url.render_as_string(hide_password=False),
        **env,
    }
    return subprocess.run(
        [str(ASSETMGR), *args],
        cwd=REPO_ROOT,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def hardlinked_import(engine: Engine, store: BlobStore, tmp_path: Path) -> dict[str, Any]:
    src = user_library(tmp_path)
    report = import_folder(engine, store, None, src)
    by_name = {Path(i.path).name: i for i in report.imported}
    ckpt = by_name["base15.safetensors"]
    blob = store.blob_path(ckpt.sha256)
    if os.stat(blob).st_ino != os.stat(src / "base15.safetensors").st_ino:
        pytest.skip("the file system cloned the file (reflink): nothing is shared to protect")
    return {"src": src, "ckpt": ckpt, "lora": by_name["inkwash.safetensors"], "blob": blob}


def test_verify_of_an_edited_hardlinked_original_drops_only_the_stores_link(
    engine: Engine, store: BlobStore, tmp_path: Path
) -> None:
    lib = hardlinked_import(engine, store, tmp_path)
    original = lib["src"] / "base15.safetensors"
    assert verify_store(engine, store).clean
    assert mode(original) == 0o644  # a clean verify leaves the shared inode alone

    edited = edit_in_place(original)
    result = cli(engine, "verify")
    assert result.returncode == 4
    sha = lib["ckpt"].sha256
    assert f"corrupt: expected {sha} got " in result.stderr
    assert "the store dropped its link; your original file was left as it is" in result.stderr

    assert mode(original) == 0o644 and original.read_bytes() == edited
    assert os.stat(original).st_nlink == 1  # the store holds no link to it any more
    assert not lib["blob"].exists()
    assert not list(store.quarantine_dir.glob("*.bin"))  # the user's bytes were not moved
    (record,) = store.quarantine_dir.glob("*.json")
    assert json.loads(record.read_text())["link_removed"] == str(lib["blob"])
    assert [r.state for r in rows(engine, sha)] == ["quarantined"]
    # The LoRA, untouched, is still verified.
    assert [r.state for r in rows(engine, lib["lora"].sha256)] == ["verified"]


def test_a_corrupt_blob_the_store_alone_holds_is_quarantined_read_only(
    engine: Engine, store: BlobStore, tmp_path: Path
) -> None:
    src = user_library(tmp_path)
    report = import_folder(engine, store, None, src, mode="copy")
    ckpt = next(i for i in report.imported if i.path.endswith("base15.safetensors"))
    blob = store.blob_path(ckpt.sha256)
    assert os.stat(blob).st_ino != os.stat(src / "base15.safetensors").st_ino
    os.chmod(blob, 0o644)
    edit_in_place(blob)
    report_v = verify_store(engine, store)
    (corrupt,) = report_v.corrupt
    assert corrupt["link_removed"] is False
    quarantined = Path(corrupt["quarantined_to"])
    assert quarantined.parent == store.quarantine_dir and mode(quarantined) == 0o400
    assert mode(src / "base15.safetensors") == 0o644


def test_an_edited_original_is_refused_before_any_job_mounts_it(
    engine: Engine, store: BlobStore, tmp_path: Path
) -> None:
    lib = hardlinked_import(engine, store, tmp_path)
    original = lib["src"] / "base15.safetensors"
    sha = lib["ckpt"].sha256
    # Unchanged: the recorded fingerprint answers without a re-hash.
    assert check_before_mount(engine, store, sha) == lib["blob"]
    with Session(engine) as session:
        plan = build_spec(
            session, store, GenerateRequest(model="base15", prompt="a <lora:inkwash:0.5>")
        )
        spec, mounts, models = plan.spec, plan.mounts, plan.models

    edited = edit_in_place(original)

    class EngineTripwire:
        """The sandbox service: any use of it means the engine would have been contacted."""

        touched: list[str] = []

        def __getattr__(self, name: str) -> Any:
            self.touched.append(name)
            raise AssertionError(f"the sandbox was used ({name}) before the mount check")

    tripwire = EngineTripwire()
    with pytest.raises(BlobChangedError) as caught:
        run_generation(
            engine, store, tripwire, spec, mounts, models, plugins=[], out_dir=tmp_path / "run"
        )
    assert tripwire.touched == []
    assert not (tmp_path / "run").exists()
    err = caught.value
    assert err.sha256 == sha and err.got_sha256 != sha and err.record.link_removed
    mount_name = next(n for n, info in models.items() if info["sha256"] == sha)
    assert err.message == (
        f"{mount_name} changed since it was verified (expected sha256 {sha}, "
        f"got {err.got_sha256}); refused to mount it"
    )
    assert mode(original) == 0o644 and original.read_bytes() == edited
    assert not lib["blob"].exists()
    assert [r.state for r in rows(engine, sha)] == ["quarantined"]


def test_cli_generate_refuses_an_edited_model_before_the_engine(
    engine: Engine, store: BlobStore, tmp_path: Path
) -> None:
    lib = hardlinked_import(engine, store, tmp_path)
    original = lib["src"] / "inkwash.safetensors"
    edited = edit_in_place(original)
    result = cli(
        engine,
        "generate",
        "--model",
        "base15",
        "--prompt",
        "a <lora:inkwash:0.5>",
        # No engine at all: a refusal that came later would be a connection error.
        DOCKER_HOST="unix:///nonexistent/docker.sock",
        ASSETMGR_SANDBOX_RECORD=str(tmp_path / "no-image-record.json"),
    )
    assert result.returncode == 1, result.stderr
    sha = lib["lora"].sha256
    lines = result.stderr.splitlines()
    assert any(
        line.startswith("error: inkwash-")
        and f"changed since it was verified (expected sha256 {sha}, got " in line
        and line.endswith("; refused to mount it")
        for line in lines
    ), result.stderr
    assert (
        "hint: The store dropped its link and left your original file as it is; import its "
        "folder again (`assetmgr import DIR`) to use the new bytes."
    ) in lines
    assert mode(original) == 0o644 and original.read_bytes() == edited


def test_same_bytes_with_a_new_stat_are_rehashed_and_accepted(
    engine: Engine, store: BlobStore, tmp_path: Path
) -> None:
    lib = hardlinked_import(engine, store, tmp_path)
    sha = lib["ckpt"].sha256
    (before,) = [r.verified_stat for r in rows(engine, sha)]
    assert before is not None
    original = lib["src"] / "base15.safetensors"
    original.write_bytes(original.read_bytes())  # same bytes, new mtime and ctime
    assert check_before_mount(engine, store, sha) == lib["blob"]
    (after,) = [r.verified_stat for r in rows(engine, sha)]
    assert after is not None and after != before
    assert mode(original) == 0o644


def test_a_file_edited_between_hashing_and_linking_is_not_stored(
    store: BlobStore, tmp_path: Path
) -> None:
    source = tmp_path / "model.safetensors"
    source.write_bytes(sd15_lora(fill=9))
    os.chmod(source, 0o644)
    import hashlib

    sha = hashlib.sha256(source.read_bytes()).hexdigest().upper()
    hashed_stat = os.stat(source)
    edit_in_place(source)
    os.utime(source, ns=(hashed_stat.st_atime_ns, hashed_stat.st_mtime_ns + 1))
    for how in ("auto", "copy"):
        with pytest.raises(FileChangedError):
            store.import_file(source, sha, mode=how, expected=FileIdentity.of(hashed_stat))
        assert not store.has(sha)
    assert not list(store.partial_dir.iterdir())


def test_copy_import_shares_nothing_with_the_original(
    engine: Engine, store: BlobStore, tmp_path: Path
) -> None:
    src = user_library(tmp_path)
    result = cli(engine, "import", str(src), "--copy", "--offline", "--json")
    assert result.returncode == 0, result.stderr
    imported = json.loads(result.stdout)["imported"]
    assert len(imported) == 2
    for item in imported:
        original = Path(item["path"])
        blob = store.blob_path(item["sha256"])
        assert os.stat(blob).st_ino != os.stat(original).st_ino
        assert os.stat(original).st_nlink == 1
        edit_in_place(original)
        assert mode(original) == 0o644
    assert verify_store(engine, store).clean
    provenance = [json.loads(x) for x in store.provenance_path.read_text().splitlines()]
    assert {p["stored_as"] for p in provenance if p["event"] == "import"} <= {"copy", "reflink"}


def _reflink_supported(folder: Path) -> bool:
    a, b = folder / "probe-a", folder / "probe-b"
    a.write_bytes(b"x" * 4096)
    try:
        with open(a, "rb") as src, open(b, "wb") as dst:
            fcntl.ioctl(dst.fileno(), FICLONE, src.fileno())
        return True
    except OSError as exc:
        assert exc.errno in (errno.EOPNOTSUPP, errno.ENOTTY, errno.EXDEV, errno.EINVAL)
        return False
    finally:
        a.unlink()
        b.unlink(missing_ok=True)


def test_reflink_import_is_independent_where_the_file_system_clones(
    engine: Engine, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    # scripts/setup-system mounts an XFS file (reflink=1) and scripts/test names it here.
    clone_root = os.environ.get("ASSETMGR_TEST_REFLINK_DIR")
    base = Path(tempfile.mkdtemp(dir=clone_root)) if clone_root else tmp_path
    if clone_root:
        request.addfinalizer(lambda: shutil.rmtree(base, ignore_errors=True))
    if not _reflink_supported(base):
        assert not clone_root, f"ASSETMGR_TEST_REFLINK_DIR={clone_root} cannot clone files"
        pytest.skip("this file system has no reflinks (FICLONE); the copy fallback is tested")
    store = BlobStore(base / "store")
    src = user_library(base)
    report = import_folder(engine, store, None, src)
    for item in report.imported:
        assert os.stat(store.blob_path(item.sha256)).st_ino != os.stat(item.path).st_ino
    provenance = [json.loads(x) for x in store.provenance_path.read_text().splitlines()]
    assert {p["stored_as"] for p in provenance if p["event"] == "import"} == {"reflink"}


# --- the store is private -----------------------------------------------------------------


def private_layout(store: BlobStore) -> list[Path]:
    return [
        store.root,
        store.blobs_dir.parent,
        store.blobs_dir,
        store.partial_dir,
        store.quarantine_dir,
        store.locks_dir,
        store.names_dir,
    ]


def test_store_directories_and_files_are_not_readable_by_other_users(
    engine: Engine, store: BlobStore, tmp_path: Path
) -> None:
    src = user_library(tmp_path)
    for model in src.iterdir():  # old enough for the hash cache to keep their hashes
        os.utime(model, (1_600_000_000, 1_600_000_000))
    old_umask = os.umask(0)  # the most permissive umask: modes come from the opens themselves
    try:
        import_folder(engine, store, None, src, mode="copy")
        with store.lock("some-download"):
            pass
        bad = store.partial_dir / "bad.part"
        fd = os.open(bad, os.O_WRONLY | os.O_CREAT, 0o600)
        os.close(fd)
        store.quarantine(bad, got_sha256="0" * 64, reason="test")
    finally:
        os.umask(old_umask)
    for folder in private_layout(store):
        assert mode(folder) == 0o700, folder
    for shard in store.blobs_dir.iterdir():
        assert mode(shard) == 0o700, shard
    for folder in [p for p in store.names_dir.rglob("*") if p.is_dir() and not p.is_symlink()]:
        assert mode(folder) == 0o700, folder
    assert mode(store.provenance_path) == 0o600
    assert mode(store.root / "CACHEDIR.TAG") == 0o600
    hash_cache = store.root / "hash-cache.sqlite3"
    assert mode(hash_cache) == 0o700 and mode(hash_cache / "hashes.sqlite3") == 0o600
    assert [mode(p) for p in store.locks_dir.iterdir()] == [0o600]
    assert sorted(mode(p) for p in store.quarantine_dir.iterdir()) == [0o400, 0o600]
    # Blobs are 0444 on purpose: the job's uid reads them through a bind mount, while other
    # users cannot get past the 0700 directories above them.
    for _, blob in store.iter_blobs():
        assert mode(blob) == 0o444
        assert mode(blob.parent) == 0o700


def test_an_older_world_readable_store_is_tightened_on_open(
    engine: Engine, store: BlobStore, tmp_path: Path
) -> None:
    lib = hardlinked_import(engine, store, tmp_path)
    # What stores looked like before: 0755 folders, 0644 private files.
    for folder in [*private_layout(store), *store.blobs_dir.iterdir()]:
        os.chmod(folder, 0o755)
    os.chmod(store.provenance_path, 0o644)
    extra = store.partial_dir / "old.part"
    extra.write_bytes(b"partial bytes")
    os.chmod(extra, 0o644)

    reopened = BlobStore(store.root)
    reopened.ensure()
    for folder in [*private_layout(store), *store.blobs_dir.iterdir()]:
        assert mode(folder) == 0o700, folder
    assert mode(store.provenance_path) == 0o600
    assert mode(extra) == 0o600
    # The hardlinked blob is the user's inode: its mode is not the store's to change.
    assert mode(lib["blob"]) == 0o644 and mode(lib["src"] / "base15.safetensors") == 0o644
