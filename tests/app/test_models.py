"""The catalog reads of the command line and the demo catalog, through the application layer
on a real catalog."""

from __future__ import annotations

import pytest
from sqlalchemy import Engine

from assetmgr.app.context import AppContext
from assetmgr.app.models import (
    access_words,
    is_demo_catalog,
    list_models,
    lookup_hash,
    seed_demo,
    seed_demo_if_empty,
    show_model,
)
from assetmgr.config import Settings
from assetmgr.wording import describe


def test_the_demo_is_seeded_once_into_an_empty_catalog(settings: Settings, engine: Engine) -> None:
    with AppContext(settings, engine=engine) as ctx:
        assert list_models(ctx).catalog_empty and not is_demo_catalog(ctx)
        assert seed_demo_if_empty(ctx) is True
        assert is_demo_catalog(ctx)
        assert seed_demo_if_empty(ctx) is False
        again = seed_demo(ctx)  # idempotent: the same rows upserted
        assert list_models(ctx).total == again["models"]


def test_list_cuts_at_the_limit_and_counts_the_rest(settings: Settings, engine: Engine) -> None:
    with AppContext(settings, engine=engine) as ctx:
        counts = seed_demo(ctx)
        every = list_models(ctx)
        assert not every.cut and every.total == counts["models"] == len(every.objects)
        cut = list_models(ctx, limit=2)
        assert cut.cut and len(cut.objects) == 2 and cut.total == counts["models"]
        assert list_models(ctx, search="zzzz-nothing-matches", limit=5).objects == []
        assert not list_models(ctx, search="zzzz-nothing-matches").catalog_empty
        first = every.objects[0]
        assert show_model(ctx, first["id"])["name"] == first["name"]


def test_show_and_lookup_say_what_the_catalog_does_not_hold(
    settings: Settings, engine: Engine
) -> None:
    with AppContext(settings, engine=engine) as ctx:
        with pytest.raises(Exception) as caught:
            show_model(ctx, 424242)
        words = describe(caught.value)
        assert words is not None and "424242" in words.message and words.hint
        with pytest.raises(Exception) as caught:
            lookup_hash(ctx, "ab" * 32, offline=True)
        words = describe(caught.value)
        assert words is not None and words.message == (
            f"no file with hash {'AB' * 32} in the local catalog"
        )


def test_access_rules_are_worded_by_the_catalog() -> None:
    assert "early access" in access_words("early_access", "2030-01-01T00:00:00+00:00").lower()
