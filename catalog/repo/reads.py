"""Reads of the catalog: lookups by hash, a model with everything, listings."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

from sqlalchemy import func, or_, select
from sqlalchemy.orm import QueryableAttribute, Session, selectinload
from sqlalchemy.orm.strategy_options import _AbstractLoad

from catalog.civitai import types as api
from catalog.errors import NotInCatalogError
from catalog.models import (
    HASH_COLUMNS,
    Model,
    ModelFile,
    ModelTag,
    ModelVersion,
)
from catalog.repo.sql import _FILE, _MODEL, _VERSION, SortOrder
from catalog.search import match_clause, model_filters, search_models

# --- reads -----------------------------------------------------------------------------------


def find_files_by_hash(session: Session, digest: str) -> list[dict[str, Any]]:
    """Files whose hash of any of the six types equals `digest` (any case), in one query.

    Each match is ``{"hash_type", "model_id", "model_name", "version_id", "version_name",
    "file_id", "file_name"}``; oldest published version first, as Civitai resolves
    duplicates.
    """
    needle = digest.strip().upper()
    if not needle:
        return []
    hash_columns = [_FILE.c[column] for column in HASH_COLUMNS]
    query = (
        select(
            *hash_columns,
            _MODEL.c.id,
            _MODEL.c.name,
            _VERSION.c.id,
            _VERSION.c.name,
            _FILE.c.id,
            _FILE.c.name,
        )
        .select_from(
            _FILE.join(_VERSION, _VERSION.c.id == _FILE.c.version_id).join(
                _MODEL, _MODEL.c.id == _VERSION.c.model_id
            )
        )
        .where(or_(*(column == needle for column in hash_columns)))
        .order_by(_VERSION.c.published_at.asc().nulls_last(), _VERSION.c.id, _FILE.c.id)
    )
    matches: list[dict[str, Any]] = []
    for row in session.execute(query):
        values = tuple(row)
        hashes, rest = values[: len(HASH_COLUMNS)], values[len(HASH_COLUMNS) :]
        hash_type = next(
            name for name, value in zip(api.HASH_TYPES, hashes, strict=True) if value == needle
        )
        model_id, model_name, version_id, version_name, file_id, file_name = rest
        matches.append(
            {
                "hash_type": hash_type,
                "model_id": model_id,
                "model_name": model_name,
                "version_id": version_id,
                "version_name": version_name,
                "file_id": file_id,
                "file_name": file_name,
            }
        )
    return matches


def _attr(attribute: Any) -> QueryableAttribute[Any]:
    # SQLModel types relationship attributes as their Python values; loaders want the attribute.
    return cast(QueryableAttribute[Any], attribute)


def _full_load() -> list[_AbstractLoad]:
    """Loader options for everything `model_to_dict` reads, in a fixed number of queries."""
    versions = selectinload(_attr(Model.versions))
    return [
        selectinload(_attr(Model.creator)),
        selectinload(_attr(Model.tag_links)).selectinload(_attr(ModelTag.tag)),
        versions.selectinload(_attr(ModelVersion.files)).selectinload(_attr(ModelFile.local)),
        versions.selectinload(_attr(ModelVersion.trained_words)),
    ]


def get_model(session: Session, model_id: int) -> Model:
    """The model with its creator, tags, versions, files and local files loaded.

    Raises `NotInCatalogError` when the catalog does not hold it.
    """
    query = (
        select(Model)
        .where(_MODEL.c.id == model_id)
        .options(*_full_load())
        .execution_options(populate_existing=True)
    )
    model = session.execute(query).scalars().first()
    if model is None:
        raise NotInCatalogError(
            f"model {model_id} is not in the catalog", kind="model", key=model_id
        )
    return model


def list_models(
    session: Session,
    *,
    types: Sequence[str] | None = None,
    base_models: Sequence[str] | None = None,
    search: str | None = None,
    local_only: bool = False,
    nsfw: bool = True,
    include_gone: bool = False,
    limit: int = 50,
    offset: int = 0,
    sort: SortOrder = "relevance",
) -> list[Model]:
    """Models matching the filters, fully loaded for `model_to_dict`.

    Filters are those of `catalog.search.model_filters`. `search` is full-text (prefix
    matching, see `catalog.search`); text without any word matches nothing. ``relevance``
    sorts by search rank, or by downloads without a search; ``newest`` by the latest
    published version.
    """
    filters = model_filters(
        types=types,
        base_models=base_models,
        nsfw=nsfw,
        local_only=local_only,
        include_gone=include_gone,
    )
    query = select(Model).where(*filters)
    order: list[Any] = []
    if search is not None and search.strip():
        if sort == "relevance":
            ranked = search_models(
                session,
                search,
                limit=limit,
                offset=offset,
                types=types,
                base_models=base_models,
                nsfw=nsfw,
                local_only=local_only,
                include_gone=include_gone,
            )
            return _load_in_order(session, ranked)
        matching = match_clause(session, search)
        if matching is None:
            return []
        query = query.where(matching)
    if sort in ("relevance", "downloads"):
        order.append(_MODEL.c.download_count.desc().nulls_last())
    elif sort == "name":
        order.append(func.lower(_MODEL.c.name))
    elif sort == "newest":
        latest = (
            select(func.max(_VERSION.c.published_at))
            .where(_VERSION.c.model_id == _MODEL.c.id, _VERSION.c.state != "gone")
            .scalar_subquery()
        )
        order.append(latest.desc().nulls_last())
    elif sort == "updated":
        order.append(_MODEL.c.changed_at.desc())
    else:
        raise ValueError(f"unknown sort order {sort!r}")
    order.append(_MODEL.c.id)
    query = (
        query.order_by(*order)
        .limit(limit)
        .offset(offset)
        .options(*_full_load())
        .execution_options(populate_existing=True)
    )
    return list(session.execute(query).scalars())


def _load_in_order(session: Session, model_ids: Sequence[int]) -> list[Model]:
    if not model_ids:
        return []
    query = (
        select(Model)
        .where(_MODEL.c.id.in_(list(model_ids)))
        .options(*_full_load())
        .execution_options(populate_existing=True)
    )
    by_id = {model.id: model for model in session.execute(query).scalars()}
    return [by_id[model_id] for model_id in model_ids if model_id in by_id]


# --- the JSON contract -----------------------------------------------------------------------
