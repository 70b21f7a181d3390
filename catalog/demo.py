"""A small built-in catalog so a fresh, offline machine shows something real."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path

from sqlalchemy import Engine, func, select
from sqlmodel import Session, col

from catalog import repo
from catalog.civitai.types import Model
from catalog.db import session_scope
from catalog.models import Model as ModelRow


def demo_models() -> list[Model]:
    """The bundled demo models, validated like API payloads."""
    raw = json.loads(resources.files("catalog").joinpath("demo_catalog.json").read_text("utf-8"))
    return [Model.model_validate(item) for item in raw["items"]]


def catalog_is_empty(engine: Engine) -> bool:
    with Session(engine) as session:
        return int(session.execute(select(func.count()).select_from(ModelRow)).scalar_one()) == 0


def demo_model_ids() -> frozenset[int]:
    """The ids of the bundled demo models (invented, outside Civitai's real range in use)."""
    raw = json.loads(resources.files("catalog").joinpath("demo_catalog.json").read_text("utf-8"))
    return frozenset(int(item["id"]) for item in raw["items"])


def is_demo_catalog(engine: Engine) -> bool:
    """Whether the catalog holds demo models and nothing else (no real sync has filled it)."""
    ids = demo_model_ids()
    with Session(engine) as session:
        other = session.execute(
            select(col(ModelRow.id)).where(col(ModelRow.id).not_in(ids)).limit(1)
        ).first()
        if other is not None:
            return False
        demo = session.execute(
            select(col(ModelRow.id)).where(col(ModelRow.id).in_(ids)).limit(1)
        ).first()
        return demo is not None


def seed_demo(engine: Engine) -> dict[str, int]:
    """Upsert the demo models (idempotent); returns counts."""
    models = demo_models()
    with session_scope(engine, write=True) as session:
        repo.upsert_models(session, models, seen_at=datetime.now(UTC))
    versions = sum(len(m.model_versions) for m in models)
    files = sum(len(v.files) for m in models for v in m.model_versions)
    return {"models": len(models), "versions": versions, "files": files}


DEMO_PREVIEWS_DIR = Path(__file__).resolve().parent / "demo_previews"


def demo_preview_path(version_id: int) -> Path | None:
    """The bundled preview PNG of a demo version (``demo_previews/<id>.png``), if there is one.

    Demo image URLs point nowhere, so offline UIs show these instead.
    """
    path = DEMO_PREVIEWS_DIR / f"{int(version_id)}.png"
    return path if path.is_file() else None
