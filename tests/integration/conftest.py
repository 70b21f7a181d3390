"""Fixtures for integration tests: the fake Civitai, a migrated catalog, a fast client."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine

from catalog.civitai.client import CivitaiClient
from catalog.civitai.retry import RetryPolicy
from tests.fakeciv import FakeCatalog, FakeCivitai

PG_URL = os.environ.get("ASSETMGR_TEST_PG_URL")


@pytest.fixture
def fake_catalog() -> FakeCatalog:
    return FakeCatalog.generate(150, seed=7, include_fixtures=True)


@pytest.fixture
def fake(fake_catalog: FakeCatalog) -> Iterator[FakeCivitai]:
    with FakeCivitai(fake_catalog, api_keys={"test-api-key-0123456789"}) as server:
        yield server


@pytest.fixture
def client(fake: FakeCivitai) -> Iterator[CivitaiClient]:
    # Retries without real waiting: the fake's Retry-After is honoured by the policy, and the
    # injected sleep records instead of blocking.
    sleeps: list[float] = []
    with CivitaiClient(
        base_url=fake.base_url,
        retry=RetryPolicy(max_attempts=8, base_delay=0.01, max_delay=0.05, retry_after_cap=0.05),
        sleep=sleeps.append,
    ) as c:
        c.recorded_sleeps = sleeps  # type: ignore[attr-defined]
        yield c


def _fresh_pg_url(tmp_path: Path) -> str:
    """A new database per test on the server in ASSETMGR_TEST_PG_URL."""
    import uuid

    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    assert PG_URL
    base = make_url(PG_URL.replace("postgresql://", "postgresql+psycopg://", 1))
    name = f"amt_{uuid.uuid4().hex[:12]}"
    admin = create_engine(base.set(database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return base.set(database=name).render_as_string(hide_password=False)


def _drop_pg(url: str) -> None:
    """Drop a test database, waiting out whatever still uses it.

    A plain DROP makes PostgreSQL cancel an autovacuum worker on the database by itself,
    while ``WITH (FORCE)`` would try to terminate it and fail for a non-superuser; FORCE is
    only the fallback for a session of ours that is still open.
    """
    import time

    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import DBAPIError

    parsed = make_url(url)
    admin = create_engine(parsed.set(database="postgres"), isolation_level="AUTOCOMMIT")
    try:
        for attempt in range(50):
            force = " WITH (FORCE)" if attempt % 2 else ""
            try:
                with admin.connect() as conn:
                    conn.execute(text(f'DROP DATABASE IF EXISTS "{parsed.database}"{force}'))
                return
            except DBAPIError:
                if attempt == 49:
                    raise
                time.sleep(0.1)
    finally:
        admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'catalog.sqlite3'}"
        return
    if not PG_URL:
        pytest.skip("ASSETMGR_TEST_PG_URL is not set (scripts/test sets it)")
    url = _fresh_pg_url(tmp_path)
    try:
        yield url
    finally:
        _drop_pg(url)


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    from catalog.db import open_catalog

    eng = open_catalog(db_url)
    try:
        yield eng
    finally:
        eng.dispose()
