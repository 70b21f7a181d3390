"""Builds the services the CLI and the TUI share from `Settings` (no UI imports here)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from assetmgr.config import Settings

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from catalog.civitai.client import CivitaiClient
    from sandbox.service import SandboxService

_engines: dict[str, Engine] = {}


def open_engine(settings: Settings) -> Engine:
    """The catalog engine, migrated to head; one per database URL per process."""
    engine = _engines.get(settings.database_url)
    if engine is None:
        from catalog.db import open_catalog

        engine = open_catalog(settings.database_url)
        _engines[settings.database_url] = engine
    return engine


def make_client(settings: Settings) -> CivitaiClient:
    from catalog.civitai.client import CivitaiClient

    return CivitaiClient(base_url=settings.api_base, api_key=settings.api_key)


def open_sandbox_service(settings: Settings, engine: Engine) -> SandboxService:
    """The sandbox service over this catalog (plugins, image record, jobs)."""
    from sandbox.service import SandboxService

    return SandboxService(engine)
