"""Builds the services the CLI and the TUI share from `Settings` (no UI imports here)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from assetmgr import environment
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


MODEL_TRANSPORT_ENV = "ASSETMGR_SANDBOX_MODEL_TRANSPORT"


def sandbox_record_path(settings: Settings) -> Path:
    """$ASSETMGR_SANDBOX_RECORD, else ``<home>/sandbox/image.json``."""
    explicit = environment.get("ASSETMGR_SANDBOX_RECORD")
    return Path(explicit).expanduser() if explicit else settings.home / "sandbox" / "image.json"


def sandbox_cache_dir(settings: Settings) -> Path:
    """$ASSETMGR_SANDBOX_CACHE, else ``<home>/sandbox/cache``."""
    explicit = environment.get("ASSETMGR_SANDBOX_CACHE")
    return Path(explicit).expanduser() if explicit else settings.home / "sandbox" / "cache"


def open_sandbox_service(settings: Settings, engine: Engine) -> SandboxService:
    """The sandbox service with the app's paths, version and catalog-backed registry."""
    from assetmgr import __version__
    from assetmgr.sandbox_registry import CatalogSandboxRegistry
    from sandbox.service import SandboxService

    return SandboxService(
        CatalogSandboxRegistry(engine),
        plugins_root=settings.home / "plugins",
        record_path=sandbox_record_path(settings),
        cache_dir=sandbox_cache_dir(settings),
        app_version=__version__,
        model_transport=environment.get(MODEL_TRANSPORT_ENV) or "auto",
    )
