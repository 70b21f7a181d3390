"""`assetmgr` with no command: the terminal UI."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    app.command("tui")(open_tui)


def open_tui() -> None:
    """Open the terminal UI on the local catalog (seeding the demo catalog when it is empty)."""
    from assetmgr.app.context import AppContext
    from assetmgr.app.models import seed_demo_if_empty
    from assetmgr.config import Settings

    settings = Settings.load()
    with AppContext(settings) as ctx:
        seed_demo_if_empty(ctx)
    from assetmgr.tui.app import run_app

    run_app(settings)
