"""Full-text search of the catalog, with the same matches on SQLite and PostgreSQL.

Documents are the `model_search` rows (one per model: name, tags, trained words, creator,
version names and base models, descriptions as plain text), tokenized in Python by
`catalog.text.search_tokens`. A query is tokenized the same way and every token becomes a
required prefix term ("ink was" finds "Ink Wash"):

* SQLite: ``"ink"* "was"*`` against the FTS5 table ``model_fts``. Tokens are alphanumeric and
  quoted, so FTS syntax in user input never gets through.
* PostgreSQL: ``ink:* & was:*`` with ``to_tsquery('simple', …)`` against the generated
  ``search_vector`` column (GIN index), ranked by ``ts_rank``.

Ranking on SQLite: bm25 with column weights (`BM25_WEIGHTS`) reads the whole document list of
every query term, so it is only used when each term matches fewer than `RANK_CAP` models. A
query with a broader term (one or two letters typed so far, a word found in most
descriptions) lists models whose name matches first, then the other matches, newest first
within each group; FTS5 reads those straight off its index in rowid order and stops at the
limit. The two backends agree on which models match; only the order of broad queries differs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import (
    Integer,
    Select,
    Table,
    bindparam,
    column,
    exists,
    false,
    func,
    literal_column,
    select,
    table,
)
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import ColumnElement
from sqlmodel import SQLModel

import catalog.models  # noqa: F401  (registers the tables on SQLModel.metadata)
from catalog.civitai.types import normalize_model_type
from catalog.errors import CatalogError
from catalog.text import search_tokens

# bm25 weights in model_fts column order (name, tags, words, creator, versions, body): a name
# hit outranks a tag or trigger-word hit, which outranks a version name or base model, which
# outranks prose in a description.
BM25_WEIGHTS: tuple[float, ...] = (10.0, 5.0, 5.0, 4.0, 3.0, 1.0)
RANK_CAP = 2_000
"""Queries with a term matching at least this many models skip bm25 (see module docstring)."""
_MAX_QUERY_TOKENS = 16

_FTS = table("model_fts", column("rowid", Integer))
# FTS5's hidden column named after its table: the left side of MATCH, the argument of bm25().
_FTS_DOCUMENT: ColumnElement[Any] = literal_column("model_fts")


def _table(name: str) -> Table:
    return SQLModel.metadata.tables[name]


def _query_tokens(text: str) -> list[str]:
    # Drop repeats; the cap keeps a pasted paragraph from becoming a 500-term query.
    return list(dict.fromkeys(search_tokens(text)))[:_MAX_QUERY_TOKENS]


def fts5_query(text: str) -> str | None:
    """The FTS5 MATCH expression for user `text` (each token a quoted prefix term), or None."""
    tokens = _query_tokens(text)
    return " ".join(f'"{token}"*' for token in tokens) if tokens else None


def tsquery(text: str) -> str | None:
    """The PostgreSQL ``to_tsquery`` text for user `text`, the twin of `fts5_query`."""
    tokens = _query_tokens(text)
    return " & ".join(f"{token}:*" for token in tokens) if tokens else None


def _dialect(session: Session) -> str:
    name = session.get_bind().dialect.name
    if name not in ("sqlite", "postgresql"):
        raise CatalogError(f"search is not supported on {name}")
    return name


def _pg_vector() -> ColumnElement[Any]:
    return literal_column("model_search.search_vector")


def _pg_query(text: str) -> ColumnElement[Any]:
    return func.to_tsquery(literal_column("'simple'::regconfig"), bindparam("ts_q", text))


def match_clause(session: Session, text: str) -> ColumnElement[bool] | None:
    """``model.id IN (models matching text)``, unranked, for filtering a listing; None when
    `text` has no searchable words."""
    model = _table("model")
    if _dialect(session) == "sqlite":
        fts = fts5_query(text)
        if fts is None:
            return None
        matching = select(_FTS.c.rowid).where(_FTS_DOCUMENT.op("MATCH")(bindparam("fts_q", fts)))
        return model.c.id.in_(matching)
    ts = tsquery(text)
    if ts is None:
        return None
    docs = _table("model_search")
    matching = select(docs.c.model_id).where(_pg_vector().bool_op("@@")(_pg_query(ts)))
    return model.c.id.in_(matching)


def model_filters(
    *,
    types: Sequence[str] | None = None,
    base_models: Sequence[str] | None = None,
    nsfw: bool = True,
    local_only: bool = False,
    include_gone: bool = False,
) -> list[ColumnElement[bool]]:
    """WHERE clauses over the ``model`` table shared by search and listing.

    `types` are matched after mapping to Civitai's spelling ("lora" is LORA); `base_models`
    match any non-gone version; `nsfw=False` drops models flagged NSFW; `local_only` keeps
    models with a verified file in the store; gone models are left out unless asked for.
    """
    model = _table("model")
    version = _table("model_version")
    clauses: list[ColumnElement[bool]] = []
    if not include_gone:
        clauses.append(model.c.state != "gone")
    if types:
        clauses.append(model.c.type.in_(sorted({normalize_model_type(t) for t in types})))
    if not nsfw:
        clauses.append(model.c.nsfw == false())
    if base_models:
        clauses.append(
            exists()
            .where(version.c.model_id == model.c.id)
            .where(version.c.base_model.in_(list(base_models)))
            .where(version.c.state != "gone")
        )
    if local_only:
        file = _table("model_file")
        local = _table("local_file")
        clauses.append(
            exists()
            .where(version.c.model_id == model.c.id)
            .where(file.c.version_id == version.c.id)
            .where(local.c.file_id == file.c.id)
            .where(local.c.state == "verified")
        )
    return clauses


def count_models(
    session: Session,
    *,
    search: str | None = None,
    types: Sequence[str] | None = None,
    base_models: Sequence[str] | None = None,
    nsfw: bool = True,
    local_only: bool = False,
    include_gone: bool = False,
) -> int:
    """How many models `catalog.repo.list_models` would list with these filters, unlimited."""
    filters = model_filters(
        types=types,
        base_models=base_models,
        nsfw=nsfw,
        local_only=local_only,
        include_gone=include_gone,
    )
    if search is not None and search.strip():
        matching = match_clause(session, search)
        if matching is None:
            return 0
        filters.append(matching)
    query = select(func.count()).select_from(_table("model")).where(*filters)
    return int(session.execute(query).scalar_one())


def search_models(
    session: Session,
    text: str,
    *,
    limit: int = 50,
    offset: int = 0,
    types: Sequence[str] | None = None,
    base_models: Sequence[str] | None = None,
    nsfw: bool = True,
    local_only: bool = False,
    include_gone: bool = False,
) -> list[int]:
    """Ids of the models matching `text`, best first; empty when `text` has no words.

    Filters are those of `model_filters`; `catalog.repo.list_models(search=…)` returns rows.
    """
    filters = model_filters(
        types=types,
        base_models=base_models,
        nsfw=nsfw,
        local_only=local_only,
        include_gone=include_gone,
    )
    if limit <= 0:
        return []
    if _dialect(session) == "postgresql":
        return _search_postgresql(session, text, filters, limit, offset)
    fts = fts5_query(text)
    if fts is None:
        return []
    if not _has_broad_term(session, fts):
        ranked = (
            _sqlite_matches(fts, filters)
            .order_by(func.bm25(_FTS_DOCUMENT, *BM25_WEIGHTS), _FTS.c.rowid)
            .limit(limit)
            .offset(offset)
        )
        return [int(i) for i in session.execute(ranked).scalars()]
    # Broad query: name matches first, then the rest; newest first, read in index order.
    wanted = offset + limit
    found: list[int] = []
    for expression in (f"{{name}} : ({fts})", fts):
        query = _sqlite_matches(expression, filters)
        if found:
            query = query.where(_FTS.c.rowid.not_in(found))
        query = query.order_by(_FTS.c.rowid.desc()).limit(wanted - len(found))
        found.extend(int(i) for i in session.execute(query).scalars())
        if len(found) >= wanted:
            break
    return found[offset:wanted]


def _sqlite_matches(expression: str, filters: list[ColumnElement[bool]]) -> Select[Any]:
    model = _table("model")
    return (
        select(_FTS.c.rowid)
        .select_from(_FTS.join(model, model.c.id == _FTS.c.rowid))
        .where(_FTS_DOCUMENT.op("MATCH")(bindparam("fts_q", expression)), *filters)
    )


def _has_broad_term(session: Session, fts: str) -> bool:
    """Whether any term of `fts` matches at least `RANK_CAP` models.

    bm25 scans the whole document list of every term (for its IDF), so one broad term makes
    ranking slow even when the query as a whole is selective.
    """
    return any(_count_matches(session, term, RANK_CAP) >= RANK_CAP for term in fts.split(" "))


def _count_matches(session: Session, expression: str, cap: int) -> int:
    """How many models match, counting no further than `cap` (cheap: no ranking)."""
    first = (
        select(_FTS.c.rowid)
        .where(_FTS_DOCUMENT.op("MATCH")(bindparam("fts_q", expression)))
        .limit(cap)
        .subquery()
    )
    return int(session.execute(select(func.count()).select_from(first)).scalar_one())


def _search_postgresql(
    session: Session, text: str, filters: list[ColumnElement[bool]], limit: int, offset: int
) -> list[int]:
    ts = tsquery(text)
    if ts is None:
        return []
    model = _table("model")
    docs = _table("model_search")
    query = _pg_query(ts)
    stmt = (
        select(model.c.id)
        .select_from(docs.join(model, model.c.id == docs.c.model_id))
        .where(_pg_vector().bool_op("@@")(query), *filters)
        .order_by(func.ts_rank(_pg_vector(), query).desc(), model.c.id)
        .limit(limit)
        .offset(offset)
    )
    return [int(i) for i in session.execute(stmt).scalars()]


__all__ = [
    "BM25_WEIGHTS",
    "RANK_CAP",
    "count_models",
    "fts5_query",
    "match_clause",
    "model_filters",
    "search_models",
    "tsquery",
]
