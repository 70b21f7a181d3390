"""Fixtures of the TUI tests: a seeded catalog, the real services with fakes at the edges.

Generation is the application layer's real service down to the job runner, which a fake
(`tests.app.fakes.FakeJobRunner`) replaces, so a field dropped between the screen and the job
shows in the job's spec. The Sandbox screen's facts come from a fake `sandbox_info`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine
from textual.app import App
from textual.pilot import Pilot

from assetmgr.config import Settings
from assetmgr.tui.app import AssetMgrApp, make_app
from assetmgr.tui.services import PluginInfo, SandboxInfo, Services
from catalog.db import open_catalog
from catalog.demo import seed_demo
from tests.app.fakes import FakeJobRunner

SIZE = (160, 48)


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """The app logs failures to the log file, installing its handler when none is there
    (`assetmgr.logs`); take ours off the root logger after each test."""
    import logging

    root = logging.getLogger()
    before, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        if getattr(handler, "_assetmgr_handler", None) and handler not in before:
            root.removeHandler(handler)
            handler.close()
    root.setLevel(level)
    logging.captureWarnings(False)


@pytest.fixture
def settings() -> Settings:
    return Settings.load()


@pytest.fixture
def engine(settings: Settings) -> Iterator[Engine]:
    eng = open_catalog(settings.database_url)
    seed_demo(eng)
    yield eng
    eng.dispose()


@pytest.fixture
def many(engine: Engine) -> int:
    """450 generated models beside the demo catalog (payloads upserted like a sync does)."""

    from sqlmodel import Session

    from catalog import repo
    from catalog.civitai.types import Model
    from tests.fakeciv import FakeCatalog
    from tests.fakeciv.shapes import RenderContext, list_model

    fake = FakeCatalog.generate(450, seed=3)
    ctx = RenderContext(base_url="https://civitai.com")
    models = [
        Model.model_validate(list_model(fake, m, m.published_versions, ctx))
        for m in fake.models.values()
    ]
    with Session(engine) as session, session.begin():
        repo.upsert_models(session, models, seen_at=datetime.now(UTC))
    return len(models)


@dataclass
class FakeSandboxInfo:
    info_value: SandboxInfo = field(
        default_factory=lambda: SandboxInfo(
            image={
                "tag": "assetmgr-sandbox:0.1.0",
                "image id": "sha256:" + "1" * 64,
                "torch": "cpu",
                "lock sha256": "2" * 64,
            },
            image_note="verified: the engine holds exactly the recorded image",
            plugins=[PluginInfo("hires-helper", "1.2.0", "ab" * 32)],
            warm_workers=[{"name": "assetmgr-warm-1", "status": "running", "id": "0123456789ab"}],
        )
    )

    def info(self) -> SandboxInfo:
        return self.info_value


@pytest.fixture
def runner() -> FakeJobRunner:
    """The job runner at the engine edge; the generation service above it is the real one."""
    return FakeJobRunner()


def make_local(engine: Engine, version_id: int) -> str:
    """Give a demo version's primary file a verified blob in the real store (stand-in bytes
    under their own hash, as if pulled); returns the sha256."""
    import hashlib
    import os

    from sqlalchemy import select
    from sqlmodel import Session

    from assetmgr import paths
    from assetmgr.store import records
    from assetmgr.store.blobs import BlobStore, stat_fingerprint
    from catalog.models import ModelFile

    data = f"stand-in bytes of version {version_id}".encode()
    sha = hashlib.sha256(data).hexdigest().upper()
    store = BlobStore(paths.store_dir())
    store.ensure()
    tmp = store.root / f"incoming-{version_id}.tmp"
    tmp.write_bytes(data)
    blob = store.promote(tmp, sha)
    with Session(engine) as session, session.begin():
        file = (
            session.execute(
                select(ModelFile).where(ModelFile.version_id == version_id)  # type: ignore[arg-type]
            )
            .scalars()
            .first()
        )
        assert file is not None
        records.set_local_state(
            session,
            file_id=file.id,
            sha256=sha,
            state="verified",
            path=blob,
            size_bytes=len(data),
            fingerprint=stat_fingerprint(os.lstat(blob)),
        )
    return sha


@pytest.fixture
def build_app(
    settings: Settings, engine: Engine, runner: FakeJobRunner
) -> Callable[..., AssetMgrApp]:
    def build(**kwargs: Any) -> AssetMgrApp:
        kwargs.setdefault("runner", runner)
        kwargs.setdefault("sandbox_info", FakeSandboxInfo())
        return make_app(settings, services=Services(settings, engine, **kwargs))

    return build


async def settle(pilot: Pilot[Any], app: App[Any] | None = None, rounds: int = 3) -> None:
    """Let workers finish and their messages land (replaces sleeps)."""
    from textual.worker import WorkerCancelled, WorkerFailed

    target = app or pilot.app
    for _ in range(rounds):
        for worker in list(target.workers):
            try:
                await worker.wait()
            except (WorkerCancelled, WorkerFailed):
                pass  # superseded queries and failures (the modal) are expected here
        await pilot.pause()


async def wait_until(
    pilot: Pilot[Any], condition: Callable[[], bool], timeout: float = 10.0, what: str = ""
) -> float:
    """Pause until `condition()` holds; returns the seconds it took."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or condition}")
        await pilot.pause(0.02)
    return time.monotonic() - started


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # textual-image 0.12 calls Pillow's deprecated Image.getdata (Pillow >= 13 warns).
    mark = pytest.mark.filterwarnings("ignore:Image.Image.getdata is deprecated:DeprecationWarning")
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(mark)


# --- the fake Civitai ------------------------------------------------------------------------

API_KEY = "test-api-key-0123456789"


@pytest.fixture
def fake_catalog() -> Any:
    from tests.fakeciv import FakeCatalog

    return FakeCatalog.generate(30, seed=11)


@pytest.fixture
def fake(fake_catalog: Any) -> Iterator[Any]:
    from tests.fakeciv import FakeCivitai

    with FakeCivitai(fake_catalog, api_keys={API_KEY}) as server:
        yield server


@pytest.fixture
def fake_settings(settings: Settings, fake: Any) -> Settings:
    import dataclasses

    return dataclasses.replace(settings, api_base=fake.base_url)


@pytest.fixture
def build_fake_app(
    fake_settings: Settings, engine: Engine, fake: Any, runner: FakeJobRunner
) -> Callable[..., AssetMgrApp]:
    """An app whose Civitai is the fake (fast retries, no real sleeping)."""
    from catalog.civitai.client import CivitaiClient
    from catalog.civitai.retry import RetryPolicy

    def client() -> CivitaiClient:
        return CivitaiClient(
            base_url=fake.base_url,
            retry=RetryPolicy(
                max_attempts=4, base_delay=0.01, max_delay=0.05, retry_after_cap=0.05
            ),
            sleep=lambda s: None,
        )

    def build(**kwargs: Any) -> AssetMgrApp:
        kwargs.setdefault("runner", runner)
        kwargs.setdefault("sandbox_info", FakeSandboxInfo())
        services = Services(fake_settings, engine, client_factory=client, **kwargs)
        return make_app(fake_settings, services=services)

    return build


def open_version(fake_catalog: Any) -> tuple[int, int]:
    """(model id, version id) of a published, SFW version that needs no login."""
    for m in fake_catalog.models.values():
        if m.mode is None and m.status == "Published" and not m.nsfw:
            for v in m.published_versions:
                if (
                    not v.require_auth
                    and v.usage_control == "Download"
                    and v.early_access_deadline is None
                ):
                    return m.id, v.id
    raise AssertionError("no open version in the fake catalog")


def lora_bytes(filler: int = 200_000, seed: float = 1.0) -> bytes:
    from tests.fakeciv import make_safetensors

    return make_safetensors(
        {"lora_unet_down.weight": [seed, 2.0, 3.0, 4.0]},
        metadata={"ss_output_name": "demo"},
        filler_bytes=filler,
    )


def sync_models(engine: Engine, fake: Any, model_ids: list[int]) -> None:
    """Bring models from the fake into the catalog without the UI (test setup)."""
    from catalog.civitai.client import CivitaiClient
    from catalog.sync import SyncRequest, run_sync

    with CivitaiClient(base_url=fake.base_url) as client:
        run_sync(engine, client, SyncRequest(model_ids=model_ids))


def plain(widget: Any) -> str:
    """The text a Static shows (strings, Rich Text and tables alike)."""
    import io

    from rich.console import Console

    console = Console(width=200, record=True, file=io.StringIO(), color_system=None)
    console.print(widget.content)
    return console.export_text()
