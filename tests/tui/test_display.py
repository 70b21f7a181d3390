"""Every TUI widget that shows outside text, on a hostile catalog and hostile services: what the
app would write to a terminal for each screen and dialog holds none of the hostile sequences,
the values are shown (visibly replaced), and the clipboard and prompt get cleaned text.

The pty test (`test_pty.py`) drives the real program; this one reaches the widgets a pty run
cannot easily open (dialogs, jobs, toasts, completions, history, the Sandbox screen) and
renders them exactly as the driver would (`render_segments` on a truecolor console).
"""

from __future__ import annotations

import io
import re
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from rich.console import Console
from sqlalchemy import Engine
from textual.pilot import Pilot
from textual.widgets import Input, Select, Static
from textual.widgets._toast import Toast

from assetmgr.errors import AssetMgrError
from assetmgr.tui import messages as m
from assetmgr.tui.app import AssetMgrApp
from assetmgr.tui.screens.dialogs import ConfirmModal, ErrorModal, UpdatesModal
from assetmgr.tui.services import PluginInfo, SandboxInfo
from assetmgr.tui.widgets.prompt import PromptEditor
from tests import hostile as h
from tests.app.fakes import FakeJobRunner
from tests.tui.conftest import (
    SIZE,
    FakeSandboxInfo,
    plain,
    settle,
    wait_until,
)

PAYLOAD = f"{h.OSC52}{h.C1_CSI}{h.RLO}{h.TITLE}{h.MARKUP_LINK}{h.LRI}x{h.CLEAR}PWNCLR"
SHOWN = "␛]52;c;SEFDS0VE␇⟨U+009B⟩2J⟨U+202E⟩␛]0;PWNED-TITLE␇"
"""How the start of PAYLOAD looks on screen."""
SHORT = "␛]52;c;SEFDS0VE␇⟨U+009B⟩"
"""As much of it as fits in a narrow place (a toast, a dialog) without folding."""


def terminal_bytes(app: AssetMgrApp) -> bytes:
    """The bytes the driver would write for a full redraw of the current screen (and the
    screens under a modal), on a truecolor terminal."""
    console = Console(
        file=io.StringIO(), force_terminal=True, color_system="truecolor", legacy_windows=False
    )
    # Textual's own full redraw (as `App.export_screenshot` does), written as the driver does.
    update = app.screen._compositor.render_update(full=True, screen_stack=app._background_screens)
    return update.render_segments(console).encode()


def screen_lines(raw: bytes) -> str:
    """The text of a redraw: colours dropped, each cursor move a line break."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", raw.decode())
    return re.sub(r"\x1b\[[0-9;]*H", "\n", text)


def assert_shown_clean(app: AssetMgrApp, *fragments: str) -> None:
    """No hostile sequence in the redraw, and each fragment on one line of the screen."""
    raw = terminal_bytes(app)
    assert h.find_forbidden(raw) == []
    text = screen_lines(raw)
    for fragment in fragments:
        assert fragment in text, f"{fragment!r} not in {text!r}"


@pytest.fixture
def hostile_engine(engine: Engine) -> Engine:
    h.seed_hostile(engine)
    return engine


async def test_catalog_table_detail_and_filter_bar(
    hostile_engine: Engine, build_app: Callable[..., AssetMgrApp]
) -> None:
    app = build_app()
    async with app.run_test(size=SIZE, notifications=True) as pilot:
        await settle(pilot)
        assert app.catalog.selected_model_id == h.HOSTILE_MODEL_ID
        await wait_until(pilot, lambda: app.catalog.version is not None, what="detail")
        assert_shown_clean(
            app,
            "␛]52;c;SEFDS0VE␇Evil⟨U+009B⟩2JModel",  # table and title
            "by ␛]0;PWNED-TITLE␇mallory⟨U+202E⟩",  # creator
            "bidi⟨U+2066⟩tag⟨U+2069⟩",  # tags
            "v2⟨U+009B⟩2J⟨U+202E⟩gnp.exe",  # versions
            "␛[2J␛[3;7HPWNCLR",  # trigger-word buttons
            "Success⟨U+009B⟩2J",  # the files' scan results
        )
        app.catalog.action_version(1)
        await settle(pilot)
        assert_shown_clean(app, "v1␛]2;PWNED-TITLE2␛\\")
        app.catalog.show_preview(h.LOCAL_VERSION_ID, None, f"cannot read {PAYLOAD}.png")
        await pilot.pause()
        note = app.catalog.query_one("#preview .preview-note", Static)
        assert plain(note).startswith(f"cannot read {SHOWN}")
        assert_shown_clean(app, "cannot read")

        # The base-model facet in its open list, and a tag suggested while typing.
        app.catalog.query_one("#base-filter", Select).expanded = True
        await pilot.pause()
        assert_shown_clean(app, "SDXL␛[5m 1.0 (2)")
        app.catalog.query_one("#base-filter", Select).expanded = False
        app.catalog.query_one("#tag-filter", Input).focus()
        await pilot.press(*"del")
        await wait_until(
            pilot, lambda: bool(app.catalog.query_one("#tag-filter", Input)._suggestion)
        )
        assert_shown_clean(app, "␡tag")


async def test_clipboard_prompt_and_toasts(
    hostile_engine: Engine, build_app: Callable[..., AssetMgrApp]
) -> None:
    app = build_app()
    async with app.run_test(size=SIZE, notifications=True) as pilot:
        await settle(pilot)
        await wait_until(pilot, lambda: app.catalog.version is not None, what="detail")
        app.catalog.action_copy_words()
        assert app.clipboard == "␛[2J␛[3;7HPWNCLR, trig␇ger, ␛]52;c;SEFDS0VE␇word"
        app.copy_to_clipboard(PAYLOAD)  # every other copy is cleaned too
        assert app.clipboard.startswith(SHOWN)
        app.notify(f"Copied {PAYLOAD}", title=PAYLOAD)
        await wait_until(pilot, lambda: bool(app.screen.query(Toast)), what="the toast")
        assert_shown_clean(app, "Copied", "[link=https://evil.")

        app.catalog.action_to_prompt()
        app.action_show_generate()
        await settle(pilot)
        prompt = app.generate_screen.query_one(PromptEditor).text
        assert "\x1b" not in prompt and "␛]2;PWNED-TITLE2␛\\file⟨U+202E⟩gnp" in prompt
        assert_shown_clean(app, "PWNCLR", "(not local)")


async def test_error_confirm_and_updates_dialogs_and_the_jobs_bar(
    hostile_engine: Engine, build_app: Callable[..., AssetMgrApp]
) -> None:
    app = build_app()
    async with app.run_test(size=SIZE, notifications=True) as pilot:
        await settle(pilot)
        app.show_error(AssetMgrError(PAYLOAD, hint=f"hint {PAYLOAD}", title=f"T{h.TITLE2}"))
        await pilot.pause()
        assert isinstance(app.screen, ErrorModal)
        assert_shown_clean(app, SHORT, "hint", "T␛]2;PWNED-TITLE2␛\\")
        await pilot.press("escape")
        app.show_error(RuntimeError(PAYLOAD))
        await pilot.pause()
        assert_shown_clean(app, "RuntimeError:", SHORT)
        await pilot.press("escape")

        plan = SimpleNamespace(
            links=[Path(f"/names/{PAYLOAD}")],
            blob_path=Path(f"/b/{PAYLOAD}"),
            expected_freed_bytes=1,
        )
        app.post_message(m.DeletePlanned(plan, f"label {PAYLOAD}"))
        await wait_until(pilot, lambda: isinstance(app.screen, ConfirmModal), what="confirm")
        assert_shown_clean(app, "Remove the local copy of label", SHORT, "name link:")
        await pilot.press("escape")

        app.check_updates()
        await wait_until(pilot, lambda: isinstance(app.screen, UpdatesModal), what="updates")
        await pilot.pause()
        assert_shown_clean(app, "␛]52;c;SEFDS0VE␇Evil⟨U+009B⟩2JModel", "v1␛]2;PWNED-TITLE2␛\\ →")
        await pilot.press("escape")

        job = app.jobs.add("import", f"Import {PAYLOAD}")
        app.post_message(m.JobProgressed(job.id, 1, 2, f"file {PAYLOAD}"))
        await settle(pilot)
        assert_shown_clean(app, "Import", "file", SHORT)
        app.post_message(m.JobFinished(job.id, f"done {PAYLOAD}"))
        await settle(pilot)
        assert_shown_clean(app, "done", SHORT)


def record_hostile_run(engine: Engine) -> None:
    """A recorded run whose prompt and status carry terminal controls."""
    from sqlmodel import Session

    from catalog.runs import GenerationRun

    with Session(engine) as session, session.begin():
        session.add(
            GenerationRun(
                status=f"done{h.TITLE2}",
                spec={"prompt": f"a cat {PAYLOAD}", "seed": 7},
                models={},
                plugins=[],
            )
        )


async def _generate_screen(pilot: Pilot[Any], app: AssetMgrApp) -> None:
    app.action_show_generate()
    await settle(pilot)
    await wait_until(pilot, lambda: bool(app.generate_screen.loras), what="local LoRAs")


async def test_generate_screen_models_plugins_completions_progress_history(
    hostile_engine: Engine, build_app: Callable[..., AssetMgrApp], tmp_path: Path
) -> None:
    runner = FakeJobRunner(
        plugin_names=((f"plug{PAYLOAD}", "ab" * 32),), stale_reasons=[f"stale {PAYLOAD}"]
    )
    record_hostile_run(hostile_engine)
    app = build_app(runner=runner)
    async with app.run_test(size=SIZE, notifications=True) as pilot:
        await _generate_screen(pilot, app)
        screen = app.generate_screen
        assert_shown_clean(app, "stale", "plug", "a cat", SHORT)
        screen.query_one("#lora-pick", Select).expanded = True
        await pilot.pause()
        assert_shown_clean(app, "␛]52;c;SEFDS0VE␇Evil⟨U+009B⟩2JModel")  # the LoRA labels
        screen.query_one("#lora-pick", Select).expanded = False

        editor = screen.query_one(PromptEditor)
        editor.focus()
        await pilot.press(*"<lora:")
        await wait_until(pilot, lambda: bool(screen.completions), what="completions")
        await pilot.pause()
        assert_shown_clean(app, "<lora:␛]2;PWNED-TITLE2␛\\file⟨U+202E⟩gnp")
        await pilot.press("tab")
        assert "\x1b" not in editor.text and "⟨U+202E⟩" in editor.text

        app.post_message(m.GenerationProgressed("generate-1", 0.5, f"step {PAYLOAD}"))
        await pilot.pause()
        assert_shown_clean(app, "step", SHORT)

        runner.engine_problem = f"no engine {PAYLOAD}"
        app.check_generation()
        await settle(pilot)
        assert_shown_clean(
            app, "Generation not available: the Docker engine is not reachable: no engine", SHORT
        )


async def test_sandbox_screen(
    hostile_engine: Engine, build_app: Callable[..., AssetMgrApp]
) -> None:
    info = SandboxInfo(
        image={"tag": f"img{PAYLOAD}", "plugin wheels": f"dep{h.TITLE2}==1"},
        image_note=f"MISMATCH: {PAYLOAD}",
        plugins=[PluginInfo(f"p{PAYLOAD}", f"1{h.RLO}", "ab" * 32)],
        warm_workers=[{"name": f"w{PAYLOAD}", "status": "running"}],
    )
    app = build_app(sandbox_info=FakeSandboxInfo(info))
    async with app.run_test(size=SIZE, notifications=True) as pilot:
        app.action_show_sandbox()
        await settle(pilot)
        assert_shown_clean(
            app, "img", SHORT, "MISMATCH:", SHORT, "p", SHORT, "1⟨U+202E⟩", "w", SHORT
        )
