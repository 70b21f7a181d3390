"""The catalog commands as a user runs them: real processes, the fake Civitai, JSON contracts."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.fakeciv import FakeCatalog, FakeCivitai

REPO_ROOT = Path(__file__).resolve().parents[2]


def assetmgr(*args: str, check: bool = True, **kw: Any) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, "-m", "assetmgr", *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        **kw,
    )
    if check and result.returncode != 0:
        raise AssertionError(f"assetmgr {args} failed ({result.returncode}):\n{result.stderr}")
    return result


MODEL_KEYS = {"id", "name", "type", "nsfw", "tags", "creator", "versions"}
VERSION_KEYS = {"id", "name", "base_model", "trained_words", "published_at", "access", "files"}
ACCESS_CODES = {"early_access", "downloads_disabled", "archived", "gone"}
FILE_KEYS = {"id", "name", "size_kb", "primary", "format", "hashes", "local"}


IMAGE_KEYS = {
    "url",
    "source",
    "width",
    "height",
    "nsfw_level",
    "nsfw",
    "above_threshold",
    "blurhash",
    "type",
    "meta",
    "local_path",
}


def check_model_object(obj: dict[str, Any], *, shown: bool = False) -> None:
    """A model object of the contract; `models show` adds each version's ``images``."""
    assert set(obj) == MODEL_KEYS
    for version in obj["versions"]:
        assert set(version) == (VERSION_KEYS | {"images"} if shown else VERSION_KEYS)
        for image in version.get("images", []):
            assert set(image) == IMAGE_KEYS
        for rule in version["access"]:
            assert set(rule) == {"code", "until"} and rule["code"] in ACCESS_CODES
        for f in version["files"]:
            assert set(f) == FILE_KEYS
            for name, digest in f["hashes"].items():
                assert name in {"SHA256", "AutoV1", "AutoV2", "AutoV3", "CRC32", "BLAKE3"}
                assert digest == digest.upper()


def test_sync_list_show_lookup_json_contract(fake: FakeCivitai, fake_catalog: FakeCatalog) -> None:
    out = assetmgr("sync", "--api-base", fake.base_url, "--json")
    summary = json.loads(out.stdout)
    assert {"models", "versions", "files", "errors"} <= set(summary)
    assert summary["models"] == len(fake_catalog.expected_listing_ids())
    assert summary["errors"] == []

    listed = json.loads(
        assetmgr("models", "list", "--type", "LORA", "--limit", "500", "--json").stdout
    )
    assert listed and all(m["type"] == "LORA" for m in listed)
    for obj in listed:
        check_model_object(obj)

    shown = json.loads(assetmgr("models", "show", "700102", "--json").stdout)
    check_model_object(shown, shown=True)
    assert shown["name"] == "Ink Wash Style"
    v = next(v for v in shown["versions"] if v["id"] == 800205)
    assert v["trained_words"] == ["inkwash style", "monochrome brush strokes"]
    assert v["files"][0]["hashes"]["AutoV3"] == "DDC056E1336E"

    for digest in (
        "ddc056e1336e",
        "790108F174",
        "790108f1746c751f69059aeb091392f14970c1a82454f1462ef124fc7c48d8ca",
    ):
        matches = json.loads(assetmgr("lookup", digest, "--offline", "--json").stdout)
        assert [m["file_id"] for m in matches] == [900305]


def test_lookup_falls_back_to_civitai_and_caches(
    fake: FakeCivitai, fake_catalog: FakeCatalog
) -> None:
    file = fake_catalog.files[900305]
    digest = file.hashes["BLAKE3"].lower()
    first = json.loads(assetmgr("lookup", digest, "--api-base", fake.base_url, "--json").stdout)
    assert first[0]["source"] == "civitai" and first[0]["file_id"] == 900305
    second = json.loads(assetmgr("lookup", digest, "--offline", "--json").stdout)
    assert second[0]["source"] == "local"


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (("models", "show", "424242"), "not in the catalog"),
        (("lookup", "xyz"), "not a Civitai hash"),
        (("lookup", "ABCDEF0123", "--offline"), "no file with hash"),
    ],
)
def test_errors_are_one_line_with_a_hint(args: tuple[str, ...], needle: str) -> None:
    result = assetmgr(*args, check=False)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert lines[0].startswith("error: ") and needle in lines[0]
    assert lines[1].startswith("hint: ")
    assert "Traceback" not in result.stderr


def test_offline_first_sync_seeds_the_demo_catalog() -> None:
    result = assetmgr("sync", "--api-base", "http://127.0.0.1:9", "--json")
    assert json.loads(result.stdout)["demo"] is True
    assert "unreachable" in result.stderr
    listed = json.loads(assetmgr("models", "list", "--json").stdout)
    assert len(listed) == 12


def test_sync_killed_with_sigkill_resumes(fake: FakeCivitai, fake_catalog: FakeCatalog) -> None:
    home = Path(os.environ["ASSETMGR_HOME"])
    db = home / "catalog.sqlite3"
    fake.faults.fail_every(1, "delay:0.4", path="/api/v1/models")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "assetmgr",
            "sync",
            "--api-base",
            fake.base_url,
            "--page-size",
            "10",
            "--json",
        ],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        # Page workers (even on a one-core machine), so this first sync into an empty catalog
        # sets its FTS and hash indexes aside (catalog.sync.bulkload) and dies without them.
        env={**os.environ, "ASSETMGR_SYNC_WORKERS": "2"},
    )
    deadline = time.monotonic() + 120
    pages = 0
    while time.monotonic() < deadline and pages < 3:
        time.sleep(0.2)
        if db.exists():
            try:
                with sqlite3.connect(db) as conn:
                    row = conn.execute("SELECT pages FROM sync_state").fetchone()
                    pages = row[0] if row else 0
            except sqlite3.Error:
                pass
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    proc.stdout.close()  # type: ignore[union-attr]
    proc.stderr.close()  # type: ignore[union-attr]
    assert pages >= 3, "the sync never got going"
    with sqlite3.connect(db) as conn:
        landed = conn.execute("SELECT count(*) FROM model").fetchone()[0]
        status, cursor = conn.execute("SELECT status, cursor FROM sync_state").fetchone()
        set_aside = {r[0] for r in conn.execute("SELECT name FROM deferred_schema")}
    assert status == "running" and cursor
    expected = fake_catalog.expected_listing_ids()
    assert 0 < landed < len(expected)
    assert "model_fts_ai" in set_aside and "ix_model_file_sha256" in set_aside

    fake.faults.clear()
    fake.reset_log()
    summary = json.loads(
        assetmgr("sync", "--api-base", fake.base_url, "--page-size", "10", "--json").stdout
    )
    assert summary["resumed"] is True
    assert fake.count("/api/v1/models") <= (len(expected) - landed) // 10 + 2
    with sqlite3.connect(db) as conn:
        ids = {r[0] for r in conn.execute("SELECT id FROM model")}
        # The next open put the set-aside indexes back and rebuilt the FTS index in full.
        assert conn.execute("SELECT count(*) FROM deferred_schema").fetchone()[0] == 0
        schema = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
        assert {"model_fts_ai", "model_fts_ad", "model_fts_au", "ix_model_file_sha256"} <= schema
        conn.execute("INSERT INTO model_fts(model_fts, rank) VALUES ('integrity-check', 1)")
        indexed = conn.execute("SELECT count(*) FROM model_fts").fetchone()[0]
    assert ids == expected
    assert indexed == len(ids)
