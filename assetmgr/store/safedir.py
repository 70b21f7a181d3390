"""A folder the user owns, written without following links and without replacing their files.

`SafeDir` holds a directory open by fd and reaches everything below it one component at a time
with ``O_NOFOLLOW`` (``openat``-style, through ``dir_fd``), so a link planted inside the folder
(``models/Lora -> /elsewhere``) is refused instead of written through. New entries are first
made under a random temporary name created with ``O_CREAT|O_EXCL|O_NOFOLLOW`` (a planted
``.NAME.tmp -> victim`` link is never opened), then put in place: `place_new` never replaces
anything (link, then unlink of the temporary name), `replace` renames over an entry the caller
has checked is its own, and `move_aside` renames someone else's entry to a fresh name.
"""

from __future__ import annotations

import errno
import os
import secrets
import stat
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath

from assetmgr.errors import StoreError

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_NEW_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


class LinkInTargetError(StoreError):
    """A component inside the target folder is a symbolic link (or not a folder at all)."""

    title = "Link inside the target folder"
    hint = "Replace it with a real folder, or choose another target folder."

    def __init__(self, path: Path, link_target: str | None) -> None:
        self.path = path
        self.link_target = link_target
        what = (
            f"is a symbolic link to {link_target}" if link_target is not None else "is not a folder"
        )
        super().__init__(f"{path} {what}; refusing to write through it")


class SafeDir:
    """One open directory; see the module docstring."""

    def __init__(self, fd: int, path: Path) -> None:
        self.fd = fd
        self.path = path
        """Where the directory was when it was opened (for messages and relative links)."""

    @classmethod
    def open_root(cls, path: Path, *, create: bool, mode: int = 0o755) -> SafeDir:
        """The folder the user named: its own path may go through links, nothing below it."""
        try:
            if create:
                path.mkdir(parents=True, exist_ok=True, mode=mode)
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except (FileExistsError, NotADirectoryError):
            raise LinkInTargetError(path, None) from None
        return cls(fd, Path(os.path.realpath(path)))

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> SafeDir:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def lstat(self, name: str) -> os.stat_result | None:
        try:
            return os.stat(name, dir_fd=self.fd, follow_symlinks=False)
        except FileNotFoundError:
            return None

    def subdir(self, relative: PurePosixPath, *, create: bool, mode: int = 0o755) -> SafeDir | None:
        """The directory at `relative` (None when missing and not `create`); never via a link."""
        current = SafeDir(os.dup(self.fd), self.path)
        try:
            for part in relative.parts:
                if part in ("", ".", ".."):
                    raise ValueError(f"not a plain relative path: {relative}")
                if create:
                    try:
                        os.mkdir(part, mode, dir_fd=current.fd)
                    except FileExistsError:
                        pass
                try:
                    fd = os.open(part, _DIR_FLAGS, dir_fd=current.fd)
                except FileNotFoundError:
                    current.close()
                    return None
                except OSError as exc:
                    if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
                        raise
                    raise self._not_a_dir(current, part) from None
                nxt = SafeDir(fd, current.path / part)
                current.close()
                current = nxt
            return current
        except BaseException:
            current.close()
            raise

    @staticmethod
    def _not_a_dir(parent: SafeDir, name: str) -> LinkInTargetError:
        try:
            target: str | None = os.readlink(name, dir_fd=parent.fd)
        except OSError:
            target = None
        return LinkInTargetError(parent.path / name, target)

    def read_regular(self, name: str, *, limit: int) -> bytes | None:
        """The bytes of a regular file of at most `limit` bytes; None for anything else."""
        try:
            fd = os.open(
                name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=self.fd
            )
        except OSError:
            return None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or st.st_size > limit:
                return None
            chunks = []
            remaining = limit + 1
            while remaining > 0 and (chunk := os.read(fd, min(remaining, 1 << 20))):
                chunks.append(chunk)
                remaining -= len(chunk)
            data = b"".join(chunks)
            return data if len(data) <= limit else None
        finally:
            os.close(fd)

    def readlink(self, name: str) -> str | None:
        try:
            return os.readlink(name, dir_fd=self.fd)
        except OSError:
            return None

    # -- making entries ------------------------------------------------------------------

    @staticmethod
    def temp_name(name: str) -> str:
        return f".{name}.{secrets.token_hex(8)}.tmp"

    def write_temp(self, name: str, data: bytes, *, mode: int = 0o644) -> str:
        """A new temporary file beside `name` holding `data`; returns its name."""
        temp = self.temp_name(name)
        fd = os.open(temp, _NEW_FILE_FLAGS, mode, dir_fd=self.fd)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            self.discard(temp)
            raise
        os.close(fd)
        return temp

    def symlink_temp(self, name: str, target: str) -> str:
        temp = self.temp_name(name)
        os.symlink(target, temp, dir_fd=self.fd)
        return temp

    def hardlink_temp(self, name: str, source: Path) -> str:
        temp = self.temp_name(name)
        os.link(source, temp, dst_dir_fd=self.fd, follow_symlinks=False)
        return temp

    def discard(self, temp: str) -> None:
        try:
            os.unlink(temp, dir_fd=self.fd)
        except FileNotFoundError:
            pass

    def place_new(self, temp: str, name: str) -> None:
        """Give `temp` the name `name`, which must not exist; raises FileExistsError if it does."""
        try:
            os.link(temp, name, src_dir_fd=self.fd, dst_dir_fd=self.fd, follow_symlinks=False)
        except FileExistsError:
            raise
        except OSError as exc:
            # Filesystems without hard links: check, then rename (a narrow race remains).
            if exc.errno not in (errno.EPERM, errno.EMLINK, errno.ENOTSUP, errno.EOPNOTSUPP):
                raise
            if self.lstat(name) is not None:
                raise FileExistsError(errno.EEXIST, "exists", str(self.path / name)) from None
            os.rename(temp, name, src_dir_fd=self.fd, dst_dir_fd=self.fd)
            return
        self.discard(temp)

    def replace(self, temp: str, name: str) -> None:
        """Rename `temp` over `name`: the entry is replaced, never written through."""
        os.replace(temp, name, src_dir_fd=self.fd, dst_dir_fd=self.fd)

    def move_aside(self, name: str) -> str:
        """Rename someone else's `name` to a fresh ``NAME.user-<time>`` and return that name."""
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        aside = f"{name}.user-{stamp}"
        while self.lstat(aside) is not None:
            aside = f"{name}.user-{stamp}-{secrets.token_hex(3)}"
        os.rename(name, aside, src_dir_fd=self.fd, dst_dir_fd=self.fd)
        return aside

    def unlink(self, name: str) -> None:
        os.unlink(name, dir_fd=self.fd)


__all__ = ["LinkInTargetError", "SafeDir"]
