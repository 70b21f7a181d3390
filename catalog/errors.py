"""The catalog layer's errors: they carry data and a plain one-line message, never advice.

    CatalogError                   the local catalog (database, migrations, lookups)
    ├── NotInCatalogError          something the catalog does not hold; .kind, .key
    ├── MigrationError             the schema cannot be brought up to date; .where
    ├── DatabaseURLError           an unusable database URL; .backend (None: unparsable)
    ├── BadHashError               text that is no Civitai hash in any form; .text
    └── SyncCancelled              a sync stopped on request; what was written stays

The front ends word them (titles, hints, exit codes). Errors that match a builtin also
subclass it (`NotInCatalogError` is a `LookupError`), so generic callers can catch them.
"""

from __future__ import annotations


class CatalogError(Exception):
    """Root of the catalog layer's errors."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class NotInCatalogError(CatalogError, LookupError):
    """Something the catalog (or the store recorded in it) does not hold.

    `kind` names what was looked for (``model``, ``version``, ``hash``, ``local-file``, ...)
    and `key` its id, name or hash, so a front end can say how to get it.
    """

    def __init__(self, message: str, *, kind: str = "", key: object = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.key = key


class MigrationError(CatalogError):
    """The schema of the catalog database at `where` could not be migrated."""

    def __init__(self, message: str, *, where: str = "") -> None:
        super().__init__(message)
        self.where = where


class DatabaseURLError(CatalogError, ValueError):
    """A database URL that cannot be parsed (`backend` None) or names an unsupported backend."""

    def __init__(self, message: str, *, backend: str | None = None) -> None:
        super().__init__(message)
        self.backend = backend


class BadHashError(CatalogError, ValueError):
    """`text` is not a hash in any of Civitai's forms."""

    def __init__(self, message: str, *, text: str) -> None:
        super().__init__(message)
        self.text = text


class SyncCancelled(CatalogError):
    """The sync was cancelled; what was written stays and the next sync resumes."""


__all__ = [
    "BadHashError",
    "CatalogError",
    "DatabaseURLError",
    "MigrationError",
    "NotInCatalogError",
    "SyncCancelled",
]
