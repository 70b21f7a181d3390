"""The terminal UI (Textual). Entry point: `assetmgr.tui.app.run_app`; factory: `make_app`."""
