"""What the TUI calls to do work, behind small interfaces it can swap in tests.

No Textual here. Every long operation takes a progress callback and a cancel `Event`, like the
store and sync services it wraps; the TUI's thread workers turn callbacks into messages.

* `Services` bundles the engine, settings, blob store, a lazily built Civitai client, and the
  generation and sandbox services.
* `GenerationService` and `SandboxInfoService` are protocols: the Generate and Sandbox screens
  only see them. `SandboxGeneration` and `SandboxStatusInfo` implement them over
  `assetmgr.generation` and `sandbox.service.SandboxService` (the CLI's code paths); where a
  piece is missing (no image built, no Docker engine) they say so (`ServiceState`) instead of
  pretending.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from assetmgr import paths
from assetmgr.config import Settings
from assetmgr.errors import EXPECTED_ERRORS, AssetMgrError
from sandbox.protocol.jobspec import LISTED_NAMES

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from assetmgr.generate_checks import BaseModelMismatchError, GenerationWarning
    from assetmgr.generation import GenerateRequest
    from assetmgr.store.blobs import BlobStore
    from assetmgr.store.service import StoreService
    from assetmgr.tui.queries import LocalModel
    from catalog.civitai.client import CivitaiClient

log = logging.getLogger(__name__)

SAMPLERS: tuple[str, ...] = LISTED_NAMES
"""The sampler names the job contract accepts, in A1111's order (`sandbox.protocol.jobspec`)."""


@dataclass(frozen=True)
class ServiceState:
    """Whether a service can run, and if not, why (shown verbatim as "not available: …")."""

    available: bool
    reason: str = ""
    note: str = ""
    """A warning while available (say, the image is stale)."""


# --- generation ------------------------------------------------------------------------------


@dataclass(frozen=True)
class LoraChoice:
    model: LocalModel
    weight: float = 1.0


@dataclass(frozen=True)
class GenerationRequest:
    """Everything the Generate screen collects; the service turns it into a sandbox job."""

    prompt: str
    checkpoint: LocalModel | None
    negative_prompt: str = ""
    loras: tuple[LoraChoice, ...] = ()
    sampler: str = "Euler a"
    steps: int = 20
    cfg_scale: float = 7.0
    seed: int = 0
    width: int = 512
    height: int = 512
    plugins: tuple[str, ...] = ()
    allow_mismatch: bool = False
    """Run LoRAs made for another base model than the checkpoint's (the user confirmed)."""

    def summary(self) -> dict[str, Any]:
        """A JSON-safe record of the request (for the run history)."""
        return {
            "prompt": self.prompt,
            "negative_prompt": self.negative_prompt,
            "checkpoint": asdict(self.checkpoint) if self.checkpoint else None,
            "loras": [{"model": asdict(c.model), "weight": c.weight} for c in self.loras],
            "sampler": self.sampler,
            "steps": self.steps,
            "cfg_scale": self.cfg_scale,
            "seed": self.seed,
            "width": self.width,
            "height": self.height,
            "plugins": list(self.plugins),
        }

    @classmethod
    def from_summary(cls, data: dict[str, Any]) -> GenerationRequest:
        from assetmgr.tui.queries import LocalModel

        def local(raw: dict[str, Any] | None) -> LocalModel | None:
            if raw is None:
                return None
            raw = dict(raw)
            raw["trained_words"] = tuple(raw.get("trained_words") or ())
            return LocalModel(**raw)

        loras = []
        for item in data.get("loras", []):
            model = local(item["model"])
            if model is not None:
                loras.append(LoraChoice(model, float(item.get("weight", 1.0))))
        return cls(
            prompt=str(data.get("prompt", "")),
            checkpoint=local(data.get("checkpoint")),
            negative_prompt=str(data.get("negative_prompt", "")),
            loras=tuple(loras),
            sampler=str(data.get("sampler", "Euler a")),
            steps=int(data.get("steps", 20)),
            cfg_scale=float(data.get("cfg_scale", 7.0)),
            seed=int(data.get("seed", 0)),
            width=int(data.get("width", 512)),
            height=int(data.get("height", 512)),
            plugins=tuple(data.get("plugins", ())),
        )


@dataclass(frozen=True)
class GenerationCheck:
    """What the check before a run found (`GenerationService.check`); nothing ran.

    `problems` stop the run; `mismatch` is a LoRA for another base model, which the user may
    confirm (the run then has `allow_mismatch`); `warnings` go along with the run.
    """

    problems: list[Exception] = field(default_factory=list)
    mismatch: BaseModelMismatchError | None = None
    warnings: list[GenerationWarning] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems and self.mismatch is None


@dataclass(frozen=True)
class GenerationProgress:
    stage: str
    fraction: float | None = None
    step: int | None = None
    total: int | None = None


@dataclass(frozen=True)
class GenerationResult:
    run_id: str
    images: tuple[Path, ...]
    seed: int
    elapsed_s: float
    info: str = ""


@dataclass(frozen=True)
class RunRecord:
    """One generation in the history (newest first in `GenerationService.history`)."""

    run_id: str
    created_at: datetime
    request: dict[str, Any]
    images: tuple[Path, ...] = ()
    status: str = "done"
    error: str | None = None

    @property
    def label(self) -> str:
        prompt = str(self.request.get("prompt", "")).replace("\n", " ")
        when = self.created_at.astimezone().strftime("%Y-%m-%d %H:%M")
        return f"{when}  seed {self.request.get('seed')}  {self.status}  {prompt[:60]}"


ProgressFn = Callable[[GenerationProgress], None]


class GenerationService(Protocol):
    """What the Generate screen needs from the sandbox."""

    def state(self) -> ServiceState: ...

    def samplers(self) -> Sequence[str]: ...

    def plugins(self) -> Sequence[tuple[str, str]]:
        """Selectable plugins as (name, sha256)."""
        ...

    def check(self, request: GenerationRequest) -> GenerationCheck:
        """The request checked as `generate` would, before anything runs."""
        ...

    def generate(
        self,
        request: GenerationRequest,
        *,
        progress: ProgressFn | None = None,
        cancel: threading.Event | None = None,
    ) -> GenerationResult: ...

    def history(self) -> list[RunRecord]: ...

    def rerun(
        self,
        run_id: str,
        *,
        progress: ProgressFn | None = None,
        cancel: threading.Event | None = None,
    ) -> GenerationResult: ...


class SandboxGeneration:
    """`GenerationService` over `assetmgr.generation` and `sandbox.service.SandboxService`.

    The prompt carries the LoRAs as ``<lora:NAME:W>`` tags, which `assetmgr.generation`
    resolves to verified local files by alias, exactly as the CLI does; runs are recorded in
    the catalog (`catalog.runs.GenerationRun`), so the history is shared with `assetmgr runs`.
    """

    def __init__(self, engine: Engine, store: BlobStore, sandbox: Any = None) -> None:
        self.engine = engine
        self.store = store
        self._sandbox = sandbox
        self._lock = threading.Lock()

    @property
    def sandbox(self) -> Any:
        with self._lock:
            if self._sandbox is None:
                from assetmgr.context import open_sandbox_service

                self._sandbox = open_sandbox_service(Settings.load(), self.engine)
            return self._sandbox

    def state(self) -> ServiceState:
        try:
            status = self.sandbox.image_status(check_engine=True)
        except EXPECTED_ERRORS as exc:
            return ServiceState(False, str(exc))
        if status.record is None:
            problem = status.record_problem or "no sandbox image has been built"
            return ServiceState(False, f"{problem} (run `assetmgr sandbox build`)")
        if status.engine_reachable is False:
            return ServiceState(
                False, f"the Docker engine is not reachable: {status.engine_problem}"
            )
        if status.engine_matches is False:
            return ServiceState(False, f"{status.engine_problem} (run `assetmgr sandbox build`)")
        if status.stale:
            return ServiceState(True, note="image is stale: " + "; ".join(status.stale_reasons))
        return ServiceState(True)

    def samplers(self) -> Sequence[str]:
        return list(SAMPLERS)

    def plugins(self) -> Sequence[tuple[str, str]]:
        try:
            return [(p.name, p.tree_sha256) for p in self.sandbox.list_plugins()]
        except EXPECTED_ERRORS:
            return []

    def history(self) -> list[RunRecord]:
        from sqlalchemy import select
        from sqlmodel import Session, col

        from catalog.runs import GenerationRun

        with Session(self.engine) as session:
            rows = session.execute(
                select(GenerationRun).order_by(col(GenerationRun.id).desc()).limit(100)
            ).scalars()
            return [
                RunRecord(
                    run_id=str(r.id),
                    created_at=r.created_at,
                    request=dict(r.spec),
                    images=tuple(Path(o["path"]) for o in r.outputs if o.get("path")),
                    status="done" if r.status == "ok" else r.status,
                    error=r.error,
                )
                for r in rows
            ]

    def _on_message(self, progress: ProgressFn | None) -> Callable[[Any], None] | None:
        if progress is None:
            return None

        def on_message(message: Any) -> None:
            if getattr(message, "type", "") == "progress":
                progress(
                    GenerationProgress(message.stage, message.fraction, message.step, message.total)
                )

        return on_message

    @staticmethod
    def _request(request: GenerationRequest) -> GenerateRequest:
        from assetmgr.generation import GenerateRequest

        if request.checkpoint is None:
            raise AssetMgrError(
                "no checkpoint selected",
                hint="Pull a checkpoint, then pick it on this screen.",
                title="Sandbox error",
            )
        # LoRAs travel as <lora:NAME:W> tags in the prompt, resolved by `build_spec`.
        return GenerateRequest(
            model=str(request.checkpoint.version_id),
            prompt=request.prompt,
            negative=request.negative_prompt,
            steps=request.steps,
            cfg=request.cfg_scale,
            seed=request.seed,
            width=request.width,
            height=request.height,
            sampler=request.sampler,
            plugins=list(request.plugins),
            allow_mismatch=request.allow_mismatch,
        )

    def check(self, request: GenerationRequest) -> GenerationCheck:
        """`request_problems` and `build_spec`, the CLI's checks; nothing runs."""
        from assetmgr.generate_checks import BaseModelMismatchError, request_problems
        from assetmgr.generation import build_spec
        from catalog.db import session_scope

        try:
            req = self._request(request)
            problems: list[Exception] = list(request_problems(req))
            if problems:
                return GenerationCheck(problems=problems)
            with session_scope(self.engine) as session:
                plan = build_spec(session, self.store, req)
        except BaseModelMismatchError as exc:
            return GenerationCheck(mismatch=exc)
        except EXPECTED_ERRORS as exc:
            return GenerationCheck(problems=[exc])
        return GenerationCheck(warnings=plan.warnings)

    def generate(
        self,
        request: GenerationRequest,
        *,
        progress: ProgressFn | None = None,
        cancel: threading.Event | None = None,
    ) -> GenerationResult:
        from assetmgr.generation import build_spec, run_generation
        from catalog.db import session_scope

        started = time.monotonic()
        req = self._request(request)
        with session_scope(self.engine) as session:
            plan = build_spec(session, self.store, req)
        out_dir = paths.runs_dir() / datetime.now(UTC).strftime("tui-%Y%m%d-%H%M%S-%f")
        record = run_generation(
            self.engine,
            self.store,
            self.sandbox,
            plan.spec,
            plan.mounts,
            plan.models,
            plugins=list(request.plugins),
            out_dir=out_dir,
            timeout_s=req.timeout_s,
            on_message=self._on_message(progress),
            cancel=cancel,
        )
        images = tuple(Path(o["path"]) for o in record.outputs)
        return GenerationResult(
            str(record.run_id), images, request.seed, time.monotonic() - started
        )

    def rerun(
        self,
        run_id: str,
        *,
        progress: ProgressFn | None = None,
        cancel: threading.Event | None = None,
    ) -> GenerationResult:
        from assetmgr.generation import rerun

        started = time.monotonic()
        out_dir = paths.runs_dir() / f"rerun-{run_id}-{datetime.now(UTC):%Y%m%d-%H%M%S}"
        record = rerun(
            self.engine,
            self.store,
            self.sandbox,
            int(run_id),
            out_dir=out_dir,
            on_message=self._on_message(progress),
        )
        verdict = "identical bytes" if record.identical else "DIFFERENT bytes"
        return GenerationResult(
            str(record.run_id),
            tuple(Path(o["path"]) for o in record.outputs),
            int(record.spec.get("seed", 0)),
            time.monotonic() - started,
            info=f"rerun of run {run_id}: {verdict}",
        )

    def close(self) -> None:
        if self._sandbox is not None:
            self._sandbox.close()


# --- the sandbox screen ----------------------------------------------------------------------


@dataclass(frozen=True)
class PluginInfo:
    name: str
    version: str
    sha256: str
    trusted: bool = False
    requirements: tuple[str, ...] = ()


@dataclass(frozen=True)
class SandboxInfo:
    """What the Sandbox screen shows; each part has a note when it is missing or partial."""

    image: dict[str, str] | None
    image_note: str
    plugins: list[PluginInfo] = field(default_factory=list)
    plugins_note: str = ""
    warm_workers: list[dict[str, str]] = field(default_factory=list)
    warm_note: str = ""


class SandboxInfoService(Protocol):
    def info(self) -> SandboxInfo: ...


class SandboxStatusInfo:
    """`SandboxInfoService` over `sandbox.service.SandboxService.image_status` and Docker."""

    def __init__(self, generation: SandboxGeneration) -> None:
        self.generation = generation

    def info(self) -> SandboxInfo:
        try:
            status = self.generation.sandbox.image_status(check_engine=True)
        except EXPECTED_ERRORS as exc:
            return SandboxInfo(None, f"not available: {exc}")
        image: dict[str, str] | None = None
        record = status.record
        if record is None:
            note = f"not available: {status.record_problem} (run `assetmgr sandbox build`)"
        else:
            image = {
                "tag": record.tag,
                "image id": record.image_id,
                "torch": record.torch_variant,
                "app version": record.app_version,
                "lock sha256": record.lock_sha256,
                "worker sha256": record.worker_sha256,
                "rootfs sha256": record.rootfs_sha256 or "(digest-pinned base)",
                "base": record.base_ref,
                "layers": str(len(record.layer_diff_ids)),
                "size": f"{record.size_bytes / 2**20:.0f} MiB",
                "built": record.created_at.isoformat(timespec="seconds"),
                "plugin wheels": ", ".join(record.plugin_requirements) or "none",
                "record": str(status.record_path),
            }
            if status.engine_reachable is False:
                note = f"recorded, not checked: {status.engine_problem}"
            elif status.engine_matches is False:
                note = f"MISMATCH: {status.engine_problem}"
            else:
                note = "verified: the engine holds exactly the recorded image"
            if status.stale:
                note += " · stale: " + "; ".join(status.stale_reasons)
        plugins = [
            PluginInfo(p.name, p.version, p.tree_sha256, p.trusted, tuple(p.requirements))
            for p in status.added_plugins
        ]
        plugins_note = "" if plugins else "no plugins added (`assetmgr plugins add DIR`)"
        workers: list[dict[str, str]] = []
        if status.engine_reachable is False:
            warm_note = f"not available: {status.engine_problem}"
        else:
            try:
                from sandbox.runner import LABEL_ROLE

                client = self.generation.sandbox.client
                for container in client.containers.list(
                    filters={"label": f"{LABEL_ROLE}=warm-worker"}
                ):
                    workers.append(
                        {
                            "name": str(container.name),
                            "status": str(container.status),
                            "id": str(container.short_id),
                            "image": str(container.attrs.get("Image", ""))[:19],
                        }
                    )
                warm_note = "" if workers else "no warm worker is running"
            except Exception as exc:  # docker raises many unrelated types
                warm_note = f"not available: cannot list containers: {exc}"
        return SandboxInfo(image, note, plugins, plugins_note, workers, warm_note)


# --- the bundle ------------------------------------------------------------------------------


class Services:
    """Everything the TUI's workers call; built from `Settings`, or handed in by tests."""

    def __init__(
        self,
        settings: Settings,
        engine: Engine,
        *,
        store: BlobStore | None = None,
        client_factory: Callable[[], CivitaiClient] | None = None,
        generation: GenerationService | None = None,
        sandbox: SandboxInfoService | None = None,
    ) -> None:
        self.settings = settings
        self.engine = engine
        self._store = store
        self._client_factory = client_factory
        self._client: CivitaiClient | None = None
        self._store_service: StoreService | None = None
        self._lock = threading.Lock()
        self._sandbox_generation: SandboxGeneration | None = None
        if generation is None or sandbox is None:
            real = SandboxGeneration(engine, self.store)
            self._sandbox_generation = real
            generation = generation or real
            sandbox = sandbox or SandboxStatusInfo(real)
        self.generation: GenerationService = generation
        self.sandbox: SandboxInfoService = sandbox

    @property
    def store(self) -> BlobStore:
        if self._store is None:
            from assetmgr.store.blobs import BlobStore

            self._store = BlobStore(paths.store_dir())
        return self._store

    def client(self) -> CivitaiClient:
        with self._lock:
            if self._client is None:
                if self._client_factory is not None:
                    self._client = self._client_factory()
                else:
                    from assetmgr.context import make_client

                    self._client = make_client(self.settings)
            return self._client

    def store_service(self) -> StoreService:
        client = self.client()
        with self._lock:
            if self._store_service is None:
                from assetmgr.store.service import StoreService

                self._store_service = StoreService(
                    self.engine,
                    self.store,
                    client,
                    max_download_bytes=self.settings.max_download_bytes,
                )
            return self._store_service

    def import_state(self) -> ServiceState:
        try:
            import assetmgr.store.importer  # noqa: F401
        except ImportError as exc:
            return ServiceState(False, f"the store has no importer ({exc})")
        return ServiceState(True)

    def reload_settings(self) -> None:
        """Re-read settings after the Settings screen saved them; the client is rebuilt."""
        self.settings = Settings.load(api_base=self.settings.api_base)
        with self._lock:
            old, self._client = self._client, None
            if self._store_service is not None:
                self._store_service.close()
                self._store_service = None
        if old is not None:
            old.close()

    def close(self) -> None:
        with self._lock:
            if self._store_service is not None:
                self._store_service.close()
            if self._client is not None:
                self._client.close()
        if self._sandbox_generation is not None:
            self._sandbox_generation.close()


__all__ = [
    "SAMPLERS",
    "GenerationCheck",
    "GenerationProgress",
    "GenerationRequest",
    "GenerationResult",
    "GenerationService",
    "LoraChoice",
    "PluginInfo",
    "RunRecord",
    "SandboxGeneration",
    "SandboxInfo",
    "SandboxInfoService",
    "SandboxStatusInfo",
    "ServiceState",
    "Services",
]
