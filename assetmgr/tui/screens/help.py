"""Every action with its key and what it does, from the one registry (`assetmgr.tui.actions`)."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import DataTable, Label

from assetmgr.tui.actions import ACTIONS

_SCOPE_TITLES = {
    "app": "Everywhere",
    "catalog": "Catalog",
    "generate": "Generate",
    "sandbox": "Sandbox",
    "settings": "Settings",
}


class HelpScreen(ModalScreen[None]):
    BINDINGS = [Binding("escape,f1,q", "dismiss", "Close", id="help.close")]

    def __init__(self, keymap: dict[str, str] | None = None) -> None:
        super().__init__(classes="dialog-screen")
        self.keymap = keymap or {}

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog help-dialog"):
            yield Label("Keys and actions", classes="dialog-title")
            yield DataTable(id="help-table", cursor_type="row", zebra_stripes=True)
            yield Label(
                "ctrl+p opens the command palette · letters act when the table has focus",
                classes="dim",
            )

    def on_mount(self) -> None:
        table = self.query_one(DataTable)
        table.add_columns("Where", "Key", "Action", "What it does", "Id")
        for spec in ACTIONS:
            key = self.keymap.get(spec.id, spec.key)
            table.add_row(  # Text cells: a str cell is markup, and "[" is a key here
                Text(_SCOPE_TITLES.get(spec.scope, spec.scope)),
                Text(self.app.get_key_display(Binding(key, spec.action))),
                Text(spec.description),
                Text(spec.tooltip),
                Text(spec.id),
            )
