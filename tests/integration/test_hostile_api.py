"""A hostile Civitai API on 127.0.0.1: bombs, endless and lying bodies, cross-origin redirects.

Each attack is served by the fake's fault injector (tests/fakeciv/hostile.py) to the real
client, and where practical to the real CLI, which must stop at its bounds and print its
one-line error and hint.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from catalog.civitai import (
    CivitaiClient,
    CivitaiResponseValidationError,
    CrossOriginRedirectError,
    ModelFilters,
    ResponseTooLargeError,
    RetryPolicy,
)
from tests.fakeciv import FakeCatalog, FakeCivitai

REPO_ROOT = Path(__file__).resolve().parents[2]
API_KEY = "test-api-key-0123456789"
SMALL_CAP = 4 << 20
# Loopback socket buffers (tcp_rmem goes up to 32 MiB) hold what a server wrote before the
# client hung up; an unbounded client would take all of `endless_bytes` (1 GiB).
SOCKET_SLACK = 64 << 20
BY_HASH = "/api/v1/model-versions/by-hash"


# Runs the CLI from a small launcher and reports the CLI's peak RSS. A child forked straight
# from pytest would count pytest's own pages (ru_maxrss survives exec), hundreds of MiB in a
# full run; the launcher's child starts from the launcher's few MiB.
_LAUNCHER = (
    "import os, subprocess, sys\n"
    "proc = subprocess.Popen(sys.argv[1:], stdout=subprocess.DEVNULL)\n"
    "_, status, usage = os.wait4(proc.pid, 0)\n"
    "print(os.waitstatus_to_exitcode(status), usage.ru_maxrss * 1024)\n"
)


def run_measured(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, int]:
    """Run the CLI; (exit code, stderr, peak RSS in bytes of it and its children)."""
    with tempfile.TemporaryFile() as err:
        launched = subprocess.run(
            [sys.executable, "-c", _LAUNCHER, sys.executable, "-m", "assetmgr", *args],
            cwd=REPO_ROOT,
            stdout=subprocess.PIPE,
            stderr=err,
            env={**os.environ, **(env or {})},
            check=True,
            timeout=600,
        )
        code, peak = (int(x) for x in launched.stdout.split())
        err.seek(0)
        return code, err.read().decode(), peak


def error_lines(stderr: str) -> tuple[str, str]:
    lines = [line for line in stderr.splitlines() if line.startswith(("error: ", "hint: "))]
    assert len(lines) == 2 and "Traceback" not in stderr, stderr
    return lines[0], lines[1]


@pytest.fixture
def small_client(fake: FakeCivitai) -> Iterator[CivitaiClient]:
    with CivitaiClient(
        base_url=fake.base_url,
        api_key=API_KEY,
        retry=RetryPolicy(max_attempts=3, base_delay=0.0),
        sleep=lambda s: None,
        max_body_bytes=SMALL_CAP,
    ) as client:
        yield client


@pytest.fixture
def other_origin() -> Iterator[FakeCivitai]:
    """A second server: where a hostile API tries to send the client (and its key)."""
    with FakeCivitai(FakeCatalog.generate(3, seed=3)) as server:
        yield server


def test_sync_on_a_gzip_bombed_page_stops_at_the_cap_with_bounded_memory(
    fake: FakeCivitai,
) -> None:
    # 4 MB on the wire, 4 GiB inflated: before the cap, `sync` took gigabytes of RAM here.
    fake.faults.bomb_inflated_bytes = 4 << 30
    fake.faults.schedule(["gzipbomb"], path="/api/v1/models")
    code, stderr, peak_rss = run_measured("sync", "--api-base", fake.base_url)
    assert code == 1
    error, hint = error_lines(stderr)
    assert error == (
        f"error: Civitai's answer to {fake.base_url}/api/v1/models?limit=REDACTED grew past the "
        "67108864-byte (64 MiB) limit; stopped reading"
    )
    assert hint.startswith("hint: No real Civitai answer is this large (a compression bomb")
    # The interpreter, the libraries and the sync pool take about 100 MiB, the capped body 64.
    assert peak_rss < 400 << 20, f"peak RSS {peak_rss >> 20} MiB"
    assert fake.faults.injected == [("/api/v1/models", "gzipbomb")]
    assert fake.count("/api/v1/models") == 1  # not retried: the same bomb would come again


def test_lookup_by_hash_reads_through_the_same_cap(
    fake: FakeCivitai, fake_catalog: FakeCatalog
) -> None:
    digest = fake_catalog.files[900305].hashes["SHA256"]
    fake.faults.bomb_inflated_bytes = 1 << 30
    fake.faults.schedule(["gzipbomb"], path=BY_HASH)
    code, stderr, peak_rss = run_measured("lookup", digest, "--api-base", fake.base_url)
    assert code == 1
    error, hint = error_lines(stderr)
    assert error == (
        f"error: Civitai's answer to {fake.base_url}{BY_HASH}/{digest} grew past the "
        "67108864-byte (64 MiB) limit; stopped reading"
    )
    assert "hostile server" in hint
    assert peak_rss < 400 << 20, f"peak RSS {peak_rss >> 20} MiB"


@pytest.mark.parametrize("parsed_here", [True, False], ids=["parsed", "bodies-for-workers"])
def test_both_sync_page_paths_stop_at_the_cap(
    fake: FakeCivitai, small_client: CivitaiClient, parsed_here: bool
) -> None:
    fake.faults.schedule(["ok", "gzipbomb"], path="/api/v1/models")
    filters = ModelFilters(limit=20)
    pages = (
        small_client.iter_raw_model_pages(filters)
        if parsed_here
        else small_client.iter_model_page_bodies(filters)
    )
    first = next(pages)
    assert first[1] is not None  # a real first page, then the bomb as the second
    with pytest.raises(ResponseTooLargeError) as info:
        next(pages)
    assert info.value.limit == SMALL_CAP
    assert info.value.url == f"{fake.base_url}/api/v1/models?limit=REDACTED&cursor=REDACTED"


@pytest.mark.parametrize("kind", ["endless", "endless_eof"], ids=["chunked", "no-length"])
def test_a_page_without_a_length_that_never_ends_stops_at_the_cap(
    fake: FakeCivitai, small_client: CivitaiClient, kind: str
) -> None:
    fake.faults.schedule([kind], path="/api/v1/models")
    with pytest.raises(ResponseTooLargeError, match="grew past the 4194304-byte"):
        small_client.list_models_body(ModelFilters())
    # Only an upper bound: the server counts a piece after writing it, so it may lag behind.
    assert fake.faults.streamed_bytes < SMALL_CAP + SOCKET_SLACK < fake.faults.endless_bytes


def test_a_page_that_declares_a_huge_length_is_refused_unread(
    fake: FakeCivitai, small_client: CivitaiClient
) -> None:
    fake.faults.schedule([f"length:{1 << 40}"], path="/api/v1/models")
    with pytest.raises(ResponseTooLargeError) as info:
        small_client.list_models_page(ModelFilters())
    assert info.value.declared == 1 << 40
    assert "declares 1099511627776 bytes, over the 4194304-byte (4 MiB) limit" in str(info.value)
    assert fake.faults.streamed_bytes < SOCKET_SLACK


def test_a_page_that_declares_less_than_it_sends_is_read_only_as_far_as_declared(
    fake: FakeCivitai, small_client: CivitaiClient
) -> None:
    fake.faults.schedule(["length:64"], path="/api/v1/models")
    with pytest.raises(CivitaiResponseValidationError, match="not JSON"):
        small_client.list_models_page(ModelFilters())
    assert fake.faults.streamed_bytes < SOCKET_SLACK
    # The rest of the lie is never taken for the next answer on that connection.
    assert small_client.list_models_page(ModelFilters(limit=5)).items


def test_an_api_redirect_to_another_origin_is_refused_and_the_key_stays_home(
    fake: FakeCivitai, fake_catalog: FakeCatalog, other_origin: FakeCivitai
) -> None:
    digest = fake_catalog.files[900305].hashes["SHA256"]
    elsewhere = f"{other_origin.base_url}{BY_HASH}/{digest}?token=STOLEN"
    fake.faults.schedule([f"redirect:{elsewhere}"], path=BY_HASH)
    code, stderr, _ = run_measured(
        "lookup", digest, "--api-base", fake.base_url, env={"CIVITAI_API_KEY": API_KEY}
    )
    assert code == 1
    error, hint = error_lines(stderr)
    assert error == (
        f"error: Civitai redirected {fake.base_url}{BY_HASH}/{digest} to another origin "
        f"({other_origin.base_url}{BY_HASH}/{digest}?token=REDACTED, HTTP 302); not followed"
    )
    assert hint == (
        "hint: API calls follow redirects only within the API's own origin. If the API moved, "
        "point `--api-base` / CIVITAI_API_BASE at its new address."
    )
    assert other_origin.requests == []
    assert [r.headers.get("authorization") for r in fake.api_requests] == [f"Bearer {API_KEY}"]


def test_sync_refuses_a_cross_origin_redirect_of_a_page(
    fake: FakeCivitai, other_origin: FakeCivitai, small_client: CivitaiClient
) -> None:
    fake.faults.schedule([f"redirect:{other_origin.base_url}/api/v1/models"], path="/api/v1/")
    with pytest.raises(CrossOriginRedirectError) as info:
        list(small_client.iter_raw_model_pages(ModelFilters()))
    assert info.value.location == f"{other_origin.base_url}/api/v1/models"
    assert other_origin.requests == []


def test_a_same_origin_redirect_is_followed_with_the_key(
    fake: FakeCivitai, fake_catalog: FakeCatalog, small_client: CivitaiClient
) -> None:
    digest = fake_catalog.files[900305].hashes["SHA256"]
    fake.faults.schedule([f"redirect:{BY_HASH}/{digest.lower()}"], path=BY_HASH)
    version = small_client.get_version_by_hash(digest)
    assert version.id == fake_catalog.files[900305].version_id
    seen = [(r.path, r.status, r.headers.get("authorization")) for r in fake.api_requests]
    assert seen == [
        (f"{BY_HASH}/{digest}", 302, f"Bearer {API_KEY}"),
        (f"{BY_HASH}/{digest.lower()}", 200, f"Bearer {API_KEY}"),
    ]
