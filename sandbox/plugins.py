"""Host side of plugins: vet a plugin directory, keep a hashed read-only copy, re-verify it.

The host treats a plugin as data. It reads the manifest with `tomllib`/`json`, walks the
directory without following anything, and hashes every file while copying it, so the recorded
sha256 is exactly what was copied. Plugin code is imported only inside the sandbox container
(`sandbox.worker.plugin_host`); nothing here imports, executes or unpickles it.

Refused: symbolic links anywhere, devices, FIFOs and sockets, hard-linked files (their content
lives outside the directory too), other file systems mounted inside it, names that are not
UTF-8 or hold control characters, compiled code (``.so``, ``.pyc``, ELF files: plugins are
source only; native code belongs in pinned wheels), files over `MAX_FILE_BYTES`, more than
`MAX_FILES` files or `MAX_TOTAL_BYTES` in all, and nesting deeper than `MAX_DEPTH`. Cache
directories (`SKIPPED_DIRS`) are left out.

The stored copy lives in ``<plugins dir>/<tree sha256>/`` with read-only modes; the catalog
keeps every file's sha256 (`catalog.sandbox_records`). `sandbox.plugin_store` checks that a
stored copy is exactly its recorded files and hands a job those files only.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import shutil
import stat
import tomllib
import unicodedata
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from sandbox.errors import PluginManifestError
from sandbox.protocol import (
    PLUGIN_ENTRY_RE,
    PLUGIN_HOOKS,
    PLUGIN_NAME_RE,
    PLUGIN_VERSION_RE,
    PluginRef,
)
from sandbox.protocol.hashing import FileHash

MANIFEST_NAMES: Final = ("assetmgr-plugin.toml", "assetmgr-plugin.json")
MAX_MANIFEST_BYTES: Final = 64 * 1024
MAX_FILE_BYTES: Final = 16 * 1024 * 1024
MAX_TOTAL_BYTES: Final = 64 * 1024 * 1024
MAX_FILES: Final = 2000
MAX_DEPTH: Final = 16
MAX_REQUIREMENTS: Final = 64
SKIPPED_DIRS: Final = frozenset(
    {"__pycache__", ".git", ".hg", ".mypy_cache", ".pytest_cache", ".ruff_cache"}
)
REFUSED_SUFFIXES: Final = frozenset(
    {".so", ".pyd", ".dll", ".dylib", ".pyc", ".pyo", ".exe", ".bin", ".whl"}
)
_ELF_MAGIC: Final = b"\x7fELF"
_REQUIREMENT_RE: Final = re.compile(
    r"^(?P<name>[A-Za-z0-9](?:[A-Za-z0-9._-]{0,98}[A-Za-z0-9])?)"
    r"==(?P<version>[0-9][0-9A-Za-z.+!_-]{0,63})$"
)


def requirements_key(requirements: Sequence[str]) -> str:
    """What names a set of pinned requirements: the image keeps each set's wheels in
    ``/opt/plugin-deps/<key>`` and jobs find them by it (`PluginRef.deps`)."""
    lines = "".join(f"{r}\n" for r in sorted(set(requirements)))
    return hashlib.sha256(lines.encode()).hexdigest()


def canonical_name(name: str) -> str:
    """PEP 503 normalisation (``Foo_Bar`` -> ``foo-bar``)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def normalize_requirement(line: str) -> str:
    """``Name==1.0`` -> ``name==1.0``; anything but an exact pin of a plain name is refused."""
    m = _REQUIREMENT_RE.match(line.strip())
    if m is None:
        raise ValueError(
            f"requirement {line!r} must be an exact pin 'name==version' "
            "(no ranges, extras, markers, URLs or options)"
        )
    return f"{canonical_name(m['name'])}=={m['version']}"


class PluginManifest(BaseModel):
    """``assetmgr-plugin.toml`` / ``.json``; see `sandbox.worker.plugin_api` for the format."""

    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=False)

    name: str = Field(pattern=PLUGIN_NAME_RE)
    version: str = Field(pattern=PLUGIN_VERSION_RE)
    entry: str = Field(pattern=PLUGIN_ENTRY_RE)
    hooks: tuple[str, ...] = Field(min_length=1, max_length=len(PLUGIN_HOOKS))
    requirements: tuple[str, ...] = Field(default=(), max_length=MAX_REQUIREMENTS)
    api: Literal[1] = 1
    description: str = Field(default="", max_length=500)

    @field_validator("hooks")
    @classmethod
    def _hooks(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        unknown = [h for h in value if h not in PLUGIN_HOOKS]
        if unknown:
            raise ValueError(f"unknown hooks {unknown} (known: {', '.join(PLUGIN_HOOKS)})")
        if len(set(value)) != len(value):
            raise ValueError("hooks must be unique")
        return value

    @field_validator("requirements")
    @classmethod
    def _requirements(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        lines = tuple(normalize_requirement(v) for v in value)
        names = [line.split("==", 1)[0] for line in lines]
        if len(set(names)) != len(names):
            raise ValueError("each requirement may appear only once")
        return tuple(sorted(lines))

    @field_validator("description")
    @classmethod
    def _printable(cls, value: str) -> str:
        if any(unicodedata.category(ch)[0] == "C" for ch in value):
            raise ValueError("description holds control characters")
        return value


def parse_manifest(data: bytes, filename: str) -> PluginManifest:
    """Validate manifest bytes (TOML or JSON by file name); raises `PluginManifestError`."""
    if len(data) > MAX_MANIFEST_BYTES:
        raise PluginManifestError(f"{filename} is larger than {MAX_MANIFEST_BYTES} bytes")
    try:
        text = data.decode("utf-8")
        raw: Any = tomllib.loads(text) if filename.endswith(".toml") else json.loads(text)
    except (UnicodeDecodeError, tomllib.TOMLDecodeError, ValueError, RecursionError) as exc:
        raise PluginManifestError(f"{filename} is not valid: {exc}") from None
    if not isinstance(raw, dict):
        raise PluginManifestError(f"{filename} must hold a table/object at the top")
    try:
        return PluginManifest.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or '<root>'}: {e['msg']}" for e in exc.errors()
        )
        raise PluginManifestError(f"{filename}: {problems}") from None


# ---------------------------------------------------------------------------------------------
# Walking, hashing, copying


@dataclass(frozen=True)
class FileEntry:
    path: str
    """Relative, ``/``-separated."""
    sha256: str
    size: int


def tree_sha256(files: Sequence[FileEntry] | Mapping[str, str]) -> str:
    """One hash over every (path, sha256): the lines ``sha256sum`` would print, sorted by path."""
    pairs = (
        sorted(files.items())
        if isinstance(files, Mapping)
        else sorted((f.path, f.sha256) for f in files)
    )
    h = hashlib.sha256()
    for path, digest in pairs:
        h.update(f"{digest}  {path}\n".encode())
    return h.hexdigest()


def _check_component(name: str, where: str) -> None:
    try:
        encoded = name.encode("utf-8")
    except UnicodeEncodeError:
        raise PluginManifestError(f"{where!r}: file name is not valid UTF-8") from None
    if len(encoded) > 255 or not name:
        raise PluginManifestError(f"{where!r}: file name too long")
    if any(unicodedata.category(ch)[0] == "C" for ch in name) or "\\" in name:
        raise PluginManifestError(f"{where!r}: file name holds control characters")


def _display(parts: Sequence[str]) -> str:
    return "/".join(p.encode("utf-8", "backslashreplace").decode("utf-8") for p in parts)


@dataclass
class _Budget:
    files: int = 0
    total: int = 0


def _walk(root: Path) -> Iterator[tuple[tuple[str, ...], os.stat_result]]:
    """Yield (relative parts, lstat) of every regular file under `root`; refuse anything odd.

    For a directory being added: cache directories (`SKIPPED_DIRS`) are left out. A stored copy
    is checked by `verify_installed`, which skips nothing.
    """
    root_st = os.lstat(root)
    if not stat.S_ISDIR(root_st.st_mode):
        raise PluginManifestError(f"{root} is not a directory")

    def visit(
        directory: Path, parts: tuple[str, ...]
    ) -> Iterator[tuple[tuple[str, ...], os.stat_result]]:
        if len(parts) > MAX_DEPTH:
            raise PluginManifestError(f"{_display(parts)!r}: nested deeper than {MAX_DEPTH}")
        with os.scandir(directory) as it:
            entries = sorted(it, key=lambda e: e.name)
        for entry in entries:
            rel = (*parts, entry.name)
            where = _display(rel)
            _check_component(entry.name, where)
            st = entry.stat(follow_symlinks=False)
            if stat.S_ISLNK(st.st_mode):
                raise PluginManifestError(f"{where!r} is a symbolic link (not allowed)")
            if st.st_dev != root_st.st_dev:
                raise PluginManifestError(f"{where!r} is on another file system")
            if stat.S_ISDIR(st.st_mode):
                if entry.name in SKIPPED_DIRS:
                    continue
                yield from visit(Path(entry.path), rel)
                continue
            if not stat.S_ISREG(st.st_mode):
                raise PluginManifestError(f"{where!r} is not a regular file (device, FIFO, socket)")
            if st.st_nlink > 1:
                raise PluginManifestError(f"{where!r} is hard-linked to a file outside the plugin")
            if os.path.splitext(entry.name)[1].lower() in REFUSED_SUFFIXES:
                raise PluginManifestError(
                    f"{where!r}: compiled code and archives are not allowed in a plugin "
                    "(plugins are source only; native code belongs in pinned wheels)"
                )
            if st.st_size > MAX_FILE_BYTES:
                raise PluginManifestError(f"{where!r} is larger than {MAX_FILE_BYTES} bytes")
            yield rel, st

    yield from visit(root, ())


def _open_checked(path: Path, expected: os.stat_result, where: str) -> int:
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        raise PluginManifestError(f"{where!r}: cannot open: {exc.strerror}") from None
    st = os.fstat(fd)
    if (st.st_dev, st.st_ino) != (expected.st_dev, expected.st_ino) or not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise PluginManifestError(f"{where!r} changed while it was read")
    return fd


def _hash_file(
    path: Path, st: os.stat_result, where: str, budget: _Budget, sink: Any = None
) -> FileEntry:
    fd = _open_checked(path, st, where)
    h = FileHash()
    first = b""
    with os.fdopen(fd, "rb") as f:
        for chunk in h.chunks(f):
            if not first:
                first = chunk[:4]
            budget.total += len(chunk)
            if h.size > MAX_FILE_BYTES:
                raise PluginManifestError(f"{where!r} is larger than {MAX_FILE_BYTES} bytes")
            if budget.total > MAX_TOTAL_BYTES:
                raise PluginManifestError(f"the plugin is larger than {MAX_TOTAL_BYTES} bytes")
            if sink is not None:
                sink.write(chunk)
    if first == _ELF_MAGIC:
        raise PluginManifestError(f"{where!r} is an executable binary (plugins are source only)")
    return FileEntry(where, h.hexdigest(), h.size)


def hash_tree(root: Path) -> list[FileEntry]:
    """Every file under `root` with its sha256, refusing what `_walk` refuses."""
    budget = _Budget()
    out = []
    for parts, st in _walk(root):
        budget.files += 1
        if budget.files > MAX_FILES:
            raise PluginManifestError(f"the plugin has more than {MAX_FILES} files")
        out.append(_hash_file(root.joinpath(*parts), st, "/".join(parts), budget))
    return out


def copy_tree_hashed(source: Path, dest: Path) -> list[FileEntry]:
    """Copy every file of `source` into the new directory `dest`, hashing the copied bytes."""
    budget = _Budget()
    out = []
    dest.mkdir(mode=0o700)
    for parts, st in _walk(source):
        budget.files += 1
        if budget.files > MAX_FILES:
            raise PluginManifestError(f"the plugin has more than {MAX_FILES} files")
        target = dest.joinpath(*parts)
        target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        with open(target, "xb") as sink:
            out.append(_hash_file(source.joinpath(*parts), st, "/".join(parts), budget, sink))
    return out


def make_read_only(root: Path) -> None:
    for directory, _dirs, files in os.walk(root, topdown=False):
        for name in files:
            os.chmod(os.path.join(directory, name), 0o444)
        # read-only for all: the container's user (another uid) reads the mounted copy
        os.chmod(directory, 0o555)  # noqa: S103


def remove_tree(root: Path) -> None:
    """Delete a stored plugin copy (its directories are read-only)."""
    if not root.exists():
        return
    for directory, _dirs, _files in os.walk(root):
        os.chmod(directory, 0o700)
    shutil.rmtree(root)


# ---------------------------------------------------------------------------------------------
# Staging a new plugin


@dataclass(frozen=True)
class StagedPlugin:
    """A plugin copied into a private staging directory, hashed and validated."""

    manifest: PluginManifest
    manifest_file: str
    manifest_sha256: str
    files: tuple[FileEntry, ...]
    tree_sha256: str
    staging: Path
    source: Path

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)


def stage_plugin(source: Path, plugins_root: Path) -> StagedPlugin:
    """Copy `source` into ``<plugins_root>/.staging-*``, hash it, validate its manifest.

    The manifest is parsed from the copied bytes, so what was validated is what was hashed.
    The caller moves the staging directory into place or calls `remove_tree` on it.
    """
    try:
        source = Path(os.path.realpath(source))
        if not source.is_dir():
            raise PluginManifestError(f"{source} is not a directory")
    except OSError as exc:
        raise PluginManifestError(f"cannot read {source}: {exc}") from None
    plugins_root.mkdir(parents=True, exist_ok=True)
    staging = plugins_root / f".staging-{secrets.token_hex(6)}"
    try:
        try:
            files = copy_tree_hashed(source, staging)
        except OSError as exc:
            raise PluginManifestError(f"cannot copy {source}: {exc}") from None
        by_path = {f.path: f for f in files}
        present = [n for n in MANIFEST_NAMES if n in by_path]
        if len(present) != 1:
            raise PluginManifestError(
                f"{source} must hold exactly one of {', '.join(MANIFEST_NAMES)}"
                + (f" (found {', '.join(present)})" if present else "")
            )
        manifest_file = present[0]
        manifest = parse_manifest((staging / manifest_file).read_bytes(), manifest_file)
        if f"{manifest.entry}.py" not in by_path and f"{manifest.entry}/__init__.py" not in by_path:
            raise PluginManifestError(
                f"entry module {manifest.entry!r} not found: the plugin needs "
                f"{manifest.entry}.py or {manifest.entry}/__init__.py"
            )
        return StagedPlugin(
            manifest=manifest,
            manifest_file=manifest_file,
            manifest_sha256=by_path[manifest_file].sha256,
            files=tuple(files),
            tree_sha256=tree_sha256(files),
            staging=staging,
            source=source,
        )
    except BaseException:
        remove_tree(staging)
        raise


# ---------------------------------------------------------------------------------------------
# Installed plugins


@dataclass(frozen=True)
class InstalledPlugin:
    """An added plugin as the catalog records it, with its stored copy's location."""

    name: str
    version: str
    entry: str
    hooks: tuple[str, ...]
    requirements: tuple[str, ...]
    tree_sha256: str
    trusted: bool
    path: Path
    files: Mapping[str, str] = field(repr=False)
    """Relative path -> sha256 of every file, as recorded when it was added."""
    description: str = ""
    added_at: datetime | None = None

    @property
    def deps_key(self) -> str | None:
        """`requirements_key` of its requirements; None when it has none."""
        return requirements_key(self.requirements) if self.requirements else None

    def ref(self) -> PluginRef:
        return PluginRef(
            name=self.name,
            version=self.version,
            sha256=self.tree_sha256,
            entry=self.entry,
            hooks=self.hooks,
            deps=self.deps_key,
        )


def requirement_conflicts(
    wanted: Sequence[str], pinned: Mapping[str, str], source: str
) -> list[str]:
    """Requirements in `wanted` that pin another version of a package in `pinned`."""
    out = []
    for line in wanted:
        name, version = line.split("==", 1)
        have = pinned.get(name)
        if have is not None and have.split("+", 1)[0] != version.split("+", 1)[0]:
            out.append(f"{line} conflicts with {name}=={have} ({source})")
    return out


def base_pins(requirements_in: Path | None = None) -> dict[str, str]:
    """The top-level pins of the sandbox image (``sandbox/image/requirements.in``)."""
    from sandbox.image.wheels import REQUIREMENTS_IN

    pins = {}
    for raw in (requirements_in or REQUIREMENTS_IN).read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if "==" in line:
            name, version = line.split("==", 1)
            pins[canonical_name(name)] = version.strip()
    return pins


__all__ = [
    "MANIFEST_NAMES",
    "FileEntry",
    "InstalledPlugin",
    "PluginManifest",
    "StagedPlugin",
    "base_pins",
    "canonical_name",
    "copy_tree_hashed",
    "hash_tree",
    "make_read_only",
    "normalize_requirement",
    "parse_manifest",
    "remove_tree",
    "requirement_conflicts",
    "requirements_key",
    "stage_plugin",
    "tree_sha256",
]
