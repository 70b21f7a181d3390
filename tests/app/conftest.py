"""Fixtures of the application-layer tests: a real catalog and store with synthetic models
imported, and a fake job runner in place of the sandbox (the only fake)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine

from assetmgr import paths
from assetmgr.app.context import AppContext
from assetmgr.config import Settings
from assetmgr.store.blobs import BlobStore
from catalog.db import open_catalog
from tests.app.fakes import FakeJobRunner


@pytest.fixture
def settings() -> Settings:
    return Settings.load()


@pytest.fixture
def engine(settings: Settings) -> Iterator[Engine]:
    eng = open_catalog(settings.database_url)
    yield eng
    eng.dispose()


def import_models(engine: Engine, folder: Path, files: dict[str, bytes]) -> BlobStore:
    """Write `files` (name -> bytes) into `folder` and import them into the real store."""
    from assetmgr.store.importer import import_folder

    folder.mkdir(parents=True)
    for name, data in files.items():
        (folder / name).write_bytes(data)
    store = BlobStore(paths.store_dir())
    report = import_folder(engine, store, None, folder)
    assert len(report.imported) == len(files), report.as_json()
    return store


@pytest.fixture
def library(engine: Engine, tmp_path: Path) -> BlobStore:
    """An SD 1.5 checkpoint `base15` and an SD 1.5 LoRA `inkwash`."""
    from tests.integration.test_export_attacks import sd15_checkpoint
    from tests.integration.test_import_export import sd15_lora

    return import_models(
        engine,
        tmp_path / "models",
        {"base15.safetensors": sd15_checkpoint(), "inkwash.safetensors": sd15_lora(fill=5)},
    )


@pytest.fixture
def runner() -> FakeJobRunner:
    return FakeJobRunner()


@pytest.fixture
def ctx(
    settings: Settings, engine: Engine, library: BlobStore, runner: FakeJobRunner
) -> Iterator[AppContext]:
    with AppContext(settings, engine=engine, store=library, sandbox=runner) as context:
        yield context
