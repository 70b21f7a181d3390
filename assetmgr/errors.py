"""The one error tree of assetmgr.

Every error a user can meet derives from `AssetMgrError`, which carries a one-line message, a
`title` (used for TUI modals) and a `hint` (what to do next). The CLI prints
``error: <message>`` and ``hint: <hint>`` on stderr and exits with `exit_code`.

    AssetMgrError
    ├── UsageError                       options that cannot go together (exit 2, as typer's)
    ├── ConfigError                      bad settings, bad database URL, unreadable config
    └── StoreError                       the content-addressed file store (assetmgr.store)

SandboxError (sandbox.errors, re-exported here) is the root of the sandbox's own tree; its words
are in assetmgr.wording.sandbox.

The catalog layer has trees of its own, re-exported here for the app: `CatalogError`
(`catalog.errors`: NotInCatalogError, MigrationError, DatabaseURLError, BadHashError,
SyncCancelled) and `CivitaiError` (`catalog.civitai.errors`). They carry data; their words are
in `assetmgr.wording.catalog`.

Errors that match a builtin also subclass it (for example `NotInCatalogError` is a `LookupError`),
so generic callers can still catch them.
"""

from __future__ import annotations

from catalog.civitai.errors import CivitaiError
from catalog.errors import CatalogError, MigrationError, NotInCatalogError
from sandbox.errors import SandboxError


class AssetMgrError(Exception):
    """Root of every error assetmgr raises on purpose."""

    title: str = "Error"
    hint: str = ""
    exit_code: int = 1

    def __init__(self, message: str, *, hint: str | None = None, title: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if hint is not None:
            self.hint = hint
        if title is not None:
            self.title = title

    def __str__(self) -> str:
        return self.message


# The roots of every layer's error tree: errors the front ends word themselves (see
# assetmgr.wording); anything else is unexpected.
EXPECTED_ERRORS: tuple[type[Exception], ...] = (
    AssetMgrError,
    CatalogError,
    CivitaiError,
    SandboxError,
)


class UsageError(AssetMgrError):
    """A command line whose parts parse but cannot go together; exits 2 like typer's own."""

    title = "Usage error"
    exit_code = 2


class ConfigError(AssetMgrError):
    """Settings, paths or the database URL are unusable."""

    title = "Configuration error"
    hint = "Check ASSETMGR_HOME, ASSETMGR_DB_URL and the config file (assetmgr config show)."
    exit_code = 2


class StoreError(AssetMgrError):
    """The content-addressed store failed."""

    title = "Store error"
    hint = "Run `assetmgr verify` to check the store."


__all__ = [
    "AssetMgrError",
    "CatalogError",
    "CivitaiError",
    "ConfigError",
    "MigrationError",
    "NotInCatalogError",
    "SandboxError",
    "StoreError",
    "UsageError",
]
