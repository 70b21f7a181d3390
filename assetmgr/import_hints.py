"""What to do about each outcome of `assetmgr import`: one hint per reason code, for the CLI's
report and the TUI's alike (the codes are `assetmgr.store.import_report`'s)."""

from __future__ import annotations

_CONTENT = "Only files whose bytes are a valid model are imported, whatever their names; "

SKIP_HINTS: dict[str, str] = {
    "pickle-refused": "Pickle checkpoints can run code when loaded; pass --allow-pickle to store "
    "them anyway (never unpickled on the host), or use a .safetensors version.",
    "invalid-safetensors": _CONTENT + "the file was left as it is.",
    "not-a-model": _CONTENT + "the file was left as it is.",
    "special-file": "FIFOs, devices and sockets are never opened as models.",
    "broken-link": "Fix or remove the link and import again.",
    "link-loop": "Each folder is walked once, however many links lead to it.",
    "unreadable": "Check the file's permissions (and the drive it is on), then import again.",
    "unreadable-folder": "Check the folder's permissions, then import again.",
    "changed": "Another program is writing the file; import again when it is done.",
    "catalog-refused": "The other files were imported; `assetmgr db upgrade` repairs the "
    "catalog's schema, then import again.",
    "store-failed": "The other files were imported; run `assetmgr verify`, then import again.",
    "failed": "The other files were imported; import again to retry this one.",
    "internal-error": "This is a bug in assetmgr; the other files were imported. Rerun with "
    "-v for details and report it.",
}
"""Hints for the codes of skipped files."""

SIDECAR_HINTS: dict[str, str] = {
    "sidecar-link": "Sidecars are hints; the file was imported by its content.",
    "sidecar-unreadable": "Sidecars are hints; the file was imported by its content.",
    "sidecar-malformed": "Sidecars are hints; the file was imported by its content.",
    "sidecar-no-version": "Sidecars are hints; the file was imported by its content.",
    "sidecar-of-duplicate": "Files with the same bytes are stored once; the first copy's "
    "sidecars were used.",
    "claim-contradicted": "A sidecar never changes what the catalog holds; the file's own "
    "hash decides. The file was imported by its content.",
    "claim-hash-mismatch": "The sidecar describes other bytes; the file was imported by its "
    "content.",
    "claim-no-hash": "Older sidecars list no SHA256, so they cannot be checked; the file was "
    "imported by its content (import online to identify it by its hash).",
    "claim-ids": "The file was imported by its content; the sidecar was ignored.",
    "claim-not-recorded": "The file was imported by its content; the sidecar was ignored.",
    "claim-overruled": "The file's own hash decides which version it is.",
}
"""Hints for the codes of ignored sidecars."""

DUPLICATE_HINT = (
    "Files with the same bytes (SHA256) are stored once; `assetmgr duplicates` lists them."
)

STOP_HINTS: dict[str, str] = {
    "cancelled": "Import again to finish: files already in the store are not copied twice.",
    "catalog-unavailable": "Check that the catalog's database is reachable and writable "
    "(assetmgr config show), then import again.",
    "store-unwritable": "Free some space or move ASSETMGR_HOME to a larger volume, then import "
    "again.",
}
"""Hints for why a whole import stopped."""


def hint_for(code: str) -> str | None:
    return SKIP_HINTS.get(code) or SIDECAR_HINTS.get(code) or STOP_HINTS.get(code)


__all__ = ["DUPLICATE_HINT", "SIDECAR_HINTS", "SKIP_HINTS", "STOP_HINTS", "hint_for"]
