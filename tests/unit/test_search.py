"""Full-text search over the catalog (SQLite FTS5 and PostgreSQL tsvector), and the text helpers.

Database tests run on SQLite and, when ASSETMGR_TEST_PG_URL is set, on PostgreSQL; they assert
sets of matches (and only clear-cut orderings), since the two backends rank a little differently.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, delete

from catalog import repo
from catalog.civitai import types as api
from catalog.db import session_scope
from catalog.models import Model
from catalog.search import fts5_query, search_models, tsquery
from catalog.text import html_to_text, search_text, search_tokens
from tests import dbfixtures
from tests.dbfixtures import fixture_json, fixture_models, model_payload

catalog_engine = dbfixtures.catalog_engine

NOW = datetime(2026, 1, 2, tzinfo=UTC)
HARBOR, INK = 700101, 700102


def _upsert(engine: Engine, models: list[api.Model], at: datetime = NOW) -> None:
    with session_scope(engine, write=True) as s:
        repo.upsert_models(s, models, seen_at=at)


def _search(engine: Engine, text: str, **filters: Any) -> list[int]:
    with session_scope(engine) as s:
        return search_models(s, text, **filters)


@pytest.fixture
def catalog(catalog_engine: Engine) -> Engine:
    """The two fixture models plus a third with hostile HTML and an accented name."""
    tricky = model_payload(
        3,
        name="Café Noir Portraits",
        description=(
            "<p>Moody &amp; soft <b>chiaroscuro</b> light.</p>"
            "<script>var secretscript = 'xyzzy';</script>"
            "<style>.hiddenstyle { color: red }</style>"
            "<p>Works&nbsp;with <a href='https://example.invalid/linktarget'>anything</a>.</p>"
        ),
        type="Checkpoint",
        nsfw=True,
        creator={"username": "lumière_studio"},
        tags=["portrait", "film noir"],
    )
    _upsert(catalog_engine, [*fixture_models(), api.Model.model_validate(tricky)])
    return catalog_engine


# --- matching -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("ink wash", {INK}),
        ("ink was", {INK}),  # search as you type: the last word is a prefix
        ("Ink Wash Style", {INK}),
        ("i", {INK}),  # a single letter is a prefix too
        ("w", {INK, 3}),
        ("harb", {HARBOR}),
        ("HARBORLIGHT", {HARBOR}),
        ("mix harbor", {HARBOR}),  # word order does not matter
        ("traditional", {INK}),  # a tag
        ("photoreal", {HARBOR}),  # a tag, by prefix
        ("monochrome brush", {INK}),  # a trained word
        ("inkwash", {INK}),  # a trained word
        ("quietbrush", {INK}),  # the creator
        ("pixel_foundry", {HARBOR}),  # the creator, underscore and all
        ("pixel", {HARBOR}),
        ("coastal", {HARBOR}),  # the model description
        ("sumi", {INK}),  # "Sumi-e", in the description
        ("bleed", {INK}),  # a version description
        ("v2", {HARBOR}),  # a version name
        ("pony", {INK}),  # a base model
        ("ink harbor", set()),  # every word must match
        ("zzzz", set()),
    ],
)
def test_search_matches(catalog: Engine, query: str, expected: set[int]) -> None:
    assert set(_search(catalog, query)) == expected


def test_prefix_of_last_word_ranks_the_name_match_first(catalog: Engine) -> None:
    assert _search(catalog, "ink was")[0] == INK


def test_name_match_outranks_description_match(catalog_engine: Engine) -> None:
    in_name = model_payload(1, name="Lantern Festival", description="<p>Paper.</p>", tags=[])
    in_text = model_payload(2, name="Other", description="<p>A lantern, once.</p>", tags=[])
    _upsert(catalog_engine, [api.Model.model_validate(p) for p in (in_text, in_name)])
    assert _search(catalog_engine, "lantern") == [1, 2]


def test_html_is_stripped_before_indexing(catalog: Engine) -> None:
    assert _search(catalog, "chiaroscuro") == [3]
    assert _search(catalog, "moody soft") == [3]
    assert _search(catalog, "secretscript") == []  # <script> content is not text
    assert _search(catalog, "xyzzy") == []
    assert _search(catalog, "hiddenstyle") == []  # nor is <style>
    assert _search(catalog, "linktarget") == []  # attributes are not text
    assert _search(catalog, "href") == []
    assert _search(catalog, "amp") == []  # entities are unescaped, not indexed
    with session_scope(catalog) as s:
        text = repo.get_model(s, 3).description_text
    assert text is not None and "secretscript" not in text and "<" not in text
    assert "Moody & soft chiaroscuro light." in text


@pytest.mark.parametrize("query", ["cafe", "CAFÉ", "café noir", "lumiere", "LUMIÈRE_studio"])
def test_accents_and_case_are_folded(catalog: Engine, query: str) -> None:
    assert _search(catalog, query) == [3]


@pytest.mark.parametrize(
    "query",
    [
        '"',
        '""',
        "*",
        "ink*",
        "NEAR(",
        "NEAR(ink wash)",
        "NEAR(ink wash, 2)",
        "-",
        "-ink",
        "ink -wash",
        "ink OR harbor",
        "ink AND",
        "NOT ink",
        ")(",
        '"ink wash',
        "name:ink",
        "{name tags}: ink",
        "^ink",
        "ink + wash",
        "ink:*",
        "ink & !wash",
        "<->",
        "'",
        "\\",
        "%_",
        "\x00ink",
        "ink " * 100,
    ],
)
def test_hostile_input_never_raises(catalog: Engine, query: str) -> None:
    found = _search(catalog, query)
    assert isinstance(found, list)
    assert set(found) <= {HARBOR, INK, 3}


def test_hostile_input_is_treated_as_words(catalog: Engine) -> None:
    assert _search(catalog, '"ink wash') == [INK]
    assert _search(catalog, "NEAR(ink wash)") == []  # "near" is just a word here
    assert _search(catalog, "-ink") == [INK]
    assert _search(catalog, "name:ink") == []


@pytest.mark.parametrize("query", ["", "   ", "!!!", "- * -"])
def test_no_words_no_results(catalog: Engine, query: str) -> None:
    assert _search(catalog, query) == []


def test_search_filters(catalog: Engine) -> None:
    assert set(_search(catalog, "w")) == {INK, 3}
    assert _search(catalog, "w", types=["lora"]) == [INK]
    assert _search(catalog, "w", nsfw=False) == [INK]
    assert _search(catalog, "w", base_models=["SDXL 1.0"]) == [3]
    assert _search(catalog, "w", local_only=True) == []
    assert len(_search(catalog, "w", limit=1)) == 1
    assert _search(catalog, "w", limit=1, offset=5) == []


def test_broad_queries_list_name_matches_first_newest_first(
    catalog_engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past RANK_CAP matches, SQLite skips bm25: name matches first, then the rest, by id."""
    payloads = [
        model_payload(1, name="Lantern A", tags=[]),
        model_payload(2, name="Other B", tags=["lantern"]),
        model_payload(3, name="Lantern C", tags=[]),
        model_payload(
            4, name="Other D", description="<p>a lantern</p>", tags=[], type="Checkpoint"
        ),
        model_payload(5, name="Unrelated", tags=[]),
    ]
    _upsert(catalog_engine, [api.Model.model_validate(p) for p in payloads])
    monkeypatch.setattr("catalog.search.RANK_CAP", 2)
    found = _search(catalog_engine, "lant")
    assert set(found) == {1, 2, 3, 4}
    if dbfixtures.backend(catalog_engine) == "sqlite":
        assert found == [3, 1, 4, 2]
        assert _search(catalog_engine, "lant", limit=2, offset=1) == [1, 4]
        assert _search(catalog_engine, "lant", types=["Checkpoint"]) == [4]
        assert _search(catalog_engine, "other lant") == [4, 2]
    assert set(_search(catalog_engine, "lant", limit=10, offset=3)) <= {1, 2, 3, 4}
    assert len(_search(catalog_engine, "lant", limit=10, offset=3)) == 1


def test_search_follows_updates_and_gone_models(catalog: Engine) -> None:
    renamed = fixture_json("models-list.json")["items"][1]
    renamed = dict(renamed, name="Sumi Brush Kit", tags=["kit"])
    _upsert(catalog, [api.Model.model_validate(renamed)], at=NOW + timedelta(hours=1))
    assert _search(catalog, "wash style") == [INK]  # still in its description
    assert _search(catalog, "traditional") == []  # the old tag is gone from the index
    assert _search(catalog, "kit") == [INK]
    with session_scope(catalog, write=True) as s:
        repo.mark_gone(s, [INK], at=NOW)
    assert _search(catalog, "kit") == []
    assert _search(catalog, "kit", include_gone=True) == [INK]


def test_index_stays_consistent_through_updates_and_deletes(catalog: Engine) -> None:
    renamed = dict(fixture_json("models-list.json")["items"][0], name="Harbor Renamed")
    _upsert(catalog, [api.Model.model_validate(renamed)], at=NOW + timedelta(hours=1))
    version = api.ModelVersion.model_validate(fixture_json("model-version.json"))
    with session_scope(catalog, write=True) as s:
        repo.upsert_version(s, version)
        s.execute(delete(Model).where(Model.id == 3))  # cascades to its search document
    assert _search(catalog, "cafe") == []
    assert _search(catalog, "renamed") == [HARBOR]
    if dbfixtures.backend(catalog) == "sqlite":
        with catalog.begin() as conn:  # raises if the FTS index and its content disagree
            conn.exec_driver_sql("INSERT INTO model_fts(model_fts) VALUES ('integrity-check')")


def test_standalone_version_is_searchable(catalog_engine: Engine) -> None:
    version = api.ModelVersion.model_validate(fixture_json("model-version.json"))
    with session_scope(catalog_engine, write=True) as s:
        repo.upsert_version(s, version)
    assert _search(catalog_engine, "ink wash") == [version.model_id]
    assert _search(catalog_engine, "monochrome") == [version.model_id]


def test_list_models_search_returns_rows_best_first(catalog: Engine) -> None:
    with session_scope(catalog) as s:
        rows = repo.list_models(s, search="ink was")
        assert [m.name for m in rows] == ["Ink Wash Style"]
        assert [m.id for m in repo.list_models(s, search="w", sort="name")] == [3, INK]


# --- query building and text helpers (no database) ---------------------------------------------


def test_fts5_and_tsquery_text() -> None:
    assert fts5_query('ink "wash" NEAR(x)*') == '"ink"* "wash"* "near"* "x"*'
    assert tsquery("Ink was") == "ink:* & was:*"
    assert fts5_query("ink ink INK") == '"ink"*'
    assert fts5_query("") is None and tsquery("!!") is None
    assert len(fts5_query(" ".join(f"w{i}" for i in range(100))) or "") < 200


def test_search_tokens() -> None:
    assert search_tokens("Ink-Wash_Style v2.0") == ["ink", "wash", "style", "v2", "0"]
    assert search_tokens("Café ÉLAN straße") == ["cafe", "elan", "strasse"]
    assert search_tokens("日本語 テスト") == ["日本語", "テスト"]
    assert search_tokens("x" * 65 + " ok") == ["ok"]  # hashes and junk are not words
    assert search_tokens(None) == []


def test_search_text_caps_on_a_word_boundary() -> None:
    assert search_text("alpha beta", "gamma", None, limit=100) == "alpha beta gamma"
    assert search_text("alpha beta gamma", limit=12) == "alpha beta"


@pytest.mark.parametrize(
    ("html", "text"),
    [
        (None, None),
        ("", ""),
        ("plain text", "plain text"),
        ("<p>one</p><p>two</p>", "one\n\ntwo"),  # paragraphs keep a blank line
        ("a<br>b", "a\nb"),
        ("<p>Tom &amp; Jerry &lt;3 caf&eacute; &#x2014; &nbsp;ok</p>", "Tom & Jerry <3 café — ok"),
        ("<script>alert('x')</script>shown", "shown"),
        ("<SCRIPT type='text/javascript'>bad()</SCRIPT>shown", "shown"),
        ("<style>p { color: red }</style><p>shown</p>", "shown"),
        ("<p>unclosed <b>bold", "unclosed bold"),
        ("<p>  spaced \n\n\n\n out  </p>", "spaced\n\nout"),
        ("<img src=x onerror=alert(1)>after", "after"),
        ("<!-- a comment -->after", "after"),
    ],
)
def test_html_to_text(html: str | None, text: str | None) -> None:
    assert html_to_text(html) == text
