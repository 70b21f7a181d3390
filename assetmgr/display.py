"""The one display sanitizer: outside text made safe where it meets a terminal or the clipboard.

Names, tags, trigger words, file names, server messages and everything a sandbox job sends back
are kept in the catalog exactly as received; the front ends pass them through `clean` where
they are shown, copied or inserted into a prompt, `dumps_json` for ``--json`` output, and
`CleanLogFormatter` for log records.

The rule (one for every front end):

* C0 controls (U+0000-U+001F) and DEL become their Unicode Control Pictures (ESC shows as
  ``␛``, BEL as ``␇``, DEL as ``␡``). With ``multiline=True`` the layout characters ``\\n``
  and ``\\t`` stay (and ``\\r\\n`` becomes ``\\n``); in single-line text (table cells, error
  and hint lines, progress labels, clipboard) a tab becomes a space and a newline shows as
  ``␊``, so no value can start a line of its own.
* C1 controls (U+0080-U+009F), the bidi controls (U+061C, U+200E, U+200F, U+202A-U+202E,
  U+2066-U+2069), the line and paragraph separators (U+2028, U+2029) and lone surrogates
  (undecodable bytes of a file name) become the visible marker ``⟨U+XXXX⟩``.

Everything else, emoji joiners and non-Latin scripts included, passes unchanged. The result
holds no character a terminal acts on, so no value can write the clipboard (OSC 52), make a
link (OSC 8), set the window title, move the cursor or clear the screen, or reorder the text
around it. Markup is a separate matter: Rich and Textual front ends show cleaned text through
`Text`/`Content` objects (or with markup off), never as markup.

Pure Python with no UI imports, so every layer of assetmgr may import it.
"""

from __future__ import annotations

import json
import logging
import re
from typing import Any, Final

_C0_PICTURE_BASE: Final = 0x2400
"""U+2400 SYMBOL FOR NULL; C0 code point n has its picture at U+2400 + n."""
_DEL_PICTURE: Final = "\N{SYMBOL FOR DELETE}"
_BIDI_CONTROLS: Final = "\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"
_SEPARATORS: Final = "\u2028\u2029"

# What the rule replaces besides C0 (character-class ranges); C0 is split by where it is kept.
_NOT_C0: Final = "\x7f-\x9f" + _BIDI_CONTROLS + _SEPARATORS + "\ud800-\udfff"
_UNSAFE: Final = re.compile(f"[\x00-\x1f{_NOT_C0}]")
_UNSAFE_MULTILINE: Final = re.compile(f"[\x00-\x08\x0b-\x1f{_NOT_C0}]")
# In JSON text C0 is escaped inside strings already (a raw one is layout); the rest is not.
_UNSAFE_IN_JSON: Final = re.compile(f"[{_NOT_C0}]")

_MARKER_OPEN: Final = "\N{MATHEMATICAL LEFT ANGLE BRACKET}"
_MARKER_CLOSE: Final = "\N{MATHEMATICAL RIGHT ANGLE BRACKET}"


def _marker(code_point: int) -> str:
    return f"{_MARKER_OPEN}U+{code_point:04X}{_MARKER_CLOSE}"


def _replacement(char: str) -> str:
    code_point = ord(char)
    if code_point < 0x20:
        return chr(_C0_PICTURE_BASE + code_point)
    if code_point == 0x7F:
        return _DEL_PICTURE
    return _marker(code_point)


_SINGLE_LINE_TABLE: Final[dict[int, str]] = {
    ord(c): _replacement(c)
    for c in (
        [chr(n) for n in range(0x20)]
        + [chr(n) for n in range(0x7F, 0xA0)]
        + list(_BIDI_CONTROLS + _SEPARATORS)
        + [chr(n) for n in range(0xD800, 0xE000)]
    )
}
_SINGLE_LINE_TABLE[ord("\t")] = " "
_MULTILINE_TABLE: Final[dict[int, str]] = {
    **_SINGLE_LINE_TABLE,
    ord("\n"): "\n",
    ord("\t"): "\t",
}


def clean(text: object, *, multiline: bool = False) -> str:
    """`text` (``str()`` of any value) with every terminal control replaced visibly.

    `multiline` keeps ``\\n`` and ``\\t`` for text laid out over several lines (a
    description, a dialog body, a traceback); leave it off for one-line places.
    """
    value = text if isinstance(text, str) else str(text)
    if multiline:
        if _UNSAFE_MULTILINE.search(value) is None:
            return value
        return value.replace("\r\n", "\n").translate(_MULTILINE_TABLE)
    if _UNSAFE.search(value) is None:
        return value
    return value.translate(_SINGLE_LINE_TABLE)


def _json_escape(match: re.Match[str]) -> str:
    return f"\\u{ord(match.group()):04x}"


def dumps_json(data: Any, *, indent: int | None = 2) -> str:
    """JSON of `data` for a terminal: valid, decodes to the same values, and holds no
    character the display rule replaces (they are written as ``\\uXXXX`` escapes).

    Non-ASCII text stays readable (``ensure_ascii=False``); values that are not JSON types
    are written as their ``str()``.
    """
    text = json.dumps(data, indent=indent, ensure_ascii=False, default=str)
    # json escapes C0 itself; DEL, C1, bidi, separators and surrogates come out raw. They can
    # only occur inside JSON strings, where an escape decodes back to the same character.
    return _UNSAFE_IN_JSON.sub(_json_escape, text)


class CleanLogFormatter(logging.Formatter):
    """A `logging.Formatter` whose output is cleaned: the message as one line, tracebacks and
    stacks with their line breaks."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        return clean(super().formatMessage(record))

    def formatException(self, ei: Any) -> str:
        return clean(super().formatException(ei), multiline=True)

    def formatStack(self, stack_info: str) -> str:
        return clean(super().formatStack(stack_info), multiline=True)


__all__ = ["CleanLogFormatter", "clean", "dumps_json"]
