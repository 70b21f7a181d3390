"""Terminal injection from a plugin, through `assetmgr sandbox demo` on the real engine.

A plugin's prompt result and the message of an exception it raises come back from the
container as job text; the host keeps them as data and the CLI cleans them where they meet
the terminal (plain and error lines), while ``--json`` carries the exact text, escaped.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests import hostile as h
from tests.sandbox.test_plugins import write_plugin

REPO_ROOT = Path(__file__).resolve().parents[2]
CONSOLE_SCRIPT = Path(sys.executable).parent / "assetmgr"
PAYLOAD = f" {h.OSC52}{h.C1_CSI}{h.RLO}{h.TITLE}{h.MARKUP_LINK}{h.LRI}"

pytestmark = pytest.mark.docker


def run_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [str(CONSOLE_SCRIPT), *args],
        cwd=REPO_ROOT,
        capture_output=True,
        timeout=300,
        env={**os.environ, "FORCE_COLOR": "1", "COLUMNS": "400", **env},
    )


def _plugin(root: Path, name: str, body: str) -> Path:
    return write_plugin(root, name, entry=f"{name}_plugin", code=body)


def test_a_plugins_prompt_result_and_error_reach_the_terminal_cleaned(
    sandbox_image: Any, tmp_path: Path
) -> None:
    from tests.sandbox.conftest import RECORD_PATH

    env = {"ASSETMGR_SANDBOX_RECORD": str(RECORD_PATH)}
    result_code = f"def prompt_transform(p, n, ctx):\n    return p + {PAYLOAD!r}, n\n"
    raise_code = f"def prompt_transform(p, n, ctx):\n    raise RuntimeError({PAYLOAD!r})\n"
    for name, code in (("evilprompt", result_code), ("evilerror", raise_code)):
        added = run_cli("plugins", "add", str(_plugin(tmp_path / "src", name, code)), env=env)
        assert added.returncode == 0, added.stderr

    demo = ["sandbox", "demo", "-p", "evilprompt", "--prompt", "a cat", "--size", "8"]
    plain = run_cli(*demo, "--out", str(tmp_path / "plain"), env=env)
    assert plain.returncode == 0, plain.stderr
    for stream in (plain.stdout, plain.stderr):
        assert h.find_forbidden(stream) == [], stream
    assert plain.stdout.decode().splitlines()[0] == (
        f"prompt: a cat ␛]52;c;SEFDS0VE␇⟨U+009B⟩2J⟨U+202E⟩␛]0;PWNED-TITLE␇{h.MARKUP_LINK}⟨U+2066⟩"
    )

    as_json = run_cli(*demo, "--json", "--out", str(tmp_path / "json"), env=env)
    assert as_json.returncode == 0, as_json.stderr
    assert h.find_forbidden(as_json.stdout) == []
    assert json.loads(as_json.stdout)["data"]["prompt"] == "a cat" + PAYLOAD

    failed = run_cli("sandbox", "demo", "-p", "evilerror", "--out", str(tmp_path / "err"), env=env)
    assert failed.returncode != 0
    for stream in (failed.stdout, failed.stderr):
        assert h.find_forbidden(stream) == [], stream
    lines = failed.stderr.decode().splitlines()
    error = next(line for line in lines if line.startswith("error: "))
    assert "␛]52;c;SEFDS0VE␇⟨U+009B⟩2J⟨U+202E⟩" in error
    assert lines[lines.index(error) + 1].startswith("hint: ")
