"""Sandbox: the pinned image record, plugins with their hashes, warm worker state.

Plugin names and versions come from plugin files, notes quote the engine's messages: every
value is cleaned (`assetmgr.display.clean`) and shown as `Text`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.containers import VerticalScroll
from textual.screen import Screen
from textual.widgets import Footer, Header, Label, Static

from assetmgr.display import clean
from assetmgr.tui.actions import bindings_for
from assetmgr.tui.services import SandboxInfo

if TYPE_CHECKING:
    from assetmgr.tui.app import AssetMgrApp


def _note(text: str) -> Text:
    style = "yellow" if text.startswith("not available") or "MISMATCH" in text else "dim"
    return Text(clean(text), style=style)


class SandboxScreen(Screen[None]):
    BINDINGS = bindings_for("sandbox")

    def __init__(self) -> None:
        super().__init__(id="sandbox")

    @property
    def mgr(self) -> AssetMgrApp:
        return self.app  # type: ignore[return-value]

    def compose(self) -> ComposeResult:
        yield Header(show_clock=False)
        with VerticalScroll(id="sandbox-body"):
            yield Label("Pinned image", classes="section")
            yield Static("checking…", id="image-info")
            yield Label("Plugins", classes="section")
            yield Static("", id="plugins-info")
            yield Label("Warm workers", classes="section")
            yield Static("", id="warm-info")
        yield Footer()

    def on_mount(self) -> None:
        self.mgr.load_sandbox_info()

    def action_refresh(self) -> None:
        self.query_one("#image-info", Static).update("checking…")
        self.mgr.load_sandbox_info()

    def show_info(self, info: SandboxInfo) -> None:
        if info.image:
            table = Table(box=None, show_header=False, padding=(0, 2, 0, 0))
            table.add_column(style="bold", no_wrap=True)
            table.add_column(overflow="fold")
            for key, value in info.image.items():
                table.add_row(Text(clean(key)), Text(clean(value)))
            table.add_row("state", _note(info.image_note))
            self.query_one("#image-info", Static).update(table)
        else:
            self.query_one("#image-info", Static).update(_note(info.image_note))
        if info.plugins:
            plugins = Table(box=None, padding=(0, 2, 0, 0))
            for column in ("name", "version", "sha256"):
                plugins.add_column(column)
            for plugin in info.plugins:
                plugins.add_row(
                    Text(clean(plugin.name)),
                    Text(clean(plugin.version)),
                    Text(clean(plugin.sha256)),
                )
            self.query_one("#plugins-info", Static).update(plugins)
        else:
            self.query_one("#plugins-info", Static).update(_note(info.plugins_note))
        if info.warm_workers:
            workers = Table(box=None, padding=(0, 2, 0, 0))
            for column in info.warm_workers[0]:
                workers.add_column(Text(clean(column)))
            for worker in info.warm_workers:
                workers.add_row(*(Text(clean(v)) for v in worker.values()))
            self.query_one("#warm-info", Static).update(workers)
        else:
            self.query_one("#warm-info", Static).update(_note(info.warm_note))
