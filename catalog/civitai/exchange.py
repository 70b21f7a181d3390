"""One API exchange: redirects kept on the API's origin, bodies read under a cap.

Every API request of `CivitaiClient` goes through `exchange`. Bodies are streamed and inflated
here, by a decoder that returns at most `DECODE_STEP` bytes per call, and both the raw and the
decoded byte counts are held to a cap. A 4 MB gzip page that inflates to gigabytes costs at
most the cap in memory, and so does an endless or mislabelled stream. Redirects are followed
by hand, only within the origin of the request (scheme, host and port); the download's 307 to
storage is not followed at all (`CivitaiClient.resolve_download` reads its Location).
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator

import httpx

from catalog.civitai.errors import (
    CivitaiResponseValidationError,
    CrossOriginRedirectError,
    ResponseTooLargeError,
)
from catalog.redact import redact_url

MAX_API_BODY_BYTES = 64 << 20
"""Cap on a successful API body, decoded; real list pages of 100 models are a few MB."""
MAX_ERROR_BODY_BYTES = 64 << 10
"""Error and redirect bodies are read this far and the rest dropped (only a line is shown)."""
ACCEPT_ENCODING = "gzip, deflate"
"""The encodings `exchange` can inflate step by step; asked for explicitly."""
DECODE_STEP = 256 << 10
"""Most bytes one decoder call returns, so one raw chunk cannot inflate past the cap."""

_DEFAULT_PORTS = {"http": 80, "https": 443}


def origin(url: httpx.URL) -> tuple[str, str, int | None]:
    """(scheme, host, port) with the scheme's default port filled in."""
    return url.scheme, url.host, url.port or _DEFAULT_PORTS.get(url.scheme)


class _Inflater:
    """zlib inflation in bounded steps (gzip, or deflate with httpx's raw-deflate fallback)."""

    def __init__(self, wbits: int, *, raw_fallback: bool = False) -> None:
        self._inflater = zlib.decompressobj(wbits)
        self._raw_fallback = raw_fallback
        self._started = False

    def decode(self, data: bytes) -> Iterator[bytes]:
        while not self._inflater.eof:
            try:
                out = self._inflater.decompress(data, DECODE_STEP)
            except zlib.error as exc:
                if self._raw_fallback and not self._started:
                    # "deflate" in the wild is often a raw deflate stream without the header.
                    self._inflater = zlib.decompressobj(-zlib.MAX_WBITS)
                    self._raw_fallback = False
                    continue
                raise httpx.DecodingError(f"bad compressed body: {exc}") from None
            self._started = True
            if out:
                yield out
            data = self._inflater.unconsumed_tail
            # A full step may leave output pending inside zlib: drain it before more input.
            if not data and len(out) < DECODE_STEP:
                return
        # Bytes after the end of the stream are ignored, as httpx does.


def _decoder(content_encoding: str | None) -> _Inflater | None:
    codings = [c.strip().lower() for c in (content_encoding or "").split(",") if c.strip().lower()]
    codings = [c for c in codings if c != "identity"]
    if not codings:
        return None
    if codings in (["gzip"], ["x-gzip"]):
        return _Inflater(zlib.MAX_WBITS | 16)
    if codings == ["deflate"]:
        return _Inflater(zlib.MAX_WBITS, raw_fallback=True)
    raise CivitaiResponseValidationError(
        f"Civitai sent a body in an encoding that was not asked for ({', '.join(codings)[:60]})"
    )


def _declared_length(response: httpx.Response) -> int | None:
    value = response.headers.get("content-length", "").strip()
    return int(value) if value.isdigit() else None


def read_capped(response: httpx.Response, limit: int, *, truncate: bool = False) -> bytes:
    """The decoded body, at most `limit` bytes; past that `ResponseTooLargeError`.

    With `truncate`, what lies past `limit` is dropped instead (for error bodies). Raw bytes
    count against the limit too, so an endless stream that decodes to nothing also stops.
    """
    url = response.request.url
    if response.is_stream_consumed:  # read already (a test transport with `content=`)
        body = response.content
        if len(body) > limit and not truncate:
            raise ResponseTooLargeError(limit=limit, url=url)
        return body[:limit]
    declared = _declared_length(response)
    if declared is not None and declared > limit and not truncate:
        raise ResponseTooLargeError(limit=limit, url=url, declared=declared)
    decoder = _decoder(response.headers.get("content-encoding"))
    pieces: list[bytes] = []  # joined once at the end, as httpx does: one copy of the body
    kept = raw_total = 0
    for chunk in response.iter_raw():
        raw_total += len(chunk)
        if raw_total > limit and not truncate:
            raise ResponseTooLargeError(limit=limit, url=url)
        for piece in [chunk] if decoder is None else decoder.decode(chunk):
            room = limit - kept
            if len(piece) > room:
                if truncate:
                    pieces.append(piece[:room])
                    return b"".join(pieces)
                raise ResponseTooLargeError(limit=limit, url=url)
            pieces.append(piece)
            kept += len(piece)
        if raw_total > limit:  # truncating: what arrived so far is all that is kept
            break
    return b"".join(pieces)


def _finished(response: httpx.Response, body: bytes) -> httpx.Response:
    """A read response holding `body`, already decoded (so its encoding headers go)."""
    headers = [
        (k, v)
        for k, v in response.headers.multi_items()
        if k.lower() not in ("content-encoding", "content-length", "transfer-encoding")
    ]
    return httpx.Response(
        response.status_code,
        headers=headers,
        content=body,
        request=response.request,
        extensions=response.extensions,
    )


def _redirected(request: httpx.Request, status: int, target: httpx.URL) -> httpx.Request:
    """The next request of a same-origin redirect (303, and 301/302 after a POST, become GET)."""
    method = request.method
    if (status == 303 and method != "HEAD") or (status in (301, 302) and method == "POST"):
        method = "GET"
    if method == request.method:
        content: bytes | None = request.content
        headers = request.headers
    else:
        content = None
        headers = httpx.Headers(
            [
                (k, v)
                for k, v in request.headers.multi_items()
                if k.lower() not in ("content-length", "content-type", "transfer-encoding")
            ]
        )
    return httpx.Request(method, target, headers=headers, content=content)


def exchange(
    http: httpx.Client,
    request: httpx.Request,
    *,
    follow_redirects: bool,
    max_body_bytes: int,
    max_redirects: int,
) -> httpx.Response:
    """Send `request` and read its answer under the caps; see the module docstring.

    A 2xx body over `max_body_bytes` raises `ResponseTooLargeError`; other statuses keep at
    most `MAX_ERROR_BODY_BYTES`. A redirect to another origin raises
    `CrossOriginRedirectError` before anything is sent there; httpx errors pass through.
    """
    start = origin(request.url)
    hops = 0
    while True:
        response = http.send(request, stream=True, follow_redirects=False)
        try:
            if follow_redirects and response.has_redirect_location:
                location = response.headers["location"]
                try:
                    target = request.url.join(location)
                except httpx.InvalidURL:
                    raise CivitaiResponseValidationError(
                        f"redirect to an unusable Location, {redact_url(request.url)}"
                    ) from None
                if origin(target) != start:
                    raise CrossOriginRedirectError(
                        status_code=response.status_code, url=request.url, location=str(target)
                    )
                hops += 1
                if hops > max_redirects:
                    raise httpx.TooManyRedirects(
                        f"more than {max_redirects} redirects", request=request
                    )
                request = _redirected(request, response.status_code, target)
                continue
            if 200 <= response.status_code < 300:
                body = read_capped(response, max_body_bytes)
            else:
                body = read_capped(response, MAX_ERROR_BODY_BYTES, truncate=True)
            return _finished(response, body)
        finally:
            response.close()


__all__ = [
    "ACCEPT_ENCODING",
    "DECODE_STEP",
    "MAX_API_BODY_BYTES",
    "MAX_ERROR_BODY_BYTES",
    "exchange",
    "origin",
    "read_capped",
]
