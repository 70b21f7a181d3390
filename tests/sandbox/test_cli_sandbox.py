"""`assetmgr plugins ...` and `assetmgr sandbox ...` as a user runs them: real processes, JSON."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from sandbox.image.build import worker_digest
from sandbox.image.record import save_record
from tests.sandbox.test_plugins import EXAMPLES, HOSTILE, fake_record, write_plugin

REPO = Path(__file__).resolve().parents[2]


def assetmgr(*args: str, check: bool = True, env: dict[str, str] | None = None) -> Any:
    import os

    result = subprocess.run(
        [sys.executable, "-m", "assetmgr", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **(env or {})},
    )
    if check and result.returncode != 0:
        raise AssertionError(f"assetmgr {args} failed ({result.returncode}):\n{result.stderr}")
    return result


PLUGIN_KEYS = {
    "name",
    "version",
    "entry",
    "hooks",
    "requirements",
    "trusted",
    "tree_sha256",
    "files",
    "path",
    "description",
    "added_at",
}


def test_plugins_add_list_verify_remove(tmp_path: Path, _isolated_home: Path) -> None:
    added = json.loads(assetmgr("plugins", "add", str(EXAMPLES / "wildcards"), "--json").stdout)
    assert PLUGIN_KEYS <= set(added)
    assert added["name"] == "wildcards" and added["already_added"] is False
    assert added["hooks"] == ["prompt_transform", "extra_outputs"] and added["files"] == 7
    assert Path(added["path"]) == _isolated_home / "plugins" / added["tree_sha256"]
    assetmgr("plugins", "add", str(EXAMPLES / "posterize"), "--trust")
    listed = json.loads(assetmgr("plugins", "list", "--json").stdout)
    assert [p["name"] for p in listed] == ["posterize", "wildcards"]
    assert [p["trusted"] for p in listed] == [True, False]
    assert all(PLUGIN_KEYS <= set(p) for p in listed)
    again = json.loads(assetmgr("plugins", "add", str(EXAMPLES / "wildcards"), "--json").stdout)
    assert again["already_added"] is True and again["tree_sha256"] == added["tree_sha256"]

    checks = json.loads(assetmgr("plugins", "verify", "--json").stdout)
    assert [c["ok"] for c in checks] == [True, True]
    color = Path(added["path"]) / "wildcards" / "color.txt"
    color.parent.chmod(0o755)
    color.chmod(0o644)
    color.write_text("tampered\n")
    bad = assetmgr("plugins", "verify", check=False)
    assert bad.returncode == 1
    assert "MODIFIED: wildcards 1.0.0: wildcards/color.txt: expected sha256" in bad.stderr

    removed = json.loads(assetmgr("plugins", "remove", "wildcards", "--json").stdout)
    assert removed["name"] == "wildcards" and not Path(removed["path"]).exists()
    missing = assetmgr("plugins", "remove", "wildcards", check=False)
    assert missing.returncode == 3
    assert missing.stderr.startswith("error: no plugin named 'wildcards'")


def test_a_planted_bytecode_file_is_named_by_verify_and_refuses_the_run(
    tmp_path: Path, _isolated_home: Path
) -> None:
    import hashlib

    added = json.loads(assetmgr("plugins", "add", str(EXAMPLES / "wildcards"), "--json").stdout)
    stored = Path(added["path"])
    stored.chmod(0o755)
    (stored / "__pycache__").mkdir()
    (stored / "__pycache__" / "wildcards_plugin.cpython-311.pyc").write_bytes(b"\0" * 16)
    problem = (
        "__pycache__/wildcards_plugin.cpython-311.pyc: not part of the plugin "
        f"(sha256 {hashlib.sha256(bytes(16)).hexdigest()})"
    )
    bad = assetmgr("plugins", "verify", check=False)
    assert bad.returncode == 1
    assert bad.stderr == f"MODIFIED: wildcards 1.0.0: {problem}\n"
    run = assetmgr("sandbox", "demo", "-p", "wildcards", check=False)
    assert run.returncode == 1
    lines = run.stderr.strip().splitlines()
    assert lines[0] == f"error: plugin wildcards 1.0.0 was modified after it was added: {problem}"
    assert lines[1].startswith("hint: Nothing was run.") and len(lines) == 2


def test_refused_plugins_get_one_line_errors_with_hints(tmp_path: Path) -> None:
    d = write_plugin(tmp_path, "linky")
    (d / "leak.txt").symlink_to("/etc/passwd")
    out = assetmgr("plugins", "add", str(d), check=False)
    assert out.returncode == 1
    lines = out.stderr.strip().splitlines()
    assert lines[0] == "error: 'leak.txt' is a symbolic link (not allowed)"
    assert lines[1].startswith("hint: ") and len(lines) == 2
    pinned = write_plugin(tmp_path, "pins", requirements='["requests>=2"]')
    out = assetmgr("plugins", "add", str(pinned), check=False)
    assert "exact pin" in out.stderr and out.returncode == 1


def test_sandbox_status_json_without_an_engine(tmp_path: Path) -> None:
    env = {"ASSETMGR_SANDBOX_RECORD": str(tmp_path / "image.json")}
    status = json.loads(assetmgr("sandbox", "status", "--json", "--no-engine", env=env).stdout)
    assert status["built"] is False and status["stale"] is True and status["image"] is None

    save_record(fake_record(), tmp_path / "image.json")
    assetmgr("plugins", "add", str(HOSTILE))  # data only: nothing of it runs on the host
    d = write_plugin(tmp_path / "src", "needsdep", requirements='["tinyplug-dep==1.0"]')
    added = json.loads(assetmgr("plugins", "add", str(d), "--json", env=env).stdout)
    assert added["image_stale"] is True
    status = json.loads(assetmgr("sandbox", "status", "--json", "--no-engine", env=env).stdout)
    image = status["image"]
    assert image["image_id"] == "sha256:" + "a" * 64
    assert image["layer_diff_ids"] == ["sha256:" + "b" * 64]
    assert image["lock_sha256"] == "d" * 64 and image["rootfs_sha256"] == "b" * 64
    assert image["torch_variant"] == "cpu" and image["built_at"]
    assert status["worker_current"] is True and status["in_catalog"] is True
    assert status["engine"] == {"reachable": None, "matches": None, "problem": None}
    assert status["plugins"]["missing_from_image"] == ["tinyplug-dep==1.0"]
    assert [p["name"] for p in status["plugins"]["added"]] == ["hostile", "needsdep"]
    assert status["stale"] is True
    assert any("tinyplug-dep==1.0" in why for why in status["stale_reasons"])
    human = assetmgr("sandbox", "status", "--no-engine", env=env).stdout
    assert "STALE" in human and "run `assetmgr sandbox build`" in human
    assert worker_digest() == fake_record().worker_sha256


@pytest.mark.docker
def test_sandbox_status_and_demo_against_the_engine(sandbox_image: Any, tmp_path: Path) -> None:
    from tests.sandbox.conftest import RECORD_PATH

    env = {"ASSETMGR_SANDBOX_RECORD": str(RECORD_PATH)}
    status = json.loads(assetmgr("sandbox", "status", "--json", env=env).stdout)
    assert status["engine"]["reachable"] is True and status["engine"]["matches"] is True
    assert status["image"]["image_id"] == sandbox_image.image_id
    assert status["image"]["layer_diff_ids"] == sandbox_image.layer_diff_ids
    assert status["plugins"]["missing_from_image"] == []
    # stale only if someone edited the worker since this session's image was built
    assert status["stale"] is (not status["worker_current"]), status["stale_reasons"]

    assetmgr("plugins", "add", str(EXAMPLES / "wildcards"))
    assetmgr("plugins", "add", str(EXAMPLES / "posterize"))
    args = ["sandbox", "demo", "-p", "wildcards", "-p", "posterize", "--seed", "5", "--json"]
    out = json.loads(
        assetmgr(*args, "--prompt", "a __color__ cat", "--out", str(tmp_path / "o"), env=env).stdout
    )
    assert "__color__" not in out["data"]["prompt"] and out["data"]["prompt"].startswith("a ")
    assert [Path(p).name for p in out["images"]] == ["demo.png"]
    assert (tmp_path / "o" / "wildcards.choices.json").is_file()
