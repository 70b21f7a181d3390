"""Fixtures for the sandbox tests: the real Docker engine and the pinned image.

The image comes from the same cache and record `scripts/build-sandbox-image` uses
(``.cache/sandbox`` unless ASSETMGR_SANDBOX_CACHE / ASSETMGR_SANDBOX_RECORD say otherwise). If
the record is missing or no longer matches the engine, the session fixture builds it, which
takes seconds from the caches and several minutes from scratch.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
CACHE_DIR = Path(os.environ.get("ASSETMGR_SANDBOX_CACHE") or REPO_ROOT / ".cache" / "sandbox")
RECORD_PATH = Path(os.environ.get("ASSETMGR_SANDBOX_RECORD") or CACHE_DIR / "image.json")


@pytest.fixture(scope="session")
def docker_client() -> Iterator[Any]:
    from sandbox.engine import engine_client
    from sandbox.errors import EngineUnavailableError

    try:
        client = engine_client()
    except EngineUnavailableError as exc:
        pytest.skip(f"no Docker engine: {exc}")
    yield client
    from sandbox.runner import SESSION_ID, prune

    prune(client, session=SESSION_ID)  # whatever a failed test left behind
    client.close()


@pytest.fixture(scope="session")
def sandbox_image(docker_client: Any) -> Any:
    from assetmgr import __version__
    from sandbox.errors import ImageError
    from sandbox.image import build_image, load_record, verify_image
    from sandbox.image.build import worker_digest

    try:
        record = load_record(RECORD_PATH)
        verify_image(record, docker_client)
        if record.worker_sha256 == worker_digest():
            return record
    except ImageError:
        pass
    return build_image(
        client=docker_client,
        cache_dir=CACHE_DIR,
        record_path=RECORD_PATH,
        app_version=__version__,
    )
