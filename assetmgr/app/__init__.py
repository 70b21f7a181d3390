"""The application layer: one `AppContext` and the use cases the CLI and the TUI adapt.

No UI imports here; errors are raised with their data and worded by `assetmgr.wording`.
"""

from assetmgr.app.context import AppContext

__all__ = ["AppContext"]
