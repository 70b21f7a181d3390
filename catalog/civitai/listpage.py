"""Reading a list page's body: its items, its next cursor, and why an item failed validation."""

from __future__ import annotations

import json
import re
from typing import Any

from pydantic import ValidationError

from catalog.civitai.errors import CivitaiResponseValidationError


def validation_reason(exc: ValidationError) -> str:
    """A short, input-free summary of a pydantic error, safe to log and store."""
    parts = []
    for err in exc.errors(include_url=False, include_input=False)[:3]:
        where = ".".join(str(p) for p in err["loc"]) or "item"
        parts.append(f"{where}: {err['msg']}")
    more = exc.error_count() - len(parts)
    reason = "; ".join(parts) + (f" (+{more} more)" if more > 0 else "")
    return reason[:300]


def cursor_of_metadata(metadata: object) -> str | None:
    """`metadata.nextCursor` as text; absent, null or empty means the last page."""
    if not isinstance(metadata, dict):
        raise CivitaiResponseValidationError("list page has no metadata object")
    cursor = metadata.get("nextCursor")
    if cursor is None or cursor == "":
        return None
    if isinstance(cursor, str):
        return cursor
    if isinstance(cursor, int) and not isinstance(cursor, bool):
        return str(cursor)
    if isinstance(cursor, float) and cursor.is_integer():
        return str(int(cursor))
    raise CivitaiResponseValidationError(
        f"list page has a nextCursor of type {type(cursor).__name__}"
    )


_METADATA_KEY = b'"metadata"'
_JSON_DECODER = json.JSONDecoder()
_KEY_COLON_RE = re.compile(r"\s*:\s*")


def page_items(body: bytes) -> list[Any]:
    """The items of a raw list page (`CivitaiClient.list_models_body`), envelope checked."""
    try:
        data = json.loads(body)
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError
        raise CivitaiResponseValidationError("Civitai sent a list page that is not JSON") from exc
    items = data.get("items") if isinstance(data, dict) else None
    if not isinstance(items, list):
        raise CivitaiResponseValidationError("list page has no items list")
    return items


def cursor_of_body(body: bytes) -> str | None:
    """`metadata.nextCursor` of a raw list page, read from the body's end when it can be.

    Civitai writes ``metadata`` after ``items``; finding the last ``"metadata"`` key and
    parsing only its object costs microseconds, where parsing the page costs milliseconds
    that the sync's fetcher would spend holding the GIL. The found object counts only when
    nothing but the closing brace of the whole document follows it: then it is a member of
    the top-level object (a quote inside a JSON string is always escaped, so the key cannot
    come from one). Anything else falls back to parsing the whole body.
    """
    at = body.rfind(_METADATA_KEY)
    if at != -1:
        # The key starts with an ASCII quote, so slicing there never splits a UTF-8 sequence.
        tail = body[at + len(_METADATA_KEY) :].decode("utf-8", errors="replace")
        colon = _KEY_COLON_RE.match(tail)
        if colon is not None:
            try:
                metadata, end = _JSON_DECODER.raw_decode(tail, colon.end())
            except ValueError:
                end = -1
            if end != -1 and tail[end:].strip() == "}":
                return cursor_of_metadata(metadata)
    try:
        data = json.loads(body)
    except ValueError as exc:
        raise CivitaiResponseValidationError("Civitai sent a list page that is not JSON") from exc
    return cursor_of_metadata(data.get("metadata") if isinstance(data, dict) else None)


__all__ = ["cursor_of_body", "cursor_of_metadata", "page_items", "validation_reason"]
