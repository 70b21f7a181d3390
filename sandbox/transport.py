"""How models and plugins reach a job's container: bind mounts, or docker volumes.

Models and plugins reach the container one of two ways (`model_transport`, one decision for
both):

- ``bind`` (a local engine, i.e. a unix socket): the store's file is bind-mounted read-only;
  each plugin gets a per-run copy of exactly its recorded files (`plugin_run_copies`), since
  its stored folder could hold more than was added.
- ``volume`` (a remote engine: tcp://, ssh://, https://...; or
  the ``volume`` choice): each model file is copied once into a docker
  volume labelled with its SHA256 (`ensure_model_volume`), through ``put_archive`` into a
  never-started helper container of the pinned image (no network, read-only root), as a
  streamed tar whose last member is a completion marker. Later jobs find the volume by label;
  one without a valid marker is removed and rebuilt. Engine API 1.41 has no volume sub-paths,
  so the job mounts the file *inside* the volume (its ``Mountpoint``, a path on the engine's
  host that the engine itself reported) read-only at the same ``/models/<name>`` path a bind
  mount uses, and the worker sees no difference. Plugins go the same way
  (`ensure_plugin_volume`): after `check_plugins` has re-verified the stored copy, exactly the
  recorded files (regular files only, opened without following links, hashed again while the
  tar streams; the tree sha256 checked before the marker) go under ``plugin/`` in a volume
  labelled with the plugin's tree sha256, and the job bind-mounts that directory read-only at
  ``/plugins/<name>`` (the marker stays outside it, so the plugin sees exactly its files).
  ``prune(models=True)`` removes model and plugin volumes.
"""

from __future__ import annotations

import io
import json
import os
import secrets
import stat
import tarfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker.errors
from docker.types import Mount

from sandbox.engine import is_local_engine
from sandbox.errors import HostConfigError, SandboxError, TransportChoiceError
from sandbox.image.record import ImageRecord
from sandbox.labels import (
    FILL_DIR,
    LABEL_JOB,
    LABEL_MODEL_SHA256,
    LABEL_PLUGIN_SHA256,
    LABEL_ROLE,
    LABEL_SESSION,
    LABEL_VERSION,
    MODEL_CHUNK,
    MODEL_FILE,
    MODEL_MARKER,
    PLUGIN_DIR,
    RUN_COPIES_DIR,
    SANDBOX_USER,
    SESSION_ID,
    ModelTransport,
)
from sandbox.plugin_store import copy_recorded_files, read_recorded_files
from sandbox.plugins import InstalledPlugin, remove_tree
from sandbox.protocol import ModelRef
from sandbox.protocol.hashing import FileHash
from sandbox.retry import VOLUME_REMOVAL


def engine_is_remote(client: Any) -> bool:
    """Whether host paths of this machine mean nothing to the engine (decided by its URL).

    docker-py's base URL is ``http+docker://localhost`` for a unix socket (and
    ``http+docker://localnpipe`` for a Windows pipe): local. ``http(s)://host:port`` (tcp://)
    and ``http+docker://ssh`` (ssh://) are remote, even when they point at this machine.
    """
    base_url = str(getattr(getattr(client, "api", None), "base_url", "") or "")
    local = ("http+docker://localhost", "http+docker://localnpipe", "unix://", "npipe://")
    return not base_url.startswith(local)


def model_transport(client: Any, choice: str = "auto") -> ModelTransport:
    """``bind`` for a local engine, ``volume`` for a remote one; `choice` (the user's setting:
    auto, bind or volume, any case) overrides."""
    wanted = choice.strip().lower()
    if wanted in ("bind", "volume"):
        return wanted  # type: ignore[return-value]
    if wanted not in ("", "auto"):
        raise TransportChoiceError(
            f"model transport {choice!r} is not one of auto, bind, volume", value=choice
        )
    return "volume" if engine_is_remote(client) else "bind"


@dataclass(frozen=True)
class StagedVolume:
    """A model file or plugin directory in its volume: `source` is its path on the engine's host.

    `sha256` is the model's blob sha256, or the plugin's tree sha256.
    """

    sha256: str
    volume: str
    source: str


#: The name from before plugin volumes; the same thing.
StagedModel = StagedVolume

#: Per kind of volume: its sha256 label, and what the job mounts inside ``_data``.
_VOLUME_KINDS: Mapping[str, tuple[str, str]] = {
    "model": (LABEL_MODEL_SHA256, MODEL_FILE),
    "plugin": (LABEL_PLUGIN_SHA256, PLUGIN_DIR),
}


def _marker(sha256: str, **extra: int) -> bytes:
    return json.dumps({"sha256": sha256, **extra}, sort_keys=True).encode()


def _tar_member(name: str, size: int, mode: int = 0o444, kind: bytes = tarfile.REGTYPE) -> bytes:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.size = size
    info.mode = mode
    info.mtime = 0
    return info.tobuf(format=tarfile.PAX_FORMAT)


def _tar_marker(marker: bytes) -> bytes:
    """The completion marker as a tar member (the archive's last)."""
    return _tar_member(MODEL_MARKER, len(marker)) + marker + b"\0" * (-len(marker) % 512)


def model_tar_stream(path: Path, sha256: str, chunk: int = MODEL_CHUNK) -> Iterator[bytes]:
    """A tar of the model file and, last, its marker, in chunks (never the whole file in memory).

    The file is hashed on the way; if it is not `sha256` (or changes size), the generator
    raises before the marker, so the volume stays incomplete. The copy is owned by root and
    keeps the file's read/write bits (always readable), as a bind mount would show them; the
    read-only mount is what stops writes.
    """
    st = path.stat()
    size = st.st_size
    yield _tar_member(MODEL_FILE, size, (st.st_mode & 0o666) | 0o444)
    digest = FileHash()
    with path.open("rb") as fh:
        for block in digest.chunks(fh, chunk):
            if digest.size > size:
                raise SandboxError(f"model file {path} grew while it was copied")
            yield block
    if digest.size != size or digest.hexdigest() != sha256:
        raise SandboxError(f"model file {path} is not the blob {sha256} it should be")
    yield b"\0" * (-size % 512)
    yield _tar_marker(_marker(sha256, size=size))
    yield b"\0" * 1024  # end of archive


def plugin_tar_stream(plugin: InstalledPlugin, chunk: int = MODEL_CHUNK) -> Iterator[bytes]:
    """A tar of exactly the plugin's recorded files under `PLUGIN_DIR`, then the marker.

    The files come from `read_recorded_files` (only recorded paths, opened without following
    links, hashed on the way, tree hash checked last): any difference raises
    `PluginTamperedError` before the marker, so the volume stays incomplete. Directories are
    ``0555`` and files ``0444`` (owned by root), as the stored copy shows them.
    """
    yield _tar_member(PLUGIN_DIR, 0, 0o555, tarfile.DIRTYPE)
    made: set[str] = set()
    count = 0
    for f in read_recorded_files(plugin, chunk):
        parts = f.path.split("/")
        for i in range(1, len(parts)):
            directory = "/".join(parts[:i])
            if directory not in made:
                made.add(directory)
                yield _tar_member(f"{PLUGIN_DIR}/{directory}", 0, 0o555, tarfile.DIRTYPE)
        yield _tar_member(f"{PLUGIN_DIR}/{f.path}", f.size, 0o444)
        yield from f.chunks
        yield b"\0" * (-f.size % 512)
        count += 1
    yield _tar_marker(_marker(plugin.tree_sha256, files=count))
    yield b"\0" * 1024  # end of archive


def _remove_volume(volume: Any) -> bool:
    for _ in VOLUME_REMOVAL.attempts():
        try:
            volume.remove(force=True)
            return True
        except docker.errors.NotFound:
            return True
        except docker.errors.APIError as exc:
            if "in use" in str(exc):
                return False  # another process is filling or using it
    return False


@contextmanager
def _volume_helper(
    client: Any, image: ImageRecord, volume: str, *, writable: bool
) -> Iterator[Any]:
    """A created, never started container of the pinned image with only `volume` at FILL_DIR."""
    labels = {
        LABEL_JOB: f"volume-helper-{secrets.token_hex(6)}",
        LABEL_VERSION: image.app_version,
        LABEL_SESSION: SESSION_ID,
        LABEL_ROLE: "volume-helper",
    }
    ct = client.containers.create(
        image=image.image_id,
        command=["/bin/false"],
        name=f"assetmgr-volume-helper-{secrets.token_hex(6)}",
        user=SANDBOX_USER,
        network_mode="none",
        read_only=True,
        cap_drop=["ALL"],
        privileged=False,
        security_opt=["no-new-privileges:true"],
        pids_limit=16,
        mem_limit=64 << 20,
        labels=labels,
        environment={},
        mounts=[Mount(FILL_DIR, volume, type="volume", read_only=not writable, no_copy=True)],
        stdin_open=False,
        tty=False,
        auto_remove=False,
    )
    try:
        ct.reload()
        hc = ct.attrs.get("HostConfig") or {}
        mounts = [
            (m.get("Type"), m.get("Source"), m.get("Target"), bool(m.get("ReadOnly")))
            for m in hc.get("Mounts") or []
        ]
        bad = []
        if mounts != [("volume", volume, FILL_DIR, not writable)]:
            bad.append(f"helper mounts {mounts}")
        if hc.get("NetworkMode") != "none" or hc.get("ReadonlyRootfs") is not True:
            bad.append("helper has a network or a writable root")
        if hc.get("Binds") or hc.get("Privileged") or list(hc.get("CapDrop") or []) != ["ALL"]:
            bad.append("helper has binds, privileges or capabilities")
        if bad:
            raise HostConfigError(bad)
        yield ct
    finally:
        try:
            ct.remove(force=True, v=False)
        except docker.errors.APIError:
            pass  # prune() finds it by label


def _volume_is_complete(client: Any, image: ImageRecord, volume: str, marker: bytes) -> bool:
    """Whether `volume` holds a whole copy: its marker (`MODEL_MARKER`) is exactly `marker`."""
    with _volume_helper(client, image, volume, writable=False) as ct:
        try:
            stream, _stat = client.api.get_archive(ct.id, f"{FILL_DIR}/{MODEL_MARKER}")
        except docker.errors.NotFound:
            return False
        data = bytearray()
        for chunk in stream:
            data += chunk
            if len(data) > 64 << 10:
                return False
    try:
        with tarfile.open(fileobj=io.BytesIO(bytes(data)), mode="r:") as tar:
            member = tar.next()
            fh = tar.extractfile(member) if member is not None else None
            payload = fh.read() if fh is not None else b""
    except tarfile.TarError:
        return False
    return payload == marker


def _staged(volume: Any, kind: str, sha256: str) -> StagedVolume:
    label, member = _VOLUME_KINDS[kind]
    volume.reload()
    attrs = volume.attrs or {}
    mountpoint = str(attrs.get("Mountpoint") or "")
    if attrs.get("Driver") != "local" or not mountpoint.startswith("/"):
        raise SandboxError(f"{kind} volume {volume.name} has no local mountpoint on the engine")
    if (attrs.get("Labels") or {}).get(label) != sha256:
        raise SandboxError(f"{kind} volume {volume.name} lost its label (removed while filled?)")
    return StagedVolume(sha256=sha256, volume=volume.name, source=f"{mountpoint}/{member}")


def _ensure_volume(
    client: Any,
    image: ImageRecord,
    kind: str,
    sha256: str,
    marker: bytes,
    archive: Callable[[], Iterator[bytes]],
) -> StagedVolume:
    """The `kind` volume labelled `sha256` whose marker is `marker`; filled from `archive`.

    Volumes are found by their label; one without a valid marker (an interrupted copy) is
    removed, unless it is in use (another process filling it), and a new one is filled.
    """
    label, _member = _VOLUME_KINDS[kind]
    for vol in client.volumes.list(filters={"label": f"{label}={sha256}"}):
        if _volume_is_complete(client, image, vol.name, marker):
            return _staged(vol, kind, sha256)
        _remove_volume(vol)
    volume = client.volumes.create(
        name=f"assetmgr-{kind}-{sha256[:32]}-{secrets.token_hex(3)}",
        driver="local",
        labels={
            label: sha256,
            LABEL_VERSION: image.app_version,
            LABEL_SESSION: SESSION_ID,
            LABEL_ROLE: kind,
        },
    )
    try:
        with _volume_helper(client, image, volume.name, writable=True) as ct:
            if not client.api.put_archive(ct.id, FILL_DIR, archive()):
                raise SandboxError(f"the engine refused the copy of {kind} {sha256}")
        return _staged(volume, kind, sha256)
    except BaseException:
        _remove_volume(volume)
        raise


def ensure_model_volume(client: Any, image: ImageRecord, sha256: str, path: Path) -> StagedModel:
    """The volume holding the model `path` (blob `sha256`), filled now if none is complete.

    Volumes are found by their `LABEL_MODEL_SHA256` label; one without a valid marker (an
    interrupted copy) is removed, unless it is in use (another process filling it).
    """
    sha256 = sha256.lower()
    size = path.stat().st_size
    return _ensure_volume(
        client,
        image,
        "model",
        sha256,
        _marker(sha256, size=size),
        lambda: model_tar_stream(path, sha256),
    )


def ensure_plugin_volume(client: Any, image: ImageRecord, plugin: InstalledPlugin) -> StagedVolume:
    """The volume holding `plugin`'s recorded files, filled now if none is complete.

    Found by its `LABEL_PLUGIN_SHA256` label (the tree sha256) and marker, like model volumes;
    filled from `plugin_tar_stream`, which re-verifies every file while it streams.
    """
    tree = plugin.tree_sha256.lower()
    return _ensure_volume(
        client,
        image,
        "plugin",
        tree,
        _marker(tree, files=len(plugin.files)),
        lambda: plugin_tar_stream(plugin),
    )


def stage_models(
    client: Any, image: ImageRecord, refs: Sequence[ModelRef], files: Mapping[str, Path] | None
) -> dict[str, StagedModel]:
    """`ensure_model_volume` for each model of a job: `ModelRef.name` -> its staged file."""
    files = dict(files or {})
    wanted = {r.name for r in refs}
    if set(files) != wanted:
        raise SandboxError(
            f"model files given {sorted(files)} do not match the spec's models {sorted(wanted)}"
        )
    staged: dict[str, StagedModel] = {}
    by_sha: dict[str, StagedModel] = {}
    for ref in refs:
        sha = ref.sha256.lower()
        if sha not in by_sha:
            try:
                path = Path(files[ref.name]).resolve(strict=True)
            except OSError as exc:
                raise SandboxError(f"model file for {ref.name!r} is missing: {exc}") from exc
            if not path.is_file():
                raise SandboxError(f"model source for {ref.name!r} is not a regular file")
            by_sha[sha] = ensure_model_volume(client, image, sha, path)
        staged[ref.name] = by_sha[sha]
    return staged


def stage_plugins(
    client: Any, image: ImageRecord, plugins: Sequence[InstalledPlugin]
) -> dict[str, StagedVolume]:
    """`ensure_plugin_volume` for each plugin of a job: plugin name -> its staged directory."""
    return {p.name: ensure_plugin_volume(client, image, p) for p in plugins}


def prepare_models(
    client: Any,
    image: ImageRecord,
    refs: Sequence[ModelRef],
    files: Mapping[str, Path] | None,
    transport: str = "auto",
) -> tuple[dict[str, StagedModel] | None, bool]:
    """What a plan needs for the engine's transport: (model volumes or None, check_local_paths)."""
    if model_transport(client, transport) == "volume" and refs:
        return stage_models(client, image, refs, files), False
    return None, is_local_engine(client)


@dataclass
class PluginSources:
    """Where a container's plugins come from; `close` removes per-run copies.

    Bind transport: `dirs` maps each plugin's name to a fresh copy of exactly its recorded
    files (`plugin_run_copies`), never the stored folder, which could hold more. Volume
    transport: `volumes` holds the plugin volumes (filled from the recorded files too).
    """

    dirs: dict[str, Path] = field(default_factory=dict)
    volumes: dict[str, StagedVolume] | None = None
    scratch: Path | None = None

    def close(self) -> None:
        if self.scratch is not None:
            remove_tree(self.scratch)
            self.scratch = None

    def __enter__(self) -> PluginSources:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def plugin_run_copies(plugins: Sequence[InstalledPlugin]) -> PluginSources:
    """A private copy of each plugin's recorded files for one container (bind transport).

    Made under ``<plugins dir>/.run/<session>-<random>/<name>`` (the plugins directory is one
    the local engine can bind from), each file re-read without following links and hashed as
    it is copied (`copy_recorded_files`); read-only, removed by `PluginSources.close`.
    """
    root = plugins[0].path.parent / RUN_COPIES_DIR
    root.mkdir(mode=0o700, exist_ok=True)
    if not stat.S_ISDIR(os.lstat(root).st_mode):  # never write through a link planted there
        raise SandboxError(f"{root} is not a directory (a symbolic link?)")
    scratch = root / f"{SESSION_ID}-{secrets.token_hex(6)}"
    scratch.mkdir(mode=0o700)
    sources = PluginSources(scratch=scratch)
    try:
        for plugin in plugins:
            copy_recorded_files(plugin, scratch / plugin.name)
            sources.dirs[plugin.name] = scratch / plugin.name
        # read-only for all: the container's user (another uid) reads this bind mount
        os.chmod(scratch, 0o555)  # noqa: S103
    except BaseException:
        sources.close()
        raise
    return sources


def prepare_plugins(
    client: Any, image: ImageRecord, plugins: Sequence[InstalledPlugin], transport: str = "auto"
) -> PluginSources:
    """Plugin volumes for the volume transport (`model_transport`), else per-run copies.

    Call it after `check_plugins`: a tampered plugin is refused before anything is copied.
    Either way the container sees exactly the recorded files, read again while copying.
    """
    if not plugins:
        return PluginSources()
    if model_transport(client, transport) == "volume":
        return PluginSources(volumes=stage_plugins(client, image, plugins))
    return plugin_run_copies(plugins)
