"""The report of an import in the TUI: a real import through the app's services, then the
report opened from the job's line in the jobs bar and from the command palette."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from textual.pilot import Pilot
from textual.widgets import Button, Input, Static

from assetmgr.store.import_report import ImportReport
from assetmgr.tui.app import AssetMgrApp
from assetmgr.tui.screens.dialogs import PromptModal
from assetmgr.tui.screens.import_report import ImportReportScreen
from tests import model_layouts as layouts
from tests.tui.conftest import SIZE, plain, settle, wait_until


def odd_folder(root: Path) -> Path:
    folder = root / "models" / "Lora"
    folder.mkdir(parents=True)
    (folder / "good.safetensors").write_bytes(layouts.lora(1))
    (folder / "good.json").write_text(json.dumps({"activation text": "good word"}))
    (folder / "zcopy.safetensors").write_bytes(layouts.lora(1))
    (folder / "broken.safetensors").write_bytes(layouts.lora(2) + b"tail")
    (folder / "old.safetensors").write_bytes(layouts.lora(3))
    (folder / "old.civitai.info").write_bytes(b"\xff\xfe not json")
    # A name that tries to colour the terminal and to read as markup.
    (folder / "evil\x1b[31m[b]red[i].safetensors").write_bytes(layouts.lora(4))
    (root / "models" / "ESRGAN").mkdir()
    (root / "models" / "ESRGAN" / "4x.safetensors").write_bytes(layouts.esrgan(5))
    return root / "models"


async def run_import(app: AssetMgrApp, pilot: Pilot[None], folder: Path) -> None:
    """Import `folder` as a user does: `i`, the folder's path, Enter."""
    await settle(pilot)
    await pilot.press("i")
    await wait_until(pilot, lambda: isinstance(app.screen, PromptModal), what="prompt")
    app.screen.query_one("#answer", Input).value = str(folder)
    await pilot.press("enter")
    await wait_until(pilot, lambda: not app.jobs.active("import"), what="import")
    await settle(pilot)


def report_text(screen: ImportReportScreen) -> str:
    return "\n".join(plain(s) for s in screen.query(Static))


async def test_the_import_report_opens_from_the_jobs_bar_and_the_palette(
    build_fake_app: Callable[..., AssetMgrApp], tmp_path: Path
) -> None:
    folder = odd_folder(tmp_path)
    app = build_fake_app()
    async with app.run_test(size=SIZE) as pilot:
        await run_import(app, pilot, folder)

        job = app.jobs.all()[-1]
        assert job.kind == "import" and job.status == "done", job.summary
        assert job.summary == ("imported 4 of 6 files; 1 skipped, 1 duplicate, 1 sidecar ignored")
        report = job.result
        assert isinstance(report, ImportReport) and report.accounted
        # Something was not imported: the line stays until its report is opened.
        assert job.keep
        app.jobs.prune(keep_finished=0, older_than_s=0)
        assert app.jobs.get(job.id) is job
        button = app.catalog.query_one(f"#job-{job.id} .job-report", Button)
        assert button.display

        await pilot.click(f"#job-{job.id} .job-report")
        await wait_until(pilot, lambda: isinstance(app.screen, ImportReportScreen), what="report")
        screen = app.screen
        assert isinstance(screen, ImportReportScreen)
        shown = report_text(screen)
        assert "imported 4 of 6 files; 1 skipped, 1 duplicate, 1 sidecar ignored" in shown
        assert (
            "Skipped (1)\n\nLora/broken.safetensors: the file has 4 bytes after the last tensor"
            in shown
        )
        assert "Lora/zcopy.safetensors: the same bytes as Lora/good.safetensors" in shown
        assert "Lora/old.civitai.info: not valid JSON" in shown
        assert "ESRGAN/4x.safetensors: Upscaler, Other (local) · typed by its folder ESRGAN/" in (
            shown
        )
        assert "Lora/good.safetensors: LORA, SD 1.5 (local)" in shown
        assert "What to do\n\nOnly files whose bytes are a valid model are imported" in shown
        assert "Files with the same bytes (SHA256) are stored once" in shown
        # The hostile name is shown, cleaned: no escape reaches the terminal, no markup applies.
        assert "evil␛[31m[b]red[i].safetensors" in shown
        assert "\x1b" not in shown
        assert not job.keep  # opened: it may leave the jobs bar now

        await pilot.press("escape")
        await wait_until(pilot, lambda: not isinstance(app.screen, ImportReportScreen))
        titles = [c.title for c in app.get_system_commands(app.screen)]
        assert "Import report" in titles
        app.open_import_report()
        await wait_until(pilot, lambda: isinstance(app.screen, ImportReportScreen))
        await pilot.pause()
        assert isinstance(app.screen, ImportReportScreen)
        assert "Lora/zcopy.safetensors" in report_text(app.screen)


async def test_the_report_fits_a_small_terminal(
    build_fake_app: Callable[..., AssetMgrApp], tmp_path: Path
) -> None:
    folder = odd_folder(tmp_path)
    app = build_fake_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await run_import(app, pilot, folder)
        app.open_import_report()
        await wait_until(pilot, lambda: isinstance(app.screen, ImportReportScreen))
        await pilot.pause()
        screen = app.screen
        dialog = screen.query_one(".import-report-dialog")
        close = screen.query_one("#close", Button)
        for region in (dialog.region, close.region):
            assert region.x >= 0 and region.y >= 0
            assert region.right <= 80 and region.bottom <= 24, region
        assert close.region.height > 0
        body = screen.query_one("#report-body")
        assert body.has_focus  # arrow keys scroll the report
        await pilot.press("end")
        await pilot.press("enter")  # Enter does not close the report by accident
        assert isinstance(app.screen, ImportReportScreen)
        await pilot.press("escape")
        await wait_until(pilot, lambda: not isinstance(app.screen, ImportReportScreen))


async def test_a_clean_import_does_not_linger(
    build_fake_app: Callable[..., AssetMgrApp], tmp_path: Path
) -> None:
    folder = tmp_path / "clean" / "Lora"
    folder.mkdir(parents=True)
    (folder / "only.safetensors").write_bytes(layouts.lora(9))
    app = build_fake_app()
    async with app.run_test(size=SIZE) as pilot:
        await run_import(app, pilot, folder)
        job = app.jobs.all()[-1]
        assert job.summary == "imported 1 of 1 files" and not job.keep
        assert isinstance(job.result, ImportReport)
