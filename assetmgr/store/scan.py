"""What `import` takes from a folder: files whose bytes are a model, whatever their names say.

Linked model folders on another drive are a common layout, so the walk follows symlinks, and
records each one it follows with where it points. A folder reached twice (a link loop, or two
links to one folder) is walked once. Special files (FIFOs, devices, sockets) are skipped from
their `stat` and never opened; a regular file is opened non-blocking and checked again on the
descriptor, so one swapped for a FIFO meanwhile cannot hang the import. Checks and hashes read
that one descriptor.

The bytes decide: a ``.safetensors``/``.sft`` file must pass `validate_safetensors`; a pickle
name (``.ckpt/.pt/.pth/.bin/...``) is taken when its bytes are a valid safetensors file, or a
real pickle stream or torch zip archive (`pickle_check`), the latter only when pickles are
allowed. Anything else is skipped with a reason.
"""

from __future__ import annotations

import errno
import os
import stat
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Literal

from assetmgr.store.blobs import FileIdentity
from assetmgr.store.hashing import FileHashes
from assetmgr.store.pickle_check import PickleKind, sniff_pickle
from assetmgr.store.safetensors_check import (
    PICKLE_SUFFIXES,
    InvalidSafetensorsError,
    SafetensorsInfo,
    validate_safetensors,
)

SAFETENSORS_SUFFIXES = frozenset({".safetensors", ".sft"})
MODEL_SUFFIXES = SAFETENSORS_SUFFIXES | PICKLE_SUFFIXES
"""Names the walk looks at; what a file is, its bytes decide."""

_OPEN_FLAGS = os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
_PICKLE_WORDS = {"pickle": "a raw pickle stream", "torch-zip": "a torch zip archive"}


@dataclass(frozen=True)
class FollowedLink:
    """A symlink the walk followed."""

    path: str
    """The link, as found in the folder."""
    target: str
    """Where it points, fully resolved."""
    is_dir: bool
    outside: bool
    """The target lies outside the imported folder."""


@dataclass(frozen=True)
class Skipped:
    """A file (or linked folder) not imported, and why."""

    path: str
    code: str
    """A stable key: ``special-file``, ``broken-link``, ``link-loop``, ``unreadable``,
    ``unreadable-folder``, ``changed``, ``invalid-safetensors``, ``not-a-model`` or
    ``pickle-refused``."""
    reason: str
    target: str | None = None
    """For a file reached through a link: where the link points."""


@dataclass(frozen=True)
class Found:
    """A model-named file the walk found, with its `stat` (links followed)."""

    path: Path
    st: os.stat_result
    link: FollowedLink | None


@dataclass(frozen=True)
class CheckedFile:
    """A file whose bytes are a model: the checks and the hashes read the same descriptor."""

    path: Path
    real_path: Path
    kind: Literal["safetensors", "pickle"]
    pickle_kind: PickleKind | None
    info: SafetensorsInfo | None
    identity: FileIdentity
    hashes: FileHashes
    link: FollowedLink | None


def _inside(root: str, target: str) -> bool:
    return os.path.commonpath([root, target]) == root


def _describe_mode(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device"
    if stat.S_ISDIR(mode):
        return "a folder"
    return "not a regular file"


class FolderWalk:
    """Walks `folder` once, following links; `links` and `skipped` fill as it goes."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.root = os.path.realpath(folder)
        self.links: list[FollowedLink] = []
        self.skipped: list[Skipped] = []

    def _link(self, path: str, is_dir: bool) -> FollowedLink:
        target = os.path.realpath(path)
        link = FollowedLink(path, target, is_dir, not _inside(self.root, target))
        self.links.append(link)
        return link

    def files(self) -> Iterator[Found]:
        """Model-named files in name order, depth first; hidden folders are not entered."""
        top = os.stat(self.folder)
        seen = {(top.st_dev, top.st_ino)}
        pending = [str(self.folder)]
        while pending:
            directory = pending.pop()
            try:
                with os.scandir(directory) as listing:
                    entries = sorted(listing, key=lambda e: e.name)
            except OSError as exc:
                self.skipped.append(
                    Skipped(directory, "unreadable-folder", f"cannot be listed ({exc.strerror})")
                )
                continue
            subfolders: list[str] = []
            for entry in entries:
                try:
                    found = self._visit(entry, seen)
                except OSError as exc:  # one entry the OS will not describe; the walk goes on
                    self.skipped.append(
                        Skipped(entry.path, "unreadable", f"cannot be read ({exc.strerror})")
                    )
                    continue
                if isinstance(found, str):
                    subfolders.append(found)
                elif found is not None:
                    yield found
            pending.extend(reversed(subfolders))

    def _visit(self, entry: os.DirEntry[str], seen: set[tuple[int, int]]) -> Found | str | None:
        """A file to check, a folder to enter (its path), or None."""
        is_link = entry.is_symlink()
        model_named = Path(entry.name).suffix.lower() in MODEL_SUFFIXES
        try:
            st = os.stat(entry.path)  # follows links
        except OSError as exc:
            if is_link and (model_named or exc.errno == errno.ELOOP):
                target = _readlink(entry.path)
                self.skipped.append(
                    Skipped(
                        entry.path,
                        "broken-link",
                        f"a link to nothing usable ({exc.strerror})",
                        target,
                    )
                )
            elif model_named:
                self.skipped.append(
                    Skipped(entry.path, "unreadable", f"cannot be read ({exc.strerror})")
                )
            return None
        if stat.S_ISDIR(st.st_mode):
            if entry.name.startswith("."):
                return None
            key = (st.st_dev, st.st_ino)
            if key in seen:
                self.skipped.append(
                    Skipped(
                        entry.path,
                        "link-loop",
                        "a link to a folder already walked (a loop or a second link); not entered",
                        os.path.realpath(entry.path),
                    )
                )
                return None
            seen.add(key)
            if is_link:
                self._link(entry.path, True)
            return entry.path
        if not model_named:
            return None
        link = self._link(entry.path, False) if is_link else None
        if not stat.S_ISREG(st.st_mode):
            self.skipped.append(
                Skipped(
                    entry.path,
                    "special-file",
                    f"{_describe_mode(st.st_mode)}, not a regular file; not opened",
                    link.target if link else None,
                )
            )
            return None
        return Found(Path(entry.path), st, link)


def _readlink(path: str) -> str | None:
    try:
        return os.readlink(path)
    except OSError:
        return None


def check_file(
    found: Found, *, allow_pickle: bool, hash_fd: Callable[[int], FileHashes]
) -> CheckedFile | Skipped:
    """Open `found` without blocking, decide what its bytes are, and hash them."""
    path = found.path
    target = found.link.target if found.link else None

    def skip(code: str, reason: str) -> Skipped:
        return Skipped(str(path), code, reason, target)

    try:
        fd = os.open(path, _OPEN_FLAGS)
    except OSError as exc:
        return skip("unreadable", f"cannot be opened ({exc.strerror})")
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return skip("special-file", f"{_describe_mode(st.st_mode)}, not a regular file")
        if (st.st_dev, st.st_ino) != (found.st.st_dev, found.st.st_ino):
            return skip("changed", "the file was replaced while the folder was read")
        with open(fd, "rb", closefd=False) as f:
            verdict = _content(f, path.suffix.lower(), allow_pickle)
        if not isinstance(verdict, _Model):
            return skip(*verdict)
        hashes = hash_fd(fd)
        after = os.fstat(fd)
        if FileIdentity.of(after) != FileIdentity.of(st):
            return skip("changed", "the file changed while it was checked")
        return CheckedFile(
            path=path,
            real_path=Path(os.path.realpath(path)),
            kind=verdict.kind,
            pickle_kind=verdict.pickle_kind,
            info=verdict.info,
            identity=FileIdentity.of(st),
            hashes=hashes,
            link=found.link,
        )
    except OSError as exc:
        return skip("unreadable", f"cannot be read ({exc.strerror})")
    finally:
        os.close(fd)


@dataclass(frozen=True)
class _Model:
    kind: Literal["safetensors", "pickle"]
    pickle_kind: PickleKind | None
    info: SafetensorsInfo | None


def _starts_like_safetensors(f: BinaryIO) -> bool:
    f.seek(0)
    head = f.read(9)
    return len(head) == 9 and head[8:9] == b"{" and struct.unpack("<Q", head[:8])[0] >= 2


def _content(f: BinaryIO, suffix: str, allow_pickle: bool) -> _Model | tuple[str, str]:
    """What model the bytes are, or ``(code, reason)`` for a skip."""
    if suffix in SAFETENSORS_SUFFIXES or _starts_like_safetensors(f):
        try:
            return _Model("safetensors", None, validate_safetensors(f))
        except InvalidSafetensorsError as exc:
            return "invalid-safetensors", exc.message
    pickle_kind = sniff_pickle(f)
    if pickle_kind is None:
        return (
            "not-a-model",
            "its bytes are neither safetensors, a pickle stream nor a torch zip archive",
        )
    if not allow_pickle:
        return "pickle-refused", f"pickle checkpoint ({_PICKLE_WORDS[pickle_kind]}) refused"
    return _Model("pickle", pickle_kind, None)
