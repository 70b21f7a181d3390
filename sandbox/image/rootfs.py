"""The base layer: a minimal Debian rootfs from debootstrap, as a reproducible tarball.

Steps (needs root, or non-interactive sudo, and the Debian mirror from the host's apt sources):

1. ``debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates SUITE ROOTFS
   MIRROR`` into a scratch directory.
2. Normalise it: drop apt caches and lists, logs, device nodes, ``*-old`` backups, docs (except
   copyright files), man pages and translations; blank ``/etc/resolv.conf``; a fixed hostname;
   shadow "last changed" days set from the fixed epoch.
3. ``tar --sort=name --format=gnu --mtime=@EPOCH --owner=0 --group=0 --numeric-owner
   --mode=ug-s``: no build-day timestamps, no host ownership, no setuid/setgid bits.

The tarball is cached under ``<cache>/rootfs/<inputs key>/`` with its sha256, so later builds
skip debootstrap entirely. Two debootstraps of the same snapshot on this machine produced
byte-identical tarballs; a moving mirror (point releases, security updates) changes it, which is
why the tarball's sha256 (not the inputs) is what the image records and checks.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import shutil
import tempfile
import threading
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from sandbox.errors import ImageError
from sandbox.image._proc import ProgressCallback, base_env, privileged_prefix, run_command
from sandbox.protocol.hashing import FileHash, sha256_file

DEFAULT_SUITE = "bookworm"
DEFAULT_INCLUDE = ("python3", "python3-venv", "ca-certificates")
#: Fixed timestamp for every file in the tarball (2024-01-01T00:00:00Z).
SOURCE_DATE_EPOCH = 1704067200
#: Bump when the normalisation below changes, so cached tarballs are rebuilt.
NORMALISATION_VERSION = 1

_APT_SOURCES = (Path("/etc/apt/sources.list"), Path("/etc/apt/sources.list.d"))

_NORMALISE_SH = r"""
set -eu
R="$1"; DAYS="$2"
rm -rf "$R"/var/cache/apt/* "$R"/var/lib/apt/lists/* "$R"/var/log/* "$R"/dev/* "$R"/tmp/* \
       "$R"/run/* "$R"/var/cache/ldconfig/aux-cache "$R"/var/lib/dpkg/*-old \
       "$R"/var/cache/debconf/*-old "$R"/etc/*- "$R"/usr/share/man/* "$R"/usr/share/info/* \
       "$R"/usr/share/locale/*
if [ -d "$R"/usr/share/doc ]; then
  find "$R"/usr/share/doc -mindepth 1 ! -type d ! -name copyright -delete
fi
printf 'sandbox\n' > "$R"/etc/hostname
: > "$R"/etc/resolv.conf
sed -i -E "s/^([^:]*:[^:]*:)[0-9]+:/\1$DAYS:/" "$R"/etc/shadow
"""


def debian_arch(machine: str | None = None) -> str:
    machine = (machine or platform.machine()).lower()
    mapping = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}
    if machine not in mapping:
        raise ImageError(f"unsupported architecture {machine!r} for the sandbox image")
    return mapping[machine]


@dataclass(frozen=True)
class RootfsInputs:
    """Everything that decides the rootfs tarball; its hash keys the cache."""

    mirror: str
    suite: str = DEFAULT_SUITE
    variant: str = "minbase"
    include: tuple[str, ...] = DEFAULT_INCLUDE
    arch: str = field(default_factory=debian_arch)
    epoch: int = SOURCE_DATE_EPOCH
    normalisation: int = NORMALISATION_VERSION

    def key(self) -> str:
        blob = json.dumps(asdict(self), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()


@dataclass(frozen=True)
class RootfsTarball:
    path: Path
    sha256: str
    size: int
    inputs: RootfsInputs
    cached: bool


# --- apt sources -----------------------------------------------------------------------------


def _one_line_entries(text: str) -> list[tuple[list[str], list[str], list[str]]]:
    entries = []
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        line = re.sub(r"\[[^\]]*\]", " ", line)  # drop [arch=... signed-by=...]
        parts = line.split()
        if len(parts) >= 3:
            entries.append(([parts[0]], [parts[1]], [parts[2]]))
    return entries


def _deb822_entries(text: str) -> list[tuple[list[str], list[str], list[str]]]:
    entries = []
    for stanza in re.split(r"\n\s*\n", text):
        fields: dict[str, str] = {}
        key = None
        for raw in stanza.splitlines():
            if raw.startswith("#") or not raw.strip():
                continue
            if raw[0].isspace() and key is not None:
                fields[key] += " " + raw.strip()
                continue
            key, _, value = raw.partition(":")
            key = key.strip().lower()
            fields[key] = value.strip()
        if fields.get("enabled", "yes").lower() == "no":
            continue
        entries.append(
            (
                fields.get("types", "").split(),
                fields.get("uris", "").split(),
                fields.get("suites", "").split(),
            )
        )
    return entries


def find_debian_mirror(suite: str = DEFAULT_SUITE, sources: Sequence[Path] = _APT_SOURCES) -> str:
    """The first ``deb`` URI in the host's apt sources that serves `suite` itself.

    Read at run time so no mirror host name is ever written into the repository.
    """
    files: list[Path] = []
    for src in sources:
        if src.is_dir():
            files += sorted(p for p in src.iterdir() if p.suffix in (".list", ".sources"))
        elif src.is_file():
            files.append(src)
    for path in files:
        try:
            text = path.read_text()
        except OSError:
            continue
        parser = _deb822_entries if path.suffix == ".sources" else _one_line_entries
        for types, uris, suites in parser(text):
            if "deb" in types and suite in suites and uris:
                return uris[0].rstrip("/")
    raise ImageError(
        f"no Debian mirror serving {suite!r} found in the apt sources",
        reason="no-mirror",
    )


# --- build -----------------------------------------------------------------------------------


def _unmount_below(target: Path, prefix: list[str]) -> None:
    """Lazily unmount anything an interrupted debootstrap left mounted inside `target`."""
    try:
        with open("/proc/mounts") as f:
            points = [line.split()[1] for line in f if len(line.split()) > 1]
    except OSError:
        return
    inside = sorted((p for p in points if p.startswith(str(target) + "/")), reverse=True)
    for point in inside:
        try:
            run_command(
                [*prefix, "umount", "-l", point],
                what="umount",
                cancel=threading.Event(),
                env=base_env(),
            )
        except ImageError:
            pass


def _remove_tree(path: Path, prefix: list[str]) -> None:
    if not path.exists():
        return
    try:  # --one-file-system: never follow a mount that survived into the host's /proc or /sys
        run_command(
            [*prefix, "rm", "-rf", "--one-file-system", str(path)],
            what="remove scratch rootfs",
            cancel=threading.Event(),
            env=base_env(),
        )
    except ImageError:
        pass


def build_rootfs_tarball(
    inputs: RootfsInputs,
    cache_dir: Path,
    *,
    progress: ProgressCallback,
    cancel: threading.Event,
    offline: bool = False,
) -> RootfsTarball:
    """Return the cached tarball for `inputs`, building it with debootstrap if needed."""
    entry = cache_dir / "rootfs" / inputs.key()[:24]
    tar_path = entry / "rootfs.tar"
    meta_path = entry / "meta.json"
    if tar_path.is_file() and meta_path.is_file():
        meta = json.loads(meta_path.read_text())
        progress("hash cached rootfs", None)
        digest = sha256_file(tar_path)
        if digest == meta.get("sha256"):
            return RootfsTarball(tar_path, digest, tar_path.stat().st_size, inputs, cached=True)
        progress("cached rootfs is corrupt; rebuilding", None)
    if offline:
        raise ImageError(
            "no cached base rootfs and --offline was given",
            reason="offline-no-rootfs",
        )
    if shutil.which("debootstrap") is None and not Path("/usr/sbin/debootstrap").exists():
        raise ImageError("debootstrap is not installed", reason="no-debootstrap")
    prefix = privileged_prefix()
    entry.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="rootfs-", dir=entry))
    target = scratch / "root"
    try:
        env = base_env(
            {"DEBIAN_FRONTEND": "noninteractive", "SOURCE_DATE_EPOCH": str(inputs.epoch)}
        )
        env_args = [f"{k}={v}" for k, v in env.items()]
        argv = [
            *prefix,
            "env",
            "-i",
            *env_args,
            "debootstrap",
            f"--variant={inputs.variant}",
            f"--include={','.join(inputs.include)}",
            f"--arch={inputs.arch}",
            inputs.suite,
            str(target),
            inputs.mirror,
        ]
        counts = {"Retrieving": 0, "Extracting": 0, "Unpacking": 0, "Configuring": 0}

        def on_line(line: str) -> None:
            for word in counts:
                if line.startswith(f"I: {word}"):
                    counts[word] += 1
                    progress(f"debootstrap: {word.lower()}", None)

        progress("debootstrap", None)
        try:
            run_command(
                argv, what="debootstrap", cancel=cancel, env=env, on_line=on_line, merge_stderr=True
            )
        finally:
            _unmount_below(target, prefix)

        progress("normalise rootfs", None)
        days = str(inputs.epoch // 86400)
        run_command(
            [*prefix, "sh", "-c", _NORMALISE_SH, "normalise", str(target), days],
            what="normalise rootfs",
            cancel=cancel,
            env=base_env(),
        )

        progress("tar rootfs", None)
        hasher = FileHash()
        partial = entry / "rootfs.tar.partial"
        with open(partial, "wb") as out:

            def sink(chunk: bytes) -> None:
                hasher.update(chunk)
                out.write(chunk)

            run_command(
                [
                    *prefix,
                    "tar",
                    "-C",
                    str(target),
                    "--sort=name",
                    "--format=gnu",
                    f"--mtime=@{inputs.epoch}",
                    "--owner=0",
                    "--group=0",
                    "--numeric-owner",
                    "--mode=ug-s",
                    "-cf",
                    "-",
                    ".",
                ],
                what="tar rootfs",
                cancel=cancel,
                env=base_env(),
                stdout_sink=sink,
            )
            out.flush()
            os.fsync(out.fileno())
        os.replace(partial, tar_path)
        digest = hasher.hexdigest()
        meta = {"sha256": digest, "size": hasher.size, "inputs": asdict(inputs)}
        meta_path.write_text(json.dumps(meta, indent=2, sort_keys=True))
        return RootfsTarball(tar_path, digest, hasher.size, inputs, cached=False)
    finally:
        _remove_tree(scratch, prefix)
        (entry / "rootfs.tar.partial").unlink(missing_ok=True)


def rootfs_meta(tarball: RootfsTarball) -> dict[str, Any]:
    return {"sha256": tarball.sha256, "size": tarball.size, **asdict(tarball.inputs)}
