"""A big generated catalog for the benches (search latency, TUI first paint).

Payloads come from the fake Civitai's shape code and go in through `catalog.repo.upsert_models`,
in batches, as a sync would write them.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from catalog.civitai.types import Model


def fill_catalog(
    db_path: Path,
    target_versions: int,
    *,
    each: Callable[[Model], None] | None = None,
    batch_size: int = 500,
) -> int:
    """Upsert generated models into a SQLite catalog until `target_versions`; returns the
    versions written. `each` sees every model (to collect search words, say)."""
    from catalog import repo
    from catalog.db import open_catalog, session_scope
    from tests.fakeciv import FakeCatalog
    from tests.fakeciv.shapes import RenderContext, list_model

    engine = open_catalog(f"sqlite:///{db_path}")
    fake = FakeCatalog.generate(int(target_versions / 2.2) + 2000, seed=5)
    ctx = RenderContext(base_url="https://civitai.com")
    total = 0
    batch: list[Model] = []
    now = datetime.now(UTC)
    for fm in fake.models.values():
        if total >= target_versions:
            break
        model = Model.model_validate(list_model(fake, fm, fm.published_versions, ctx))
        total += len(model.model_versions)
        if each is not None:
            each(model)
        batch.append(model)
        if len(batch) == batch_size:
            with session_scope(engine, write=True) as session:
                repo.upsert_models(session, batch, seen_at=now)
            batch = []
    if batch:
        with session_scope(engine, write=True) as session:
            repo.upsert_models(session, batch, seen_at=now)
    engine.dispose()
    return total
