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
