"""The store's rows in the catalog: `LocalFile` states and the download targets."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session
from sqlmodel import col

from assetmgr.errors import NotInCatalogError
from assetmgr.store.download import FileTarget
from assetmgr.store.hashing import FileHashes
from catalog.models import LocalFile, Model, ModelFile, ModelVersion


def file_target(session: Session, version_id: int, file_id: int | None = None) -> FileTarget:
    """The download target for a version's file (the primary one unless `file_id` is given)."""
    version = session.get(ModelVersion, version_id)
    if version is None:
        raise NotInCatalogError(
            f"version {version_id} is not in the local catalog", kind="version", key=version_id
        )
    files = list(version.files)
    if not files:
        raise NotInCatalogError(
            f"version {version_id} has no files in the catalog",
            kind="version-files",
            key=version_id,
        )
    chosen: ModelFile | None
    if file_id is not None:
        chosen = next((f for f in files if f.id == file_id), None)
        if chosen is None:
            raise NotInCatalogError(
                f"file {file_id} does not belong to version {version_id}",
                kind="version-file",
                key=version.model_id,
            )
    else:
        chosen = next((f for f in files if f.is_primary), files[0])
    model = session.get(Model, version.model_id)
    exact_size, approx_size = sizes_from_kb(chosen.size_kb)
    return FileTarget(
        version_id=version.id,
        file_id=chosen.id,
        name=chosen.name or f"file-{chosen.id}",
        expected_sha256=(chosen.sha256 or "").upper(),
        expected_size=exact_size,
        approx_size=approx_size,
        format=chosen.format,
        model_type=model.type if model else None,
        base_model=version.base_model,
        model_name=model.name if model else None,
        version_name=version.name,
        pickle_scan_result=chosen.pickle_scan_result,
        virus_scan_result=chosen.virus_scan_result,
    )


def sizes_from_kb(size_kb: float | None) -> tuple[int | None, int | None]:
    """(exact, approximate) bytes from Civitai's sizeKB, which is bytes/1024 as a float.

    A value that maps to whole bytes is exact; a fractional one (rounded somewhere) is only
    approximate, so it is rounded up and bounds the download with a margin while the hash
    decides. Missing, non-finite or non-positive means unknown.
    """
    if size_kb is None or not math.isfinite(size_kb) or size_kb <= 0:
        return None, None
    size = size_kb * 1024
    rounded = round(size)
    if abs(size - rounded) < 1e-3:
        return rounded, None
    return None, math.ceil(size)


def set_local_state(
    session: Session,
    *,
    file_id: int | None,
    sha256: str,
    state: str,
    path: Path | None,
    hashes: FileHashes | None = None,
    size_bytes: int | None = None,
    fingerprint: str | None = None,
) -> LocalFile:
    """Create or update the `LocalFile` row for a catalog file (or a local-only blob).

    `fingerprint` is the blob's `stat_fingerprint` taken where its bytes were checked; without
    one a row keeps the fingerprint it has (or gets none, and the next mount re-hashes).
    """
    row: LocalFile | None = None
    if file_id is not None:
        row = (
            session.execute(select(LocalFile).where(col(LocalFile.file_id) == file_id))
            .scalars()
            .first()
        )
    if row is None:
        row = (
            session.execute(
                select(LocalFile).where(
                    col(LocalFile.sha256) == sha256.upper(), col(LocalFile.file_id).is_(None)
                )
            )
            .scalars()
            .first()
        )
    if row is None:
        row = LocalFile(file_id=file_id, sha256=sha256.upper())
        session.add(row)
    row.state = state
    row.path = str(path) if path is not None else None
    row.sha256 = sha256.upper()
    if state == "verified":
        row.verified_at = datetime.now(UTC)
        if fingerprint is not None:
            row.verified_stat = fingerprint
    else:
        row.verified_stat = None
    if size_bytes is not None:
        row.size_bytes = size_bytes
    if hashes is None and file_id is not None:
        # Same SHA256 as the catalog file, so its other hashes describe these bytes too.
        catalog_file = session.get(ModelFile, file_id)
        if catalog_file is not None and (catalog_file.sha256 or "").upper() == sha256.upper():
            row.autov1 = catalog_file.autov1
            row.autov2 = catalog_file.autov2 or sha256.upper()[:10]
            row.autov3 = catalog_file.autov3
            row.crc32 = catalog_file.crc32
            row.blake3 = catalog_file.blake3
    if hashes is not None:
        row.size_bytes = hashes.size
        row.autov1 = hashes.autov1
        row.autov2 = hashes.autov2
        row.autov3 = hashes.autov3
        row.crc32 = hashes.crc32
        row.blake3 = hashes.blake3
    return row


def clear_unfinished(session: Session, file_id: int) -> None:
    """After a download that cannot go on: a "downloading" row goes, so the file reads as not
    local instead of as a partial download that no longer exists."""
    row = (
        session.execute(select(LocalFile).where(col(LocalFile.file_id) == file_id))
        .scalars()
        .first()
    )
    if row is not None and row.state == "downloading":
        session.delete(row)


def verified_rows(session: Session, sha256: str) -> list[LocalFile]:
    """The `LocalFile` rows that name this blob as verified."""
    return list(
        session.execute(
            select(LocalFile).where(
                col(LocalFile.sha256) == sha256.upper(), col(LocalFile.state) == "verified"
            )
        ).scalars()
    )


def record_fingerprint(session: Session, sha256: str, fingerprint: str) -> None:
    """After a re-hash found the blob intact: every verified row of it gets the new stat."""
    for row in verified_rows(session, sha256):
        row.verified_stat = fingerprint


def mark_quarantined(session: Session, sha256: str) -> None:
    """The blob failed a check: its rows stop being verified and lose their path."""
    for row in session.execute(
        select(LocalFile).where(col(LocalFile.sha256) == sha256.upper())
    ).scalars():
        row.state = "quarantined"
        row.path = None
        row.verified_stat = None
