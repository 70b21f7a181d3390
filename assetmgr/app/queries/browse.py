"""The browser's listing: pages of light rows, counts, facets and the models with updates.

A page never loads ORM objects: one Core query returns the visible columns (the latest
version's base model and the best local state come from correlated subqueries over indexed
columns), so a page costs the same at 100 or 100,000 models.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from sqlalchemy import case, exists, func, select
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import ColumnElement

from assetmgr.app.queries.tables import _t
from catalog.search import match_clause, model_filters, search_models

SortKey = Literal["relevance", "downloads", "name", "newest", "updated", "type", "creator"]
SORT_KEYS: tuple[SortKey, ...] = (
    "relevance",
    "downloads",
    "name",
    "newest",
    "updated",
    "type",
    "creator",
)
_LOCAL_RANK = {"verified": 0, "downloading": 1, "quarantined": 2, "missing": 3}


# --- the browser's listing -------------------------------------------------------------------


@dataclass(frozen=True)
class BrowseQuery:
    """Everything that selects and orders the browser's rows; equal queries give equal pages."""

    search: str = ""
    types: tuple[str, ...] = ()
    base_models: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    local_only: bool = False
    nsfw: bool = False
    sort: SortKey = "downloads"
    descending: bool = True

    @property
    def effective_sort(self) -> SortKey:
        """Relevance needs search text; without it the listing is by downloads."""
        if self.sort == "relevance" and not self.search.strip():
            return "downloads"
        return self.sort


@dataclass(frozen=True)
class ModelRow:
    """One line of the browser table."""

    id: int
    name: str
    type: str
    base_model: str | None
    creator: str | None
    downloads: int | None
    nsfw: bool
    local_state: str | None
    has_update: bool = False


def _filters(query: BrowseQuery) -> list[ColumnElement[bool]]:
    clauses = model_filters(
        types=list(query.types) or None,
        base_models=list(query.base_models) or None,
        nsfw=query.nsfw,
        local_only=query.local_only,
    )
    if query.tags:
        model, link, tag = _t("model"), _t("model_tag"), _t("tag")
        for name in query.tags:
            # Every tag must be present (AND), matched case-insensitively.
            clauses.append(
                exists()
                .where(link.c.model_id == model.c.id)
                .where(link.c.tag_id == tag.c.id)
                .where(func.lower(tag.c.name) == name.lower())
            )
    return clauses


def _row_columns() -> list[Any]:
    model, version, creator = _t("model"), _t("model_version"), _t("creator")
    local, file = _t("local_file"), _t("model_file")
    v2 = version.alias("v2")
    base = (
        select(version.c.base_model)
        .where(version.c.model_id == model.c.id, version.c.state != "gone")
        .order_by(version.c.position, version.c.id.desc())
        .limit(1)
        .scalar_subquery()
    )
    rank = case(*((local.c.state == state, order) for state, order in _LOCAL_RANK.items()), else_=9)
    local_state = (
        select(local.c.state)
        .select_from(
            local.join(file, file.c.id == local.c.file_id).join(v2, v2.c.id == file.c.version_id)
        )
        .where(v2.c.model_id == model.c.id)
        .order_by(rank)
        .limit(1)
        .scalar_subquery()
    )
    return [
        model.c.id,
        model.c.name,
        model.c.type,
        base.label("base_model"),
        select(creator.c.username)
        .where(creator.c.id == model.c.creator_id)
        .scalar_subquery()
        .label("creator"),
        model.c.download_count,
        model.c.nsfw,
        local_state.label("local_state"),
    ]


def _order(query: BrowseQuery) -> list[Any]:
    model, version, creator = _t("model"), _t("model_version"), _t("creator")
    sort = query.effective_sort
    desc = query.descending
    key: Any
    if sort in ("downloads", "relevance"):
        key = model.c.download_count
    elif sort == "name":
        key = func.lower(model.c.name)
    elif sort == "type":
        key = model.c.type
    elif sort == "creator":
        key = (
            select(func.lower(creator.c.username))
            .where(creator.c.id == model.c.creator_id)
            .scalar_subquery()
        )
    elif sort == "newest":
        key = (
            select(func.max(version.c.published_at))
            .where(version.c.model_id == model.c.id, version.c.state != "gone")
            .scalar_subquery()
        )
    elif sort == "updated":
        key = model.c.changed_at
    else:
        raise ValueError(f"unknown sort {sort!r}")
    first = key.desc().nulls_last() if desc else key.asc().nulls_last()
    return [first, model.c.id.desc() if desc else model.c.id]


def _rows(result: Any) -> list[ModelRow]:
    return [
        ModelRow(
            id=int(r.id),
            name=str(r.name),
            type=str(r.type),
            base_model=r.base_model,
            creator=r.creator,
            downloads=None if r.download_count is None else int(r.download_count),
            nsfw=bool(r.nsfw),
            local_state=r.local_state,
        )
        for r in result
    ]


def fetch_page(session: Session, query: BrowseQuery, *, offset: int, limit: int) -> list[ModelRow]:
    """One page of rows (LIMIT/OFFSET in SQL; never the whole listing)."""
    model = _t("model")
    filters = _filters(query)
    text = query.search.strip()
    if text and query.effective_sort == "relevance" and not query.tags:
        ids = search_models(
            session,
            text,
            limit=limit,
            offset=offset,
            types=list(query.types) or None,
            base_models=list(query.base_models) or None,
            nsfw=query.nsfw,
            local_only=query.local_only,
        )
        if not ids:
            return []
        found = _rows(session.execute(select(*_row_columns()).where(model.c.id.in_(ids))))
        by_id = {row.id: row for row in found}
        return [by_id[i] for i in ids if i in by_id]
    if text:
        matching = match_clause(session, text)
        if matching is None:
            return []
        filters.append(matching)
    statement = (
        select(*_row_columns()).where(*filters).order_by(*_order(query)).limit(limit).offset(offset)
    )
    return _rows(session.execute(statement))


def find_update_pairs(session: Session) -> list[tuple[int, int]]:
    """(model id, newest version id) of every local model with an update (`catalog.updates`)."""
    from catalog.updates import find_updates

    pairs = []
    for update in find_updates(session):
        newest = getattr(update, "newest_version_id", None)
        if newest is None:
            newest = getattr(update, "latest_version_id")  # noqa: B009  (older field name)
        pairs.append((int(update.model_id), int(newest)))
    return pairs


def update_model_ids(session: Session) -> set[int]:
    """Models with a newer version in a base-model family the user has."""
    return {model_id for model_id, _ in find_update_pairs(session)}


def count_models(session: Session, query: BrowseQuery) -> int:
    """How many models match (for "n of N"; run apart from the page so it never delays it)."""
    model = _t("model")
    filters = _filters(query)
    if query.search.strip():
        matching = match_clause(session, query.search)
        if matching is None:
            return 0
        filters.append(matching)
    return int(
        session.execute(select(func.count()).select_from(model).where(*filters)).scalar_one()
    )


@dataclass(frozen=True)
class Facets:
    """Values the filter bar offers, most used first."""

    types: list[tuple[str, int]]
    base_models: list[tuple[str, int]]
    tags: list[tuple[str, int]]


def load_facets(session: Session, *, tag_limit: int = 400) -> Facets:
    model, version, link, tag = _t("model"), _t("model_version"), _t("model_tag"), _t("tag")
    n = func.count().label("n")
    types = session.execute(
        select(model.c.type, n)
        .where(model.c.state != "gone")
        .group_by(model.c.type)
        .order_by(n.desc())
    ).all()
    bases = session.execute(
        select(version.c.base_model, n)
        .where(version.c.state != "gone", version.c.base_model.is_not(None))
        .group_by(version.c.base_model)
        .order_by(n.desc())
    ).all()
    tags = session.execute(
        select(tag.c.name, n)
        .select_from(link.join(tag, tag.c.id == link.c.tag_id))
        .group_by(tag.c.id)
        .order_by(n.desc())
        .limit(tag_limit)
    ).all()
    return Facets(
        types=[(str(t), int(c)) for t, c in types],
        base_models=[(str(b), int(c)) for b, c in bases],
        tags=[(str(t), int(c)) for t, c in tags],
    )
