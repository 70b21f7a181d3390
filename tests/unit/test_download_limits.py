"""How a download's bound is chosen: sizeKB forms, the maximum download size setting, and the
order of the bounds. The transfers themselves are attacked in
tests/integration/test_hostile_downloads.py."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from assetmgr.config import DEFAULT_MAX_DOWNLOAD_BYTES, Settings, parse_size, write_config_file
from assetmgr.errors import ConfigError
from assetmgr.store.blobs import BlobStore
from assetmgr.store.download import Downloader
from assetmgr.store.records import sizes_from_kb
from assetmgr.store.targets import (
    APPROX_SIZE_MARGIN_BYTES,
    LIMIT_APPROX,
    LIMIT_DECLARED,
    LIMIT_EXACT,
    LIMIT_MAXIMUM,
    DownloadTooLargeError,
    FileTarget,
    TransferBound,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
MAX = 10_000_000


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("64GiB", 64 << 30),
        ("500 MB", 500_000_000),
        ("1.5GiB", 3 << 29),
        ("8mib", 8 << 20),
        ("1048576", 1 << 20),
        (4096, 4096),
        ("0", None),
        (0, None),
        (-5, None),
        (True, None),
        ("12 parsecs", None),
        ("", None),
        ("1e9", None),
    ],
)
def test_parse_size(value: object, expected: int | None) -> None:
    assert parse_size(value) == expected


def test_the_maximum_comes_from_the_environment_then_the_config_file(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert Settings.load().max_download_bytes == DEFAULT_MAX_DOWNLOAD_BYTES == 64 << 30
    write_config_file({"max_download_size": "20GiB"})
    assert Settings.load().max_download_bytes == 20 << 30
    monkeypatch.setenv("ASSETMGR_MAX_DOWNLOAD_SIZE", "2 GB")
    assert Settings.load().max_download_bytes == 2_000_000_000
    monkeypatch.setenv("ASSETMGR_MAX_DOWNLOAD_SIZE", "lots")
    with pytest.raises(ConfigError, match="bad maximum download size 'lots'") as info:
        Settings.load()
    assert "64GiB" in info.value.hint


def test_config_show_prints_the_maximum_and_a_bad_one_is_one_error_line() -> None:
    def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        import os

        return subprocess.run(
            [sys.executable, "-m", "assetmgr", *args],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, **(env or {})},
        )

    shown = cli("config", "show", "--json", env={"ASSETMGR_MAX_DOWNLOAD_SIZE": "3MiB"})
    assert json.loads(shown.stdout)["max_download_bytes"] == 3 << 20
    bad = cli("config", "show", env={"ASSETMGR_MAX_DOWNLOAD_SIZE": "-1"})
    assert bad.returncode == 2
    assert bad.stderr.splitlines() == [
        "error: bad maximum download size '-1'",
        "hint: Give ASSETMGR_MAX_DOWNLOAD_SIZE or max_download_size as bytes or with a unit, "
        "e.g. 64GiB or 500MB.",
    ]


@pytest.mark.parametrize(
    ("size_kb", "expected"),
    [
        (293.123046875, (300158, None)),  # bytes/1024, as Civitai sends it
        (2048.0, (2 << 20, None)),
        (293.1, (None, 300135)),  # rounded somewhere: only approximate, rounded up
        (None, (None, None)),
        (0.0, (None, None)),
        (-1.0, (None, None)),
        (float("nan"), (None, None)),
        (float("inf"), (None, None)),
    ],
)
def test_sizes_from_kb(size_kb: float | None, expected: tuple[int | None, int | None]) -> None:
    assert sizes_from_kb(size_kb) == expected


def target(exact: int | None = None, approx: int | None = None) -> FileTarget:
    return FileTarget(
        version_id=1,
        file_id=2,
        name="f.safetensors",
        expected_sha256="A" * 64,
        expected_size=exact,
        approx_size=approx,
    )


@pytest.mark.parametrize(
    ("exact", "approx", "declared", "bound"),
    [
        (5000, None, None, TransferBound(5000, LIMIT_EXACT)),
        (5000, None, 5000, TransferBound(5000, LIMIT_EXACT)),
        (None, 5000, 4000, TransferBound(5000 + APPROX_SIZE_MARGIN_BYTES, LIMIT_APPROX)),
        (None, MAX - 10, None, TransferBound(MAX, LIMIT_MAXIMUM)),  # the margin stops at MAX
        (None, None, 7000, TransferBound(7000, LIMIT_DECLARED)),
        (None, None, None, TransferBound(MAX, LIMIT_MAXIMUM)),
    ],
)
def test_the_tightest_known_bound_wins(
    tmp_path: Path, exact: int | None, approx: int | None, declared: int | None, bound: object
) -> None:
    downloader = Downloader(BlobStore(tmp_path), lambda t: "", max_download_bytes=MAX)
    assert downloader._transfer_bound(target(exact, approx), declared) == bound


@pytest.mark.parametrize(
    ("exact", "declared", "source"),
    [(5000, 5001, LIMIT_EXACT), (None, MAX + 1, LIMIT_MAXIMUM), (5000, MAX + 1, LIMIT_MAXIMUM)],
)
def test_a_declared_length_over_the_bound_is_refused(
    tmp_path: Path, exact: int | None, declared: int, source: str
) -> None:
    downloader = Downloader(BlobStore(tmp_path), lambda t: "", max_download_bytes=MAX)
    with pytest.raises(DownloadTooLargeError) as info:
        downloader._transfer_bound(target(exact), declared)
    limit = MAX if source == LIMIT_MAXIMUM else exact
    assert (info.value.declared, info.value.limit, info.value.limit_source) == (
        declared,
        limit,
        source,
    )
    assert info.value.message.endswith(f"bound ({source}); not downloaded")
