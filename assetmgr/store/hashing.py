"""The six Civitai file hashes, computed in one pass over the bytes.

The forms and their lanes are `catalog.hashes` (the one hashing helper of the host); this
module feeds them from a mapped or pread file on several threads, and caches the results.

One mapped pass on worker threads (why: docs/decisions/one-pass-hashing.md).

Mapping a file that another process truncates while it is hashed kills this process with SIGBUS.
Files of the store are never rewritten in place; pass ``use_mmap=False`` for files that may be.
"""

from __future__ import annotations

import logging
import mmap
import os
import re
import sqlite3
import threading
import time
import zlib
from collections.abc import Callable, Iterator, Sequence
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import cast

from assetmgr.errors import StoreError
from catalog.hashes import (
    AUTOV1_MIN_SIZE,
    ONE_MIB,
    AutoV1Lane,
    AutoV3Lane,
    Blake3Lane,
    Crc32Fn,
    Crc32Lane,
    Sha256Lane,
    autov2,
)
from catalog.hashes import Lane as _Lane

log = logging.getLogger(__name__)

ProgressCallback = Callable[[int], None]
"""Called with the number of bytes hashed so far."""


def _pick_crc32() -> Crc32Fn:
    # Optional accelerators: same polynomial and result as zlib.crc32, faster
    # (docs/decisions/one-pass-hashing.md).
    try:
        from isal import isal_zlib

        return cast(Crc32Fn, isal_zlib.crc32)
    except ImportError:
        pass
    try:
        from zlib_ng import zlib_ng

        return cast(Crc32Fn, zlib_ng.crc32)
    except ImportError:
        pass
    return zlib.crc32


_crc32 = _pick_crc32()


# Work unit of a worker thread. Small enough that the second hash of a group finds the bytes the
# first one just pulled into L2, big enough that per-call overhead does not show.
_SLICE = 256 * 1024
# Below this, threads cost more than they save.
_PARALLEL_MIN = 4 * ONE_MIB
_PROGRESS_INTERVAL_S = 0.05

_HEX_RE = {
    "sha256": re.compile(r"[0-9A-F]{64}"),
    "autov1": re.compile(r"[0-9A-F]{8}"),
    "autov2": re.compile(r"[0-9A-F]{10}"),
    "autov3": re.compile(r"[0-9A-F]{12}"),
    "crc32": re.compile(r"[0-9A-F]{8}"),
    "blake3": re.compile(r"[0-9A-F]{64}"),
}


class HashingCancelled(StoreError):
    """Hashing stopped because the caller's cancel event was set."""

    title = "Hashing cancelled"
    hint = "Start it again; nothing was written."


class FileChangedError(StoreError):
    """The file changed size or mtime while it was being hashed."""

    title = "File changed while hashing"
    hint = "Wait until no other program writes the file, then try again."


@dataclass(frozen=True, slots=True)
class FileHashes:
    """The Civitai hashes of one file (upper-case hex) and its size in bytes."""

    sha256: str
    autov1: str | None
    """None for files smaller than 2 MiB, as Civitai stores none for them."""
    autov2: str
    autov3: str
    crc32: str
    blake3: str
    size: int

    def as_civitai_dict(self) -> dict[str, str]:
        """Hashes keyed by Civitai type name (``SHA256``, ``AutoV1``...); absent ones left out."""
        out = {
            "SHA256": self.sha256,
            "AutoV1": self.autov1,
            "AutoV2": self.autov2,
            "AutoV3": self.autov3,
            "CRC32": self.crc32,
            "BLAKE3": self.blake3,
        }
        return {k: v for k, v in out.items() if v is not None}

    def matches(self, value: str) -> bool:
        """Whether `value` (any case) equals one of the hashes, as Civitai's by-hash lookup does."""
        wanted = value.strip().upper()
        return bool(wanted) and wanted in self.as_civitai_dict().values()

    @classmethod
    def _from_row(cls, row: Sequence[object]) -> FileHashes | None:
        sha256, autov1, autov3, crc32, blake3_hex, size = row
        if not (isinstance(sha256, str) and isinstance(autov3, str) and isinstance(crc32, str)):
            return None
        if not (isinstance(blake3_hex, str) and isinstance(size, int)):
            return None
        if autov1 is not None and not isinstance(autov1, str):
            return None
        hashes = cls(sha256, autov1, sha256[:10], autov3, crc32, blake3_hex, size)
        for field, pattern in _HEX_RE.items():
            got = getattr(hashes, field)
            if got is not None and not pattern.fullmatch(got):
                return None
        if (autov1 is None) != (size < AUTOV1_MIN_SIZE) or size < 0:
            return None
        return hashes


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


class Hasher:
    """Incremental hasher for all six hashes, for bytes that arrive in pieces.

    Feed the bytes in order with `update` (or `update_from_file` for a stretch already on disk, such
    as the partial file of a resumed download), then call `finalize` once.

    Example:
        hasher = Hasher()
        hasher.update_from_file(part_path, length=resume_offset)
        for chunk in response.iter_bytes():
            hasher.update(chunk)
        hashes = hasher.finalize()
    """

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """Forget everything fed so far (say, when a server restarts a download from byte 0)."""
        self._sha256 = Sha256Lane()
        self._autov1 = AutoV1Lane()
        self._autov3 = AutoV3Lane()
        self._crc32 = Crc32Lane(_crc32)
        self._blake3 = Blake3Lane()
        self._size = 0
        self._state: str | None = None  # None while open, else why it is closed

    @property
    def size(self) -> int:
        """Bytes fed so far."""
        return self._size

    def _groups(self, threads: int) -> list[list[_Lane]]:
        # Costs per byte on x86 with SHA-NI: SHA-256 1, BLAKE3 0.5, zlib CRC-32 0.5 (isal 0.1).
        a: list[_Lane] = [self._sha256, self._autov1, self._crc32]
        b: list[_Lane] = [self._autov3, self._blake3]
        if threads <= 1:
            return [a + b]
        if threads < 4:
            return [a, b]
        return [[self._sha256, self._autov1], [self._autov3], [self._blake3], [self._crc32]]

    def _check_open(self) -> None:
        if self._state is not None:
            raise RuntimeError(f"hasher is {self._state}; make a new one")

    def update(self, data: bytes | bytearray | memoryview) -> None:
        """Feed the next bytes. Large inputs are hashed on several threads."""
        self._check_open()
        view = memoryview(data).cast("B")
        if len(view) >= _PARALLEL_MIN and _cpu_count() > 1:
            self._run(_view_source(view), len(view), None, None)
        else:
            for lane in self._groups(1)[0]:
                lane.feed(view)
        self._size += len(view)

    def update_from_file(
        self,
        file: str | os.PathLike[str] | int,
        *,
        offset: int = 0,
        length: int | None = None,
        use_mmap: bool = True,
        progress: ProgressCallback | None = None,
        cancel: threading.Event | None = None,
    ) -> int:
        """Feed `length` bytes of `file` (a path or an open descriptor) from `offset` on.

        `length=None` reads to the end of the file. Returns the number of bytes fed. Raises
        `FileChangedError` if the file ends early or changes while it is read, and
        `HashingCancelled` once `cancel` is set; the hasher is unusable after either.
        """
        self._check_open()
        with _open_fd(file) as fd:
            before = os.fstat(fd)
            end = before.st_size if length is None else offset + length
            if offset < 0 or end < offset:
                raise ValueError(f"bad range: offset={offset} length={length}")
            if end > before.st_size:
                raise FileChangedError(
                    f"file holds {before.st_size} bytes, fewer than the {end} to hash"
                )
            count = end - offset
            reported = -1
            if count:
                with _mapped(fd, end, use_mmap) as view:
                    source = (
                        _pread_source(fd, offset) if view is None else _view_source(view, offset)
                    )
                    reported = self._run(source, count, progress, cancel)
                    del source  # holds a slice of the mapping, which must go before it closes
            after = os.fstat(fd)
            if (after.st_size, after.st_mtime_ns) != (before.st_size, before.st_mtime_ns):
                self._state = "broken (file changed)"
                raise FileChangedError("the file changed while it was being hashed")
        self._size += count
        if progress is not None and reported != count:
            progress(count)
        return count

    def _run(
        self,
        source: _SourceFactory,
        count: int,
        progress: ProgressCallback | None,
        cancel: threading.Event | None,
    ) -> int:
        """Feed `count` bytes from `source` to every lane; returns the last progress reported."""
        groups = self._groups(_cpu_count() if count >= _PARALLEL_MIN else 1)
        done = [0] * len(groups)
        errors: list[BaseException] = []
        abort = threading.Event()
        reported = -1

        def work(index: int, lanes: list[_Lane]) -> None:
            try:
                read = source()
                pos = 0
                while pos < count:
                    if abort.is_set() or (cancel is not None and cancel.is_set()):
                        return
                    piece = read(pos, min(_SLICE, count - pos))
                    for lane in lanes:
                        lane.feed(piece)
                    pos += len(piece)
                    done[index] = pos
            except BaseException as exc:  # handed to the calling thread below
                errors.append(exc)
                abort.set()

        if len(groups) == 1 and progress is None:
            work(0, groups[0])
        else:
            reported = self._run_threads(work, groups, done, abort, progress, cancel)
        if errors:
            self._state = "broken (read failed)"
            raise errors[0]
        if cancel is not None and cancel.is_set() and min(done) < count:
            self._state = "cancelled"
            raise HashingCancelled("hashing cancelled")
        return reported

    def _run_threads(
        self,
        work: Callable[[int, list[_Lane]], None],
        groups: list[list[_Lane]],
        done: list[int],
        abort: threading.Event,
        progress: ProgressCallback | None,
        cancel: threading.Event | None,
    ) -> int:
        """Run `work` on a thread per lane group, reporting progress; returns the last report."""
        reported = -1
        threads = [
            threading.Thread(target=work, args=(i, g), name=f"hash-{i}", daemon=True)
            for i, g in enumerate(groups)
        ]
        for t in threads:
            t.start()
        try:
            for t in threads:
                while t.is_alive():
                    t.join(_PROGRESS_INTERVAL_S)
                    if cancel is not None and cancel.is_set():
                        abort.set()
                    if progress is not None and (low := min(done)) != reported:
                        reported = low
                        progress(low)
        except BaseException:
            # Workers must be gone before the caller unmaps or closes what they read.
            abort.set()
            for t in threads:
                t.join()
            self._state = "broken (interrupted)"
            raise
        return reported

    def finalize(self) -> FileHashes:
        """Finish and return the hashes; the hasher cannot be fed afterwards."""
        self._check_open()
        self._state = "finalized"
        sha256 = self._sha256.hex()
        return FileHashes(
            sha256=sha256,
            autov1=self._autov1.hex(self._size),
            autov2=autov2(sha256),
            autov3=self._autov3.hex(),
            crc32=self._crc32.hex(),
            blake3=self._blake3.hex(),
            size=self._size,
        )


_Reader = Callable[[int, int], memoryview]
"""read(pos, n): n bytes at position pos of the stretch being hashed."""
_SourceFactory = Callable[[], _Reader]
"""Makes one reader per worker thread (pread readers own a buffer each)."""


def _view_source(view: memoryview, base: int = 0) -> _SourceFactory:
    def make() -> _Reader:
        return lambda pos, n: view[base + pos : base + pos + n]

    return make


def _pread_source(fd: int, base: int) -> _SourceFactory:
    def make() -> _Reader:
        # Each thread reads into its own small buffer: the copy stays in cache for the hashes.
        buf = bytearray(_SLICE)
        whole = memoryview(buf)

        def read(pos: int, n: int) -> memoryview:
            got = os.preadv(fd, [whole[:n]], base + pos)
            if got <= 0:
                raise FileChangedError("the file got shorter while it was being hashed")
            return whole[:got]

        return read

    return make


@contextmanager
def _open_fd(file: str | os.PathLike[str] | int) -> Iterator[int]:
    if isinstance(file, int):
        yield file
        return
    fd = os.open(file, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    try:
        yield fd
    finally:
        os.close(fd)


@contextmanager
def _mapped(fd: int, length: int, wanted: bool = True) -> Iterator[memoryview | None]:
    """A read-only view of the file's first `length` bytes; None if not wanted or not mappable."""
    mapping = None
    if wanted:
        try:
            mapping = mmap.mmap(fd, length, prot=mmap.PROT_READ)
        except (OSError, ValueError):  # some FUSE and network file systems cannot map
            log.debug("cannot map fd %d; reading it instead", fd)
    if mapping is None:
        yield None
        return
    try:
        if hasattr(mapping, "madvise"):
            mapping.madvise(mmap.MADV_SEQUENTIAL)
        view = memoryview(mapping)
        try:
            yield view
        finally:
            view.release()
    finally:
        try:
            mapping.close()
        except BufferError:
            pass  # a slice is still referenced (say, by a traceback); unmapped once it is freed


def _hash_file(
    path: str | os.PathLike[str] | int,
    *,
    progress: ProgressCallback | None,
    cancel: threading.Event | None,
    use_mmap: bool,
) -> tuple[FileHashes, os.stat_result]:
    hasher = Hasher()
    with _open_fd(path) as fd:
        st = os.fstat(fd)
        hasher.update_from_file(fd, use_mmap=use_mmap, progress=progress, cancel=cancel)
    return hasher.finalize(), st


def compute_hashes(
    path: str | os.PathLike[str],
    *,
    progress: ProgressCallback | None = None,
    cancel: threading.Event | None = None,
    use_mmap: bool = True,
) -> FileHashes:
    """All six Civitai hashes of the file at `path`, in one read pass.

    Args:
        path: The file.
        progress: Called now and then, from the calling thread, with the bytes hashed so far.
        cancel: When set, hashing stops within milliseconds and `HashingCancelled` is raised.
        use_mmap: Map the file (fastest). Pass False for files other programs may truncate
            meanwhile (see the module docstring); then each worker reads with pread.

    Raises:
        HashingCancelled: `cancel` was set.
        FileChangedError: the file changed size or mtime meanwhile.
        OSError: the file cannot be opened or read.
    """
    return _hash_file(path, progress=progress, cancel=cancel, use_mmap=use_mmap)[0]


class HashCache:
    """Remembers hashes by (st_dev, st_ino, st_size, st_mtime_ns) in a small SQLite file.

    Safe to share between threads and processes (each call opens its own connection; SQLite
    locks). A damaged cache file is replaced, and any cache failure only costs a re-hash.
    The cache is for lookups and display: integrity checks (``assetmgr verify``) re-hash.

    Files modified within `racy_window_s` of being hashed are not cached: a rewrite in the same
    mtime tick would keep the key and make the entry stale.
    """

    FILENAME = "hashes.sqlite3"

    def __init__(self, directory: str | os.PathLike[str], *, racy_window_s: float = 2.0) -> None:
        self.path = Path(directory) / self.FILENAME
        self.racy_window_s = racy_window_s
        self._lock = threading.Lock()
        self._ready = False

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=5.0, isolation_level=None)
        if not self._ready:
            conn.execute(
                "CREATE TABLE IF NOT EXISTS hashes (dev INTEGER, ino INTEGER, size INTEGER,"
                " mtime_ns INTEGER, sha256 TEXT, autov1 TEXT, autov3 TEXT, crc32 TEXT,"
                " blake3 TEXT, PRIMARY KEY (dev, ino))"
            )
            self._ready = True
        return conn

    def get(self, st: os.stat_result) -> FileHashes | None:
        """The cached hashes for a file with this stat, or None."""
        if not self.path.exists():
            return None
        try:
            with closing(self._connect()) as conn:
                row = conn.execute(
                    "SELECT sha256, autov1, autov3, crc32, blake3, size FROM hashes"
                    " WHERE dev = ? AND ino = ? AND size = ? AND mtime_ns = ?",
                    (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns),
                ).fetchone()
        except sqlite3.Error as exc:
            log.warning("hash cache %s unreadable, ignored: %s", self.path, exc)
            return None
        return None if row is None else FileHashes._from_row(row)

    def put(self, st: os.stat_result, hashes: FileHashes) -> None:
        """Remember `hashes` for a file with this stat (skipped for just-modified files)."""
        if time.time() - st.st_mtime_ns / 1e9 < self.racy_window_s:
            return
        row = (
            st.st_dev,
            st.st_ino,
            st.st_size,
            st.st_mtime_ns,
            hashes.sha256,
            hashes.autov1,
            hashes.autov3,
            hashes.crc32,
            hashes.blake3,
        )
        for attempt in (1, 2):
            try:
                # Private like the store around it: SQLite gives its journals the file's mode.
                self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
                os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW, 0o600))
                with self._lock, closing(self._connect()) as conn:
                    conn.execute("INSERT OR REPLACE INTO hashes VALUES (?,?,?,?,?,?,?,?,?)", row)
                return
            except sqlite3.OperationalError as exc:  # locked, read-only, disk full: skip
                log.warning("hash cache %s not updated: %s", self.path, exc)
                return
            except sqlite3.DatabaseError as exc:  # not a database / malformed: start over
                log.warning("hash cache %s is damaged (%s); recreating it", self.path, exc)
                self._ready = False
                if attempt == 1:
                    self.path.unlink(missing_ok=True)
            except OSError as exc:
                log.warning("hash cache %s not updated: %s", self.path, exc)
                return


def cached_hashes(
    path: str | os.PathLike[str] | int,
    cache: HashCache | None,
    *,
    progress: ProgressCallback | None = None,
    cancel: threading.Event | None = None,
    use_mmap: bool = True,
) -> FileHashes:
    """Like `compute_hashes`, but answered from `cache` when the file has not changed.

    `path` may be an open descriptor: the importer hashes the very file it checked.
    """
    if cache is not None:
        hit = cache.get(os.stat(path))
        if hit is not None:
            if progress is not None:
                progress(hit.size)
            return hit
    hashes, st = _hash_file(path, progress=progress, cancel=cancel, use_mmap=use_mmap)
    if cache is not None:
        cache.put(st, hashes)
    return hashes


__all__ = [
    "FileChangedError",
    "FileHashes",
    "HashCache",
    "Hasher",
    "HashingCancelled",
    "ProgressCallback",
    "cached_hashes",
    "compute_hashes",
]
