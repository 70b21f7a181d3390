"""The image cache: preview thumbnails on disk, content-addressed, size-bounded, LRU.

Layout under the cache folder (``$ASSETMGR_HOME/cache/images``)::

    CACHEDIR.TAG           tells backup tools to skip it
    index.sqlite3          key -> thumbnail, size, last use (this machine's files only)
    ab/ab12…ef.webp        one thumbnail per SHA256 of its own bytes, 0600 in 0700 folders

A key is what the thumbnail shows: an image's catalog URL, or ``sidecar:<version id>`` for a
preview imported from beside a model file. Keys with the same bytes share one file. Only
`assetmgr.store.thumbnails` output is stored: re-encoded, metadata-free, small.

The index is its own SQLite file rather than a catalog table because it describes files on
this machine's disk while the catalog may be a PostgreSQL server several machines share; a
preview view updates its last use, and those writes stay off the catalog (and its network);
and removing the folder resets both together. Its transactions (``BEGIN IMMEDIATE``) make the
TUI's worker threads and a CLI run in parallel take turns: every file is created and deleted
inside one, so the index and the files agree.

The cap counts every thumbnail once. Putting one in first evicts the least recently used
(Civitai's images before the user's own sidecar previews, which cannot be fetched again), and
never a key the caller protects (the images a bulk fetch is filling in); when nothing more may
go, `ImageCacheFullError` is raised and nothing changes. Files are written through `SafeDir`:
a new file under a fresh exclusive name, then linked into place, never through a link and
never over a file the cache did not write.
"""

from __future__ import annotations

import hashlib
import os
import re
import sqlite3
import stat
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath
from typing import Any

from assetmgr.errors import StoreError
from assetmgr.store.safedir import SafeDir
from assetmgr.store.thumbnails import THUMBNAIL_SUFFIX, Thumbnail

INDEX_NAME = "index.sqlite3"
ORIGINS = ("civitai", "sidecar")
_CACHEDIR_TAG = (
    "Signature: 8a477f597d28d172789f06886806bc55\n"
    "# This file marks the assetmgr image cache; backup tools may skip it.\n"
)
_FILE_RE = re.compile(r"^[0-9a-f]{64}\.(?:webp|png)$")
_SHARD_RE = re.compile(r"^[0-9a-f]{2}$")
_TEMP_RE = re.compile(r"^\..+\.[0-9a-f]{16}\.tmp$")
_SCHEMA = """
CREATE TABLE IF NOT EXISTS entry (
    key TEXT PRIMARY KEY,
    sha256 TEXT NOT NULL,
    size INTEGER NOT NULL,
    width INTEGER NOT NULL,
    height INTEGER NOT NULL,
    origin TEXT NOT NULL,
    version_id INTEGER,
    nsfw_level INTEGER,
    created_at REAL NOT NULL,
    last_used REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS entry_lru ON entry (origin = 'sidecar', last_used);
CREATE INDEX IF NOT EXISTS entry_sha ON entry (sha256);
CREATE INDEX IF NOT EXISTS entry_version ON entry (version_id);
"""
_SELECT = (
    "SELECT key, sha256, size, width, height, origin, version_id, nsfw_level, last_used FROM entry"
)


def sidecar_key(version_id: int) -> str:
    """The key of the preview imported from beside a version's model file."""
    return f"sidecar:{version_id}"


class ImageCacheFullError(StoreError):
    """A thumbnail the cap cannot hold: larger than the cap itself, or every other entry is
    protected (a bulk fetch that filled it). Nothing was changed."""

    def __init__(self, *, key: str, size: int, max_bytes: int, used: int) -> None:
        self.key = key
        self.size = size
        self.max_bytes = max_bytes
        self.used = used
        super().__init__(
            f"the image cache is full: {used} of {max_bytes} bytes held by previews still in "
            f"use, no room for {size} more"
        )


class ImageCacheConflictError(StoreError):
    """Something the cache did not write stands where it would write (a link, other bytes)."""

    def __init__(self, path: Path, what: str) -> None:
        self.path = path
        self.what = what
        super().__init__(f"{path} {what}; the image cache never writes through or over it")


@dataclass(frozen=True)
class CachedImage:
    key: str
    path: Path
    sha256: str
    size: int
    width: int
    height: int
    origin: str
    version_id: int | None
    nsfw_level: int | None
    last_used: float


@dataclass(frozen=True)
class CacheUsage:
    entries: int
    files: int
    bytes: int
    max_bytes: int


@dataclass
class PruneReport:
    removed: list[CachedImage] = field(default_factory=list)
    """Entries evicted to get under the cap (least recently used first)."""
    stale: list[str] = field(default_factory=list)
    """Keys whose file had gone; their entries were dropped."""
    orphans: list[str] = field(default_factory=list)
    """Thumbnail and temporary files no entry named (a crash mid-write), removed."""
    freed_bytes: int = 0


class ImageCache:
    """See the module docstring. Safe to share between threads and processes."""

    def __init__(self, root: Path, *, max_bytes: int) -> None:
        self.root = root
        self.max_bytes = max_bytes
        self._index_path = root / INDEX_NAME
        self._ready = False

    # -- the index ---------------------------------------------------------------------------

    def _ensure(self) -> None:
        if self._ready:
            return
        with SafeDir.open_root(self.root, create=True, mode=0o700) as root:
            if root.lstat("CACHEDIR.TAG") is None:
                temp = root.write_temp("CACHEDIR.TAG", _CACHEDIR_TAG.encode(), mode=0o600)
                try:
                    root.place_new(temp, "CACHEDIR.TAG")
                except FileExistsError:
                    pass
                finally:
                    root.discard(temp)
            st = root.lstat(INDEX_NAME)
            if st is not None and not stat.S_ISREG(st.st_mode):
                raise ImageCacheConflictError(self._index_path, "is not a regular file")
        self._ready = True

    @contextmanager
    def _index(self, *, write: bool) -> Iterator[sqlite3.Connection]:
        """One transaction on the index; a writing one holds the write lock throughout."""
        self._ensure()
        db = sqlite3.connect(self._index_path, timeout=30, isolation_level=None)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(_SCHEMA)
            db.execute("BEGIN IMMEDIATE" if write else "BEGIN")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
        finally:
            db.close()

    def _row(self, row: tuple[Any, ...]) -> CachedImage:
        key, sha, size, width, height, origin, version_id, nsfw_level, last_used = row
        return CachedImage(
            key=str(key),
            path=self.file_path(str(sha)),
            sha256=str(sha),
            size=int(size),
            width=int(width),
            height=int(height),
            origin=str(origin),
            version_id=version_id if isinstance(version_id, int) else None,
            nsfw_level=nsfw_level if isinstance(nsfw_level, int) else None,
            last_used=float(last_used),
        )

    @staticmethod
    def _total(db: sqlite3.Connection) -> int:
        row = db.execute(
            "SELECT COALESCE(SUM(size), 0) FROM (SELECT MAX(size) AS size FROM entry "
            "GROUP BY sha256)"
        ).fetchone()
        return int(row[0])

    @staticmethod
    def _refs(db: sqlite3.Connection, sha256: str) -> int:
        return int(
            db.execute("SELECT COUNT(*) FROM entry WHERE sha256 = ?", (sha256,)).fetchone()[0]
        )

    def file_path(self, sha256: str) -> Path:
        return self.root / sha256[:2] / f"{sha256}{THUMBNAIL_SUFFIX}"

    # -- files -------------------------------------------------------------------------------

    def _file_ok(self, sha256: str) -> bool:
        """Whether the thumbnail file is there as a plain file of the cache's."""
        try:
            st = os.lstat(self.file_path(sha256))
        except OSError:
            return False
        return stat.S_ISREG(st.st_mode)

    def _place(self, sha256: str, data: bytes) -> None:
        """Make the file for `sha256` (a file with these bytes already there is kept)."""
        name = self.file_path(sha256).name
        with SafeDir.open_root(self.root, create=True, mode=0o700) as root:
            shard = root.subdir(PurePosixPath(sha256[:2]), create=True, mode=0o700)
            if shard is None:  # created above, so never reached
                raise FileNotFoundError(f"cache folder {sha256[:2]} was not created")
            with shard:
                self._place_in(shard, name, sha256, data)

    @staticmethod
    def _place_in(shard: SafeDir, name: str, sha256: str, data: bytes) -> None:
        st = shard.lstat(name)
        if st is None:
            temp = shard.write_temp(name, data, mode=0o600)
            try:
                shard.place_new(temp, name)
                return
            except FileExistsError:
                st = shard.lstat(name)
            finally:
                shard.discard(temp)
        if st is None or stat.S_ISLNK(st.st_mode):
            raise ImageCacheConflictError(shard.path / name, "is a symbolic link")
        existing = shard.read_regular(name, limit=len(data))
        if existing is None or hashlib.sha256(existing).hexdigest() != sha256:
            raise ImageCacheConflictError(
                shard.path / name, "exists and holds bytes the cache did not write"
            )

    def _unlink(self, sha256: str) -> int:
        """Remove the cache's file for `sha256`; returns the bytes freed."""
        path = self.file_path(sha256)
        with SafeDir.open_root(self.root, create=False) as root:
            shard = root.subdir(PurePosixPath(sha256[:2]), create=False)
            if shard is None:
                return 0
            with shard:
                st = shard.lstat(path.name)
                if st is None or not stat.S_ISREG(st.st_mode):
                    return 0  # not the cache's to remove
                shard.unlink(path.name)
                return st.st_size

    # -- reading -----------------------------------------------------------------------------

    def get(self, key: str) -> CachedImage | None:
        """The thumbnail for `key`, marked as just used; None when it is not cached."""
        with self._index(write=True) as db:
            row = db.execute(_SELECT + " WHERE key = ?", (key,)).fetchone()
            if row is None:
                return None
            entry = self._row(row)
            if not self._file_ok(entry.sha256):
                db.execute("DELETE FROM entry WHERE key = ?", (key,))
                return None
            now = time.time()
            db.execute("UPDATE entry SET last_used = ? WHERE key = ?", (now, key))
        return replace(entry, last_used=now)

    def peek(self, keys: Iterable[str]) -> dict[str, CachedImage]:
        """The cached thumbnails among `keys`, without marking them used."""
        wanted = list(dict.fromkeys(keys))
        found: dict[str, CachedImage] = {}
        if not wanted or not self._index_path.exists():
            return found
        with self._index(write=False) as db:
            for start in range(0, len(wanted), 500):
                batch = wanted[start : start + 500]
                marks = ",".join("?" * len(batch))
                for row in db.execute(
                    f"{_SELECT} WHERE key IN ({marks})",  # noqa: S608 (placeholders only)
                    batch,
                ):
                    entry = self._row(row)
                    if self._file_ok(entry.sha256):
                        found[entry.key] = entry
        return found

    def read(self, entry: CachedImage) -> bytes | None:
        """The thumbnail's bytes (never through a link); None when the file is gone."""
        with SafeDir.open_root(self.root, create=False) as root:
            shard = root.subdir(PurePosixPath(entry.sha256[:2]), create=False)
            if shard is None:
                return None
            with shard:
                return shard.read_regular(entry.path.name, limit=max(entry.size, 1))

    def usage(self) -> CacheUsage:
        if not self._index_path.exists():
            return CacheUsage(0, 0, 0, self.max_bytes)
        with self._index(write=False) as db:
            entries = int(db.execute("SELECT COUNT(*) FROM entry").fetchone()[0])
            files = int(db.execute("SELECT COUNT(DISTINCT sha256) FROM entry").fetchone()[0])
            return CacheUsage(entries, files, self._total(db), self.max_bytes)

    # -- writing -----------------------------------------------------------------------------

    def put(
        self,
        key: str,
        thumbnail: Thumbnail,
        *,
        origin: str,
        version_id: int | None = None,
        nsfw_level: int | None = None,
        protect: Iterable[str] = (),
    ) -> CachedImage:
        """Store `thumbnail` under `key`, evicting to stay within the cap (module docstring).

        Raises `ImageCacheFullError` (nothing changed) or `ImageCacheConflictError`.
        """
        if origin not in ORIGINS:
            raise ValueError(f"unknown origin {origin!r}")
        data = thumbnail.data
        sha = hashlib.sha256(data).hexdigest()
        kept = {key, *protect}
        now = time.time()
        with self._index(write=True) as db:
            old = db.execute("SELECT sha256 FROM entry WHERE key = ?", (key,)).fetchone()
            used = self._total(db)
            needed = 0 if self._refs(db, sha) else len(data)
            victims = self._victims(db, used + needed - self.max_bytes, kept, sha)
            if victims is None:
                raise ImageCacheFullError(
                    key=key, size=len(data), max_bytes=self.max_bytes, used=used
                )
            self._place(sha, data)
            for victim in victims:
                db.execute("DELETE FROM entry WHERE key = ?", (victim.key,))
                if not self._refs(db, victim.sha256):
                    self._unlink(victim.sha256)
            db.execute(
                "INSERT OR REPLACE INTO entry (key, sha256, size, width, height, origin, "
                "version_id, nsfw_level, created_at, last_used) VALUES (?,?,?,?,?,?,?,?,?,?)",
                (
                    key,
                    sha,
                    len(data),
                    thumbnail.width,
                    thumbnail.height,
                    origin,
                    version_id,
                    nsfw_level,
                    now,
                    now,
                ),
            )
            if old is not None and old[0] != sha and not self._refs(db, str(old[0])):
                self._unlink(str(old[0]))
        return CachedImage(
            key,
            self.file_path(sha),
            sha,
            len(data),
            thumbnail.width,
            thumbnail.height,
            origin,
            version_id,
            nsfw_level,
            now,
        )

    def _victims(
        self, db: sqlite3.Connection, excess: int, kept: set[str], new_sha: str
    ) -> list[CachedImage] | None:
        """Entries to evict, least recently used first, so `excess` bytes are freed; None when
        the unprotected entries cannot free that much."""
        if excess <= 0:
            return []
        victims: list[CachedImage] = []
        dropped: dict[str, int] = {}
        freed = 0
        rows = db.execute(_SELECT + " ORDER BY origin = 'sidecar', last_used, key").fetchall()
        refs: dict[str, int] = {}
        for row in rows:
            refs[str(row[1])] = refs.get(str(row[1]), 0) + 1
        for row in rows:
            entry = self._row(row)
            if entry.key in kept or entry.sha256 == new_sha:
                continue
            victims.append(entry)
            dropped[entry.sha256] = dropped.get(entry.sha256, 0) + 1
            if dropped[entry.sha256] == refs[entry.sha256]:
                freed += entry.size
            if freed >= excess:
                return victims
        return None

    def remove(self, key: str) -> bool:
        """Forget `key` (its file goes when no other key shares it); False if not cached."""
        with self._index(write=True) as db:
            row = db.execute("SELECT sha256 FROM entry WHERE key = ?", (key,)).fetchone()
            if row is None:
                return False
            db.execute("DELETE FROM entry WHERE key = ?", (key,))
            if not self._refs(db, str(row[0])):
                self._unlink(str(row[0]))
        return True

    def prune(self, max_bytes: int | None = None) -> PruneReport:
        """Drop entries whose file went, evict to `max_bytes` (default: the cap), and remove
        files no entry names (a crash between writing a file and recording it)."""
        cap = self.max_bytes if max_bytes is None else max_bytes
        report = PruneReport()
        with self._index(write=True) as db:
            for row in db.execute(_SELECT).fetchall():
                entry = self._row(row)
                if not self._file_ok(entry.sha256):
                    db.execute("DELETE FROM entry WHERE key = ?", (entry.key,))
                    report.stale.append(entry.key)
            victims = self._victims(db, self._total(db) - cap, set(), "") or []
            for victim in victims:
                db.execute("DELETE FROM entry WHERE key = ?", (victim.key,))
                if not self._refs(db, victim.sha256):
                    report.freed_bytes += self._unlink(victim.sha256)
                report.removed.append(victim)
            known = {str(r[0]) for r in db.execute("SELECT DISTINCT sha256 FROM entry")}
            report.freed_bytes += self._remove_orphans(known, report)
        return report

    def _remove_orphans(self, known: set[str], report: PruneReport) -> int:
        freed = 0
        with SafeDir.open_root(self.root, create=True, mode=0o700) as root:
            for shard_name in sorted(os.listdir(root.fd)):
                if not _SHARD_RE.match(shard_name):
                    continue
                st = root.lstat(shard_name)
                if st is None or not stat.S_ISDIR(st.st_mode):
                    continue  # a link or a file where a shard would be: not the cache's
                shard = root.subdir(PurePosixPath(shard_name), create=False)
                if shard is None:
                    continue
                with shard:
                    for name in sorted(os.listdir(shard.fd)):
                        ours = _TEMP_RE.match(name) or (
                            _FILE_RE.match(name)
                            and name.startswith(shard_name)
                            and name.split(".", 1)[0] not in known
                        )
                        entry = shard.lstat(name)
                        if not ours or entry is None or not stat.S_ISREG(entry.st_mode):
                            continue
                        shard.unlink(name)
                        freed += entry.st_size
                        report.orphans.append(str(shard.path / name))
        return freed


__all__ = [
    "INDEX_NAME",
    "CacheUsage",
    "CachedImage",
    "ImageCache",
    "ImageCacheConflictError",
    "ImageCacheFullError",
    "PruneReport",
    "sidecar_key",
]
