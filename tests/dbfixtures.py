"""Database fixtures for catalog tests, on SQLite and (when configured) PostgreSQL.

Import the fixtures into a test module (``from tests.dbfixtures import catalog_engine``) and
ask for `catalog_engine` or `session`. Each test gets a freshly migrated catalog: a new SQLite
file, or a new PostgreSQL schema (dropped afterwards) in the database named by
``ASSETMGR_TEST_PG_URL``; without that variable the PostgreSQL cases are skipped.
"""

from __future__ import annotations

import copy
import json
import os
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlmodel import Session

from catalog.civitai import types as api
from catalog.db import normalize_url, open_catalog

PG_URL_ENV = "ASSETMGR_TEST_PG_URL"
CIVITAI_FIXTURES = Path(__file__).resolve().parent / "fixtures" / "civitai"
_WRITE_VERBS = ("INSERT", "UPDATE", "DELETE", "REPLACE", "MERGE")
_WRITE_TARGET = re.compile(
    r"\s*(?:INSERT\s+INTO\s+(\S+)|UPDATE\s+(\S+)|DELETE\s+FROM\s+(\S+))", re.IGNORECASE
)


def fixture_json(name: str) -> Any:
    """A Civitai fixture payload (tests/fixtures/civitai, copied from the API reference)."""
    return json.loads((CIVITAI_FIXTURES / name).read_text("utf-8"))


def fixture_models() -> list[api.Model]:
    """The two models of ``models-list.json`` (a Checkpoint and a LORA)."""
    return [api.Model.model_validate(item) for item in fixture_json("models-list.json")["items"]]


def model_payload(model_id: int = 1, **overrides: Any) -> dict[str, Any]:
    """A small but complete `/models` item (one version, two files, two images)."""
    payload: dict[str, Any] = {
        "id": model_id,
        "name": f"Test Model {model_id}",
        "description": "<p>A model for tests.</p>",
        "type": "LORA",
        "nsfw": False,
        "nsfwLevel": 1,
        "allowCommercialUse": "{Image}",
        "stats": {"downloadCount": 10, "thumbsUpCount": 1},
        "creator": {"username": f"creator{model_id}", "image": None},
        "tags": ["style"],
        "modelVersions": [version_payload(model_id * 10, model_id)],
    }
    payload.update(overrides)
    return payload


def version_payload(version_id: int, model_id: int = 1, **overrides: Any) -> dict[str, Any]:
    """A version in the `/models` shape with hashes derived from its id."""
    payload: dict[str, Any] = {
        "id": version_id,
        "index": 0,
        "name": f"v{version_id}",
        "baseModel": "SDXL 1.0",
        "baseModelType": "Standard",
        "publishedAt": "2025-01-02T03:04:05.678Z",
        "availability": "Public",
        "nsfwLevel": 1,
        "description": f"<p>Version {version_id}.</p>",
        "trainedWords": [f"word{version_id}"],
        "stats": {"downloadCount": 5, "thumbsUpCount": 1},
        "files": [file_payload(version_id * 10 + i, primary=(i == 0)) for i in range(2)],
        "images": [image_payload(version_id * 100 + i) for i in range(2)],
        "downloadUrl": f"https://civitai.com/api/download/models/{version_id}",
    }
    payload.update(overrides)
    return payload


def file_payload(file_id: int, *, primary: bool = False) -> dict[str, Any]:
    """A file whose six hashes are distinct functions of its id."""
    digest = f"{file_id:064X}"
    payload: dict[str, Any] = {
        "id": file_id,
        "sizeKB": 1024.5,
        "name": f"file_{file_id}.safetensors",
        "type": "Model",
        "pickleScanResult": "Success",
        "virusScanResult": "Success",
        "scannedAt": "2025-01-02T03:00:00.000Z",
        "metadata": {"format": "SafeTensor", "size": "pruned", "fp": "fp16"},
        "hashes": {
            "AutoV1": f"{file_id:08X}"[-8:],
            "AutoV2": digest[:10],
            "SHA256": digest,
            "CRC32": f"C{file_id:07X}"[-8:],
            "BLAKE3": f"B{file_id:063X}",
            "AutoV3": f"A{file_id:011X}",
        },
        "downloadUrl": f"https://civitai.com/api/download/models/{file_id}",
    }
    if primary:
        payload["primary"] = True
    return payload


def image_payload(image_id: int) -> dict[str, Any]:
    return {
        "id": image_id,
        "url": f"https://image.civitai.com/x/{image_id}/original=true/{image_id}.jpeg",
        "nsfwLevel": 1,
        "width": 832,
        "height": 1216,
        "hash": "U6Dcm-~q00Rj_3ofIUWB00M{%MayWBayt7of",
        "type": "image",
    }


def synthetic_models(
    count: int,
    *,
    start_id: int = 1_000_000,
    versions: int = 3,
    files: int = 2,
    images: int = 5,
) -> list[api.Model]:
    """`count` models shaped like the fixtures (for volume and timing tests)."""
    base = fixture_json("models-list.json")["items"][1]
    models = []
    for n in range(count):
        model_id = start_id + n
        item = copy.deepcopy(base)
        item["id"] = model_id
        item["name"] = f"Synthetic {n} Ink Wash Style"
        item["creator"] = {"username": f"maker{n % 97}", "image": None}
        item["tags"] = ["style", f"tag{n % 50}", "traditional art"]
        template = item["modelVersions"][0]
        item["modelVersions"] = []
        for v in range(versions):
            version = copy.deepcopy(template)
            version_id = model_id * 10 + v
            version["id"] = version_id
            version["index"] = v
            version["name"] = f"v{v}.0"
            version["files"] = [
                file_payload(version_id * 10 + f, primary=(f == 0)) for f in range(files)
            ]
            version["images"] = [image_payload(version_id * 100 + i) for i in range(images)]
            item["modelVersions"].append(version)
        models.append(api.Model.model_validate(item))
    return models


class WriteCounter:
    """Counts INSERT/UPDATE/DELETE statements an engine sends (one per executemany)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.statements: list[str] = []
        event.listen(engine, "before_cursor_execute", self._on_execute)

    def _on_execute(self, conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        verb = statement.lstrip().split(None, 1)[0].upper() if statement.strip() else ""
        if verb in _WRITE_VERBS:
            self.statements.append(statement)

    def reset(self) -> None:
        self.statements.clear()

    @property
    def count(self) -> int:
        return len(self.statements)

    @property
    def tables(self) -> set[str]:
        """The tables written to."""
        found = set()
        for statement in self.statements:
            match = _WRITE_TARGET.match(statement)
            if match:
                found.add(next(group for group in match.groups() if group).strip('"'))
        return found

    def close(self) -> None:
        event.remove(self.engine, "before_cursor_execute", self._on_execute)


def _pg_schema_url(base_url: str, schema: str) -> str:
    url = normalize_url(base_url)
    return url.update_query_dict({"options": f"-csearch_path={schema}"}).render_as_string(
        hide_password=False
    )


@pytest.fixture(
    params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)],
)
def catalog_engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    """A migrated, empty catalog on each backend."""
    if request.param == "sqlite":
        engine = open_catalog(f"sqlite:///{tmp_path / 'db' / 'catalog.sqlite3'}")
        try:
            yield engine
        finally:
            engine.dispose()
        return

    base_url = os.environ.get(PG_URL_ENV)
    if not base_url:
        pytest.skip(f"PostgreSQL tests need {PG_URL_ENV} (e.g. postgresql+psycopg://u:p@host/db)")
    schema = f"t_{uuid.uuid4().hex[:16]}"
    admin = create_engine(normalize_url(base_url), isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE SCHEMA "{schema}"'))
        engine = open_catalog(_pg_schema_url(base_url, schema))
        try:
            yield engine
        finally:
            engine.dispose()
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture
def session(catalog_engine: Engine) -> Iterator[Session]:
    """A session on the test catalog; the test commits what it wants to keep."""
    with Session(catalog_engine, expire_on_commit=False) as s:
        yield s


def backend(engine: Engine) -> str:
    return make_url(engine.url).get_backend_name()


__all__ = [
    "PG_URL_ENV",
    "WriteCounter",
    "backend",
    "catalog_engine",
    "file_payload",
    "fixture_json",
    "fixture_models",
    "image_payload",
    "model_payload",
    "session",
    "synthetic_models",
    "version_payload",
]
