"""Verified, resumable downloads into the blob store (`assetmgr pull`).

The sequence for one file:

1. Policy first: the file must have a SHA256 in the catalog, must not be flagged ``Danger`` by
   Civitai's scanners, and must be safetensors unless the caller allows pickle formats (which
   are then stored but never unpickled on the host).
2. If the blob already exists, nothing is downloaded.
3. Under a per-file lock, ask the API for a signed storage URL (a 307 we do not follow, so the
   API key never travels to the storage origin), then stream the bytes into
   ``partial/<key>.part`` while hashing them. A dropped connection, a crash or ``kill -9``
   leaves the partial file; the next attempt asks for a *fresh* signed URL and resumes with
   ``Range`` plus ``If-Range`` (so bytes of a changed file are never spliced on). A 200 answer
   to a range request restarts from zero; a ``Content-Range`` that does not start where we are
   is an error.
4. Every transfer has a bound: the catalog's size when it is exact, else its approximate
   size (a fractional ``sizeKB``) rounded up plus a margin, else the length the storage
   declares, and never more than the maximum download size; free space is checked as blocks
   arrive. Past its bound a transfer stops at once (`DownloadTooLargeError`, or
   `DiskSpaceError`) and its partial file is deleted, as it is when the API refuses the file.
5. At the end the size (when the catalog knows it exactly) and SHA256 must equal the
   catalog's, and a safetensors file must pass the header validator. Then the partial file is
   promoted into ``blobs/`` (read-only). On any mismatch the bytes go to ``quarantine/`` and
   the error shows expected vs got.
6. Every file that enters the store, or is refused, gets a provenance line.

The target, its policy, its bounds and the errors live in `assetmgr.store.targets`; the
storage GET and the early write-back in `assetmgr.store.transfer_io`.
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from assetmgr.config import DEFAULT_MAX_DOWNLOAD_BYTES
from assetmgr.errors import EXPECTED_ERRORS, StoreError
from assetmgr.store.blobs import (
    DISK_HEADROOM_BYTES,
    BlobStore,
    DiskSpaceError,
    open_private,
    sanitize_filename,
    sanitize_relative_path,
)
from assetmgr.store.hashing import FileHashes, Hasher
from assetmgr.store.targets import (
    APPROX_SIZE_MARGIN_BYTES,
    LIMIT_DECLARED,
    LIMIT_MAXIMUM,
    DownloadCancelled,
    DownloadTooLargeError,
    FileTarget,
    HashMismatchError,
    IncompleteDownloadError,
    PolicyRefusedError,
    TransferBound,
    check_policy,
    describe_bytes,
    is_pickle_format,
)
from assetmgr.store.transfer_io import (
    BlockWriter,
    fill_block,
    open_storage,
    parse_content_range,
)
from catalog.civitai.disposition import filename_from_disposition
from catalog.civitai.retry import RetryPolicy
from catalog.hashes import Sha256Lane
from catalog.redact import redact_url


@dataclass(frozen=True)
class StreamDigest:
    """What a download computes while streaming: enough to verify the file's identity.

    Equal SHA256 means the same bytes Civitai hashed, so the other five hashes are the
    catalog's; `assetmgr verify` recomputes all six from disk.
    """

    sha256: str
    size: int

    def as_civitai_dict(self) -> dict[str, str]:
        return {"SHA256": self.sha256, "AutoV2": self.sha256[:10]}


class Sha256Stream:
    """The download-time hasher: one SHA-256 stream (hashlib releases the GIL on big updates)."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self._sha = Sha256Lane()
        self._size = 0

    def update(self, data: bytes | bytearray | memoryview) -> None:
        self._sha.feed(memoryview(data))
        self._size += len(data)

    def finalize(self) -> StreamDigest:
        return StreamDigest(self._sha.hex(), self._size)


StreamHasher = Hasher | Sha256Stream

log = logging.getLogger(__name__)


ProgressCallback = Callable[["DownloadProgress"], None]

CHUNK_BYTES = 8 << 20
READ_SLICE_BYTES = 256 << 10
HANDOFF_AFTER_S = 0.5
POOL_BLOCKS = 4
MAX_RESUME_ATTEMPTS = 8
USER_AGENT = "assetmgr/0.1"
# API answers that refuse the file itself (login, early access, gone); its partial goes too.
_REFUSAL_STATUSES = frozenset({401, 403, 404, 410})


@dataclass
class DownloadProgress:
    file_id: int
    name: str
    total_bytes: int | None
    done_bytes: int
    resumed_from: int = 0


@dataclass
class PullResult:
    file_id: int
    sha256: str
    blob_path: Path
    link_path: Path | None
    downloaded_bytes: int
    resumed_from: int
    already_present: bool
    hashes: FileHashes | StreamDigest | None = None


@dataclass
class _PartialState:
    file_id: int
    expected_sha256: str
    etag: str | None = None
    total: int | None = None

    def save(self, path: Path) -> None:
        tmp = path.with_suffix(".tmp")
        with suppress(FileNotFoundError):
            tmp.unlink()  # never written through: a leftover (or planted) name goes first
        with os.fdopen(open_private(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL), "w") as out:
            out.write(json.dumps(self.__dict__))
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: Path) -> _PartialState | None:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            return cls(**{k: data.get(k) for k in ("file_id", "expected_sha256", "etag", "total")})
        except (OSError, ValueError, TypeError):
            return None


class _ResumableFailure(Exception):
    """A transfer problem that a fresh signed URL and a Range request may fix."""


class Downloader:
    """Downloads catalog files into a `BlobStore`; see the module docstring."""

    def __init__(
        self,
        store: BlobStore,
        resolve_url: Callable[[FileTarget], str],
        *,
        all_hashes: bool = False,
        timeout: float = 60.0,
        chunk_bytes: int = CHUNK_BYTES,
        max_attempts: int = MAX_RESUME_ATTEMPTS,
        sleep: Callable[[float], None] = time.sleep,
        max_download_bytes: int = DEFAULT_MAX_DOWNLOAD_BYTES,
    ) -> None:
        self.store = store
        self.resolve_url = resolve_url
        # Storage requests go out on their own connections with no Authorization header: the
        # API key never leaves the API origin (signed URLs carry their own credentials).
        self.timeout = timeout
        # By default only SHA256 is computed while streaming (it is what verification needs);
        # all_hashes computes the six hashes in the same pass, at about twice the CPU cost.
        self.all_hashes = all_hashes
        self.chunk_bytes = chunk_bytes
        self.max_attempts = max_attempts
        self.sleep = sleep
        self.max_download_bytes = max_download_bytes
        """Bound of a transfer whose size no one declared, and a ceiling on every other."""

    def close(self) -> None:
        """Nothing to release: every transfer opens and closes its own connection."""

    def __enter__(self) -> Downloader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def pull(
        self,
        target: FileTarget,
        *,
        allow_pickle: bool = False,
        progress: ProgressCallback | None = None,
        cancel: threading.Event | None = None,
        validate: Callable[[Path], None] | None = None,
    ) -> PullResult:
        """Download, verify and promote one file; see the module docstring."""
        check_policy(target, allow_pickle=allow_pickle)
        expected = target.expected_sha256.upper()
        if self.store.has(expected):
            return PullResult(
                target.file_id, expected, self.store.blob_path(expected), None, 0, 0, True
            )
        key = target.partial_key
        with self.store.lock(key, timeout=0.5):
            if self.store.has(expected):  # someone finished it while we waited
                return PullResult(
                    target.file_id, expected, self.store.blob_path(expected), None, 0, 0, True
                )
            return self._download_locked(target, key, expected, progress, cancel, validate)

    def _download_locked(
        self,
        target: FileTarget,
        key: str,
        expected: str,
        progress: ProgressCallback | None,
        cancel: threading.Event | None,
        validate: Callable[[Path], None] | None,
    ) -> PullResult:
        part_path, state_path = self.store.partial_paths(key)
        bound = target.catalog_bound(self.max_download_bytes)
        declared = target.expected_size if target.expected_size is not None else target.approx_size
        if declared is not None and declared > self.max_download_bytes:
            raise DownloadTooLargeError(
                name=target.name,
                limit=self.max_download_bytes,
                limit_source=LIMIT_MAXIMUM,
                declared=declared,
            )
        state = _PartialState.load(state_path)
        if state is None or state.expected_sha256 != expected or not part_path.exists():
            part_path.unlink(missing_ok=True)
            state = _PartialState(target.file_id, expected)
        offset = part_path.stat().st_size if part_path.exists() else 0
        if offset > min(bound.limit, self.max_download_bytes):
            part_path.unlink(missing_ok=True)
            offset = 0
        self.store.check_free_space(declared or 0, already_have=offset)
        # The first link is asked for before a partial file exists: a refusal leaves nothing.
        url: str | None = self._resolve(target, part_path, state_path)
        state.save(state_path)

        hasher: StreamHasher = Hasher() if self.all_hashes else Sha256Stream()
        if offset:
            self._feed_existing(part_path, hasher, offset)
        resumed_from = offset
        server_name: str | None = None
        attempts = 0
        downloaded = 0
        retry = RetryPolicy(max_attempts=self.max_attempts)
        try:
            part_fd = open_private(part_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
            with os.fdopen(part_fd, "ab") as out:
                while True:
                    if cancel is not None and cancel.is_set():
                        raise DownloadCancelled(
                            f"download of {target.name} cancelled; progress saved"
                        )
                    attempts += 1
                    if url is None:
                        url = self._resolve(target, part_path, state_path)
                    try:
                        offset, got_name, n = self._transfer(
                            url, target, state, state_path, out, hasher, offset, progress, cancel
                        )
                        downloaded += n
                        server_name = got_name or server_name
                        break
                    except _ResumableFailure as exc:
                        out.flush()
                        offset = out.tell()
                        url = None  # signed links expire: each attempt asks for a fresh one
                        if attempts >= retry.max_attempts:
                            raise IncompleteDownloadError(
                                f"{target.name}: gave up after {attempts} attempts at byte "
                                f"{offset}: {exc}"
                            ) from None
                        log.info(
                            "download of %s interrupted at %d (%s); resuming",
                            target.name,
                            offset,
                            exc,
                        )
                        self.sleep(retry.delay(attempts))
                out.flush()
                os.fsync(out.fileno())
        except (DownloadTooLargeError, DiskSpaceError) as exc:
            self._discard(part_path, state_path)
            self.store.record_provenance(
                {
                    "event": "download",
                    "version_id": target.version_id,
                    "file_id": target.file_id,
                    "name": target.name,
                    "expected": {"SHA256": expected, "size": target.expected_size},
                    "result": "refused",
                    "error": exc.message,
                }
            )
            raise
        except IncompleteDownloadError:
            if part_path.exists() and part_path.stat().st_size == 0:
                self._discard(part_path, state_path)  # nothing to resume from
            raise
        hashes = hasher.finalize()
        return self._finish(
            target,
            expected,
            part_path,
            state_path,
            hashes,
            resumed_from,
            downloaded,
            server_name,
            validate,
        )

    def _resolve(self, target: FileTarget, part_path: Path, state_path: Path) -> str:
        """A fresh signed link; when the API refuses the file, its partial file goes too."""
        try:
            return self.resolve_url(target)
        except EXPECTED_ERRORS as exc:
            if getattr(exc, "status_code", None) in _REFUSAL_STATUSES:
                self._discard(part_path, state_path)
            raise

    @staticmethod
    def _discard(part_path: Path, state_path: Path) -> None:
        part_path.unlink(missing_ok=True)
        state_path.unlink(missing_ok=True)

    def _feed_existing(self, part_path: Path, hasher: StreamHasher, length: int) -> None:
        with open(part_path, "rb") as fh:
            remaining = length
            while remaining:
                block = fh.read(min(self.chunk_bytes * 8, remaining))
                if not block:
                    break
                hasher.update(block)
                remaining -= len(block)

    def _transfer(
        self,
        url: str,
        target: FileTarget,
        state: _PartialState,
        state_path: Path,
        out: Any,
        hasher: StreamHasher,
        offset: int,
        progress: ProgressCallback | None,
        cancel: threading.Event | None,
    ) -> tuple[int, str | None, int]:
        headers = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity"}
        if offset:
            headers["Range"] = f"bytes={offset}-"
            if state.etag:
                headers["If-Range"] = state.etag
        try:
            response, conn = open_storage(url, headers, self.timeout)
        except (OSError, http.client.HTTPException) as exc:
            raise _ResumableFailure(f"{type(exc).__name__}: {exc}") from None
        try:
            status = response.status
            if status in (401, 403, 404, 410):
                # An expired or revoked signed URL: ask the API for a fresh one.
                raise _ResumableFailure(f"storage answered {status} for {redact_url(url)}")
            if status >= 500 or status == 429:
                raise _ResumableFailure(f"storage answered {status}")
            if status == 416:
                raise _ResumableFailure("storage refused the range")
            if status not in (200, 206):
                raise IncompleteDownloadError(
                    f"unexpected storage answer {status} for {redact_url(url)}"
                )
            if status == 200 and offset:
                log.info("storage ignored the range for %s; restarting from zero", target.name)
                out.seek(0)
                out.truncate()
                hasher.reset()
                offset = 0
            if status == 206:
                start, total = parse_content_range(response.getheader("content-range"))
                if start != offset:
                    raise IncompleteDownloadError(
                        f"storage resumed at byte {start}, expected {offset}"
                    )
                if total is not None:
                    state.total = total
            else:
                length = response.getheader("content-length")
                state.total = int(length) if length and length.isdigit() else None
            bound = self._transfer_bound(target, state.total)
            etag = response.getheader("etag")
            if etag and not etag.startswith("W/"):
                state.etag = etag
            state.save(state_path)
            expected_total = target.expected_size or state.total
            server_name = filename_from_disposition(response.getheader("content-disposition"))
            offset, received = self._pump(
                response, out, hasher, offset, expected_total, bound, target, progress, cancel
            )
        finally:
            conn.close()
        if state.total is not None and offset < state.total:
            raise _ResumableFailure(f"connection ended at byte {offset} of {state.total}")
        if progress is not None:
            progress(DownloadProgress(target.file_id, target.name, expected_total, offset))
        return offset, server_name, received

    def _transfer_bound(self, target: FileTarget, declared_total: int | None) -> TransferBound:
        """This transfer's bound; a storage that declares more than it is refused unread."""
        most = self.max_download_bytes
        bound = target.catalog_bound(most)
        if bound.limit > most:
            bound = TransferBound(most, LIMIT_MAXIMUM)
        elif bound.source == LIMIT_MAXIMUM and declared_total is not None:
            bound = TransferBound(min(declared_total, most), LIMIT_DECLARED)
        if declared_total is not None and declared_total > bound.limit:
            broken = TransferBound(most, LIMIT_MAXIMUM) if declared_total > most else bound
            raise DownloadTooLargeError(
                name=target.name,
                limit=broken.limit,
                limit_source=broken.source,
                declared=declared_total,
            )
        return bound

    def _pump(
        self,
        response: http.client.HTTPResponse,
        out: Any,
        hasher: StreamHasher,
        offset: int,
        expected_total: int | None,
        bound: TransferBound,
        target: FileTarget,
        progress: ProgressCallback | None,
        cancel: threading.Event | None,
    ) -> tuple[int, int]:
        """Receive into pooled buffers while a second thread writes and hashes them.

        The socket read (`readinto`), the file write and the hashing all release the GIL, so
        receiving the next block overlaps with writing and hashing the last one. Whatever was
        received before an error is written and hashed, so a resume loses nothing.
        """
        writer = BlockWriter(out.fileno(), offset, hasher.update, self.chunk_bytes, POOL_BLOCKS)
        received = 0
        pos = offset
        last_report = 0.0
        try:
            while not writer.failure:
                if cancel is not None and cancel.is_set():
                    raise DownloadCancelled(f"download of {target.name} cancelled; progress saved")
                buf = writer.free.get()
                filled, ended, error = fill_block(
                    response, buf, bound.limit - pos, READ_SLICE_BYTES, HANDOFF_AFTER_S
                )
                if error is not None:
                    if filled:
                        writer.hand(buf, filled)
                        pos += filled
                        received += filled
                    else:
                        writer.free.put(buf)
                    raise _ResumableFailure(f"{type(error).__name__}: {error}") from None
                if not filled:
                    writer.free.put(buf)
                    break
                stop = self._past_bound(target, bound, pos, filled)
                if stop is not None:
                    writer.free.put(buf)
                    raise stop
                writer.hand(buf, filled)
                pos += filled
                received += filled
                now = time.monotonic()
                if progress is not None and now - last_report > 0.1:
                    last_report = now
                    progress(DownloadProgress(target.file_id, target.name, expected_total, pos))
                if ended:
                    break
        finally:
            writer.close()
            out.seek(0, os.SEEK_END)
        if writer.failure:
            raise writer.failure[0]
        return writer.written, received

    def _past_bound(
        self, target: FileTarget, bound: TransferBound, pos: int, incoming: int
    ) -> StoreError | None:
        """Why a block received at `pos` must not be written, if it must not.

        Free space is asked for on every block: a file of unknown size is only ever bounded
        by the maximum, and the disk may fill up from elsewhere meanwhile.
        """
        if pos + incoming > bound.limit:
            return DownloadTooLargeError(
                name=target.name,
                limit=bound.limit,
                limit_source=bound.source,
                received=pos + incoming,
            )
        free_bytes = shutil.disk_usage(self.store.partial_dir).free
        if free_bytes < incoming + DISK_HEADROOM_BYTES:
            free_text, headroom = describe_bytes(free_bytes), describe_bytes(DISK_HEADROOM_BYTES)
            return DiskSpaceError(
                f"{target.name}: only {free_text} free in {self.store.root} at byte {pos} "
                f"(keeping {headroom} free); stopped and deleted the partial file"
            )
        return None

    def _finish(
        self,
        target: FileTarget,
        expected: str,
        part_path: Path,
        state_path: Path,
        hashes: FileHashes | StreamDigest,
        resumed_from: int,
        downloaded: int,
        server_name: str | None,
        validate: Callable[[Path], None] | None,
    ) -> PullResult:
        got = hashes.sha256.upper()
        provenance: dict[str, Any] = {
            "event": "download",
            "version_id": target.version_id,
            "file_id": target.file_id,
            "name": target.name,
            "expected": {"SHA256": expected, "size": target.expected_size},
            "computed": hashes.as_civitai_dict(),
            "size": hashes.size,
            "resumed_from": resumed_from,
        }
        size_ok = target.expected_size is None or hashes.size == target.expected_size
        if got != expected or not size_ok:
            record = self.store.quarantine(
                part_path,
                got_sha256=got,
                reason="hash mismatch",
                details={"expected_sha256": expected, "file_id": target.file_id},
                slot=f"download-file-{target.file_id}",
            )
            state_path.unlink(missing_ok=True)
            self.store.record_provenance(
                {**provenance, "result": "quarantined", "path": str(record.path)}
            )
            raise HashMismatchError(
                f"{target.name}: expected SHA256 {expected} ({target.expected_size} bytes), "
                f"got {got} ({hashes.size} bytes); quarantined"
            )
        if validate is not None:
            try:
                validate(part_path)
            except StoreError as exc:
                record = self.store.quarantine(
                    part_path,
                    got_sha256=got,
                    reason=f"validation failed: {exc.message}",
                    details={"file_id": target.file_id},
                    slot=f"download-file-{target.file_id}",
                )
                state_path.unlink(missing_ok=True)
                self.store.record_provenance(
                    {
                        **provenance,
                        "result": "refused",
                        "error": exc.message,
                        "path": str(record.path),
                    }
                )
                raise
        blob = self.store.promote(part_path, expected)
        state_path.unlink(missing_ok=True)
        link = self.store.link_name(expected, link_name_for(target, server_name))
        self.store.record_provenance({**provenance, "result": "verified", "path": str(blob)})
        return PullResult(
            target.file_id, expected, blob, link, downloaded, resumed_from, False, hashes
        )


def link_name_for(target: FileTarget, server_name: str | None) -> Path:
    """``names/<type>/<base model>/<file name>``, every component sanitized."""
    name = sanitize_filename(
        server_name or target.name, fallback=f"file-{target.file_id}.safetensors"
    )
    return sanitize_relative_path(
        [target.model_type or "Other", target.base_model or "unknown", f"{target.file_id}-{name}"]
    )


def now_utc() -> datetime:
    return datetime.now(UTC)


__all__ = [
    "APPROX_SIZE_MARGIN_BYTES",
    "CHUNK_BYTES",
    "DownloadCancelled",
    "DownloadProgress",
    "DownloadTooLargeError",
    "Downloader",
    "FileTarget",
    "HashMismatchError",
    "IncompleteDownloadError",
    "PolicyRefusedError",
    "PullResult",
    "Sha256Stream",
    "StreamDigest",
    "check_policy",
    "is_pickle_format",
    "link_name_for",
]
