"""Synchronous Civitai REST client: cursor listing, lookups by id and hash, download links.

All requests go through `CivitaiClient._request`, the one place that retries, adds the
``Authorization: Bearer`` header (to the API host only) and logs with redacted URLs. The
key is never put in a URL: ``?token=`` would land in proxy, server and our own logs. Bodies
are read under a cap and redirects stay on the API's origin (`catalog.civitai.exchange`).
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Self, TypeVar
from urllib.parse import urlsplit

import httpx
from pydantic import BaseModel, ValidationError

from catalog.civitai.disposition import filename_from_location
from catalog.civitai.errors import (
    CivitaiConnectionError,
    CivitaiInputError,
    CivitaiResponseValidationError,
    CivitaiStatusError,
    EarlyAccessError,
    LoginRequiredError,
    from_response,
)
from catalog.civitai.exchange import ACCEPT_ENCODING, MAX_API_BODY_BYTES, exchange, origin
from catalog.civitai.listpage import cursor_of_body, cursor_of_metadata, validation_reason
from catalog.civitai.retry import RetryPolicy, parse_retry_after
from catalog.civitai.types import MODEL_TYPES, HashIdMatch, Model, ModelVersion, Page
from catalog.redact import redact_text, redact_url

if TYPE_CHECKING:
    from catalog.civitai.images import FetchedImage

log = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://civitai.com"
# Civitai answers browser-like User-Agents with HTML and login redirects instead of JSON errors.
DEFAULT_USER_AGENT = "assetmgr/0.1 (+python-httpx)"
DEFAULT_TIMEOUT = httpx.Timeout(30.0, connect=10.0)
DEFAULT_RETRY = RetryPolicy()
MAX_PAGE_LIMIT = 100
BY_HASH_BATCH = 100
BY_HASH_IDS_BATCH = 10_000
HASH_LENGTHS: dict[int, str] = {
    8: "AutoV1 or CRC32",
    10: "AutoV2",
    12: "AutoV3",
    64: "SHA256 or BLAKE3",
}

_HEX_RE = re.compile(r"[0-9A-Fa-f]+")
_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
_EARLY_ACCESS_PATH_RE = re.compile(r"/model-versions/\d+/?")
_DOWNLOAD_QUOTA_MARKER = b"unusual amount of downloading"
_MODEL_TYPES_BY_LOWER = {t.lower(): t for t in MODEL_TYPES}
_ModelPage = Page[Model]
PageT = TypeVar("PageT")

ApiT = TypeVar("ApiT", bound=BaseModel)


def normalize_hash(value: str, *, sha256_only: bool = False) -> str:
    """A Civitai file hash in the uppercase form the API stores, or `CivitaiInputError`.

    Checked locally so a typo costs no request and gives a clearer message than a 404.
    """
    text = value.strip() if isinstance(value, str) else ""
    allowed = (64,) if sha256_only else tuple(HASH_LENGTHS)
    if len(text) not in allowed or not _HEX_RE.fullmatch(text):
        shown = repr(value)[:80]
        if sha256_only:
            raise CivitaiInputError(
                f"not a SHA256 hash: {shown} (expected 64 hex digits)", expected="sha256"
            )
        raise CivitaiInputError(
            f"not a Civitai file hash: {shown} (expected 8, 10, 12 or 64 hex digits)",
            expected="civitai-hash",
        )
    return text.upper()


def _check_id(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise CivitaiInputError(f"not a valid {what}: {value!r} (expected a positive integer)")
    return value


def _as_tuple(values: Sequence[Any] | str | None) -> tuple[Any, ...]:
    # A bare string is one value, not a sequence of characters.
    if values is None:
        return ()
    if isinstance(values, str):
        return (values,)
    return tuple(values)


@dataclass(frozen=True)
class ModelFilters:
    """Filters of `GET /api/v1/models`; there is deliberately no `page` (it does not offset)."""

    types: Sequence[str] = ()
    """Model types (``LORA``, ``Checkpoint``…); sent as repeated ``types=`` keys."""
    base_models: Sequence[str] = ()
    """Base models (``SDXL 1.0``…); sent as repeated ``baseModels=`` keys."""
    query: str | None = None
    tag: str | None = None
    username: str | None = None
    ids: Sequence[int] = ()
    """Model ids, sent comma-joined; Civitai ignores them when `query` is set."""
    nsfw: bool = False
    """Ask for every browsing level; without it Civitai returns PG content only."""
    sort: str | None = None
    period: str | None = None
    primary_file_only: bool = False
    limit: int = MAX_PAGE_LIMIT

    def __post_init__(self) -> None:
        object.__setattr__(self, "types", _as_tuple(self.types))
        object.__setattr__(self, "base_models", _as_tuple(self.base_models))
        object.__setattr__(self, "ids", _as_tuple(self.ids))
        if isinstance(self.limit, bool) or not 1 <= self.limit <= MAX_PAGE_LIMIT:
            raise CivitaiInputError(f"limit must be 1..{MAX_PAGE_LIMIT}, got {self.limit!r}")
        for model_id in self.ids:
            _check_id(model_id, "model id")

    def to_params(self) -> list[tuple[str, str]]:
        """Query parameters in Civitai's form: repeated keys for lists, ``true`` flags only."""
        params: list[tuple[str, str]] = [("limit", str(self.limit))]
        # The server's enum check is exact; fix the case of known types, pass others through.
        params.extend(("types", _MODEL_TYPES_BY_LOWER.get(t.lower(), t)) for t in self.types)
        params.extend(("baseModels", b) for b in self.base_models)
        if self.ids:
            params.append(("ids", ",".join(str(i) for i in self.ids)))
        for key, value in (
            ("query", self.query),
            ("tag", self.tag),
            ("username", self.username),
            ("sort", self.sort),
            ("period", self.period),
        ):
            if value is not None:
                params.append((key, value))
        if self.nsfw:
            params.append(("nsfw", "true"))
        if self.primary_file_only:
            params.append(("primaryFileOnly", "true"))
        return params


@dataclass(frozen=True)
class DownloadTicket:
    """Where a file can be fetched: a short-lived signed storage URL, to GET without our key.

    The URL is left out of `repr` because its query string is a credential.
    """

    version_id: int
    url: str = field(repr=False)
    filename: str | None = None
    """The name Civitai will send in Content-Disposition, reduced to a bare file name."""
    file_id: int | None = None

    @property
    def redacted_url(self) -> str:
        return redact_url(self.url)


def _batches(values: Sequence[str], size: int) -> Iterator[list[str]]:
    for start in range(0, len(values), size):
        yield list(values[start : start + size])


def _unique_sha256s(values: Iterable[str] | str) -> list[str]:
    hashes = [values] if isinstance(values, str) else values
    return list(dict.fromkeys(normalize_hash(h, sha256_only=True) for h in hashes))


class CivitaiClient:
    """A synchronous client of the Civitai REST API.

    Pass `transport` (e.g. `httpx.MockTransport`) or a ready `http` client to test or proxy it;
    an injected `http` client is not closed by `close()` and its timeout is kept.
    `max_body_bytes` caps every successful answer, decoded (`exchange.MAX_API_BODY_BYTES`).
    """

    def __init__(
        self,
        *,
        base_url: str = DEFAULT_BASE_URL,
        api_key: str | None = None,
        transport: httpx.BaseTransport | None = None,
        http: httpx.Client | None = None,
        timeout: httpx.Timeout | float = DEFAULT_TIMEOUT,
        retry: RetryPolicy = DEFAULT_RETRY,
        user_agent: str = DEFAULT_USER_AGENT,
        sleep: Callable[[float], None] = time.sleep,
        max_body_bytes: int = MAX_API_BODY_BYTES,
    ) -> None:
        if http is not None and transport is not None:
            raise ValueError("pass either http or transport, not both")
        base = httpx.URL(base_url.rstrip("/"))
        if base.scheme not in ("http", "https") or not base.host:
            raise CivitaiInputError(f"not an http(s) API base URL: {redact_url(base_url)}")
        if base.query:
            raise CivitaiInputError("the API base URL must not carry a query (keys go in a header)")
        self._base_url = str(base).rstrip("/")
        self._api_key = api_key.strip() if api_key and api_key.strip() else None
        self._secrets: tuple[str, ...] = (self._api_key,) if self._api_key else ()
        self._headers = {
            "User-Agent": user_agent,
            "Accept": "application/json",
            "Accept-Encoding": ACCEPT_ENCODING,
        }
        if self._api_key:
            self._headers["Authorization"] = f"Bearer {self._api_key}"
        self._retry = retry
        self._sleep = sleep
        self._max_body_bytes = max_body_bytes
        self._owns_http = http is None
        self._http = http or httpx.Client(
            transport=transport,
            timeout=timeout,
            follow_redirects=False,
            headers={"User-Agent": user_agent},
        )

    @property
    def base_url(self) -> str:
        return self._base_url

    @property
    def has_api_key(self) -> bool:
        return self._api_key is not None

    def close(self) -> None:
        """Close the HTTP client if this object created it."""
        if self._owns_http:
            self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def image_origins(self) -> frozenset[tuple[str, str, int | None]]:
        """Where `fetch_image` takes images from: Civitai's image edge and the API's origin."""
        from catalog.civitai.images import CIVITAI_IMAGE_ORIGIN

        return frozenset({CIVITAI_IMAGE_ORIGIN, origin(httpx.URL(self._base_url))})

    def fetch_image(self, url: str, *, max_bytes: int | None = None) -> FetchedImage:
        """One image under `catalog.civitai.images`' rules: from `image_origins` only, without
        the key or cookies, JPEG/PNG/WebP only, at most `max_bytes` (default 16 MiB).

        No retries: a preview that fails is asked for again when it is next shown.
        """
        from catalog.civitai.images import MAX_IMAGE_BYTES, fetch_image

        return fetch_image(
            self._http,
            url,
            allowed_origins=self.image_origins,
            user_agent=self._headers["User-Agent"],
            max_bytes=MAX_IMAGE_BYTES if max_bytes is None else max_bytes,
        )

    def __repr__(self) -> str:
        key = "set" if self._api_key else "none"
        return f"CivitaiClient(base_url={self._base_url!r}, api_key={key})"

    # -- transport, retries, errors ------------------------------------------------------

    def _scrub(self, text: str) -> str:
        return redact_text(text, self._secrets)

    def _request(
        self,
        method: str,
        path: str,
        *,
        params: Sequence[tuple[str, str]] | None = None,
        json_body: Any = None,
        follow_redirects: bool = True,
    ) -> httpx.Response:
        """Send one API request, retrying transient failures; the answer may still be an error.

        The answer comes back fully read, under the body cap. Redirects are followed only
        within the API's origin; one to another origin raises `CrossOriginRedirectError`.
        """
        url = (
            httpx.URL(self._base_url + path, params=params)
            if params
            else httpx.URL(self._base_url + path)
        )
        policy = self._retry
        failures = 0
        while True:
            try:
                response = exchange(
                    self._http,
                    self._http.build_request(method, url, json=json_body, headers=self._headers),
                    follow_redirects=follow_redirects,
                    max_body_bytes=self._max_body_bytes,
                    max_redirects=self._http.max_redirects,
                )
            except (httpx.UnsupportedProtocol, httpx.LocalProtocolError) as exc:
                # Our own request is malformed; retrying cannot help.
                raise CivitaiConnectionError(
                    self._scrub(f"cannot send {method} {url}: {exc}")
                ) from exc
            except httpx.TransportError as exc:
                failures += 1
                detail = self._scrub(f"{type(exc).__name__}: {exc}")
                # Nothing listening or no DNS: usually offline, so give up sooner than for a
                # connection that dropped mid-answer.
                limit = (
                    min(policy.max_attempts, 3)
                    if isinstance(exc, httpx.ConnectError)
                    else policy.max_attempts
                )
                if failures >= limit:
                    raise CivitaiConnectionError(
                        self._scrub(
                            f"cannot reach Civitai ({detail}) after {failures} attempts,"
                            f" {method} {url}"
                        )
                    ) from exc
                delay = policy.delay(failures)
                log.info(
                    "Civitai %s %s failed (%s); retry %d of %d in %.2fs",
                    method,
                    redact_url(url),
                    detail,
                    failures,
                    policy.max_attempts - 1,
                    delay,
                )
                self._sleep(delay)
                continue
            except httpx.RequestError as exc:  # too many redirects, undecodable content
                raise CivitaiConnectionError(
                    self._scrub(f"request failed ({type(exc).__name__}: {exc}), {method} {url}")
                ) from exc

            status = response.status_code
            if status in policy.retry_statuses and self._is_retryable(response):
                failures += 1
                if failures < policy.max_attempts:
                    retry_after = parse_retry_after(response.headers.get("retry-after"))
                    delay = policy.delay(failures, retry_after)
                    log.info(
                        "Civitai %s %s answered %d; retry %d of %d in %.2fs",
                        method,
                        redact_url(url),
                        status,
                        failures,
                        policy.max_attempts - 1,
                        delay,
                    )
                    self._sleep(delay)
                    continue
                log.warning(
                    "Civitai %s %s answered %d; giving up after %d attempts",
                    method,
                    redact_url(url),
                    status,
                    failures,
                )
            return response

    @staticmethod
    def _is_retryable(response: httpx.Response) -> bool:
        # The download limiter says "come back later"; hammering it only extends the block.
        return not (response.status_code == 429 and _DOWNLOAD_QUOTA_MARKER in response.content)

    def _error(self, response: httpx.Response) -> CivitaiStatusError:
        return from_response(response, secrets=self._secrets)

    def _ok(self, response: httpx.Response) -> httpx.Response:
        """`response` if it is a 2xx answer; any other status raises its mapped error."""
        if not 200 <= response.status_code < 300:
            raise self._error(response)
        return response

    def _json(self, response: httpx.Response) -> Any:
        """The parsed body of a 2xx answer; any other status raises its mapped error."""
        self._ok(response)
        try:
            # One parse straight from the bytes; items are validated one by one afterwards.
            return json.loads(response.content)
        except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError
            kind = response.headers.get("content-type", "no content type")
            raise CivitaiResponseValidationError(
                f"Civitai sent a body that is not JSON ({kind}), "
                f"{response.request.method} {redact_url(response.request.url)}"
            ) from exc

    @staticmethod
    def _validate(model_cls: type[ApiT], data: Any, what: str) -> ApiT:
        try:
            return model_cls.model_validate(data)
        except ValidationError as exc:
            raise CivitaiResponseValidationError(
                f"{what} does not have the expected shape: {validation_reason(exc)}"
            ) from exc

    # -- models ------------------------------------------------------------------------------

    def list_models_raw(
        self, filters: ModelFilters, cursor: str | None = None
    ) -> tuple[list[Any], str | None]:
        """One page of `GET /api/v1/models` as parsed JSON items plus the next cursor.

        Only the envelope is checked here; `validate_model_items` checks the items. Splitting
        the two lets a caller fetch the next page while it validates this one.
        """
        data = self._json(self._list_models_request(filters, cursor))
        items = data.get("items") if isinstance(data, dict) else None
        if not isinstance(items, list):
            raise CivitaiResponseValidationError("list page has no items list")
        return items, cursor_of_metadata(data.get("metadata"))

    @staticmethod
    def validate_model_items(items: list[Any], next_cursor: str | None) -> Page[Model]:
        """Validate list items one by one; those that fail go to `page.rejected`.

        Validating item by item keeps one hostile or odd model from losing the whole page.
        """
        validate = Model.model_validate
        good: list[Model] = []
        rejected: list[tuple[int, int | None, str]] = []
        for index, item in enumerate(items):
            try:
                good.append(validate(item))
            except ValidationError as exc:
                raw_id = item.get("id") if isinstance(item, dict) else None
                item_id = raw_id if type(raw_id) is int else None
                reason = validation_reason(exc)
                rejected.append((index, item_id, reason))
                log.warning("skipped model item %d (id %s): %s", index, item_id, reason)
        # Items are validated already; model_construct avoids a second pass over them.
        return _ModelPage.model_construct(items=good, next_cursor=next_cursor, rejected=rejected)

    def list_models_page(self, filters: ModelFilters, cursor: str | None = None) -> Page[Model]:
        """One validated page of `GET /api/v1/models`."""
        return self.validate_model_items(*self.list_models_raw(filters, cursor))

    def list_models_body(
        self, filters: ModelFilters, cursor: str | None = None
    ) -> tuple[bytes, str | None]:
        """One page of `GET /api/v1/models` as its raw JSON body plus the next cursor.

        For a caller that parses pages elsewhere (the sync's worker processes, with
        `page_items`): only the cursor is read here (`cursor_of_body`). The body was read
        under the client's cap, so what a worker is handed is bounded too.
        """
        body = self._ok(self._list_models_request(filters, cursor)).content
        return body, cursor_of_body(body)

    def _list_models_request(self, filters: ModelFilters, cursor: str | None) -> httpx.Response:
        params = filters.to_params()
        if cursor is not None:
            params.append(("cursor", cursor))
        return self._request("GET", "/api/v1/models", params=params)

    def iter_raw_model_pages(
        self, filters: ModelFilters, *, start_cursor: str | None = None
    ) -> Iterator[tuple[list[Any], str | None]]:
        """Raw pages (items, next cursor) from `start_cursor` on, following `nextCursor`.

        Empty pages with a cursor are followed (Civitai filters after cutting a page); a
        cursor seen before raises instead of looping forever.
        """
        return self._follow(self.list_models_raw, filters, start_cursor)

    def iter_model_page_bodies(
        self, filters: ModelFilters, *, start_cursor: str | None = None
    ) -> Iterator[tuple[bytes, str | None]]:
        """As `iter_raw_model_pages`, with each page's body unparsed (`list_models_body`)."""
        return self._follow(self.list_models_body, filters, start_cursor)

    @staticmethod
    def _follow(
        fetch: Callable[[ModelFilters, str | None], tuple[PageT, str | None]],
        filters: ModelFilters,
        start_cursor: str | None,
    ) -> Iterator[tuple[PageT, str | None]]:
        cursor = start_cursor
        seen: set[str] = set() if cursor is None else {cursor}
        while True:
            items, next_cursor = fetch(filters, cursor)
            yield items, next_cursor
            if next_cursor is None:
                return
            if next_cursor in seen:
                raise CivitaiResponseValidationError(
                    f"Civitai returned cursor {next_cursor[:80]!r} a second time; "
                    "stopping instead of looping"
                )
            seen.add(next_cursor)
            cursor = next_cursor

    def iter_model_pages(
        self, filters: ModelFilters, *, start_cursor: str | None = None
    ) -> Iterator[Page[Model]]:
        """Validated pages from `start_cursor` on (see `iter_raw_model_pages`)."""
        for items, next_cursor in self.iter_raw_model_pages(filters, start_cursor=start_cursor):
            yield self.validate_model_items(items, next_cursor)

    def iter_models(
        self, filters: ModelFilters, *, start_cursor: str | None = None
    ) -> Iterator[Model]:
        """Every model of the listing, across pages; rejected items are logged and skipped."""
        for page in self.iter_model_pages(filters, start_cursor=start_cursor):
            yield from page.items

    def get_model(self, model_id: int) -> Model:
        """`GET /api/v1/models/{id}`, archived models included."""
        model_id = _check_id(model_id, "model id")
        data = self._json(self._request("GET", f"/api/v1/models/{model_id}"))
        return self._validate(Model, data, f"model {model_id}")

    # -- versions ----------------------------------------------------------------------------

    def get_model_version(self, version_id: int) -> ModelVersion:
        """`GET /api/v1/model-versions/{id}` (the standalone version shape)."""
        version_id = _check_id(version_id, "model version id")
        data = self._json(self._request("GET", f"/api/v1/model-versions/{version_id}"))
        return self._validate(ModelVersion, data, f"model version {version_id}")

    def list_version_images_raw(self, version_id: int, *, limit: int = 100) -> list[dict[str, Any]]:
        """One page of `GET /api/v1/images` for a version, with generation data (``withMeta``)
        and every NSFW level (metadata only: no picture is fetched); at most 200 items."""
        version_id = _check_id(version_id, "model version id")
        params = [
            ("modelVersionId", str(version_id)),
            ("limit", str(max(1, min(limit, 200)))),
            ("nsfw", "X"),
            ("withMeta", "true"),
        ]
        data = self._json(self._request("GET", "/api/v1/images", params=params))
        items = data.get("items") if isinstance(data, dict) else None
        if not isinstance(items, list):
            raise CivitaiResponseValidationError("images page has no items list")
        return [item for item in items if isinstance(item, dict)]

    def get_version_by_hash(self, file_hash: str) -> ModelVersion:
        """The version holding a file with this hash (any of the six types, any case)."""
        normalized = normalize_hash(file_hash)
        data = self._json(self._request("GET", f"/api/v1/model-versions/by-hash/{normalized}"))
        return self._validate(ModelVersion, data, f"version for hash {normalized}")

    def get_versions_by_hashes(self, sha256s: Iterable[str]) -> list[ModelVersion]:
        """Versions for many SHA256 hashes (batches of 100); unknown hashes are left out.

        These POSTs are read-only lookups, so retrying them is as safe as retrying a GET.
        """
        found: list[ModelVersion] = []
        for batch in _batches(_unique_sha256s(sha256s), BY_HASH_BATCH):
            data = self._json(
                self._request("POST", "/api/v1/model-versions/by-hash", json_body=batch)
            )
            found.extend(self._validate_list(ModelVersion, data, "by-hash answer"))
        return found

    def get_version_ids_by_hashes(self, sha256s: Iterable[str]) -> list[HashIdMatch]:
        """Version and model ids for many SHA256 hashes (batches of 10 000); cheap for scans."""
        found: list[HashIdMatch] = []
        for batch in _batches(_unique_sha256s(sha256s), BY_HASH_IDS_BATCH):
            data = self._json(
                self._request("POST", "/api/v1/model-versions/by-hash/ids", json_body=batch)
            )
            found.extend(self._validate_list(HashIdMatch, data, "by-hash/ids answer"))
        return found

    def _validate_list(self, model_cls: type[ApiT], data: Any, what: str) -> list[ApiT]:
        if not isinstance(data, list):
            raise CivitaiResponseValidationError(f"{what} is not a list")
        out: list[ApiT] = []
        for index, item in enumerate(data):
            try:
                out.append(model_cls.model_validate(item))
            except ValidationError as exc:
                log.warning("skipped %s item %d: %s", what, index, validation_reason(exc))
        return out

    # -- downloads ---------------------------------------------------------------------------

    def resolve_download(
        self,
        version_id: int,
        *,
        file_id: int | None = None,
        params: Mapping[str, str | int | None] | None = None,
    ) -> DownloadTicket:
        """Ask Civitai where a file lives, without following the redirect to storage.

        The storage host must be fetched without our Authorization header (B2 rejects foreign
        ones), so the caller GETs `ticket.url` with its own client. `params` are the per-file
        ``type``/``format``/``size``/``fp`` selectors of a file's `downloadUrl`.
        """
        version_id = _check_id(version_id, "model version id")
        query = [
            (key, str(value))
            for key, value in (params or {}).items()
            if value is not None and key.lower() != "token"
        ]
        if file_id is not None:
            query.append(("fileId", str(_check_id(file_id, "file id"))))
        response = self._request(
            "GET", f"/api/download/models/{version_id}", params=query, follow_redirects=False
        )
        status = response.status_code
        if status in _REDIRECT_STATUSES:
            return self._ticket(response, version_id, file_id)
        if status >= 400:
            raise self._error(response)
        raise CivitaiResponseValidationError(
            f"expected a redirect to the file of version {version_id}, got HTTP {status}"
        )

    def _ticket(
        self, response: httpx.Response, version_id: int, file_id: int | None
    ) -> DownloadTicket:
        request_url = response.request.url
        shown = redact_url(request_url)
        location = response.headers.get("location", "").strip()
        if not location:
            raise CivitaiResponseValidationError(
                f"redirect without a Location for version {version_id}"
            )
        scheme = urlsplit(location).scheme.lower()
        if scheme:
            if scheme not in ("http", "https"):
                raise CivitaiResponseValidationError(
                    f"download redirect to a {scheme}: URL for version {version_id}"
                )
            target_text = location  # verbatim: re-encoding could break the URL's signature
        else:
            target_text = str(request_url.join(location))
        target = httpx.URL(target_text)
        fields: dict[str, Any] = {"status_code": response.status_code, "url": str(request_url)}

        # Browser-style answers (if Civitai ever takes us for a browser): login page or
        # the version page instead of JSON errors.
        if "reason=download-auth" in location:
            raise LoginRequiredError(
                f"version {version_id} needs a logged-in user to download (redirected to login),"
                f" GET {shown}",
                **fields,
            )
        same_origin = (target.scheme, target.host, target.port) == (
            request_url.scheme,
            request_url.host,
            request_url.port,
        )
        if same_origin and _EARLY_ACCESS_PATH_RE.fullmatch(target.path):
            raise EarlyAccessError(
                f"version {version_id} is in early access (redirected to its page), GET {shown}",
                **fields,
            )
        ticket = DownloadTicket(
            version_id=version_id,
            url=target_text,
            filename=filename_from_location(target),
            file_id=file_id,
        )
        log.debug("version %d resolves to %s", version_id, ticket.redacted_url)
        return ticket


__all__ = [
    "DEFAULT_BASE_URL",
    "DEFAULT_USER_AGENT",
    "HASH_LENGTHS",
    "CivitaiClient",
    "DownloadTicket",
    "ModelFilters",
    "normalize_hash",
]
