"""The TUI's catalog reads (`assetmgr.app.queries`) without the UI: paging, filters, weights."""

from __future__ import annotations

from sqlalchemy import Engine
from sqlmodel import Session

from assetmgr.app import queries as q


def test_pages_cover_the_listing_once(engine: Engine, many: int) -> None:
    query = q.BrowseQuery(nsfw=True)
    with Session(engine) as session:
        total = q.count_models(session, query)
        seen: list[int] = []
        offset = 0
        while True:
            page = q.fetch_page(session, query, offset=offset, limit=97)
            seen.extend(row.id for row in page)
            offset += len(page)
            if len(page) < 97:
                break
    assert len(seen) == len(set(seen)) == total >= many
    # Every sort, both ways, pages without overlap (ties are broken by id).
    with Session(engine) as session:
        for sort in q.SORT_KEYS:
            for descending in (True, False):
                query = q.BrowseQuery(sort=sort, descending=descending, nsfw=True)
                first = q.fetch_page(session, query, offset=0, limit=50)
                second = q.fetch_page(session, query, offset=50, limit=50)
                assert len(first) == 50, (sort, descending)
                assert not {r.id for r in first} & {r.id for r in second}, (sort, descending)


def test_filters(engine: Engine) -> None:
    with Session(engine) as session:
        loras = q.fetch_page(session, q.BrowseQuery(types=("lora",)), offset=0, limit=50)
        assert {r.type for r in loras} == {"LORA"} and len(loras) >= 2
        tagged = q.fetch_page(
            session, q.BrowseQuery(tags=("Photorealistic", "cinematic")), offset=0, limit=50
        )
        assert [r.name for r in tagged] == ["Cinematic Realism XL"]
        assert q.count_models(session, q.BrowseQuery(search="ink wash")) == 1
        assert q.fetch_page(session, q.BrowseQuery(search="!!"), offset=0, limit=5) == []


def test_suggest_weight() -> None:
    assert q.suggest_weight(["Use weight 0.6-0.9."], []).value == 0.75
    assert q.suggest_weight(["Strength: 0.8"], []) == q.Weight(0.8, 0.8, 0.8, "description")
    from_prompts = q.suggest_weight([None], ["a <lora:x:0.7>", "b <lora:x:0.7>", "<lora:x:1>"])
    assert (from_prompts.value, from_prompts.source) == (0.7, "preview prompts")
    assert q.suggest_weight([], []) == q.Weight(1.0)


def test_detail_of_a_demo_lora(engine: Engine) -> None:
    with Session(engine) as session:
        detail = q.load_detail(session, 910002)
    assert detail.name == "Ink Wash Style" and detail.type == "LORA"
    newest = detail.versions[0]
    assert newest.trained_words == ["inkwash style", "monochrome brush strokes"]
    assert newest.preview_path is not None and newest.preview_path.name == f"{newest.id}.png"
    primary = newest.files[0]
    assert primary.primary and primary.local_state is None
    assert [h.name for h in primary.hashes][:2] == ["SHA256", "AutoV1"]
    assert all(h.state == "unchecked" for h in primary.hashes)
