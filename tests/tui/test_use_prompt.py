"""Use this prompt: an example image's generation data fills every field of the Generate screen,
its LoRAs found by hash (not by a look-alike name); a pasted A1111 block does the same; models
that are not local are listed with a pull that really downloads them from the fake Civitai."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import Engine
from sqlmodel import Session, select
from textual.widgets import Button, Input, Select, TextArea

from assetmgr.tui.app import AssetMgrApp
from assetmgr.tui.screens.dialogs import PasteModal
from assetmgr.tui.widgets.detail import DetailPane
from assetmgr.tui.widgets.prompt import PromptEditor
from catalog.models import Image, LocalFile, ModelFile
from tests.app.conftest import import_models
from tests.app.fakes import FakeJobRunner
from tests.integration.test_export_attacks import sd15_checkpoint
from tests.integration.test_import_export import sd15_lora
from tests.tui.conftest import (
    SIZE,
    lora_bytes,
    open_version,
    plain,
    settle,
    sync_models,
    wait_until,
)
from tests.tui.test_actions import show_version

INK_WASH_MODEL, INK_WASH_VERSION = 910002, 920003  # a demo LoRA with one example image


def hashes_of(engine: Engine, file_name: str) -> dict[str, Any]:
    with Session(engine) as session:
        local, file = session.exec(
            select(LocalFile, ModelFile)
            .join(ModelFile)  # type: ignore[arg-type]
            .where(ModelFile.name == file_name)
        ).one()
        return {
            "sha256": local.sha256,
            "autov2": local.autov2,
            "autov3": local.autov3,
            "version": file.version_id,
        }


def add_example_image(engine: Engine, version_id: int, meta: dict[str, Any]) -> None:
    """An example image with generation data, shown first in the detail pane."""
    with Session(engine) as session, session.begin():
        session.add(Image(version_id=version_id, position=-1, meta=meta, nsfw_level=1))


async def test_use_this_prompt_fills_every_field_and_finds_loras_by_hash(
    build_app: Callable[..., AssetMgrApp], engine: Engine, runner: FakeJobRunner, tmp_path: Path
) -> None:
    import_models(engine, tmp_path / "a", {"base15.safetensors": sd15_checkpoint()})
    import_models(engine, tmp_path / "b", {"inkwash.safetensors": sd15_lora(fill=5)})
    # A local LoRA named like the image's tag, with other bytes: the hash must win over it.
    import_models(engine, tmp_path / "c", {"ink_style_v1.safetensors": sd15_lora(fill=9)})
    base, lora = hashes_of(engine, "base15.safetensors"), hashes_of(engine, "inkwash.safetensors")
    add_example_image(
        engine,
        INK_WASH_VERSION,
        {
            "prompt": "a heron \x1b[31mat dawn <lora:ink_style_v1:0.7>",
            "negativePrompt": "blurry\x07",
            "steps": 3,
            "sampler": "Euler",
            "Schedule type": "SGM Uniform",
            "cfgScale": 4.5,
            "seed": 1734419982,
            "Size": "960x576",
            "clipSkip": 2,
            "Denoising strength": 0.35,
            "Hires upscale": 1.5,
            "Hires steps": 2,
            "Hires upscaler": "Latent",
            "Model": "someMix_v2",
            "Model hash": base["autov2"].lower(),
            "hashes": {"model": base["autov2"].lower(), "lora:ink_style_v1": lora["autov3"]},
        },
    )
    app = build_app()
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await show_version(app, pilot, INK_WASH_MODEL, INK_WASH_VERSION)
        assert app.catalog.query_one(DetailPane).query_one(".use-prompt", Button).display
        await pilot.press("p")
        screen = app.generate_screen
        editor = screen.query_one(PromptEditor)
        await wait_until(pilot, lambda: "heron" in editor.text, what="the form filled")
        await settle(pilot)
        assert app.screen is screen
        assert editor.text == "a heron ␛[31mat dawn <lora:ink_style_v1:0.7>"
        assert screen.query_one("#negative", TextArea).text == "blurry␇"
        checkpoint = screen.query_one("#checkpoint", Select).value
        assert isinstance(checkpoint, int)
        assert screen.checkpoints[checkpoint].version_id == base["version"]
        fields = {
            name: screen.query_one(f"#{name}", Input).value
            for name in ("steps", "cfg", "seed", "clip-skip", "hires-scale", "hires-steps")
        }
        assert fields == {
            "steps": "3",
            "cfg": "4.5",
            "seed": "1734419982",
            "clip-skip": "2",
            "hires-scale": "1.5",
            "hires-steps": "2",
        }
        assert screen.query_one("#hires-denoise", Input).value == "0.35"
        selects = {
            name: screen.query_one(f"#{name}", Select).value
            for name in ("sampler", "schedule", "width", "height")
        }
        assert selects == {
            "sampler": "Euler",
            "schedule": "SGM Uniform",
            "width": "960",
            "height": "576",
        }
        # The tag resolves to the file with the image's hash, not to ink_style_v1.safetensors.
        assert plain(screen.query_one("#lora-summary")).strip() == "✓ inkwash (0.7)"
        assert not screen.query_one("#reuse-box").display

        await pilot.press("ctrl+r")
        await wait_until(pilot, lambda: len(runner.jobs) == 1, what="the run")
        spec = runner.jobs[0].params
        assert spec["model_sha256"] == base["sha256"].lower()
        assert [(lo["name"], lo["sha256"]) for lo in spec["loras"]] == [
            ("ink_style_v1", lora["sha256"].lower())
        ]
        assert spec["prompt"] == editor.text and spec["negative_prompt"] == "blurry␇"
        assert (spec["steps"], spec["cfg_scale"], spec["seed"]) == (3, 4.5, 1734419982)
        assert (spec["width"], spec["height"], spec["clip_skip"]) == (960, 576, 2)
        assert (spec["sampler"], spec["schedule_type"]) == ("Euler", "SGM Uniform")
        assert spec["hires"] == {"scale": 1.5, "steps": 2, "denoise": 0.35, "upscaler": "Latent"}


async def test_a_pasted_block_offers_to_pull_what_is_missing(
    build_fake_app: Callable[..., AssetMgrApp],
    engine: Engine,
    fake: Any,
    fake_catalog: Any,
    runner: FakeJobRunner,
    tmp_path: Path,
) -> None:
    """The pasted block's LoRA hash is a file the catalog knows but the store lacks: the run is
    refused with the reason, and the offered pull downloads that very file."""
    import_models(engine, tmp_path / "a", {"base15.safetensors": sd15_checkpoint()})
    base = hashes_of(engine, "base15.safetensors")
    model_id, version_id = open_version(fake_catalog)
    served = fake_catalog.add_file_bytes(version_id, lora_bytes())
    sync_models(engine, fake, [model_id])
    autov3 = served.hashes["AutoV3"]
    block = (
        "a lighthouse <lora:beam:0.5>\n"
        "Steps: 4, Sampler: Euler a, CFG scale: 7, Seed: 5, Size: 512x512, "
        f'Model hash: {base["autov2"].lower()}, Lora hashes: "beam: {autov3.lower()}", '
        "Version: v1.10.1"
    )
    app = build_fake_app()
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("f3")
        await settle(pilot)
        screen = app.generate_screen
        await pilot.press("ctrl+o")
        await wait_until(pilot, lambda: isinstance(app.screen, PasteModal), what="paste dialog")
        app.screen.query_one(TextArea).text = block
        await pilot.click("#use")
        box = screen.query_one("#reuse-box")
        await wait_until(pilot, lambda: box.display, what="the missing models")
        lines = plain(screen.query_one("#reuse-note")).splitlines()
        assert lines[:3] == [
            "1 model(s) of the image are not local:",
            f"✗ LoRA 'beam' (AutoV3 {autov3}): version {version_id}",
            f"or run: assetmgr pull {version_id}",
        ]
        assert screen.query_one(PromptEditor).text == "a lighthouse <lora:beam:0.5>"

        await pilot.press("ctrl+r")
        await settle(pilot)
        problems = plain(screen.query_one("#gen-problems")).splitlines()
        assert problems[0].startswith("✗ 1 model(s) of this image are not local: LoRA 'beam'")
        assert problems[1] == f"  Pull them: `assetmgr pull {version_id}`."
        assert runner.jobs == []

        pull = screen.query_one("#pull-missing", Button)
        assert str(pull.label) == "Pull 1 missing"
        await pilot.click("#pull-missing")
        await wait_until(pilot, lambda: not app.jobs.active("download"), what="the download")
        with Session(engine) as session:
            row = session.exec(select(LocalFile).where(LocalFile.file_id == served.id)).one()
        assert row.state == "verified" and row.autov3 == autov3
