"""The one error tree of assetmgr.

Every error a user can meet derives from `AssetMgrError`, which carries a one-line message, a
`title` (used for TUI modals) and a `hint` (what to do next). The CLI prints
``error: <message>`` and ``hint: <hint>`` on stderr and exits with `exit_code`.

    AssetMgrError
    ├── UsageError                       options that cannot go together (exit 2, as typer's)
    ├── ConfigError                      bad settings, bad database URL, unreadable config
    ├── CatalogError                     the local catalog (database, migrations, lookups)
    │   ├── NotInCatalogError            an id, name or hash that the catalog does not hold
    │   └── MigrationError               the database schema cannot be brought up to date
    ├── CivitaiError                     anything from the Civitai API (catalog.civitai.errors)
    │   ├── CivitaiConnectionError       the API could not be reached (DNS, refused, timeouts)
    │   ├── CivitaiResponseValidationError  a payload that does not have the documented shape
    │   └── CivitaiStatusError           an HTTP error status; status_code, url
    │       ├── CivitaiBadRequestError   400
    │       ├── LoginRequiredError       401: the file needs an API key
    │       ├── UnauthorizedError        401: the key is wrong or the action needs one
    │       ├── DownloadDisabledError    401: the creator disabled downloads
    │       ├── EarlyAccessError         403: early access not bought; .deadline
    │       ├── ForbiddenError           403: no access
    │       ├── NotFoundError            404
    │       ├── ArchivedError            410: archived model
    │       ├── RateLimitedError         429 after all retries; .retry_after
    │       └── ServerError              5xx after all retries
    └── StoreError                       the content-addressed file store (assetmgr.store)

SandboxError (sandbox.errors, re-exported here) is the root of the sandbox's own tree; its words
are in assetmgr.wording.sandbox.

Errors that match a builtin also subclass it (for example `NotInCatalogError` is a `LookupError`),
so generic callers can still catch them.
"""

from __future__ import annotations

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
# assetmgr.wording); anything else is unexpected. catalog and sandbox add their roots here
# as their trees leave this module.
EXPECTED_ERRORS: tuple[type[Exception], ...] = (AssetMgrError, SandboxError)


class UsageError(AssetMgrError):
    """A command line whose parts parse but cannot go together; exits 2 like typer's own."""

    title = "Usage error"
    exit_code = 2


class ConfigError(AssetMgrError):
    """Settings, paths or the database URL are unusable."""

    title = "Configuration error"
    hint = "Check ASSETMGR_HOME, ASSETMGR_DB_URL and the config file (assetmgr config show)."
    exit_code = 2


class CatalogError(AssetMgrError):
    """The local catalog database failed."""

    title = "Catalog error"
    hint = "Run `assetmgr db upgrade`; if the database is damaged, move it away and sync again."


class NotInCatalogError(CatalogError, LookupError):
    """An id, name or hash that the local catalog does not hold."""

    title = "Not in the catalog"
    hint = "Run `assetmgr sync` (or `assetmgr sync --model-id N`) to fetch it first."
    exit_code = 3


class MigrationError(CatalogError):
    """The schema could not be migrated."""

    title = "Migration failed"


class CivitaiError(AssetMgrError):
    """Base for everything that comes from the Civitai API."""

    title = "Civitai error"
    hint = "Try again later; `--api-base` or CIVITAI_API_BASE select another server."


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
