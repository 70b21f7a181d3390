"""The sandbox as the CLI and the TUI use it: plugins in the catalog, the image, running jobs.

`SandboxService` ties together the pieces that stay independent elsewhere:

* plugins: `add_plugin` vets a directory (`sandbox.plugins.stage_plugin`), refuses
  requirement conflicts with the image's pins and with other plugins, moves the read-only copy
  into ``<plugins dir>/<tree sha256>/`` and records it with every file's sha256 and its folder
  (`catalog.sandbox_records`); `verify_plugins` checks each stored copy is exactly its
  recorded files. Copies stored under the old ``<name>-<version>`` names (which two plugins
  could share) are moved to their tree-hash folders when the service opens the catalog;
* the image: `build` passes every added plugin's requirements to `build_image` (so the
  hash-locked wheelhouse includes them), and records the `ImageRecord` in the catalog as well
  as in the JSON record file; `image_status` says whether the image is missing, changed on the
  engine, or stale (worker code, app version, plugin requirements);
* runs: `run` builds the `JobSpec` with the plugins' refs and picks the container strategy:
  a one-shot container per job unless every plugin of the set is trusted and worker reuse is
  on, in which case one `WarmWorker` per (image, plugin set) serves the jobs. Every run
  re-verifies the plugins by hash and the image against the engine before anything starts.

Nothing here imports plugin code: manifests are data, and plugins only ever run in the
container.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from sqlalchemy import Engine
from sqlmodel import Session, col, select

from catalog.db import session_scope
from catalog.sandbox_records import Plugin, PluginFile, SandboxImage
from sandbox.errors import (
    EngineUnavailableError,
    ImageError,
    ImageMismatchError,
    PluginError,
    PluginManifestError,
    PluginNotFoundError,
    PluginTamperedError,
    SandboxError,
)
from sandbox.image.record import ImageRecord, load_record
from sandbox.plugin_store import move_legacy_folder, store_dir, verify_installed
from sandbox.plugins import (
    InstalledPlugin,
    base_pins,
    make_read_only,
    remove_tree,
    requirement_conflicts,
    stage_plugin,
)
from sandbox.protocol import PLUGIN_NAME_RE, PLUGIN_VERSION_RE, JobSpec, Limits, ModelRef
from sandbox.status import ImageStatus

RunMode = Literal["auto", "per-job", "warm"]


def default_record_path() -> Path:
    """$ASSETMGR_SANDBOX_RECORD, else ``<sandbox dir>/image.json``."""
    from assetmgr import paths

    explicit = os.environ.get("ASSETMGR_SANDBOX_RECORD")
    return Path(explicit).expanduser() if explicit else paths.sandbox_dir() / "image.json"


def default_cache_dir() -> Path:
    """$ASSETMGR_SANDBOX_CACHE, else ``<sandbox dir>/cache``."""
    from assetmgr import paths

    explicit = os.environ.get("ASSETMGR_SANDBOX_CACHE")
    return Path(explicit).expanduser() if explicit else paths.sandbox_dir() / "cache"


@dataclass(frozen=True)
class AddResult:
    plugin: InstalledPlugin
    already_added: bool = False
    replaced: str | None = None
    """The version that was replaced (``--replace``), if any."""


@dataclass(frozen=True)
class PluginCheck:
    name: str
    version: str
    ok: bool
    problems: tuple[str, ...] = ()


def _plugin_from_rows(row: Plugin, files: Sequence[PluginFile], root: Path) -> InstalledPlugin:
    return InstalledPlugin(
        name=row.name,
        version=row.version,
        entry=row.entry,
        hooks=tuple(row.hooks),
        requirements=tuple(row.requirements),
        tree_sha256=row.tree_sha256,
        trusted=row.trusted,
        path=_stored_path(root, row),
        files={f.path: f.sha256 for f in files},
        description=row.description,
        added_at=row.added_at,
    )


def _stored_path(root: Path, row: Plugin) -> Path:
    """The stored copy's folder; the catalog's string is re-checked before use as a path."""
    try:
        return store_dir(root, row.store_dir or row.tree_sha256)
    except PluginManifestError:
        raise PluginError(
            f"the catalog holds an invalid folder for plugin {row.name!r}: {row.store_dir!r}"
        ) from None


class SandboxService:
    def __init__(
        self,
        engine: Engine,
        *,
        plugins_root: Path | None = None,
        record_path: Path | None = None,
        cache_dir: Path | None = None,
        client: Any = None,
        reuse_workers: bool = False,
    ) -> None:
        from assetmgr import paths

        self.engine = engine
        self.plugins_root = plugins_root or paths.plugins_dir()
        self.record_path = record_path or default_record_path()
        self.cache_dir = cache_dir or default_cache_dir()
        self._client = client
        self.reuse_workers = reuse_workers
        self._warm: dict[tuple[str, tuple[tuple[str, str], ...]], Any] = {}
        self._lock = threading.Lock()
        self.moved_plugins = self._move_legacy_folders()

    @property
    def client(self) -> Any:
        if self._client is None:
            from sandbox.engine import engine_client

            self._client = engine_client()
        return self._client

    # --- plugins ----------------------------------------------------------------------------

    def _move_legacy_folders(self) -> list[str]:
        """Give plugins stored as ``<name>-<version>`` their tree-hash folder; record it.

        Such a folder is moved only if it holds this plugin's manifest (two plugins could
        share it, and only the one written last is in it); the other plugin's copy then shows
        as missing in `verify_plugins` and must be added again. Returns the moved names.
        """
        with session_scope(self.engine) as session:
            pending = session.exec(select(Plugin).where(col(Plugin.store_dir).is_(None))).first()
        if pending is None:
            return []
        moved = []
        with session_scope(self.engine, write=True) as session:
            rows = session.exec(select(Plugin).where(col(Plugin.store_dir).is_(None))).all()
            for row in sorted(rows, key=lambda r: r.name):
                if not re.match(r"^[0-9a-f]{64}$", row.tree_sha256):
                    continue  # a damaged row: `_stored_path` refuses it when it is used
                safe = re.match(PLUGIN_NAME_RE, row.name) and re.match(
                    PLUGIN_VERSION_RE, row.version
                )
                manifest = (row.manifest_file, row.manifest_sha256)
                if safe and move_legacy_folder(
                    self.plugins_root, row.name, row.version, row.tree_sha256, manifest
                ):
                    moved.append(row.name)
                row.store_dir = row.tree_sha256
                session.add(row)
        return moved

    def _load(self, session: Session, name: str) -> tuple[Plugin, list[PluginFile]] | None:
        row = session.exec(select(Plugin).where(Plugin.name == name)).first()
        if row is None:
            return None
        files = list(session.exec(select(PluginFile).where(PluginFile.plugin_id == row.id)).all())
        return row, files

    def list_plugins(self) -> list[InstalledPlugin]:
        with session_scope(self.engine) as session:
            rows = session.exec(select(Plugin).order_by(col(Plugin.name))).all()
            files: dict[int, list[PluginFile]] = {}
            for f in session.exec(select(PluginFile)).all():
                files.setdefault(f.plugin_id, []).append(f)
            return [
                _plugin_from_rows(r, files.get(r.id or -1, []), self.plugins_root) for r in rows
            ]

    def get_plugin(self, name: str) -> InstalledPlugin:
        with session_scope(self.engine) as session:
            found = self._load(session, name)
            if found is None:
                raise PluginNotFoundError(f"no plugin named {name!r} was added")
            return _plugin_from_rows(*found, self.plugins_root)

    def get_plugins(self, names: Sequence[str]) -> list[InstalledPlugin]:
        return [self.get_plugin(n) for n in names]

    def add_plugin(self, source: Path, *, trust: bool = False, replace: bool = False) -> AddResult:
        """Vet `source`, store a read-only hashed copy and record it; see the module docstring."""
        staged = stage_plugin(Path(source), self.plugins_root)
        trash: Path | None = None
        dest: Path | None = None
        old_dir: Path | None = None
        try:
            m = staged.manifest
            conflicts = requirement_conflicts(m.requirements, base_pins(), "pinned by the image")
            if conflicts:
                raise PluginManifestError(
                    f"plugin {m.name} cannot be added: {'; '.join(conflicts)}",
                    hint="A plugin may add packages to the sandbox, never change a pinned one.",
                )
            with session_scope(self.engine, write=True) as session:
                existing = self._load(session, m.name)
                if existing is not None:
                    row, _ = existing
                    if row.tree_sha256 == staged.tree_sha256 and row.version == m.version:
                        if trust and not row.trusted:
                            row.trusted = True
                            session.add(row)
                        remove_tree(staged.staging)
                        files = self._load(session, m.name)
                        assert files is not None
                        return AddResult(_plugin_from_rows(*files, self.plugins_root), True)
                    if not replace:
                        raise PluginManifestError(
                            f"a plugin named {m.name} is already added (version {row.version}, "
                            "different content)",
                            hint="Pass --replace to swap it for this one, or bump its version.",
                        )
                others = session.exec(select(Plugin).where(Plugin.name != m.name)).all()
                for other in others:
                    pins = dict(r.split("==", 1) for r in other.requirements)
                    conflicts += requirement_conflicts(
                        m.requirements, pins, f"required by plugin {other.name}"
                    )
                if conflicts:
                    raise PluginManifestError(
                        f"plugin {m.name} cannot be added: {'; '.join(conflicts)}",
                        hint="Plugins share one image: their pinned requirements must agree.",
                    )
                dest = store_dir(self.plugins_root, staged.tree_sha256)
                if existing is not None:
                    row, old_files = existing
                    old_dir = _stored_path(self.plugins_root, row)
                    for f in old_files:
                        session.delete(f)
                    session.delete(row)
                    session.flush()
                make_read_only(staged.staging)
                if dest.exists():  # the same version being replaced, or a stale leftover
                    trash = self.plugins_root / f".trash-{staged.staging.name}"
                    os.rename(dest, trash)
                os.rename(staged.staging, dest)
                row = Plugin(
                    name=m.name,
                    version=m.version,
                    entry=m.entry,
                    hooks=list(m.hooks),
                    requirements=list(m.requirements),
                    description=m.description,
                    api_version=m.api,
                    tree_sha256=staged.tree_sha256,
                    manifest_sha256=staged.manifest_sha256,
                    manifest_file=staged.manifest_file,
                    file_count=len(staged.files),
                    total_bytes=staged.total_bytes,
                    trusted=trust,
                    source_path=str(staged.source),
                    store_dir=staged.tree_sha256,
                )
                session.add(row)
                session.flush()
                assert row.id is not None
                file_rows = [
                    PluginFile(plugin_id=row.id, path=f.path, sha256=f.sha256, size=f.size)
                    for f in staged.files
                ]
                session.add_all(file_rows)
                session.flush()
                result = AddResult(
                    _plugin_from_rows(row, file_rows, self.plugins_root),
                    replaced=existing[0].version if existing is not None else None,
                )
        except BaseException:
            if dest is not None and dest.exists() and not staged.staging.exists():
                remove_tree(dest)
                if trash is not None and trash.exists():
                    os.rename(trash, dest)
            remove_tree(staged.staging)
            raise
        if trash is not None:
            remove_tree(trash)
        if old_dir is not None and old_dir != dest:
            remove_tree(old_dir)
        return result

    def remove_plugin(self, name: str) -> InstalledPlugin:
        with session_scope(self.engine, write=True) as session:
            found = self._load(session, name)
            if found is None:
                raise PluginNotFoundError(f"no plugin named {name!r} was added")
            plugin = _plugin_from_rows(*found, self.plugins_root)
            session.delete(found[0])
        remove_tree(plugin.path)
        return plugin

    def set_trusted(self, name: str, trusted: bool) -> InstalledPlugin:
        with session_scope(self.engine, write=True) as session:
            found = self._load(session, name)
            if found is None:
                raise PluginNotFoundError(f"no plugin named {name!r} was added")
            found[0].trusted = trusted
            session.add(found[0])
            return _plugin_from_rows(*found, self.plugins_root)

    def verify_plugins(self, names: Sequence[str] | None = None) -> list[PluginCheck]:
        plugins = self.get_plugins(names) if names else self.list_plugins()
        checks = []
        for p in plugins:
            try:
                verify_installed(p)
                checks.append(PluginCheck(p.name, p.version, True))
            except PluginTamperedError as exc:
                checks.append(PluginCheck(p.name, p.version, False, tuple(exc.problems)))
        return checks

    def required_requirements(self, plugins: Sequence[InstalledPlugin] | None = None) -> list[str]:
        plugins = self.list_plugins() if plugins is None else plugins
        return sorted({r for p in plugins for r in p.requirements})

    @staticmethod
    def required_sets(plugins: Sequence[InstalledPlugin]) -> dict[str, list[str]]:
        """Each plugin requirement set the image must hold, by key (`requirements_key`)."""
        return {p.deps_key: sorted(p.requirements) for p in plugins if p.deps_key is not None}

    # --- the image ----------------------------------------------------------------------------

    def record_image(self, record: ImageRecord) -> None:
        """Store `record` in the catalog (insert, or refresh the row of the same image id)."""
        with session_scope(self.engine, write=True) as session:
            row = session.get(SandboxImage, record.image_id)
            if row is None:
                row = SandboxImage(
                    image_id=record.image_id,
                    tag=record.tag,
                    lock_sha256=record.lock_sha256,
                    torch_variant=record.torch_variant,
                    app_version=record.app_version,
                    worker_sha256=record.worker_sha256,
                    inputs_sha256=record.inputs_sha256,
                    built_at=record.created_at,
                    record_json="",
                )
            row.tag = record.tag
            row.layer_diff_ids = list(record.layer_diff_ids)
            row.lock_sha256 = record.lock_sha256
            row.rootfs_sha256 = record.rootfs_sha256
            row.torch_variant = record.torch_variant
            row.app_version = record.app_version
            row.worker_sha256 = record.worker_sha256
            row.inputs_sha256 = record.inputs_sha256
            row.plugin_requirements = list(record.plugin_requirements)
            row.plugin_requirements_sha256 = record.plugin_requirements_sha256
            row.size_bytes = record.size_bytes
            row.built_at = record.created_at
            row.recorded_at = datetime.now(UTC)
            row.record_json = record.model_dump_json()
            session.add(row)

    def catalog_record(self, image_id: str) -> ImageRecord | None:
        with session_scope(self.engine) as session:
            row = session.get(SandboxImage, image_id)
            return None if row is None else ImageRecord.model_validate_json(row.record_json)

    def load_image(self) -> ImageRecord:
        """The current image record (JSON file), cross-checked with (or added to) the catalog."""
        record = load_record(self.record_path)
        stored = self.catalog_record(record.image_id)
        if stored is None:
            self.record_image(record)  # built by scripts/build-sandbox-image, say
        elif _identity(stored) != _identity(record):
            raise ImageMismatchError(
                f"the image record {self.record_path} and the catalog disagree about image "
                f"{record.image_id[:19]}"
            )
        return record

    def build(
        self,
        *,
        torch_variant: Literal["cpu", "cuda"] = "cpu",
        offline: bool = False,
        force: bool = False,
        progress: Any = None,
        cancel: threading.Event | None = None,
        find_links: Sequence[Path] = (),
        no_index: bool = False,
    ) -> ImageRecord:
        """Build (or reuse) the image with every added plugin's requirements; record it."""
        from sandbox.image.build import build_image

        record = build_image(
            client=self.client,
            cache_dir=self.cache_dir,
            record_path=self.record_path,
            torch_variant=torch_variant,
            offline=offline,
            force=force,
            progress=progress,
            cancel=cancel,
            plugin_requirement_sets=[p.requirements for p in self.list_plugins()],
            find_links=list(find_links),
            no_index=no_index,
        )
        self.record_image(record)
        return record

    def image_status(self, *, check_engine: bool = True) -> ImageStatus:
        from assetmgr import __version__
        from sandbox.image.build import worker_digest

        status = ImageStatus(record_path=self.record_path, record=None)
        status.added_plugins = self.list_plugins()
        status.required = self.required_requirements(status.added_plugins)
        try:
            record = load_record(self.record_path)
        except ImageError as exc:
            status.record_problem = exc.message
            status.stale_reasons.append("no sandbox image has been built")
            return status
        status.record = record
        status.in_image = sorted(record.plugin_requirements)
        status.required_sets = self.required_sets(status.added_plugins)
        status.in_image_sets = dict(record.plugin_dep_sets)
        stored = self.catalog_record(record.image_id)
        if stored is None:
            self.record_image(record)
            stored = record
        status.in_catalog = True
        if _identity(stored) != _identity(record):
            status.stale_reasons.append("the image record file and the catalog disagree")
        status.worker_current = record.worker_sha256 == worker_digest()
        if not status.worker_current:
            status.stale_reasons.append("the worker code changed since the image was built")
        status.app_current = record.app_version == __version__
        if not status.app_current:
            status.stale_reasons.append(
                f"built by assetmgr {record.app_version}, this is {__version__}"
            )
        if status.missing_from_image:
            status.stale_reasons.append(
                "added plugins need wheels the image lacks: " + ", ".join(status.missing_from_image)
            )
        if status.unused_in_image:
            status.stale_reasons.append(
                "the image holds wheels of removed plugins: " + ", ".join(status.unused_in_image)
            )
        if check_engine:
            from sandbox.image.record import verify_image

            try:
                verify_image(record, self.client)
                status.engine_reachable = status.engine_matches = True
            except EngineUnavailableError as exc:
                status.engine_reachable = False
                status.engine_problem = exc.message
            except ImageError as exc:
                status.engine_reachable = True
                status.engine_matches = False
                status.engine_problem = exc.message
                status.stale_reasons.append("the engine's image does not match the record")
        return status

    def prune(self, *, include_running: bool = False, models: bool = False) -> dict[str, list[str]]:
        from sandbox.image.build import prune_images
        from sandbox.prune import prune, prune_plugin_copies

        report = prune(self.client, include_running=include_running, models=models)
        copies = prune_plugin_copies(self.client, self.plugins_root)
        keep = ""
        try:
            keep = load_record(self.record_path).image_id
        except ImageError:
            pass
        images = prune_images(self.client, keep) if keep else []
        return {
            "containers": report.containers,
            "volumes": report.volumes,
            "model_volumes": report.model_volumes,
            "plugin_volumes": report.plugin_volumes,
            "compile_caches": report.compile_caches,
            "plugin_copies": copies,
            "images": images,
        }

    # --- running --------------------------------------------------------------------------

    def execution_mode(self, plugins: Sequence[InstalledPlugin], mode: RunMode = "auto") -> str:
        """``per-job`` or ``warm``: untrusted plugin sets never share a container."""
        untrusted = [p.name for p in plugins if not p.trusted]
        if mode == "per-job":
            return "per-job"
        if mode == "warm":
            if untrusted:
                raise PluginError(
                    f"untrusted plugins never share a warm worker: {', '.join(untrusted)}",
                    hint="Add them with `assetmgr plugins add --trust DIR` if you trust them.",
                )
            return "warm"
        return "warm" if self.reuse_workers and not untrusted else "per-job"

    def make_spec(
        self,
        kind: str,
        params: Mapping[str, Any],
        plugins: Sequence[InstalledPlugin] = (),
        *,
        limits: Limits | None = None,
        models: Sequence[ModelRef] = (),
    ) -> JobSpec:
        from sandbox.runner import new_job_id, new_nonce

        return JobSpec(
            job_id=new_job_id(),
            nonce=new_nonce(),
            kind=kind,
            params=dict(params),
            models=list(models),
            plugins=[p.ref() for p in plugins],
            limits=limits or Limits(),
        )

    def run(
        self,
        kind: str,
        params: Mapping[str, Any],
        output_dir: Path,
        *,
        plugins: Sequence[str] = (),
        limits: Limits | None = None,
        models: Sequence[ModelRef] = (),
        model_files: Mapping[str, Path] | None = None,
        mode: RunMode = "auto",
        gpus: Any = "auto",
        on_message: Any = None,
        cancel: threading.Event | None = None,
        image: ImageRecord | None = None,
    ) -> Any:
        """Run one job with the named plugins (in that order); returns a `JobResult`."""
        from sandbox.runner import run_job

        installed = self.get_plugins(plugins)
        try:  # early, clear refusal; the runner checks again right before start
            for p in installed:
                verify_installed(p)
        except PluginTamperedError:
            self._close_workers_using({p.name for p in installed})
            raise
        record = image or self.load_image()
        spec = self.make_spec(kind, params, installed, limits=limits, models=models)
        if self.execution_mode(installed, mode) == "per-job":
            return run_job(
                spec,
                image=record,
                output_dir=output_dir,
                models=model_files,
                client=self.client,
                gpus=gpus,
                on_message=on_message,
                cancel=cancel,
                plugins=installed,
            )
        worker = self._warm_worker(record, installed, spec, model_files, gpus)
        return worker.run(spec, output_dir, on_message=on_message, cancel=cancel)

    def _warm_worker(
        self,
        record: ImageRecord,
        plugins: Sequence[InstalledPlugin],
        spec: JobSpec,
        model_files: Mapping[str, Path] | None,
        gpus: Any,
    ) -> Any:
        from sandbox.warm import WarmWorker

        key = (record.image_id, tuple(sorted((p.name, p.tree_sha256) for p in plugins)))
        with self._lock:
            worker = self._warm.get(key)
            if worker is None or worker.models != list(spec.models):
                if worker is not None:
                    worker.close()
                worker = WarmWorker(
                    record,
                    client=self.client,
                    limits=spec.limits,
                    models=spec.models,
                    model_files=model_files,
                    gpus=gpus,
                    plugins=plugins,
                )
                self._warm[key] = worker
            return worker

    def _close_workers_using(self, names: set[str]) -> None:
        with self._lock:
            doomed = [k for k in self._warm if names & {name for name, _ in k[1]}]
            workers = [self._warm.pop(k) for k in doomed]
        for w in workers:
            w.close()

    def close(self) -> None:
        with self._lock:
            workers, self._warm = list(self._warm.values()), {}
        for w in workers:
            w.close()


def _identity(record: ImageRecord) -> tuple[Any, ...]:
    return (
        record.image_id,
        tuple(record.layer_diff_ids),
        record.lock_sha256,
        record.rootfs_sha256,
        record.inputs_sha256,
        tuple(record.plugin_requirements),
        tuple(sorted(record.plugin_dep_sets)),
    )


__all__ = [
    "AddResult",
    "ImageStatus",
    "PluginCheck",
    "RunMode",
    "SandboxService",
    "SandboxError",
    "default_cache_dir",
    "default_record_path",
]
