"""The Generate screen against the real sandbox: synthetic SD1.5 checkpoint and LoRA imported
into the store, one CPU generation (64x64, 2 steps) in the pinned container, shown on screen,
recorded in the catalog, then rerun. Needs Docker, the sandbox image and torch (for the
synthetic models), like tests/sandbox/test_generate_e2e.py."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine
from textual.widgets import Label, OptionList

from assetmgr import paths
from assetmgr.config import Settings
from assetmgr.store.blobs import BlobStore
from assetmgr.tui.app import make_app
from assetmgr.tui.services import Services
from assetmgr.tui.widgets.preview import PreviewPane
from assetmgr.tui.widgets.prompt import PromptEditor
from tests.sandbox.conftest import CACHE_DIR, RECORD_PATH, docker_client, sandbox_image  # noqa: F401
from tests.tui.conftest import SIZE, plain, settle, wait_until

pytestmark = [pytest.mark.docker, pytest.mark.worker, pytest.mark.slow]
REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def library(engine: Engine, tmp_path: Path, sandbox_image: Any) -> BlobStore:  # noqa: F811
    pytest.importorskip("torch")
    from assetmgr.store.importer import import_folder
    from tests.synth import SynthCache

    synth = SynthCache(
        os.environ.get("ASSETMGR_SYNTH_CACHE") or str(REPO_ROOT / ".cache" / "synth")
    )
    src = tmp_path / "models"
    src.mkdir()
    for path, name in (
        (synth.sd15(), "synth15.safetensors"),
        (synth.lora("sd15", "lora15_a", seed=1), "inkwash15.safetensors"),
    ):
        try:
            os.link(path, src / name)
        except OSError:
            (src / name).symlink_to(path)
    store = BlobStore(paths.store_dir())
    report = import_folder(engine, store, None, src)
    assert len(report.imported) == 2, report.as_json()
    return store


async def test_generate_and_rerun_in_the_sandbox(
    settings: Settings, engine: Engine, library: BlobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ASSETMGR_SANDBOX_RECORD", str(RECORD_PATH))
    monkeypatch.setenv("ASSETMGR_SANDBOX_CACHE", str(CACHE_DIR))
    services = Services(settings, engine, store=library)
    app = make_app(settings, services=services)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("f3")
        await wait_until(pilot, lambda: app.generate_screen.state.reason != "checking…", timeout=60)
        screen = app.generate_screen
        assert screen.state.available, screen.state.reason
        assert [c.lora_name for c in screen.checkpoints] == ["synth15"]
        assert [lora.lora_name for lora in screen.loras] == ["inkwash15"]
        screen.query_one(PromptEditor).text = "a heron in reeds, <lora:inkwash15:0.8>"
        await pilot.pause()
        assert "✓ inkwash15 (0.8)" in plain(screen.query_one("#lora-summary"))
        # The size choices start at 512; a tiny image keeps this test fast on a CPU.
        request = replace(
            screen.build_request(), width=64, height=64, steps=2, seed=42, sampler="Euler"
        )
        app.start_generation(request)
        await wait_until(pilot, lambda: len(screen.runs) == 1, timeout=600, what="first run")
        job = app.jobs.all()[-1]
        assert job.status == "done", job.summary
        await wait_until(
            pilot, lambda: screen.query_one("#output", PreviewPane).has_class("-has-image")
        )
        first = screen.runs[0]
        assert first.spec["loras"][0]["name"] == "inkwash15"
        assert first.images and first.images[0].is_file()

        screen.query_one("#history", OptionList).highlighted = 0
        await pilot.press("ctrl+t")
        await wait_until(pilot, lambda: len(screen.runs) == 2, timeout=600, what="rerun")
        await settle(pilot)
        assert "identical bytes" in str(screen.query_one("#gen-text", Label).content)
        assert screen.runs[0].images[0].read_bytes() == first.images[0].read_bytes()
