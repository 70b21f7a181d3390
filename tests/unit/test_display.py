"""The display sanitizer: every hostile class of character is replaced visibly, layout stays
where the caller keeps it, ``--json`` escapes the same characters and decodes unchanged, and
log records are cleaned."""

from __future__ import annotations

import json
import logging
import sys

import pytest

from assetmgr.display import CleanLogFormatter, clean, dumps_json

HOSTILE = {
    "osc52 clipboard": ("\x1b]52;c;SEFDS0VE\x07", "␛]52;c;SEFDS0VE␇"),
    "osc8 link": (
        "\x1b]8;;https://evil.example/\x1b\\click\x1b]8;;\x1b\\",
        "␛]8;;https://evil.example/␛\\click␛]8;;␛\\",
    ),
    "osc0 window title": ("\x1b]0;PWNED\x07", "␛]0;PWNED␇"),
    "osc2 window title": ("\x1b]2;PWNED\x1b\\", "␛]2;PWNED␛\\"),
    "csi clear screen and cursor moves": ("\x1b[2J\x1b[1;1H\x1b[5A", "␛[2J␛[1;1H␛[5A"),
    "c1 csi": ("\u009b2J", "⟨U+009B⟩2J"),
    "c1 osc and st": ("\u009d0;t\u009c", "⟨U+009D⟩0;t⟨U+009C⟩"),
    "bidi rlo": ("abc\u202egnp.exe", "abc⟨U+202E⟩gnp.exe"),
    "bidi lri/pdi": ("\u2066x\u2069", "⟨U+2066⟩x⟨U+2069⟩"),
    "arabic letter mark and lrm/rlm": ("\u061c\u200e\u200f", "⟨U+061C⟩⟨U+200E⟩⟨U+200F⟩"),
    "line separators": ("a\u2028b\u2029c", "a⟨U+2028⟩b⟨U+2029⟩c"),
    "del": ("a\x7fb", "a␡b"),
    "nul": ("a\x00b", "a␀b"),
    "bel": ("a\x07b", "a␇b"),
    "backspace and carriage return": ("real\rfake\x08", "real␍fake␈"),
    "lone surrogate from a file name": ("x\udcff.safetensors", "x⟨U+DCFF⟩.safetensors"),
}


def _terminal_acts_on(text: str) -> list[str]:
    """Characters of `text` a terminal interprets: C0 but tab/newline, DEL, C1, bidi."""
    bidi = set("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
    return [
        c
        for c in text
        if (ord(c) < 0x20 and c not in "\n\t") or 0x7F <= ord(c) <= 0x9F or c in bidi
    ]


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_each_hostile_class_is_replaced_visibly(name: str) -> None:
    raw, shown = HOSTILE[name]
    assert clean(raw) == shown
    assert clean(raw, multiline=True) == shown
    assert not _terminal_acts_on(clean(raw))
    clean(raw).encode("utf-8")  # writable: no lone surrogate is left


def test_layout_characters_depend_on_the_flag() -> None:
    text = "line one\tcol\r\nline two\nhint: forged"
    assert clean(text, multiline=True) == "line one\tcol\nline two\nhint: forged"
    # One line: a value can never start a line of its own (a forged "hint:" line).
    assert clean(text) == "line one col␍␊line two␊hint: forged"
    assert "\n" not in clean(text)


def test_ordinary_text_passes_unchanged() -> None:
    for text in (
        "Ink Wash Style [Pony] v2.0 (SDXL 1.0)",
        "café · 東方 · Привет · مرحبا · שלום",
        "👨\u200d👩\u200d👧 family, zero\u200bwidth",  # joiners are not controls
        "<lora:inkwash:0.8>, masterpiece",
        "",
    ):
        assert clean(text) is text or clean(text) == text
    assert clean(12) == "12"


def test_json_escapes_the_same_characters_and_decodes_unchanged() -> None:
    data = {
        "names": [raw for raw, _ in HOSTILE.values()],
        "key\u202e\x1b": {"nested": "\u009b2J\x7f", "n": 1, "ok": None},
        "plain": "café 東方 👨\u200d👩\u200d👧",
    }
    out = dumps_json(data)
    assert json.loads(out) == data
    assert not _terminal_acts_on(out.replace("\n", ""))
    for code in ("\\u001b", "\\u0007", "\\u009b", "\\u202e", "\\u2066", "\\u007f", "\\udcff"):
        assert code in out
    assert "café 東方" in out  # other non-ASCII stays readable
    out.encode("utf-8")
    assert json.loads(dumps_json(data, indent=None)) == data


def test_the_log_formatter_cleans_messages_and_tracebacks(
    capsys: pytest.CaptureFixture[str],
) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(CleanLogFormatter("%(levelname)s %(name)s: %(message)s"))
    log = logging.getLogger("tests.display")
    log.addHandler(handler)
    log.propagate = False
    try:
        log.warning("model %s\nWARNING forged: line", "\x1b]52;c;SEFDS0VE\x07")
        try:
            raise ValueError("bad name \x1b[2J\u202e")
        except ValueError:
            log.exception("failed on %s", "\u009b2J")
    finally:
        log.removeHandler(handler)
        log.propagate = True
    err = capsys.readouterr().err
    assert not _terminal_acts_on(err)
    lines = err.splitlines()
    assert lines[0] == "WARNING tests.display: model ␛]52;c;SEFDS0VE␇␊WARNING forged: line"
    assert lines[1] == "ERROR tests.display: failed on ⟨U+009B⟩2J"
    assert lines[2] == "Traceback (most recent call last):"  # tracebacks keep their lines
    assert lines[-1] == "ValueError: bad name ␛[2J⟨U+202E⟩"


CLI_CHOKEPOINTS = {"__init__.py", "progress.py"}
"""The CLI modules that write to the terminal; every command goes through their functions."""
RAW_WRITES = ("sys.stdout.write", "sys.stderr.write", "print(", "Console(", "typer.echo")


def test_cli_commands_write_only_through_the_cleaning_chokepoints() -> None:
    from pathlib import Path

    import assetmgr.cli

    folder = Path(assetmgr.cli.__file__).parent
    offenders = []
    for module in sorted(folder.glob("*.py")):
        if module.name in CLI_CHOKEPOINTS:
            continue
        for number, line in enumerate(module.read_text("utf-8").splitlines(), 1):
            if any(raw in line for raw in RAW_WRITES) or 'TextColumn("{' in line:
                offenders.append(f"{module.name}:{number}: {line.strip()}")
    assert offenders == [], "write through print_line/print_json/print_rich/label_column"
