"""The content-addressed blob store.

Layout under the store root (``$ASSETMGR_HOME/store``)::

    CACHEDIR.TAG                 tells backup tools to skip the store
    blobs/sha256/AB/ABCD…        one read-only file per SHA256 (uppercase hex); never rewritten
    partial/<key>.part           downloads in progress (same volume, so promotion is a rename)
    partial/<key>.json           their resume state (url-free: signed URLs are never stored)
    quarantine/<time>-<sha>.bin  bytes that failed verification; never loadable
    locks/<key>.lock             one flock per download
    names/<relative name>        human-facing names: relative symlinks into blobs/
    provenance.jsonl             append-only record of everything that entered the store

Nothing outside `promote` ever creates a file under ``blobs/``; `promote` fsyncs, makes the file
read-only and renames it into place, and refuses to replace a blob that exists.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import re
import shutil
import time
import unicodedata
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from assetmgr.errors import StoreError

_SHA256_RE = re.compile(r"^[0-9A-F]{64}$")
_CACHEDIR_TAG = (
    "Signature: 8a477f597d28d172789f06886806bc55\n"
    "# This file marks the assetmgr model store; backup tools may skip it.\n"
)
#: Extra headroom kept free on the volume beyond the file itself.
DISK_HEADROOM_BYTES = 256 * 1024 * 1024


class DiskSpaceError(StoreError, OSError):
    """Not enough free space for a download or import."""

    title = "Not enough disk space"
    hint = "Free some space or move ASSETMGR_HOME to a larger volume."


class StoreLockTimeout(StoreError, TimeoutError):
    """Another process holds the lock of this download."""

    title = "Download in progress elsewhere"
    hint = "Another assetmgr process is downloading this file; wait for it or stop it."


class BlobExistsError(StoreError, FileExistsError):
    """`promote` found a blob already there; existing blobs are never rewritten."""


def _check_sha256(sha256: str) -> str:
    digest = sha256.upper()
    if not _SHA256_RE.match(digest):
        raise StoreError(f"not a SHA256 digest: {sha256[:80]!r}")
    return digest


_UNSAFE_CHARS = re.compile(r'[\x00-\x1f\x7f<>:"|?*\\/]')
_RESERVED = {
    "CON",
    "PRN",
    "AUX",
    "NUL",
    *(f"COM{i}" for i in range(1, 10)),
    *(f"LPT{i}" for i in range(1, 10)),
}


def sanitize_filename(
    name: str | None, *, fallback: str = "model.safetensors", max_len: int = 160
) -> str:
    """A single safe path component from a server- or user-supplied name.

    Keeps only the last path segment (so ``../../x`` and ``/etc/passwd`` collapse to ``x`` and
    ``passwd``), drops control and shell-hostile characters, strips leading dots (no hidden
    files, no ``..``), avoids Windows device names, and caps the length while keeping the
    extension.
    """
    if not name:
        return fallback
    text = unicodedata.normalize("NFC", str(name))
    text = text.replace("\\", "/").split("/")[-1]
    text = _UNSAFE_CHARS.sub("_", text).strip().lstrip(".").strip()
    if not text or text in {".", ".."}:
        return fallback
    stem, dot, ext = text.rpartition(".")
    if not dot:
        stem, ext = text, ""
    if stem.upper() in _RESERVED:
        stem = f"_{stem}"
    ext = ext[:16]
    budget = max_len - (len(ext) + 1 if ext else 0)
    encoded = stem.encode("utf-8")[:budget].decode("utf-8", "ignore") or "file"
    return f"{encoded}.{ext}" if ext else encoded


def sanitize_relative_path(parts: list[str]) -> Path:
    """Join sanitized components; the result is always relative and inside its base."""
    return Path(*[sanitize_filename(p, fallback="_") for p in parts if p])


@dataclass(frozen=True)
class QuarantineRecord:
    path: Path
    reason: str


class BlobStore:
    """Content-addressed files keyed by SHA256; see the module docstring for the layout."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.blobs_dir = root / "blobs" / "sha256"
        self.partial_dir = root / "partial"
        self.quarantine_dir = root / "quarantine"
        self.locks_dir = root / "locks"
        self.names_dir = root / "names"
        self.provenance_path = root / "provenance.jsonl"

    def ensure(self) -> None:
        for d in (
            self.blobs_dir,
            self.partial_dir,
            self.quarantine_dir,
            self.locks_dir,
            self.names_dir,
        ):
            d.mkdir(parents=True, exist_ok=True)
        tag = self.root / "CACHEDIR.TAG"
        if not tag.exists():
            tag.write_text(_CACHEDIR_TAG, encoding="ascii")

    # -- blobs ---------------------------------------------------------------------------

    def blob_path(self, sha256: str) -> Path:
        digest = _check_sha256(sha256)
        return self.blobs_dir / digest[:2] / digest

    def has(self, sha256: str) -> bool:
        return self.blob_path(sha256).is_file()

    def iter_blobs(self) -> Iterator[tuple[str, Path]]:
        if not self.blobs_dir.exists():
            return
        for shard in sorted(self.blobs_dir.iterdir()):
            if not shard.is_dir():
                continue
            for blob in sorted(shard.iterdir()):
                if _SHA256_RE.match(blob.name):
                    yield blob.name, blob

    def promote(self, tmp_path: Path, sha256: str) -> Path:
        """Move a verified temp file into ``blobs/`` atomically, read-only, never replacing."""
        self.ensure()
        dest = self.blob_path(sha256)
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(tmp_path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.chmod(tmp_path, 0o444)
        try:
            # link() fails if dest exists, unlike rename(): an existing blob is never replaced.
            os.link(tmp_path, dest)
        except FileExistsError:
            raise BlobExistsError(f"blob {sha256} already exists") from None
        except OSError as exc:
            if exc.errno not in (errno.EPERM, errno.EXDEV, errno.ENOTSUP):
                raise
            if dest.exists():
                raise BlobExistsError(f"blob {sha256} already exists") from None
            os.rename(tmp_path, dest)
        else:
            os.unlink(tmp_path)
        self._fsync_dir(dest.parent)
        return dest

    def import_file(self, source: Path, sha256: str, *, mode: str = "auto") -> Path:
        """Bring an already verified file in by hardlink (same volume) or copy; never moves it.

        A hardlink shares the inode with the user's original, so the blob is only as immutable as
        that file: `verify` re-hashes blobs, and `mode="copy"` avoids sharing.
        """
        self.ensure()
        dest = self.blob_path(sha256)
        if dest.exists():
            return dest
        dest.parent.mkdir(parents=True, exist_ok=True)
        source = source.resolve()
        # A hardlink shares the original's permissions, and we never chmod a user's file: a
        # file the sandbox user (another uid) could not read is copied instead.
        readable = source.stat().st_mode & 0o004
        if mode == "hardlink" or (mode == "auto" and readable):
            try:
                os.link(source, dest)
                return dest
            except FileExistsError:
                return dest
            except OSError:
                if mode == "hardlink":
                    raise
        tmp = self.partial_dir / f"import-{sha256}-{os.getpid()}.part"
        try:
            self.check_free_space(source.stat().st_size)
            shutil.copyfile(source, tmp)
            return self.promote(tmp, sha256)
        finally:
            tmp.unlink(missing_ok=True)

    # -- names ---------------------------------------------------------------------------

    def link_name(self, sha256: str, relative_name: Path) -> Path:
        """Create (or repoint) ``names/<relative_name>`` as a relative symlink to the blob."""
        if relative_name.is_absolute() or ".." in relative_name.parts:
            raise StoreError(f"refusing a link name outside the store: {relative_name}")
        link = self.names_dir / relative_name
        target = self.blob_path(sha256)
        link.parent.mkdir(parents=True, exist_ok=True)
        rel_target = os.path.relpath(target, link.parent)
        tmp_link = link.with_name(f".{link.name}.{os.getpid()}.tmp")
        tmp_link.unlink(missing_ok=True)
        os.symlink(rel_target, tmp_link)
        os.replace(tmp_link, link)
        return link

    # -- partial downloads, locks, quarantine ---------------------------------------------

    def partial_paths(self, key: str) -> tuple[Path, Path]:
        safe = sanitize_filename(key, fallback="download")
        return self.partial_dir / f"{safe}.part", self.partial_dir / f"{safe}.json"

    @contextmanager
    def lock(self, key: str, *, timeout: float = 0.0) -> Iterator[None]:
        """An exclusive flock per key; `timeout` seconds of waiting, then `StoreLockTimeout`."""
        self.ensure()
        path = self.locks_dir / f"{sanitize_filename(key, fallback='lock')}.lock"
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + timeout
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        raise StoreLockTimeout(f"{key} is locked by another process") from None
                    time.sleep(0.1)
            yield
        finally:
            try:
                fcntl.flock(fd, fcntl.LOCK_UN)
            finally:
                os.close(fd)

    def quarantine(
        self,
        path: Path,
        *,
        got_sha256: str | None,
        reason: str,
        details: dict[str, Any] | None = None,
    ) -> QuarantineRecord:
        """Move bytes that failed verification out of reach; they are never loadable."""
        self.ensure()
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
        dest = self.quarantine_dir / f"{stamp}-{(got_sha256 or 'unknown')[:16]}.bin"
        os.chmod(path, 0o400)
        os.replace(path, dest)
        meta = {"reason": reason, "got_sha256": got_sha256, "at": stamp, **(details or {})}
        dest.with_suffix(".json").write_text(json.dumps(meta, indent=2), encoding="utf-8")
        return QuarantineRecord(dest, reason)

    def check_free_space(self, needed_bytes: int, *, already_have: int = 0) -> None:
        self.ensure()
        usage = shutil.disk_usage(self.partial_dir)
        missing = needed_bytes - already_have + DISK_HEADROOM_BYTES
        if usage.free < missing:
            raise DiskSpaceError(
                f"need {missing / 2**30:.2f} GiB free in {self.root}, "
                f"have {usage.free / 2**30:.2f} GiB"
            )

    # -- provenance ------------------------------------------------------------------------

    def record_provenance(self, entry: dict[str, Any]) -> None:
        """Append one JSON line; O_APPEND keeps concurrent writers' lines whole."""
        self.ensure()
        entry = {"time": datetime.now(UTC).isoformat(), **entry}
        line = (json.dumps(entry, sort_keys=True, default=str) + "\n").encode("utf-8")
        fd = os.open(self.provenance_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)

    @staticmethod
    def _fsync_dir(path: Path) -> None:
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            return
        try:
            os.fsync(fd)
        except OSError:
            pass
        finally:
            os.close(fd)
