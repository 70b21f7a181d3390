"""The log file under the data folder: private, rotated, never through a planted link, no
secrets in it, and never on the terminal while the TUI runs; the CLI's unexpected-error hint
names it."""

from __future__ import annotations

import logging
import os
import stat
import subprocess
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

from assetmgr import logs, paths

REPO_ROOT = Path(__file__).resolve().parents[2]
SECRETS = ("SIGNATURE-0001", "B2AUTH-0002", "BEARER-0003", "APIKEY-0004", "TOKEN-0005")
LEAKY = (
    f"GET https://b2.example/file/x.safetensors?X-Amz-Signature={SECRETS[0]}"
    f"&Authorization={SECRETS[1]}&ok=1 with Authorization: Bearer {SECRETS[2]},"
    f" api_key={SECRETS[3]}, https://civitai.com/api/download/models/1?token={SECRETS[4]}"
)


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """Each test installs handlers on the root logger; take ours away afterwards."""
    root = logging.getLogger()
    before, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        if getattr(handler, "_assetmgr_handler", None) and handler not in before:
            root.removeHandler(handler)
            handler.close()
    root.setLevel(level)
    logging.captureWarnings(False)


def _file_handler() -> logs.PrivateLogHandler:
    found = [h for h in logging.getLogger().handlers if isinstance(h, logs.PrivateLogHandler)]
    assert len(found) == 1
    return found[0]


def test_the_log_is_private_bounded_and_rotated(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(logs, "MAX_LOG_BYTES", 4_000)
    logs.setup_logging(terminal=False)
    log = logging.getLogger("assetmgr.test")
    for i in range(400):
        log.info("record %d %s", i, "x" * 60)
    path = logs.log_file()
    assert path == paths.home() / "logs" / "assetmgr.log"
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    written = sorted(path.parent.iterdir())
    assert [p.name for p in written] == [
        "assetmgr.log",
        "assetmgr.log.1",
        "assetmgr.log.2",
        "assetmgr.log.3",
    ]
    for file in written:
        assert stat.S_IMODE(file.stat().st_mode) == 0o600, file
        assert file.stat().st_size <= 4_000
    assert "record 399" in path.read_text("utf-8")


def test_an_existing_log_file_loses_group_and_other_bits() -> None:
    logs.log_file().parent.mkdir(parents=True)
    logs.log_file().write_text("old line\n")
    os.chmod(logs.log_file(), 0o644)
    logs.setup_logging(terminal=False)
    logging.getLogger("assetmgr.test").warning("new line")
    assert stat.S_IMODE(logs.log_file().stat().st_mode) == 0o600
    assert logs.log_file().read_text().splitlines()[0] == "old line"


def test_a_planted_link_is_never_followed(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("the user's own file\n")
    os.chmod(victim, 0o644)
    logs.log_file().parent.mkdir(parents=True)
    logs.log_file().symlink_to(victim)
    logs.setup_logging(terminal=False)
    logging.getLogger("assetmgr.test").error("this must not land in the victim")
    assert victim.read_text() == "the user's own file\n"
    assert stat.S_IMODE(victim.stat().st_mode) == 0o644
    assert logs.log_file().is_symlink()
    problem = logs.file_handler_problem()
    assert problem is not None and "OSError" in problem  # ELOOP from O_NOFOLLOW
    assert capfd.readouterr().err == ""  # no "--- Logging error ---" on the terminal


def test_a_linked_logs_folder_is_refused(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    paths.home().mkdir(parents=True, exist_ok=True)
    paths.logs_dir().symlink_to(elsewhere, target_is_directory=True)
    logs.setup_logging(terminal=False)
    logging.getLogger("assetmgr.test").error("refused")
    assert list(elsewhere.iterdir()) == []
    assert logs.file_handler_problem() == f"OSError: {paths.logs_dir()} is a symbolic link"


def test_secrets_never_reach_the_log() -> None:
    logs.setup_logging(terminal=False)
    log = logging.getLogger("catalog.sync")
    log.warning("download failed: %s", LEAKY)
    try:
        raise RuntimeError(LEAKY)
    except RuntimeError:
        log.exception("with a traceback")
    text = logs.log_file().read_text("utf-8")
    for secret in SECRETS:
        assert secret not in text
    assert text.count("REDACTED") >= 2 * len(SECRETS)
    # strict: every query value goes, the keys stay
    assert "&ok=REDACTED" in text and "?X-Amz-Signature=REDACTED" in text


def test_the_api_key_and_database_password_are_masked_even_unlabelled(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from assetmgr.config import Settings

    monkeypatch.setenv("CIVITAI_API_KEY", "civkey-7f3a9c2e11")
    Settings.load(database_url="postgresql+psycopg://assetmgr:pg-pass-5521@db.example/assetmgr")
    logs.setup_logging(terminal=False)
    logging.getLogger("catalog.sync").error(
        "refused civkey-7f3a9c2e11 at postgresql+psycopg://assetmgr:pg-pass-5521@db.example/x"
    )
    text = logs.log_file().read_text("utf-8")
    assert "civkey-7f3a9c2e11" not in text and "pg-pass-5521" not in text
    assert "refused REDACTED at postgresql+psycopg://assetmgr:REDACTED@db.example/x" in text


def test_records_are_cleaned() -> None:
    logs.setup_logging(terminal=False)
    logging.getLogger("catalog.sync").warning("name %s", "evil\x1b]0;PWNED\x07\nsecond")
    text = logs.log_file().read_text("utf-8")
    assert "\x1b" not in text and "\x07" not in text
    assert "name evil␛]0;PWNED␇␊second" in text


def test_the_tui_takes_every_handler_off_the_terminal(
    capfd: pytest.CaptureFixture[str],
) -> None:
    from assetmgr.cli import _setup_logging

    _setup_logging(0)  # what the CLI's root callback does before `assetmgr` opens the TUI
    logs.leave_terminal()
    logging.getLogger("catalog.sync").warning("a library warning")
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.warn("a Python warning", UserWarning, stacklevel=1)
    assert capfd.readouterr().err == ""
    text = logs.log_file().read_text("utf-8")
    assert "WARNING catalog.sync" in text and "a library warning" in text
    assert "py.warnings" in text and "a Python warning" in text


def test_run_app_starts_the_tui_with_no_terminal_handler(monkeypatch: pytest.MonkeyPatch) -> None:
    from assetmgr.cli import _setup_logging
    from assetmgr.config import Settings
    from assetmgr.tui import app as tui_app

    seen: list[list[logging.Handler]] = []
    monkeypatch.setattr(
        tui_app.AssetMgrApp, "run", lambda self: seen.append(list(logging.getLogger().handlers))
    )
    _setup_logging(1)
    tui_app.run_app(Settings.load())
    assert len(seen) == 1
    on_terminal = [
        h
        for h in seen[0]
        if isinstance(h, logging.StreamHandler) and h.stream in (sys.stderr, sys.__stderr__)
    ]
    assert on_terminal == []
    assert any(isinstance(h, logs.PrivateLogHandler) for h in seen[0])


def test_an_unexpected_cli_error_names_the_log_and_keeps_the_traceback_there() -> None:
    code = (
        "import sys\n"
        "from assetmgr import cli\n"
        "@cli.app.command('boom')\n"
        "def boom() -> None:\n"
        "    raise RuntimeError(sys.argv[1])\n"
        "sys.argv = ['assetmgr', 'boom']\n"
        "cli.main()\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "ASSETMGR_DEBUG"}
    result = subprocess.run(
        [sys.executable, "-c", code, LEAKY + "\x1b]0;PWNED\x07"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 70, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 2, result.stderr
    assert lines[0].startswith("error: unexpected RuntimeError: ")
    assert lines[1] == (
        f"hint: this is a bug in assetmgr; the traceback is in {logs.log_file()} "
        "(or rerun with ASSETMGR_DEBUG=1); please report it."
    )
    assert "Traceback" not in result.stderr and "\x1b" not in result.stderr
    text = logs.log_file().read_text("utf-8")
    assert "Traceback (most recent call last)" in text and "RuntimeError" in text
    assert "\x1b" not in text
    for secret in SECRETS:
        assert secret not in text
        assert secret not in result.stderr


def test_a_signed_url_of_any_form_loses_every_query_value() -> None:
    # CloudFront-style signatures carry names the old credential list did not know.
    logs.setup_logging(terminal=False)
    logging.getLogger("assetmgr.store").warning(
        "storage answered 403 for https://cdn.example/m.safetensors?Expires=1767225600"
        "&Signature=CF-SIG-0006&Key-Pair-Id=KPID-0007 (relative: /f?Policy=POLICY-0008)"
    )
    text = logs.log_file().read_text("utf-8")
    for secret in ("CF-SIG-0006", "KPID-0007", "POLICY-0008", "1767225600"):
        assert secret not in text
    assert (
        "https://cdn.example/m.safetensors?Expires=REDACTED&Signature=REDACTED"
        "&Key-Pair-Id=REDACTED (relative: /f?Policy=REDACTED" in text
    )


def test_a_changed_data_folder_gets_its_own_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file handler left writing another data folder's log is replaced, so the path an
    error hint names is the file that holds the traceback."""
    monkeypatch.setenv("ASSETMGR_HOME", str(tmp_path / "first"))
    logs.setup_logging(terminal=False)
    monkeypatch.setenv("ASSETMGR_HOME", str(tmp_path / "second"))
    try:
        raise KeyError("lost traceback")
    except KeyError as exc:
        path = logs.record_unexpected(exc)
    assert path == tmp_path / "second" / "logs" / "assetmgr.log"
    assert "lost traceback" in path.read_text("utf-8")
