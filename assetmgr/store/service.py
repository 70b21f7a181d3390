"""Store operations the CLI and the TUI call: pull, verify, path.

Each takes a progress callback and a cancel event; neither imports a UI library.
"""

from __future__ import annotations

import logging
import os
import stat
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine, select
from sqlalchemy.orm import Session
from sqlmodel import col

from assetmgr.config import DEFAULT_MAX_DOWNLOAD_BYTES
from assetmgr.errors import EXPECTED_ERRORS, NotInCatalogError, StoreError
from assetmgr.store import records
from assetmgr.store.blobs import (
    BLOB_MODE,
    BlobStore,
    QuarantineRecord,
    StoreLockTimeout,
    stat_fingerprint,
)
from assetmgr.store.download import (
    Downloader,
    DownloadProgress,
    FileTarget,
    HashMismatchError,
    PullResult,
    check_policy,
    is_pickle_format,
)
from assetmgr.store.hashing import FileChangedError, FileHashes, compute_hashes
from assetmgr.store.safetensors_check import detect_format, validate_safetensors
from catalog import repo
from catalog.civitai.errors import ArchivedError, DownloadDisabledError, EarlyAccessError
from catalog.db import session_scope
from catalog.models import LocalFile, ModelFile, ModelVersion

if TYPE_CHECKING:
    from catalog.civitai.client import CivitaiClient

log = logging.getLogger(__name__)


def validate_for(target: FileTarget) -> Callable[[Path], None]:
    """The content check a file must pass before promotion."""

    def check(path: Path) -> None:
        if is_pickle_format(target.name, target.format):
            # Stored on explicit request only, never unpickled here: nothing to parse.
            return
        kind = detect_format(path)
        if kind != "safetensors":
            from assetmgr.store.safetensors_check import UnsafeFileError

            raise UnsafeFileError(
                f"{target.name} is declared safetensors but its bytes look like {kind}"
            )
        validate_safetensors(path)

    return check


@dataclass
class PullOutcome:
    version_id: int
    file_id: int | None
    result: PullResult | None = None
    error: Exception | None = None
    target: FileTarget | None = None
    """What the catalog says the file is (None when the version could not be found)."""


class StoreService:
    """Pulls catalog files into the blob store and keeps `LocalFile` rows right."""

    def __init__(
        self,
        engine: Engine,
        store: BlobStore,
        client: CivitaiClient | None,
        *,
        downloader: Downloader | None = None,
        max_download_bytes: int | None = None,
    ) -> None:
        self.engine = engine
        self.store = store
        self.client = client
        self.downloader = downloader or Downloader(
            store,
            self._resolve_url,
            max_download_bytes=max_download_bytes or DEFAULT_MAX_DOWNLOAD_BYTES,
        )

    def close(self) -> None:
        self.downloader.close()

    def _resolve_url(self, target: FileTarget) -> str:
        if self.client is None:
            raise StoreError("no Civitai client to resolve a download URL")
        return self.client.resolve_download(target.version_id, file_id=target.file_id).url

    def target(self, version_id: int, file_id: int | None = None) -> FileTarget:
        """The catalog's target for a version; fetches the version first if it is unknown."""
        with Session(self.engine) as session:
            known = session.get(ModelVersion, version_id) is not None
        if not known and self.client is not None:
            version = self.client.get_model_version(version_id)
            with session_scope(self.engine, write=True) as session:
                repo.upsert_version(session, version)
        with Session(self.engine) as session:
            return records.file_target(session, version_id, file_id)

    def pull(
        self,
        version_id: int,
        *,
        file_id: int | None = None,
        allow_pickle: bool = False,
        progress: Callable[[DownloadProgress], None] | None = None,
        cancel: threading.Event | None = None,
    ) -> PullResult:
        return self.pull_target(
            self.target(version_id, file_id),
            allow_pickle=allow_pickle,
            progress=progress,
            cancel=cancel,
        )

    def pull_target(
        self,
        target: FileTarget,
        *,
        allow_pickle: bool = False,
        progress: Callable[[DownloadProgress], None] | None = None,
        cancel: threading.Event | None = None,
    ) -> PullResult:
        """Download one catalog file and keep its `LocalFile` row in a clear state.

        The row reads "downloading" only while bytes of it sit in a partial file: from the
        first bytes received until the file is verified, or for good after an interruption
        that can resume (a dropped connection, a kill, Ctrl-C). A refusal (policy, Danger
        scan, the API's 401/403/404/410, a transfer past its bound) leaves no row; bytes
        that failed their hash are recorded as quarantined.
        """
        # Refusals of policy come first: nothing is written to the catalog or the store.
        check_policy(target, allow_pickle=allow_pickle)
        started = threading.Event()

        def on_progress(p: DownloadProgress) -> None:
            if not started.is_set():
                started.set()
                self._set_state(target, "downloading")
            if progress is not None:
                progress(p)

        try:
            result = self.downloader.pull(
                target,
                allow_pickle=allow_pickle,
                progress=on_progress,
                cancel=cancel,
                validate=validate_for(target),
            )
        except StoreLockTimeout:
            raise  # another process is on this file; its row is its own
        except HashMismatchError:
            self._set_state(target, "quarantined")
            raise
        except (DownloadDisabledError, EarlyAccessError, ArchivedError) as exc:
            self._record_refusal(target, exc)
            raise
        except BaseException:
            partial, _ = self.store.partial_paths(target.partial_key)
            if not partial.exists():
                with session_scope(self.engine, write=True) as session:
                    records.clear_unfinished(session, target.file_id)
            raise
        full = result.hashes if isinstance(result.hashes, FileHashes) else None
        # A fresh download is the store's own inode, just hashed; an existing blob keeps
        # the fingerprint its rows have.
        fingerprint = (
            None if result.already_present else stat_fingerprint(os.lstat(result.blob_path))
        )
        with session_scope(self.engine, write=True) as session:
            records.set_local_state(
                session,
                file_id=target.file_id,
                sha256=result.sha256,
                state="verified",
                path=result.blob_path,
                hashes=full,
                size_bytes=result.hashes.size if result.hashes is not None else None,
                fingerprint=fingerprint,
            )
        return result

    def _record_refusal(
        self, target: FileTarget, exc: DownloadDisabledError | EarlyAccessError | ArchivedError
    ) -> None:
        """What Civitai said in refusing goes into the catalog (`catalog.access`), so the file
        shows as early access, downloads disabled or archived before the next try. The API
        refused the link, so the partial file (if any) is gone too."""
        from catalog import access

        with session_scope(self.engine, write=True) as session:
            records.clear_unfinished(session, target.file_id)
            if isinstance(exc, EarlyAccessError):
                access.record_refusal(
                    session, target.version_id, access.EARLY_ACCESS, until=exc.deadline
                )
            elif isinstance(exc, ArchivedError):
                access.record_refusal(session, target.version_id, access.ARCHIVED)
            else:
                access.record_refusal(session, target.version_id, access.DOWNLOADS_DISABLED)

    def _set_state(self, target: FileTarget, state: str) -> None:
        with session_scope(self.engine, write=True) as session:
            records.set_local_state(
                session,
                file_id=target.file_id,
                sha256=target.expected_sha256,
                state=state,
                path=None,
            )

    def pull_many(
        self,
        requests: Sequence[tuple[int, int | None]],
        *,
        concurrency: int = 3,
        allow_pickle: bool = False,
        progress: Callable[[DownloadProgress], None] | None = None,
        cancel: threading.Event | None = None,
    ) -> list[PullOutcome]:
        """A download queue: up to `concurrency` files at a time; errors are per file."""

        def one(req: tuple[int, int | None]) -> PullOutcome:
            version_id, file_id = req
            outcome = PullOutcome(version_id, file_id)
            try:
                outcome.target = self.target(version_id, file_id)
                outcome.file_id = outcome.target.file_id
                outcome.result = self.pull_target(
                    outcome.target,
                    allow_pickle=allow_pickle,
                    progress=progress,
                    cancel=cancel,
                )
            except EXPECTED_ERRORS as exc:
                outcome.error = exc
            return outcome

        cancel = cancel or threading.Event()
        with ThreadPoolExecutor(max_workers=max(1, concurrency), thread_name_prefix="pull") as pool:
            try:
                return list(pool.map(one, requests))
            except BaseException:
                # Ctrl-C lands here: stop the transfers (their partial files stay, to resume)
                # rather than wait for them to finish.
                cancel.set()
                raise


@dataclass
class VerifyReport:
    checked: int = 0
    ok: int = 0
    corrupt: list[dict[str, Any]] = field(default_factory=list)
    missing: list[dict[str, Any]] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not self.corrupt and not self.missing


class BlobChangedError(StoreError):
    """A stored file no longer has the SHA256 it was verified with; no job may mount it."""

    title = "Model file changed"

    def __init__(
        self, *, sha256: str, got_sha256: str, name: str | None, record: QuarantineRecord
    ) -> None:
        self.sha256 = sha256
        self.got_sha256 = got_sha256
        self.name = name
        self.record = record
        hint = (
            "The store dropped its link and left your original file as it is; import its "
            "folder again (`assetmgr import DIR`) to use the new bytes."
            if record.link_removed
            else "The bytes were quarantined; pull or import the file again."
        )
        super().__init__(
            f"{name or sha256} changed since it was verified (expected sha256 {sha256}, "
            f"got {got_sha256}); refused to mount it",
            hint=hint,
        )


def _quarantine_blob(
    engine: Engine, store: BlobStore, sha256: str, got: FileHashes | None, *, reason: str
) -> QuarantineRecord:
    """Take a blob out of reach (the store's link only, when it is shared) and mark its rows."""
    path = store.blob_path(sha256)
    record = store.quarantine(
        path,
        got_sha256=got.sha256 if got is not None else None,
        reason=reason,
        details={"expected_sha256": sha256},
    )
    store.record_provenance(
        {
            "event": "verify",
            "result": "quarantined",
            "reason": reason,
            "expected": {"SHA256": sha256},
            "computed": got.as_civitai_dict() if got is not None else None,
            "path": str(record.path),
            "link_removed": record.link_removed,
        }
    )
    with session_scope(engine, write=True) as session:
        records.mark_quarantined(session, sha256)
    return record


def _hash_blob(
    path: Path,
    *,
    progress: Callable[[int], None] | None = None,
    cancel: threading.Event | None = None,
) -> tuple[FileHashes, str | None]:
    """(hashes, fingerprint): the fingerprint is None when the file changed during hashing."""
    before = os.lstat(path)
    hashes = compute_hashes(path, progress=progress, cancel=cancel)
    after = os.lstat(path)
    same = stat_fingerprint(before) == stat_fingerprint(after)
    return hashes, stat_fingerprint(after) if same else None


def verify_store(
    engine: Engine,
    store: BlobStore,
    *,
    progress: Callable[[int, int, int], None] | None = None,
    cancel: threading.Event | None = None,
) -> VerifyReport:
    """Re-hash every blob; quarantine the corrupt ones and mark rows missing or quarantined.

    A corrupt blob that shares its inode with a file outside the store (a hardlinked import)
    loses only the store's link: the user's file keeps its mode and bytes. Intact blobs get a
    fresh stat fingerprint for `check_before_mount`.
    `progress(done_bytes, total_bytes, files_done)` is called as bytes are hashed.
    """
    store.ensure()
    report = VerifyReport()
    blobs = list(store.iter_blobs())
    total = sum(p.lstat().st_size for _, p in blobs)
    done_before = 0
    fingerprints: dict[str, str] = {}
    for index, (name, path) in enumerate(blobs):
        if cancel is not None and cancel.is_set():
            break
        base = done_before

        def on_bytes(n: int, base: int = base, index: int = index) -> None:
            if progress is not None:
                progress(base + n, total, index)

        size = path.lstat().st_size
        regular = stat.S_ISREG(path.lstat().st_mode)
        hashes, fingerprint = (
            _hash_blob(path, progress=on_bytes, cancel=cancel) if regular else (None, None)
        )
        done_before += size
        report.checked += 1
        if hashes is not None and hashes.sha256.upper() == name:
            report.ok += 1
            st = path.lstat()
            if st.st_nlink == 1 and st.st_mode & 0o222:
                # The store alone holds this inode, so it may make it read-only again.
                os.chmod(path, BLOB_MODE)
                fingerprint = stat_fingerprint(path.lstat()) if fingerprint else None
            if fingerprint is not None:
                fingerprints[name] = fingerprint
            continue
        record = _quarantine_blob(engine, store, name, hashes, reason="verify: content changed")
        report.corrupt.append(
            {
                "sha256": name,
                "got": hashes.sha256 if hashes is not None else None,
                "quarantined_to": str(record.path),
                "link_removed": record.link_removed,
            }
        )
    with session_scope(engine, write=True) as session:
        for sha, fingerprint in fingerprints.items():
            records.record_fingerprint(session, sha, fingerprint)
        for row in session.execute(
            select(LocalFile).where(col(LocalFile.state) == "verified")
        ).scalars():
            if row.sha256 and not store.has(row.sha256):
                row.state = "missing"
                report.missing.append({"sha256": row.sha256, "file_id": row.file_id})
    if progress is not None:
        progress(total, total, len(blobs))
    return report


def check_before_mount(
    engine: Engine,
    store: BlobStore,
    sha256: str,
    *,
    name: str | None = None,
    cancel: threading.Event | None = None,
) -> Path:
    """The blob a job may mount, checked unchanged since it was verified.

    Every job's model files pass here before the engine is contacted. The blob's stat must
    equal the fingerprint recorded when it was last hashed; otherwise it is re-hashed. Intact
    bytes get a fresh fingerprint; changed bytes are quarantined (only the store's link when
    the inode is shared with the user's file) and `BlobChangedError` is raised.
    """
    store.ensure()
    digest = sha256.upper()
    path = store.blob_path(digest)
    with Session(engine) as session:
        recorded = {row.verified_stat for row in records.verified_rows(session, digest)}
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        st = None
    if not recorded or st is None:
        raise NotInCatalogError(
            f"no verified local file for {name or digest}",
            kind="local-file",
            key=name or digest,
        )
    if stat.S_ISREG(st.st_mode) and recorded == {stat_fingerprint(st)}:
        return path
    hashes, fingerprint = (
        _hash_blob(path, cancel=cancel) if stat.S_ISREG(st.st_mode) else (None, None)
    )
    if hashes is not None and hashes.sha256.upper() == digest:
        if fingerprint is None:
            raise FileChangedError(f"{name or digest} changed while it was checked")
        with session_scope(engine, write=True) as session:
            records.record_fingerprint(session, digest, fingerprint)
        return path
    record = _quarantine_blob(
        engine, store, digest, hashes, reason="mount check: content changed since verification"
    )
    raise BlobChangedError(
        sha256=digest,
        got_sha256=hashes.sha256.upper() if hashes is not None else "(not a regular file)",
        name=name,
        record=record,
    )


def local_path(engine: Engine, store: BlobStore, ref: str) -> Path:
    """The verified blob of a version id (its primary file) or of a SHA256."""
    text = ref.strip()
    with Session(engine) as session:
        if text.isdigit():
            target = records.file_target(session, int(text))
            sha = target.expected_sha256
        else:
            sha = text.upper()
            if len(sha) != 64:
                raise NotInCatalogError(
                    f"{ref!r} is neither a version id nor a SHA256",
                    kind="ref",
                    key=ref,
                )
        row = (
            session.execute(
                select(LocalFile).where(
                    col(LocalFile.sha256) == sha, col(LocalFile.state) == "verified"
                )
            )
            .scalars()
            .first()
        )
    if row is None or not store.has(sha):
        raise NotInCatalogError(
            f"no verified local file for {ref}",
            kind="pull-first" if text.isdigit() else "pull-or-import",
            key=ref,
        )
    return store.blob_path(sha)


def files_for_version(session: Session, version_id: int) -> list[ModelFile]:
    version = session.get(ModelVersion, version_id)
    return list(version.files) if version else []


# --- delete: plan first, then execute (the TUI confirms the plan) ----------------------------

_LOCAL = LocalFile.__table__  # type: ignore[attr-defined]


@dataclass(frozen=True)
class DeletePlan:
    """What deleting one local file would remove; nothing happens until `execute`.

    The blob goes only when no other `LocalFile` row and no other name link uses it: two
    catalog files with the same bytes share one blob.
    """

    local_id: int
    file_id: int | None
    sha256: str | None
    links: tuple[Path, ...]
    blob_path: Path | None
    """The blob to remove, or None when it stays (shared, or not in the store)."""
    shared_with: tuple[int, ...]
    """Ids of the other `LocalFile` rows that keep the blob alive."""
    expected_freed_bytes: int

    def execute(self, engine: Engine, store: BlobStore) -> int:
        """Remove the links, the row and (if planned) the blob; returns the bytes freed."""
        for link in self.links:
            if link.is_symlink():
                link.unlink()
        with session_scope(engine, write=True) as session:
            row = session.get(LocalFile, self.local_id)
            if row is not None:
                session.delete(row)
        freed = 0
        if self.blob_path is not None and self.sha256 is not None:
            # Re-check under the final state: a pull may have reused the blob meanwhile.
            with Session(engine) as session:
                still_used = session.execute(
                    select(_LOCAL.c.id).where(_LOCAL.c.sha256 == self.sha256)
                ).first()
            unused = still_used is None and not _links_to(store, self.blob_path)
            if unused and self.blob_path.exists():
                freed = self.blob_path.stat().st_size
                self.blob_path.unlink()
        store.record_provenance(
            {
                "event": "delete",
                "file_id": self.file_id,
                "sha256": self.sha256,
                "links": [str(p) for p in self.links],
                "blob_removed": freed > 0,
            }
        )
        return freed


def _links_to(store: BlobStore, blob: Path, *, skip: Sequence[Path] = ()) -> list[Path]:
    """Name links under ``names/`` that resolve to `blob`."""
    if not store.names_dir.exists():
        return []
    target = blob.resolve()
    found = []
    for link in store.names_dir.rglob("*"):
        if link in skip or not link.is_symlink():
            continue
        try:
            if link.resolve() == target:
                found.append(link)
        except OSError:
            continue
    return found


def plan_delete(
    engine: Engine, store: BlobStore, *, file_id: int | None = None, local_id: int | None = None
) -> DeletePlan:
    """Plan removing the local copy of a catalog file (`file_id`) or a `LocalFile` row."""
    if (file_id is None) == (local_id is None):
        raise ValueError("pass exactly one of file_id and local_id")
    with Session(engine) as session:
        if local_id is not None:
            row = session.get(LocalFile, local_id)
        else:
            row = (
                session.execute(select(LocalFile).where(col(LocalFile.file_id) == file_id))
                .scalars()
                .first()
            )
        if row is None or row.id is None:
            raise NotInCatalogError(
                f"no local file for {'file ' + str(file_id) if file_id is not None else local_id}",
                kind="stored-file",
                key=file_id if file_id is not None else local_id,
            )
        sha = (row.sha256 or "").upper() or None
        others: tuple[int, ...] = ()
        if sha is not None:
            others = tuple(
                int(i)
                for i in session.execute(
                    select(_LOCAL.c.id).where(_LOCAL.c.sha256 == sha, _LOCAL.c.id != row.id)
                ).scalars()
            )
        own = (row.id, row.file_id)
    links: list[Path] = []
    blob: Path | None = None
    if sha is not None and len(sha) == 64:
        blob = store.blob_path(sha)
        all_links = _links_to(store, blob)
        # Link names start with the catalog file id (`download.link_name_for`).
        prefix = f"{own[1]}-" if own[1] is not None else None
        links = [p for p in all_links if prefix is not None and p.name.startswith(prefix)]
        foreign = [p for p in all_links if p not in links]
        if others or foreign or not blob.exists():
            blob = None
    freed = blob.stat().st_size if blob is not None else 0
    return DeletePlan(
        local_id=own[0],
        file_id=own[1],
        sha256=sha,
        links=tuple(links),
        blob_path=blob,
        shared_with=others,
        expected_freed_bytes=freed,
    )
