"""The Civitai client against `httpx.MockTransport` fakes fed with the recorded fixtures."""

from __future__ import annotations

import copy
import email.utils
import json
import logging
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

import catalog.civitai as civitai_pkg
from assetmgr.errors import EXPECTED_ERRORS, CivitaiError
from assetmgr.wording import describe
from catalog.civitai import (
    ArchivedError,
    CivitaiBadRequestError,
    CivitaiClient,
    CivitaiConnectionError,
    CivitaiInputError,
    CivitaiResponseValidationError,
    CivitaiStatusError,
    CrossOriginRedirectError,
    DownloadDisabledError,
    EarlyAccessError,
    ForbiddenError,
    LoginRequiredError,
    ModelFilters,
    NotFoundError,
    RateLimitedError,
    RetryPolicy,
    ServerError,
    UnauthorizedError,
    filename_from_disposition,
    normalize_hash,
    parse_retry_after,
)
from catalog.civitai import client as client_module
from catalog.civitai.listpage import cursor_of_body, page_items
from catalog.redact import redact_url

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "civitai"
API = "https://civitai.com"
KEY = "k3y-SECRET-0123456789abcdef"
SHA = "0BDFBB4C0B17FCA09F778306440EBC7C6AEF3F7450B272CCE4214C2569ABC39A"
# jitter=1.0 makes every backoff its ceiling, so the sleeps are exact.
EXACT = RetryPolicy(jitter=lambda: 1.0)
NO_RETRY = RetryPolicy(max_attempts=1)

Handler = Callable[[httpx.Request], httpx.Response]


def fixture_bytes(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def fixture(name: str) -> Any:
    return json.loads(fixture_bytes(name))


def json_response(status: int, body: Any, headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.Response(status, json=body, headers=headers)


def fixture_response(
    status: int, name: str, headers: dict[str, str] | None = None
) -> httpx.Response:
    all_headers = {"content-type": "application/json; charset=utf-8", **(headers or {})}
    return httpx.Response(status, content=fixture_bytes(name), headers=all_headers)


class FakeCivitai:
    """Records every request and answers from a handler, or from a queue of canned answers."""

    def __init__(self, handler: Handler | Sequence[httpx.Response | Exception]) -> None:
        self.requests: list[httpx.Request] = []
        self._handler = handler if callable(handler) else list(handler)

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if callable(self._handler):
            return self._handler(request)
        assert isinstance(self._handler, list)
        answer = self._handler.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer


def make_client(
    fake: FakeCivitai, *, retry: RetryPolicy = EXACT, api_key: str | None = KEY, **kw: Any
) -> tuple[CivitaiClient, list[float]]:
    sleeps: list[float] = []
    client = CivitaiClient(
        api_key=api_key,
        transport=httpx.MockTransport(fake),
        retry=retry,
        sleep=sleeps.append,
        **kw,
    )
    return client, sleeps


def page_body(items: list[Any], cursor: Any = None) -> dict[str, Any]:
    return {"items": items, "metadata": {"nextCursor": cursor} if cursor is not None else {}}


def model_item(model_id: int, name: str = "m") -> dict[str, Any]:
    item: dict[str, Any] = copy.deepcopy(fixture("models-list.json")["items"][1])
    item["id"] = model_id
    item["name"] = name
    return item


# -- filters --------------------------------------------------------------------------------


def test_filters_use_repeated_keys_and_comma_joined_ids() -> None:
    fake = FakeCivitai([fixture_response(200, "models-list-last-page.json")])
    client, _ = make_client(fake)
    filters = ModelFilters(
        types=["lora", "Checkpoint"],
        base_models=["SDXL 1.0", "Pony"],
        ids=[3, 1, 2],
        nsfw=True,
        primary_file_only=True,
        sort="Most Downloaded",
        period="Week",
        query="ink wash",
        tag="style",
        username="pixel_foundry",
        limit=50,
    )
    client.list_models_page(filters, cursor="12|40|600001")

    url = fake.requests[0].url
    assert url.path == "/api/v1/models"
    assert url.params.get_list("types") == ["LORA", "Checkpoint"]
    assert url.params.get_list("baseModels") == ["SDXL 1.0", "Pony"]
    assert url.params.get_list("ids") == ["3,1,2"]
    assert url.params["nsfw"] == "true"
    assert url.params["primaryFileOnly"] == "true"
    assert url.params["sort"] == "Most Downloaded"
    assert url.params["period"] == "Week"
    assert url.params["query"] == "ink wash"
    assert url.params["tag"] == "style"
    assert url.params["username"] == "pixel_foundry"
    assert url.params["limit"] == "50"
    assert url.params["cursor"] == "12|40|600001"
    assert b"types=LORA&types=Checkpoint" in url.query
    assert "page" not in url.params


def test_default_filters_send_only_the_limit() -> None:
    fake = FakeCivitai([fixture_response(200, "models-list-last-page.json")])
    client, _ = make_client(fake)
    client.list_models_page(ModelFilters())
    assert list(fake.requests[0].url.params.multi_items()) == [("limit", "100")]


def test_a_bare_string_is_one_type_not_letters() -> None:
    assert ModelFilters(types="LORA").to_params() == [("limit", "100"), ("types", "LORA")]


@pytest.mark.parametrize("bad", [{"limit": 0}, {"limit": 101}, {"ids": [0]}, {"ids": [True]}])
def test_filters_reject_values_the_server_would_400(bad: dict[str, Any]) -> None:
    with pytest.raises(CivitaiInputError):
        ModelFilters(**bad)


# -- list pages and cursors -----------------------------------------------------------------


def test_list_page_parses_the_recorded_fixture() -> None:
    fake = FakeCivitai([fixture_response(200, "models-list.json")])
    client, _ = make_client(fake)
    page = client.list_models_page(ModelFilters(types=["Checkpoint", "LORA"], limit=2))

    assert [m.id for m in page.items] == [700101, 700102]
    assert page.next_cursor == "874|11873|700056"
    assert page.rejected == []
    first = page.items[0]
    assert first.type == "Checkpoint"
    assert first.allow_commercial_use == ["Image", "RentCivit"]
    # List shape (a): no modelId; primary only on the primary file.
    version = first.model_versions[0]
    assert version.model_id is None
    assert [f.primary for f in version.files] == [True, None, None]
    assert version.primary_file is not None and version.primary_file.id == 900301


def test_last_page_with_empty_metadata_has_no_cursor() -> None:
    fake = FakeCivitai([fixture_response(200, "models-list-last-page.json")])
    client, _ = make_client(fake)
    page = client.list_models_page(ModelFilters())
    assert page.items == []
    assert page.next_cursor is None


def test_iteration_follows_cursors_through_empty_pages_and_stops_at_the_end() -> None:
    answers = [
        json_response(200, page_body([model_item(1), model_item(2)], "c1")),
        json_response(200, page_body([], "c2")),  # a filtered-out page still has a cursor
        json_response(200, page_body([model_item(3)], 1200)),  # numeric cursor
        json_response(200, page_body([model_item(4)])),
    ]
    fake = FakeCivitai(answers)
    client, _ = make_client(fake)

    pages = list(client.iter_model_pages(ModelFilters(types=["LORA"])))

    assert [len(p.items) for p in pages] == [2, 0, 1, 1]
    assert [r.url.params.get("cursor") for r in fake.requests] == [None, "c1", "c2", "1200"]
    assert all(r.url.params.get_list("types") == ["LORA"] for r in fake.requests)
    assert all("page" not in r.url.params for r in fake.requests)


def test_iter_models_yields_items_across_pages_from_a_start_cursor() -> None:
    fake = FakeCivitai(
        [
            json_response(200, page_body([model_item(7)], "next")),
            json_response(200, page_body([model_item(8)])),
        ]
    )
    client, _ = make_client(fake)
    ids = [m.id for m in client.iter_models(ModelFilters(), start_cursor="resume-here")]
    assert ids == [7, 8]
    assert fake.requests[0].url.params["cursor"] == "resume-here"


def test_a_repeating_cursor_raises_instead_of_looping() -> None:
    calls = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        if calls > 10:
            raise AssertionError("the client kept following a repeating cursor")
        cursor = "c1" if request.url.params.get("cursor") is None else "c2"
        if request.url.params.get("cursor") == "c2":
            cursor = "c1"  # back to an earlier cursor
        return json_response(200, page_body([model_item(calls)], cursor))

    client, _ = make_client(FakeCivitai(handler))
    seen = []
    with pytest.raises(CivitaiResponseValidationError, match="second time"):
        for page in client.iter_model_pages(ModelFilters()):
            seen.append(page)
    assert len(seen) == 3
    assert calls == 3


def test_a_cursor_equal_to_the_start_cursor_also_stops() -> None:
    fake = FakeCivitai([json_response(200, page_body([], "same"))])
    client, _ = make_client(fake)
    with pytest.raises(CivitaiResponseValidationError):
        list(client.iter_model_pages(ModelFilters(), start_cursor="same"))
    assert len(fake.requests) == 1


@pytest.mark.parametrize(
    "response",
    [
        httpx.Response(200, content=b"<html>maintenance</html>"),
        httpx.Response(200, content=b'{"items": '),
        json_response(200, {"metadata": {}}),
        json_response(200, {"items": {"0": {}}, "metadata": {}}),
        json_response(200, [1, 2]),
        json_response(200, {"items": []}),
        json_response(200, {"items": [], "metadata": {"nextCursor": {"a": 1}}}),
    ],
    ids=["html", "truncated", "no-items", "items-not-list", "list", "no-metadata", "odd-cursor"],
)
def test_a_broken_page_envelope_is_a_validation_error(response: httpx.Response) -> None:
    client, _ = make_client(FakeCivitai([response]))
    with pytest.raises(CivitaiResponseValidationError):
        client.list_models_page(ModelFilters())


def _raw_page(body: bytes) -> httpx.Response:
    return httpx.Response(200, content=body, headers={"content-type": "application/json"})


def _bodies() -> dict[str, bytes]:
    """List pages as Civitai might write them, and as it never does (same JSON, odd text)."""
    item = model_item(5)
    item["modelVersions"][0]["files"][0]["metadata"] = {"nextCursor": "a file's, not ours"}
    trap = model_item(6)
    # A string that ends the way the envelope does: its quotes are escaped, so no key.
    trap["description"] = 'x", "metadata": {"nextCursor": "evil"}}'
    bodies = {
        name: fixture_bytes(name)
        for name in ("models-list.json", "models-list-last-page.json", "models-list-paged.json")
    }
    envelope = page_body([item, trap], "12|34|56")
    bodies["compact"] = json.dumps(envelope, separators=(",", ":")).encode()
    bodies["indented"] = json.dumps(envelope, indent=2).encode()
    bodies["non-ascii"] = json.dumps(envelope, ensure_ascii=False).encode() + b"\n"
    bodies["numeric-cursor"] = json.dumps(page_body([item], 1200)).encode()
    bodies["last-page"] = json.dumps(page_body([item])).encode()
    # Metadata first: the last "metadata" key is an item's file's; only a full parse is right.
    bodies["metadata-first"] = json.dumps(
        {"metadata": {"nextCursor": "first"}, "items": [item]}
    ).encode()
    bodies["metadata-then-more"] = json.dumps(
        {"items": [item], "metadata": {"nextCursor": "mid"}, "extra": {"metadata": {}}}
    ).encode()
    return bodies


@pytest.mark.parametrize("name", sorted(_bodies()))
def test_a_page_body_gives_the_same_cursor_and_items_as_the_parsed_page(name: str) -> None:
    body = _bodies()[name]
    client, _ = make_client(FakeCivitai([_raw_page(body), _raw_page(body)]))
    raw_body, cursor = client.list_models_body(ModelFilters())
    items, parsed_cursor = client.list_models_raw(ModelFilters())
    assert raw_body == body
    assert cursor == parsed_cursor
    assert page_items(raw_body) == items


def test_the_cursor_is_read_from_the_end_of_a_usual_body_without_parsing_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    body = _bodies()["compact"]

    def no_full_parse(*_args: Any, **_kwargs: Any) -> Any:
        raise AssertionError("the whole page was parsed")

    monkeypatch.setattr(client_module.json, "loads", no_full_parse)
    assert cursor_of_body(body) == "12|34|56"


@pytest.mark.parametrize(
    "body",
    [
        b"<html>maintenance</html>",
        b'{"items": ',
        b'{"metadata": {}}',
        b'{"items": {"0": {}}, "metadata": {}}',
        b"[1, 2]",
        b'{"items": []}',
        b'{"items": [], "metadata": {"nextCursor": {"a": 1}}}',
        b'{"items": [}, "metadata": {"nextCursor": "c"}}',
    ],
    ids=[
        "html",
        "truncated",
        "no-items",
        "items-not-list",
        "list",
        "no-metadata",
        "odd-cursor",
        "broken-before-metadata",
    ],
)
def test_a_broken_page_body_is_a_validation_error_when_read_or_parsed(body: bytes) -> None:
    client, _ = make_client(FakeCivitai([_raw_page(body)]))
    with pytest.raises(CivitaiResponseValidationError):
        raw_body, _ = client.list_models_body(ModelFilters())
        page_items(raw_body)


def test_bodies_are_followed_like_pages() -> None:
    answers = [
        json_response(200, page_body([model_item(1)], "c1")),
        json_response(200, page_body([], "c2")),
        json_response(200, page_body([model_item(3)])),
    ]
    fake = FakeCivitai(answers)
    client, _ = make_client(fake)
    pages = list(client.iter_model_page_bodies(ModelFilters(), start_cursor="c0"))
    assert [cursor for _, cursor in pages] == ["c1", "c2", None]
    assert [[m["id"] for m in page_items(body)] for body, _ in pages] == [[1], [], [3]]
    assert [r.url.params.get("cursor") for r in fake.requests] == ["c0", "c1", "c2"]


def test_hostile_items_are_rejected_one_by_one_and_the_rest_kept() -> None:
    good = model_item(10, "good")
    odd = model_item(11, "x" * 50_000)  # capped, not rejected
    odd["type"] = "HoloModel"
    odd["allowCommercialUse"] = ["Sell"]
    items = [
        good,
        {"id": 5, "description": "no name"},
        "not an object",
        {"name": "no id"},
        {"id": "abc", "name": "id not a number"},
        None,
        odd,
    ]
    client, _ = make_client(FakeCivitai([json_response(200, page_body(items, "n"))]))

    page = client.list_models_page(ModelFilters())

    assert [m.id for m in page.items] == [10, 11]
    assert [(index, item_id) for index, item_id, _ in page.rejected] == [
        (1, 5),
        (2, None),
        (3, None),
        (4, None),
        (5, None),
    ]
    assert all(reason for _, _, reason in page.rejected)
    assert "name" in page.rejected[0][2]
    assert page.next_cursor == "n"
    kept_odd = page.items[1]
    assert kept_odd.type == "Other" and kept_odd.type_raw == "HoloModel"
    assert len(kept_odd.name) < 50_000


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("{Image,RentCivit}", ["Image", "RentCivit"]),
        (["Image", "RentCivit"], ["Image", "RentCivit"]),
        ("Sell", ["Sell"]),
    ],
    ids=["pg-array-literal", "json-array", "single-string"],
)
def test_allow_commercial_use_in_its_three_forms(raw: Any, expected: list[str]) -> None:
    item = model_item(1)
    item["allowCommercialUse"] = raw
    client, _ = make_client(FakeCivitai([json_response(200, page_body([item]))]))
    (model,) = client.list_models_page(ModelFilters()).items
    assert model.allow_commercial_use == expected


def test_unknown_model_type_becomes_other() -> None:
    body = fixture("model.json")
    body["type"] = "QuantumLoRA"
    client, _ = make_client(FakeCivitai([json_response(200, body)]))
    model = client.get_model(700102)
    assert (model.type, model.type_raw) == ("Other", "QuantumLoRA")


# -- single objects and the three version shapes ---------------------------------------------


def test_get_model_reads_the_remove_empty_shape() -> None:
    fake = FakeCivitai([fixture_response(200, "model.json")])
    client, _ = make_client(fake)
    model = client.get_model(700102)
    assert fake.requests[0].url.path == "/api/v1/models/700102"
    assert model.id == 700102 and model.type == "LORA"
    assert model.allow_commercial_use == ["Image"]
    # Shape (b): nulls and empty lists removed, createdAt and status kept.
    newest = model.model_versions[0]
    assert newest.status == "Published" and newest.created_at is not None
    assert [v.id for v in model.model_versions] == [800205, 800204]


def test_get_model_version_reads_the_standalone_shape() -> None:
    fake = FakeCivitai([fixture_response(200, "model-version.json")])
    client, _ = make_client(fake)
    version = client.get_model_version(800205)
    assert fake.requests[0].url.path == "/api/v1/model-versions/800205"
    assert version.model_id == 700102
    assert version.air == "urn:air:sdxl:lora:civitai:700102@800205"
    assert version.model is not None and version.model.type == "LORA"
    assert version.trained_words == ["inkwash style", "monochrome brush strokes"]
    assert (
        version.files[0].sha256
        == "790108F1746C751F69059AEB091392F14970C1A82454F1462EF124FC7C48D8CA"
    )


def test_a_single_object_of_the_wrong_shape_is_a_validation_error() -> None:
    client, _ = make_client(FakeCivitai([json_response(200, [{"id": 1}])]))
    with pytest.raises(CivitaiResponseValidationError, match="model version 9"):
        client.get_model_version(9)


@pytest.mark.parametrize("bad_id", [0, -1, True, "12"])
def test_ids_are_checked_before_any_request(bad_id: Any) -> None:
    fake = FakeCivitai([])
    client, _ = make_client(fake)
    with pytest.raises(CivitaiInputError):
        client.get_model(bad_id)
    assert fake.requests == []


# -- hashes ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "digest",
    [
        "5ead5dd9",  # AutoV1
        "5C3DE8A8",  # CRC32
        "0bdfbb4c0b",  # AutoV2, A1111 lower case
        "De104ad4F7d3",  # AutoV3, mixed case
        SHA.lower(),  # SHA256
        "6F768F6D909602F14D262B474A76AF59C401DA5054D1F7C1F0E4CAA0882331FE",  # BLAKE3
    ],
)
def test_version_by_hash_accepts_every_hash_type_in_any_case(digest: str) -> None:
    fake = FakeCivitai([fixture_response(200, "model-version-by-hash.json")])
    client, _ = make_client(fake)
    version = client.get_version_by_hash(f"  {digest} ")
    assert fake.requests[0].url.path == f"/api/v1/model-versions/by-hash/{digest.upper()}"
    assert version.id > 0 and version.model_id is not None
    assert all(f.primary in (True, False) for f in version.files)  # shape (c): never absent


@pytest.mark.parametrize("bad", ["", "0bdfbb4c0", "0bdfbb4c0bz", "g" * 64, SHA + "0", "../x"])
def test_a_malformed_hash_fails_locally(bad: str) -> None:
    fake = FakeCivitai([])
    client, _ = make_client(fake)
    with pytest.raises(CivitaiInputError) as info:
        client.get_version_by_hash(bad)
    assert isinstance(info.value, ValueError) and isinstance(info.value, EXPECTED_ERRORS)
    assert "8, 10, 12 or 64" in str(info.value)
    words = describe(info.value)
    assert words is not None and "AutoV3 (12" in words.hint
    assert fake.requests == []


def test_unknown_hash_is_not_found() -> None:
    client, _ = make_client(FakeCivitai([fixture_response(404, "error-404-model-version.json")]))
    with pytest.raises(NotFoundError, match="Model not found"):
        client.get_version_by_hash("0BDFBB4C0B")


def test_versions_by_hashes_posts_batches_of_100_uppercased_and_deduplicated() -> None:
    hashes = [f"{i:064x}" for i in range(250)] + [f"{0:064X}"]  # last one repeats the first
    version = fixture("model-version-by-hash.json")

    def handler(request: httpx.Request) -> httpx.Response:
        sent = json.loads(request.content)
        return json_response(200, [dict(version, id=i + 1) for i in range(len(sent))] + ["junk"])

    fake = FakeCivitai(handler)
    client, _ = make_client(fake)
    found = client.get_versions_by_hashes(hashes)

    bodies = [json.loads(r.content) for r in fake.requests]
    assert [r.method for r in fake.requests] == ["POST"] * 3
    assert {r.url.path for r in fake.requests} == {"/api/v1/model-versions/by-hash"}
    assert [len(b) for b in bodies] == [100, 100, 50]
    assert bodies[0][0] == "0" * 64 and all(h == h.upper() for b in bodies for h in b)
    assert len(found) == 250  # the junk entries were skipped, not fatal


def test_version_ids_by_hashes_batches_of_10000() -> None:
    hashes = [f"{i:064X}" for i in range(10_001)]
    fake = FakeCivitai(lambda _r: fixture_response(200, "model-versions-by-hash-ids.json"))
    client, _ = make_client(fake)
    matches = client.get_version_ids_by_hashes(hashes)
    assert [len(json.loads(r.content)) for r in fake.requests] == [10_000, 1]
    assert fake.requests[0].url.path == "/api/v1/model-versions/by-hash/ids"
    assert [(m.model_version_id, m.model_id) for m in matches[:2]] == [
        (800201, 700101),
        (800205, 700102),
    ]


def test_bulk_lookups_need_full_sha256_and_skip_the_request_when_empty() -> None:
    fake = FakeCivitai([])
    client, _ = make_client(fake)
    assert client.get_versions_by_hashes([]) == []
    with pytest.raises(CivitaiInputError, match="SHA256"):
        client.get_version_ids_by_hashes(["0BDFBB4C0B"])
    assert fake.requests == []


def test_normalize_hash_uppercases() -> None:
    assert normalize_hash(" de104ad4f7d3\n") == "DE104AD4F7D3"


# -- error statuses ---------------------------------------------------------------------------

ERROR_CASES = [
    ("models", 400, "error-400-query-with-page", CivitaiBadRequestError, "page param"),
    ("models", 400, "error-400-validation-limit", CivitaiBadRequestError, "limit: Too big"),
    ("models", 401, "error-401-unauthorized", UnauthorizedError, "Unauthorized"),
    ("models", 404, "error-404-model", NotFoundError, "No model with id 999999"),
    ("models", 429, "error-429-too-many-pages", RateLimitedError, "use cursors"),
    ("models", 503, "error-503-search-overloaded", ServerError, "overloaded"),
    ("download", 401, "error-401-download-login-required", LoginRequiredError, "logged in"),
    ("download", 401, "error-401-download-disabled", DownloadDisabledError, "disabled"),
    ("download", 403, "error-403-download-early-access", EarlyAccessError, "2026-09-30"),
    ("download", 403, "error-403-download-no-access", ForbiddenError, "do not have access"),
    ("download", 404, "error-404-download-file-not-found", NotFoundError, "File not found"),
    ("download", 410, "error-410-download-archived", ArchivedError, "archived"),
    ("download", 429, "error-429-download-quota", RateLimitedError, "unusual amount"),
]


@pytest.mark.parametrize(
    ("where", "status", "name", "expected", "text"),
    ERROR_CASES,
    ids=[case[2] for case in ERROR_CASES],
)
def test_every_error_status_maps_to_its_class_and_message(
    where: str, status: int, name: str, expected: type[CivitaiStatusError], text: str
) -> None:
    fake = FakeCivitai(lambda _r: fixture_response(status, f"{name}.json"))
    client, _ = make_client(fake, retry=NO_RETRY)
    with pytest.raises(CivitaiStatusError) as info:
        if where == "download":
            client.resolve_download(800201)
        else:
            client.list_models_page(ModelFilters())
    error = info.value
    assert type(error) is expected
    assert isinstance(error, CivitaiError)
    assert error.status_code == status
    assert text in error.message
    assert f"HTTP {status}" in error.message
    assert "\n" not in error.message
    assert error.url.startswith(API + ("/api/download/" if where == "download" else "/api/v1/"))
    words, root = describe(error), describe(CivitaiError("x"))
    assert words is not None and root is not None
    assert words.hint and words.hint != root.hint and words.title != root.title


def test_early_access_carries_the_deadline() -> None:
    body = "error-403-download-early-access.json"
    client, _ = make_client(FakeCivitai([fixture_response(403, body)]))
    with pytest.raises(EarlyAccessError) as info:
        client.resolve_download(800201)
    assert info.value.deadline == datetime(2026, 9, 30, 17, 0, tzinfo=UTC)
    words = describe(info.value)
    assert words is not None and "2026-09-30 17:00 UTC" in words.hint


def test_login_required_hint_says_how_to_set_the_key() -> None:
    body = "error-401-download-login-required.json"
    client, _ = make_client(FakeCivitai([fixture_response(401, body)]), api_key=None)
    with pytest.raises(LoginRequiredError) as info:
        client.resolve_download(800201)
    words = describe(info.value)
    assert words is not None and words.title == "Login required"
    assert "CIVITAI_API_KEY" in words.hint
    assert "assetmgr config set-key" in words.hint


def test_a_plain_text_error_body_becomes_the_message() -> None:
    answer = httpx.Response(502, content=b"upstream connect error\nreset reason: overflow")
    client, _ = make_client(FakeCivitai([answer]), retry=NO_RETRY)
    with pytest.raises(ServerError) as info:
        client.get_model(1)
    assert info.value.message.startswith("upstream connect error (HTTP 502")


def test_an_html_error_page_falls_back_to_the_reason_phrase() -> None:
    answer = httpx.Response(429, content=b"<!DOCTYPE html><html>Cloudflare</html>")
    client, _ = make_client(FakeCivitai([answer]), retry=NO_RETRY)
    with pytest.raises(RateLimitedError) as info:
        client.get_model(1)
    assert info.value.message.startswith("Too Many Requests (HTTP 429")
    assert "Cloudflare" not in info.value.message


def test_a_generic_500_body_keeps_message_and_error() -> None:
    body = {"message": "An unexpected error occurred", "error": "db timeout"}
    client, _ = make_client(FakeCivitai([json_response(500, body)]), retry=NO_RETRY)
    with pytest.raises(ServerError, match="An unexpected error occurred: db timeout"):
        client.get_model_version(5)


@pytest.mark.parametrize("status", [400, 401, 403, 404, 405, 410])
def test_other_4xx_statuses_are_not_retried(status: int) -> None:
    fake = FakeCivitai(lambda _r: json_response(status, {"error": "nope"}))
    client, sleeps = make_client(fake)
    with pytest.raises(CivitaiStatusError):
        client.get_model(1)
    assert len(fake.requests) == 1
    assert sleeps == []


# -- retries ----------------------------------------------------------------------------------


def test_retry_after_seconds_is_honoured() -> None:
    answers = [
        fixture_response(503, "error-503-search-overloaded.json", {"Retry-After": "2"}),
        fixture_response(200, "models-list.json"),
    ]
    client, sleeps = make_client(FakeCivitai(answers))
    page = client.list_models_page(ModelFilters(query="ink"))
    assert len(page.items) == 2
    assert sleeps == [2.0]


def test_retry_after_is_capped() -> None:
    answers = [
        json_response(429, {"error": "slow down"}, {"Retry-After": "3600"}),
        json_response(429, {"error": "slow down"}, {"Retry-After": "3600"}),
        fixture_response(200, "model.json"),
    ]
    client, sleeps = make_client(FakeCivitai(answers), retry=RetryPolicy(retry_after_cap=45.0))
    client.get_model(700102)
    assert sleeps == [45.0, 45.0]


def test_retry_after_as_http_date() -> None:
    future = email.utils.formatdate(time.time() + 3600, usegmt=True)
    past = email.utils.formatdate(time.time() - 3600, usegmt=True)
    answers = [
        json_response(503, {"error": "busy"}, {"Retry-After": future}),
        json_response(503, {"error": "busy"}, {"Retry-After": past}),
        fixture_response(200, "model.json"),
    ]
    client, sleeps = make_client(FakeCivitai(answers))
    client.get_model(700102)
    assert sleeps == [60.0, 0.0]


def test_429_without_retry_after_backs_off_exponentially_then_raises() -> None:
    fake = FakeCivitai(lambda _r: fixture_response(429, "error-429-too-many-pages.json"))
    client, sleeps = make_client(fake)
    with pytest.raises(RateLimitedError) as info:
        client.list_models_page(ModelFilters())
    assert len(fake.requests) == 6
    assert sleeps == [0.5, 1.0, 2.0, 4.0, 8.0]
    assert info.value.retry_after is None


def test_backoff_is_jittered_within_the_capped_ceiling() -> None:
    fake = FakeCivitai(lambda _r: json_response(503, {"error": "down"}))
    policy = RetryPolicy(max_attempts=8, base_delay=1.0, max_delay=5.0)
    client, sleeps = make_client(fake, retry=policy)
    with pytest.raises(ServerError):
        client.get_model(1)
    ceilings = [1.0, 2.0, 4.0, 5.0, 5.0, 5.0, 5.0]
    assert len(sleeps) == len(ceilings)
    assert all(0.0 <= s <= c for s, c in zip(sleeps, ceilings, strict=True))
    assert len(set(sleeps)) > 1  # random, not a constant


def test_the_download_quota_429_is_not_retried() -> None:
    fake = FakeCivitai(lambda _r: fixture_response(429, "error-429-download-quota.json"))
    client, sleeps = make_client(fake)
    with pytest.raises(RateLimitedError):
        client.resolve_download(800201)
    assert len(fake.requests) == 1 and sleeps == []


@pytest.mark.parametrize(
    "dropped",
    [
        httpx.RemoteProtocolError("Server disconnected without sending a response."),
        httpx.ReadError("connection reset by peer"),
        httpx.ConnectError("connection refused"),
        httpx.ReadTimeout("timed out"),
    ],
    ids=["disconnected", "reset", "refused", "timeout"],
)
def test_a_dropped_connection_is_retried(dropped: Exception) -> None:
    fake = FakeCivitai([dropped, fixture_response(200, "model.json")])
    client, sleeps = make_client(fake)
    assert client.get_model(700102).id == 700102
    assert len(fake.requests) == 2
    assert sleeps == [0.5]


def test_connection_failures_exhausted_raise_a_connection_error() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    fake = FakeCivitai(handler)
    client, sleeps = make_client(fake, retry=RetryPolicy(max_attempts=3, jitter=lambda: 1.0))
    with pytest.raises(CivitaiConnectionError) as info:
        client.get_model(1)
    assert isinstance(info.value, ConnectionError)
    assert "after 3 attempts" in info.value.message
    assert len(fake.requests) == 3
    assert sleeps == [0.5, 1.0]


def test_server_errors_exhausted_raise_server_error() -> None:
    fake = FakeCivitai(lambda _r: json_response(502, {"error": "bad gateway"}))
    client, sleeps = make_client(fake)
    with pytest.raises(ServerError) as info:
        client.get_model(1)
    assert info.value.status_code == 502
    assert len(fake.requests) == 6 and len(sleeps) == 5


def test_bulk_posts_are_retried_too() -> None:
    answers = [
        json_response(504, {"error": "gateway timeout"}),
        fixture_response(200, "model-versions-by-hash-ids.json"),
    ]
    fake = FakeCivitai(answers)
    client, sleeps = make_client(fake)
    assert len(client.get_version_ids_by_hashes([SHA])) == 2
    assert [r.content for r in fake.requests] == [json.dumps([SHA]).encode()] * 2
    assert sleeps == [0.5]


@pytest.mark.parametrize(
    ("value", "expected"),
    [("2", 2.0), ("0.5", 0.5), (" 7 ", 7.0), ("-3", 0.0), ("soon", None), ("", None), (None, None)],
)
def test_parse_retry_after(value: str | None, expected: float | None) -> None:
    assert parse_retry_after(value) == expected


def test_parse_retry_after_date_uses_the_given_clock() -> None:
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:10 GMT", now=1445412480.0) == 10.0


def test_retry_policy_rejects_zero_attempts() -> None:
    with pytest.raises(ValueError):
        RetryPolicy(max_attempts=0)


# -- authentication and secrets ---------------------------------------------------------------


def test_the_key_goes_in_a_bearer_header_never_in_the_url() -> None:
    fake = FakeCivitai(lambda _r: fixture_response(200, "models-list-last-page.json"))
    client, _ = make_client(fake)
    client.list_models_page(ModelFilters())
    request = fake.requests[0]
    assert request.headers["authorization"] == f"Bearer {KEY}"
    assert "token" not in request.url.params
    assert KEY not in str(request.url)
    user_agent = request.headers["user-agent"]
    assert user_agent.startswith("assetmgr/")
    assert not any(w in user_agent.lower() for w in ("mozilla", "chrome", "safari"))


def test_no_key_means_no_authorization_header() -> None:
    fake = FakeCivitai([fixture_response(200, "model.json")])
    client, _ = make_client(fake, api_key=None)
    client.get_model(700102)
    assert "authorization" not in fake.requests[0].headers


def test_a_base_url_with_a_query_is_refused() -> None:
    with pytest.raises(CivitaiInputError):
        CivitaiClient(base_url=f"{API}?token={KEY}")


def test_the_key_never_reaches_the_logs_or_error_messages(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    location = fixture("download-redirect.json")["headers"]["Location"]
    answers: list[httpx.Response | Exception] = [
        httpx.ReadError(f"proxy reset the request with Bearer {KEY}"),
        json_response(503, {"error": f"echo of Bearer {KEY}"}),
        json_response(307, None, {"Location": location}),
        json_response(401, {"error": "Unauthorized", "message": f"bad key {KEY}"}),
    ]
    client, _ = make_client(FakeCivitai(answers))
    ticket = client.resolve_download(800201)
    with pytest.raises(UnauthorizedError) as info:
        client.get_model(1)

    assert "retry" in caplog.text  # the retries were logged...
    assert "/api/download/models/800201" in caplog.text
    assert KEY not in caplog.text  # ...without the key
    assert "0123456789abcdef_dnld" not in caplog.text  # nor the storage credential
    assert KEY not in str(info.value) and "REDACTED" in str(info.value)
    assert "0123456789abcdef_dnld" not in repr(ticket)
    assert KEY not in repr(client)


def test_redact_url_blanks_every_query_value_and_drops_user_info() -> None:
    url = (
        "https://user:pw-77@h.example/p?a=1&token=abc&Authorization=3_xyz&X-Amz-Signature=f00"
        "&X-Amz-Credential=cred&keep=yes"
    )
    redacted = redact_url(url)
    assert redacted == (
        "https://h.example/p?a=REDACTED&token=REDACTED&Authorization=REDACTED"
        "&X-Amz-Signature=REDACTED&X-Amz-Credential=REDACTED&keep=REDACTED"
    )
    for secret in ("abc", "3_xyz", "f00", "cred", "pw-77", "user"):
        assert secret not in redacted


# -- downloads --------------------------------------------------------------------------------


def test_resolve_download_returns_the_signed_url_without_following_it() -> None:
    recorded = fixture("download-redirect.json")
    location = recorded["headers"]["Location"]
    fake = FakeCivitai(
        lambda r: (
            httpx.Response(307, headers={"Location": location}, text=recorded["body_text"])
            if r.url.host == "civitai.com"
            else httpx.Response(200, content=b"model bytes")
        )
    )
    client, _ = make_client(fake)

    ticket = client.resolve_download(800201)

    assert ticket.url == location  # verbatim: the signature must survive
    assert ticket.filename == "harborlightMix_v20.safetensors"
    assert ticket.version_id == 800201 and ticket.file_id is None
    assert [r.url.host for r in fake.requests] == ["civitai.com"]
    assert fake.requests[0].url.path == "/api/download/models/800201"
    assert fake.requests[0].headers["authorization"] == f"Bearer {KEY}"


def test_an_injected_client_that_follows_redirects_still_does_not_follow() -> None:
    location = fixture("download-redirect.json")["headers"]["Location"]
    fake = FakeCivitai(
        lambda r: (
            httpx.Response(302, headers={"Location": location})
            if r.url.host == "civitai.com"
            else httpx.Response(200)
        )
    )
    with httpx.Client(transport=httpx.MockTransport(fake), follow_redirects=True) as http:
        client = CivitaiClient(api_key=KEY, http=http)
        ticket = client.resolve_download(800201)
        client.close()
        assert not http.is_closed  # not ours to close
    assert ticket.url == location
    assert [r.url.host for r in fake.requests] == ["civitai.com"]


def test_resolve_download_sends_file_selectors_and_drops_a_token_param() -> None:
    fake = FakeCivitai([json_response(307, None, {"Location": "https://s.example/f?x=1"})])
    client, _ = make_client(fake)
    params = {"type": "Model", "format": "SafeTensor", "fp": None, "token": KEY}
    ticket = client.resolve_download(800201, file_id=900302, params=params)
    query = fake.requests[0].url.params
    assert list(query.multi_items()) == [
        ("type", "Model"),
        ("format", "SafeTensor"),
        ("fileId", "900302"),
    ]
    assert ticket.file_id == 900302 and ticket.filename is None


def test_a_redirect_to_the_login_page_means_login_required() -> None:
    location = f"{API}/login?returnUrl=%2Fmodels%2F1&reason=download-auth"
    client, _ = make_client(FakeCivitai([json_response(307, None, {"Location": location})]))
    with pytest.raises(LoginRequiredError) as info:
        client.resolve_download(800201)
    assert info.value.status_code == 307


def test_a_redirect_to_the_version_page_means_early_access() -> None:
    fake = FakeCivitai([json_response(302, None, {"Location": "/model-versions/800201"})])
    client, _ = make_client(fake)
    with pytest.raises(EarlyAccessError):
        client.resolve_download(800201)


def test_a_relative_location_resolves_against_the_api_host() -> None:
    fake = FakeCivitai([json_response(307, None, {"Location": "/storage/abc/file.bin?sig=1"})])
    client, _ = make_client(fake, base_url="http://127.0.0.1:8765")
    ticket = client.resolve_download(3)
    assert ticket.url == "http://127.0.0.1:8765/storage/abc/file.bin?sig=1"


@pytest.mark.parametrize(
    "answer",
    [
        httpx.Response(200, content=b"file bytes"),
        httpx.Response(307),
        httpx.Response(307, headers={"Location": "file:///etc/passwd"}),
    ],
    ids=["no-redirect", "no-location", "odd-scheme"],
)
def test_a_download_answer_that_is_not_a_usable_redirect(answer: httpx.Response) -> None:
    client, _ = make_client(FakeCivitai([answer]))
    with pytest.raises(CivitaiResponseValidationError):
        client.resolve_download(800201)


@pytest.mark.parametrize(
    "location",
    [
        "https://mirror.example/api/v1/models/1",
        "http://civitai.com/api/v1/models/1",  # same host, another scheme
        "https://civitai.com:8443/api/v1/models/1",  # same host, another port
    ],
)
def test_api_redirects_to_another_origin_are_refused_unfollowed(location: str) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/api/v1/models/1" and request.url.port is None:
            return httpx.Response(301, headers={"Location": location})
        return fixture_response(200, "model.json")

    fake = FakeCivitai(handler)
    client, _ = make_client(fake)
    with pytest.raises(CrossOriginRedirectError) as info:
        client.get_model(1)
    assert [str(r.url) for r in fake.requests] == ["https://civitai.com/api/v1/models/1"]
    assert info.value.location == location and info.value.status_code == 301
    assert location in info.value.message and "not followed" in info.value.message


def test_same_origin_redirects_are_followed_with_the_key() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/api/v1/models/1":
            return httpx.Response(308, headers={"Location": "/api/v1/models/700102"})
        return fixture_response(200, "model.json")

    fake = FakeCivitai(handler)
    client, _ = make_client(fake)
    assert client.get_model(1).id == 700102
    assert [r.url.path for r in fake.requests] == ["/api/v1/models/1", "/api/v1/models/700102"]
    assert all(r.headers["authorization"] == f"Bearer {KEY}" for r in fake.requests)


def test_a_same_origin_redirect_loop_stops_at_the_limit() -> None:
    fake = FakeCivitai(lambda r: httpx.Response(302, headers={"Location": r.url.path}))
    client, _ = make_client(fake)
    with pytest.raises(CivitaiConnectionError, match="TooManyRedirects"):
        client.get_model(1)
    assert len(fake.requests) == 21  # the first request and httpx's default of 20 redirects


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ('attachment; filename="harborlightMix_v20.safetensors"', "harborlightMix_v20.safetensors"),
        (
            "attachment; filename*=UTF-8''na%C3%AFve%20lora.safetensors; filename=\"x\"",
            "naïve lora.safetensors",
        ),
        ('attachment; filename="../../.bashrc"', ".bashrc"),
        (r'attachment; filename="C:\temp\evil.ckpt"', "evil.ckpt"),
        ('attachment; filename=".."', None),
        ("attachment", None),
        ("attachment; filename=plain.pt", "plain.pt"),
    ],
)
def test_filename_from_disposition(header: str, expected: str | None) -> None:
    assert filename_from_disposition(header) == expected


def test_legacy_r2_location_gives_the_filename_too() -> None:
    location = fixture("download-redirect.json")["legacy_r2_location_example_2024"]
    location = location.replace("<account>", "acct").replace("<cred>", "c").replace("<hex>", "ab")
    client, _ = make_client(FakeCivitai([json_response(307, None, {"Location": location})]))
    assert client.resolve_download(1).filename == "harborlightMix_v20.safetensors"


# -- lifecycle and surface --------------------------------------------------------------------


def test_the_client_closes_the_http_client_it_created() -> None:
    with CivitaiClient(transport=httpx.MockTransport(FakeCivitai([]))) as client:
        http = client._http
        assert not http.is_closed
    assert http.is_closed


def test_public_names_are_sorted_and_importable() -> None:
    assert civitai_pkg.__all__ == sorted(civitai_pkg.__all__)
    for name in civitai_pkg.__all__:
        assert getattr(civitai_pkg, name) is not None
    assert issubclass(civitai_pkg.CivitaiStatusError, CivitaiError)
