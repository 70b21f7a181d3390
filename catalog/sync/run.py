"""`run_sync`: fill the local catalog from the Civitai API (a listing, or explicit model ids).

* Writes are incremental: a model whose normalized payload did not change writes nothing.
* Items that fail validation are reported in `SyncSummary.errors` and skipped; the rest lands.
* Explicit `--model-id`s are fetched in parallel with a thread pool.
* After a complete, unfiltered sync, models the listing no longer shows are looked up one by
  one: a 404 marks them ``gone``, an archived or taken-down model is marked as such; nothing is
  ever deleted.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime

from sqlalchemy import Engine, select, update
from sqlmodel import Session, col

from catalog import repo
from catalog.civitai.client import CivitaiClient
from catalog.civitai.errors import CivitaiError, NotFoundError
from catalog.civitai.types import Model
from catalog.db import session_scope
from catalog.errors import SyncCancelled
from catalog.models import Model as ModelRow
from catalog.sync.listing import (
    PoolChoice,
    begin_state,
    finish_state,
    load_state,
    sync_listing,
    utc_now,
)
from catalog.sync.request import SyncProgress, SyncProgressCallback, SyncRequest, SyncSummary

log = logging.getLogger(__name__)


def run_sync(
    engine: Engine,
    client: CivitaiClient,
    request: SyncRequest,
    *,
    progress: SyncProgressCallback | None = None,
    cancel: threading.Event | None = None,
    concurrency: int = 4,
    pool: PoolChoice = "auto",
    workers: int | None = None,
) -> SyncSummary:
    """Sync the catalog; see the module docstrings of `catalog.sync` for the guarantees.

    `pool`: worker processes that prepare pages (see `sync_pool`); ``"auto"`` starts
    `workers` of them (None: one per spare core) here for a sync big enough to pay for them,
    None prepares pages in this thread.
    """
    cancel = cancel or threading.Event()
    summary = SyncSummary()
    counters = SyncProgress(total_models=request.max_models)

    def report() -> None:
        if progress is not None:
            progress(counters)

    if request.model_ids:
        _sync_ids(engine, client, request.model_ids, summary, counters, report, cancel, concurrency)
        return summary

    key = request.key()
    state = load_state(engine, key)
    start_cursor: str | None = None
    if state is not None and state.status == "running" and state.cursor:
        start_cursor = state.cursor
        summary.resumed = True
        log.info("resuming sync %s from its stored cursor", key[:12])
    begin_state(engine, key, request, resume=summary.resumed, started_at=utc_now())
    seen_ids = sync_listing(
        engine,
        client,
        request,
        start_cursor,
        summary=summary,
        counters=counters,
        report=report,
        cancel=cancel,
        pool=pool,
        workers=workers,
    )
    if request.is_full_listing and not summary.resumed:
        summary.models_marked = _mark_vanished(
            engine, client, seen_ids, request, cancel, concurrency
        )
    finish_state(engine, key)
    return summary


def _count(models: Iterable[Model]) -> tuple[int, int, int]:
    n_models = n_versions = n_files = 0
    for m in models:
        n_models += 1
        n_versions += len(m.model_versions)
        n_files += sum(len(v.files) for v in m.model_versions)
    return n_models, n_versions, n_files


def _fetch_models(
    client: CivitaiClient, ids: Sequence[int], cancel: threading.Event, concurrency: int
) -> list[tuple[int, Model | None, Exception | None]]:
    """GET /models/{id} for each id in parallel; (id, model or None if 404, other error)."""

    def one(model_id: int) -> tuple[int, Model | None, Exception | None]:
        if cancel.is_set():
            return model_id, None, SyncCancelled("cancelled")
        try:
            return model_id, client.get_model(model_id), None
        except NotFoundError:
            return model_id, None, None
        except CivitaiError as exc:
            return model_id, None, exc

    with ThreadPoolExecutor(max_workers=max(1, concurrency), thread_name_prefix="sync") as pool:
        return list(pool.map(one, ids))


def _sync_ids(
    engine: Engine,
    client: CivitaiClient,
    model_ids: Sequence[int],
    summary: SyncSummary,
    counters: SyncProgress,
    report: Callable[[], None],
    cancel: threading.Event,
    concurrency: int,
) -> None:
    counters.total_models = len(model_ids)
    results = _fetch_models(client, list(dict.fromkeys(model_ids)), cancel, concurrency)
    if cancel.is_set():
        raise SyncCancelled("sync cancelled")
    found = [m for _, m, err in results if m is not None]
    missing = [mid for mid, m, err in results if m is None and err is None]
    for mid, _, err in results:
        if err is not None:
            summary.errors.append({"id": mid, "error": str(err)})
    now = utc_now()
    with session_scope(engine, write=True) as session:
        result = repo.upsert_models(session, found, seen_at=now)
        summary.models_marked = _mark_gone(session, missing, now)
    m, v, f = _count(found)
    summary.models, summary.versions, summary.files = m, v, f
    summary.models_written = result.models_written
    summary.pages = 1
    counters.models, counters.versions, counters.files = m, v, f
    counters.models_written = result.models_written
    counters.pages = 1
    report()


def _mark_gone(session: Session, model_ids: Sequence[int], now: datetime) -> int:
    if not model_ids:
        return 0
    res = session.execute(
        update(ModelRow)
        .where(col(ModelRow.id).in_(model_ids), col(ModelRow.state) != "gone")
        .values(state="gone", changed_at=now)
    )
    return int(res.rowcount or 0)  # type: ignore[attr-defined]


def _mark_vanished(
    engine: Engine,
    client: CivitaiClient,
    seen_ids: set[int],
    request: SyncRequest,
    cancel: threading.Event,
    concurrency: int,
) -> int:
    """Check models that a full listing no longer shows; mark gone/archived, never delete."""
    with Session(engine) as session:
        query = select(col(ModelRow.id)).where(
            col(ModelRow.source) == "civitai", col(ModelRow.state) == "active"
        )
        if not request.filters.nsfw:
            # Out of scope for an SFW listing: NSFW models are not expected in it.
            query = query.where(col(ModelRow.nsfw).is_(False))
        known = set(session.execute(query).scalars())
    absent = sorted(known - seen_ids)
    if not absent:
        return 0
    log.info("%d catalog models are no longer listed; checking them one by one", len(absent))
    results = _fetch_models(client, absent, cancel, concurrency)
    still_there = [m for _, m, err in results if m is not None]
    gone = [mid for mid, m, err in results if m is None and err is None]
    now = utc_now()
    with session_scope(engine, write=True) as session:
        # Archived/taken-down models come back from /models/{id} with `mode`; the upsert marks them.
        result = repo.upsert_models(session, still_there, seen_at=now)
        marked = _mark_gone(session, gone, now)
    return marked + result.models_written
