"""The real TUI in a pseudo-terminal on a hostile catalog: the raw byte stream it writes must
hold none of the sequences hidden in names, creators, tags, trigger words, versions and files.

The installed console script runs as a user starts it (100x30, ASSETMGR_HOME on the hostile
catalog). The test moves the selection over both hostile models so the detail pane shows
them, copies their trigger words (the app's own OSC 52 must carry cleaned text), sends them to
the Generate prompt, opens the Generate screen, and quits with the app's quit key.
"""

from __future__ import annotations

import base64
import fcntl
import os
import re
import select
import struct
import subprocess
import sys
import termios
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from assetmgr.config import Settings
from assetmgr.context import open_engine
from tests import hostile as h

pytestmark = pytest.mark.slow

CONSOLE_SCRIPT = Path(sys.executable).parent / "assetmgr"
ROWS, COLUMNS = 30, 100
WAIT_S = 60.0
"""The most any step may take on a loaded machine; a wait, never an assertion on time."""
QUIET_S = 0.6
QUIET_CAP_S = 5.0
"""A blinking cursor never goes quiet: after this long, the app has drawn what it will."""

KEY_DOWN, KEY_UP, KEY_F3, KEY_QUIT = b"\x1b[B", b"\x1b[A", b"\x1bOR", b"\x11"
TAB = b"\t"
INTO_WORDS = (TAB, TAB, TAB)
"""From the table through the versions list to the trigger-word buttons, which scrolls them
into view (at 30 rows they are below the fold)."""

INJECTED = (
    b"\x1b]52;c;SEFDS0VE",  # clipboard write from the model name
    b"\x1b]8;;https://evil",  # hyperlink from a tag and the second model's name
    b"\x1b]0;PWNED",  # window title from the creator and a trigger word
    b"\x1b]2;PWNED",  # window title from the file and version names
    b"\x1b[2J\x1b[3;7HPWNCLR",  # screen clear and cursor move from a trigger word
    b"\x1b[5m 1.0",  # blink from the base model
    b"\x07ger",  # BEL in a trigger word
    b"\x7ftag",  # DEL in a tag
    b";https://evil.example/markup",  # an OSC 8 link made from markup in the name
)
C1_OR_BIDI = re.compile(
    rb"\xc2[\x80-\x9f]|\xe2\x80[\xaa-\xae]|\xe2\x80[\x8e\x8f]|\xe2\x81[\xa6-\xa9]"
)
OSC52 = re.compile(rb"\x1b\]52;c;([A-Za-z0-9+/=]*)(?:\x07|\x1b\\)")


class Terminal:
    """A pty of ROWS x COLUMNS with the process on its slave end; collects every byte."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        master, slave = os.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", ROWS, COLUMNS, 0, 0))
        self.process = subprocess.Popen(
            args, stdin=slave, stdout=slave, stderr=slave, env=env, start_new_session=True
        )
        os.close(slave)
        self.master = master
        self.output = bytearray()
        self.last_output_at = time.monotonic()
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        while True:
            ready, _, _ = select.select([self.master], [], [], 0.2)
            if not ready:
                if self.process.poll() is not None:
                    return
                continue
            try:
                chunk = os.read(self.master, 65536)
            except OSError:  # EIO: the process closed the terminal
                return
            if not chunk:
                return
            with self._lock:
                self.output += chunk
                self.last_output_at = time.monotonic()

    def raw(self) -> bytes:
        with self._lock:
            return bytes(self.output)

    def wait_for(self, text: bytes, what: str, *, since: int = 0) -> None:
        """Until `text` is in what the app wrote after byte `since`."""
        deadline = time.monotonic() + WAIT_S
        while text not in self.raw()[since:]:
            if self.process.poll() is not None:
                raise AssertionError(f"the TUI exited while waiting for {what}: {self.raw()!r}")
            if time.monotonic() > deadline:
                raise AssertionError(f"no {what} within {WAIT_S:.0f} s: {self.raw()[-2000:]!r}")
            time.sleep(0.05)

    def press(self, *keys: bytes) -> int:
        """Send `keys`, each once the app has drawn the last; returns the byte offset before."""
        mark = len(self.raw())
        for key in keys:
            self.wait_quiet()
            os.write(self.master, key)
        return mark

    def wait_quiet(self) -> None:
        """Until the app has drawn what it was asked to (no output for QUIET_S)."""
        deadline = time.monotonic() + QUIET_CAP_S
        while time.monotonic() - self.last_output_at < QUIET_S and time.monotonic() < deadline:
            time.sleep(0.05)

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        self._reader.join(10)
        if self.master >= 0:
            os.close(self.master)
            self.master = -1


@pytest.fixture
def terminal(_isolated_home: Path) -> Iterator[Terminal]:
    engine = open_engine(Settings.load())
    try:
        h.seed_hostile(engine)
    finally:
        engine.dispose()
    env = {
        **os.environ,
        "ASSETMGR_HOME": str(_isolated_home),
        "ASSETMGR_NO_KEYRING": "1",
        "TERM": "xterm-256color",
        "COLUMNS": str(COLUMNS),
        "LINES": str(ROWS),
    }
    for name in ("NO_COLOR", "TEXTUAL", "TEXTUAL_DRIVER", "FORCE_COLOR"):
        env.pop(name, None)
    term = Terminal([str(CONSOLE_SCRIPT)], env)
    try:
        yield term
    finally:
        term.close()


def test_the_tui_writes_no_hostile_sequence_to_the_terminal(terminal: Terminal) -> None:
    # The hostile model has the most downloads: it is selected and its detail shown first.
    terminal.wait_for(b"mallory", what="the first model's detail")
    mark = terminal.press(KEY_DOWN)  # the second hostile model
    terminal.wait_for(b"eve", what="the second model's detail", since=mark)
    mark = terminal.press(KEY_UP)
    terminal.wait_for(b"mallory", what="the first model's detail again", since=mark)
    mark = terminal.press(*INTO_WORDS)
    terminal.wait_for(b"PWNCLR", what="the first model's trigger words", since=mark)
    mark = terminal.press(b"y")  # copy every trigger word: the app's own OSC 52
    terminal.wait_for(b"\x1b]52;c;", what="the clipboard write", since=mark)
    terminal.press(b"g")  # the LoRA tag and trigger words into the Generate prompt
    mark = terminal.press(KEY_F3)
    terminal.wait_for(b"Negative prompt", what="the Generate screen", since=mark)
    terminal.wait_for(b"PWNCLR", what="the trigger words in the prompt", since=mark)
    terminal.wait_for(b"(not local)", what="the prompt's LoRA tag resolved", since=mark)
    terminal.press(KEY_QUIT)
    assert terminal.process.wait(WAIT_S) == 0
    terminal.close()
    raw = terminal.raw()

    # None of the hostile values' sequences reached the terminal...
    assert [needle for needle in INJECTED if needle in raw] == []
    assert C1_OR_BIDI.findall(raw) == []
    # ...and the only clipboard write is the app's copy, of cleaned words.
    copies = [base64.b64decode(m).decode() for m in OSC52.findall(raw)]
    assert copies == ["␛[2J␛[3;7HPWNCLR, trig␇ger, ␛]52;c;SEFDS0VE␇word"]
    # The app did draw, with its own escape sequences (alternate screen, colours), and the
    # hostile values are on screen, visibly replaced.
    assert b"\x1b[?1049h" in raw and b"\x1b[38;5;" in raw
    assert "␛]52;c;SEFDS0VE␇Evil".encode() in raw
    assert "⟨U+202E⟩".encode() in raw
