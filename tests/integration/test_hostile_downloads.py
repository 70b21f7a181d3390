"""A hostile storage host on 127.0.0.1: endless bodies, sizes exceeded, refusals, redirects.

Every transfer has a bound (the catalog's exact size, its approximate size plus a margin, the
length storage declares, the maximum download size, free space); past it the download stops at
once, its one partial file is deleted, and nothing lands in quarantine. Legitimate transfers
keep resuming with Range/If-Range.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine

from assetmgr.store.blobs import DISK_HEADROOM_BYTES, BlobStore, DiskSpaceError
from assetmgr.store.download import (
    APPROX_SIZE_MARGIN_BYTES,
    DownloadTooLargeError,
    IncompleteDownloadError,
)
from assetmgr.store.service import StoreService
from catalog.civitai import CivitaiClient, LoginRequiredError, RetryPolicy
from tests.fakeciv import FakeCatalog, FakeCivitai
from tests.integration.test_store import lora_bytes, open_version

REPO_ROOT = Path(__file__).resolve().parents[2]
API_KEY = "test-api-key-0123456789"
MAX = 8 << 20
SLICE = 256 << 10  # the downloader's socket read: a bound is noticed within one
# Loopback socket buffers (tcp_rmem goes up to 32 MiB) hold what a server wrote before the
# client hung up; an unbounded client would take all of `endless_bytes` (1 GiB).
SOCKET_SLACK = 64 << 20


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "assetmgr", *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **(env or {})},
    )


def error_lines(stderr: str) -> tuple[str, str]:
    lines = [line for line in stderr.splitlines() if line.startswith(("error: ", "hint: "))]
    assert len(lines) == 2 and "Traceback" not in stderr, stderr
    return lines[0], lines[1]


def store_files(store: BlobStore) -> dict[str, list[str]]:
    """What the store holds besides locks: partial files, quarantine, blobs."""
    return {
        name: sorted(str(p.relative_to(store.root)) for p in folder.rglob("*") if p.is_file())
        for name, folder in (
            ("partial", store.partial_dir),
            ("quarantine", store.quarantine_dir),
            ("blobs", store.root / "blobs"),
        )
        if folder.exists()
    }


def assert_nothing_kept(store: BlobStore) -> None:
    assert store_files(store) in ({}, {"partial": [], "quarantine": [], "blobs": []})


@pytest.fixture
def store() -> BlobStore:
    return BlobStore(Path(os.environ["ASSETMGR_HOME"]) / "store")


def make_service(engine: Engine, store: BlobStore, client: CivitaiClient) -> StoreService:
    service = StoreService(engine, store, client, max_download_bytes=MAX)
    service.downloader.sleep = lambda s: None
    return service


@pytest.fixture
def service(engine: Engine, store: BlobStore, client: CivitaiClient) -> Iterator[StoreService]:
    svc = make_service(engine, store, client)
    yield svc
    svc.close()


def refused(message: str, source: str, limit: int) -> int:
    """The byte count a 'stopped at' message names, after checking the rest of it."""
    match = re.search(
        rf"stopped at (\d+) bytes \([^)]*\), past the {limit} bytes \([^)]*\) bound \({source}\);"
        r" the partial file was deleted$",
        message,
    )
    assert match, message
    return int(match.group(1))


@pytest.mark.parametrize("kind", ["endless", "endless_eof"], ids=["chunked", "no-length"])
def test_cli_pull_with_no_size_anywhere_stops_at_the_maximum_and_keeps_nothing(
    fake: FakeCivitai, fake_catalog: FakeCatalog, store: BlobStore, kind: str
) -> None:
    vid = open_version(fake_catalog)
    f = fake_catalog.add_file_bytes(vid, lora_bytes())
    fake_catalog.set_file_size_kb(f.id, None)
    for _retry in (1, 2):  # a retry must not pile anything up either
        fake.storage_faults.clear()
        fake.storage_faults.schedule([kind])
        out = run_cli(
            "pull",
            str(vid),
            "--api-base",
            fake.base_url,
            env={"ASSETMGR_MAX_DOWNLOAD_SIZE": "8MiB"},
        )
        assert out.returncode == 1
        error, hint = error_lines(out.stderr)
        v = fake_catalog.versions[vid]
        model = fake_catalog.models[v.model_id]
        assert error.startswith(
            f"error: version {vid} ({model.name} / {v.name}): {f.name}: stopped at "
        )
        stopped_at = refused(error, "the maximum download size", MAX)
        assert MAX < stopped_at <= MAX + SLICE
        assert hint == (
            "hint: If the file really is that large, raise max_download_size in the config file "
            "or ASSETMGR_MAX_DOWNLOAD_SIZE (`assetmgr config show` prints the value in use)."
        )
        assert_nothing_kept(store)
        assert fake.storage_faults.streamed_bytes < MAX + SLICE + SOCKET_SLACK
        assert fake.storage_faults.streamed_bytes < fake.storage_faults.endless_bytes
    log = [json.loads(line) for line in store.provenance_path.read_text().splitlines()]
    assert [e["result"] for e in log] == ["refused", "refused"]


def test_an_endless_download_keeps_at_most_one_partial_while_it_runs(
    service: StoreService, store: BlobStore, fake: FakeCivitai, fake_catalog: FakeCatalog
) -> None:
    vid = open_version(fake_catalog)
    f = fake_catalog.add_file_bytes(vid, lora_bytes())
    fake_catalog.set_file_size_kb(f.id, None)
    fake.storage_faults.schedule(["endless_eof"])
    fake.storage_faults.throttle(32 << 20)  # slow enough for a few progress reports
    service.downloader.chunk_bytes = 1 << 20
    seen: list[list[tuple[str, int]]] = []

    def watch(progress: Any) -> None:
        seen.append([(p.name, p.stat().st_size) for p in store.partial_dir.glob("*.part")])

    with pytest.raises(DownloadTooLargeError) as info:
        service.pull(vid, progress=watch)
    assert len(seen) >= 2
    assert all(len(parts) <= 1 for parts in seen)
    assert {name for parts in seen for name, _ in parts} == {f"file-{f.id}.part"}
    assert max(size for parts in seen for _, size in parts) <= MAX
    assert info.value.limit == MAX and info.value.received is not None
    assert_nothing_kept(store)


def test_cli_pull_stops_where_the_catalog_size_ends(
    fake: FakeCivitai, fake_catalog: FakeCatalog, store: BlobStore
) -> None:
    vid = open_version(fake_catalog)
    f = fake_catalog.add_file_bytes(vid, lora_bytes())
    catalog_size = 200_000
    fake_catalog.set_file_size_kb(f.id, catalog_size / 1024)
    fake.storage_faults.schedule(["endless_eof"])
    out = run_cli("pull", str(vid), "--api-base", fake.base_url)
    assert out.returncode == 1
    error, hint = error_lines(out.stderr)
    stopped_at = refused(error, "the catalog's size", catalog_size)
    assert catalog_size < stopped_at <= catalog_size + SLICE
    assert hint == (
        "hint: The server sent more than it declared, so the bytes were dropped. Sync the model "
        "again (`assetmgr sync --model-id N`) and retry; if it persists the file or server is bad."
    )
    assert_nothing_kept(store)


def test_storage_that_declares_more_than_the_catalog_is_refused_unread(
    service: StoreService, store: BlobStore, fake: FakeCivitai, fake_catalog: FakeCatalog
) -> None:
    vid = open_version(fake_catalog)
    data = lora_bytes(size_hint=2_000_000)
    f = fake_catalog.add_file_bytes(vid, data)
    fake_catalog.set_file_size_kb(f.id, 1_000_000 / 1024)  # storage still sends all of `data`
    with pytest.raises(DownloadTooLargeError) as info:
        service.pull(vid)
    err = info.value
    assert (err.declared, err.limit, err.limit_source) == (
        len(data),
        1_000_000,
        "the catalog's size",
    )
    assert err.message.endswith("bound (the catalog's size); not downloaded")
    assert_nothing_kept(store)


def test_storage_that_declares_more_than_the_maximum_is_refused_unread(
    service: StoreService, store: BlobStore, fake: FakeCivitai, fake_catalog: FakeCatalog
) -> None:
    vid = open_version(fake_catalog)
    f = fake_catalog.add_file_bytes(vid, lora_bytes())
    fake_catalog.set_file_size_kb(f.id, None)
    fake.storage_faults.schedule([f"length:{1 << 40}"])
    with pytest.raises(DownloadTooLargeError) as info:
        service.pull(vid)
    assert (info.value.declared, info.value.limit_source) == (1 << 40, "the maximum download size")
    assert fake.storage_faults.streamed_bytes < SOCKET_SLACK
    assert_nothing_kept(store)


def test_a_catalog_size_over_the_maximum_is_refused_before_any_request(
    service: StoreService, store: BlobStore, fake: FakeCivitai, fake_catalog: FakeCatalog
) -> None:
    vid = open_version(fake_catalog)
    f = fake_catalog.add_file_bytes(vid, lora_bytes())
    fake_catalog.set_file_size_kb(f.id, (MAX + 1) / 1024)
    service.target(vid)  # the version is in the local catalog now
    fake.reset_log()
    with pytest.raises(DownloadTooLargeError, match="declared as 8388609 bytes"):
        service.pull(vid)
    assert fake.requests == []
    assert_nothing_kept(store)


def test_a_fractional_size_kb_still_downloads_and_resumes(
    service: StoreService, store: BlobStore, fake: FakeCivitai, fake_catalog: FakeCatalog
) -> None:
    vid = open_version(fake_catalog)
    data = lora_bytes(size_hint=1_500_000)
    f = fake_catalog.add_file_bytes(vid, data)
    fake_catalog.set_file_size_kb(f.id, len(data) / 1024 + 0.0003)  # not whole bytes
    fake.storage_faults.cut_body_after(600_000)
    result = service.pull(vid)
    assert result.blob_path.read_bytes() == data
    gets = [r for r in fake.storage_requests if r.method == "GET"]
    assert len(gets) == 2 and gets[1].headers["range"].startswith("bytes=")
    assert gets[1].headers.get("if-range")


def test_a_fractional_size_kb_bounds_the_download_by_its_ceiling_plus_a_margin(
    service: StoreService, store: BlobStore, fake: FakeCivitai, fake_catalog: FakeCatalog
) -> None:
    vid = open_version(fake_catalog)
    f = fake_catalog.add_file_bytes(vid, lora_bytes())
    fake_catalog.set_file_size_kb(f.id, 100.3)
    fake.storage_faults.schedule(["endless_eof"])
    with pytest.raises(DownloadTooLargeError) as info:
        service.pull(vid)
    limit = math.ceil(100.3 * 1024) + APPROX_SIZE_MARGIN_BYTES
    assert info.value.limit == limit
    stopped_at = refused(info.value.message, "the catalog's approximate size plus a margin", limit)
    assert limit < stopped_at <= limit + SLICE
    assert_nothing_kept(store)


def test_cli_pull_refused_with_401_leaves_no_partial(
    fake: FakeCivitai, fake_catalog: FakeCatalog, store: BlobStore
) -> None:
    vid = open_version(fake_catalog)
    fake_catalog.update_version(vid, require_auth=True)
    fake_catalog.add_file_bytes(vid, lora_bytes())
    out = run_cli("pull", str(vid), "--api-base", fake.base_url)
    assert out.returncode == 1
    error, hint = error_lines(out.stderr)
    assert "requires you to be logged in to download it (HTTP 401" in error
    assert "CIVITAI_API_KEY" in hint
    assert_nothing_kept(store)
    assert fake.storage_requests == []


def test_a_refusal_after_an_interrupted_transfer_deletes_its_partial(
    engine: Engine, store: BlobStore, fake: FakeCivitai, fake_catalog: FakeCatalog
) -> None:
    vid = open_version(fake_catalog)
    f = fake_catalog.add_file_bytes(vid, lora_bytes(size_hint=1_000_000))
    with CivitaiClient(base_url=fake.base_url) as anonymous:
        svc = make_service(engine, store, anonymous)
        svc.downloader.max_attempts = 1
        fake.storage_faults.cut_body_after(300_000)
        with pytest.raises(IncompleteDownloadError):
            svc.pull(vid)
        part = store.partial_dir / f"file-{f.id}.part"
        assert 0 < part.stat().st_size <= 300_000  # resumable, so kept
        fake_catalog.update_version(vid, require_auth=True)
        with pytest.raises(LoginRequiredError):
            svc.pull(vid)
        svc.close()
    assert_nothing_kept(store)


def test_expired_links_until_giving_up_leave_no_empty_partial(
    service: StoreService, store: BlobStore, fake: FakeCivitai, fake_catalog: FakeCatalog
) -> None:
    vid = open_version(fake_catalog)
    fake_catalog.add_file_bytes(vid, lora_bytes())
    service.downloader.max_attempts = 3
    fake.storage_faults.schedule(["403"], repeat=True)
    with pytest.raises(IncompleteDownloadError, match="gave up after 3 attempts at byte 0"):
        service.pull(vid)
    assert_nothing_kept(store)


def test_free_space_is_checked_as_bytes_arrive(
    service: StoreService,
    store: BlobStore,
    fake: FakeCivitai,
    fake_catalog: FakeCatalog,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    vid = open_version(fake_catalog)
    f = fake_catalog.add_file_bytes(vid, lora_bytes())
    fake_catalog.set_file_size_kb(f.id, None)
    fake.storage_faults.schedule(["endless_eof"])
    service.downloader.max_download_bytes = 1 << 40
    service.downloader.chunk_bytes = 1 << 20
    part = store.partial_dir / f"file-{f.id}.part"
    real_usage = shutil.disk_usage

    def usage(path: Any) -> Any:
        # A volume with 6 MiB above the headroom, which the partial file eats into.
        written = part.stat().st_size if part.exists() else 0
        total, used, _ = real_usage(path)
        return type(real_usage(path))(total, used, DISK_HEADROOM_BYTES + (6 << 20) - written)

    monkeypatch.setattr(shutil, "disk_usage", usage)
    with pytest.raises(DiskSpaceError) as info:
        service.pull(vid)
    assert re.search(
        r"only \d+ bytes \([^)]*\) free in .* at byte \d+ \(keeping 268435456 bytes \(256 MiB\) "
        r"free\); stopped and deleted the partial file$",
        info.value.message,
    ), info.value.message
    assert info.value.hint == "Free some space or move ASSETMGR_HOME to a larger volume."
    assert fake.storage_faults.streamed_bytes < (6 << 20) + (1 << 20) + SOCKET_SLACK
    assert_nothing_kept(store)


def test_storage_is_fetched_without_credentials_even_across_its_redirects(
    engine: Engine, store: BlobStore, fake: FakeCivitai, fake_catalog: FakeCatalog
) -> None:
    vid = open_version(fake_catalog)
    fake_catalog.update_version(vid, require_auth=True)
    data = lora_bytes()
    f = fake_catalog.add_file_bytes(vid, data)
    with FakeCivitai(fake_catalog) as mirror:
        fake.storage_faults.schedule([f"redirect:{mirror.signed_url(f)}"])
        with CivitaiClient(
            base_url=fake.base_url, api_key=API_KEY, retry=RetryPolicy(max_attempts=2)
        ) as keyed:
            svc = make_service(engine, store, keyed)
            assert svc.pull(vid).blob_path.read_bytes() == data
            svc.close()
        away = fake.storage_requests + mirror.requests
    assert [r.server for r in mirror.requests] == ["storage"]
    assert [r.status for r in fake.storage_requests] == [302]
    for request in away:
        assert "authorization" not in request.headers
        assert API_KEY not in json.dumps([request.path, request.query, request.headers])
    assert all(r.headers["authorization"] == f"Bearer {API_KEY}" for r in fake.api_requests)
