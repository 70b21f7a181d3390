"""Terminal injection through the CLI: a hostile catalog and a hostile server, real commands.

Each test runs the installed console script in a subprocess, as a terminal would (Rich told it
is one with FORCE_COLOR), and checks the raw bytes of stdout and stderr: no injected escape
sequence, C1 control, BEL, DEL, NUL or bidi control gets through, the values are still shown
(visibly replaced), and ``--json`` decodes to the strings exactly as the catalog holds them.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from assetmgr.config import Settings
from assetmgr.context import open_engine
from tests import hostile as h

REPO_ROOT = Path(__file__).resolve().parents[2]
CONSOLE_SCRIPT = Path(sys.executable).parent / "assetmgr"
PRIMARY_SHA256 = f"{h.NEWEST_VERSION_ID * 10:064X}"
"""The SHA256 that `tests.dbfixtures.file_payload` gives the newest version's file."""


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[bytes]:
    """The console script with raw byte output, Rich acting as on a wide colour terminal."""
    return subprocess.run(
        [str(CONSOLE_SCRIPT), *args],
        cwd=REPO_ROOT,
        capture_output=True,
        timeout=120,
        env={**os.environ, "FORCE_COLOR": "1", "COLUMNS": "400", **(env or {})},
    )


def assert_clean(result: subprocess.CompletedProcess[bytes]) -> str:
    """No injected sequence in stdout or stderr; returns both, decoded."""
    for stream in (result.stdout, result.stderr):
        assert h.find_forbidden(stream) == [], stream
    return result.stdout.decode() + result.stderr.decode()


@pytest.fixture
def hostile_catalog(_isolated_home: Path) -> None:
    engine = open_engine(Settings.load())
    try:
        h.seed_hostile(engine)
    finally:
        engine.dispose()


@pytest.mark.usefixtures("hostile_catalog")
@pytest.mark.parametrize(
    ("args", "shown"),
    [
        (["models", "list"], ["␛]52;c;SEFDS0VE␇Evil⟨U+009B⟩2JModel", "␛]0;PWNED-TITLE␇mallory"]),
        (
            ["models", "show", str(h.HOSTILE_MODEL_ID)],
            [
                # Each displayed field, replaced visibly; markup shown as the text it is.
                f"␛]52;c;SEFDS0VE␇Evil⟨U+009B⟩2JModel{h.MARKUP_LINK}",
                "by ␛]0;PWNED-TITLE␇mallory⟨U+202E⟩",
                "tags: ␛]8;;https://evil.example/osc8␛\\clickme␛]8;;␛\\, bidi⟨U+2066⟩tag⟨U+2069⟩",
                "del␡tag",
                "v2⟨U+009B⟩2J⟨U+202E⟩gnp.exe",
                "SDXL␛[5m 1.0",
                "trigger: ␛[2J␛[3;7HPWNCLR",
                "trigger: trig␇ger",
                "␛]2;PWNED-TITLE2␛\\file⟨U+202E⟩gnp.safetensors",
                "[verified] /nonexistent/",
            ],
        ),
        (["models", "show", str(h.SECOND_MODEL_ID)], ["␛]8;;https://evil.example/osc8␛\\Second"]),
        (
            ["updates"],
            [
                f"␛]52;c;SEFDS0VE␇Evil⟨U+009B⟩2JModel{h.MARKUP_LINK} [SDXL]: have v1␛]2;",
                "newest v2⟨U+009B⟩2J⟨U+202E⟩gnp.exe (#9900011)",
            ],
        ),
        (["duplicates"], ["same bytes ABABABABABABABAB…: ␛]2;PWNED-TITLE2␛\\file", "dup␛[2J"]),
        (
            ["lookup", PRIMARY_SHA256, "--offline"],
            ["model #990001 ␛]52;c;SEFDS0VE␇Evil", "version #9900011 v2⟨U+009B⟩2J⟨U+202E⟩"],
        ),
    ],
    ids=["models list", "models show", "models show 2", "updates", "duplicates", "lookup"],
)
def test_plain_output_shows_hostile_names_without_their_controls(
    args: list[str], shown: list[str]
) -> None:
    result = run_cli(*args)
    assert result.returncode == 0, result.stderr
    text = assert_clean(result)
    for fragment in shown:
        assert fragment in text


def _strings(value: Any) -> set[str]:
    if isinstance(value, str):
        return {value}
    if isinstance(value, dict):
        return set().union(*(_strings(k) | _strings(v) for k, v in value.items()))
    if isinstance(value, list):
        return set().union(set(), *(_strings(v) for v in value))
    return set()


@pytest.mark.usefixtures("hostile_catalog")
@pytest.mark.parametrize(
    "args",
    [
        ["models", "list", "--json"],
        ["models", "show", str(h.HOSTILE_MODEL_ID), "--json"],
        ["models", "show", str(h.SECOND_MODEL_ID), "--json"],
        ["updates", "--json"],
        ["duplicates", "--json"],
        ["lookup", PRIMARY_SHA256, "--offline", "--json"],
    ],
    ids=" ".join,
)
def test_json_output_escapes_controls_and_decodes_to_the_catalog_strings(args: list[str]) -> None:
    result = run_cli(*args)
    assert result.returncode == 0, result.stderr
    assert_clean(result)
    decoded = json.loads(result.stdout)
    found = _strings(decoded)
    hostile_here = [s for s in h.HOSTILE_STRINGS if s in found]
    assert hostile_here, "the command printed none of the hostile values"
    assert all(s in found for s in hostile_here)  # byte-for-byte what the catalog holds


def test_models_show_json_holds_every_hostile_value(hostile_catalog: None) -> None:
    shown = json.loads(run_cli("models", "show", str(h.HOSTILE_MODEL_ID), "--json").stdout)
    assert shown["name"] == h.MODEL_NAME and shown["creator"] == h.CREATOR
    assert shown["tags"] == h.TAGS
    newest = shown["versions"][0]
    assert newest["name"] == h.NEWEST_VERSION_NAME and newest["base_model"] == h.BASE_MODEL
    assert newest["trained_words"] == h.TRIGGER_WORDS
    assert newest["files"][0]["name"] == h.FILE_NAME


class _HostileErrors(BaseHTTPRequestHandler):
    """Every request: HTTP 400 with a Civitai-shaped error body full of control sequences."""

    message = f"bad {h.OSC52} {h.C1_CSI} {h.RLO}evil {h.MARKUP_LINK}{h.LRI}"

    def do_GET(self) -> None:
        body = json.dumps({"error": self.message}).encode()
        self.send_response(400)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def hostile_server() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _HostileErrors)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.usefixtures("hostile_catalog")
@pytest.mark.parametrize(
    ("args", "error_start"),
    [
        (["sync", "--max-models", "5"], "error: bad "),
        # A pull's error names the model, version and file: catalog text, cleaned too.
        (["pull", str(h.NEWEST_VERSION_ID)], f"error: version {h.NEWEST_VERSION_ID} (␛]52;"),
        (["lookup", "AB" * 32], "error: bad "),
    ],
    ids=["sync", "pull", "lookup"],
)
def test_error_lines_quoting_a_hostile_server_are_cleaned(
    hostile_server: str, args: list[str], error_start: str
) -> None:
    result = run_cli(*args, "--api-base", hostile_server)
    assert result.returncode != 0
    assert_clean(result)
    lines = result.stderr.decode().splitlines()
    error = next(line for line in lines if line.startswith("error: "))
    assert error.startswith(error_start)
    # The server's text is there, visibly replaced, markup as text, on its one line.
    assert f"⟨U+009B⟩2J ⟨U+202E⟩evil {h.MARKUP_LINK}⟨U+2066⟩ (HTTP 400" in error
    assert lines[lines.index(error) + 1].startswith("hint: ")


def test_an_error_line_echoing_a_hostile_reference_is_cleaned(_isolated_home: Path) -> None:
    ref = h.OSC52 + "A" * (64 - len(h.OSC52))  # a "SHA256" as a script might pass it on
    result = run_cli("path", ref)
    assert result.returncode != 0
    assert_clean(result)
    assert result.stderr.decode().splitlines() == [
        "error: no verified local file for ␛]52;c;SEFDS0VE␇" + "A" * 48,
        "hint: Pull or import it first.",
    ]


def test_a_usage_error_quoting_a_hostile_argument_is_cleaned(_isolated_home: Path) -> None:
    result = run_cli("models", f"nope{h.TITLE}")
    assert result.returncode == 2
    assert_clean(result)
    error, hint = result.stderr.decode().splitlines()
    assert error.startswith("error: no such command 'nope") and "PWNED-TITLE" in error
    assert hint == "hint: Run `assetmgr models --help` for usage."


def test_progress_labels_show_outside_names_as_plain_text() -> None:
    """The pull and import bars label tasks with file names: cleaned, and never markup."""
    from rich.console import Console
    from rich.progress import Progress

    from assetmgr.cli.progress import label_column, progress_label

    out = io.StringIO()
    console = Console(file=out, force_terminal=True, color_system="truecolor", width=200)
    with Progress(label_column("{task.description}"), console=console, auto_refresh=False) as bars:
        bars.add_task(progress_label(f"{h.MARKUP_LINK}{h.OSC52}{h.C1_CSI}{h.RLO}.bin", 80))
        bars.refresh()
    raw = out.getvalue().encode()
    assert h.find_forbidden(raw) == []
    assert f"{h.MARKUP_LINK}␛]52;c;SEFDS0VE␇⟨U+009B⟩2J⟨U+202E⟩.bin".encode() in raw


def test_the_cli_logs_through_the_cleaning_formatter() -> None:
    """Log records quote outside text (skipped items, paths): the handler the CLI installs
    writes them cleaned, the message on one line, a traceback on its lines."""
    code = (
        "import logging\n"
        "from assetmgr.cli import _setup_logging\n"
        "_setup_logging(1)\n"
        "log = logging.getLogger('catalog.sync')\n"
        "log.warning('skipped model item 0 (id %s): %s', *__import__('sys').argv[1:3])\n"
        "try:\n"
        "    raise ValueError(__import__('sys').argv[1])\n"
        "except ValueError:\n"
        "    log.exception('failed')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, h.OSC52 + h.C1_CSI, f"bad\n{h.TITLE}{h.RLO}"],
        cwd=REPO_ROOT,
        capture_output=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert h.find_forbidden(result.stderr) == []
    lines = result.stderr.decode().splitlines()
    assert lines[0] == (
        "WARNING catalog.sync: skipped model item 0 (id ␛]52;c;SEFDS0VE␇⟨U+009B⟩2J):"
        " bad␊␛]0;PWNED-TITLE␇⟨U+202E⟩"
    )
    assert lines[-1] == "ValueError: ␛]52;c;SEFDS0VE␇⟨U+009B⟩2J"
