"""Find a model file by any of Civitai's six hashes: the local catalog first, then the API."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine
from sqlmodel import Session

from catalog import repo
from catalog.civitai.errors import NotFoundError
from catalog.db import session_scope
from catalog.errors import BadHashError, NotInCatalogError

if TYPE_CHECKING:
    from catalog.civitai.client import CivitaiClient

log = logging.getLogger(__name__)

_HASH_LENGTHS = {8: "AutoV1 or CRC32", 10: "AutoV2", 12: "AutoV3", 64: "SHA256 or BLAKE3"}


def normalize_hash(text: str) -> str:
    """Uppercase hex of an accepted length, or `BadHashError`."""
    digest = text.strip().upper()
    if len(digest) not in _HASH_LENGTHS or any(c not in "0123456789ABCDEF" for c in digest):
        shown = text if len(text) <= 80 else text[:77] + "..."
        raise BadHashError(f"{shown!r} is not a Civitai hash", text=shown)
    return digest


def _local(engine: Engine, digest: str, source: str) -> list[dict[str, Any]]:
    with Session(engine) as session:
        return [dict(match, source=source) for match in repo.find_files_by_hash(session, digest)]


def lookup_hash(engine: Engine, client: CivitaiClient | None, text: str) -> list[dict[str, Any]]:
    """Matches as dicts (model/version/file ids and names, hash_type, source)."""
    digest = normalize_hash(text)
    matches = _local(engine, digest, "local")
    if matches or client is None:
        if not matches:
            raise NotInCatalogError(
                f"no file with hash {digest} in the local catalog", kind="hash", key=digest
            )
        return matches
    try:
        version = client.get_version_by_hash(digest)
    except NotFoundError:
        raise NotInCatalogError(
            f"no file with hash {digest} in the local catalog or on Civitai",
            kind="hash-anywhere",
            key=digest,
        ) from None
    with session_scope(engine, write=True) as session:
        repo.upsert_version(session, version)
    matches = _local(engine, digest, "civitai")
    if not matches:  # the API matched a hash type the payload did not list; report what it said
        log.info("Civitai matched %s but listed no such hash on the version's files", digest)
        primary = version.primary_file
        matches = [
            {
                "hash_type": "unknown",
                "model_id": version.model_id,
                "model_name": version.model.name if version.model else None,
                "version_id": version.id,
                "version_name": version.name,
                "file_id": primary.id if primary else None,
                "file_name": primary.name if primary else None,
                "source": "civitai",
            }
        ]
    return matches
