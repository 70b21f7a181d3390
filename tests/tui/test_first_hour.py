"""The Generate screen's focus, Enter in the suggestion list and the output path; Cancel as the
default of destructive dialogs; failed jobs that keep their reason; the log the hints name."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import Engine, select
from sqlmodel import Session
from textual.widgets import Button, Label

from assetmgr import logs
from assetmgr.errors import AssetMgrError
from assetmgr.tui.app import FINISHED_JOB_SHOWN_S, AssetMgrApp
from assetmgr.tui.jobs import JobBoard, JobError
from assetmgr.tui.screens.dialogs import ConfirmModal, ErrorModal
from assetmgr.tui.widgets.jobs import JobLine
from assetmgr.tui.widgets.prompt import PromptEditor
from catalog.models import LocalFile
from tests import hostile as h
from tests.app.fakes import FakeJobRunner
from tests.tui.conftest import make_local, plain, settle, wait_until
from tests.tui.test_actions import show_version
from tests.tui.test_display import assert_shown_clean
from tests.tui.test_small_terminals import mark_local

SMALL = (80, 24)


# --- generate --------------------------------------------------------------------------------


async def test_the_prompt_has_the_focus_when_generate_opens(
    build_app: Callable[..., AssetMgrApp],
) -> None:
    app = build_app()
    async with app.run_test(size=SMALL) as pilot:
        await settle(pilot)
        await pilot.press("f3")
        await settle(pilot)
        editor = app.generate_screen.query_one(PromptEditor)
        assert app.focused is editor
        assert app.generate_screen.query_one("#gen-form").scroll_y == 0  # its label in view
        await pilot.press(*"a lighthouse")
        assert editor.text == "a lighthouse"


async def test_enter_accepts_a_completion(
    build_app: Callable[..., AssetMgrApp], engine: Engine, tmp_path: Path
) -> None:
    make_local(engine, 920006)  # Detail Tweaker (LoRA, trigger word add_detail)
    app = build_app()
    async with app.run_test(size=SMALL) as pilot:
        await settle(pilot)
        await pilot.press("f3")
        await wait_until(pilot, lambda: bool(app.generate_screen.loras), what="local LoRAs")
        screen = app.generate_screen
        editor = screen.query_one(PromptEditor)
        await pilot.press(*"a cat, <lora:Det")
        await wait_until(pilot, lambda: editor.completion_open, what="lora completion")
        await pilot.press("enter")
        assert editor.text == "a cat, <lora:DetailTweaker_v10:1>"  # no line break typed
        assert not editor.completion_open
        assert not screen.query_one("#completions").display
        await pilot.press("enter")  # with the list closed, Enter is a new line again
        assert editor.text == "a cat, <lora:DetailTweaker_v10:1>\n"


async def test_the_output_path_is_shown_after_a_generation(
    build_app: Callable[..., AssetMgrApp],
    engine: Engine,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The output folder's name carries terminal controls: shown, but visibly replaced.
    from assetmgr import paths

    runs = tmp_path / f"runs{h.TITLE}"
    monkeypatch.setattr(paths, "runs_dir", lambda: runs)
    make_local(engine, 920005)  # a checkpoint
    app = build_app()
    async with app.run_test(size=SMALL) as pilot:
        await settle(pilot)
        await pilot.press("f3")
        await wait_until(pilot, lambda: bool(app.generate_screen.checkpoints), what="checkpoint")
        await pilot.press(*"a lighthouse", "ctrl+r")
        await wait_until(pilot, lambda: len(app.generate_screen.runs) == 1, what="run done")
        await settle(pilot)
        image = app.generate_screen.runs[0].images[0]
        assert image.is_file()
        result = plain(app.generate_screen.query_one("#gen-result"))
        cleaned = str(image).replace("\x1b", "␛").replace("\x07", "␇")
        assert "run 1 saved to " in result and cleaned in "".join(result.split("\n"))
        assert_shown_clean(app, "run 1 saved to")


# --- destructive dialogs ---------------------------------------------------------------------


async def test_delete_asks_with_cancel_focused_and_enter_keeps_the_file(
    build_app: Callable[..., AssetMgrApp], engine: Engine
) -> None:
    mark_local(engine, 920006)
    app = build_app()
    async with app.run_test(size=SMALL) as pilot:
        await settle(pilot)
        await show_version(app, pilot, 910004, 920006)
        await pilot.press("x")
        await wait_until(pilot, lambda: isinstance(app.screen, ConfirmModal), what="confirm")
        await pilot.pause()
        focused = app.focused
        assert isinstance(focused, Button) and focused.id == "no"
        assert str(focused.label) == "Cancel"
        await pilot.press("enter")
        await settle(pilot)
        assert not isinstance(app.screen, ConfirmModal)
        assert not app.jobs.all()  # no delete job started
        with Session(engine) as session:
            assert session.execute(select(LocalFile)).scalars().first() is not None


# --- failed jobs -----------------------------------------------------------------------------


def job_line(app: AssetMgrApp, job_id: str) -> JobLine:
    return app.catalog.query_one(f"#job-{job_id}", JobLine)


async def test_a_failed_job_keeps_its_reason_hint_and_whole_message(
    build_app: Callable[..., AssetMgrApp], engine: Engine, tmp_path: Path
) -> None:
    error = AssetMgrError(
        "the worker stopped: unknown sampler 'Euler z'\nthe worker's own report, line two",
        hint="Pick a sampler from the list.",
        title="Generation failed",
    )
    make_local(engine, 920005)
    app = build_app(runner=FakeJobRunner(error=error))
    async with app.run_test(size=(160, 48)) as pilot:
        await settle(pilot)
        await pilot.press("f3")
        await wait_until(pilot, lambda: bool(app.generate_screen.checkpoints), what="checkpoint")
        await pilot.press(*"a cat", "ctrl+r")
        await wait_until(pilot, lambda: isinstance(app.screen, ErrorModal), what="error modal")
        await pilot.press("escape", "f2")
        await settle(pilot)
        job = app.jobs.all()[-1]
        assert job.status == "failed"
        assert job.summary == "the worker stopped: unknown sampler 'Euler z'"
        line = job_line(app, job.id)
        text = plain(line.query_one(".job-text", Label)).strip()
        assert text == (
            "[failed] the worker stopped: unknown sampler 'Euler z' · "
            "hint: Pick a sampler from the list."
        )
        # Long after the others would have gone, it is still there.
        job.finished_at = time.monotonic() - 10 * FINISHED_JOB_SHOWN_S
        app._jobs_changed()
        await pilot.pause()
        assert app.jobs.get(job.id) is job and line.is_attached
        # Details: the whole message, both lines, with title and hint.
        await pilot.click(f"#job-{job.id} .job-details")
        await wait_until(pilot, lambda: isinstance(app.screen, ErrorModal), what="details")
        modal = app.screen
        assert isinstance(modal, ErrorModal)
        assert modal.error_title == "Generation failed"
        assert modal.message.endswith("line two") and modal.hint == error.hint
        await pilot.press("escape")
        await pilot.click(f"#job-{job.id} .job-dismiss")
        await settle(pilot)
        assert app.jobs.get(job.id) is None
        assert not app.catalog.query(JobLine)


async def test_an_unexpected_failure_names_the_log_that_has_its_traceback(
    build_app: Callable[..., AssetMgrApp], engine: Engine, tmp_path: Path
) -> None:
    secret_url = "https://b2.example/x.safetensors?Authorization=SECRET-B2-TOKEN"
    make_local(engine, 920005)
    app = build_app(runner=FakeJobRunner(error=KeyError(f"bad key {secret_url}")))
    async with app.run_test(size=SMALL) as pilot:
        await settle(pilot)
        await pilot.press("f3")
        await wait_until(pilot, lambda: bool(app.generate_screen.checkpoints), what="checkpoint")
        await pilot.press(*"a cat", "ctrl+r")
        await wait_until(pilot, lambda: isinstance(app.screen, ErrorModal), what="error modal")
        modal = app.screen
        assert isinstance(modal, ErrorModal)
        assert modal.error_title == "Unexpected error"
        assert "SECRET-B2-TOKEN" not in modal.message and "Authorization=REDACTED" in modal.message
        assert modal.hint == (
            f"This is a bug in assetmgr; the traceback is in {logs.log_file()}. Please report it."
        )
        text = logs.log_file().read_text("utf-8")
        assert "Traceback (most recent call last)" in text and "KeyError" in text
        assert "SECRET-B2-TOKEN" not in text
        job = app.jobs.all()[-1]
        assert job.status == "failed" and job.error is not None
        assert job.error.hint == modal.hint


def test_the_job_board_keeps_the_newest_failures() -> None:
    board = JobBoard()
    done = board.add("sync", "Sync")
    board.finish(done.id, "done", "synced")
    failed = []
    for i in range(7):
        job = board.add("download", f"file {i}")
        board.fail(job.id, JobError("Download failed", f"reason {i}\nmore", "hint"))
        failed.append(job)
    for job in board.all():
        job.finished_at = time.monotonic() - 1000
    board.prune(keep_finished=3, older_than_s=10, keep_failed=5)
    assert [j.label for j in board.all()] == [f"file {i}" for i in range(2, 7)]
    assert board.all()[0].summary == "reason 2"
    board.forget(failed[-1].id)
    assert failed[-1].id not in {j.id for j in board.all()}
