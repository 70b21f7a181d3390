"""The Generate screen: pickers from local files, prompt completion, a run with progress and
output, history and rerun; and the "not available" state of the real sandbox service."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from sqlalchemy import Engine, select
from sqlmodel import Session
from textual.widgets import Input, OptionList, Select

from assetmgr import paths
from assetmgr.store import records
from assetmgr.store.blobs import BlobStore
from assetmgr.tui.app import AssetMgrApp
from assetmgr.tui.services import SandboxGeneration
from assetmgr.tui.widgets.preview import PreviewPane
from assetmgr.tui.widgets.prompt import PromptEditor, lora_tags, token_before
from catalog.models import ModelFile
from tests.tui.conftest import SIZE, FakeGeneration, plain, settle, wait_until


def make_local(engine: Engine, version_id: int, folder: Path) -> None:
    """Mark a demo version's primary file as verified in the store (a stand-in file)."""
    with Session(engine) as session, session.begin():
        file = (
            session.execute(
                select(ModelFile).where(ModelFile.version_id == version_id)  # type: ignore[arg-type]
            )
            .scalars()
            .first()
        )
        assert file is not None and file.sha256
        path = folder / f"{file.sha256}.bin"
        path.write_bytes(b"stand-in")
        records.set_local_state(
            session, file_id=file.id, sha256=file.sha256, state="verified", path=path
        )


def test_token_and_tag_parsing() -> None:
    assert token_before("a cat, <lora:Det") == "<lora:Det"
    assert token_before("a cat, add_d") == "add_d"
    assert token_before("a cat, ") is None
    assert lora_tags("x <lora:A:0.5> y <lora:B> <lora:C:1:0.2>") == [
        ("A", 0.5),
        ("B", 1.0),
        ("C", 1.0),
    ]


async def test_complete_generate_and_rerun(
    build_app: Callable[..., AssetMgrApp],
    engine: Engine,
    fake_generation: FakeGeneration,
    tmp_path: Path,
) -> None:
    make_local(engine, 920005, tmp_path)  # Dreamlike Fields 1.5 (checkpoint)
    make_local(engine, 920006, tmp_path)  # Detail Tweaker (LoRA, trigger word add_detail)
    app = build_app()
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await pilot.press("f3")
        await settle(pilot)
        screen = app.generate_screen
        assert [c.model_name for c in screen.checkpoints] == ["Dreamlike Fields 1.5"]
        assert [lora.lora_name for lora in screen.loras] == ["DetailTweaker_v10"]
        editor = screen.query_one(PromptEditor)
        editor.focus()
        await pilot.press(*"a cat, <lora:Det")
        await wait_until(pilot, lambda: editor.completion_open, what="lora completion")
        assert screen.completions[0].text == "<lora:DetailTweaker_v10:1>"
        await pilot.press("tab")
        assert editor.text == "a cat, <lora:DetailTweaker_v10:1>"
        await pilot.press(*", add_d")
        await wait_until(pilot, lambda: editor.completion_open, what="trigger completion")
        assert screen.completions[0].text == "add_detail"
        await pilot.press("tab")
        assert editor.text.endswith(", add_detail")
        assert "✓ DetailTweaker_v10 (1)" in plain(screen.query_one("#lora-summary"))

        await pilot.press("ctrl+r")
        await wait_until(pilot, lambda: len(screen.runs) == 1, what="run recorded")
        output = screen.query_one("#output", PreviewPane)
        await wait_until(pilot, lambda: output.has_class("-has-image"), what="output image")
        request = fake_generation.requests[0]
        assert request.checkpoint is not None and request.checkpoint.version_id == 920005
        assert [(c.model.version_id, c.weight) for c in request.loras] == [(920006, 1.0)]
        assert request.prompt == editor.text

        screen.query_one("#history", OptionList).highlighted = 0
        await pilot.press("ctrl+t")
        await wait_until(pilot, lambda: len(screen.runs) == 2, what="rerun recorded")
        assert fake_generation.requests[1].seed == request.seed
        assert fake_generation.requests[1].prompt == request.prompt


async def test_lora_picker_inserts_a_tag(
    build_app: Callable[..., AssetMgrApp], engine: Engine, tmp_path: Path
) -> None:
    make_local(engine, 920006, tmp_path)
    app = build_app()
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("f3")
        await settle(pilot)
        screen = app.generate_screen
        screen.query_one("#lora-pick", Select).value = 0
        screen.query_one("#lora-weight", Input).value = "0.6"
        await pilot.click("#add-lora")
        assert screen.query_one(PromptEditor).text == "<lora:DetailTweaker_v10:0.6>, add_detail"


async def test_generation_not_available_without_the_sandbox(
    build_app: Callable[..., AssetMgrApp], engine: Engine
) -> None:
    # The real service: no image was built in this ASSETMGR_HOME, so it says so.
    app = build_app(generation=SandboxGeneration(engine, BlobStore(paths.store_dir())))
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("f3")
        await settle(pilot)
        screen = app.generate_screen
        assert not screen.state.available
        banner = plain(screen.query_one("#gen-state"))
        assert banner.startswith("Generation not available: ")
        assert screen.query_one("#run").disabled
        screen.query_one(PromptEditor).text = "a cat"
        await pilot.press("ctrl+r")
        await settle(pilot)
        assert not app.jobs.active("generate")


def synthetic_library(engine: Engine, tmp_path: Path) -> BlobStore:
    """An SD 1.5 checkpoint and LoRAs for SD 1.5 and SDXL, imported into the real store."""
    from assetmgr.store.importer import import_folder
    from tests.integration.test_export_attacks import sd15_checkpoint
    from tests.integration.test_generate_validation import sdxl_lora
    from tests.integration.test_import_export import sd15_lora

    src = tmp_path / "models"
    src.mkdir()
    (src / "base15.safetensors").write_bytes(sd15_checkpoint())
    (src / "inkwash.safetensors").write_bytes(sd15_lora(fill=5))
    (src / "xlstyle.safetensors").write_bytes(sdxl_lora())
    store = BlobStore(paths.store_dir())
    assert len(import_folder(engine, store, None, src).imported) == 3
    return store


async def test_the_run_is_checked_before_a_job_starts(
    build_app: Callable[..., AssetMgrApp],
    engine: Engine,
    fake_generation: FakeGeneration,
    tmp_path: Path,
) -> None:
    """The CLI's checks (the real `SandboxGeneration.check`) run when Generate is pressed; what
    they refuse shows under the button, no job starts, and a LoRA for another base model runs
    only once the user confirms it."""
    from assetmgr.tui.screens.dialogs import ConfirmModal

    fake_generation.checker = SandboxGeneration(engine, synthetic_library(engine, tmp_path)).check
    app = build_app()
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("f3")
        await settle(pilot)
        screen = app.generate_screen
        names = [c.model_name for c in screen.checkpoints]
        screen.query_one("#checkpoint", Select).value = names.index("base15")
        problems = screen.query_one("#gen-problems")
        assert not problems.display

        async def run(prompt: str, steps: str = "20") -> None:
            screen.query_one(PromptEditor).text = prompt
            screen.query_one("#steps", Input).value = steps
            await pilot.press("ctrl+r")
            await settle(pilot)

        await run("a heron <lora:inkwash:abc>")
        assert problems.display
        assert plain(problems).splitlines() == [
            "✗ Prompt: '<lora:inkwash:abc>' at character 9: weight 'abc' is not a number",
            "  Write LoRA tags as <lora:NAME:WEIGHT> (or <lyco:...>), e.g. <lora:inkwash:0.8>.",
        ]
        await run("a heron <lora:inkwash:0.5>", steps="0")
        assert plain(problems).splitlines()[0] == "✗ Steps 0 is out of range (1 to 150)"
        await run("a heron <lora:base15:1>")
        assert plain(problems).splitlines()[0] == "✗ 'base15' is a Checkpoint, not a LoRA"
        assert not app.jobs.active("generate") and fake_generation.requests == []

        await run("a heron <lora:xlstyle:0.5>")
        await wait_until(pilot, lambda: isinstance(app.screen, ConfirmModal), what="confirm")
        assert "'xlstyle' is a LoRA for SDXL 1.0; the checkpoint 'base15' is SD 1.5" in plain(
            app.screen.query_one(".dialog-body")
        )
        await pilot.press("escape")  # Cancel: nothing runs
        await settle(pilot)
        assert fake_generation.requests == []
        await run("a heron <lora:xlstyle:0.5>")
        await wait_until(pilot, lambda: isinstance(app.screen, ConfirmModal), what="confirm")
        await pilot.press("y")
        await wait_until(pilot, lambda: len(fake_generation.requests) == 1, what="the run")
        assert fake_generation.requests[0].allow_mismatch is True
        await wait_until(pilot, lambda: not app.jobs.active("generate"), what="the run's end")

        await run("a heron <lora:inkwash:0.5>")
        await wait_until(pilot, lambda: len(fake_generation.requests) == 2, what="a second run")
        assert fake_generation.requests[1].allow_mismatch is False
        assert not problems.display
