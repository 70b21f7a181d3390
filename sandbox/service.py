"""The sandbox as the CLI and the TUI use it: plugins, the image, running jobs.

`SandboxService` ties together the pieces that stay independent elsewhere:

* plugins: `add_plugin` vets a directory (`sandbox.plugins.stage_plugin`), refuses
  requirement conflicts with the image's pins and with other plugins, moves the read-only copy
  into ``<plugins dir>/<tree sha256>/`` and records it with every file's sha256 and its folder
  (through the `SandboxRegistry` it was given); `verify_plugins` checks each stored copy is
  exactly its recorded files. Copies stored under the old ``<name>-<version>`` names (which
  two plugins could share) are moved to their tree-hash folders when the service opens;
* the image: `build` passes every added plugin's requirements to `build_image` (so the
  hash-locked wheelhouse includes them), and records the `ImageRecord` in the registry as well
  as in the JSON record file; `image_status` says whether the image is missing, changed on the
  engine, or stale (worker code, app version, plugin requirements);
* runs: `run` builds the `JobSpec` with the plugins' refs and picks the container strategy:
  a one-shot container per job unless every plugin of the set is trusted and worker reuse is
  on, in which case a `WarmWorker` serves the jobs: one at a time, kept for its (image, plugin
  set) and model files, closed after `warm_idle_s` unused (`sandbox.warm_pool`). Every run
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
from pathlib import Path
from typing import Any, Literal

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
    StagedPlugin,
    base_pins,
    make_read_only,
    remove_tree,
    requirement_conflicts,
    stage_plugin,
)
from sandbox.protocol import PLUGIN_NAME_RE, PLUGIN_VERSION_RE, JobSpec, Limits, ModelRef
from sandbox.registry import PluginFileRecord, PluginRecord, SandboxRegistry
from sandbox.status import ImageStatus
from sandbox.warm_pool import WarmPool

RunMode = Literal["auto", "per-job", "warm"]


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


def _plugin_from_record(record: PluginRecord, root: Path) -> InstalledPlugin:
    return InstalledPlugin(
        name=record.name,
        version=record.version,
        entry=record.entry,
        hooks=record.hooks,
        requirements=record.requirements,
        tree_sha256=record.tree_sha256,
        trusted=record.trusted,
        path=_stored_path(root, record),
        files={f.path: f.sha256 for f in record.files},
        description=record.description,
        added_at=record.added_at,
    )


def _stored_path(root: Path, record: PluginRecord) -> Path:
    """The stored copy's folder; the registry's string is re-checked before use as a path."""
    try:
        return store_dir(root, record.store_dir or record.tree_sha256)
    except PluginManifestError:
        raise PluginError(
            f"the registry holds an invalid folder for plugin {record.name!r}: {record.store_dir!r}"
        ) from None


def _same_plugin(record: PluginRecord, staged: StagedPlugin) -> bool:
    return record.tree_sha256 == staged.tree_sha256 and record.version == staged.manifest.version


def _record_of(staged: StagedPlugin, *, trusted: bool) -> PluginRecord:
    m = staged.manifest
    return PluginRecord(
        name=m.name,
        version=m.version,
        entry=m.entry,
        hooks=tuple(m.hooks),
        requirements=tuple(m.requirements),
        description=m.description,
        api_version=m.api,
        tree_sha256=staged.tree_sha256,
        manifest_sha256=staged.manifest_sha256,
        manifest_file=staged.manifest_file,
        file_count=len(staged.files),
        total_bytes=staged.total_bytes,
        trusted=trusted,
        source_path=str(staged.source),
        store_dir=staged.tree_sha256,
        files=tuple(PluginFileRecord(f.path, f.sha256, f.size) for f in staged.files),
    )


class SandboxService:
    """Plugins, the image and jobs; paths, the app version and the registry are given."""

    def __init__(
        self,
        registry: SandboxRegistry,
        *,
        plugins_root: Path,
        record_path: Path,
        cache_dir: Path,
        app_version: str,
        client: Any = None,
        reuse_workers: bool = False,
        warm_idle_s: float | None = None,
        model_transport: str = "auto",
    ) -> None:
        self.registry = registry
        self.plugins_root = plugins_root
        self.record_path = record_path
        self.cache_dir = cache_dir
        self.app_version = app_version
        self._client = client
        self.reuse_workers = reuse_workers
        self.model_transport = model_transport
        self.warm_pool = WarmPool(warm_idle_s)
        self._warm = self.warm_pool.workers
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
        moved = []
        for record in self.registry.plugins():
            if record.store_dir is not None:
                continue
            if not re.match(r"^[0-9a-f]{64}$", record.tree_sha256):
                continue  # a damaged record: `_stored_path` refuses it when it is used
            safe = re.match(PLUGIN_NAME_RE, record.name) and re.match(
                PLUGIN_VERSION_RE, record.version
            )
            manifest = (record.manifest_file, record.manifest_sha256)
            if safe and move_legacy_folder(
                self.plugins_root, record.name, record.version, record.tree_sha256, manifest
            ):
                moved.append(record.name)
            self.registry.set_store_dir(record.name, record.tree_sha256)
        return moved

    def list_plugins(self) -> list[InstalledPlugin]:
        return [_plugin_from_record(r, self.plugins_root) for r in self.registry.plugins()]

    def get_plugin(self, name: str) -> InstalledPlugin:
        found = self.registry.plugin(name)
        if found is None:
            raise PluginNotFoundError(f"no plugin named {name!r} was added", plugin=name)
        return _plugin_from_record(found, self.plugins_root)

    def get_plugins(self, names: Sequence[str]) -> list[InstalledPlugin]:
        return [self.get_plugin(n) for n in names]

    def add_plugin(self, source: Path, *, trust: bool = False, replace: bool = False) -> AddResult:
        """Vet `source`, store a read-only hashed copy and record it; see the module docstring."""
        staged = stage_plugin(Path(source), self.plugins_root)
        try:
            m = staged.manifest
            conflicts = requirement_conflicts(m.requirements, base_pins(), "pinned by the image")
            if conflicts:
                raise PluginManifestError(
                    f"plugin {m.name} cannot be added: {'; '.join(conflicts)}",
                    reason="conflicts-image-pins",
                )
            existing = self.registry.plugin(m.name)
            if existing is not None and _same_plugin(existing, staged):
                return self._add_again(existing, staged, trust)
            self._refuse_conflicts(staged, existing, replace)
        except BaseException:
            remove_tree(staged.staging)
            raise
        return self._store(staged, existing, trust)

    def _add_again(self, existing: PluginRecord, staged: StagedPlugin, trust: bool) -> AddResult:
        """The same plugin added again: nothing to store; ``--trust`` still applies."""
        if trust and not existing.trusted:
            existing = self.registry.set_trusted(existing.name, True) or existing
        remove_tree(staged.staging)
        return AddResult(_plugin_from_record(existing, self.plugins_root), True)

    def _refuse_conflicts(
        self, staged: StagedPlugin, existing: PluginRecord | None, replace: bool
    ) -> None:
        m = staged.manifest
        if existing is not None and not replace:
            raise PluginManifestError(
                f"a plugin named {m.name} is already added (version {existing.version}, "
                "different content)",
                reason="already-added",
            )
        conflicts: list[str] = []
        for other in self.registry.plugins():
            if other.name != m.name:
                pins = dict(r.split("==", 1) for r in other.requirements)
                conflicts += requirement_conflicts(
                    m.requirements, pins, f"required by plugin {other.name}"
                )
        if conflicts:
            raise PluginManifestError(
                f"plugin {m.name} cannot be added: {'; '.join(conflicts)}",
                reason="conflicts-plugin",
            )

    def _store(self, staged: StagedPlugin, existing: PluginRecord | None, trust: bool) -> AddResult:
        """Move the staged copy to its tree-hash folder and record it; undo both on failure."""
        trash: Path | None = None
        dest: Path | None = None
        old_dir: Path | None = None
        try:
            dest = store_dir(self.plugins_root, staged.tree_sha256)
            if existing is not None:
                old_dir = _stored_path(self.plugins_root, existing)
            make_read_only(staged.staging)
            if dest.exists():  # the same version being replaced, or a stale leftover
                trash = self.plugins_root / f".trash-{staged.staging.name}"
                os.rename(dest, trash)
            os.rename(staged.staging, dest)
            stored = self.registry.put_plugin(_record_of(staged, trusted=trust))
            result = AddResult(
                _plugin_from_record(stored, self.plugins_root),
                replaced=existing.version if existing is not None else None,
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
        found = self.registry.plugin(name)
        if found is None:
            raise PluginNotFoundError(f"no plugin named {name!r} was added", plugin=name)
        plugin = _plugin_from_record(found, self.plugins_root)
        self.registry.remove_plugin(name)
        remove_tree(plugin.path)
        return plugin

    def set_trusted(self, name: str, trusted: bool) -> InstalledPlugin:
        found = self.registry.set_trusted(name, trusted)
        if found is None:
            raise PluginNotFoundError(f"no plugin named {name!r} was added", plugin=name)
        return _plugin_from_record(found, self.plugins_root)

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
        """Store `record` in the registry (insert, or refresh the one of the same image id)."""
        self.registry.put_image(record)

    def catalog_record(self, image_id: str) -> ImageRecord | None:
        """The registry's record of this image, if any."""
        found = self.registry.image_record(image_id)
        return None if found is None else ImageRecord.model_validate_json(found)

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
            app_version=self.app_version,
            plugin_requirement_sets=[p.requirements for p in self.list_plugins()],
            find_links=list(find_links),
            no_index=no_index,
        )
        self.record_image(record)
        return record

    def image_status(self, *, check_engine: bool = True) -> ImageStatus:
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
        status.app_current = record.app_version == self.app_version
        if not status.app_current:
            status.stale_reasons.append(
                f"built by assetmgr {record.app_version}, this is {self.app_version}"
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
                    reason="untrusted-warm",
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
        warm_models: Sequence[ModelRef] = (),
        warm_model_files: Mapping[str, Path] | None = None,
    ) -> Any:
        """Run one job with the named plugins (in that order); returns a `JobResult`.

        `warm_models` (with their `warm_model_files`) are mounted too when a warm worker has to
        start for this job, so that the later jobs of a batch that need them find them there.
        """
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
                transport=self.model_transport,
            )
        mounted = [*spec.models, *(m for m in warm_models if m not in spec.models)]
        files = {**(warm_model_files or {}), **(model_files or {})}
        return self._run_warm(
            record, installed, spec, (mounted, files), gpus, output_dir, on_message, cancel
        )

    @property
    def warm_idle_s(self) -> float | None:
        """Seconds an unused warm worker is kept (None: until `close`)."""
        return self.warm_pool.idle_s

    @warm_idle_s.setter
    def warm_idle_s(self, value: float | None) -> None:
        self.warm_pool.idle_s = value

    def _run_warm(
        self,
        record: ImageRecord,
        plugins: Sequence[InstalledPlugin],
        spec: JobSpec,
        mounts: tuple[Sequence[ModelRef], Mapping[str, Path]],
        gpus: Any,
        output_dir: Path,
        on_message: Any,
        cancel: threading.Event | None,
    ) -> Any:
        """The job on the warm worker of its (image, plugin set), started if none serves it
        (with `mounts`: the job's model files and any the later jobs of its batch need)."""
        from sandbox.warm import WarmWorker

        models, model_files = mounts

        def start() -> WarmWorker:
            return WarmWorker(
                record,
                client=self.client,
                limits=spec.limits,
                models=models,
                model_files=model_files,
                gpus=gpus,
                plugins=plugins,
                transport=self.model_transport,
            )

        key = (record.image_id, tuple(sorted((p.name, p.tree_sha256) for p in plugins)))
        return self.warm_pool.run(
            key,
            spec,
            {m.name: model_files[m.name] for m in spec.models if m.name in model_files},
            start,
            lambda worker: worker.run(spec, output_dir, on_message=on_message, cancel=cancel),
            cancel,
        )

    def _close_workers_using(self, names: set[str]) -> None:
        self.warm_pool.close_where(lambda key: bool(names & {name for name, _ in key[1]}))

    def close(self) -> None:
        """Remove the warm worker, if any (the service stays usable)."""
        self.warm_pool.close()


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
]
