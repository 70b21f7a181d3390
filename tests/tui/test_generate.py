"""The Generate screen: pickers from local files, prompt completion, a run with progress and
output, history and rerun; and the "not available" state of the real sandbox service."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from sqlalchemy import Engine
from textual.widgets import Input, OptionList, Select

from assetmgr import paths
from assetmgr.store.blobs import BlobStore
from assetmgr.tui.app import AssetMgrApp
from assetmgr.tui.widgets.preview import PreviewPane
from assetmgr.tui.widgets.prompt import PromptEditor, lora_tags, token_before
from tests.app.fakes import FakeJobRunner
from tests.tui.conftest import SIZE, make_local, plain, settle, wait_until


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
    runner: FakeJobRunner,
) -> None:
    checkpoint_sha = make_local(engine, 920005)  # Dreamlike Fields 1.5 (checkpoint)
    lora_sha = make_local(engine, 920006)  # Detail Tweaker (LoRA, trigger word add_detail)
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
        # What reached the job: the picked checkpoint and LoRA, by their store files.
        spec = runner.jobs[0].params
        assert spec["model_sha256"] == checkpoint_sha.lower()
        assert [(lo["name"], lo["sha256"]) for lo in spec["loras"]] == [
            ("DetailTweaker_v10", lora_sha.lower())
        ]
        assert spec["prompt"] == editor.text

        screen.query_one("#history", OptionList).highlighted = 0
        await pilot.press("ctrl+t")
        await wait_until(pilot, lambda: len(screen.runs) == 2, what="rerun recorded")
        assert runner.jobs[1].params == spec
        assert "rerun of run 1: identical bytes" in plain(screen.query_one("#gen-text"))


async def test_lora_picker_inserts_a_tag(
    build_app: Callable[..., AssetMgrApp], engine: Engine
) -> None:
    make_local(engine, 920006)
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
    # The real sandbox service: no image was built in this ASSETMGR_HOME, so it says so.
    app = build_app(runner=None)
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
    runner: FakeJobRunner,
    tmp_path: Path,
) -> None:
    """The CLI's checks run when Generate is pressed; what they refuse shows under the button,
    no job starts, and a LoRA for another base model runs only once the user confirms it."""
    from assetmgr.tui.screens.dialogs import ConfirmModal

    synthetic_library(engine, tmp_path)
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
        assert not app.jobs.active("generate") and runner.jobs == []

        await run("a heron <lora:xlstyle:0.5>")
        await wait_until(pilot, lambda: isinstance(app.screen, ConfirmModal), what="confirm")
        assert "'xlstyle' is a LoRA for SDXL 1.0; the checkpoint 'base15' is SD 1.5" in plain(
            app.screen.query_one(".dialog-body")
        )
        await pilot.press("escape")  # Cancel: nothing runs
        await settle(pilot)
        assert runner.jobs == []
        await run("a heron <lora:xlstyle:0.5>")
        await wait_until(pilot, lambda: isinstance(app.screen, ConfirmModal), what="confirm")
        await pilot.press("y")
        await wait_until(pilot, lambda: len(runner.jobs) == 1, what="the run")
        assert [lo["name"] for lo in runner.jobs[0].params["loras"]] == ["xlstyle"]
        await wait_until(pilot, lambda: not app.jobs.active("generate"), what="the run's end")

        await run("a heron <lora:inkwash:0.5>")
        await wait_until(pilot, lambda: len(runner.jobs) == 2, what="a second run")
        assert [lo["name"] for lo in runner.jobs[1].params["loras"]] == ["inkwash"]
        assert not problems.display


# --- the seams between the screen and the job (issue 14) ------------------------------------


async def test_the_lora_the_screen_shows_is_the_one_the_job_gets(
    build_app: Callable[..., AssetMgrApp], engine: Engine, runner: FakeJobRunner, tmp_path: Path
) -> None:
    """Two local LoRAs go by the same tag name; the screen resolves the tag to one of them and
    the job must get that one (the service used to drop the screen's LoRAs and look the name
    up again)."""
    from tests.app.conftest import import_models
    from tests.integration.test_export_attacks import sd15_checkpoint
    from tests.integration.test_import_export import sd15_lora

    import_models(engine, tmp_path / "a", {"base15.safetensors": sd15_checkpoint()})
    import_models(engine, tmp_path / "b", {"inkwash.safetensors": sd15_lora(fill=5)})
    import_models(engine, tmp_path / "c", {"inkwash.safetensors": sd15_lora(fill=9)})
    app = build_app()
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("f3")
        await settle(pilot)
        screen = app.generate_screen
        names = [c.model_name for c in screen.checkpoints]
        screen.query_one("#checkpoint", Select).value = names.index("base15")
        screen.query_one(PromptEditor).text = "a heron <lora:inkwash:0.5>"
        [(_, shown, _)], _ = screen._resolve_loras()
        first_found = min(
            (lora for lora in screen.loras if lora.lora_name == "inkwash"),
            key=lambda lora: lora.file_id,
        )
        assert shown.sha256 != first_found.sha256  # the two lookups would differ
        await pilot.press("ctrl+r")
        await wait_until(pilot, lambda: len(screen.runs) == 1, what="run recorded")
        assert [lo["sha256"] for lo in runner.jobs[0].params["loras"]] == [shown.sha256.lower()]


async def test_a_rerun_is_cancelled_from_the_jobs_bar(
    build_app: Callable[..., AssetMgrApp], engine: Engine, runner: FakeJobRunner
) -> None:
    import threading

    make_local(engine, 920005)
    app = build_app()
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("f3")
        await settle(pilot)
        screen = app.generate_screen
        screen.query_one(PromptEditor).text = "a lighthouse"
        await pilot.press("ctrl+r")
        await wait_until(pilot, lambda: len(screen.runs) == 1, what="run recorded")
        runner.gate = threading.Event()
        screen.query_one("#history", OptionList).highlighted = 0
        await pilot.press("ctrl+t")
        await wait_until(pilot, runner.waiting_at_gate.is_set, what="the rerun's job running")
        [job] = app.jobs.active("generate")
        app.cancel_job(job.id)
        await wait_until(pilot, lambda: not app.jobs.active("generate"), what="the rerun ended")
        newest = app.services.generation.runs().runs[0]
        assert newest.status == "failed" and "cancelled" in str(newest.error)
        assert newest.rerun_of == screen.runs[0].run_id and len(runner.jobs) == 2


async def test_a_completed_lora_name_with_a_colon_reaches_the_job(
    build_app: Callable[..., AssetMgrApp], engine: Engine, runner: FakeJobRunner
) -> None:
    """Completing `Detail:Tweaker v1` yields a tag that generation resolves to that file."""
    from tests.app.test_generate import name_as_on_civitai

    make_local(engine, 920005)
    lora_sha = make_local(engine, 920006)
    name_as_on_civitai(engine, "DetailTweaker_v10.safetensors", "Detail:Tweaker v1.safetensors")
    app = build_app()
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("f3")
        await settle(pilot)
        screen = app.generate_screen
        editor = screen.query_one(PromptEditor)
        editor.focus()
        await pilot.press(*"a cat, <lora:Detail")
        await wait_until(pilot, lambda: editor.completion_open, what="lora completion")
        await pilot.press("tab")
        assert editor.text == "a cat, <lora:Detail_Tweaker v1:1>"
        await pilot.press("ctrl+r")
        await wait_until(pilot, lambda: len(screen.runs) == 1, what="run recorded")
        assert screen.runs[0].status == "ok"
        [lora] = runner.jobs[0].params["loras"]
        assert (lora["name"], lora["sha256"]) == ("Detail_Tweaker v1", lora_sha.lower())
