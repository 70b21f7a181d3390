"""Store operations the CLI and the TUI call: pull, verify, path.

Each takes a progress callback and a cancel event; neither imports a UI library.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from assetmgr.errors import AssetMgrError, NotInCatalogError, StoreError
from assetmgr.store import records
from assetmgr.store.blobs import BlobStore
from assetmgr.store.download import (
    Downloader,
    DownloadProgress,
    FileTarget,
    HashMismatchError,
    PullResult,
    is_pickle_format,
)
from assetmgr.store.hashing import compute_hashes
from assetmgr.store.safetensors_check import detect_format, validate_safetensors
from catalog import repo
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
    error: AssetMgrError | None = None


class StoreService:
    """Pulls catalog files into the blob store and keeps `LocalFile` rows right."""

    def __init__(
        self,
        engine: Engine,
        store: BlobStore,
        client: CivitaiClient | None,
        *,
        downloader: Downloader | None = None,
    ) -> None:
        self.engine = engine
        self.store = store
        self.client = client
        self.downloader = downloader or Downloader(store, self._resolve_url)

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
            with Session(self.engine) as session, session.begin():
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
        target = self.target(version_id, file_id)
        with Session(self.engine) as session, session.begin():
            if not self.store.has(target.expected_sha256 or "0" * 64):
                records.set_local_state(
                    session, file_id=target.file_id, sha256=target.expected_sha256 or "0" * 64,
                    state="downloading", path=None,
                )
        try:
            result = self.downloader.pull(
                target, allow_pickle=allow_pickle, progress=progress, cancel=cancel,
                validate=validate_for(target),
            )
        except HashMismatchError:
            with Session(self.engine) as session, session.begin():
                records.set_local_state(
                    session, file_id=target.file_id, sha256=target.expected_sha256,
                    state="quarantined", path=None,
                )
            raise
        except StoreError as exc:
            if getattr(exc, "title", "") != "Download cancelled":
                with Session(self.engine) as session, session.begin():
                    row = session.execute(
                        select(LocalFile).where(LocalFile.file_id == target.file_id)  # type: ignore[arg-type]
                    ).scalars().first()
                    if row is not None and row.state == "downloading" and exc.title != "Download incomplete":
                        session.delete(row)
            raise
        with Session(self.engine) as session, session.begin():
            records.set_local_state(
                session, file_id=target.file_id, sha256=result.sha256, state="verified",
                path=result.blob_path, hashes=result.hashes,
            )
        return result

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
            try:
                res = self.pull(version_id, file_id=file_id, allow_pickle=allow_pickle,
                                progress=progress, cancel=cancel)
                return PullOutcome(version_id, res.file_id, result=res)
            except AssetMgrError as exc:
                return PullOutcome(version_id, file_id, error=exc)

        with ThreadPoolExecutor(max_workers=max(1, concurrency), thread_name_prefix="pull") as pool:
            return list(pool.map(one, requests))


@dataclass
class VerifyReport:
    checked: int = 0
    ok: int = 0
    corrupt: list[dict[str, Any]] = field(default_factory=list)
    missing: list[dict[str, Any]] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not self.corrupt and not self.missing


def verify_store(
    engine: Engine,
    store: BlobStore,
    *,
    progress: Callable[[int, int, int], None] | None = None,
    cancel: threading.Event | None = None,
) -> VerifyReport:
    """Re-hash every blob; quarantine the corrupt ones and mark rows missing or quarantined.

    `progress(done_bytes, total_bytes, files_done)` is called as bytes are hashed.
    """
    report = VerifyReport()
    blobs = list(store.iter_blobs())
    total = sum(p.stat().st_size for _, p in blobs)
    done_before = 0
    for index, (name, path) in enumerate(blobs):
        if cancel is not None and cancel.is_set():
            break
        base = done_before

        def on_bytes(n: int, base: int = base, index: int = index) -> None:
            if progress is not None:
                progress(base + n, total, index)

        size = path.stat().st_size
        hashes = compute_hashes(path, progress=on_bytes, cancel=cancel)
        done_before += size
        report.checked += 1
        if hashes.sha256.upper() == name:
            report.ok += 1
            continue
        record = store.quarantine(path, got_sha256=hashes.sha256, reason="verify: content changed",
                                  details={"expected_sha256": name})
        store.record_provenance({"event": "verify", "result": "quarantined", "expected": {"SHA256": name},
                                 "computed": hashes.as_civitai_dict(), "path": str(record.path)})
        report.corrupt.append({"sha256": name, "got": hashes.sha256, "quarantined_to": str(record.path)})
        with Session(engine) as session, session.begin():
            for row in session.execute(select(LocalFile).where(LocalFile.sha256 == name)).scalars():  # type: ignore[arg-type]
                row.state = "quarantined"
                row.path = None
    with Session(engine) as session, session.begin():
        for row in session.execute(select(LocalFile).where(LocalFile.state == "verified")).scalars():  # type: ignore[arg-type]
            if row.sha256 and not store.has(row.sha256):
                row.state = "missing"
                report.missing.append({"sha256": row.sha256, "file_id": row.file_id})
    if progress is not None:
        progress(total, total, len(blobs))
    return report


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
                raise NotInCatalogError(f"{ref!r} is neither a version id nor a SHA256",
                                        hint="Pass a version id or a full 64-hex SHA256.")
        row = session.execute(
            select(LocalFile).where(LocalFile.sha256 == sha, LocalFile.state == "verified")  # type: ignore[arg-type]
        ).scalars().first()
    if row is None or not store.has(sha):
        raise NotInCatalogError(f"no verified local file for {ref}",
                                hint=f"Run `assetmgr pull {ref}` first." if text.isdigit() else "Pull or import it first.")
    return store.blob_path(sha)


def files_for_version(session: Session, version_id: int) -> list[ModelFile]:
    version = session.get(ModelVersion, version_id)
    return list(version.files) if version else []
