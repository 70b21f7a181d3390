"""`assetmgr import DIR`: bring an existing A1111 / ComfyUI models folder into the store.

Nothing in the folder is modified: files are hardlinked (same volume) or copied into the blob
store, and sidecars are only read. The file's own bytes decide everything:

1. what it is (`scan`): links are followed and reported; only bytes that are a valid
   safetensors file, or (with `allow_pickle`) a real pickle stream or torch zip archive, are
   taken, whatever the name says; pickles are stored, never unpickled;
2. its six hashes, read from the same descriptor, cached by (device, inode, size, mtime);
   files with the same SHA256 are imported once (a copy with sidecars first), the others
   reported as its duplicates;
3. which version it is, by its SHA256: Civitai's answer to one bulk by-hash request; else a
   catalog file with that SHA256; else a sidecar's claim that `catalog.claims` accepts
   (Civitai could not say, the SHA256 matches, nothing in the catalog contradicts it); else
   a new local model (negative ids, ``source='local'``) named after the file, with type and
   base model read from the safetensors header (where it cannot tell, a sidecar's or the
   folder's name fills in: `detect.with_folder_hint`);
4. A1111 ``.json`` sidecars, LoRA Manager usage tips and notes, and an accepted claim's trained
   words become `UserMeta`, the user's own layer (`sidecars`).

Import never aborts a folder: every file ends imported, skipped with a `code` and a `reason`,
or a duplicate (`import_report`). Whatever goes wrong with one file (its bytes, its sidecars,
its catalog row) is that file's outcome; the blob made for a file it could not record is
removed again. Only a cancellation, an unavailable catalog or an unwritable store stop the
whole import; the report then says why and which files it did not reach.
"""

from __future__ import annotations

import errno
import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import Engine, select, text, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session
from sqlmodel import col

from assetmgr.errors import EXPECTED_ERRORS, AssetMgrError, CatalogError, CivitaiError, StoreError
from assetmgr.store import records
from assetmgr.store.blobs import (
    BlobStore,
    DiskSpaceError,
    PlacedBlob,
    sanitize_filename,
    sanitize_relative_path,
)
from assetmgr.store.detect import Detected, detect, with_folder_hint
from assetmgr.store.hashing import (
    FileChangedError,
    FileHashes,
    HashCache,
    HashingCancelled,
    cached_hashes,
)
from assetmgr.store.import_report import (
    FOLDER_SKIPS,
    DuplicateFile,
    ImportedFile,
    ImportReport,
    ImportStop,
)
from assetmgr.store.scan import MODEL_SUFFIXES, CheckedFile, FolderWalk, Found, Skipped, check_file
from assetmgr.store.sidecars import (
    SidecarIssue,
    Sidecars,
    base_model_hint,
    read_sidecars,
    user_meta,
)
from catalog import claims, repo
from catalog.civitai import types as api
from catalog.civitai.errors import NotFoundError
from catalog.db import session_scope
from catalog.models import Model, ModelFile, ModelVersion
from catalog.usermeta import UserMeta

if TYPE_CHECKING:
    from catalog.civitai.client import CivitaiClient

log = logging.getLogger(__name__)

_DISK_FULL = frozenset({errno.ENOSPC, errno.EDQUOT})
_NOT_WRITABLE = frozenset({errno.EROFS, errno.EACCES, errno.EPERM})
# SQLite's words for a catalog that cannot take writes at all (every file would fail alike).
_CATALOG_DOWN_WORDS = (
    "readonly database",
    "disk is full",
    "unable to open database",
    "disk i/o error",
)


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
    detected: Detected

    @property
    def sha256(self) -> str:
        return self.file.hashes.sha256.upper()

    @property
    def target(self) -> str | None:
        return self.file.link.target if self.file.link else None


@dataclass(frozen=True)
class _Placed:
    file_id: int
    version_id: int
    model_id: int
    source: str
    identified_by: str
    base_model: str | None


class _Stopped(Exception):
    """The whole import stops (`stop`); `done` is a file imported just before it did."""

    def __init__(self, stop: ImportStop, done: ImportedFile | None = None) -> None:
        super().__init__(stop.reason)
        self.stop = stop
        self.done = done


def _matching_file(version: api.ModelVersion, sha256: str) -> api.ModelFile | None:
    for f in version.files:
        if (f.sha256 or "").upper() == sha256:
            return f
    return None


def _readable(name: str) -> str:
    """A file name as text a database takes: undecodable bytes become U+FFFD."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


@dataclass
class _Run:
    """One import: its settings, and the report it fills."""

    engine: Engine
    store: BlobStore
    report: ImportReport
    mode: str
    now: datetime
    cancel: threading.Event | None

    def check_cancel(self) -> None:
        if self.cancel is not None and self.cancel.is_set():
            raise _Stopped(ImportStop("cancelled", "the import was cancelled"))

    # --- what one failure means ----------------------------------------------------------

    def _in_store(self, exc: OSError) -> bool:
        root = os.path.abspath(self.store.root)
        names = [n for n in (exc.filename, exc.filename2) if isinstance(n, str | bytes | Path)]
        return any(
            os.path.commonpath([root, os.path.abspath(os.fsdecode(n))]) == root for n in names
        )

    def stop_for(self, exc: BaseException) -> ImportStop | None:
        """The stop `exc` means for the whole import, or None when it concerns one file."""
        if isinstance(exc, HashingCancelled):
            return ImportStop("cancelled", "the import was cancelled")
        if isinstance(exc, DiskSpaceError):
            return ImportStop("store-unwritable", exc.message)
        if isinstance(exc, OSError):
            if exc.errno in _DISK_FULL:
                return ImportStop("store-unwritable", f"the store's disk is full ({exc.strerror})")
            if exc.errno in _NOT_WRITABLE and self._in_store(exc):
                return ImportStop(
                    "store-unwritable",
                    f"the store at {self.store.root} cannot be written ({exc.strerror})",
                )
            return None
        if isinstance(exc, SQLAlchemyError):
            message = _db_message(exc)
            if any(words in message.lower() for words in _CATALOG_DOWN_WORDS):
                return ImportStop(
                    "catalog-unavailable", f"the catalog cannot be written ({message})"
                )
            try:  # one row refused, or the catalog gone? Ask it.
                with self.engine.connect() as conn:
                    conn.execute(text("SELECT 1"))
            except SQLAlchemyError as probe:
                return ImportStop(
                    "catalog-unavailable", f"the catalog cannot be reached ({_db_message(probe)})"
                )
        return None

    def skip_for(self, exc: Exception, path: Path, target: str | None) -> Skipped:
        """`exc` as the outcome of the one file it happened to; raises `_Stopped` when it
        stops the whole import."""
        stop = self.stop_for(exc)
        if stop is not None:
            raise _Stopped(stop) from exc

        def skip(code: str, reason: str) -> Skipped:
            return Skipped(str(path), code, reason, target)

        if isinstance(exc, SQLAlchemyError):
            return skip("catalog-refused", f"the catalog refused its record ({_db_message(exc)})")
        if isinstance(exc, CatalogError):
            return skip("catalog-refused", f"the catalog refused its record ({exc.message})")
        if isinstance(exc, FileChangedError):
            return skip("changed", "the file changed while it was imported")
        if isinstance(exc, OSError):
            if self._in_store(exc):
                return skip("store-failed", f"could not be placed in the store ({exc.strerror})")
            return skip("unreadable", f"cannot be read ({exc.strerror or exc})")
        if isinstance(exc, EXPECTED_ERRORS):
            return skip("failed", str(exc))
        log.error("importing %s failed", path, exc_info=exc)
        return skip("internal-error", f"an unexpected {type(exc).__name__} (a bug in assetmgr)")


def _db_message(exc: BaseException) -> str:
    """The database's own one-line message (never the statement or its parameters)."""
    orig = getattr(exc, "orig", None) or exc
    lines = str(orig).strip().splitlines()
    first = lines[0] if lines else type(orig).__name__
    return first[:200]


def _folders(path: Path) -> list[str]:
    """The names of the folders `path` sits in, nearest first."""
    parts = Path(os.path.abspath(path)).parent.parts
    return [p for p in reversed(parts) if p not in ("", os.sep)]


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
    """Import every model file under `folder`; see the module docstring.

    `progress` gets (step, steps, path): each file is one step while it is checked and hashed
    and one while it is stored and catalogued.
    """
    if not folder.is_dir():
        raise AssetMgrError(
            f"{folder} is not a folder", hint="Pass the models folder of A1111 or ComfyUI."
        )
    try:
        store.ensure()
    except OSError as exc:
        raise StoreError(
            f"the store at {store.root} cannot be written ({exc.strerror or exc})",
            hint="Check that ASSETMGR_HOME is on a writable volume with free space.",
        ) from exc
    cache = HashCache(store.root / "hash-cache.sqlite3")
    report = ImportReport(folder=str(folder))
    walk = FolderWalk(folder)
    found = list(walk.files())
    report.links = walk.links
    report.skipped.extend(walk.skipped)
    report.scanned = len(found) + sum(1 for s in walk.skipped if s.code not in FOLDER_SKIPS)
    run = _Run(engine, store, report, mode, datetime.now(UTC), cancel)
    steps = 2 * len(found)

    def step(done: int, path: str) -> None:
        if progress is not None:
            progress(done, steps, path)

    def hash_fd(fd: int) -> FileHashes:
        return cached_hashes(fd, cache, cancel=cancel)

    try:
        candidates: list[_Candidate] = []
        for index, item in enumerate(found):
            step(index, str(item.path))
            run.check_cancel()
            try:
                scanned = _scan_one(item, allow_pickle, hash_fd)
            except Exception as exc:
                scanned = run.skip_for(exc, item.path, item.link.target if item.link else None)
            if isinstance(scanned, Skipped):
                report.skipped.append(scanned)
            else:
                report.ignored_sidecars.extend(scanned.sidecars.issues)
                candidates.append(scanned)
        groups: dict[str, list[_Candidate]] = {}
        for c in candidates:
            groups.setdefault(c.sha256, []).append(c)
        by_sha, refuted = _ask_civitai(client, [g[0] for g in groups.values()], report)
        done = len(found)
        for group in groups.values():
            step(done, str(group[0].file.path))
            run.check_cancel()
            _import_group(run, group, by_sha, refuted)
            done += len(group)
    except _Stopped as stopped:
        report.stopped = stopped.stop
    except KeyboardInterrupt:
        report.stopped = ImportStop("cancelled", "the import was interrupted")
    if report.stopped is not None:
        settled = {f.path for f in report.imported}
        settled |= {s.path for s in report.skipped} | {d.path for d in report.duplicates}
        report.not_reached = [str(f.path) for f in found if str(f.path) not in settled]
    step(steps, "")
    return report


def _scan_one(
    item: Found, allow_pickle: bool, hash_fd: Callable[[int], FileHashes]
) -> _Candidate | Skipped:
    """Check and hash one file, read its sidecars, and say what its header (or folder) is."""
    checked = check_file(item, allow_pickle=allow_pickle, hash_fd=hash_fd)
    if isinstance(checked, Skipped):
        return checked
    detected = detect(checked.info) if checked.info is not None else Detected("Other", "Other")
    sidecars = read_sidecars(checked.path, sha256=checked.hashes.sha256)
    hinted_base = base_model_hint(sidecars)
    if detected.base_model == "Other" and hinted_base is not None:
        detected = replace(detected, base_model=hinted_base)
    detected = with_folder_hint(detected, _folders(checked.path))
    return _Candidate(checked, sidecars, detected)


def _import_group(
    run: _Run,
    group: list[_Candidate],
    by_sha: dict[str, api.ModelVersion],
    refuted: dict[str, str],
) -> None:
    """Import the first file of `group` (same SHA256) that can be, the copies with sidecars
    first; the rest are its duplicates."""
    report = run.report
    group = sorted(group, key=lambda c: not c.sidecars.read)
    for index, c in enumerate(group):
        try:
            outcome = _import_one(run, c, by_sha, refuted)
        except _Stopped as stopped:
            if stopped.done is not None:
                report.imported.append(stopped.done)
            raise
        except Exception as exc:
            outcome = run.skip_for(exc, c.file.path, c.target)
        if isinstance(outcome, Skipped):
            report.skipped.append(outcome)
            continue
        report.imported.append(outcome)
        for dup in group[index + 1 :]:
            report.duplicates.append(
                DuplicateFile(str(dup.file.path), dup.sha256, outcome.path, dup.target)
            )
            report.ignored_sidecars.extend(
                SidecarIssue(
                    path,
                    "sidecar-of-duplicate",
                    f"beside a duplicate of {outcome.path}, whose sidecars were used",
                    str(dup.file.path),
                )
                for path in dup.sidecars.read
            )
        return


def _discard_new_blob(stored: PlacedBlob) -> None:
    """Remove a blob this import made for a file it then could not record (a hardlink goes;
    the user's own file stays)."""
    if stored.method == "existing":
        return
    try:
        stored.path.unlink(missing_ok=True)
    except OSError as exc:
        log.warning("could not remove unrecorded blob %s: %s", stored.path, exc)


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
    except Exception as exc:  # whatever Civitai did, the files are identified offline
        report.lookup_error = (
            exc.message if isinstance(exc, CivitaiError) else f"unexpected {type(exc).__name__}"
        )
        log.warning("Civitai lookup failed (%s); identifying files offline", report.lookup_error)
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
        except Exception as exc:
            log.info("could not check claimed version %s: %s", claim.id, exc)
            continue
        if _matching_file(truth, c.sha256) is not None:
            by_sha[c.sha256] = truth
        else:
            refuted[c.sha256] = f"claims version {claim.id}, whose files on Civitai differ"
    return by_sha, refuted


def _import_one(
    run: _Run,
    c: _Candidate,
    by_sha: dict[str, api.ModelVersion],
    refuted: dict[str, str],
) -> ImportedFile | Skipped:
    """Store one file and record it in one transaction; a failure undoes both."""
    store, sha = run.store, c.sha256
    try:
        stored = store.import_file(c.file.real_path, sha, mode=run.mode, expected=c.file.identity)
    except FileChangedError:
        return Skipped(
            str(c.file.path), "changed", "the file changed while it was imported", c.target
        )
    blob = stored.path
    issues: list[SidecarIssue] = []
    try:
        with session_scope(run.engine, write=True) as session:
            placed = _place(session, c, by_sha, refuted, issues, run.now)
            model = session.get(Model, placed.model_id)
            model_type = model.type if model else "Other"
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
                row = session.get(UserMeta, placed.version_id) or UserMeta(
                    version_id=placed.version_id
                )
                for key, value in meta.items():
                    setattr(row, key, value)
                row.updated_at = run.now
                session.add(row)
    except BaseException:
        _discard_new_blob(stored)
        raise
    run.report.ignored_sidecars.extend(issues)
    imported = ImportedFile(
        path=str(c.file.path),
        sha256=sha,
        file_id=placed.file_id,
        version_id=placed.version_id,
        model_id=placed.model_id,
        source=placed.source,
        identified_by=placed.identified_by,
        link_target=c.target,
        model_type=model_type,
        base_model=placed.base_model,
        folder_hint=c.detected.hint if placed.identified_by == "local" else None,
        sidecars=list(c.sidecars.read),
    )
    name = sanitize_relative_path(
        [
            model_type,
            placed.base_model or "unknown",
            f"{placed.file_id}-{sanitize_filename(c.file.path.name)}",
        ]
    )
    try:
        store.link_name(sha, name)
        store.record_provenance(
            {
                "event": "import",
                "source_path": str(c.file.path),
                "link_target": c.target,
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
    except OSError as exc:  # recorded and verified already: only the name link or log is lost
        stop = run.stop_for(exc)
        if stop is not None:
            raise _Stopped(stop, imported) from exc
        log.warning("%s imported, but its name link or provenance was not written: %s", sha, exc)
    return imported


def _place(
    session: Session,
    c: _Candidate,
    by_sha: dict[str, api.ModelVersion],
    refuted: dict[str, str],
    issues: list[SidecarIssue],
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
                    issues,
                    c,
                    "claim-overruled",
                    f"claims version {claim.id}; the file's SHA256 says version "
                    f"{placed.version_id}",
                )
        else:
            placed = _try_claim(session, c, claim, refuted.get(sha), issues, now) or placed
    if placed is None:
        file_id, version_id, model_id = _add_local_model(session, c, now)
        placed = _Placed(file_id, version_id, model_id, "local", "local", c.detected.base_model)
    return placed


def _claim_issue(issues: list[SidecarIssue], c: _Candidate, code: str, reason: str) -> None:
    issues.append(SidecarIssue(c.sidecars.claim_path or "", code, reason, str(c.file.path)))


def _try_claim(
    session: Session,
    c: _Candidate,
    claim: api.ModelVersion,
    refutation: str | None,
    issues: list[SidecarIssue],
    now: datetime,
) -> _Placed | None:
    """Use an accepted claim (`catalog.claims`); list a refused one and return None."""
    if refutation is not None:
        _claim_issue(issues, c, "claim-contradicted", refutation)
        return None
    matched = claims.claimed_file(claim, c.sha256)
    verdict = (
        matched
        if isinstance(matched, claims.ClaimRefused)
        else claims.contradiction(session, claim, matched)
    )
    if verdict is not None:
        _claim_issue(issues, c, verdict.code, verdict.reason)
        return None
    if isinstance(matched, claims.ClaimRefused) or claim.model_id is None:
        # `claims.claimed_file` refuses a claim without a model id: never reached.
        raise ValueError(f"claim of version {claim.id} names no model")
    try:
        with session.begin_nested():
            claims.record_claim(
                session, claim, matched, c.file.hashes.as_civitai_dict(), seen_at=now
            )
    except (SQLAlchemyError, CatalogError, ValueError) as exc:
        # Whatever else is wrong with an old or damaged sidecar costs only the sidecar.
        log.info("claim of %s not recorded: %s", c.sidecars.claim_path, exc)
        _claim_issue(
            issues, c, "claim-not-recorded", f"could not be recorded ({type(exc).__name__})"
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
    model_type, base_model = c.detected.model_type, c.detected.base_model
    words: list[str] = []
    a1111 = c.sidecars.a1111
    if a1111 and isinstance(a1111.get("activation text"), str):
        words = [w.strip() for w in a1111["activation text"].split(",") if w.strip()][:20]
    name = _readable(c.file.path.stem)[:200] or f"local-{sha[:10]}"
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


__all__ = [
    "MODEL_SUFFIXES",
    "DuplicateFile",
    "ImportReport",
    "ImportStop",
    "ImportedFile",
    "import_folder",
    "local_id",
]
