"""Errors raised by the Civitai client, and `from_response`, which maps an HTTP answer to one.

They carry data (url, status_code, retry_after, deadline, ...) and a plain one-line message;
the front ends word them. The tree::

    CivitaiError
    ├── CivitaiConnectionError            the API could not be reached (also a ConnectionError)
    ├── CivitaiResponseValidationError    a payload without the documented shape
    │   ├── ResponseTooLargeError         a body past the read cap; .limit, .url, .declared
    │   └── CrossOriginRedirectError      an API redirect off the API origin; .url, .location
    ├── ImageFetchError                   an image not taken from the network; .url, .reason
    ├── CivitaiInputError                 a local check failed before any request (a ValueError)
    └── CivitaiStatusError                an HTTP error status; .status_code, .url, .server_message
        ├── CivitaiBadRequestError        400
        ├── LoginRequiredError            401: the file needs an API key
        ├── UnauthorizedError             401: the key is wrong or the action needs one
        ├── DownloadDisabledError         401: the creator disabled downloads
        ├── EarlyAccessError              403: early access not bought; .deadline
        ├── ForbiddenError                403: no access
        ├── NotFoundError                 404 (also a LookupError)
        ├── ArchivedError                 410: archived model
        ├── RateLimitedError              429 after all retries; .retry_after
        └── ServerError                   5xx after all retries

Every URL stored on an error goes through `catalog.redact.redact_url` first, because signed
storage URLs and ``token=`` parameters are credentials.
"""

from __future__ import annotations

import json
import re
from datetime import datetime
from typing import TYPE_CHECKING, Any

from catalog.civitai.retry import parse_retry_after
from catalog.redact import redact_url

if TYPE_CHECKING:
    import httpx

MAX_SERVER_MESSAGE_CHARS = 300

_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]+")
# `error` values that only name the status; the `message` beside them says more.
_LABEL_ERRORS = frozenset({"unauthorized", "early access", "forbidden", "not found"})


class CivitaiError(Exception):
    """Root of everything that comes from the Civitai API (or a local check before a call)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class CivitaiConnectionError(CivitaiError, ConnectionError):
    """Civitai could not be reached (DNS, refused, reset, timeouts), after all retries."""


class CivitaiResponseValidationError(CivitaiError):
    """Civitai answered with a body that does not have the documented shape."""


class ResponseTooLargeError(CivitaiResponseValidationError):
    """A body past `limit` decoded bytes (a gzip bomb, an endless stream); reading stopped there.

    `url` is redacted; `declared` is the Content-Length when the header alone gave it away.
    """

    def __init__(self, *, limit: int, url: httpx.URL | str, declared: int | None = None) -> None:
        self.limit = limit
        self.url = redact_url(url)
        self.declared = declared
        bound = f"the {limit}-byte ({limit / 2**20:g} MiB) limit"
        if declared is None:
            message = f"Civitai's answer to {self.url} grew past {bound}; stopped reading"
        else:
            message = f"Civitai's answer to {self.url} declares {declared} bytes, over {bound}"
        super().__init__(message)


class CrossOriginRedirectError(CivitaiResponseValidationError):
    """An API answer redirected to another origin (scheme, host, port); it was not followed."""

    def __init__(self, *, status_code: int, url: httpx.URL | str, location: str) -> None:
        self.status_code = status_code
        self.url = redact_url(url)
        self.location = redact_url(location)
        super().__init__(
            f"Civitai redirected {self.url} to another origin ({self.location}, "
            f"HTTP {status_code}); not followed"
        )


class ImageFetchError(CivitaiError):
    """An image the client would not take from the network; nothing of it was kept.

    `reason` is ``host`` (the URL is not on an image origin the client fetches from),
    ``redirect`` (a redirect off those origins, not followed; `location`), ``content-type``
    (not JPEG, PNG or WebP; `content_type`), ``too-large`` (past `limit` bytes; `declared`
    when the header said so), ``status`` (`status_code`) or ``connection``. URLs are redacted.
    """

    def __init__(
        self,
        message: str,
        *,
        url: httpx.URL | str,
        reason: str,
        location: str | None = None,
        status_code: int | None = None,
        content_type: str | None = None,
        limit: int | None = None,
        declared: int | None = None,
    ) -> None:
        super().__init__(message)
        self.url = redact_url(url)
        self.reason = reason
        self.location = redact_url(location) if location is not None else None
        self.status_code = status_code
        self.content_type = content_type
        self.limit = limit
        self.declared = declared


class CivitaiInputError(CivitaiError, ValueError):
    """A value was rejected locally before any request, so no quota is spent on a sure 400.

    `expected` names the accepted form when it is a hash (``sha256`` or ``civitai-hash``).
    """

    def __init__(self, message: str, *, expected: str = "") -> None:
        super().__init__(message)
        self.expected = expected


class CivitaiStatusError(CivitaiError):
    """Civitai answered with an error status; the subclass says which kind."""

    def __init__(
        self,
        message: str,
        *,
        status_code: int,
        url: str,
        server_message: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.url = redact_url(url)
        self.server_message = server_message


class CivitaiBadRequestError(CivitaiStatusError):
    """400: Civitai rejected the request parameters."""


class LoginRequiredError(CivitaiStatusError):
    """401 on a download: the creator requires a logged-in user."""


class UnauthorizedError(CivitaiStatusError):
    """401: the action needs a valid API key (an invalid key counts as none)."""


class DownloadDisabledError(CivitaiStatusError):
    """401: the creator allows only on-site generation for this file."""


class EarlyAccessError(CivitaiStatusError):
    """403: the version is in paid early access and this account has not bought it."""

    def __init__(
        self,
        message: str,
        *,
        status_code: int,
        url: str,
        server_message: str | None = None,
        deadline: datetime | None = None,
    ) -> None:
        super().__init__(message, status_code=status_code, url=url, server_message=server_message)
        self.deadline = deadline


class ForbiddenError(CivitaiStatusError):
    """403: this account or address may not access the resource."""


class NotFoundError(CivitaiStatusError, LookupError):
    """404: no such model, version, hash or file (or it is unpublished)."""


class ArchivedError(CivitaiStatusError):
    """410: the model is archived and its files can no longer be downloaded."""


class RateLimitedError(CivitaiStatusError):
    """429 after all retries: Civitai throttles this client or account."""

    def __init__(
        self,
        message: str,
        *,
        status_code: int,
        url: str,
        server_message: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message, status_code=status_code, url=url, server_message=server_message)
        self.retry_after = retry_after


class ServerError(CivitaiStatusError):
    """5xx after all retries: Civitai itself is failing."""


def _clean(text: str) -> str | None:
    """One short line of server text: control characters gone, whitespace collapsed, capped."""
    line = " ".join(_CONTROL_RE.sub(" ", text).split())
    if not line:
        return None
    if len(line) > MAX_SERVER_MESSAGE_CHARS:
        line = line[: MAX_SERVER_MESSAGE_CHARS - 1] + "…"
    return line


def _zod_text(error: dict[str, Any]) -> str | None:
    """Issue messages of a serialized ZodError (v4 puts them in a JSON string, v3 in a list)."""
    issues: Any = error.get("issues")
    if issues is None and isinstance(error.get("message"), str):
        try:
            issues = json.loads(error["message"])
        except ValueError:
            return str(error["message"])
    if not isinstance(issues, list):
        return None
    parts = []
    for issue in issues:
        if not isinstance(issue, dict):
            continue
        path = issue.get("path")
        where = ".".join(str(p) for p in path) if isinstance(path, list) and path else ""
        what = issue.get("message")
        if isinstance(what, str):
            parts.append(f"{where}: {what}" if where else what)
    return "; ".join(parts) or None


def _server_message(body: Any) -> str | None:
    """The human text of a Civitai error body (section 6 of the API notes), or None."""
    if isinstance(body, str):
        return body
    if not isinstance(body, dict):
        return None
    error = body.get("error")
    message = body.get("message")
    if isinstance(error, dict):
        error = _zod_text(error)
    if isinstance(error, str) and isinstance(message, str):
        if error.strip().lower() in _LABEL_ERRORS or error == message:
            return message
        return f"{message}: {error}"
    for text in (error, message):
        if isinstance(text, str):
            return text
    return None


def _parse_body(response: httpx.Response) -> Any:
    """The JSON body, else the first text line; None for HTML pages and empty bodies."""
    content = response.content
    if not content:
        return None
    try:
        return json.loads(content)
    except ValueError:
        pass
    text = content[:4096].decode("utf-8", errors="replace").strip()
    if not text or text.startswith("<"):  # an HTML error page from the edge says nothing useful
        return None
    return text.splitlines()[0]


def _parse_deadline(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def from_response(response: httpx.Response, *, secrets: tuple[str, ...] = ()) -> CivitaiStatusError:
    """The error for an error response, chosen from its status and Civitai's JSON or text body.

    `secrets` are scrubbed from the message, in case a server or proxy echoes a key back.
    """
    status = response.status_code
    try:
        request: httpx.Request | None = response.request
    except RuntimeError:
        request = None
    url = redact_url(request.url) if request is not None else ""
    method = request.method if request is not None else "GET"
    is_download = request is not None and "/api/download/" in request.url.path

    body = _parse_body(response)
    text = _server_message(body)
    server_message = _clean(text) if text else None
    for secret in secrets:
        if secret and server_message:
            server_message = server_message.replace(secret, "REDACTED")
    summary = server_message or response.reason_phrase or "error"
    message = f"{summary} (HTTP {status}, {method} {url})"
    fields: dict[str, Any] = {"status_code": status, "url": url, "server_message": server_message}
    lowered = (server_message or "").lower()

    if status == 400:
        return CivitaiBadRequestError(message, **fields)
    if status == 401:
        if "disabled downloads" in lowered:
            return DownloadDisabledError(message, **fields)
        if "logged in" in lowered or is_download:
            return LoginRequiredError(message, **fields)
        return UnauthorizedError(message, **fields)
    if status == 403:
        is_early = isinstance(body, dict) and (
            "deadline" in body or str(body.get("error", "")).lower() == "early access"
        )
        if is_early:
            deadline = _parse_deadline(body.get("deadline"))
            if deadline is not None:
                when = deadline.strftime("%Y-%m-%d %H:%M UTC")
                message = f"in early access until {when} (HTTP {status}, {method} {url})"
                return EarlyAccessError(message, deadline=deadline, **fields)
            return EarlyAccessError(message, **fields)
        return ForbiddenError(message, **fields)
    if status == 404:
        return NotFoundError(message, **fields)
    if status == 410:
        return ArchivedError(message, **fields)
    if status == 429:
        retry_after = parse_retry_after(response.headers.get("retry-after"))
        return RateLimitedError(message, retry_after=retry_after, **fields)
    if 500 <= status <= 599:
        return ServerError(message, **fields)
    return CivitaiStatusError(message, **fields)


__all__ = [
    "ArchivedError",
    "CivitaiBadRequestError",
    "CivitaiConnectionError",
    "CivitaiError",
    "CivitaiInputError",
    "CivitaiResponseValidationError",
    "CivitaiStatusError",
    "CrossOriginRedirectError",
    "DownloadDisabledError",
    "EarlyAccessError",
    "ForbiddenError",
    "ImageFetchError",
    "LoginRequiredError",
    "NotFoundError",
    "RateLimitedError",
    "ResponseTooLargeError",
    "ServerError",
    "UnauthorizedError",
    "from_response",
]
