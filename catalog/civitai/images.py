"""One image from the network (a preview), under the API client's rules.

Images come from Civitai's image edge (``https://image.civitai.com``) or from the API's own
origin (a mirror, or the tests' fake); the catalog's URL must be on one of those origins and a
redirect may only stay on them (`ImageFetchError` reason ``host`` / ``redirect``, before
anything is sent elsewhere). The request carries no credentials: no API key, no cookies, no
client-level auth. The answer must be labelled ``image/jpeg``, ``image/png`` or ``image/webp``
(checked before the body is read), and its body is read in chunks under a cap by the same
reader as API answers (`exchange.read_capped`): a Content-Length over the cap stops at the
header, an endless or lying stream at the cap. Decoding is the caller's business
(`assetmgr.store.thumbnails`).

Civitai's edge resizes on request: a path segment such as ``original=true`` or ``width=450``
before the file name selects the size, and `sized_url` asks for the width the browser draws.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final
from urllib.parse import urlsplit, urlunsplit

import httpx

from catalog.civitai.errors import (
    CivitaiResponseValidationError,
    ImageFetchError,
    ResponseTooLargeError,
)
from catalog.civitai.exchange import ACCEPT_ENCODING, origin, read_capped
from catalog.redact import redact_url

CIVITAI_IMAGE_ORIGIN: Final = ("https", "image.civitai.com", 443)
IMAGE_CONTENT_TYPES: Final = {"image/jpeg": "JPEG", "image/png": "PNG", "image/webp": "WEBP"}
"""The content types taken, and the decoder each names."""
MAX_IMAGE_BYTES: Final = 16 << 20
"""Cap on one image body: a resized preview is tens of KB, a full-size original a few MB."""
IMAGE_TIMEOUT: Final = httpx.Timeout(15.0, connect=5.0)
MAX_IMAGE_REDIRECTS: Final = 3
_ACCEPT: Final = "image/webp,image/png,image/jpeg;q=0.9"
# One edge transform segment: comma-separated name=value options.
_TRANSFORM_RE = re.compile(r"[a-z]+=[^/=,]*(?:,[a-z]+=[^/=,]*)*")
_SIZE_OPTIONS = ("original", "width", "height")
_NO_CREDENTIALS = ("authorization", "cookie", "proxy-authorization")

Origin = tuple[str, str, int | None]


@dataclass(frozen=True)
class FetchedImage:
    """An image body as the host sent it: not decoded, not trusted."""

    url: str
    """Where the bytes came from (after same-origin redirects)."""
    content_type: str
    data: bytes

    @property
    def declared_format(self) -> str:
        """The decoder the content type names (``JPEG``, ``PNG`` or ``WEBP``)."""
        return IMAGE_CONTENT_TYPES[self.content_type]


def sized_url(url: str, width: int) -> str:
    """`url` asking Civitai's edge for an image `width` pixels wide.

    The transform segment before the file name (``original=true``, ``width=450``...) has its
    size options replaced; a path of the edge's bare shape (``/<key>/<uuid>/<name>``) gets
    one. Any other URL is returned unchanged.
    """
    try:
        parts = urlsplit(url)
    except ValueError:
        return url
    segments = parts.path.split("/")
    if len(segments) < 4 or not segments[-1]:
        return url
    size = f"width={width}"
    transform = segments[-2]
    if _TRANSFORM_RE.fullmatch(transform):
        kept = [o for o in transform.split(",") if o.split("=", 1)[0] not in _SIZE_OPTIONS]
        segments[-2] = ",".join([size, *kept])
    elif len(segments) == 4 and parts.netloc.endswith(CIVITAI_IMAGE_ORIGIN[1]):
        segments.insert(-1, size)
    else:
        return url
    return urlunsplit(parts._replace(path="/".join(segments)))


def _refused(
    url: httpx.URL | str,
    reason: str,
    what: str,
    *,
    location: str | None = None,
    status_code: int | None = None,
    content_type: str | None = None,
    limit: int | None = None,
    declared: int | None = None,
) -> ImageFetchError:
    return ImageFetchError(
        f"image {redact_url(url)} {what}; nothing was kept",
        url=url,
        reason=reason,
        location=location,
        status_code=status_code,
        content_type=content_type,
        limit=limit,
        declared=declared,
    )


def _next_hop(response: httpx.Response, allowed: frozenset[Origin], hops: int) -> httpx.URL:
    """Where a redirect points, if it stays on the allowed origins."""
    url = response.request.url
    location = response.headers.get("location", "")
    try:
        target = url.join(location)
    except httpx.InvalidURL:
        raise _refused(url, "redirect", "redirected to an unusable Location") from None
    status = response.status_code
    if origin(target) not in allowed:
        raise _refused(
            url,
            "redirect",
            f"redirected to another host ({redact_url(target)}, HTTP {status}), not followed",
            location=str(target),
            status_code=status,
        )
    if hops >= MAX_IMAGE_REDIRECTS:
        raise _refused(url, "redirect", f"redirected more than {MAX_IMAGE_REDIRECTS} times")
    return target


def _body(response: httpx.Response, max_bytes: int) -> FetchedImage:
    url = response.request.url
    status = response.status_code
    if not 200 <= status < 300:
        raise _refused(url, "status", f"answered HTTP {status}", status_code=status)
    raw_type = response.headers.get("content-type", "")
    media = raw_type.split(";", 1)[0].strip().lower()
    if media not in IMAGE_CONTENT_TYPES:
        shown = media[:60] or "no content type"
        raise _refused(
            url,
            "content-type",
            f"is {shown}, not a JPEG, PNG or WebP image",
            content_type=shown,
        )
    try:
        data = read_capped(response, max_bytes)
    except ResponseTooLargeError as exc:
        bound = f"the {max_bytes}-byte ({max_bytes / 2**20:g} MiB) limit"
        what = (
            f"grew past {bound}; stopped reading"
            if exc.declared is None
            else f"declares {exc.declared} bytes, over {bound}"
        )
        raise _refused(url, "too-large", what, limit=max_bytes, declared=exc.declared) from None
    except CivitaiResponseValidationError as exc:  # an encoding nobody asked for
        raise _refused(url, "content-type", exc.message.removeprefix("Civitai ")) from None
    return FetchedImage(str(url), media, data)


def fetch_image(
    http: httpx.Client,
    url: str,
    *,
    allowed_origins: frozenset[Origin],
    user_agent: str,
    max_bytes: int = MAX_IMAGE_BYTES,
    timeout: httpx.Timeout = IMAGE_TIMEOUT,
) -> FetchedImage:
    """GET one image under the rules of the module docstring; `ImageFetchError` otherwise."""
    try:
        target = httpx.URL(url)
    except (httpx.InvalidURL, TypeError):
        raise _refused(str(url)[:200], "host", "has an unusable URL") from None
    if origin(target) not in allowed_origins:
        raise _refused(target, "host", "is not on an image host assetmgr fetches from, not fetched")
    hops = 0
    while True:
        request = http.build_request(
            "GET",
            target,
            headers={
                "User-Agent": user_agent,
                "Accept": _ACCEPT,
                "Accept-Encoding": ACCEPT_ENCODING,
            },
            timeout=timeout,
        )
        for name in _NO_CREDENTIALS:
            if name in request.headers:
                del request.headers[name]
        try:
            response = http.send(request, stream=True, follow_redirects=False, auth=None)
        except httpx.HTTPError as exc:
            raise _refused(
                target, "connection", f"could not be fetched ({type(exc).__name__})"
            ) from exc
        try:
            if response.has_redirect_location:
                target = _next_hop(response, allowed_origins, hops)
                hops += 1
                continue
            try:
                return _body(response, max_bytes)
            except httpx.HTTPError as exc:
                raise _refused(
                    target, "connection", f"broke off while read ({type(exc).__name__})"
                ) from exc
        finally:
            response.close()


__all__ = [
    "CIVITAI_IMAGE_ORIGIN",
    "IMAGE_CONTENT_TYPES",
    "MAX_IMAGE_BYTES",
    "FetchedImage",
    "fetch_image",
    "sized_url",
]
