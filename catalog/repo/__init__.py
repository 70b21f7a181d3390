"""Repository functions of the catalog: bulk upserts of API payloads, lookups and listings.

Every function takes the caller's session (one per unit of work, see `catalog.db.session_scope`)
and never commits. Writes use SQLAlchemy Core with executemany and the dialect's
``INSERT … ON CONFLICT`` (SQLite and PostgreSQL), never per-row ORM round trips.

Incremental upserts: each model's payload is hashed (`payload_sha256`: the validated payload as
JSON, versions and stats included). A model whose hash and state are unchanged is not
written at all, not even `last_seen_at` (`SyncState` records when a sync ran). Inside a changed
model, each version carries its own hash without its stats: a version whose content is unchanged
keeps its files, images and trained words, and only its download count is refreshed. Versions
that vanish from a model's payload are marked ``gone``; nothing is ever deleted by a sync
except a changed version's own children, which are replaced.
"""

from catalog.repo.contract import model_to_dict
from catalog.repo.mapping import model_payload_sha256, payload_hashes, version_content_sha256
from catalog.repo.reads import find_files_by_hash, get_model, list_models
from catalog.repo.sql import MAPPING_VERSION, SortOrder, UpsertResult
from catalog.repo.upserts import (
    mark_gone,
    mark_missing,
    refresh_search,
    upsert_models,
    upsert_version,
)

__all__ = [
    "MAPPING_VERSION",
    "SortOrder",
    "UpsertResult",
    "find_files_by_hash",
    "get_model",
    "list_models",
    "mark_gone",
    "mark_missing",
    "model_payload_sha256",
    "model_to_dict",
    "payload_hashes",
    "refresh_search",
    "upsert_models",
    "upsert_version",
    "version_content_sha256",
]
