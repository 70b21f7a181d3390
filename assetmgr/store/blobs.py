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

Nothing outside `promote` and `import_file` ever creates a file under ``blobs/``; `promote`
fsyncs, makes the file read-only and renames it into place, and refuses to replace a blob that
exists.

The store is private to its user: every directory is 0700 and every file it writes is 0600 (0400
in quarantine), created with that mode rather than chmodded afterwards. Blobs are the exception,
0444, because a job's container reads them as another uid through a bind mount (which bypasses
the 0700 directories, while other local users cannot get past them). A blob imported by
hardlink shares its inode with the user's own file, so the store never changes such an inode's
mode or bytes: quarantine removes the store's link instead (see `quarantine`).
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import re
import shutil
import stat
import time
import unicodedata
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from assetmgr.errors import StoreError
from assetmgr.store.hashing import FileChangedError
from catalog.hashes import sha256_file

_SHA256_RE = re.compile(r"^[0-9A-F]{64}$")
_CACHEDIR_TAG = (
    "Signature: 8a477f597d28d172789f06886806bc55\n"
    "# This file marks the assetmgr model store; backup tools may skip it.\n"
)
#: Extra headroom kept free on the volume beyond the file itself.
DISK_HEADROOM_BYTES = 256 * 1024 * 1024
PRIVATE_DIR_MODE = 0o700
PRIVATE_FILE_MODE = 0o600
#: Blobs stay readable by the sandbox's uid, which opens them through a read-only bind mount.
BLOB_MODE = 0o444
#: Linux's FICLONE ioctl (``_IOW(0x94, 9, int)``): a copy-on-write clone of a whole file.
FICLONE = 0x40049409
_COPY_CHUNK = 8 << 20
PlaceMode = Literal["auto", "copy", "hardlink"]
"""How `import_file` brings a file in: ``auto`` (reflink, else hardlink, else copy), ``copy``
(reflink, else copy: the store never shares an inode with the original) or ``hardlink``."""


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


# Lone surrogates stand for the undecodable bytes of a file name; no database takes them.
_UNSAFE_CHARS = re.compile(r'[\x00-\x1f\x7f<>:"|?*\\/\ud800-\udfff]')
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


def stat_fingerprint(st: os.stat_result) -> str:
    """What identifies a file's state without reading it: device, inode, size, mtime, ctime.

    Any write, truncation, chmod or link-count change moves ctime, so an equal fingerprint
    means the bytes hashed when it was taken are still there.
    """
    return f"{st.st_dev}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}"


@dataclass(frozen=True)
class QuarantineRecord:
    path: Path
    """Where the bytes went, or where the record is when the store only removed its link."""
    reason: str
    link_removed: bool = False
    """True when the blob shared its inode with a file outside the store (a hardlinked
    import): the store removed its own link and left that inode, mode and bytes, untouched."""


@dataclass(frozen=True)
class PlacedBlob:
    """A file `import_file` brought into ``blobs/``."""

    path: Path
    method: Literal["reflink", "hardlink", "copy", "existing"]
    fingerprint: str | None
    """`stat_fingerprint` of the blob right after it was placed and checked, or None when the
    blob already existed (its bytes were not checked here)."""


def open_private(path: Path, flags: int, mode: int = PRIVATE_FILE_MODE) -> int:
    """Open or create a file in the store with its final mode and never through a link."""
    return os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode)


@dataclass(frozen=True)
class FileIdentity:
    """What says a file still holds the bytes that were checked: same inode, size and mtime."""

    device: int
    inode: int
    size: int
    mtime_ns: int

    @classmethod
    def of(cls, st: os.stat_result) -> FileIdentity:
        return cls(st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def _reflink(source_fd: int, dest_fd: int) -> bool:
    """Clone `source_fd` into `dest_fd` copy-on-write; False where the filesystem cannot."""
    try:
        fcntl.ioctl(dest_fd, FICLONE, source_fd)
    except OSError as exc:
        if exc.errno in (
            errno.EOPNOTSUPP,
            errno.ENOTTY,
            errno.EXDEV,
            errno.EINVAL,
            errno.EBADF,
            errno.ENOSYS,
            errno.EPERM,
        ):
            return False
        raise
    return True


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
        self._ensured = False

    def ensure(self) -> None:
        """Create the layout, private to the user; the first call also tightens an older store."""
        if self._ensured and self.root.is_dir():
            return
        try:
            loose = bool(self.root.stat().st_mode & 0o077)
        except FileNotFoundError:
            loose = False
        self._mkdir_private(self.root)
        for d in (
            self.blobs_dir,
            self.partial_dir,
            self.quarantine_dir,
            self.locks_dir,
            self.names_dir,
        ):
            self._mkdir_private(d)
        tag = self.root / "CACHEDIR.TAG"
        if not tag.exists():
            try:
                fd = open_private(tag, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
            except FileExistsError:
                pass
            else:
                with os.fdopen(fd, "w", encoding="ascii") as fh:
                    fh.write(_CACHEDIR_TAG)
        self._tighten(deep=loose or self._loose_entries())
        self._ensured = True

    def _mkdir_private(self, path: Path) -> None:
        """`path` and any missing parent up to the store root, created 0700 (never wider)."""
        missing: list[Path] = []
        probe = path
        while not probe.exists() and probe.parent != probe:
            missing.append(probe)
            probe = probe.parent
        for d in reversed(missing):
            try:
                # mkdir's mode is masked by the umask, so it is at most 0700 from the start.
                d.mkdir(mode=PRIVATE_DIR_MODE)
            except FileExistsError:
                continue
        for d in (path, *missing):
            # The root itself may be a link the user made (a store on another drive).
            _chmod_private_dir(d, follow=d == self.root)

    def _loose_entries(self) -> bool:
        try:
            entries = list(os.scandir(self.root))
        except OSError:
            return False
        for entry in entries:
            st = entry.stat(follow_symlinks=False)
            if (stat.S_ISDIR(st.st_mode) or stat.S_ISREG(st.st_mode)) and st.st_mode & 0o077:
                return True
        return False

    def _tighten(self, *, deep: bool) -> None:
        """Take group and other bits off the store's directories and private files.

        Blob files keep their mode: the store's own are 0444 on purpose (module docstring) and
        a hardlinked one is the user's inode, which the store never changes.
        """
        _chmod_private_dir(self.root, follow=True)
        if not deep:
            return
        blobs_top = self.blobs_dir.parent
        for top, dirs, files in os.walk(self.root, followlinks=False):
            here = Path(top)
            for name in dirs:
                _chmod_private_dir(here / name)
            if here != blobs_top and blobs_top not in here.parents:
                for name in files:
                    _strip_group_other(here / name)

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
        self._mkdir_private(dest.parent)
        fd = os.open(tmp_path, os.O_RDONLY | os.O_NOFOLLOW)
        try:
            os.fsync(fd)
            os.fchmod(fd, BLOB_MODE)
        finally:
            os.close(fd)
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

    def import_file(
        self,
        source: Path,
        sha256: str,
        *,
        mode: PlaceMode | str = "auto",
        expected: FileIdentity | None = None,
    ) -> PlacedBlob:
        """Bring an already verified file in; never moves or modifies it.

        A reflink (copy-on-write clone) is tried first: free where the filesystem supports it,
        and the store then shares nothing with the original. Otherwise ``auto`` hardlinks (the
        inode is shared: `verify` and `check_before_mount` catch later edits, and the store
        never changes its mode) and ``copy`` copies. A file the sandbox's uid could not read
        is never hardlinked. `expected` is the file's identity when it was checked and hashed:
        if the file changed since, nothing is kept and `FileChangedError` is raised. A copy is
        hashed as it streams and must have `sha256`.
        """
        if mode not in ("auto", "copy", "hardlink"):
            raise ValueError(f"unknown import mode {mode!r}")
        self.ensure()
        digest = _check_sha256(sha256)
        dest = self.blob_path(digest)
        if dest.exists():
            return PlacedBlob(dest, "existing", None)
        self._mkdir_private(dest.parent)
        source = source.resolve()
        src_fd = os.open(source, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            st = os.fstat(src_fd)
            if not stat.S_ISREG(st.st_mode):
                raise StoreError(f"{source} is not a regular file")
            if expected is not None and FileIdentity.of(st) != expected:
                raise FileChangedError(f"{source} changed after it was hashed")
            if mode != "hardlink":
                placed = self._reflink_in(src_fd, st, digest, source)
                if placed is not None:
                    return placed
            # A hardlink shares the original's permissions, and we never chmod a user's file:
            # a file the sandbox user (another uid) could not read is copied instead.
            if mode == "hardlink" or (mode == "auto" and st.st_mode & 0o004):
                try:
                    os.link(source, dest)
                except FileExistsError:
                    return PlacedBlob(dest, "existing", None)
                except OSError:
                    if mode == "hardlink":
                        raise
                else:
                    linked = os.lstat(dest)
                    if FileIdentity.of(linked) != FileIdentity.of(st):
                        # Swapped or edited between the open and the link: keep nothing.
                        os.unlink(dest)
                        raise FileChangedError(f"{source} changed while it was linked")
                    return PlacedBlob(dest, "hardlink", stat_fingerprint(linked))
            return self._copy_in(src_fd, st, digest, source)
        finally:
            os.close(src_fd)

    def _temp_in_partial(self, digest: str, how: str) -> tuple[Path, int]:
        tmp = self.partial_dir / f"{how}-{digest}-{os.getpid()}-{os.urandom(4).hex()}.part"
        return tmp, open_private(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL)

    def _finish(self, tmp: Path, digest: str, method: Literal["reflink", "copy"]) -> PlacedBlob:
        try:
            dest = self.promote(tmp, digest)
        except BlobExistsError:
            return PlacedBlob(self.blob_path(digest), "existing", None)
        return PlacedBlob(dest, method, stat_fingerprint(os.lstat(dest)))

    def _reflink_in(
        self, src_fd: int, st: os.stat_result, digest: str, source: Path
    ) -> PlacedBlob | None:
        tmp, fd = self._temp_in_partial(digest, "reflink")
        try:
            try:
                cloned = _reflink(src_fd, fd)
            finally:
                os.close(fd)
            if not cloned:
                return None
            if FileIdentity.of(os.fstat(src_fd)) != FileIdentity.of(st):
                raise FileChangedError(f"{source} changed while it was cloned")
            return self._finish(tmp, digest, "reflink")
        finally:
            tmp.unlink(missing_ok=True)

    def _copy_in(self, src_fd: int, st: os.stat_result, digest: str, source: Path) -> PlacedBlob:
        self.check_free_space(st.st_size)
        tmp, fd = self._temp_in_partial(digest, "copy")
        try:
            # SHA256 only (not the six hashes): enough to prove the copy is the hashed file.
            with os.fdopen(fd, "wb", closefd=True) as out:
                got = sha256_file(src_fd, chunk_size=_COPY_CHUNK, on_chunk=out.write)
            if got != digest:
                raise FileChangedError(f"{source} changed while it was copied")
            return self._finish(tmp, digest, "copy")
        finally:
            tmp.unlink(missing_ok=True)

    # -- names ---------------------------------------------------------------------------

    def link_name(self, sha256: str, relative_name: Path) -> Path:
        """Create (or repoint) ``names/<relative_name>`` as a relative symlink to the blob."""
        if relative_name.is_absolute() or ".." in relative_name.parts:
            raise StoreError(f"refusing a link name outside the store: {relative_name}")
        self.ensure()
        link = self.names_dir / relative_name
        target = self.blob_path(sha256)
        self._mkdir_private(link.parent)
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
        fd = open_private(path, os.O_RDWR | os.O_CREAT)
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
        slot: str | None = None,
    ) -> QuarantineRecord:
        """Move bytes that failed verification out of reach; they are never loadable.

        A file whose inode has other links (a hardlinked import: the user's own file) is not
        touched: the store removes its link and records why, and the user's file keeps its
        mode and bytes. A `slot` (e.g. one per catalog file) keeps only the newest quarantine
        of that slot, so a server that sends other wrong bytes on every retry cannot fill
        the disk.
        """
        self.ensure()
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
        name = (
            sanitize_filename(slot, fallback="slot")
            if slot is not None
            else f"{stamp}-{(got_sha256 or 'unknown')[:16]}"
        )
        dest = self.quarantine_dir / f"{name}.bin"
        if slot is not None:
            for old in (dest, dest.with_suffix(".json")):
                old.unlink(missing_ok=True)  # the store's own earlier quarantine of this slot
        meta: dict[str, Any] = {
            "reason": reason,
            "got_sha256": got_sha256,
            "at": stamp,
            **(details or {}),
        }
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as exc:
            if exc.errno != errno.ELOOP:
                raise
            fd = -1  # a symlink where a blob belongs: only the link itself goes
        try:
            st = os.fstat(fd) if fd >= 0 else os.lstat(path)
            shared = st.st_nlink > 1 or not stat.S_ISREG(st.st_mode)
            if not shared:
                os.fchmod(fd, 0o400)  # the store's own inode: nobody else holds it
        finally:
            if fd >= 0:
                os.close(fd)
        if shared:
            os.unlink(path)
            meta.update({"link_removed": str(path), "bytes_kept": False})
            record_path = dest.with_suffix(".json")
        else:
            os.replace(path, dest)
            record_path = dest
        self._write_private_json(dest.with_suffix(".json"), meta)
        return QuarantineRecord(record_path, reason, link_removed=shared)

    def _write_private_json(self, path: Path, data: dict[str, Any]) -> None:
        fd = open_private(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(json.dumps(data, indent=2, default=str))

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
        fd = open_private(self.provenance_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
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


def _chmod_private_dir(path: Path, *, follow: bool = False) -> None:
    """Make a store directory 0700, through an fd opened without following a link."""
    nofollow = 0 if follow else os.O_NOFOLLOW
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | nofollow | os.O_CLOEXEC)
    try:
        if stat.S_IMODE(os.fstat(fd).st_mode) != PRIVATE_DIR_MODE:
            os.fchmod(fd, PRIVATE_DIR_MODE)
    finally:
        os.close(fd)


def _strip_group_other(path: Path) -> None:
    """A private file of the store loses group/other bits; links and shared inodes are skipped."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:  # a symlink (ELOOP), a socket, or gone meanwhile: not ours to change
        return
    try:
        st = os.fstat(fd)
        if stat.S_ISREG(st.st_mode) and st.st_nlink == 1 and st.st_mode & 0o077:
            os.fchmod(fd, stat.S_IMODE(st.st_mode) & 0o700)
    finally:
        os.close(fd)
