"""The TUI keeps a warm worker (real sandbox, synthetic SD1.5 checkpoint, CPU, 64x64, 2 steps):
a second generation with the same model runs in the same container, an untrusted plugin set
never shares one, the idle time removes it and so does leaving the TUI. Containers are counted
from the engine's create events by the project's labels."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine
from textual.pilot import Pilot

from assetmgr.config import Settings
from assetmgr.store.blobs import BlobStore
from assetmgr.tui.app import AssetMgrApp, make_app
from assetmgr.tui.services import GenerateRequest, Services
from tests.sandbox.conftest import CACHE_DIR, RECORD_PATH, docker_client, sandbox_image  # noqa: F401
from tests.sandbox.containers import ContainerLog, wait_gone
from tests.sandbox.test_plugins import write_plugin
from tests.tui.conftest import SIZE, wait_until
from tests.tui.test_generate_sandbox import library  # noqa: F401

pytestmark = [pytest.mark.docker, pytest.mark.worker, pytest.mark.slow]


@pytest.fixture(autouse=True)
def _sandbox_paths(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ASSETMGR_SANDBOX_RECORD", str(RECORD_PATH))
    monkeypatch.setenv("ASSETMGR_SANDBOX_CACHE", str(CACHE_DIR))


async def ready(pilot: Pilot[Any], app: AssetMgrApp) -> GenerateRequest:
    """The Generate screen, checked, and a small request for its one checkpoint."""
    await pilot.press("f3")
    await wait_until(pilot, lambda: app.generate_screen.state.reason != "checking…", timeout=60)
    assert app.generate_screen.state.available, app.generate_screen.state.reason
    return replace(
        app.generate_screen.build_request(),
        prompt="a heron in reeds",
        width=64,
        height=64,
        steps=2,
        seed=42,
        sampler="Euler",
    )


async def generate(pilot: Pilot[Any], app: AssetMgrApp, request: GenerateRequest) -> None:
    runs = len(app.generate_screen.runs)
    app.start_generation(request)
    await wait_until(
        pilot, lambda: len(app.generate_screen.runs) == runs + 1, timeout=600, what="a run"
    )
    job = app.jobs.all()[-1]
    assert job.status == "done", job.summary


async def test_a_second_generation_with_the_same_model_reuses_the_worker(
    settings: Settings,
    engine: Engine,
    library: BlobStore,  # noqa: F811
    docker_client: Any,  # noqa: F811
) -> None:
    log = ContainerLog(docker_client)
    app = make_app(settings, services=Services(settings, engine, store=library))
    async with app.run_test(size=SIZE) as pilot:
        request = await ready(pilot, app)
        await generate(pilot, app, request)
        await generate(pilot, app, replace(request, seed=43, prompt="a heron at dusk"))
        created = log.created()
        assert [c.role for c in created] == ["warm-worker"], created
        assert log.alive(created) == [created[0].id]  # kept while the TUI runs
        first, second = app.generate_screen.runs[1], app.generate_screen.runs[0]
        assert (first.seed, second.seed) == (42, 43)
        assert first.images[0].read_bytes() != second.images[0].read_bytes()
    assert log.alive(created) == []  # leaving the TUI removed it (and its GPU memory)


async def test_an_untrusted_set_never_shares_a_worker_and_an_idle_one_goes(
    engine: Engine,
    library: BlobStore,  # noqa: F811
    docker_client: Any,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Untrusted: a container per generation. The same set trusted goes to a warm worker,
    which the idle setting (2 s here) removes while the TUI still runs."""
    monkeypatch.setenv("ASSETMGR_WARM_WORKER_IDLE", "2s")
    settings = Settings.load()
    assert settings.warm_worker_idle_s == 2.0
    services = Services(settings, engine, store=library)
    services.sandbox.add_plugin(write_plugin(tmp_path / "src", "tagger"))  # not trusted
    log = ContainerLog(docker_client)
    app = make_app(settings, services=services)
    async with app.run_test(size=SIZE) as pilot:
        request = replace(await ready(pilot, app), plugins=["tagger"])
        await generate(pilot, app, request)
        await generate(pilot, app, replace(request, seed=43))
        untrusted = log.created()
        assert [c.role for c in untrusted] == ["job", "job"], untrusted
        assert log.alive(untrusted) == []
        assert app.generate_screen.runs[0].spec["prompt"] == "a heron in reeds"
        # the control: the same set, trusted, goes to the warm worker ...
        services.sandbox.set_trusted("tagger", True)
        await generate(pilot, app, replace(request, seed=44))
        created = log.created()
        assert [c.role for c in created] == ["job", "job", "warm-worker"], created
        # ... which goes after the idle time
        assert wait_gone(log, created) == []
        assert app.is_running
