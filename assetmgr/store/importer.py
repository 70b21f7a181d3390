"""`assetmgr import DIR`: bring an existing A1111 / ComfyUI models folder into the store.

Nothing in the folder is modified: files are hardlinked (same volume) or copied into the blob
store, and sidecars are only read. The file's own bytes decide everything:

1. what it is (`scan`): links are followed and reported; only bytes that are a valid
   safetensors file, or (with `allow_pickle`) a real pickle stream or torch zip archive, are
   taken, whatever the name says; pickles are stored, never unpickled;
2. its six hashes, read from the same descriptor, cached by (device, inode, size, mtime);
3. which version it is, by its SHA256: Civitai's answer to one bulk by-hash request; else a
   catalog file with that SHA256; else a sidecar's claim that `catalog.claims` accepts
   (Civitai could not say, the SHA256 matches, nothing in the catalog contradicts it); else
   a new local model (negative ids, ``source='local'``) named after the file, with type and
   base model read from the safetensors header;
4. A1111 ``.json`` sidecars, LoRA Manager usage tips and notes, and an accepted claim's trained
   words become `UserMeta`, the user's own layer (`sidecars`).

A file that changed between its check and its arrival in the store is skipped, and the blob
this import made from it removed.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine, select, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session
from sqlmodel import col

from assetmgr.errors import AssetMgrError, CatalogError, CivitaiError
from assetmgr.store import records
from assetmgr.store.blobs import BlobStore, sanitize_filename, sanitize_relative_path
from assetmgr.store.detect import detect
from assetmgr.store.hashing import FileChangedError, FileHashes, HashCache, cached_hashes
from assetmgr.store.scan import (
    MODEL_SUFFIXES,
    CheckedFile,
    FolderWalk,
    FollowedLink,
    Skipped,
    check_file,
)
from assetmgr.store.sidecars import SidecarIssue, Sidecars, read_sidecars, user_meta
from catalog import claims, repo
from catalog.civitai import types as api
from catalog.civitai.errors import NotFoundError
from catalog.db import session_scope
from catalog.models import Model, ModelFile, ModelVersion
from catalog.usermeta import UserMeta

if TYPE_CHECKING:
    from catalog.civitai.client import CivitaiClient

log = logging.getLogger(__name__)

_NOT_FILES = frozenset({"link-loop", "unreadable-folder"})


@dataclass
class ImportedFile:
    path: str
    sha256: str
    file_id: int
    version_id: int
    model_id: int
    source: str
    """``civitai`` (Civitai's data), ``sidecar`` (a version created from an accepted sidecar
    claim, until Civitai's data replaces it) or ``local`` (unknown to Civitai)."""
    identified_by: str
    """``civitai`` (by-hash), ``catalog`` (a catalog file with this SHA256), ``sidecar`` or
    ``local`` (a new local model)."""
    link_target: str | None = None
    """Where the path points, when it is a symlink."""


@dataclass
class ImportReport:
    scanned: int = 0
    imported: list[ImportedFile] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    links: list[FollowedLink] = field(default_factory=list)
    """Every symlink the walk followed, with where it points."""
    ignored_sidecars: list[SidecarIssue] = field(default_factory=list)
    lookup_error: str | None = None
    """Why Civitai could not be asked (files were then identified offline)."""

    def count(self, source: str) -> int:
        return sum(1 for f in self.imported if f.source == source)

    def as_json(self) -> dict[str, Any]:
        return {
            "scanned": self.scanned,
            "imported": [asdict(f) for f in self.imported],
            "skipped": [asdict(s) for s in self.skipped],
            "links": [asdict(link) for link in self.links],
            "ignored_sidecars": [asdict(i) for i in self.ignored_sidecars],
            "lookup_error": self.lookup_error,
            "civitai": self.count("civitai"),
            "sidecar": self.count("sidecar"),
            "local": self.count("local"),
        }


def local_id(sha256: str) -> int:
    """A stable negative id for a local-only model/version/file (re-imports reuse it).

    It fits a 32-bit INTEGER column (PostgreSQL); `_add_local_model` probes downwards on the
    rare collision with another file's id.
    """
    return -(int(sha256[:8], 16) % (2**31 - 1) + 1)


@dataclass
class _Candidate:
    file: CheckedFile
    sidecars: Sidecars
    detected: tuple[str, str]

    @property
    def sha256(self) -> str:
        return self.file.hashes.sha256.upper()


@dataclass(frozen=True)
class _Placed:
    file_id: int
    version_id: int
    model_id: int
    source: str
    identified_by: str
    base_model: str | None


def _matching_file(version: api.ModelVersion, sha256: str) -> api.ModelFile | None:
    for f in version.files:
        if (f.sha256 or "").upper() == sha256:
            return f
    return None


def import_folder(
    engine: Engine,
    store: BlobStore,
    client: CivitaiClient | None,
    folder: Path,
    *,
    mode: str = "auto",
    allow_pickle: bool = False,
    progress: Callable[[int, int, str], None] | None = None,
    cancel: threading.Event | None = None,
) -> ImportReport:
    """Import every model file under `folder`; see the module docstring."""
    if not folder.is_dir():
        raise AssetMgrError(
            f"{folder} is not a folder", hint="Pass the models folder of A1111 or ComfyUI."
        )
    store.ensure()
    cache = HashCache(store.root / "hash-cache.sqlite3")
    report = ImportReport()
    walk = FolderWalk(folder)
    found = list(walk.files())
    report.links = walk.links
    report.skipped.extend(walk.skipped)
    report.scanned = len(found) + sum(1 for s in walk.skipped if s.code not in _NOT_FILES)

    def hash_fd(fd: int) -> FileHashes:
        return cached_hashes(fd, cache, cancel=cancel)

    candidates: list[_Candidate] = []
    for index, item in enumerate(found):
        if cancel is not None and cancel.is_set():
            break
        if progress is not None:
            progress(index, len(found), str(item.path))
        checked = check_file(item, allow_pickle=allow_pickle, hash_fd=hash_fd)
        if isinstance(checked, Skipped):
            report.skipped.append(checked)
            continue
        detected = ("Other", "Other")
        if checked.info is not None:
            d = detect(checked.info)
            detected = (d.model_type, d.base_model)
        sidecars = read_sidecars(checked.path)
        report.ignored_sidecars.extend(sidecars.issues)
        candidates.append(_Candidate(checked, sidecars, detected))

    by_sha, refuted = _ask_civitai(client, candidates, report)
    now = datetime.now(UTC)
    for c in candidates:
        if cancel is not None and cancel.is_set():
            break
        _import_one(engine, store, c, by_sha, refuted, report, mode=mode, now=now)
    if progress is not None:
        progress(len(found), len(found), "")
    return report


def _ask_civitai(
    client: CivitaiClient | None, candidates: list[_Candidate], report: ImportReport
) -> tuple[dict[str, api.ModelVersion], dict[str, str]]:
    """Civitai's versions by SHA256, and the claims Civitai refutes (SHA256 -> reason)."""
    by_sha: dict[str, api.ModelVersion] = {}
    refuted: dict[str, str] = {}
    if client is None or not candidates:
        return by_sha, refuted
    try:
        for answer in client.get_versions_by_hashes([c.sha256 for c in candidates]):
            for f in answer.files:
                if f.sha256:
                    by_sha.setdefault(f.sha256.upper(), answer)
    except CivitaiError as exc:
        report.lookup_error = exc.message
        log.warning("Civitai lookup failed (%s); identifying files offline", exc.message)
        return by_sha, refuted
    # A claimed version Civitai has, but whose files do not include this one, is refuted;
    # one Civitai does not have (deleted, or never there) leaves the claim to the catalog.
    for c in candidates:
        claim = c.sidecars.claim
        if claim is None or c.sha256 in by_sha:
            continue
        if isinstance(claims.claimed_file(claim, c.sha256), claims.ClaimRefused):
            continue  # refused by its own content; nothing to ask
        try:
            truth = client.get_model_version(claim.id)
        except NotFoundError:
            continue
        except CivitaiError as exc:
            log.info("could not check claimed version %s: %s", claim.id, exc.message)
            continue
        if _matching_file(truth, c.sha256) is not None:
            by_sha[c.sha256] = truth
        else:
            refuted[c.sha256] = f"claims version {claim.id}, whose files on Civitai differ"
    return by_sha, refuted


def _import_one(
    engine: Engine,
    store: BlobStore,
    c: _Candidate,
    by_sha: dict[str, api.ModelVersion],
    refuted: dict[str, str],
    report: ImportReport,
    *,
    mode: str,
    now: datetime,
) -> None:
    sha = c.sha256
    try:
        stored = store.import_file(c.file.real_path, sha, mode=mode, expected=c.file.identity)
    except FileChangedError:
        report.skipped.append(
            Skipped(
                str(c.file.path),
                "changed",
                "the file changed while it was imported",
                c.file.link.target if c.file.link else None,
            )
        )
        return
    blob = stored.path
    with session_scope(engine, write=True) as session:
        placed = _place(session, c, by_sha, refuted, report, now)
        model = session.get(Model, placed.model_id)
        store.link_name(
            sha,
            sanitize_relative_path(
                [
                    model.type if model else "Other",
                    placed.base_model or "unknown",
                    f"{placed.file_id}-{sanitize_filename(c.file.path.name)}",
                ]
            ),
        )
        records.set_local_state(
            session,
            file_id=placed.file_id,
            sha256=sha,
            state="verified",
            path=blob,
            hashes=c.file.hashes,
            fingerprint=stored.fingerprint,
        )
        claim = c.sidecars.claim
        words = claim.trained_words if claim and placed.identified_by == "sidecar" else None
        meta = user_meta(c.sidecars, claimed_words=words)
        if meta is not None:
            row = session.get(UserMeta, placed.version_id) or UserMeta(version_id=placed.version_id)
            for key, value in meta.items():
                setattr(row, key, value)
            row.updated_at = now
            session.add(row)
    link_target = c.file.link.target if c.file.link else None
    store.record_provenance(
        {
            "event": "import",
            "source_path": str(c.file.path),
            "link_target": link_target,
            "file_id": placed.file_id,
            "version_id": placed.version_id,
            "computed": c.file.hashes.as_civitai_dict(),
            "expected": None if placed.source == "local" else {"SHA256": sha},
            "result": "verified",
            "path": str(blob),
            "stored_as": stored.method,
            "identified_by": placed.identified_by,
            "sidecar": c.sidecars.claim_path if placed.identified_by == "sidecar" else None,
        }
    )
    report.imported.append(
        ImportedFile(
            str(c.file.path),
            sha,
            placed.file_id,
            placed.version_id,
            placed.model_id,
            placed.source,
            placed.identified_by,
            link_target,
        )
    )


def _place(
    session: Session,
    c: _Candidate,
    by_sha: dict[str, api.ModelVersion],
    refuted: dict[str, str],
    report: ImportReport,
    now: datetime,
) -> _Placed:
    """Which catalog file the bytes are (writing only Civitai's data or a new version)."""
    sha = c.sha256
    claim = c.sidecars.claim
    answer = by_sha.get(sha)
    matched = _matching_file(answer, sha) if answer is not None else None
    placed: _Placed | None = None
    if answer is not None and matched is not None and answer.model_id is not None:
        repo.upsert_version(session, answer, seen_at=now)
        placed = _Placed(
            matched.id, answer.id, answer.model_id, "civitai", "civitai", answer.base_model
        )
    else:
        placed = _catalog_file(session, sha)
    if claim is not None:
        # A local model of an earlier import does not contradict a claim; Civitai's data does.
        if placed is not None and placed.source != "local":
            if placed.version_id != claim.id:
                _claim_issue(
                    report,
                    c,
                    "claim-overruled",
                    f"claims version {claim.id}; the file's SHA256 says version "
                    f"{placed.version_id}",
                )
        else:
            placed = _try_claim(session, c, claim, refuted.get(sha), report, now) or placed
    if placed is None:
        file_id, version_id, model_id = _add_local_model(session, c, now)
        placed = _Placed(file_id, version_id, model_id, "local", "local", c.detected[1])
    return placed


def _claim_issue(report: ImportReport, c: _Candidate, code: str, reason: str) -> None:
    report.ignored_sidecars.append(
        SidecarIssue(c.sidecars.claim_path or "", code, reason, str(c.file.path))
    )


def _try_claim(
    session: Session,
    c: _Candidate,
    claim: api.ModelVersion,
    refutation: str | None,
    report: ImportReport,
    now: datetime,
) -> _Placed | None:
    """Use an accepted claim (`catalog.claims`); list a refused one and return None."""
    if refutation is not None:
        _claim_issue(report, c, "claim-contradicted", refutation)
        return None
    matched = claims.claimed_file(claim, c.sha256)
    verdict = (
        matched
        if isinstance(matched, claims.ClaimRefused)
        else claims.contradiction(session, claim, matched)
    )
    if verdict is not None:
        _claim_issue(report, c, verdict.code, verdict.reason)
        return None
    assert isinstance(matched, api.ModelFile) and claim.model_id is not None
    try:
        with session.begin_nested():
            claims.record_claim(
                session, claim, matched, c.file.hashes.as_civitai_dict(), seen_at=now
            )
    except (SQLAlchemyError, CatalogError, ValueError) as exc:
        # Whatever else is wrong with an old or damaged sidecar costs only the sidecar.
        log.info("claim of %s not recorded: %s", c.sidecars.claim_path, exc)
        _claim_issue(
            report, c, "claim-not-recorded", f"could not be recorded ({type(exc).__name__})"
        )
        return None
    return _Placed(matched.id, claim.id, claim.model_id, "sidecar", "sidecar", claim.base_model)


def _catalog_file(session: Session, sha256: str) -> _Placed | None:
    """A catalog file with this SHA256: Civitai's first (oldest version), then local ones."""
    row = session.execute(
        select(
            col(ModelFile.id),
            col(ModelVersion.id),
            col(ModelVersion.model_id),
            col(Model.source),
            col(ModelVersion.base_model),
        )
        .join(ModelVersion, col(ModelVersion.id) == col(ModelFile.version_id))
        .join(Model, col(Model.id) == col(ModelVersion.model_id))
        .where(col(ModelFile.sha256) == sha256)
        .order_by(
            (col(Model.source) == "local").asc(),
            col(ModelVersion.published_at).asc().nulls_last(),
            col(ModelFile.id),
        )
    ).first()
    if row is None:
        return None
    file_id, version_id, model_id, source, base_model = row
    return _Placed(file_id, version_id, model_id, source, "catalog", base_model)


def _add_local_model(session: Session, c: _Candidate, now: datetime) -> tuple[int, int, int]:
    """Catalog a file Civitai does not know, named after the file; ids are stable per hash."""
    sha = c.sha256
    hashes = c.file.hashes
    new_id = local_id(sha)
    while True:
        existing = session.get(ModelFile, new_id)
        if existing is None:
            break
        if (existing.sha256 or "").upper() == sha:
            version = existing.version
            return existing.id, version.id, version.model_id
        new_id = new_id - 1 if new_id > -(2**31) else -1
    model_type, base_model = c.detected
    words: list[str] = []
    a1111 = c.sidecars.a1111
    if a1111 and isinstance(a1111.get("activation text"), str):
        words = [w.strip() for w in a1111["activation text"].split(",") if w.strip()][:20]
    name = c.file.path.stem[:200] or f"local-{sha[:10]}"
    payload = api.Model.model_validate(
        {
            "id": new_id,
            "name": name,
            "type": model_type,
            "description": None,
            "tags": ["local"],
            "modelVersions": [
                {
                    "id": new_id,
                    "name": "local",
                    "baseModel": base_model,
                    "trainedWords": words,
                    "files": [
                        {
                            "id": new_id,
                            "name": sanitize_filename(c.file.path.name),
                            "sizeKB": hashes.size / 1024,
                            "type": "Model",
                            "primary": True,
                            "metadata": {
                                "format": "SafeTensor"
                                if c.file.kind == "safetensors"
                                else "PickleTensor"
                            },
                            "hashes": hashes.as_civitai_dict(),
                        }
                    ],
                }
            ],
        }
    )
    repo.upsert_models(session, [payload], seen_at=now)
    session.execute(update(Model).where(col(Model.id) == new_id).values(source="local"))
    return new_id, new_id, new_id


__all__ = ["MODEL_SUFFIXES", "ImportReport", "ImportedFile", "import_folder", "local_id"]
