"""The API body cap and the redirect rule of `catalog.civitai.exchange`, on streamed bodies.

Bodies here are real streams (`httpx.MockTransport` with an iterator), so every test counts
how many raw bytes the client pulled before it stopped. The same attacks against a real
socket are in tests/integration/test_hostile_api.py.
"""

from __future__ import annotations

import gzip
import json
import zlib
from collections.abc import Callable, Iterator

import httpx
import pytest

from assetmgr.wording import describe
from catalog.civitai import (
    CivitaiClient,
    CivitaiResponseValidationError,
    CrossOriginRedirectError,
    ModelFilters,
    ResponseTooLargeError,
    RetryPolicy,
    ServerError,
)
from catalog.civitai.exchange import DECODE_STEP, MAX_API_BODY_BYTES, MAX_ERROR_BODY_BYTES
from tests.fakeciv.hostile import gzip_bomb

API = "https://civitai.com"
KEY = "k3y-SECRET-0123456789abcdef"
CAP = 1 << 20
CHUNK = 16 << 10
PAGE = {"items": [], "metadata": {}}


class CountingStream(httpx.SyncByteStream):
    """A body from an iterator that remembers how many bytes the client took from it."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self.chunks = chunks
        self.taken = 0

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self.chunks:
            self.taken += len(chunk)
            yield chunk


def endless(piece: bytes = b'{"id": 1}, ') -> Iterator[bytes]:
    block = (piece * (CHUNK // len(piece) + 1))[:CHUNK]
    while True:
        yield block


def chunks_of(data: bytes) -> Iterator[bytes]:
    for start in range(0, len(data), CHUNK):
        yield data[start : start + CHUNK]


def client_for(
    handler: Callable[[httpx.Request], httpx.Response], **kw: object
) -> tuple[CivitaiClient, list[httpx.Request]]:
    seen: list[httpx.Request] = []

    def record(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return handler(request)

    client = CivitaiClient(
        api_key=KEY,
        transport=httpx.MockTransport(record),
        retry=RetryPolicy(max_attempts=1),
        sleep=lambda s: None,
        max_body_bytes=CAP,
        **kw,  # type: ignore[arg-type]
    )
    return client, seen


def test_the_default_cap_leaves_room_for_real_pages() -> None:
    assert MAX_API_BODY_BYTES == 64 << 20
    assert CivitaiClient()._max_body_bytes == MAX_API_BODY_BYTES


def test_a_gzip_bomb_stops_at_the_cap_after_a_few_kilobytes() -> None:
    bomb = gzip_bomb(256 << 20)
    stream = CountingStream(chunks_of(bomb))
    client, _ = client_for(
        lambda r: httpx.Response(
            200,
            headers={"Content-Encoding": "gzip", "Content-Length": str(len(bomb))},
            stream=stream,
        )
    )
    with pytest.raises(ResponseTooLargeError) as info:
        client.list_models_body(ModelFilters())
    # One 16 KiB chunk inflates to far more than 1 MiB; the decoder never ran past the cap.
    assert stream.taken == CHUNK
    err = info.value
    assert err.limit == CAP and err.declared is None
    assert err.url == f"{API}/api/v1/models?limit=REDACTED"  # every query value is blanked
    assert "grew past the 1048576-byte (1 MiB) limit; stopped reading" in err.message
    words = describe(err)
    assert words is not None and "compression bomb" in words.hint


@pytest.mark.parametrize("encoding", ["gzip", "deflate", "raw-deflate", "identity"])
def test_compressed_pages_under_the_cap_decode_exactly(encoding: str) -> None:
    items = [{"id": i, "name": "x" * 50} for i in range(8000)]
    page = json.dumps({"items": items, "metadata": {}}).encode()
    assert DECODE_STEP < len(page) < CAP  # several bounded steps
    if encoding == "gzip":
        body = gzip.compress(page)
    elif encoding == "deflate":
        body = zlib.compress(page)
    elif encoding == "raw-deflate":
        compressor = zlib.compressobj(wbits=-zlib.MAX_WBITS)
        body = compressor.compress(page) + compressor.flush()
    else:
        body = page
    header = "deflate" if encoding == "raw-deflate" else encoding
    client, seen = client_for(
        lambda r: httpx.Response(
            200, headers={"Content-Encoding": header}, stream=CountingStream(chunks_of(body))
        )
    )
    assert client.list_models_body(ModelFilters())[0] == page
    assert seen[0].headers["accept-encoding"] == "gzip, deflate"


def test_an_encoding_that_was_not_asked_for_is_refused() -> None:
    client, _ = client_for(
        lambda r: httpx.Response(
            200, headers={"Content-Encoding": "br"}, stream=CountingStream(chunks_of(b"x"))
        )
    )
    with pytest.raises(CivitaiResponseValidationError, match=r"not asked for \(br\)"):
        client.get_model(1)


def test_a_body_without_a_length_stops_at_the_cap() -> None:
    stream = CountingStream(endless())
    client, _ = client_for(lambda r: httpx.Response(200, stream=stream))
    with pytest.raises(ResponseTooLargeError):
        client.list_models_raw(ModelFilters())
    assert CAP < stream.taken <= CAP + CHUNK


def test_a_declared_length_over_the_cap_is_refused_unread() -> None:
    stream = CountingStream(endless())
    client, _ = client_for(
        lambda r: httpx.Response(200, headers={"Content-Length": str(1 << 40)}, stream=stream)
    )
    with pytest.raises(ResponseTooLargeError) as info:
        client.get_version_by_hash("A" * 64)
    assert stream.taken == 0
    assert info.value.declared == 1 << 40
    assert "declares 1099511627776 bytes, over the 1048576-byte (1 MiB) limit" in str(info.value)


def test_an_endless_error_body_is_cut_and_the_status_still_reported() -> None:
    stream = CountingStream(endless(b"<html>bad gateway "))
    client, _ = client_for(lambda r: httpx.Response(502, stream=stream))
    with pytest.raises(ServerError) as info:
        client.get_model(1)
    assert info.value.status_code == 502
    assert stream.taken <= MAX_ERROR_BODY_BYTES + CHUNK


def test_the_body_of_a_followed_redirect_is_never_read() -> None:
    stream = CountingStream(endless())

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/api/v1/models/1":
            return httpx.Response(302, headers={"Location": "/api/v1/models/2"}, stream=stream)
        return httpx.Response(200, json={"id": 2, "name": "m", "type": "LORA"})

    client, seen = client_for(handler)
    assert client.get_model(1).id == 2
    assert stream.taken == 0
    assert [r.url.path for r in seen] == ["/api/v1/models/1", "/api/v1/models/2"]


def test_a_refused_redirect_names_its_target_without_credentials() -> None:
    location = "https://cdn.example/page?token=LEAKED&X-Amz-Signature=SIG&keep=1"
    client, seen = client_for(lambda r: httpx.Response(307, headers={"Location": location}))
    with pytest.raises(CrossOriginRedirectError) as info:
        client.list_models_page(ModelFilters())
    assert len(seen) == 1
    text = f"{info.value.message} {info.value.location} {info.value.url}"
    assert "LEAKED" not in text and "SIG" not in text
    assert "https://cdn.example/page?token=REDACTED&X-Amz-Signature=REDACTED&keep=REDACTED" in (
        info.value.message
    )
    words = describe(info.value)
    assert words is not None
    assert words.hint.startswith("API calls follow redirects only within the API's own origin")


def test_a_post_redirected_within_the_origin_keeps_its_body_on_307() -> None:
    sha = "B" * 64

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/by-hash"):
            return httpx.Response(307, headers={"Location": "/api/v1/model-versions/by-hash2"})
        assert json.loads(request.content) == [sha]
        return httpx.Response(200, json=[])

    client, seen = client_for(handler)
    assert client.get_versions_by_hashes([sha]) == []
    assert [r.method for r in seen] == ["POST", "POST"]
    assert all(r.headers["authorization"] == f"Bearer {KEY}" for r in seen)


def test_page_bodies_for_workers_are_the_capped_bodies() -> None:
    body = json.dumps(PAGE).encode()
    client, _ = client_for(
        lambda r: httpx.Response(
            200,
            headers={"Content-Encoding": "gzip"},
            stream=CountingStream(iter([gzip.compress(body)])),
        )
    )
    pages = list(client.iter_model_page_bodies(ModelFilters()))
    assert pages == [(body, None)]


def test_the_fakes_bomb_is_a_valid_gzip_of_the_promised_size() -> None:
    bomb = gzip_bomb(3 << 20)
    inflated = gzip.decompress(bomb)  # checks the CRC and the length in the trailer
    assert len(inflated) == len(b'{"items": [') + (3 << 20)
    assert len(gzip_bomb(4 << 30)) < 5 << 20  # 4 GiB from under 5 MB on the wire
