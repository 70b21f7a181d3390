"""`assetmgr` with no command: the terminal UI."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    app.command("tui")(open_tui)


def open_tui() -> None:
    """Open the terminal UI on the local catalog (seeding the demo catalog when it is empty)."""
    from assetmgr.config import Settings
    from assetmgr.context import open_engine
    from catalog import demo as demo_catalog

    settings = Settings.load()
    engine = open_engine(settings)
    if demo_catalog.catalog_is_empty(engine):
        demo_catalog.seed_demo(engine)
    from assetmgr.tui.app import run_app

    run_app(settings)
