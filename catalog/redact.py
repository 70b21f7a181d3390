"""The one redaction of URLs and free text: what may reach a log, an error message or a screen.

The policy is strict: every query value is blanked (keys stay, so a reader still sees the
shape of the request), because signed storage URLs, ``token=`` parameters and whatever a
server adds are credentials more often than not; a URL's user info is dropped. Free text
gets the same treatment for every URL or query string in it, plus bearer tokens, labelled
keys (``api_key=``, ``token:``) and any secret the caller names.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from urllib.parse import urlsplit, urlunsplit

REDACTED = "REDACTED"

# A query parameter in running text: `?key=value` or `&key=value`, up to the next separator.
_QUERY_VALUE_RE = re.compile(r"([?&][^=\s&#?\"'<>]+=)[^&#\s\"'<>]*")
# The password of `scheme://user:password@host` in running text.
_PASSWORD_RE = re.compile(r"(\b[a-zA-Z][a-zA-Z0-9+.-]*://[^:/@\s\"'<>]*:)[^@/\s\"'<>]+@")
# Credentials that are not in a URL query: "Authorization: Bearer …", "api_key=…", "token: …".
_BEARER_RE = re.compile(r"(?i)(\bbearer\s+)[^\s\"',;]+")
_KEY_VALUE_RE = re.compile(
    r"(?i)(\b(?:civitai_api_key|api[_-]?key|apikey|token|authorization)\b[\"']?\s*[:=]\s*[\"']?)"
    r"(?!bearer\b)[^\s\"',;&]+"
)


def _blank_query(query: str) -> str:
    parts = []
    for pair in query.split("&"):
        key, has_value, _ = pair.partition("=")
        parts.append(f"{key}={REDACTED}" if has_value else key)
    return "&".join(parts)


def redact_url(url: object) -> str:
    """One URL (a string or an `httpx.URL`) safe to show: user info dropped, every query value
    replaced by ``REDACTED``. Text that is not a URL gets `redact_text`."""
    text = str(url)
    try:
        parts = urlsplit(text)
    except ValueError:
        return redact_text(text)
    if not parts.scheme or not parts.netloc or any(c.isspace() for c in text):
        return redact_text(text)
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(
        (parts.scheme, host, parts.path, _blank_query(parts.query) if parts.query else "", "")
    ) + (f"#{parts.fragment}" if parts.fragment else "")


def redact_text(text: str, secrets: Iterable[str] = ()) -> str:
    """`text` with credentials masked: the named `secrets`, every query value of any URL or
    query string in it, URL passwords, bearer tokens and ``api_key=``/``token:`` values."""
    for secret in sorted((s for s in secrets if s), key=len, reverse=True):
        text = text.replace(secret, REDACTED)
    text = _QUERY_VALUE_RE.sub(rf"\1{REDACTED}", text)
    text = _PASSWORD_RE.sub(rf"\1{REDACTED}@", text)
    text = _BEARER_RE.sub(rf"\1{REDACTED}", text)
    return _KEY_VALUE_RE.sub(rf"\1{REDACTED}", text)


__all__ = ["REDACTED", "redact_text", "redact_url"]
