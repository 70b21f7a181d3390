"""A sidecar's claim that a file is some Civitai version: checked before it is used.

A claim (a ``.civitai.info``, LoRA Manager's ``civitai`` block) is a hint, never authority.
The file's own SHA256 decides; a claim is used only when Civitai could not say (offline, or it
does not know the hash), and then only when

* the claim lists a file whose SHA256 equals the computed one, with ids Civitai could have; and
* nothing in the catalog contradicts it: the catalog holds neither that version nor that file
  id, and does not hold the model as synced from Civitai without that version.

An accepted claim creates the version with just the matched file, its hashes as computed, and
no trained words, images or description: a later sync (or an online lookup) writes Civitai's
data over it, and the trained words go to the user's own metadata. A claim never rewrites
anything the catalog already holds.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session
from sqlmodel import col

from catalog import repo
from catalog.civitai import types as api
from catalog.models import Model, ModelFile, ModelVersion

MAX_ID = 2**31 - 1
"""Civitai ids fit a 32-bit INTEGER column (PostgreSQL)."""


@dataclass(frozen=True)
class ClaimRefused:
    """Why a claim was not used; `code` is ``claim-hash-mismatch``, ``claim-no-hash``,
    ``claim-ids`` or ``claim-contradicted``."""

    code: str
    reason: str


def claimed_file(claim: api.ModelVersion, sha256: str) -> api.ModelFile | ClaimRefused:
    """The claim's file with this SHA256, or why the claim cannot be about this file."""
    digest = sha256.upper()
    matched = next((f for f in claim.files if (f.sha256 or "").upper() == digest), None)
    if matched is None and not any(f.sha256 for f in claim.files):
        return ClaimRefused(
            "claim-no-hash",
            f"claims version {claim.id}, but lists no SHA256 to check it by (an older sidecar)",
        )
    if matched is None:
        return ClaimRefused(
            "claim-hash-mismatch",
            f"claims version {claim.id}, but lists no file with this file's SHA256",
        )
    ids = (claim.id, claim.model_id, matched.id)
    if any(i is None or not 0 < i <= MAX_ID for i in ids):
        return ClaimRefused(
            "claim-ids", "has no usable model, version or file id (old or damaged sidecar)"
        )
    return matched


def contradiction(
    session: Session, claim: api.ModelVersion, file: api.ModelFile
) -> ClaimRefused | None:
    """What in the catalog contradicts the claim, or None."""

    def refused(reason: str) -> ClaimRefused:
        return ClaimRefused("claim-contradicted", reason)

    stored_version = session.get(ModelVersion, claim.id)
    if stored_version is not None:
        shas = sorted({(f.sha256 or "?")[:12] for f in stored_version.files}) or ["none"]
        return refused(
            f"claims version {claim.id}, which the catalog holds with other files "
            f"(SHA256 {', '.join(shas)}...)"
        )
    stored_file = session.get(ModelFile, file.id)
    if stored_file is not None:
        return refused(
            f"claims file {file.id}, which the catalog holds in version {stored_file.version_id}"
        )
    if claim.model_id is None:  # `claimed_file` checked it already
        raise ValueError("a claimed file's version names no model")
    synced = session.execute(
        select(col(Model.id)).where(
            col(Model.id) == claim.model_id, col(Model.payload_sha256).is_not(None)
        )
    ).first()
    if synced is not None:
        return refused(
            f"claims a version {claim.id} of model {claim.model_id}, which the catalog "
            "synced from Civitai without it"
        )
    return None


def record_claim(
    session: Session,
    claim: api.ModelVersion,
    file: api.ModelFile,
    hashes: dict[str, str],
    *,
    seen_at: datetime,
) -> None:
    """Create the claimed version (see the module docstring); only after `contradiction`."""
    parent = claim.model
    stub_parent = (
        None
        if parent is None
        else parent.model_copy(update={"nsfw": bool(parent.nsfw), "poi": bool(parent.poi)})
    )
    trimmed = claim.model_copy(
        update={
            "files": [
                file.model_copy(
                    update={"hashes": dict(hashes), "download_url": None, "primary": True}
                )
            ],
            "trained_words": [],
            "images": [],
            "description": None,
            "download_url": None,
            "stats": api.ModelStats(),
            "model": stub_parent,
        }
    )
    repo.upsert_version(session, trimmed, seen_at=seen_at)


__all__ = ["MAX_ID", "ClaimRefused", "claimed_file", "contradiction", "record_claim"]
