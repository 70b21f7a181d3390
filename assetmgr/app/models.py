"""The catalog's command-line reads and the demo catalog: models list/show, hash lookup."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from assetmgr.app.context import AppContext


@dataclass(frozen=True)
class ModelList:
    """Model objects of the JSON contract; `total` is known when the list was cut or when
    every match was asked for."""

    objects: list[dict[str, Any]]
    total: int | None
    cut: bool
    catalog_empty: bool


def list_models(
    ctx: AppContext,
    *,
    types: Sequence[str] = (),
    base_models: Sequence[str] = (),
    search: str | None = None,
    local_only: bool = False,
    limit: int | None = None,
) -> ModelList:
    """Models matching the filters, at most `limit` (None: all)."""
    from catalog import repo
    from catalog.db import session_scope
    from catalog.search import count_models

    filters: dict[str, Any] = {
        "types": list(types) or None,
        "base_models": list(base_models) or None,
        "search": search,
        "local_only": local_only,
    }
    with session_scope(ctx.engine) as session:
        total = count_models(session, **filters) if limit is None else None
        # One row past the limit tells whether the list is cut, without counting first.
        fetch = limit + 1 if limit is not None else max(total or 0, 1)
        rows = repo.list_models(session, **filters, limit=fetch)
        cut = limit is not None and len(rows) > limit
        if cut:
            rows = rows[:limit]
            total = count_models(session, **filters)
        objects = [repo.model_to_dict(row) for row in rows]
        catalog_empty = not objects and count_models(session) == 0
    return ModelList(objects, total, cut, catalog_empty)


def show_model(ctx: AppContext, model_id: int) -> dict[str, Any]:
    """One model object of the JSON contract, each version with its ``images``
    (`NotInCatalogError` when not held)."""
    from assetmgr.app.previews import add_images
    from catalog import repo
    from catalog.db import session_scope

    with session_scope(ctx.engine) as session:
        obj = repo.model_to_dict(repo.get_model(session, model_id))
    add_images(ctx, obj)
    return obj


def access_words(code: str, until: str | None) -> str:
    """A download restriction of the model object (``access``) in words."""
    from catalog.access import AccessRule, describe

    return describe(AccessRule(code, datetime.fromisoformat(until) if until else None))


def lookup_hash(ctx: AppContext, digest: str, *, offline: bool = False) -> list[dict[str, Any]]:
    """The catalog files with this hash: the local catalog first, then Civitai (not offline)."""
    from catalog import lookup

    return lookup.lookup_hash(ctx.engine, None if offline else ctx.client(), digest)


def seed_demo(ctx: AppContext) -> dict[str, int]:
    """Seed the small demo catalog (offline); returns the counts seeded."""
    from catalog import demo

    return demo.seed_demo(ctx.engine)


def seed_demo_if_empty(ctx: AppContext) -> bool:
    """Seed the demo catalog into an empty catalog (the TUI's first start); True if seeded."""
    from catalog import demo

    if not demo.catalog_is_empty(ctx.engine):
        return False
    demo.seed_demo(ctx.engine)
    return True


def is_demo_catalog(ctx: AppContext) -> bool:
    from catalog import demo

    return demo.is_demo_catalog(ctx.engine)


__all__ = [
    "ModelList",
    "access_words",
    "is_demo_catalog",
    "list_models",
    "lookup_hash",
    "seed_demo",
    "seed_demo_if_empty",
    "show_model",
]
