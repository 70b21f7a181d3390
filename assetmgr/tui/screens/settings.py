"""Settings: the Civitai API key (kept in the keyring, shown masked), store and concurrency."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.containers import Horizontal, VerticalScroll
from textual.screen import Screen
from textual.widgets import Button, Footer, Header, Input, Label, Static

from assetmgr import paths
from assetmgr.config import mask_secret
from assetmgr.display import clean
from assetmgr.tui.actions import bindings_for

if TYPE_CHECKING:
    from assetmgr.tui.app import AssetMgrApp


class SettingsScreen(Screen[None]):
    BINDINGS = bindings_for("settings")

    def __init__(self) -> None:
        super().__init__(id="settings")

    @property
    def mgr(self) -> AssetMgrApp:
        return self.app  # type: ignore[return-value]

    def compose(self) -> ComposeResult:
        yield Header(show_clock=False)
        with VerticalScroll(id="settings-body"):
            yield Label("Civitai API key", classes="section")
            yield Static("", id="key-current")
            yield Input(
                placeholder="paste a new key (stored in the OS keyring)",
                password=True,
                id="api-key",
            )
            yield Label("Store", classes="section")
            yield Static("", id="store-info")
            yield Label("Concurrency", classes="section")
            with Horizontal(classes="form-row"):
                yield Label("downloads at once", classes="field-label")
                yield Input(id="download-concurrency", type="integer")
            with Horizontal(classes="form-row"):
                yield Label("sync requests at once", classes="field-label")
                yield Input(id="sync-concurrency", type="integer")
            yield Button("Save", id="save", variant="primary")
        yield Footer()

    def on_mount(self) -> None:
        self.show_settings()

    def show_settings(self) -> None:
        settings = self.mgr.services.settings
        self.query_one("#key-current", Static).update(
            Text.assemble(
                ("current: ", "dim"),
                mask_secret(settings.api_key),
                (f"  (from the {settings.api_key_source})", "dim")
                if settings.api_key
                else ("  downloads that need a login will fail", "yellow"),
            )
        )
        self.query_one("#api-key", Input).value = ""
        store = Text()
        store.append(clean(f"store   {paths.store_dir()}") + "\n")
        store.append(clean(f"catalog {settings.database_url_shown}") + "\n")
        store.append(clean(f"config  {paths.config_file()}") + "\n")
        store.append("Set ASSETMGR_HOME (or ASSETMGR_DB_URL) to move them.", style="dim")
        self.query_one("#store-info", Static).update(store)
        self.query_one("#download-concurrency", Input).value = str(settings.download_concurrency)
        self.query_one("#sync-concurrency", Input).value = str(settings.sync_concurrency)

    @on(Button.Pressed, "#save")
    def action_save(self) -> None:
        key = self.query_one("#api-key", Input).value.strip() or None
        values: dict[str, Any] = {}
        settings = self.mgr.services.settings
        for widget_id, name, current in (
            ("#download-concurrency", "download_concurrency", settings.download_concurrency),
            ("#sync-concurrency", "sync_concurrency", settings.sync_concurrency),
        ):
            try:
                value = int(self.query_one(widget_id, Input).value)
            except ValueError:
                self.notify(f"{name.replace('_', ' ')} must be a number", severity="error")
                return
            if not 1 <= value <= 16:
                self.notify(f"{name.replace('_', ' ')} must be 1-16", severity="error")
                return
            if value != current:
                values[name] = value
        self.mgr.save_settings(key, values)
