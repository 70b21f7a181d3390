"""Shared fixtures: every test gets its own ASSETMGR_HOME and no inherited secrets."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent

# CI (ASSETMGR_REQUIRE_ALL=1) turns a skipped docker/postgres/worker test into a failure.
pytest_plugins = ["tests.require_all"]


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Point the app at a fresh data root and away from the user's keyring and key."""
    home = tmp_path / "assetmgr-home"
    monkeypatch.setenv("ASSETMGR_HOME", str(home))
    monkeypatch.setenv("ASSETMGR_NO_KEYRING", "1")
    for var in (
        "CIVITAI_API_KEY",
        "CIVITAI_API_BASE",
        "ASSETMGR_DB_URL",
        "ASSETMGR_CONFIG",
        "ASSETMGR_WARM_WORKER_IDLE",
    ):
        monkeypatch.delenv(var, raising=False)
    yield home


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # Docker tests need a running engine; say so instead of failing obscurely.
    if os.environ.get("ASSETMGR_SKIP_DOCKER"):
        skip = pytest.mark.skip(reason="ASSETMGR_SKIP_DOCKER is set")
        for item in items:
            if "docker" in item.keywords:
                item.add_marker(skip)
