"""The stored copy of an added plugin: its folder, its check, and what a job gets of it.

A stored copy lives in ``<plugins dir>/<tree sha256>/`` (named by its content, so two plugins
never share a folder) and is exactly its recorded files. `verify_installed` re-hashes it before
every run and refuses on any changed or missing file and on anything else in the folder
(``__pycache__``, dotfiles, directories, links), naming it. A job never mounts the folder
itself: it gets the recorded files only, read again without following links and hashed on the
way (`read_recorded_files`, for a per-run copy or a plugin volume), so a file planted after the
check (say a ``.pyc`` carrying the source's mtime) never reaches it.
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from sandbox.errors import PluginManifestError, PluginTamperedError
from sandbox.plugins import (
    MAX_DEPTH,
    MAX_FILE_BYTES,
    MAX_FILES,
    InstalledPlugin,
    _Budget,
    _display,
    _hash_file,
    make_read_only,
    remove_tree,
    tree_sha256,
)
from sandbox.protocol.hashing import FileHash

_TREE_DIR_RE: Final = re.compile(r"^[0-9a-f]{64}$")


def store_dir(plugins_root: Path, tree: str) -> Path:
    """The stored copy's folder: named by the plugin's tree sha256, which no other plugin has."""
    if not _TREE_DIR_RE.match(tree):
        raise PluginManifestError(f"{tree!r} is not a tree sha256")
    return plugins_root / tree


def legacy_store_dir(plugins_root: Path, name: str, version: str) -> Path:
    """Where stored copies lived before folders were named by tree hash (``foo`` ``bar-1.0``
    and ``foo-bar`` ``1.0`` shared ``foo-bar-1.0``); only read to move them."""
    return plugins_root / f"{name}-{version}"


def move_legacy_folder(
    plugins_root: Path, name: str, version: str, tree: str, manifest: tuple[str, str]
) -> bool:
    """Move ``<name>-<version>`` to the tree-hash folder if it holds this plugin; say if moved.

    Two plugins could share the old folder and only the one written last is in it, so it
    moves only when its manifest file (``manifest`` = file name, sha256) is this plugin's, and
    only when the new folder does not exist yet. Links are never followed.
    """
    old = legacy_store_dir(plugins_root, name, version)
    new = store_dir(plugins_root, tree)
    manifest_file, manifest_sha256 = manifest
    if os.path.lexists(new) or "/" in manifest_file:
        return False
    try:
        if not stat.S_ISDIR(os.lstat(old).st_mode):
            return False
        flags = os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
        with os.fdopen(os.open(old / manifest_file, flags), "rb") as f:
            data = f.read(1 << 20)
        if hashlib.sha256(data).hexdigest() != manifest_sha256:
            return False
        os.rename(old, new)
    except OSError:
        return False  # gone, unreadable, or another process moved it first
    return True


@dataclass
class _StoredTree:
    """Everything in a stored copy, found without following or skipping anything."""

    files: dict[str, os.stat_result] = field(default_factory=dict)
    directories: set[str] = field(default_factory=set)
    others: dict[str, str] = field(default_factory=dict)
    """Path -> what it is (a symbolic link, a special file)."""
    overflow: bool = False


def _scan_stored(root: Path) -> _StoredTree:
    """Every entry under `root` (which must be a real directory), up to a bound."""
    found = _StoredTree()
    limit = 2 * MAX_FILES
    if not stat.S_ISDIR(os.lstat(root).st_mode):
        raise NotADirectoryError(str(root))

    def visit(directory: str, parts: tuple[str, ...]) -> None:
        entries = []
        with os.scandir(directory) as it:
            for entry in it:  # bounded even for a folder someone filled with millions
                entries.append(entry)
                if len(entries) > limit:
                    found.overflow = True
                    break
        for entry in sorted(entries, key=lambda e: e.name):
            if len(found.files) + len(found.directories) + len(found.others) >= limit:
                found.overflow = True
                return
            rel = _display((*parts, entry.name))
            st = entry.stat(follow_symlinks=False)
            if stat.S_ISLNK(st.st_mode):
                found.others[rel] = "a symbolic link"
            elif stat.S_ISDIR(st.st_mode):
                found.directories.add(rel)
                if len(parts) < MAX_DEPTH:
                    visit(entry.path, (*parts, entry.name))
            elif stat.S_ISREG(st.st_mode):
                found.files[rel] = st
            else:
                found.others[rel] = "not a regular file (device, FIFO, socket)"

    visit(str(root), ())
    return found


def _hash_stored(root: Path, rel: str, st: os.stat_result) -> str:
    """The sha256 of a stored file found by `_scan_stored`; raises `PluginManifestError`."""
    if st.st_nlink > 1:
        raise PluginManifestError(f"{rel}: hard-linked (its bytes can change from outside)")
    if st.st_size > MAX_FILE_BYTES:
        raise PluginManifestError(f"{rel}: larger than {MAX_FILE_BYTES} bytes")
    return _hash_file(root / rel, st, rel, _Budget()).sha256


def _check_recorded(
    plugin: InstalledPlugin, tree: _StoredTree, problems: list[str]
) -> dict[str, str]:
    """Each recorded file as stored: its sha256 by path; what is wrong goes to `problems`."""
    found: dict[str, str] = {}
    for rel, expected in sorted(plugin.files.items()):
        st = tree.files.get(rel)
        if st is None:
            what = tree.others.get(rel) or ("a directory" if rel in tree.directories else "")
            problems.append(
                f"{rel}: {what}, not the recorded file (sha256 {expected})"
                if what
                else f"{rel}: missing (expected sha256 {expected})"
            )
            continue
        try:
            got = found[rel] = _hash_stored(plugin.path, rel, st)
        except PluginManifestError as exc:
            problems.append(exc.message)
            continue
        if got != expected:
            problems.append(f"{rel}: expected sha256 {expected}, got {got}")
    return found


def _check_extras(plugin: InstalledPlugin, tree: _StoredTree, problems: list[str]) -> None:
    """Files, other entries and directories of the stored copy that were never recorded."""
    parents = {rel.rsplit("/", i)[0] for rel in plugin.files for i in range(1, rel.count("/") + 1)}
    extra_files = sorted(set(tree.files) - set(plugin.files))
    extras = [*extra_files, *(set(tree.others) - set(plugin.files))]
    for rel in sorted(extras):
        st = tree.files.get(rel)
        if st is None:
            problems.append(f"{rel}: not part of the plugin ({tree.others[rel]})")
            continue
        try:
            detail = f"sha256 {_hash_stored(plugin.path, rel, st)}"
        except PluginManifestError:
            detail = f"{st.st_size} bytes"
        problems.append(f"{rel}: not part of the plugin ({detail})")
    for rel in sorted(tree.directories - parents):
        if not any(e.startswith(rel + "/") for e in extras):
            problems.append(f"{rel}: not part of the plugin (a directory)")


def verify_installed(plugin: InstalledPlugin) -> None:
    """Check the stored copy is exactly the recorded files; raise `PluginTamperedError`.

    Each problem names its file: changed (expected and actual sha256), missing, replaced by a
    link or special file, or not part of the plugin at all (any other file, ``__pycache__``
    and dotfiles included, and any directory that holds no recorded file).
    """
    label = f"plugin {plugin.name} {plugin.version}"
    problems: list[str] = []
    try:
        tree = _scan_stored(plugin.path)
    except FileNotFoundError:
        tree = None
        problems.append(f"its stored copy {plugin.path} is missing")
    except OSError as exc:
        tree = None
        problems.append(f"its stored copy {plugin.path} cannot be read: {exc.strerror or exc}")
    if tree is not None:
        found = _check_recorded(plugin, tree, problems)
        _check_extras(plugin, tree, problems)
        if tree.overflow:
            problems.append(f"the folder holds more than {2 * MAX_FILES} entries")
        if not problems and tree_sha256(found) != plugin.tree_sha256:
            problems.append("the tree hash differs from the recorded one")
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise PluginTamperedError(
            f"{label} was modified after it was added: {problems[0]}{more}",
            plugin=plugin.name,
            problems=problems,
        )


# ---------------------------------------------------------------------------------------------
# What a job gets: the recorded files, read again


def _open_beneath(root_fd: int, parts: Sequence[str]) -> int:
    """Open ``root/parts...`` for reading without following a symlink at any level."""
    nofollow = os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
    fd = os.dup(root_fd)
    try:
        for part in parts[:-1]:
            nxt = os.open(part, os.O_RDONLY | os.O_DIRECTORY | nofollow, dir_fd=fd)
            os.close(fd)
            fd = nxt
        return os.open(parts[-1], os.O_RDONLY | os.O_NONBLOCK | nofollow, dir_fd=fd)
    finally:
        os.close(fd)


@dataclass(frozen=True)
class RecordedFile:
    """One recorded file being read: consume `chunks` fully before asking for the next file."""

    path: str
    size: int
    chunks: Iterator[bytes]


def read_recorded_files(plugin: InstalledPlugin, chunk: int = 1 << 20) -> Iterator[RecordedFile]:
    """Each recorded file of `plugin`'s stored copy, in path order, and nothing else.

    Only the paths in ``plugin.files`` are opened (anything else in the folder is never read),
    each without following links at any level, and refused unless it is a regular, singly
    linked file; its chunks are hashed as they are read and a file whose bytes are not the
    recorded ones raises `PluginTamperedError` when its chunks run out; the tree hash is
    checked after the last file. So a copy made from these chunks holds exactly what was added.
    """
    label = f"plugin {plugin.name} {plugin.version}"

    def refuse(problem: str) -> PluginTamperedError:
        return PluginTamperedError(
            f"{label} was modified after it was added: {problem}",
            plugin=plugin.name,
            problems=[problem],
        )

    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
    try:
        root_fd = os.open(plugin.path, flags)
    except OSError as exc:
        raise refuse(f"its stored copy {plugin.path} cannot be opened: {exc.strerror}") from None
    found: dict[str, str] = {}

    def chunks(rel: str, fh: Any, size: int, expected: str) -> Iterator[bytes]:
        digest = FileHash()
        for block in digest.chunks(fh, chunk):
            if digest.size > size:
                raise refuse(f"{rel}: grew while it was copied")
            yield block
        got = digest.hexdigest()
        if digest.size != size or got != expected:
            raise refuse(f"{rel}: expected sha256 {expected}, got {got}")
        found[rel] = got

    try:
        for rel, expected in sorted(plugin.files.items()):
            parts = rel.split("/")
            if any(p in ("", ".", "..") for p in parts):
                raise refuse(f"{rel!r}: not a relative path inside the plugin")
            try:
                fd = _open_beneath(root_fd, parts)
            except OSError as exc:
                raise refuse(f"{rel}: cannot open ({exc.strerror}; a symbolic link?)") from None
            with os.fdopen(fd, "rb") as fh:
                st = os.fstat(fd)
                if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
                    raise refuse(f"{rel}: not a regular, singly-linked file")
                if st.st_size > MAX_FILE_BYTES:
                    raise refuse(f"{rel}: larger than {MAX_FILE_BYTES} bytes")
                yield RecordedFile(rel, st.st_size, chunks(rel, fh, st.st_size, expected))
            if rel not in found:
                raise refuse(f"{rel}: was not read to its end")
    finally:
        os.close(root_fd)
    if tree_sha256(found) != plugin.tree_sha256:
        raise refuse("the tree hash differs from the recorded one")


def copy_recorded_files(plugin: InstalledPlugin, dest: Path) -> None:
    """Write exactly the recorded files into the new directory `dest`, read-only.

    From `read_recorded_files`, so every byte written was hashed and matched; on any difference
    the partial copy is removed and `PluginTamperedError` propagates.
    """
    dest.mkdir(mode=0o700)
    try:
        for f in read_recorded_files(plugin):
            target = dest.joinpath(*f.path.split("/"))
            target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
            with os.fdopen(
                os.open(target, flags | getattr(os, "O_CLOEXEC", 0), 0o600), "wb"
            ) as out:
                for block in f.chunks:
                    out.write(block)
        make_read_only(dest)
    except BaseException:
        remove_tree(dest)
        raise


__all__ = [
    "RecordedFile",
    "copy_recorded_files",
    "legacy_store_dir",
    "move_legacy_folder",
    "read_recorded_files",
    "store_dir",
    "verify_installed",
]
