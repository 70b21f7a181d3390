"""The UI keeps answering while a sync, a download and a generation are stuck in their work.

Each job is held inside its slow part until the test lets it go: the sync's listing request
and the download's storage request wait at the fake's gate, the generation waits at its first
step. Typing in the search box must echo and the table must answer meanwhile, so none of that
work runs on the UI's event loop. The assertion is that the UI answers while the three jobs
provably have not moved, not a time bound (the measured times are printed for reference).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine
from textual import events
from textual.widgets import Input

from assetmgr.tui import workers
from assetmgr.tui.app import AssetMgrApp
from assetmgr.tui.widgets.model_table import ModelTable
from assetmgr.tui.widgets.prompt import PromptEditor
from tests.app.fakes import FakeJobRunner
from tests.tui.conftest import (
    SIZE,
    lora_bytes,
    make_local,
    open_version,
    settle,
    sync_models,
    wait_until,
)
from tests.tui.test_actions import show_version


def send_keys(app: AssetMgrApp, keys: Iterable[str]) -> None:
    """Queue key events like a terminal would, without Pilot's wait-for-idle after each key
    (that waits for the whole process to go quiet, which busy workers never let happen)."""
    driver = app._driver
    assert driver is not None
    for key in keys:
        name = {" ": "space"}.get(key, key)
        event = events.Key(name, key if len(key) == 1 else None)
        event.set_sender(app)
        driver.send_message(event)


async def test_ui_answers_during_sync_download_and_generation(
    build_fake_app: Callable[..., AssetMgrApp],
    engine: Engine,
    fake: Any,
    fake_catalog: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    model_id, version_id = open_version(fake_catalog)
    fake_catalog.add_file_bytes(version_id, lora_bytes(filler=20_000_000))
    sync_models(engine, fake, [model_id])
    make_local(engine, 920005)  # a checkpoint for the generation
    monkeypatch.setattr(workers, "SYNC_PAGE_SIZE", 1)
    gate = threading.Event()
    runner = FakeJobRunner(steps=3, gate=gate)
    app = build_fake_app(runner=runner)

    def all_stuck() -> bool:
        return (
            fake.faults.held == 1
            and fake.storage_faults.held == 1
            and runner.waiting_at_gate.is_set()
            and {j.kind for j in app.jobs.active()} == {"download", "sync", "generate"}
        )

    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await pilot.press("f3")
        await wait_until(pilot, lambda: app.generate_screen.state.available, what="generate ready")
        app.generate_screen.query_one(PromptEditor).text = "a lighthouse"
        await pilot.press("ctrl+r")
        await wait_until(pilot, lambda: bool(app.jobs.active("generate")), what="generating")
        await pilot.press("f2")
        await wait_until(pilot, lambda: app.screen.id == "catalog", what="back to the catalog")
        await show_version(app, pilot, model_id, version_id)
        fake.faults.hold(path="/api/v1/models")  # the sync's first listing page
        fake.storage_faults.hold()  # the download's bytes
        await pilot.press("d", "s")  # download, then sync
        await wait_until(pilot, all_stuck, what="all three jobs stuck in their work")
        table = app.catalog.query_one(ModelTable)
        search = app.catalog.query_one("#search", Input)
        echoes: list[float] = []  # key presses until the search box shows the text
        answers: list[float] = []  # key presses until the table shows the matching model
        for text, expected in (
            ("harborlight", "Harborlight Mix"),
            ("pixel spr", "Retro Pixel Sprites"),
        ):
            search.focus()
            search.value = ""
            started = time.monotonic()
            send_keys(app, text)
            await wait_until(
                pilot,
                lambda: search.value == text,  # noqa: B023  (awaited right here)
                what=f"echo {text!r}",
            )
            echoes.append(time.monotonic() - started)
            await wait_until(
                pilot,
                lambda: [r.name for r in table.rows_by_id.values()] == [expected],  # noqa: B023
                what=f"search {text!r}",
            )
            answers.append(time.monotonic() - started)
            assert all_stuck()
        table.focus()
        before = table.cursor_row
        started = time.monotonic()
        send_keys(app, ["down"])
        await wait_until(pilot, lambda: table.cursor_row == before + 1 or table.row_count == 1)
        echoes.append(time.monotonic() - started)
        assert all_stuck()
        print(f"echo {max(echoes) * 1000:.0f} ms, search answer {max(answers) * 1000:.0f} ms")
        # Let them go: each finishes normally.
        fake.faults.release()
        fake.storage_faults.release()
        gate.set()
        await wait_until(pilot, lambda: not app.jobs.active(), timeout=60, what="jobs finished")
        assert {j.kind: j.status for j in app.jobs._jobs.values()} == {
            "download": "done",
            "sync": "done",
            "generate": "done",
        }
        assert {j.kind: j.status for j in app.jobs.all()} == {
            "download": "done",
            "sync": "done",
            "generate": "done",
        }
