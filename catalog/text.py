"""Text helpers for the catalog: HTML descriptions to plain text, and search tokens.

Search text is tokenized here, in Python, for both database backends: SQLite FTS5 and
PostgreSQL's ``to_tsvector('simple', …)`` then see the same space-separated words, so a query
matches the same models on either backend.
"""

from __future__ import annotations

import re
import unicodedata
from functools import lru_cache
from html.parser import HTMLParser

# Content of these elements is code or markup, never prose a user would search for.
_DROPPED_ELEMENTS = frozenset({"script", "style", "template", "noscript", "iframe", "object"})
# Elements that end a line of text, so "<p>a</p><p>b</p>" does not become "ab".
_BLOCK_ELEMENTS = frozenset(
    "address article aside blockquote br dd div dl dt figcaption figure footer h1 h2 h3 h4 h5 h6"
    " header hr li main nav ol p pre section table td th tr ul".split()
)
_SPACES = re.compile(r"[ \t\f\v\r]+")
_BLANK_LINES = re.compile(r"\n\s*\n+")
_WORD = re.compile(r"[^\W_]+")
# html.parser costs ~15 µs per tag; a sync rewrites a model when only its stats moved, so the
# same descriptions come back again and again. Cache the small ones.
_CACHED_HTML_CHARS = 16_384
# Longer "words" are hashes, base64 or garbage; PostgreSQL would also drop them with a notice.
MAX_TOKEN_CHARS = 64


class _TextExtractor(HTMLParser):
    """Collects text nodes, skipping the content of script-like elements."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._skip_depth = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _DROPPED_ELEMENTS:
            self._skip_depth += 1
        elif tag in _BLOCK_ELEMENTS:
            self.parts.append("\n")

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _BLOCK_ELEMENTS:
            self.parts.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in _DROPPED_ELEMENTS:
            self._skip_depth = max(0, self._skip_depth - 1)
        elif tag in _BLOCK_ELEMENTS:
            self.parts.append("\n")

    def handle_data(self, data: str) -> None:
        if not self._skip_depth:
            self.parts.append(data)


def html_to_text(html: str | None) -> str | None:
    """Plain text of an HTML fragment: tags and script/style content dropped, entities unescaped.

    Civitai descriptions are user-written HTML; the text form is what search indexes and what
    a terminal can show.
    """
    if html is None:
        return None
    if "<" not in html and "&" not in html:
        return _tidy(html)
    if len(html) <= _CACHED_HTML_CHARS:
        return _html_to_text_cached(html)
    return _html_to_text(html)


@lru_cache(maxsize=4096)
def _html_to_text_cached(html: str) -> str:
    return _html_to_text(html)


def _html_to_text(html: str) -> str:
    extractor = _TextExtractor()
    extractor.feed(html)
    extractor.close()
    return _tidy("".join(extractor.parts))


def _tidy(text: str) -> str:
    """Collapse runs of spaces, trim lines, keep at most one blank line between paragraphs."""
    text = text.replace("\xa0", " ")
    lines = (_SPACES.sub(" ", line).strip() for line in text.split("\n"))
    return _BLANK_LINES.sub("\n\n", "\n".join(lines)).strip()


def search_tokens(text: str | None) -> list[str]:
    """Words of `text` for search: case-folded, accents removed, split on anything not alphanumeric.

    The same function tokenizes documents and queries, which is what makes FTS syntax in user
    input harmless: quotes, ``*``, ``-`` and ``NEAR(`` never survive as tokens.
    """
    if not text:
        return []
    if text.isascii():
        folded = text.lower()
    else:
        decomposed = unicodedata.normalize("NFKD", text.casefold())
        folded = "".join(c for c in decomposed if not unicodedata.combining(c))
    return [t for t in _WORD.findall(folded) if len(t) <= MAX_TOKEN_CHARS]


def search_text(*texts: str | None, limit: int) -> str:
    """The normalized search form of `texts`: tokens joined by spaces, cut to `limit` characters."""
    tokens = search_tokens("\n".join(text for text in texts if text))
    joined = " ".join(tokens)
    if len(joined) <= limit:
        return joined
    cut = joined.rfind(" ", 0, limit + 1)
    return joined[: cut if cut > 0 else limit]


__all__ = ["MAX_TOKEN_CHARS", "html_to_text", "search_text", "search_tokens"]
