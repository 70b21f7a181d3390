"""Pulling files into the verified store from the fake Civitai, with hostile servers and bytes."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, select
from sqlmodel import Session

from assetmgr.store.blobs import BlobStore
from assetmgr.store.download import HashMismatchError, PolicyRefusedError
from assetmgr.store.safetensors_check import UnsafeFileError
from assetmgr.store.service import StoreService, local_path, verify_store
from assetmgr.wording import describe
from catalog.civitai.client import CivitaiClient
from catalog.civitai.errors import LoginRequiredError
from catalog.models import LocalFile
from tests.fakeciv import FakeCatalog, FakeCivitai, make_safetensors

REPO_ROOT = Path(__file__).resolve().parents[2]
API_KEY = "test-api-key-0123456789"


def open_version(fake_catalog: FakeCatalog) -> int:
    """A published version of an active model that needs no login."""
    for m in fake_catalog.models.values():
        if m.mode is None and m.status == "Published" and not m.nsfw:
            for v in m.published_versions:
                if (
                    not v.require_auth
                    and v.usage_control == "Download"
                    and v.early_access_deadline is None
                ):
                    return v.id
    raise AssertionError("no open version in the fake catalog")


def lora_bytes(size_hint: int = 300_000, seed: float = 1.0) -> bytes:
    return make_safetensors(
        {"lora_unet_down.weight": [seed, 2.0, 3.0, 4.0]},
        metadata={"ss_output_name": "demo"},
        filler_bytes=size_hint,
    )


@pytest.fixture
def store(tmp_path: Path) -> BlobStore:
    return BlobStore(Path(os.environ["ASSETMGR_HOME"]) / "store")


@pytest.fixture
def service(engine: Engine, store: BlobStore, client: CivitaiClient) -> StoreService:
    svc = StoreService(engine, store, client)
    svc.downloader.sleep = lambda s: None
    yield svc
    svc.close()


def local_row(engine: Engine, file_id: int) -> LocalFile | None:
    with Session(engine) as session:
        return (
            session.execute(select(LocalFile).where(LocalFile.file_id == file_id)).scalars().first()
        )


def test_good_pull_is_verified_read_only_and_recorded(
    service: StoreService,
    store: BlobStore,
    engine: Engine,
    fake: FakeCivitai,
    fake_catalog: FakeCatalog,
) -> None:
    vid = open_version(fake_catalog)
    f = fake_catalog.add_file_bytes(vid, lora_bytes())
    result = service.pull(vid)
    assert result.sha256 == f.hashes["SHA256"]
    assert result.blob_path == store.blob_path(f.hashes["SHA256"])
    assert result.blob_path.read_bytes() == f.content
    assert stat.S_IMODE(result.blob_path.stat().st_mode) == 0o444
    assert result.link_path is not None and result.link_path.resolve() == result.blob_path.resolve()
    assert result.hashes is not None and result.hashes.sha256 == f.hashes["SHA256"]
    row = local_row(engine, f.id)
    assert row is not None and row.state == "verified" and row.verified_at is not None
    # Same bytes as Civitai hashed, so the row carries the other five hashes as well.
    assert (row.autov2, row.autov3, row.crc32, row.blake3) == (
        f.hashes["AutoV2"],
        f.hashes["AutoV3"],
        f.hashes["CRC32"],
        f.hashes["BLAKE3"],
    )
    assert row.size_bytes == len(f.content)
    assert local_path(engine, store, str(vid)) == result.blob_path
    prov = [json.loads(line) for line in store.provenance_path.read_text().splitlines()]
    assert prov[-1]["result"] == "verified" and prov[-1]["computed"]["SHA256"] == f.hashes["SHA256"]
    assert prov[-1]["expected"]["SHA256"] == f.hashes["SHA256"]
    # A second pull downloads nothing.
    fake.reset_log()
    again = service.pull(vid)
    assert again.already_present and not fake.storage_requests


def test_all_hashes_mode_computes_the_six_hashes_while_streaming(
    engine: Engine, store: BlobStore, client: CivitaiClient, fake_catalog: FakeCatalog
) -> None:
    from assetmgr.store.download import Downloader

    vid = open_version(fake_catalog)
    f = fake_catalog.add_file_bytes(vid, lora_bytes(size_hint=3_000_000))  # > 2 MiB: AutoV1 too
    svc = StoreService(engine, store, client)
    svc.downloader = Downloader(store, svc._resolve_url, all_hashes=True)
    result = svc.pull(vid)
    svc.close()
    assert result.hashes is not None and result.hashes.as_civitai_dict() == f.hashes


def test_tampered_bytes_are_quarantined_and_never_loadable(
    service: StoreService, store: BlobStore, engine: Engine, fake_catalog: FakeCatalog
) -> None:
    vid = open_version(fake_catalog)
    honest = lora_bytes(seed=1.0)
    from tests.fakeciv import civitai_hashes

    advertised = civitai_hashes(honest)
    f = fake_catalog.add_file_bytes(vid, lora_bytes(seed=9.0), hashes=advertised)
    with pytest.raises(HashMismatchError) as info:
        service.pull(vid)
    message = info.value.message
    assert advertised["SHA256"] in message and "got" in message
    assert not store.has(advertised["SHA256"])
    assert list(store.quarantine_dir.glob("*.bin"))
    assert local_row(engine, f.id).state == "quarantined"
    with pytest.raises(Exception, match="no verified local file"):
        local_path(engine, store, str(vid))


def test_cut_connection_resumes_with_range(
    service: StoreService, fake: FakeCivitai, fake_catalog: FakeCatalog
) -> None:
    vid = open_version(fake_catalog)
    data = lora_bytes(size_hint=2_000_000)
    fake_catalog.add_file_bytes(vid, data)
    fake.storage_faults.cut_body_after(700_000)
    result = service.pull(vid)
    assert result.blob_path.read_bytes() == data
    gets = [r for r in fake.storage_requests if r.method == "GET"]
    assert len(gets) == 2
    assert "range" not in gets[0].headers
    resumed_at = int(gets[1].headers["range"].removeprefix("bytes=").rstrip("-"))
    assert 0 < resumed_at <= 700_000
    assert gets[1].headers.get("if-range")  # the ETag, so a changed file is never spliced
    # Each resume asked the API for a fresh signed URL.
    assert fake.count_prefix("/api/download/models/") == 2


def test_login_required_without_and_with_key_and_key_stays_on_the_api(
    engine: Engine, store: BlobStore, fake: FakeCivitai, fake_catalog: FakeCatalog
) -> None:
    vid = open_version(fake_catalog)
    fake_catalog.update_version(vid, require_auth=True)
    f = fake_catalog.add_file_bytes(vid, lora_bytes())
    with CivitaiClient(base_url=fake.base_url) as anonymous:
        svc = StoreService(engine, store, anonymous)
        with pytest.raises(LoginRequiredError) as info:
            svc.pull(vid)
        words = describe(info.value)
        assert words is not None and "CIVITAI_API_KEY" in words.hint and "set-key" in words.hint
        svc.close()
    with CivitaiClient(base_url=fake.base_url, api_key=API_KEY) as keyed:
        svc = StoreService(engine, store, keyed)
        result = svc.pull(vid)
        svc.close()
    assert result.sha256 == f.hashes["SHA256"]
    assert fake.storage_requests
    for req in fake.storage_requests:
        assert "authorization" not in req.headers
        assert API_KEY not in json.dumps(req.query) and API_KEY not in req.path
    api_auth = [r for r in fake.api_requests if r.headers.get("authorization")]
    assert api_auth and all(r.headers["authorization"] == f"Bearer {API_KEY}" for r in api_auth)


@pytest.mark.parametrize(
    "hostile_name",
    [
        "../../../../etc/passwd",
        "/abs/path.safetensors",
        "a\x1b[31mred\x07.safetensors",
        "..",
        "CON.safetensors",
    ],
)
def test_hostile_filenames_stay_inside_the_store(
    service: StoreService, store: BlobStore, fake_catalog: FakeCatalog, hostile_name: str
) -> None:
    vid = open_version(fake_catalog)
    fake_catalog.add_file_bytes(vid, lora_bytes(), disposition_name=hostile_name)
    result = service.pull(vid)
    assert result.link_path is not None
    link = result.link_path.resolve(strict=False)
    names = store.names_dir.resolve()
    assert str(result.link_path.absolute()).startswith(str(names))
    assert not any(ord(c) < 32 for c in result.link_path.name)
    assert link == result.blob_path.resolve()


def test_pickle_and_flagged_files_are_refused(
    service: StoreService, store: BlobStore, fake_catalog: FakeCatalog
) -> None:
    vid = open_version(fake_catalog)
    fake_catalog.add_file_bytes(
        vid, b"\x80\x04\x95" + b"\x00" * 64, name="evil.ckpt", format="PickleTensor"
    )
    with pytest.raises(PolicyRefusedError, match="pickle"):
        service.pull(vid)
    vid2 = next(
        v.id
        for m in fake_catalog.models.values()
        for v in m.published_versions
        if v.id != vid
        and not v.require_auth
        and m.mode is None
        and not m.nsfw
        and v.usage_control == "Download"
        and v.early_access_deadline is None
    )
    f = fake_catalog.add_file_bytes(vid2, lora_bytes())
    f.pickle_scan_result = "Danger"
    fake_catalog.touch()
    with pytest.raises(PolicyRefusedError, match="dangerous"):
        service.pull(vid2)
    assert not list(store.blobs_dir.rglob("*")) or not store.has(f.hashes["SHA256"])


def test_hostile_safetensors_with_matching_hash_is_refused(
    service: StoreService, store: BlobStore, engine: Engine, fake_catalog: FakeCatalog
) -> None:
    vid = open_version(fake_catalog)
    good = lora_bytes()
    bad = good + b"trailing polyglot bytes"  # hashes advertised for exactly these bytes
    f = fake_catalog.add_file_bytes(vid, bad)
    with pytest.raises(UnsafeFileError):
        service.pull(vid)
    assert not store.has(f.hashes["SHA256"])
    assert list(store.quarantine_dir.glob("*.bin"))


def test_verify_catches_a_flipped_byte(
    service: StoreService, store: BlobStore, engine: Engine, fake_catalog: FakeCatalog
) -> None:
    vid = open_version(fake_catalog)
    f = fake_catalog.add_file_bytes(vid, lora_bytes())
    result = service.pull(vid)
    clean = verify_store(engine, store)
    assert clean.clean and clean.ok == 1
    os.chmod(result.blob_path, 0o644)
    with open(result.blob_path, "r+b") as fh:
        fh.seek(100)
        byte = fh.read(1)
        fh.seek(100)
        fh.write(bytes([byte[0] ^ 0x01]))
    report = verify_store(engine, store)
    assert not report.clean and report.corrupt[0]["sha256"] == f.hashes["SHA256"]
    assert not store.has(f.hashes["SHA256"])
    assert local_row(engine, f.id).state == "quarantined"


def run_cli(*args: str, **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "assetmgr", *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        **kw,
    )


def test_cli_pull_killed_with_sigkill_resumes(fake: FakeCivitai, fake_catalog: FakeCatalog) -> None:
    vid = open_version(fake_catalog)
    data = lora_bytes(size_hint=3_000_000)
    f = fake_catalog.add_file_bytes(vid, data)
    fake.storage_faults.throttle(400_000)
    home = Path(os.environ["ASSETMGR_HOME"])
    proc = subprocess.Popen(
        [sys.executable, "-m", "assetmgr", "pull", str(vid), "--api-base", fake.base_url],
        cwd=REPO_ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    part = home / "store" / "partial" / f"file-{f.id}.part"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and (not part.exists() or part.stat().st_size < 600_000):
        time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    had = part.stat().st_size
    assert 0 < had < len(data)
    # The partial and its state file are the store's private files from their creation.
    assert part.stat().st_mode & 0o777 == 0o600
    assert (part.with_suffix(".json")).stat().st_mode & 0o777 == 0o600
    fake.storage_faults.throttle(None)
    fake.reset_log()
    out = run_cli("pull", str(vid), "--api-base", fake.base_url, "--json")
    assert out.returncode == 0, out.stderr
    res = json.loads(out.stdout)[0]
    assert res["resumed_from"] >= had - 1_048_576 and res["resumed_from"] > 0
    assert Path(res["path"]).read_bytes() == data
    gets = [r for r in fake.storage_requests if r.method == "GET"]
    assert gets[0].headers["range"] == f"bytes={res['resumed_from']}-"
    # models show now reports the local file.
    shown = json.loads(
        run_cli("models", "show", str(fake_catalog.versions[vid].model_id), "--json").stdout
    )
    local = [fl["local"] for v in shown["versions"] for fl in v["files"] if fl["id"] == f.id][0]
    assert local["state"] == "verified" and local["path"] == res["path"]


def test_cli_pull_mismatch_exits_non_zero_with_expected_vs_got(
    fake: FakeCivitai, fake_catalog: FakeCatalog
) -> None:
    vid = open_version(fake_catalog)
    from tests.fakeciv import civitai_hashes

    advertised = civitai_hashes(lora_bytes(seed=1.0))
    fake_catalog.add_file_bytes(vid, lora_bytes(seed=2.0), hashes=advertised)
    out = run_cli("pull", str(vid), "--api-base", fake.base_url)
    assert out.returncode != 0
    assert f"expected SHA256 {advertised['SHA256']}" in out.stderr and "got" in out.stderr
    assert run_cli("path", str(vid)).returncode != 0
    # Retrying keeps one quarantined copy per file, not one per attempt.
    assert run_cli("pull", str(vid), "--api-base", fake.base_url).returncode != 0
    quarantine = Path(os.environ["ASSETMGR_HOME"]) / "store" / "quarantine"
    kept = sorted(p.name for p in quarantine.iterdir())
    assert len([n for n in kept if n.endswith(".bin")]) == 1, kept
    assert len([n for n in kept if n.endswith(".json")]) == 1, kept
