"""A refused pull leaves nothing behind and says what it was; an interrupted one keeps what it
can resume. The installed `assetmgr` script against the fake Civitai, as a user runs it.

After every refusal (login required, early access, downloads disabled, 404, 410, a Danger
scan, a pickle without --allow-pickle, wrong bytes) there is no partial file and the file's
state in the catalog is clear: not local (or quarantined, for bytes that arrived wrong), never
a "downloading" that no transfer will finish. What a refusal teaches (early access, downloads
disabled) is shown by `models show` before the next try.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.fakeciv import FakeCatalog, FakeCivitai, civitai_hashes
from tests.integration.test_store import lora_bytes, open_version

REPO_ROOT = Path(__file__).resolve().parents[2]
SCRIPT = Path(sys.executable).parent / "assetmgr"
FUTURE = "2099-01-01T00:00:00.000Z"


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(SCRIPT), *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "COLUMNS": "200"},
    )


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def home() -> Path:
    return Path(os.environ["ASSETMGR_HOME"])


def partial_files() -> list[str]:
    folder = home() / "store" / "partial"
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def shown(model_id: int) -> dict[str, Any]:
    out = run_cli("models", "show", str(model_id), "--json")
    assert out.returncode == 0, out.stderr
    return dict(json.loads(out.stdout))


def version_of(obj: dict[str, Any], version_id: int) -> dict[str, Any]:
    return dict(next(v for v in obj["versions"] if v["id"] == version_id))


def local_of(model_id: int, version_id: int, file_id: int) -> Any:
    version = version_of(shown(model_id), version_id)
    return next(f["local"] for f in version["files"] if f["id"] == file_id)


def sync(fake: FakeCivitai, model_id: int) -> None:
    out = run_cli("sync", "--api-base", fake.base_url, "--model-id", str(model_id))
    assert out.returncode == 0, out.stderr


def pull(fake: FakeCivitai, version_id: int, *more: str) -> subprocess.CompletedProcess[str]:
    return run_cli("pull", str(version_id), "--api-base", fake.base_url, *more)


def refused_lines(out: subprocess.CompletedProcess[str], fake_catalog: FakeCatalog, vid: int):
    """(error, hint) after checking the rest of what a refused pull of one version prints."""
    assert out.returncode == 1, out.stderr
    assert "Traceback" not in out.stderr
    assert out.stdout == ""  # no path: nothing was stored
    lines = out.stderr.splitlines()
    assert len(lines) == 3, lines
    v = fake_catalog.versions[vid]
    model = fake_catalog.models[v.model_id]
    assert lines[0].startswith(f"error: version {vid} ({model.name} / {v.name}): "), lines[0]
    assert lines[1].startswith("hint: ")
    assert lines[2] == "pulled 0 of 1 files: 0 downloaded (0 bytes), 1 failed"
    return lines[0], lines[1]


def _login(fake_catalog: FakeCatalog, vid: int) -> None:
    fake_catalog.update_version(vid, require_auth=True)


def _early_access(fake_catalog: FakeCatalog, vid: int) -> None:
    fake_catalog.update_version(vid, early_access_deadline=FUTURE)


def _disabled(fake_catalog: FakeCatalog, vid: int) -> None:
    fake_catalog.update_version(vid, usage_control="Generation")


def _archived(fake_catalog: FakeCatalog, vid: int) -> None:
    fake_catalog.update_model(fake_catalog.versions[vid].model_id, mode="Archived")


REFUSALS = {
    "login required (401)": (
        _login,
        "requires you to be logged in to download it (HTTP 401",
        "CIVITAI_API_KEY",
        [],
    ),
    "early access (403)": (
        _early_access,
        "in early access until 2099-01-01 00:00 UTC (HTTP 403",
        "wait until 2099-01-01 00:00 UTC",
        [{"code": "early_access", "until": FUTURE}],
    ),
    "downloads disabled (401)": (
        _disabled,
        "has disabled downloads on this file (HTTP 401",
        "can only be used on civitai.com",
        [{"code": "downloads_disabled", "until": None}],
    ),
    "archived (410)": (
        _archived,
        "Model archived, not available for download (HTTP 410",
        "its files are no longer available",
        [{"code": "archived", "until": None}],
    ),
}


@pytest.mark.parametrize("kind", list(REFUSALS))
def test_a_refusal_by_the_api_after_an_interrupted_pull_leaves_a_clear_state(
    fake: FakeCivitai, fake_catalog: FakeCatalog, kind: str
) -> None:
    """Ctrl-C keeps the partial file and its "downloading" state (exit 130); when Civitai then
    refuses the file, both go, and what the refusal said shows before the next try."""
    make_refused, error_text, hint_text, learned = REFUSALS[kind]
    vid = open_version(fake_catalog)
    data = lora_bytes(size_hint=3_000_000)
    f = fake_catalog.add_file_bytes(vid, data)
    mid = fake_catalog.versions[vid].model_id
    sync(fake, mid)
    assert version_of(shown(mid), vid)["access"] == []

    fake.storage_faults.throttle(400_000)
    proc = subprocess.Popen(
        [str(SCRIPT), "pull", str(vid), "--api-base", fake.base_url],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # Ctrl-C as a user's terminal delivers it: a test run started in the background by a
        # non-interactive shell ignores SIGINT, and a child would inherit that.
        preexec_fn=_default_sigint,
    )
    part = home() / "store" / "partial" / f"file-{f.id}.part"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and (not part.exists() or part.stat().st_size < 500_000):
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert stderr.splitlines()[-2:] == [
        "error: interrupted",
        "hint: Run the same command again; an interrupted pull or sync goes on where it stopped.",
    ]
    assert "Traceback" not in stderr and stdout == ""
    kept = part.stat().st_size
    assert 0 < kept < len(data)  # resumable, so kept
    assert local_of(mid, vid, f.id)["state"] == "downloading"

    fake.storage_faults.throttle(None)
    make_refused(fake_catalog, vid)
    fake.reset_log()
    out = pull(fake, vid)
    error, hint = refused_lines(out, fake_catalog, vid)
    assert error_text in error
    assert hint_text in hint
    assert fake.storage_requests == []
    assert partial_files() == []
    assert local_of(mid, vid, f.id) is None
    assert version_of(shown(mid), vid)["access"] == learned


def test_early_access_shows_before_the_first_try(
    fake: FakeCivitai, fake_catalog: FakeCatalog
) -> None:
    vid = open_version(fake_catalog)
    f = fake_catalog.add_file_bytes(vid, lora_bytes())
    fake_catalog.update_version(vid, early_access_deadline=FUTURE, availability="EarlyAccess")
    mid = fake_catalog.versions[vid].model_id
    sync(fake, mid)
    assert version_of(shown(mid), vid)["access"] == [{"code": "early_access", "until": FUTURE}]
    plain = run_cli("models", "show", str(mid))
    assert plain.returncode == 0
    lines = plain.stdout.splitlines()
    at = next(i for i, line in enumerate(lines) if f"#{vid} " in line)
    assert lines[at + 1] == (
        "    download: early access until 2099-01-01 00:00 UTC: Civitai sells access until then"
    )
    assert lines[-1].startswith("note: no API key is set, and Civitai asks for a login")
    out = pull(fake, vid)
    error, _ = refused_lines(out, fake_catalog, vid)
    assert "in early access until 2099-01-01" in error
    assert partial_files() == [] and local_of(mid, vid, f.id) is None


def test_a_version_pulled_unknown_shows_downloads_disabled_from_its_own_data(
    fake: FakeCivitai, fake_catalog: FakeCatalog
) -> None:
    """A version the catalog did not hold is fetched whole (with usageControl) before the
    download is asked for; the refusal leaves the catalog saying why."""
    vid = open_version(fake_catalog)
    f = fake_catalog.add_file_bytes(vid, lora_bytes())
    fake_catalog.update_version(vid, usage_control="InternalGeneration")
    out = pull(fake, vid)
    error, _ = refused_lines(out, fake_catalog, vid)
    assert "disabled downloads" in error
    mid = fake_catalog.versions[vid].model_id
    assert version_of(shown(mid), vid)["access"] == [{"code": "downloads_disabled", "until": None}]
    assert local_of(mid, vid, f.id) is None and partial_files() == []


def test_a_file_storage_cannot_serve_is_refused_with_404_and_leaves_nothing(
    fake: FakeCivitai, fake_catalog: FakeCatalog
) -> None:
    vid = open_version(fake_catalog)  # its generated files have no bytes: 404 File not found
    mid = fake_catalog.versions[vid].model_id
    sync(fake, mid)
    error, _ = refused_lines(pull(fake, vid), fake_catalog, vid)
    assert "File not found (HTTP 404" in error
    assert partial_files() == []
    assert all(fl["local"] is None for fl in version_of(shown(mid), vid)["files"])


@pytest.mark.parametrize("kind", ["danger scan", "pickle"])
def test_a_policy_refusal_touches_neither_the_api_nor_the_catalog_state(
    fake: FakeCivitai, fake_catalog: FakeCatalog, kind: str
) -> None:
    vid = open_version(fake_catalog)
    if kind == "pickle":
        f = fake_catalog.add_file_bytes(
            vid, b"\x80\x04\x95" + b"\x00" * 64, name="evil.ckpt", format="PickleTensor"
        )
        needle, hint_text = "evil.ckpt is a pickle format", "--allow-pickle"
    else:
        f = fake_catalog.add_file_bytes(vid, lora_bytes())
        f.pickle_scan_result = "Danger"
        fake_catalog.touch()
        needle, hint_text = "flag " + f.name + " as dangerous", "refused in every mode"
    mid = fake_catalog.versions[vid].model_id
    sync(fake, mid)
    fake.reset_log()
    error, hint = refused_lines(pull(fake, vid), fake_catalog, vid)
    assert needle in error and hint_text in hint
    assert fake.count_prefix("/api/download/") == 0 and fake.storage_requests == []
    assert partial_files() == [] and local_of(mid, vid, f.id) is None


def test_wrong_bytes_are_quarantined_and_say_so(
    fake: FakeCivitai, fake_catalog: FakeCatalog
) -> None:
    vid = open_version(fake_catalog)
    advertised = civitai_hashes(lora_bytes(seed=1.0))
    f = fake_catalog.add_file_bytes(vid, lora_bytes(seed=2.0), hashes=advertised)
    mid = fake_catalog.versions[vid].model_id
    sync(fake, mid)
    error, hint = refused_lines(pull(fake, vid), fake_catalog, vid)
    assert f"expected SHA256 {advertised['SHA256']}" in error and error.endswith("quarantined")
    assert "quarantined and are not loadable" in hint
    assert partial_files() == []
    local = local_of(mid, vid, f.id)
    assert local == {"state": "quarantined", "path": None, "verified_at": None}
    listed = run_cli("models", "list", "--json", "--local")
    assert json.loads(listed.stdout) == []  # quarantined bytes are not local


def test_pull_names_what_it_pulled_and_sums_up(
    fake: FakeCivitai, fake_catalog: FakeCatalog
) -> None:
    first = open_version(fake_catalog)
    data = lora_bytes(size_hint=200_000)
    f = fake_catalog.add_file_bytes(first, data, name="first.safetensors")
    v = fake_catalog.versions[first]
    model = fake_catalog.models[v.model_id]
    out = pull(fake, first)
    assert out.returncode == 0, out.stderr
    path = out.stdout.strip()
    assert Path(path).read_bytes() == data
    size = len(data)
    label = f"{model.name} / {v.name} (#{first}) / first.safetensors"
    assert out.stderr.splitlines()[-2:] == [
        f"{label}, {size} bytes ({size / 1024:.3g} KiB): downloaded and verified",
        f"pulled 1 of 1 files: 1 downloaded ({size} bytes ({size / 1024:.3g} KiB))",
    ]
    again = pull(fake, first, "--json")
    assert again.returncode == 0
    (result,) = json.loads(again.stdout)
    assert result["model_name"] == model.name and result["version_name"] == v.name
    assert result["file_name"] == "first.safetensors" and result["file_id"] == f.id
    assert result["size_bytes"] == size and result["already_present"] is True
    twice = pull(fake, first)
    assert twice.stderr.splitlines()[-1] == (
        "pulled 1 of 1 files: 0 downloaded (0 bytes), 1 already in the store"
    )
