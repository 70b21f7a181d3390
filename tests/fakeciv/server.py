"""`FakeCivitai`: a real HTTP server on 127.0.0.1 that answers like civitai.com.

Two servers, two origins: the API (``fake.base_url``) and a storage host (``fake.storage_url``)
that the download endpoint redirects to with a signed, expiring URL, as Civitai does with B2/R2::

    with FakeCivitai(FakeCatalog.generate(500), api_keys={"secret-key"}) as fake:
        httpx.get(f"{fake.base_url}/api/v1/models", params={"limit": 50})

API (doc sections 1, 2, 4, 5, 6): ``GET /api/v1/models`` (cursor pagination, filters, ``page``
as a no-op, 400/401/429 rules), ``GET /api/v1/models/{id}``, ``GET /api/v1/model-versions/{id}``,
``GET /api/v1/model-versions/by-hash/{hash}``, ``POST /api/v1/model-versions/by-hash``,
``POST /api/v1/model-versions/by-hash/ids``, ``GET /api/v1/images`` (simple),
``GET /api/v1/enums``, ``GET /api/v1/me`` and ``GET|HEAD /api/download/models/{versionId}``
(decision order of doc 5; browser User-Agents get plain text and login redirects).

Storage: ``GET|HEAD /file/...?Authorization=<signed token>`` serves the file's bytes (sendfile
for path-backed files) with ``Content-Length``, ``Accept-Ranges``, ``ETag``, ``Last-Modified``
and ``Content-Disposition``; ``Range: bytes=N-`` / ``N-M`` / ``-N`` gives 206, ``If-Range``
that does not match the ETag gives the full 200, an unsatisfiable range 416. Expired or forged
tokens and any ``Authorization`` header get 403 (B2 behaviour). ``/img/...`` serves a tiny
PNG when ``serve_images=True`` (image URLs are then rewritten to the storage origin); with
``images=FakeImages()`` image URLs point at the API origin instead, which serves real
pictures and hostile ones (`tests.fakeciv.images`).

Knobs (attributes, changeable while running):

* ``api_keys`` (set): valid keys, via ``Authorization: Bearer <key>`` or ``?token=``;
* ``url_ttl`` (seconds) of signed storage URLs; ``advance_clock(s)`` moves the fake's clock so
  expiry is testable without sleeping;
* ``unauthenticated_download`` (bool): False makes every download need a key;
* ``download_limit`` (int | None): successful redirects before the quota 429;
* ``page_offsets`` (bool): make ``page`` really offset (the real API ignores it);
* ``faults`` / ``storage_faults``: `tests.fakeciv.faults.FaultInjector`;
* ``grant_early_access(key, version_id)``: that key may download an early-access version.

Observability: ``requests`` (every `RecordedRequest` of both servers, with headers and final
status), ``api_requests`` / ``storage_requests``, ``count(path)`` / ``count_prefix(prefix)``,
``downloads`` (Counter of version ids redirected), ``errors`` (tracebacks of handler crashes,
which a healthy test keeps empty), ``reset_log()``.
"""

from __future__ import annotations

import bisect
import contextlib
import hashlib
import hmac
import json
import re
import secrets
import socket
import socketserver
import struct
import threading
import time
import traceback
import zlib
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from email.utils import formatdate
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any
from urllib.parse import parse_qsl, quote, urlsplit

from tests.fakeciv import hostile, shapes
from tests.fakeciv.data import (
    COMMERCIAL_USES,
    DEFAULT_FILE_PREFS,
    FILE_FORMATS,
    FILE_TYPES,
    FIXTURES_DIR,
    MODEL_TYPES,
    SORTS,
    FakeCatalog,
    FakeFile,
    FakeImage,
    FakeModel,
    FakeVersion,
    iso,
    parse_iso_ms,
    pick_primary,
)
from tests.fakeciv.faults import FaultInjector
from tests.fakeciv.images import FakeImages
from tests.fakeciv.shapes import RenderContext, encode_json

PUBLIC_CACHE = "public, s-maxage=300, stale-while-revalidate=150"
HASH_CACHE = "public, s-maxage=3600, stale-while-revalidate=1800"
NO_STORE = "no-store, max-age=0"
LOGIN_REQUIRED = "The creator of this asset requires you to be logged in to download it"
PERIODS = ("AllTime", "Year", "Month", "Week", "Day")
_BROWSER_UA = re.compile(r"mozilla|chrome|safari|firefox|opera|edge", re.IGNORECASE)
_HEX64 = re.compile(r"^[0-9a-fA-F]{64}$")
_QS_SAFE = "-_.!~*'()"
_CHUNK = 1 << 20


@dataclass(slots=True)
class RecordedRequest:
    """One request as a server saw it."""

    server: str
    """``"api"`` or ``"storage"``."""
    method: str
    path: str
    query: str
    headers: dict[str, str]
    """Lower-cased names; repeated headers joined with ``", "``."""
    time: float
    status: int | None = None
    """Final status; None when the connection was dropped without a response."""
    fault: str | None = None

    @property
    def params(self) -> list[tuple[str, str]]:
        return parse_qsl(self.query, keep_blank_values=True)


@dataclass(slots=True)
class _Session:
    key: str | None


@dataclass
class _Reply:
    status: int
    body: bytes = b""
    headers: list[tuple[str, str | bytes]] = field(default_factory=list)
    content_type: str | None = "application/json; charset=utf-8"


def _json(status: int, obj: Any, *headers: tuple[str, str]) -> _Reply:
    return _Reply(status, encode_json(obj), list(headers))


def _zod(issues: list[dict[str, Any]]) -> _Reply:
    message = json.dumps(issues, indent=2, ensure_ascii=False)
    return _json(400, {"error": {"name": "ZodError", "message": message}})


def _issue_enum(path: list[Any], values: Iterable[str]) -> dict[str, Any]:
    values = list(values)
    return {
        "code": "invalid_value",
        "values": values,
        "path": path,
        "message": "Invalid option: expected one of " + "|".join(json.dumps(v) for v in values),
    }


def _issue_number(
    path: list[Any], raw: str, minimum: int | None, maximum: int | None
) -> dict[str, Any] | None:
    try:
        value = float(raw) if raw.strip() else float("nan")
    except ValueError:
        value = float("nan")
    if value != value or not value.is_integer():
        return {
            "expected": "int" if value == value else "number",
            "code": "invalid_type",
            "path": path,
            "message": "Invalid input: expected int, received number"
            if value == value
            else "Invalid input: expected number, received NaN",
        }
    if maximum is not None and value > maximum:
        return {
            "origin": "number",
            "code": "too_big",
            "maximum": maximum,
            "inclusive": True,
            "path": path,
            "message": f"Too big: expected number to be <={maximum}",
        }
    if minimum is not None and value < minimum:
        return {
            "origin": "number",
            "code": "too_small",
            "minimum": minimum,
            "inclusive": True,
            "path": path,
            "message": f"Too small: expected number to be >={minimum}",
        }
    return None


def _qs(params: list[tuple[str, list[str]]]) -> str:
    return "&".join(
        f"{quote(k, safe=_QS_SAFE)}={quote(v, safe=_QS_SAFE)}" for k, vs in params for v in vs
    )


def _grouped(pairs: list[tuple[str, str]]) -> list[tuple[str, list[str]]]:
    """Query pairs grouped by key in first-seen order (how a JS object holds a parsed query)."""
    out: dict[str, list[str]] = {}
    for k, v in pairs:
        out.setdefault(k, []).append(v)
    return list(out.items())


_PNG_CACHE: dict[tuple[int, int], bytes] = {}


def tiny_png(seed: int = 0) -> bytes:
    """A valid 8x8 solid-colour PNG (a preview image for `serve_images`)."""
    key = (seed % 256, 8)
    if key not in _PNG_CACHE:
        r, g, b = seed % 256, (seed * 7) % 256, (seed * 13) % 256
        raw = b"".join(b"\x00" + bytes((r, g, b)) * 8 for _ in range(8))

        def chunk(tag: bytes, data: bytes) -> bytes:
            return (
                struct.pack(">I", len(data))
                + tag
                + data
                + struct.pack(">I", zlib.crc32(tag + data))
            )

        _PNG_CACHE[key] = (
            b"\x89PNG\r\n\x1a\n"
            + chunk(b"IHDR", struct.pack(">IIBBBBB", 8, 8, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw))
            + chunk(b"IEND", b"")
        )
    return _PNG_CACHE[key]


class _Server(HTTPServer):
    """A threading HTTP server that tracks its connections so `stop()` can end them."""

    request_queue_size = 256  # many parallel clients connect at once in benchmarks
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], fake: FakeCivitai, kind: str) -> None:
        self.fake = fake
        self.kind = kind
        self._conns: dict[socket.socket, threading.Thread] = {}
        self._conns_lock = threading.Lock()
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind does a reverse DNS lookup (getfqdn), slow without DNS.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name, self.server_port = str(host), int(port)

    def process_request(self, request: Any, client_address: Any) -> None:
        t = threading.Thread(
            target=self._run_request,
            args=(request, client_address),
            daemon=True,
            name=f"fakeciv-{self.kind}-conn",
        )
        with self._conns_lock:
            self._conns[request] = t
        t.start()

    def _run_request(self, request: Any, client_address: Any) -> None:
        try:
            self.finish_request(request, client_address)
        except Exception:
            pass  # a broken client connection must not kill the server
        finally:
            with self._conns_lock:
                self._conns.pop(request, None)
            self.shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # connection errors are expected (dropped clients, injected faults)

    def close_connections(self, timeout: float = 5.0) -> None:
        with self._conns_lock:
            conns = list(self._conns.items())
        for sock, _ in conns:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        deadline = time.monotonic() + timeout
        for _, thread in conns:
            thread.join(max(0.0, deadline - time.monotonic()))


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "fakeciv/1.0"
    sys_version = ""
    timeout = 60
    server: _Server

    def setup(self) -> None:
        super().setup()
        # Without TCP_NODELAY, header and body writes meet Nagle + delayed ACK: 40 ms a request.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # the request log replaces stderr logging

    def do_GET(self) -> None:
        self._dispatch()

    do_HEAD = do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_GET

    # ------------------------------------------------------------------ plumbing

    def _dispatch(self) -> None:
        fake = self.server.fake
        split = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length > 0 else b""
        rec = fake._record(
            self.server.kind, self.command, split.path, split.query, self.headers.items()
        )
        self._rec = rec
        self._truncate = False
        self._head_sent = False
        faults = fake.faults if self.server.kind == "api" else fake.storage_faults
        fate = faults.decide(split.path)
        if fate != "ok":
            rec.fault = fate
            if self._fault(fate):
                return
        try:
            if self.server.kind == "api":
                reply = fake._handle_api(self, split.path, split.query, body)
            else:
                reply = fake._handle_storage(self, split.path, split.query)
            if reply is not None:
                self._send(reply)
        except (ConnectionError, TimeoutError):
            self.close_connection = True
        except Exception:
            # A bug in the fake: record it for the test, answer 500 if still possible.
            fake.errors.append(traceback.format_exc())
            if self._head_sent:
                self._abort()
            else:
                with contextlib.suppress(OSError):
                    self._send(
                        _json(
                            500,
                            {"message": "An unexpected error occurred", "error": "fake crashed"},
                        )
                    )

    def _fault(self, fate: str) -> bool:
        """Serve an injected fault; False when the request should go on normally."""
        if fate.startswith("delay:"):
            time.sleep(float(fate.split(":", 1)[1]))
            return False
        fake = self.server.fake
        faults = fake.faults if self.server.kind == "api" else fake.storage_faults
        if fate == "hold":
            faults.wait_at_gate()
            return False
        if fate == "truncate":
            self._truncate = True
            return False
        if fate in ("gzipbomb", "endless", "endless_eof") or fate.startswith("length:"):
            hostile.serve(self, fate, faults)
            return True
        if fate.startswith("redirect:"):
            location = fate.split(":", 1)[1]
            self._send(_Reply(302, b"", [("Location", location)], content_type=None))
            return True
        if fate == "drop":
            self.close_connection = True
            return True
        if fate == "reset":
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.setsockopt(
                    socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                )
                self.connection.close()
            return True
        retry_after = faults.retry_after
        replies = {
            "503": _json(
                503,
                {"error": "Model search is temporarily overloaded — please retry."},
                ("Retry-After", retry_after),
                ("Cache-Control", "no-store"),
            ),
            "429": _json(429, {"error": "Too Many Requests"}),
            "429html": _Reply(
                429,
                b"<!DOCTYPE html><html><head><title>Just a moment...</title></head>"
                b"<body>Error 1015: You are being rate limited.</body></html>",
                content_type="text/html; charset=UTF-8",
            ),
            "500": _json(
                500, {"message": "An unexpected error occurred", "error": "Injected failure"}
            ),
            "badjson": _Reply(
                200, b"<html><body>Bad gateway</body></html>", content_type="text/html"
            ),
            "403": _json(403, {"error": "Forbidden"}),
            "404": _json(404, {"error": "Not found"}),
        }
        self._send(replies[fate])
        return True

    def _head(self, status: int, headers: list[tuple[str, str | bytes]]) -> bytes:
        try:
            reason = HTTPStatus(status).phrase
        except ValueError:
            reason = "Unknown"
        lines = [f"HTTP/1.1 {status} {reason}\r\n".encode()]
        base: list[tuple[str, str | bytes]] = [
            ("Server", self.server_version),
            ("Date", formatdate(usegmt=True)),
        ]
        for name, value in base + headers:
            raw = value if isinstance(value, bytes) else value.encode("utf-8")
            lines.append(name.encode("ascii") + b": " + raw + b"\r\n")
        if self.close_connection:
            lines.append(b"Connection: close\r\n")
        lines.append(b"\r\n")
        self._head_sent = True
        self._rec.status = status
        return b"".join(lines)

    def _write_head(self, status: int, headers: list[tuple[str, str | bytes]]) -> None:
        self.wfile.write(self._head(status, headers))

    def _send(self, reply: _Reply) -> None:
        headers = list(reply.headers)
        if reply.content_type:
            headers.append(("Content-Type", reply.content_type))
        headers.append(("Content-Length", str(len(reply.body))))
        head = self._head(reply.status, headers)
        if self.command == "HEAD":
            self.wfile.write(head)
        elif self._truncate:
            self.wfile.write(head + reply.body[: len(reply.body) // 2])
            self._abort()
        else:
            self.wfile.write(head + reply.body)  # one write: one packet train, no stall

    def _abort(self) -> None:
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)

    def session(self, params: list[tuple[str, str]]) -> _Session:
        """The API key in use, if valid: the Authorization header wins over ``?token=``."""
        auth = self.headers.get("Authorization")
        if auth is not None:
            parts = auth.split(" ")
            key = parts[1] if len(parts) > 1 else None
        else:
            key = next((v for k, v in params if k == "token"), None)
        return _Session(key if key is not None and key in self.server.fake.api_keys else None)

    @property
    def is_browser(self) -> bool:
        return bool(_BROWSER_UA.search(self.headers.get("User-Agent") or ""))

    # ------------------------------------------------------------------ storage body

    def send_file(
        self,
        f: FakeFile,
        status: int,
        headers: list[tuple[str, str | bytes]],
        start: int,
        length: int,
    ) -> None:
        headers = [*headers, ("Content-Length", str(length))]
        self._write_head(status, headers)
        if self.command == "HEAD" or length == 0:
            return
        faults = self.server.fake.storage_faults
        budget = faults.take_cut()
        if self._truncate:
            budget = length // 2 if budget is None else min(budget, length // 2)
        n = length if budget is None else min(length, budget)
        rate = faults.bytes_per_second
        if f.path is not None and rate is None:
            with open(f.path, "rb") as fh:
                sent = 0
                while sent < n:
                    # socket.sendfile() uses os.sendfile (zero-copy) and copes with the timeout.
                    done = self.connection.sendfile(fh, start + sent, n - sent)
                    if done <= 0:
                        break
                    sent += done
        else:
            self._send_paced(f, start, n, rate)
        if n < length:
            self._abort()

    def _send_paced(self, f: FakeFile, start: int, n: int, rate: float | None) -> None:
        chunk = _CHUNK if rate is None else max(1, int(rate / 20))
        fh = open(f.path, "rb") if f.path is not None else None
        try:
            view = memoryview(f.content) if f.content is not None else None
            pos, end = start, start + n
            t0 = time.monotonic()
            while pos < end:
                size = min(chunk, end - pos)
                if view is not None:
                    block: bytes | memoryview = view[pos : pos + size]
                else:
                    assert fh is not None
                    fh.seek(pos)
                    block = fh.read(size)
                self.connection.sendall(block)
                pos += size
                if rate:
                    ahead = (pos - start) / rate - (time.monotonic() - t0)
                    if ahead > 0:
                        time.sleep(ahead)
        finally:
            if fh is not None:
                fh.close()


class FakeCivitai:
    """The fake civitai.com: an API server and a storage server on 127.0.0.1.

    Args:
        catalog: what to serve; default: the fixture models plus 20 generated ones.
        api_keys: valid API keys.
        url_ttl: lifetime of signed storage URLs, seconds.
        host, port, storage_port: where to listen (port 0: any free port).
        serve_images: rewrite image URLs to the storage origin and serve tiny PNGs there.
        images: serve real and hostile pictures from the API origin (`FakeImages`); gives
            every image of the catalog a real BlurHash.
        unauthenticated_download: False: every download needs a key (Civitai's global switch).
        download_limit: successful download redirects before the quota 429 (None: no limit).
        page_offsets: make ``page`` offset results (the real API ignores it).
        record_requests: keep the request log (counters are always kept).
    """

    def __init__(
        self,
        catalog: FakeCatalog | None = None,
        *,
        api_keys: Iterable[str] = (),
        url_ttl: float = 3600.0,
        host: str = "127.0.0.1",
        port: int = 0,
        storage_port: int = 0,
        serve_images: bool = False,
        images: FakeImages | None = None,
        unauthenticated_download: bool = True,
        download_limit: int | None = None,
        page_offsets: bool = False,
        record_requests: bool = True,
    ) -> None:
        self.catalog = (
            catalog if catalog is not None else FakeCatalog.generate(20, include_fixtures=True)
        )
        self.api_keys: set[str] = set(api_keys)
        self.url_ttl = url_ttl
        self.serve_images = serve_images
        self.images = images.attach(self.catalog) if images is not None else None
        self.unauthenticated_download = unauthenticated_download
        self.download_limit = download_limit
        self.page_offsets = page_offsets
        self.record_requests = record_requests
        self.faults = FaultInjector()
        """Faults for the API server."""
        self.storage_faults = FaultInjector()
        """Faults for the storage server (plus `cut_body_after`, `throttle`)."""
        self.requests: list[RecordedRequest] = []
        self.counts: Counter[tuple[str, str]] = Counter()
        """(server, path) -> number of requests."""
        self.downloads: Counter[int] = Counter()
        """version id -> successful download redirects."""
        self.errors: list[str] = []
        """Tracebacks of requests the fake itself failed on (should stay empty)."""
        self.early_access_grants: set[tuple[str, int]] = set()
        self._clock_offset = 0.0
        self._secret = secrets.token_bytes(32)
        self._log_lock = threading.Lock()
        self._host, self._port, self._storage_port = host, port, storage_port
        self._api: _Server | None = None
        self._storage: _Server | None = None
        self._threads: list[threading.Thread] = []

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> FakeCivitai:
        """Bind both servers and serve in background threads."""
        if self._api is not None:
            return self
        self._api = _Server((self._host, self._port), self, "api")
        try:
            self._storage = _Server((self._host, self._storage_port), self, "storage")
        except OSError:
            self._api.server_close()
            self._api = None
            raise
        for srv in (self._api, self._storage):
            t = threading.Thread(
                target=srv.serve_forever,
                kwargs={"poll_interval": 0.05},
                daemon=True,
                name=f"fakeciv-{srv.kind}",
            )
            t.start()
            self._threads.append(t)
        return self

    def stop(self) -> None:
        """Stop serving, end open connections, release the ports."""
        for srv in (self._api, self._storage):
            if srv is not None:
                srv.shutdown()
        for srv in (self._api, self._storage):
            if srv is not None:
                srv.close_connections()
                srv.server_close()
        for t in self._threads:
            t.join(5)
        self._threads.clear()
        self._api = self._storage = None

    def __enter__(self) -> FakeCivitai:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        """API origin, e.g. ``http://127.0.0.1:41234``."""
        assert self._api is not None, "FakeCivitai is not started"
        return f"http://{self._api.server_name}:{self._api.server_port}"

    @property
    def storage_url(self) -> str:
        """Storage origin (a different port, so the download redirect is cross-origin)."""
        assert self._storage is not None, "FakeCivitai is not started"
        return f"http://{self._storage.server_name}:{self._storage.server_port}"

    # ------------------------------------------------------------------ knobs and logs

    def now(self) -> float:
        """The fake's clock (epoch seconds), see `advance_clock`."""
        return time.time() + self._clock_offset

    def advance_clock(self, seconds: float) -> None:
        """Move the fake's clock forward, e.g. past `url_ttl` to expire issued storage URLs."""
        self._clock_offset += seconds

    def grant_early_access(self, api_key: str, version_id: int) -> None:
        self.early_access_grants.add((api_key, version_id))

    def reset_log(self) -> None:
        """Forget recorded requests, counters, downloads and errors."""
        with self._log_lock:
            self.requests.clear()
            self.counts.clear()
            self.downloads.clear()
            self.errors.clear()

    @property
    def api_requests(self) -> list[RecordedRequest]:
        with self._log_lock:
            return [r for r in self.requests if r.server == "api"]

    @property
    def storage_requests(self) -> list[RecordedRequest]:
        with self._log_lock:
            return [r for r in self.requests if r.server == "storage"]

    def count(self, path: str, *, server: str = "api") -> int:
        """Requests seen for exactly this path (no query), e.g. ``"/api/v1/models"``."""
        with self._log_lock:
            return self.counts[(server, path)]

    def count_prefix(self, prefix: str, *, server: str = "api") -> int:
        with self._log_lock:
            return sum(
                n for (s, p), n in self.counts.items() if s == server and p.startswith(prefix)
            )

    def _record(
        self, server: str, method: str, path: str, query: str, headers: Iterable[tuple[str, str]]
    ) -> RecordedRequest:
        merged: dict[str, str] = {}
        for k, v in headers:
            k = k.lower()
            merged[k] = f"{merged[k]}, {v}" if k in merged else v
        rec = RecordedRequest(server, method, path, query, merged, time.time())
        with self._log_lock:
            self.counts[(server, path)] += 1
            if self.record_requests:
                self.requests.append(rec)
        return rec

    # ------------------------------------------------------------------ signed URLs

    def _sign(self, file_id: int, expires_ms: int) -> str:
        mac = hmac.new(
            self._secret, f"{file_id}_{expires_ms}".encode(), hashlib.sha256
        ).hexdigest()[:32]
        return f"4_{file_id}_{expires_ms}_{mac}_dnld"

    def _verify(self, token: str) -> tuple[int, int] | None:
        parts = token.split("_")
        if len(parts) != 5 or not parts[1].isdigit() or not parts[2].isdigit():
            return None
        file_id, expires_ms = int(parts[1]), int(parts[2])
        if not hmac.compare_digest(self._sign(file_id, expires_ms), token):
            return None
        return file_id, expires_ms

    def signed_url(self, f: FakeFile, user_id: int = 0) -> str:
        """A storage URL for `f`, valid for `url_ttl` from the fake's now."""
        expires_ms = int((self.now() + self.url_ttl) * 1000)
        disposition = f'attachment; filename="{f.disposition_name or f.display_name}"'
        return (
            f"{self.storage_url}/file/modelfiles/{user_id}/model/{f.id}/"
            f"{quote(f.display_name, safe='')}?Authorization={self._sign(f.id, expires_ms)}"
            f"&b2ContentDisposition={quote(disposition, safe='')}"
        )

    def _ctx(self, *, nsfw: bool = True, primary_only: bool = False) -> RenderContext:
        return RenderContext(
            base_url=self.base_url,
            image_prefix=(
                f"{self.base_url}/img/"
                if self.images is not None
                else f"{self.storage_url}/img/"
                if self.serve_images
                else None
            ),
            nsfw=nsfw,
            primary_only=primary_only,
        )

    # ------------------------------------------------------------------ API routing

    def _handle_api(self, h: _Handler, path: str, query: str, body: bytes) -> _Reply | None:
        params = parse_qsl(query, keep_blank_values=True)
        session = h.session(params)
        method = h.command
        if len(path) > 1 and path.endswith("/"):
            return _Reply(
                308,
                path.rstrip("/").encode(),
                [("Location", path.rstrip("/") + (f"?{query}" if query else ""))],
                content_type="text/plain",
            )
        cat = self.catalog
        if path == "/api/v1/models":
            if method not in ("GET", "HEAD"):
                return _json(405, {"error": "Method not allowed"})
            with cat.lock:
                return self._models(path, params, session)
        if m := re.fullmatch(r"/api/v1/models/([^/]+)", path):
            with cat.lock:
                return self._model(m.group(1))
        if path == "/api/v1/model-versions/by-hash/ids":
            if method != "POST":
                return _json(404, {"error": "Model not found"})
            with cat.lock:
                return self._by_hash_post(body, ids_only=True)
        if path == "/api/v1/model-versions/by-hash":
            with cat.lock:
                return self._by_hash_post(body, ids_only=False)
        if m := re.fullmatch(r"/api/v1/model-versions/by-hash/([^/]+)", path):
            with cat.lock:
                return self._by_hash_get(m.group(1))
        if m := re.fullmatch(r"/api/v1/model-versions/([^/]+)", path):
            if method not in ("GET", "HEAD"):
                return _json(405, {"error": "Method not allowed"})
            with cat.lock:
                return self._version(m.group(1), session)
        if path == "/api/v1/images":
            with cat.lock:
                return self._images(path, params)
        if path == "/api/v1/enums":
            return _Reply(
                200, (FIXTURES_DIR / "enums.json").read_bytes(), [("Cache-Control", PUBLIC_CACHE)]
            )
        if path == "/api/v1/me":
            if session.key is None:
                return _json(401, {"error": "Unauthorized"})
            return _json(
                200, {"id": 1, "username": "fakeciv_user", "tier": None, "status": "active"}
            )
        if m := re.fullmatch(r"/api/download/models/([^/]+)", path):
            with cat.lock:
                return self._download(h, m.group(1), params, session)
        if self.images is not None and path.startswith("/img/"):
            return self._image(h, path, query, "api")
        return _Reply(
            404,
            b"<!DOCTYPE html><html><body><h1>404</h1>This page could not be found.</body></html>",
            content_type="text/html; charset=utf-8",
        )

    # ------------------------------------------------------------------ /models

    def _models(self, path: str, params: list[tuple[str, str]], session: _Session) -> _Reply:
        cat = self.catalog
        q: dict[str, list[str]] = dict(_grouped(params))

        def one(key: str) -> str | None:
            values = q.get(key)
            return values[-1] if values else None

        if ("favorites" in q or "hidden" in q) and session.key is None:
            return _json(401, {"error": "Unauthorized"})
        issues: list[dict[str, Any]] = []
        limit, page = 100, None
        if (raw := one("limit")) is not None:
            if issue := _issue_number(["limit"], raw, 0, 100):
                issues.append(issue)
            else:
                limit = int(float(raw))
        if (raw := one("page")) is not None:
            if issue := _issue_number(["page"], raw, 1, None):
                issues.append(issue)
            else:
                page = int(float(raw))
        types = q.get("types", [])
        for i, t in enumerate(types):
            if t not in MODEL_TYPES:
                issues.append(_issue_enum(["types", i], MODEL_TYPES))
        sort = one("sort") or "Highest Rated"
        if sort not in SORTS:
            issues.append(_issue_enum(["sort"], SORTS))
        if (period := one("period")) is not None and period not in PERIODS:
            issues.append(_issue_enum(["period"], PERIODS))
        if (ckpt := one("checkpointType")) is not None and ckpt not in ("Trained", "Merge"):
            issues.append(_issue_enum(["checkpointType"], ("Trained", "Merge")))
        uses = q.get("allowCommercialUse", [])
        for i, u in enumerate(uses):
            if u not in COMMERCIAL_USES:
                issues.append(_issue_enum(["allowCommercialUse", i], COMMERCIAL_USES))
        for key in ("allowNoCredit", "allowDerivatives", "allowDifferentLicense"):
            if key in q:  # z.boolean() without coercion: a query string never passes
                issues.append(
                    {
                        "expected": "boolean",
                        "code": "invalid_type",
                        "path": [key],
                        "message": "Invalid input: expected boolean, received string",
                    }
                )
        flags: dict[str, bool] = {}
        for key in ("nsfw", "primaryFileOnly", "favorites", "hidden"):
            if (raw := one(key)) is not None:
                if raw not in ("true", "false"):
                    issues.append(_issue_enum([key], ("true", "false")))
                flags[key] = raw == "true"
        ids: set[int] | None = None
        if (raw := one("ids")) is not None:
            try:
                ids = {int(x) for x in raw.split(",") if x.strip()}
            except ValueError:
                issues.append(
                    {
                        "expected": "number",
                        "code": "invalid_type",
                        "path": ["ids", 0],
                        "message": "Invalid input: expected number, received NaN",
                    }
                )
        if issues:
            return _zod(issues)
        query = (one("query") or "").strip().lower() or None
        if query is not None and page is not None:
            return _json(
                400,
                {"error": "Cannot use page param with query search. Use cursor-based pagination."},
            )
        if page is not None and page * limit > 1000:
            return _json(
                429, {"error": "You've requested too many pages, please use cursors instead"}
            )
        nsfw = flags.get("nsfw", False)
        base_models = set(q.get("baseModels", []))
        tag = (one("tag") or "").lower() or None
        username = (one("username") or "").lower() or None
        type_set = set(types)
        use_set = set(uses)
        favorites = flags.get("favorites", False)
        supports_gen = bool(one("supportsGeneration"))  # z.coerce.boolean: any non-empty string
        early_access = bool(one("earlyAccess"))
        if query is not None:
            ids = None  # ignored with a search

        def visible(m: FakeModel) -> list[FakeVersion] | None:
            if m.status != "Published" or m.mode == "Archived":
                return None
            if not nsfw and not m.nsfw_level & 1:
                return None
            if type_set and m.type not in type_set:
                return None
            if ids is not None and m.id not in ids:
                return None
            if tag and tag not in (t.lower() for t in m.tags):
                return None
            if username and (m.creator or {}).get("username", "civitai").lower() != username:
                return None
            if favorites and m.id not in cat.favorites:
                return None
            if ckpt and m.checkpoint_type != ckpt:
                return None
            if use_set and not use_set & set(m.allow_commercial_use):
                return None
            if query and not (
                query in m.name.lower()
                or any(query in t.lower() for t in m.tags)
                or query in (m.creator or {}).get("username", "").lower()
            ):
                return None
            versions = cat.listable_versions(m)
            if base_models:
                versions = [v for v in versions if v.base_model in base_models]
            if supports_gen and not any(v.supports_generation for v in versions):
                return None
            if early_access and not any(v.early_access_deadline for v in versions):
                return None
            return versions or None

        models, keys = cat.sorted_models(sort)
        key_fn, descending = SORTS[sort]
        cursor = one("cursor")
        start, skip = 0, 0
        if query is not None:
            if cursor is not None:
                if not cursor.isdigit():
                    return _zod(
                        [
                            {
                                "expected": "number",
                                "code": "invalid_type",
                                "path": ["cursor"],
                                "message": "Invalid input: expected number, received NaN",
                            }
                        ]
                    )
                skip = int(cursor)
        elif cursor is not None:
            parsed = self._parse_cursor(cursor, len(keys[0])) if keys else ()
            if parsed is None:
                return _zod([{"code": "custom", "path": ["cursor"], "message": "Invalid cursor"}])
            if keys:
                start = bisect.bisect_left(
                    keys, tuple(-x for x in parsed) if descending else parsed
                )
        elif page is not None and self.page_offsets:
            skip = (page - 1) * limit
        rows: list[tuple[FakeModel, list[FakeVersion]]] = []
        for m in models[start:]:
            versions = visible(m)
            if versions is None:
                continue
            if skip:
                skip -= 1
                continue
            rows.append((m, versions))
            if len(rows) > limit:
                break
        next_cursor = None
        if len(rows) > limit:
            extra = rows[limit][0]
            if query is not None:
                next_cursor = str((int(cursor) if cursor else 0) + limit)
            else:
                next_cursor = "|".join(str(x) for x in key_fn(extra))
            rows = rows[:limit]
        ctx = self._ctx(nsfw=nsfw, primary_only=flags.get("primaryFileOnly", False))
        items = [shapes.list_model(cat, m, versions, ctx) for m, versions in rows]
        metadata: dict[str, Any] = {}
        if next_cursor is not None:
            grouped = [(k, vs) for k, vs in _grouped(params)]
            if any(k == "cursor" for k, _ in grouped):
                grouped = [(k, [next_cursor] if k == "cursor" else vs) for k, vs in grouped]
            else:
                grouped.append(("cursor", [next_cursor]))
            metadata["nextCursor"] = next_cursor
            metadata["nextPage"] = f"{self.base_url}{path}?{_qs(grouped)}"
        if page is not None and cursor is None:
            metadata["currentPage"] = page
            metadata["pageSize"] = limit
        headers = [("Access-Control-Allow-Origin", "*")]
        if session.key is None:
            headers.append(("Cache-Control", PUBLIC_CACHE))
        return _json(200, {"items": items, "metadata": metadata}, *headers)

    @staticmethod
    def _parse_cursor(cursor: str, arity: int) -> tuple[int, ...] | None:
        parts = re.split(r"[|:]", cursor)
        if len(parts) != arity:
            return None
        try:
            return tuple(int(p) for p in parts)
        except ValueError:
            return None

    # ------------------------------------------------------------------ single objects

    def _model(self, raw_id: str) -> _Reply:
        if not raw_id.isdigit() or int(raw_id) > 2**31 - 1:
            return _json(
                400, {"error": "✖ Invalid input: expected number, received NaN\n  → at id"}
            )
        m = self.catalog.models.get(int(raw_id))
        if m is None or m.status != "Published":
            return _json(404, {"error": f"No model with id {int(raw_id)}"})
        body = shapes.detail_model(self.catalog, m, self._ctx())
        return _json(
            200, body, ("Cache-Control", PUBLIC_CACHE), ("Access-Control-Allow-Origin", "*")
        )

    def _visible_version(self, version_id: int) -> FakeVersion | None:
        v = self.catalog.versions.get(version_id)
        if v is None or v.status != "Published":
            return None
        m = self.catalog.models.get(v.model_id)
        if m is None or m.status != "Published":
            return None
        return v

    def _version(self, raw_id: str, session: _Session) -> _Reply:
        if not raw_id.isdigit() or int(raw_id) == 0:
            return _json(400, {"error": "Missing modelVersionId"})
        v = self._visible_version(int(raw_id))
        if v is None:
            return _json(404, {"error": "Model not found"})
        if not v.public_files:
            return _json(404, {"error": "Missing model file"})
        headers = [("Access-Control-Allow-Origin", "*")]
        if session.key is None:
            headers.append(("Cache-Control", PUBLIC_CACHE))
        return _json(200, shapes.standalone_version(self.catalog, v, self._ctx()), *headers)

    def _version_for_hash(self, digest: str, *, sha256_only: bool) -> FakeVersion | None:
        best: FakeVersion | None = None
        for f in self.catalog.files_by_hash(digest):
            if sha256_only and f.hashes.get("SHA256", "").upper() != digest.upper():
                continue
            v = self._visible_version(f.version_id)
            if v is None or f.visibility != "Public":
                continue
            # When several files share a hash the oldest published version wins (doc 7).
            if best is None or (v.published_ms, v.id) < (best.published_ms, best.id):
                best = v
        return best

    def _by_hash_get(self, digest: str) -> _Reply:
        v = self._version_for_hash(digest, sha256_only=False)
        if v is None:
            return _json(404, {"error": "Model not found"})
        body = shapes.standalone_version(self.catalog, v, self._ctx(), with_override_name=True)
        return _json(200, body, ("Cache-Control", HASH_CACHE), ("Access-Control-Allow-Origin", "*"))

    def _by_hash_post(self, body: bytes, *, ids_only: bool) -> _Reply:
        maximum = 10_000 if ids_only else 100
        prefix = "Request must include an array of SHA256 Hashes. "
        try:
            hashes = json.loads(body or b"null")
        except ValueError:
            hashes = None
        if not isinstance(hashes, list):
            return _json(
                400,
                {
                    "error": prefix
                    + "✖ Invalid input: expected array, received "
                    + ("null" if hashes is None else type(hashes).__name__)
                },
            )
        if len(hashes) > maximum:
            return _json(
                400, {"error": prefix + f"✖ Too big: expected array to have <={maximum} items"}
            )
        for i, h in enumerate(hashes):
            if not isinstance(h, str) or not _HEX64.match(h):
                return _json(
                    400, {"error": prefix + f"✖ Invalid string: must match pattern\n  → at [{i}]"}
                )
        if ids_only:
            out_ids = []
            for h in hashes:
                v = self._version_for_hash(h, sha256_only=True)
                if v is not None:
                    out_ids.append(
                        {"modelVersionId": v.id, "modelId": v.model_id, "hash": h.upper()}
                    )
            return _json(200, out_ids)
        seen: set[int] = set()
        out = []
        ctx = self._ctx()
        for h in hashes:
            v = self._version_for_hash(h, sha256_only=True)
            if v is not None and v.id not in seen:
                seen.add(v.id)
                out.append(shapes.standalone_version(self.catalog, v, ctx, with_override_name=True))
        return _json(200, out)

    # ------------------------------------------------------------------ /images (simple)

    def _images(self, path: str, params: list[tuple[str, str]]) -> _Reply:
        q = dict(_grouped(params))
        limit = 100
        if "limit" in q:
            if issue := _issue_number(["limit"], q["limit"][-1], 0, 200):
                return _zod([issue])
            limit = int(float(q["limit"][-1]))
        versions: list[FakeVersion] = []
        if "modelVersionId" in q and q["modelVersionId"][-1].isdigit():
            v = self._visible_version(int(q["modelVersionId"][-1]))
            versions = [v] if v is not None else []
        elif "modelId" in q and q["modelId"][-1].isdigit():
            m = self.catalog.models.get(int(q["modelId"][-1]))
            versions = list(m.published_versions) if m is not None else []
        else:
            versions = [v for v in self.catalog.versions.values() if v.status == "Published"]
        nsfw = (q.get("nsfw") or [""])[-1]
        max_level = {"None": 1, "Soft": 3, "Mature": 7, "X": 31, "true": 63}.get(nsfw, 1)
        rows: list[tuple[FakeImage, FakeVersion, FakeModel]] = []
        for v in versions:
            m = self.catalog.models.get(v.model_id)
            if m is None or m.mode == "TakenDown":
                continue
            rows.extend((img, v, m) for img in v.images if img.nsfw_level & max_level)
        rows.sort(key=lambda r: -r[0].id)
        cursor = (q.get("cursor") or [""])[-1]
        if cursor.isdigit():
            rows = [r for r in rows if r[0].id <= int(cursor)]
        with_meta = (q.get("withMeta") or ["false"])[-1] == "true"
        ctx = self._ctx()
        items = []
        names = {1: "None", 2: "Soft", 4: "Mature", 8: "X", 16: "X", 32: "Blocked"}
        for img, v, m in rows[:limit]:
            created = v.published_ms + img.id % 600_000
            items.append(
                {
                    "id": img.id,
                    "url": shapes.image_url(img.url, ctx),
                    "hash": img.hash,
                    "width": img.width,
                    "height": img.height,
                    "nsfwLevel": names.get(img.nsfw_level, "X"),
                    "type": img.type,
                    "nsfw": img.nsfw_level > 1,
                    "browsingLevel": img.nsfw_level,
                    "createdAt": iso(created),
                    "postId": 9_000_000 + img.id % 1_000_000,
                    "stats": {
                        "cryCount": 0,
                        "laughCount": img.id % 3,
                        "likeCount": img.id % 97,
                        "dislikeCount": 0,
                        "heartCount": img.id % 31,
                        "commentCount": img.id % 5,
                    },
                    "meta": img.meta if with_meta else None,
                    "username": (m.creator or {}).get("username", "civitai"),
                    "baseModel": v.base_model,
                    "modelVersionIds": [v.id],
                }
            )
        metadata: dict[str, Any] = {}
        if len(rows) > limit:
            nxt = str(rows[limit][0].id)
            grouped = [(k, vs) for k, vs in _grouped(params) if k != "cursor"] + [("cursor", [nxt])]
            metadata = {"nextCursor": nxt, "nextPage": f"{self.base_url}{path}?{_qs(grouped)}"}
        return _json(200, {"items": items, "metadata": metadata}, ("Cache-Control", PUBLIC_CACHE))

    # ------------------------------------------------------------------ downloads

    def _download(
        self, h: _Handler, raw_id: str, params: list[tuple[str, str]], session: _Session
    ) -> _Reply:
        browser = h.is_browser

        def error(status: int, body: dict[str, Any], cache: str = NO_STORE) -> _Reply:
            if browser:
                text = str(body.get("message") or body.get("error"))
                return _Reply(
                    status,
                    text.encode(),
                    [("Cache-Control", cache)],
                    content_type="text/plain; charset=utf-8",
                )
            return _json(status, body, ("Cache-Control", cache))

        def redirect(location: str) -> _Reply:
            return _Reply(
                307,
                location.encode(),
                [("Location", location), ("Cache-Control", NO_STORE)],
                content_type="text/plain; charset=utf-8",
            )

        if self.download_limit is not None and sum(self.downloads.values()) >= self.download_limit:
            return error(
                429,
                {
                    "error": "We've noticed an unusual amount of downloading from your account. "
                    "Contact support@civitai.com or come back later."
                },
            )
        q = dict(_grouped(params))
        p: dict[str, str] = {k: vs[-1] for k, vs in q.items()}
        issues = []
        if "type" in p and p["type"] not in FILE_TYPES:
            issues.append(_issue_enum(["type"], FILE_TYPES))
        if "format" in p and p["format"] not in FILE_FORMATS:
            issues.append(_issue_enum(["format"], FILE_FORMATS))
        if "size" in p and p["size"] not in ("full", "pruned"):
            issues.append(_issue_enum(["size"], ("full", "pruned")))
        if "fp" in p and len(p["fp"]) > 64:
            issues.append(
                {
                    "origin": "string",
                    "code": "too_big",
                    "maximum": 64,
                    "inclusive": True,
                    "path": ["fp"],
                    "message": "Too big: expected string to have <=64 characters",
                }
            )
        if "fileId" in p and not p["fileId"].isdigit():
            issues.append(
                {
                    "expected": "number",
                    "code": "invalid_type",
                    "path": ["fileId"],
                    "message": "Invalid input: expected number, received NaN",
                }
            )
        if issues or not raw_id.isdigit():
            return _zod(
                issues
                or [
                    {
                        "expected": "number",
                        "code": "invalid_type",
                        "path": ["modelVersionId"],
                        "message": "Invalid input: expected number, received NaN",
                    }
                ]
            )
        not_found = error(404, {"error": "File not found"})
        v = self._visible_version(int(raw_id))
        m = self.catalog.models.get(v.model_id) if v is not None else None
        if v is None or m is None or m.poi or m.mode == "TakenDown":
            return not_found
        f = self._select_file(v, p)
        if f is None:
            return not_found
        if m.mode == "Archived":
            return error(410, {"error": "Model archived, not available for download"})
        if v.usage_control != "Download":
            return error(
                401,
                {
                    "error": "Unauthorized",
                    "message": "The creator of this asset has disabled downloads on this file",
                },
            )
        if (v.require_auth or not self.unauthenticated_download) and session.key is None:
            if browser:
                back = quote(f"/models/{m.id}?modelVersionId={v.id}", safe="")
                return redirect(f"{self.base_url}/login?returnUrl={back}&reason=download-auth")
            return error(401, {"error": "Unauthorized", "message": LOGIN_REQUIRED})
        deadline = v.early_access_deadline
        if deadline and parse_iso_ms(deadline) > self.now() * 1000:
            if session.key is None or (session.key, v.id) not in self.early_access_grants:
                if browser:
                    return redirect(f"{self.base_url}/model-versions/{v.id}")
                return error(
                    403,
                    {
                        "error": "Early Access",
                        "deadline": deadline,
                        "message": "This asset is in Early Access. You can use Buzz access it now!",
                    },
                )
        if not f.has_bytes:
            # Doc 5 step 9: the storage resolver failed (the fake has no bytes for this file).
            return error(404, {"error": "File not found"}, "private, no-store")
        with self._log_lock:
            self.downloads[v.id] += 1
        return redirect(self.signed_url(f, m.user_id))

    def _select_file(self, v: FakeVersion, p: dict[str, str]) -> FakeFile | None:
        cat = self.catalog
        files = cat.version_files(v)
        if "fileId" in p:
            return next((f for f in files if f.id == int(p["fileId"])), None)
        wanted: dict[str, Any] = {k: p[k] for k in ("format", "size", "fp", "quantType") if k in p}
        if "type" in p:
            prefs = {**DEFAULT_FILE_PREFS, **wanted}
            chosen = pick_primary([f for f in files if cat.file_type_in(v, f) == p["type"]], prefs)
        else:
            chosen = v.primary_file()
        if chosen is None:
            return None
        for key, value in wanted.items():
            if str(chosen.metadata.get(key)) != value:
                return None  # the "misalignment" check of doc 5
        return chosen

    # ------------------------------------------------------------------ images

    def _image(self, h: _Handler, path: str, query: str, server: str) -> _Reply | None:
        assert self.images is not None
        served = self.images.serve(self, h, path, query, server)
        if served is None:
            return None
        status, body, headers, content_type = served
        return _Reply(status, body, list(headers), content_type=content_type)

    # ------------------------------------------------------------------ storage

    def _handle_storage(self, h: _Handler, path: str, query: str) -> _Reply | None:
        params = dict(parse_qsl(query, keep_blank_values=True))
        if self.images is not None and path.startswith("/img/"):
            return self._image(h, path, query, "storage")
        if path.startswith("/img/"):
            if not self.serve_images:
                return _json(404, {"code": "not_found", "message": "no such image", "status": 404})
            seed = int(hashlib.sha256(path.encode()).hexdigest()[:4], 16)
            return _Reply(
                200,
                tiny_png(seed),
                [("Cache-Control", "public, max-age=86400")],
                content_type="image/png",
            )
        if not path.startswith("/file/"):
            return _json(404, {"code": "not_found", "message": "File not present", "status": 404})
        if "Authorization" in h.headers:
            # B2 refuses a request that carries a foreign Authorization header (doc 5).
            return _json(
                403,
                {
                    "code": "unauthorized",
                    "status": 403,
                    "message": "Authorization header is not accepted with a download token",
                },
            )
        checked = self._verify(params.get("Authorization", ""))
        if checked is None:
            return _json(
                403, {"code": "access_denied", "message": "bad download token", "status": 403}
            )
        file_id, expires_ms = checked
        if self.now() * 1000 > expires_ms:
            return _json(
                403, {"code": "expired", "message": "download token expired", "status": 403}
            )
        with self.catalog.lock:
            f = self.catalog.files.get(file_id)
        if f is None or not f.has_bytes:
            return _json(404, {"code": "not_found", "message": "File not present", "status": 404})
        size = f.size_bytes
        etag = f.etag
        last_modified = formatdate(
            parse_iso_ms(f.scanned_at) / 1000 if f.scanned_at else 0, usegmt=True
        )
        headers: list[tuple[str, str | bytes]] = [
            ("Content-Type", "application/octet-stream"),
            ("Accept-Ranges", "bytes"),
            ("ETag", etag),
            ("Last-Modified", last_modified),
            ("Content-Disposition", content_disposition(f)),
            ("Cache-Control", "max-age=0, no-cache"),
        ]
        rng = h.headers.get("Range")
        if_range = h.headers.get("If-Range")
        if (
            rng is not None
            and if_range is not None
            and if_range.strip() not in (etag, last_modified)
        ):
            rng = None  # If-Range mismatch: the representation changed, send it whole
        span = _parse_range(rng, size) if rng is not None else None
        if span == "unsatisfiable":
            return _Reply(
                416, b"", [("Content-Range", f"bytes */{size}"), ("Accept-Ranges", "bytes")], None
            )
        if isinstance(span, tuple):
            start, end = span
            headers.append(("Content-Range", f"bytes {start}-{end}/{size}"))
            h.send_file(f, 206, headers, start, end - start + 1)
        else:
            h.send_file(f, 200, headers, 0, size)
        return None


def content_disposition(f: FakeFile) -> str | bytes:
    """``attachment; filename="..."``, adding RFC 5987 ``filename*`` for non-ASCII/control chars."""
    if f.content_disposition is not None:
        return f.content_disposition
    name = f.disposition_name or f.display_name
    if all(0x20 <= ord(c) < 0x7F for c in name):
        return 'attachment; filename="' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'
    fallback = "".join(c if 0x20 <= ord(c) < 0x7F and c not in '"\\' else "_" for c in name)
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(name, safe='')}"


def _parse_range(header: str, size: int) -> tuple[int, int] | str | None:
    """A single ``bytes=`` range as (start, end inclusive); None to ignore the header."""
    m = re.fullmatch(r"\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*", header)
    if m is None or (not m.group(1) and not m.group(2)):
        return None  # malformed or multi-range: serve the whole body
    if not m.group(1):
        n = int(m.group(2))
        if n == 0 or size == 0:
            return "unsatisfiable"
        return max(0, size - n), size - 1
    start = int(m.group(1))
    end = int(m.group(2)) if m.group(2) else size - 1
    if start >= size or end < start:
        return "unsatisfiable"
    return start, min(end, size - 1)
