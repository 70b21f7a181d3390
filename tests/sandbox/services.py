"""The sandbox service as the app opens it, over a test catalog and test paths."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import Engine

from assetmgr import __version__
from assetmgr.sandbox_registry import CatalogSandboxRegistry
from sandbox.service import SandboxService


def catalog_service(
    engine: Engine,
    *,
    plugins_root: Path,
    record_path: Path,
    cache_dir: Path | None = None,
    **options: Any,
) -> SandboxService:
    """A `SandboxService` recording in `engine`'s catalog, with the app's version."""
    return SandboxService(
        CatalogSandboxRegistry(engine),
        plugins_root=plugins_root,
        record_path=record_path,
        cache_dir=cache_dir or record_path.parent / "cache",
        app_version=__version__,
        **options,
    )
