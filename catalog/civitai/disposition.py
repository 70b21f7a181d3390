"""The one Content-Disposition reader: a server's file name, reduced to a safe bare name.

Used for the API's download redirects (the signed URL names the disposition in its query)
and for storage answers. The name is a server's word: only its last path component is kept,
without control or other unprintable characters, and ``.``/``..``/empty give None.
"""

from __future__ import annotations

import re
from urllib.parse import unquote

import httpx

# Query keys of signed storage URLs that carry the disposition the storage will answer with.
_DISPOSITION_KEYS = ("response-content-disposition", "b2contentdisposition", "content-disposition")
_FILENAME_STAR_RE = re.compile(r"(?i)(?:^|;)\s*filename\*\s*=\s*([^;]+)")
_FILENAME_RE = re.compile(r'(?i)(?:^|;)\s*filename\s*=\s*("(?:[^"\\]|\\.)*"|[^;]*)')


def safe_filename(name: str) -> str | None:
    """The last path component of `name`, printable characters only; None if nothing is left."""
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    base = "".join(c for c in base if c.isprintable()).strip()
    return base if base not in ("", ".", "..") else None


def filename_from_disposition(value: str | None) -> str | None:
    """The bare file name of a Content-Disposition value; ``filename*`` (RFC 6266) wins."""
    if not value:
        return None
    star = _FILENAME_STAR_RE.search(value)
    if star:
        charset, _, rest = star.group(1).strip().partition("'")
        _, _, encoded = rest.partition("'")
        try:
            name = unquote(encoded, encoding=charset or "utf-8", errors="replace")
        except LookupError:  # unknown charset name
            name = unquote(encoded, errors="replace")
        found = safe_filename(name)
        if found:
            return found
    plain = _FILENAME_RE.search(value)
    if plain:
        raw = plain.group(1).strip()
        if len(raw) >= 2 and raw[0] == raw[-1] == '"':
            # Unescape only \" and \\; other backslashes are Windows path separators.
            raw = re.sub(r'\\([\\"])', r"\1", raw[1:-1])
        return safe_filename(raw)
    return None


def filename_from_location(location: httpx.URL) -> str | None:
    """The file name a signed storage URL asks its storage to send, if it names one."""
    for key, value in location.params.multi_items():
        if key.lower() in _DISPOSITION_KEYS:
            found = filename_from_disposition(value)
            if found:
                return found
    return None


__all__ = ["filename_from_disposition", "filename_from_location", "safe_filename"]
