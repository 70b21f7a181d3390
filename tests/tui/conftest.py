"""Fixtures of the TUI tests: a seeded catalog, fake generation and sandbox services, helpers.

The fakes implement the TUI's service protocols (`assetmgr.tui.services`) so the Generate and
Sandbox screens can be driven without Docker; the catalog, store and sync are the real ones.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine
from textual.app import App
from textual.pilot import Pilot

from assetmgr.config import Settings
from assetmgr.errors import AssetMgrError
from assetmgr.tui.app import AssetMgrApp, make_app
from assetmgr.tui.services import (
    GenerationCheck,
    GenerationProgress,
    GenerationRequest,
    GenerationResult,
    PluginInfo,
    ProgressFn,
    RunRecord,
    SandboxInfo,
    Services,
    ServiceState,
)
from catalog.db import open_catalog
from catalog.demo import seed_demo

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
    from datetime import UTC, datetime

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


class RunHistory:
    """The fake's run records: ``<root>/<run_id>/run.json`` beside the images."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def new_run(self) -> tuple[str, Path]:
        run_id = (
            f"{len(list(self.root.glob('*/run.json'))) + 1:04d}" if self.root.exists() else "0001"
        )
        folder = self.root / run_id
        folder.mkdir(parents=True, exist_ok=True)
        return run_id, folder

    def record(self, run: RunRecord) -> None:
        body = {
            "run_id": run.run_id,
            "created_at": run.created_at.isoformat(),
            "request": run.request,
            "images": [str(p) for p in run.images],
        }
        (self.root / run.run_id / "run.json").write_text(json.dumps(body), encoding="utf-8")

    def load(self) -> list[RunRecord]:
        runs = []
        for path in self.root.glob("*/run.json"):
            raw = json.loads(path.read_text("utf-8"))
            runs.append(
                RunRecord(
                    run_id=raw["run_id"],
                    created_at=datetime.fromisoformat(raw["created_at"]),
                    request=raw["request"],
                    images=tuple(Path(p) for p in raw["images"]),
                )
            )
        return sorted(runs, key=lambda r: r.run_id, reverse=True)

    def get(self, run_id: str) -> RunRecord:
        return next(r for r in self.load() if r.run_id == run_id)


class FakeGeneration:
    """A `GenerationService` that paints a gradient PNG, step by step, cancellably."""

    def __init__(
        self,
        root: Path,
        *,
        step_delay: float = 0.0,
        steps: int = 4,
        gate: threading.Event | None = None,
    ) -> None:
        self.runs = RunHistory(root)
        self.step_delay = step_delay
        self.steps = steps
        self.gate = gate
        """When given, the first step waits until it is set (a generation provably running)."""
        self.waiting_at_gate = False
        self.requests: list[GenerationRequest] = []
        self.available = ServiceState(True)
        self.checker: Callable[[GenerationRequest], GenerationCheck] | None = None
        """The check before a run; None passes every request."""

    def state(self) -> ServiceState:
        return self.available

    def samplers(self) -> Sequence[str]:
        return ("Euler a", "DPM++ 2M Karras")

    def plugins(self) -> Sequence[tuple[str, str]]:
        return (("hires-helper", "ab" * 32),)

    def check(self, request: GenerationRequest) -> GenerationCheck:
        return self.checker(request) if self.checker is not None else GenerationCheck()

    def generate(
        self,
        request: GenerationRequest,
        *,
        progress: ProgressFn | None = None,
        cancel: threading.Event | None = None,
    ) -> GenerationResult:
        from PIL import Image

        self.requests.append(request)
        started = time.monotonic()
        for step in range(self.steps):
            if cancel is not None and cancel.is_set():
                raise AssetMgrError("generation cancelled", title="Job cancelled")
            if progress is not None:
                progress(GenerationProgress("denoise", step / self.steps, step, self.steps))
            if step == 0 and self.gate is not None:
                self.waiting_at_gate = True
                while not self.gate.wait(0.05):
                    if cancel is not None and cancel.is_set():
                        break
                self.waiting_at_gate = False
            time.sleep(self.step_delay)
        run_id, folder = self.runs.new_run()
        image = Image.new("RGB", (64, 64))
        for x in range(64):
            for y in range(64):
                image.putpixel((x, y), ((x * 4 + request.seed) % 256, y * 4, 128))
        path = folder / "00000.png"
        image.save(path)
        self.runs.record(RunRecord(run_id, datetime.now(UTC), request.summary(), (path,)))
        return GenerationResult(run_id, (path,), request.seed, time.monotonic() - started)

    def history(self) -> list[RunRecord]:
        return self.runs.load()

    def rerun(
        self,
        run_id: str,
        *,
        progress: ProgressFn | None = None,
        cancel: threading.Event | None = None,
    ) -> GenerationResult:
        request = GenerationRequest.from_summary(self.runs.get(run_id).request)
        return self.generate(request, progress=progress, cancel=cancel)


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
def fake_generation(tmp_path: Path) -> FakeGeneration:
    return FakeGeneration(tmp_path / "runs")


@pytest.fixture
def build_app(
    settings: Settings, engine: Engine, fake_generation: FakeGeneration
) -> Callable[..., AssetMgrApp]:
    def build(**kwargs: Any) -> AssetMgrApp:
        kwargs.setdefault("generation", fake_generation)
        kwargs.setdefault("sandbox", FakeSandboxInfo())
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
    fake_settings: Settings, engine: Engine, fake: Any, fake_generation: FakeGeneration
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
        kwargs.setdefault("generation", fake_generation)
        kwargs.setdefault("sandbox", FakeSandboxInfo())
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
