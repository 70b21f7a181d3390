"""The fake Civitai itself answers as Civitai's API does (so tests built on it mean something)."""

from __future__ import annotations

import hashlib
import json
import math
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.fakeciv import (
    FakeCatalog,
    FakeCivitai,
    civitai_hashes,
    make_safetensors,
    write_big_file,
)
from tests.fakeciv.data import FIXTURES_DIR, MODEL_TYPES, FakeVersion
from tests.fakeciv.faults import FaultInjector
from tests.fakeciv.shapes import RenderContext, list_model

KEY = "secret-key"
UA = {"User-Agent": "assetmgr-tests/0.1"}
BROWSER = {"User-Agent": "Mozilla/5.0 (X11; Linux x86_64) Firefox/140.0"}


def fixture_json(name: str, base_url: str | None = None) -> Any:
    text = (FIXTURES_DIR / name).read_text(encoding="utf-8")
    if base_url is not None:
        text = text.replace("https://civitai.com", base_url)
    return json.loads(text)


@pytest.fixture(scope="module")
def catalog() -> FakeCatalog:
    return FakeCatalog.generate(300, seed=7, include_fixtures=True)


@pytest.fixture(scope="module")
def fake(catalog: FakeCatalog) -> Iterator[FakeCivitai]:
    """A shared, read-only server; tests that mutate build their own (`small`)."""
    with FakeCivitai(catalog, api_keys={KEY}) as server:
        yield server
        assert server.errors == []


@pytest.fixture(autouse=True)
def _clean_faults(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    if "fake" in request.fixturenames:
        server = request.getfixturevalue("fake")
        server.faults.clear()
        server.storage_faults.clear()


@pytest.fixture
def small() -> Iterator[FakeCivitai]:
    with FakeCivitai(
        FakeCatalog.generate(30, seed=3, include_fixtures=True), api_keys={KEY}
    ) as server:
        yield server
        assert server.errors == []


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    with httpx.Client(headers=UA, timeout=10) as c:
        yield c


def walk(client: httpx.Client, base: str, **params: Any) -> tuple[list[dict[str, Any]], int]:
    """Follow `nextCursor` to the end; returns (items, pages)."""
    items: list[dict[str, Any]] = []
    pages = 0
    cursor = None
    while True:
        query = dict(params, **({"cursor": cursor} if cursor else {}))
        r = client.get(f"{base}/api/v1/models", params=query)
        assert r.status_code == 200, r.text
        body = r.json()
        items += body["items"]
        pages += 1
        cursor = body["metadata"].get("nextCursor")
        if cursor is None:
            assert body["metadata"] == {}
            return items, pages


# --------------------------------------------------------------------------- hashes


def test_hash_vectors_match_doc_section_7(tmp_path: Path) -> None:
    hello = civitai_hashes(b"hello world")
    assert hello == {
        "AutoV2": "B94D27B993",
        "SHA256": "B94D27B9934D3E08A52E52D7DA7DABFAC484EFE37A5380EE9088F7ACE2EFCDE9",
        "CRC32": "85114A0D",
        "BLAKE3": "D74981EFA70A0C880B8D8C1985D075DBCBF679B99A5F9914E5AAF96B831A9E24",
        "AutoV3": "85C76DCAE229",
    }
    three_mib = bytes(i % 251 for i in range(3 * 1024 * 1024))
    big = civitai_hashes(three_mib)
    assert big["SHA256"] == "A1FEACF0D812BA4D0B0E463ED45BBD583CEA1DE55C54693116754B30B5794745"
    assert (big["AutoV2"], big["AutoV1"], big["CRC32"], big["AutoV3"]) == (
        "A1FEACF0D8", "15FFD73B", "78BC6E6B", "B35A90214838",
    )  # fmt: skip
    path = tmp_path / "three.bin"
    path.write_bytes(three_mib)
    assert civitai_hashes(path) == big
    st = make_safetensors(
        {"lora_unet_demo.weight": [1.0, 2.0, 3.0, 4.0]}, metadata={"ss_output_name": "demo_lora"}
    )
    assert len(st) == 152
    vec = civitai_hashes(st)
    assert vec["SHA256"] == "98285EC41FD6EC8249A618869B9D06AC5ECABA102507E563287307539DEC93EA"
    assert (vec["AutoV3"], vec["CRC32"], "AutoV1" in vec) == ("AD73B9ACD6E4", "A6E4B9EB", False)


def test_attached_bytes_get_real_hashes_and_are_served(
    small: FakeCivitai, client: httpx.Client
) -> None:
    data = bytes(i % 251 for i in range(3 * 1024 * 1024))
    vid = _plain_version(small.catalog).id
    f = small.catalog.add_file_bytes(vid, data, name="vector.safetensors")
    assert f.hashes["AutoV1"] == "15FFD73B" and f.hashes["CRC32"] == "78BC6E6B"
    assert f.size_kb == 3 * 1024
    r = client.get(f"{small.base_url}/api/download/models/{vid}", follow_redirects=True)
    assert r.status_code == 200 and r.content == data
    by_hash = client.get(
        f"{small.base_url}/api/v1/model-versions/by-hash/{f.hashes['AutoV3'].lower()}"
    )
    assert by_hash.json()["id"] == vid


# --------------------------------------------------------------------------- fixtures


def test_fixture_payloads_are_served_verbatim(client: httpx.Client) -> None:
    with FakeCivitai(FakeCatalog.from_fixtures()) as fx:
        base = fx.base_url

        def same(name: str, got: Any) -> None:
            # json.dumps also compares key order.
            assert json.dumps(got) == json.dumps(fixture_json(name, base)), name

        same("model.json", client.get(f"{base}/api/v1/models/700102").json())
        same("model-version.json", client.get(f"{base}/api/v1/model-versions/800205").json())
        hashes = fixture_json("model-version-by-hash.json")["files"][0]["hashes"]
        assert len(hashes) == 6
        for digest in hashes.values():
            for form in (digest, digest.lower()):
                r = client.get(f"{base}/api/v1/model-versions/by-hash/{form}")
                assert (
                    r.headers["cache-control"]
                    == "public, s-maxage=3600, stale-while-revalidate=1800"
                )
                same("model-version-by-hash.json", r.json())
        listed = client.get(f"{base}/api/v1/models?limit=2&types=Checkpoint&types=LORA").json()
        assert json.dumps(listed["items"]) == json.dumps(
            fixture_json("models-list.json", base)["items"]
        )
        paged = client.get(f"{base}/api/v1/models?limit=1&page=1&types=LORA&sort=Most%20Downloaded")
        assert paged.json()["items"] == fixture_json("models-list-paged.json", base)["items"]
        ids = [h["hash"] for h in fixture_json("model-versions-by-hash-ids.json")]
        r = client.post(f"{base}/api/v1/model-versions/by-hash/ids", json=[ids[0], ids[1].lower()])
        same("model-versions-by-hash-ids.json", r.json())
        same("enums.json", client.get(f"{base}/api/v1/enums").json())
        assert fx.errors == []


# --------------------------------------------------------------------------- /models


@pytest.mark.parametrize("sort", ["Highest Rated", "Newest", "Oldest", "Most Downloaded"])
def test_cursor_walk_returns_every_sfw_model_once(
    fake: FakeCivitai, catalog: FakeCatalog, client: httpx.Client, sort: str
) -> None:
    before = fake.count("/api/v1/models")
    items, pages = walk(client, fake.base_url, limit=37, sort=sort)
    ids = [i["id"] for i in items]
    expected = catalog.expected_listing_ids(nsfw=False)
    assert len(ids) == len(set(ids)) == len(expected)
    assert set(ids) == expected
    assert pages == math.ceil(len(expected) / 37) + (len(expected) % 37 == 0)
    assert fake.count("/api/v1/models") - before == pages
    for item in items:
        assert item["nsfwLevel"] & 1
        assert item.get("mode") in (None, "TakenDown")  # only archived models are left out
        for v in item["modelVersions"]:
            assert all(img["nsfwLevel"] & 1 for img in v["images"])
            if item.get("mode") == "TakenDown":
                assert v["files"] == v["images"] == [] and "downloadUrl" not in v
                continue
            assert sum(f.get("primary", False) for f in v["files"]) == 1
            assert all(f.get("primary", True) is True for f in v["files"])  # absent, never false
    if sort == "Newest":
        dates = [max(v["publishedAt"] for v in i["modelVersions"]) for i in items]
        assert dates[:5] == sorted(dates[:5], reverse=True)


def test_next_page_is_followable_and_nsfw_true_returns_all(
    fake: FakeCivitai, catalog: FakeCatalog, client: httpx.Client
) -> None:
    url: str | None = f"{fake.base_url}/api/v1/models?limit=100&nsfw=true&sort=Most%20Downloaded"
    seen: list[int] = []
    while url:
        body = client.get(url).json()
        seen += [i["id"] for i in body["items"]]
        url = body["metadata"].get("nextPage")
        if url:
            assert "sort=Most%20Downloaded" in url and "cursor=" in url and "%7C" in url
    assert len(seen) == len(set(seen))
    assert set(seen) == catalog.expected_listing_ids(nsfw=True)
    assert set(seen) > catalog.expected_listing_ids(nsfw=False)


def test_page_is_echoed_but_does_not_offset(fake: FakeCivitai, client: httpx.Client) -> None:
    base = f"{fake.base_url}/api/v1/models"
    one = client.get(base, params={"limit": 5, "page": 1}).json()
    two = client.get(base, params={"limit": 5, "page": 2}).json()
    assert [i["id"] for i in one["items"]] == [i["id"] for i in two["items"]]
    assert two["metadata"]["currentPage"] == 2 and two["metadata"]["pageSize"] == 5
    assert "cursor=" in two["metadata"]["nextPage"] and "page=2" in two["metadata"]["nextPage"]
    r = client.get(base, params={"limit": 100, "page": 11})
    assert r.status_code == 429 and r.json() == fixture_json("error-429-too-many-pages.json")
    r = client.get(base, params={"query": "ink", "page": 2})
    assert r.status_code == 400 and r.json() == fixture_json("error-400-query-with-page.json")
    r = client.get(base, params={"limit": 500})
    assert r.status_code == 400 and r.json() == fixture_json("error-400-validation-limit.json")
    assert client.get(base, params={"limit": "abc"}).status_code == 400
    assert client.get(base, params={"cursor": "not|a|cursor"}).status_code == 400
    fake.page_offsets = True  # the optional, unrealistic mode
    try:
        offset = client.get(base, params={"limit": 5, "page": 2}).json()
        assert offset["items"][0]["id"] == int(one["metadata"]["nextCursor"].split("|")[-1])
        assert {i["id"] for i in offset["items"]}.isdisjoint(i["id"] for i in one["items"])
    finally:
        fake.page_offsets = False


def test_types_repeat_the_key_and_reject_comma_lists(
    fake: FakeCivitai, catalog: FakeCatalog, client: httpx.Client
) -> None:
    items, _ = walk(client, fake.base_url, types=["LORA", "Checkpoint"], limit=100)
    assert {i["type"] for i in items} == {"LORA", "Checkpoint"}
    expected = {
        mid
        for mid in catalog.expected_listing_ids()
        if catalog.models[mid].type in ("LORA", "Checkpoint")
    }
    assert {i["id"] for i in items} == expected
    r = client.get(f"{fake.base_url}/api/v1/models", params={"types": "LORA,Checkpoint"})
    assert r.status_code == 400
    assert r.json()["error"]["name"] == "ZodError"
    assert json.loads(r.json()["error"]["message"])[0]["code"] == "invalid_value"


def test_base_models_filter_drops_other_versions(
    fake: FakeCivitai, catalog: FakeCatalog, client: httpx.Client
) -> None:
    wanted = {"Pony", "SD 1.5"}
    items, _ = walk(client, fake.base_url, baseModels=sorted(wanted), limit=100)
    assert items
    trimmed = 0
    for item in items:
        assert {v["baseModel"] for v in item["modelVersions"]} <= wanted
        assert set(item["baseModels"]) <= wanted
        trimmed += len(catalog.listable_versions(catalog.models[item["id"]])) > len(
            item["modelVersions"]
        )
    assert trimmed > 0  # some models had versions on other bases
    r = client.get(f"{fake.base_url}/api/v1/models", params={"baseModels": "No Such Base"})
    assert r.json() == {"items": [], "metadata": {}}


def test_query_search_pages_with_numeric_cursor(
    fake: FakeCivitai, catalog: FakeCatalog, client: httpx.Client
) -> None:
    first = client.get(
        f"{fake.base_url}/api/v1/models", params={"query": "STYLE", "limit": 10}
    ).json()
    assert first["metadata"]["nextCursor"] == "10"
    items, _ = walk(client, fake.base_url, query="style", limit=10)
    assert items and all(
        "style" in i["name"].lower()
        or any("style" in t for t in i["tags"])
        or "style" in i["creator"]["username"]
        for i in items
    )
    assert len({i["id"] for i in items}) == len(items)


def test_other_filters(fake: FakeCivitai, catalog: FakeCatalog, client: httpx.Client) -> None:
    base = f"{fake.base_url}/api/v1/models"
    some = sorted(catalog.expected_listing_ids())[:3]
    r = client.get(base, params={"ids": ",".join(map(str, some))}).json()
    assert sorted(i["id"] for i in r["items"]) == some
    m = catalog.models[some[0]]
    if m.creator:
        r = client.get(base, params={"username": m.creator["username"].upper()}).json()
        assert r["items"] and all(
            i["creator"]["username"] == m.creator["username"] for i in r["items"]
        )
    r = client.get(base, params={"tag": m.tags[0], "limit": 100}).json()
    assert r["items"] and all(m.tags[0] in i["tags"] for i in r["items"])
    r = client.get(base, params={"primaryFileOnly": "true", "limit": 100}).json()
    assert all(
        len(v["files"]) == 1 and v["files"][0]["primary"]
        for i in r["items"]
        if "mode" not in i  # taken-down models list no files at all
        for v in i["modelVersions"]
    )
    for key in ("favorites", "hidden"):
        r = client.get(base, params={key: "false"})
        assert r.status_code == 401 and r.json() == fixture_json("error-401-unauthorized.json")
    r = client.get(base, params={"favorites": "true"}, headers={"Authorization": f"Bearer {KEY}"})
    assert (
        r.status_code == 200 and "cache-control" not in r.headers
    )  # no public cache with a session
    assert client.get(base, params={"favorites": "true", "token": KEY}).status_code == 200
    assert client.get(base, params={"sort": "Best"}).status_code == 400
    assert client.post(base).status_code == 405


# --------------------------------------------------------------------------- shapes


def test_model_detail_applies_remove_empty(
    fake: FakeCivitai, catalog: FakeCatalog, client: httpx.Client
) -> None:
    checked = 0
    for m in catalog.models.values():
        if m.status != "Published" or m.mode is not None:
            continue
        body = client.get(f"{fake.base_url}/api/v1/models/{m.id}").json()
        for vd in body["modelVersions"]:
            for key, value in vd.items():
                assert value is not None and value != [], (m.id, key)
            v = catalog.versions[vd["id"]]
            assert ("description" in vd) == (v.description is not None)
            assert ("images" in vd) == bool(v.images)
            for img in vd.get("images", []):
                assert "id" not in img
            for f in vd.get("files", []):
                assert f.get("primary", True) is True
                assert None not in f["metadata"].values()
                assert "overrideName" in f
            checked += 1
        if checked > 60:
            break
    assert checked > 60
    r = client.get(f"{fake.base_url}/api/v1/models/999999")
    assert r.status_code == 404 and r.json() == fixture_json("error-404-model.json")
    assert client.get(f"{fake.base_url}/api/v1/models/abc").status_code == 400


def test_standalone_version_shape(
    fake: FakeCivitai, catalog: FakeCatalog, client: httpx.Client
) -> None:
    v = _plain_version(catalog, min_files=2, images=True)
    body = client.get(f"{fake.base_url}/api/v1/model-versions/{v.id}").json()
    assert body["modelId"] == v.model_id
    assert set(body["model"]) == {"name", "type", "nsfw", "poi"}
    assert body["air"].startswith("urn:air:")
    assert body["air"].endswith(f":civitai:{v.model_id}@{v.id}")
    assert [f["primary"] for f in body["files"]].count(True) == 1
    assert all(isinstance(f["primary"], bool) and "overrideName" not in f for f in body["files"])
    assert all(set(f["metadata"]) == {"format", "size", "fp"} for f in body["files"])
    assert "index" not in body and "meta" in body["images"][0] and "id" not in body["images"][0]
    sha = next(f for f in body["files"] if f["primary"])["hashes"]["SHA256"]
    hashed = client.get(f"{fake.base_url}/api/v1/model-versions/by-hash/{sha}").json()
    assert all("overrideName" in f for f in hashed["files"])
    r = client.get(f"{fake.base_url}/api/v1/model-versions/999999")
    assert r.status_code == 404 and r.json() == fixture_json("error-404-model-version.json")
    assert client.get(f"{fake.base_url}/api/v1/model-versions/0").json() == {
        "error": "Missing modelVersionId"
    }
    assert client.post(f"{fake.base_url}/api/v1/model-versions/{v.id}").status_code == 405


def test_by_hash_all_six_types_and_bulk(
    fake: FakeCivitai, catalog: FakeCatalog, client: httpx.Client
) -> None:
    v = _plain_version(catalog)
    f = v.primary_file()
    assert f is not None and len(f.hashes) == 6
    for kind, digest in f.hashes.items():
        assert (
            len(digest)
            == {"AutoV1": 8, "AutoV2": 10, "SHA256": 64, "CRC32": 8, "BLAKE3": 64, "AutoV3": 12}[
                kind
            ]
        )
        for form in (digest, digest.lower()):
            r = client.get(f"{fake.base_url}/api/v1/model-versions/by-hash/{form}")
            assert r.status_code == 200 and r.json()["id"] == v.id, kind
    assert f.hashes["AutoV2"] == f.hashes["SHA256"][:10]
    r = client.get(f"{fake.base_url}/api/v1/model-versions/by-hash/{'0' * 64}")
    assert r.status_code == 404 and r.json() == {"error": "Model not found"}
    other = _plain_version(catalog, skip={v.id})
    other_sha = other.primary_file().hashes["SHA256"]  # type: ignore[union-attr]
    body = [f.hashes["SHA256"].lower(), "F" * 64, other_sha]
    r = client.post(f"{fake.base_url}/api/v1/model-versions/by-hash", json=body)
    assert [x["id"] for x in r.json()] == [v.id, other.id]
    r = client.post(f"{fake.base_url}/api/v1/model-versions/by-hash/ids", json=body)
    assert r.json() == [
        {"modelVersionId": v.id, "modelId": v.model_id, "hash": f.hashes["SHA256"]},
        {"modelVersionId": other.id, "modelId": other.model_id, "hash": other_sha},
    ]
    too_many = client.post(f"{fake.base_url}/api/v1/model-versions/by-hash", json=["A" * 64] * 101)
    assert too_many.status_code == 400
    assert too_many.json()["error"].startswith("Request must include an array of SHA256 Hashes.")
    assert (
        client.post(
            f"{fake.base_url}/api/v1/model-versions/by-hash/ids", json=["A" * 64] * 10_000
        ).json()
        == []
    )
    assert (
        client.post(
            f"{fake.base_url}/api/v1/model-versions/by-hash/ids", json=["A" * 64] * 10_001
        ).status_code
        == 400
    )
    assert (
        client.post(f"{fake.base_url}/api/v1/model-versions/by-hash", json=["abc"]).status_code
        == 400
    )


def test_shared_hash_resolves_to_oldest_version(small: FakeCivitai, client: httpx.Client) -> None:
    cat = small.catalog
    old, new = sorted(
        (
            v
            for v in cat.versions.values()
            if v.status == "Published" and cat.models[v.model_id].status == "Published"
        ),
        key=lambda v: v.published_ms,
    )[:: max(1, len(cat.versions) // 3)][:2]
    dup = b"same bytes in two places"
    for v in (new, old):
        cat.add_file_bytes(v.id, dup, name="dup.safetensors")
    sha = civitai_hashes(dup)["SHA256"]
    r = client.get(f"{small.base_url}/api/v1/model-versions/by-hash/{sha}")
    assert r.json()["id"] == old.id


# --------------------------------------------------------------------------- downloads


def test_download_redirect_range_if_range_and_expiry(
    small: FakeCivitai, client: httpx.Client
) -> None:
    data = hashlib.sha256(b"x").digest() * 10_000  # 320 000 bytes
    v = _plain_version(small.catalog)
    small.catalog.update_version(v.id, require_auth=True)
    f = small.catalog.add_file_bytes(v.id, data, name="harbor_v1.safetensors")
    url = f"{small.base_url}/api/download/models/{v.id}"

    r = client.get(url)
    assert r.status_code == 401 and r.json() == fixture_json(
        "error-401-download-login-required.json"
    )
    assert r.headers["cache-control"] == "no-store, max-age=0"
    assert client.get(url, headers={"Authorization": "Bearer wrong"}).status_code == 401
    r = client.get(url, headers={"Authorization": f"Bearer {KEY}"})
    assert r.status_code == 307 and r.headers["cache-control"] == "no-store, max-age=0"
    location = r.headers["location"]
    assert location.startswith(small.storage_url + "/") and not location.startswith(small.base_url)
    assert KEY not in location and r.text == location
    assert client.get(url, params={"token": KEY}).status_code == 307

    # httpx drops Authorization on the cross-origin redirect; storage never sees the key.
    with httpx.Client(
        headers={**UA, "Authorization": f"Bearer {KEY}"}, follow_redirects=True
    ) as authed:
        full = authed.get(url)
    assert full.status_code == 200 and full.content == data
    assert full.headers["content-disposition"] == 'attachment; filename="harbor_v1.safetensors"'
    assert full.headers["accept-ranges"] == "bytes" and full.headers["content-length"] == str(
        len(data)
    )
    etag = full.headers["etag"]
    assert etag == f.etag
    for rec in small.storage_requests:
        assert "authorization" not in rec.headers and KEY not in rec.query

    assert client.get(location, headers={"Authorization": f"Bearer {KEY}"}).status_code == 403
    part = client.get(location, headers={"Range": "bytes=1000-"})
    assert part.status_code == 206 and part.content == data[1000:]
    assert part.headers["content-range"] == f"bytes 1000-{len(data) - 1}/{len(data)}"
    assert part.headers["content-length"] == str(len(data) - 1000)
    assert client.get(location, headers={"Range": "bytes=10-19"}).content == data[10:20]
    assert client.get(location, headers={"Range": "bytes=-100"}).content == data[-100:]
    assert client.get(location, headers={"Range": f"bytes={len(data)}-"}).status_code == 416
    same = client.get(location, headers={"Range": "bytes=5-", "If-Range": etag})
    assert same.status_code == 206 and same.content == data[5:]
    changed = client.get(location, headers={"Range": "bytes=5-", "If-Range": '"something-else"'})
    assert changed.status_code == 200 and changed.content == data
    head = client.head(location)
    assert (
        head.status_code == 200
        and head.headers["content-length"] == str(len(data))
        and head.content == b""
    )

    small.advance_clock(small.url_ttl + 1)
    assert client.get(location).status_code == 403
    fresh = client.get(url, params={"token": KEY})
    assert client.get(fresh.headers["location"]).content == data
    assert small.downloads[v.id] == 4


def test_download_decision_order(small: FakeCivitai, client: httpx.Client) -> None:
    cat = small.catalog
    base = f"{small.base_url}/api/download/models"

    def version_with_bytes(**changes: Any) -> FakeVersion:
        v = _plain_version(cat, skip=used)
        used.add(v.id)
        cat.add_file_bytes(v.id, b"payload-%d" % v.id, name=f"v{v.id}.safetensors")
        return cat.update_version(v.id, **changes) if changes else v

    used: set[int] = set()
    r = client.get(f"{base}/999999")
    assert r.status_code == 404 and r.json() == fixture_json(
        "error-404-download-file-not-found.json"
    )
    archived = version_with_bytes()
    cat.archive_model(archived.model_id)
    r = client.get(f"{base}/{archived.id}")
    assert r.status_code == 410 and r.json() == fixture_json("error-410-download-archived.json")
    disabled = version_with_bytes(usage_control="Generation")
    r = client.get(f"{base}/{disabled.id}", params={"token": KEY})
    assert r.status_code == 401 and r.json() == fixture_json("error-401-download-disabled.json")
    deadline = "2099-01-01T00:00:00.000Z"
    early = version_with_bytes(early_access_deadline=deadline, availability="EarlyAccess")
    r = client.get(f"{base}/{early.id}", params={"token": KEY})
    assert (
        r.status_code == 403
        and r.json()["error"] == "Early Access"
        and r.json()["deadline"] == deadline
    )
    small.grant_early_access(KEY, early.id)
    assert client.get(f"{base}/{early.id}", params={"token": KEY}).status_code == 307
    assert client.get(f"{base}/{early.id}").status_code == 403
    # Browser User-Agents: plain-text errors and redirects to the site.
    r = client.get(f"{base}/{archived.id}", headers=BROWSER)
    assert r.status_code == 410 and r.text == "Model archived, not available for download"
    login = version_with_bytes(require_auth=True)
    r = client.get(f"{base}/{login.id}", headers=BROWSER)
    assert r.status_code == 307 and "reason=download-auth" in r.headers["location"]
    # Per-file parameters and the misalignment check.
    plain = version_with_bytes()
    fid = plain.files[0].id
    r = client.get(f"{base}/{plain.id}", params={"fileId": fid})
    assert r.status_code == 404  # generated file without bytes: storage resolver failure
    assert r.headers["cache-control"] == "private, no-store"
    assert (
        client.get(f"{base}/{plain.id}", params={"type": "Model", "format": "GGUF"}).status_code
        == 404
    )
    assert client.get(f"{base}/{plain.id}", params={"type": "Bogus"}).status_code == 400
    ok = client.get(
        f"{base}/{plain.id}", params={"type": "Model", "format": "SafeTensor", "size": "pruned"}
    )
    assert ok.status_code == 307
    small.unauthenticated_download = False
    assert client.get(f"{base}/{plain.id}").status_code == 401
    assert client.head(f"{base}/{plain.id}", params={"token": KEY}).status_code == 307
    small.download_limit = sum(small.downloads.values())
    r = client.get(f"{base}/{plain.id}", params={"token": KEY})
    assert r.status_code == 429 and r.json() == fixture_json("error-429-download-quota.json")


def test_hostile_download_filenames(small: FakeCivitai, client: httpx.Client) -> None:
    v = _plain_version(small.catalog)
    small.catalog.add_file_bytes(
        v.id, b"abc", name="ok.safetensors", disposition_name="../../etc/passwd"
    )
    r = client.get(f"{small.base_url}/api/download/models/{v.id}", follow_redirects=True)
    assert r.headers["content-disposition"] == 'attachment; filename="../../etc/passwd"'
    small.catalog.add_file_bytes(
        v.id, b"abc", name="ok2.safetensors", disposition_name="evil\r\n\x01名.safetensors"
    )
    r = client.get(f"{small.base_url}/api/download/models/{v.id}", follow_redirects=True)
    cd = r.headers["content-disposition"]
    assert "filename*=UTF-8''evil%0D%0A%01%E5%90%8D.safetensors" in cd and "\r" not in cd


def test_big_path_backed_file_is_served_with_sendfile(small: FakeCivitai, tmp_path: Path) -> None:
    path = write_big_file(tmp_path / "big.safetensors", 48 * 1024 * 1024 + 123)
    v = _plain_version(small.catalog)
    f = small.catalog.add_file_bytes(v.id, path, name="big.safetensors")
    assert f.path == path and f.content is None
    sha = hashlib.sha256()
    with (
        httpx.Client(headers=UA, follow_redirects=True, timeout=30) as c,
        c.stream("GET", f"{small.base_url}/api/download/models/{v.id}") as r,
    ):
        for chunk in r.iter_bytes(1 << 20):
            sha.update(chunk)
    assert sha.hexdigest().upper() == f.hashes["SHA256"]


# --------------------------------------------------------------------------- faults


def test_api_fault_schedule(fake: FakeCivitai, client: httpx.Client) -> None:
    url = f"{fake.base_url}/api/v1/models"
    fake.faults.schedule(
        ["503", "429", "drop", "ok", "reset", "truncate", "badjson"], path="/api/v1/models"
    )
    r = client.get(url, params={"limit": 1})
    assert r.status_code == 503 and r.headers["retry-after"] == "1"
    assert r.json() == {"error": "Model search is temporarily overloaded — please retry."}
    r = client.get(url, params={"limit": 1})
    assert r.status_code == 429 and "retry-after" not in r.headers
    with pytest.raises(httpx.RemoteProtocolError):
        client.get(url, params={"limit": 1})
    assert client.get(url, params={"limit": 1}).status_code == 200
    with pytest.raises((httpx.ReadError, httpx.RemoteProtocolError)):
        client.get(url, params={"limit": 1})
    with pytest.raises(httpx.RemoteProtocolError):
        client.get(url, params={"limit": 1})
    assert client.get(url, params={"limit": 1}).headers["content-type"].startswith("text/html")
    assert client.get(url, params={"limit": 1}).status_code == 200  # schedule used up
    assert (
        client.get(f"{fake.base_url}/api/v1/models/700101").status_code == 200
    )  # other paths untouched
    assert [k for _, k in fake.faults.injected] == [
        "503",
        "429",
        "drop",
        "reset",
        "truncate",
        "badjson",
    ]
    logged = [r.status for r in fake.api_requests[-9:]]
    assert logged[:3] == [503, 429, None]


def test_fail_every_and_seeded_random_are_deterministic(
    fake: FakeCivitai, client: httpx.Client
) -> None:
    fake.faults.fail_every(3, "503")
    codes = [client.get(f"{fake.base_url}/api/v1/models/700101").status_code for _ in range(6)]
    assert codes == [200, 200, 503, 200, 200, 503]

    def run() -> list[str]:
        inj = FaultInjector()
        inj.random(0.3, ["503", "drop"], seed=11)
        return [inj.decide("/x") for _ in range(50)]

    first = run()
    assert first == run() and {"ok", "503", "drop"} == set(first)


def test_storage_cut_then_resume_with_range(small: FakeCivitai) -> None:
    data = bytes(range(256)) * 4096  # 1 MiB
    v = _plain_version(small.catalog)
    f = small.catalog.add_file_bytes(v.id, data, name="resume.safetensors")
    small.storage_faults.cut_body_after(300_000)
    got = bytearray()
    with httpx.Client(headers=UA, follow_redirects=True, timeout=10) as c:
        with pytest.raises(httpx.RemoteProtocolError):
            with c.stream("GET", f"{small.base_url}/api/download/models/{v.id}") as r:
                assert r.headers["content-length"] == str(len(data))
                for chunk in r.iter_bytes():
                    got += chunk
        assert len(got) == 300_000
        redirect = c.get(f"{small.base_url}/api/download/models/{v.id}", follow_redirects=False)
        rest = c.get(
            redirect.headers["location"],
            headers={"Range": f"bytes={len(got)}-", "If-Range": f.etag},
        )
    assert rest.status_code == 206
    got += rest.content
    assert civitai_hashes(bytes(got)) == f.hashes


def test_storage_throttle_and_api_delay(small: FakeCivitai, client: httpx.Client) -> None:
    v = _plain_version(small.catalog)
    small.catalog.add_file_bytes(v.id, b"z" * 200_000, name="slow.safetensors")
    small.storage_faults.throttle(500_000)
    t0 = time.monotonic()
    assert (
        len(
            client.get(
                f"{small.base_url}/api/download/models/{v.id}", follow_redirects=True
            ).content
        )
        == 200_000
    )
    assert time.monotonic() - t0 >= 0.3
    small.faults.schedule(["delay:0.5"])
    with pytest.raises(httpx.ReadTimeout):
        client.get(f"{small.base_url}/api/v1/models/700101", timeout=0.1)


# --------------------------------------------------------------------------- hostile payloads


def test_hostile_payloads(small: FakeCivitai, client: httpx.Client) -> None:
    cat = small.catalog
    ids = sorted(cat.expected_listing_ids())
    kinds = [
        "missing_id",
        "unknown_type",
        "huge_description",
        "nul",
        "files_dict",
        "stats_string",
        "script",
    ]
    for mid, kind in zip(ids, kinds, strict=False):
        cat.set_hostile(mid, kind)
    r = client.get(
        f"{small.base_url}/api/v1/models", params={"ids": ",".join(map(str, ids[: len(kinds)]))}
    )
    assert r.status_code == 200
    items = r.json()["items"]
    assert sum("id" not in i for i in items) == 1
    assert any(i.get("type") == "SuperLoRA" for i in items)
    assert any(len(i.get("description") or "") >= 10 * 1024 * 1024 for i in items)
    assert any("\x00" in (i.get("name") or "") for i in items)
    assert any(isinstance(v.get("files"), dict) for i in items for v in i["modelVersions"])
    assert any(i.get("stats") == "lots" for i in items)
    assert any("<script>" in (i.get("description") or "") for i in items)
    cat.set_hostile(ids[0], "deep", "path_traversal", "bad_hashes", "extra_keys")
    deep = client.get(f"{small.base_url}/api/v1/models/{ids[0]}").json()
    assert "junk" in deep and "fakecivExtra" in deep
    assert any(
        f["name"] == "../../etc/passwd" for v in deep["modelVersions"] for f in v.get("files", [])
    )
    cat.set_hostile(ids[0], "very_deep")
    body = client.get(f"{small.base_url}/api/v1/models/{ids[0]}").content
    with pytest.raises(RecursionError):
        json.loads(body)
    cat.set_hostile(ids[0], "bad_utf8")
    with pytest.raises(UnicodeDecodeError):
        client.get(f"{small.base_url}/api/v1/models/{ids[0]}").content.decode("utf-8")
    cat.set_hostile(ids[0])
    assert client.get(f"{small.base_url}/api/v1/models/{ids[0]}").json()["id"] == ids[0]
    with pytest.raises(ValueError):
        cat.set_hostile(ids[0], "no-such-kind")


# --------------------------------------------------------------------------- mutations


def test_mutations_show_up_in_the_api(small: FakeCivitai, client: httpx.Client) -> None:
    cat = small.catalog
    base = small.base_url

    def listed() -> set[int]:
        return {i["id"] for i in walk(client, base, nsfw="true")[0]}

    target = sorted(cat.expected_listing_ids())[0]
    assert target in listed()
    cat.archive_model(target)
    assert target not in listed()
    detail = client.get(f"{base}/api/v1/models/{target}").json()
    assert detail["mode"] == "Archived" and all(
        "files" not in v and "downloadUrl" not in v for v in detail["modelVersions"]
    )
    cat.take_down_model(target)
    detail = client.get(f"{base}/api/v1/models/{target}").json()
    assert all("images" not in v for v in detail["modelVersions"])
    cat.restore_model(target)
    assert target in listed()

    new = cat.add_version(target, name="v99")
    detail = client.get(f"{base}/api/v1/models/{target}").json()
    assert detail["modelVersions"][0]["id"] == new.id and detail["modelVersions"][0]["index"] == 0
    newest = client.get(f"{base}/api/v1/models", params={"sort": "Newest", "limit": 1}).json()
    assert newest["items"][0]["id"] == target

    gone = cat.versions[detail["modelVersions"][-1]["id"]]
    sha = gone.files[0].hashes.get("SHA256") if gone.files else None
    cat.delete_version(gone.id)
    assert client.get(f"{base}/api/v1/model-versions/{gone.id}").status_code == 404
    if sha:
        assert client.get(f"{base}/api/v1/model-versions/by-hash/{sha}").status_code == 404
    cat.delete_model(target)
    assert client.get(f"{base}/api/v1/models/{target}").status_code == 404
    assert target not in listed()
    added = cat.add_model(type="LORA", name="Brand New Thing")
    assert added.id in listed()
    cat.update_model(added.id, name="Renamed Thing")
    assert client.get(f"{base}/api/v1/models/{added.id}").json()["name"] == "Renamed Thing"


# --------------------------------------------------------------------------- catalog, misc


def test_generated_catalog_is_deterministic_and_varied(catalog: FakeCatalog) -> None:
    a = FakeCatalog.generate(60, seed=5)
    b = FakeCatalog.generate(60, seed=5)
    ctx = RenderContext(base_url="http://x")

    def dump(cat: FakeCatalog) -> str:
        return json.dumps([list_model(cat, m, m.versions, ctx) for m in cat.models.values()])

    assert dump(a) == dump(b)
    assert dump(a) != dump(FakeCatalog.generate(60, seed=6))
    big = catalog
    assert {m.type for m in big.models.values()} == set(MODEL_TYPES)
    bases = {v.base_model for v in big.versions.values()}
    assert {"SD 1.5", "SDXL 1.0", "Pony", "Illustrious", "Flux.1 D"} <= bases
    models = list(big.models.values())
    versions = list(big.versions.values())
    assert {"Archived", "TakenDown"} <= {m.mode for m in models}
    assert any(v.require_auth for v in versions) and any(v.early_access_deadline for v in versions)
    assert any(v.usage_control != "Download" for v in versions)
    assert any("," in w for v in versions for w in v.trained_words)
    assert any(m.stats["downloadCount"] is None for m in models)
    assert any(not m.nsfw_level & 1 for m in models)
    for f in big.files.values():
        h = f.hashes
        if "SHA256" in h:
            assert h["AutoV2"] == h["SHA256"][:10] and h == {k: v.upper() for k, v in h.items()}
            assert len(h["BLAKE3"]) == 64 and len(h["CRC32"]) == 8
    materialized = FakeCatalog.generate(5, seed=1, materialize_bytes=1000)
    for f in materialized.files.values():
        assert f.content is not None and civitai_hashes(f.content) == f.hashes


def test_concurrent_clients(small: FakeCivitai) -> None:
    v = _plain_version(small.catalog)
    data = b"q" * 500_000
    small.catalog.add_file_bytes(v.id, data, name="shared.safetensors")
    errors: list[BaseException] = []

    def worker(n: int) -> None:
        try:
            with httpx.Client(headers=UA, timeout=10, follow_redirects=True) as c:
                items, _ = walk(c, small.base_url, limit=10, sort="Newest" if n % 2 else "Oldest")
                assert len(items) == len(small.catalog.expected_listing_ids())
                assert c.get(f"{small.base_url}/api/download/models/{v.id}").content == data
        except BaseException as e:  # surfaced below, in the test thread
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert errors == []
    assert small.downloads[v.id] == 8


def test_images_endpoint_and_served_previews(client: httpx.Client) -> None:
    with FakeCivitai(FakeCatalog.from_fixtures(), serve_images=True) as fx:
        body = client.get(
            f"{fx.base_url}/api/v1/images", params={"modelVersionId": 800205, "limit": 1}
        ).json()
        assert body["items"][0]["modelVersionIds"] == [800205] and body["metadata"]["nextCursor"]
        url = client.get(f"{fx.base_url}/api/v1/models/700102").json()["modelVersions"][0][
            "images"
        ][0]["url"]
        assert url.startswith(fx.storage_url + "/img/")
        png = client.get(url)
        assert png.headers["content-type"] == "image/png" and png.content.startswith(b"\x89PNG")


def test_standalone_command_serves(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.fakeciv", "--port", "0", "--models", "20"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    try:
        assert proc.stdout is not None
        api = None
        for line in proc.stdout:
            if line.startswith("api:"):
                api = line.split()[1]
                break
        assert api is not None
        r = httpx.get(f"{api}/api/v1/models", params={"limit": 5})
        assert r.status_code == 200 and len(r.json()["items"]) == 5
    finally:
        proc.terminate()
        proc.communicate(timeout=10)
    assert proc.returncode == 0


# --------------------------------------------------------------------------- helpers


def _plain_version(
    cat: FakeCatalog, *, min_files: int = 1, skip: set[int] | None = None, images: bool = False
) -> FakeVersion:
    """A published, downloadable, ungated version with a fully hashed primary file."""
    for v in cat.versions.values():
        m = cat.models[v.model_id]
        primary = v.primary_file()
        if (
            v.id not in (skip or set())
            and v.status == "Published"
            and m.status == "Published"
            and m.mode is None
            and not m.poi
            and not v.require_auth
            and v.usage_control == "Download"
            and not v.early_access_deadline
            and len(v.public_files) >= min_files
            and primary is not None
            and len(primary.hashes) == 6
            and len(cat.files_by_hash(primary.hashes["SHA256"])) == 1
            and (v.images or not images)
        ):
            return v
    raise AssertionError("no plain version in the catalog")
