"""Generation's building blocks: resolve catalog references, run in the sandbox, record the run
(the use cases in `assetmgr.app.generate` put them together for the CLI and the TUI).

References (`--model`, `--lora`, and ``<lora:NAME:W>`` tags in the prompt) are a version id,
a model name, or a file name / A1111 alias (the file name without extension); they must be
verified files in the local store. Before anything runs, the request is checked against the
job contract the worker enforces (`assetmgr.app.generate_checks`, `sandbox.protocol`). The job
spec records everything that changes pixels (`GenSpec`), and the run is stored in the
catalog with the image id and the hashes of every input and output, so `rerun` can repeat it
and compare bytes.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session
from sqlmodel import col

from assetmgr.app.generate_checks import (
    GenerationWarning,
    InvalidRequestError,
    WrongModelTypeError,
    family_check,
    validate_request,
)
from assetmgr.errors import EXPECTED_ERRORS, AssetMgrError, NotInCatalogError
from assetmgr.store.blobs import BlobStore
from catalog.db import session_scope
from catalog.models import LocalFile, Model, ModelFile, ModelVersion
from catalog.runs import GenerationRun
from catalog.usermeta import UserMeta
from sandbox.protocol import MAX_PARAMS_BYTES

CHECKPOINT_TYPES = ("Checkpoint",)
LORA_TYPES = ("LORA", "LoCon", "DoRA")
_SAFE = re.compile(r"[^A-Za-z0-9_.-]+")


class GenerationError(AssetMgrError):
    title = "Generation failed"
    hint = "Run with -v for the worker log; `assetmgr sandbox status` checks the image."


@dataclass(frozen=True)
class LocalAsset:
    """A verified local file of a catalog version, ready to mount."""

    version_id: int
    file_id: int | None
    model_name: str
    model_type: str
    alias: str
    """A1111's name for it: the file name without extension."""
    base_model: str | None
    sha256: str
    autov3: str | None
    blob_path: Path
    trained_words: list[str] = field(default_factory=list)
    preferred_weight: float | None = None

    @property
    def mount_name(self) -> str:
        stem = _SAFE.sub("_", self.alias).strip("._-")[:80] or "model"
        return f"{stem}-{self.sha256[:12].lower()}.safetensors"


def _verified_files(session: Session, version_ids: Sequence[int]) -> list[tuple[Any, ...]]:
    return list(
        session.execute(
            select(LocalFile, ModelFile, ModelVersion, Model)
            .join(ModelFile, col(ModelFile.id) == col(LocalFile.file_id))
            .join(ModelVersion, col(ModelVersion.id) == col(ModelFile.version_id))
            .join(Model, col(Model.id) == col(ModelVersion.model_id))
            .where(col(ModelVersion.id).in_(version_ids), col(LocalFile.state) == "verified")
            .order_by(col(ModelFile.is_primary).desc(), col(ModelFile.id))
        ).all()
    )


def _by_tag_name(session: Session, tag_name: str) -> list[int]:
    """Versions with a verified file that a ``<lora:NAME>`` tag names by the alias rule
    (`sandbox.protocol.jobspec.lora_tag_name`: ``Detail:Tweaker v1`` is ``Detail_Tweaker v1``)."""
    from sandbox.protocol.jobspec import lora_tag_matches

    # '_' stands for any one character in LIKE: each may be a ':', '<' or '>' of the file name.
    pattern = tag_name.strip().lower().replace("\\", "\\\\").replace("%", "\\%") + "%"
    rows = session.execute(
        select(col(ModelFile.version_id), col(ModelFile.name))
        .join(LocalFile, col(LocalFile.file_id) == col(ModelFile.id))
        .where(col(LocalFile.state) == "verified")
        .where(func.lower(ModelFile.name).like(pattern, escape="\\"))
    ).all()
    return [vid for vid, name in rows if lora_tag_matches(tag_name, name or "")]


def _find_asset(
    session: Session, store: BlobStore, ref: str, kinds: Sequence[str]
) -> LocalAsset | None:
    text = ref.strip()
    version_ids: list[int] = []
    if text.lstrip("-").isdigit():
        version_ids = [int(text)]
    else:
        lowered = text.lower()
        by_file = (
            session.execute(
                select(col(ModelFile.version_id))
                .join(LocalFile, col(LocalFile.file_id) == col(ModelFile.id))
                .where(col(LocalFile.state) == "verified")
                .where(
                    func.lower(ModelFile.name).in_(
                        [lowered, f"{lowered}.safetensors", f"{lowered}.ckpt"]
                    )
                )
            )
            .scalars()
            .all()
        )
        version_ids = list(by_file) or _by_tag_name(session, text)
        if not version_ids:
            query = (
                select(col(ModelVersion.id))
                .join(Model, col(Model.id) == col(ModelVersion.model_id))
                .where(func.lower(Model.name) == lowered)
                .order_by(col(ModelVersion.position), col(ModelVersion.id).desc())
            )
            if kinds:
                query = query.where(col(Model.type).in_(kinds))
            version_ids = list(session.execute(query).scalars().all())
    rows = _verified_files(session, version_ids) if version_ids else []
    if kinds:
        rows = [r for r in rows if r[3].type in kinds]
    for local, file, version, model in rows:
        if local.sha256 and store.has(local.sha256):
            meta = session.get(UserMeta, version.id)
            return LocalAsset(
                version_id=version.id,
                file_id=file.id,
                model_name=model.name,
                model_type=model.type,
                alias=Path(file.name or f"file-{file.id}").stem,
                base_model=version.base_model,
                sha256=local.sha256.upper(),
                autov3=local.autov3,
                blob_path=store.blob_path(local.sha256),
                trained_words=[w.word for w in version.trained_words],
                preferred_weight=meta.preferred_weight if meta else None,
            )
    return None


def resolve_asset(
    session: Session, store: BlobStore, ref: str, *, kinds: Sequence[str] = (), option: str = ""
) -> LocalAsset:
    """A version id, model name or file alias -> its verified local file.

    With `kinds`, a file of another catalog type raises `WrongModelTypeError` for `option`
    (a LoRA given as the checkpoint, say) instead of "not found".
    """
    asset = _find_asset(session, store, ref, kinds)
    if asset is not None:
        return asset
    if kinds:
        other = _find_asset(session, store, ref, ())
        if other is not None:
            raise WrongModelTypeError(option or "model", ref, other.model_type, other.model_name)
    what = "/".join(kinds) if kinds else "model"
    raise NotInCatalogError(
        f"no verified local {what} file for {ref!r}",
        kind="generation-input",
        key=ref,
    )


@dataclass
class GenerateRequest:
    """One generation as the user asked for it: the CLI's options, the Generate screen's form.

    `model` and the `loras` refs are a version id, a model name or a file alias; prompt tags
    name LoRAs by alias unless `tag_versions` pins a tag to the version the user picked.
    """

    model: str
    prompt: str
    negative: str = ""
    loras: list[tuple[str, float]] = field(default_factory=list)
    steps: int = 20
    cfg: float = 7.0
    seed: int = 0
    width: int = 512
    height: int = 512
    batch: int = 1
    sampler: str = "Euler a"
    schedule_type: str | None = None
    """A1111 >=1.9 "Schedule type" (``SGM Uniform``...); Karras and Exponential may instead
    end the sampler name, as in the pickers."""
    clip_skip: int = 1
    hires_scale: float | None = None
    """Hires fix: the latent upscale of a second pass; None runs txt2img alone."""
    hires_steps: int = 0
    """Steps of the hires pass; 0: as many as the first."""
    hires_denoise: float = 0.5
    plugins: list[str] = field(default_factory=list)
    add_trigger_words: bool = False
    dtype: str = "float32"
    device: str = "cpu"
    threads: int | None = 2
    timeout_s: float = 1800.0
    allow_mismatch: bool = False
    """Run LoRAs of another base-model family than the checkpoint's, with a warning."""
    tag_versions: dict[str, int] = field(default_factory=dict)
    """Prompt tag name -> the catalog version picked for it (the TUI's local LoRA list)."""


@dataclass
class RunRecord:
    """One recorded generation run: what generate and rerun return and what `runs` lists."""

    run_id: int
    outputs: list[dict[str, Any]]
    spec: dict[str, Any]
    image_id: str | None
    identical_to: int | None = None
    """The run this one repeated (set by rerun, with `identical`)."""
    identical: bool | None = None
    created_at: datetime | None = None
    status: str = "ok"
    error: str | None = None
    rerun_of: int | None = None

    @classmethod
    def from_row(cls, row: GenerationRun) -> RunRecord:
        return cls(
            run_id=int(row.id or 0),
            outputs=list(row.outputs),
            spec=dict(row.spec),
            image_id=row.image_id,
            created_at=row.created_at,
            status=row.status,
            error=row.error,
            rerun_of=row.rerun_of,
        )

    @property
    def images(self) -> tuple[Path, ...]:
        return tuple(Path(o["path"]) for o in self.outputs if o.get("path"))

    @property
    def seed(self) -> int:
        return int(self.spec.get("seed", 0))

    def as_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "run_id": self.run_id,
            "image_id": self.image_id,
            "outputs": self.outputs,
            "spec": self.spec,
        }
        if self.identical_to is not None:
            data["rerun_of"] = self.identical_to
            data["identical"] = self.identical
        return data

    def listing(self) -> dict[str, Any]:
        """The `runs` entry of this run (JSON-safe)."""
        return {
            "run_id": self.run_id,
            "created_at": self.created_at.isoformat() if self.created_at else None,
            "status": self.status,
            "prompt": self.spec.get("prompt"),
            "seed": self.spec.get("seed"),
            "outputs": [o.get("sha256") for o in self.outputs],
            "rerun_of": self.rerun_of,
            "error": self.error,
        }


@dataclass
class GenerationPlan:
    """A checked request: the GenSpec params, mount name -> host file, the models record, and
    what the run goes ahead with despite doubts (`warnings`)."""

    spec: dict[str, Any]
    mounts: dict[str, Path]
    models: dict[str, Any]
    warnings: list[GenerationWarning] = field(default_factory=list)


def _first_problem(exc: Any) -> str:
    """The first error of a pydantic `ValidationError`, as " at FIELD: why" (or ": why")."""
    detail = exc.errors()[0]
    where = ".".join(str(p) for p in detail["loc"])
    message = str(detail["msg"]).removeprefix("Value error, ")
    return f" at {where}: {message}" if where else f": {message}"


def build_spec(session: Session, store: BlobStore, req: GenerateRequest) -> GenerationPlan:
    """Check a request and resolve its files; nothing runs and the engine is not contacted.

    Raises `InvalidRequestError` (exit 2) for whatever the worker would refuse, a file of the
    wrong type or a LoRA of another base-model family (unless `req.allow_mismatch`), and
    `NotInCatalogError` for a reference with no verified local file.
    """
    from pydantic import ValidationError

    from sandbox.protocol.jobspec import (
        GenSpec,
        canonical_sampler,
        check_prompt_tags,
        lora_tag_name,
        split_sampler,
    )

    validate_request(req)
    checkpoint = resolve_asset(session, store, req.model, kinds=CHECKPOINT_TYPES, option="model")
    mounts: dict[str, Path] = {checkpoint.mount_name: checkpoint.blob_path}
    models: dict[str, Any] = {
        checkpoint.mount_name: {
            "sha256": checkpoint.sha256,
            "version_id": checkpoint.version_id,
            "file_id": checkpoint.file_id,
        }
    }
    tagged = [t.name for t in check_prompt_tags(req.prompt, req.negative)]
    wanted: dict[str, float | None] = dict(req.loras)
    for name in tagged:
        wanted.setdefault(name, None)
    loras = []
    resolved: list[tuple[str, LocalAsset]] = []
    for ref, weight in wanted.items():
        option = "loras" if ref not in tagged else "prompt"
        pinned = req.tag_versions.get(ref) if ref in tagged else None
        lookup = ref if pinned is None else str(pinned)
        asset = resolve_asset(session, store, lookup, kinds=LORA_TYPES, option=option)
        if asset.mount_name in mounts:
            first = next((r for r, a in resolved if a.mount_name == asset.mount_name), req.model)
            raise InvalidRequestError(
                option,
                f"names the same file as {first!r} ({asset.alias})",
                value=ref,
                hint="Give each LoRA once, as a tag or as --lora.",
            )
        resolved.append((ref, asset))
        mounts[asset.mount_name] = asset.blob_path
        models[asset.mount_name] = {
            "sha256": asset.sha256,
            "version_id": asset.version_id,
            "file_id": asset.file_id,
        }
        loras.append(
            {
                # The worker matches <lora:NAME:...> tags by this name.
                "name": ref if ref in tagged else lora_tag_name(asset.alias),
                "path": f"/models/{asset.mount_name}",
                "sha256": asset.sha256.lower(),
                "te_weight": weight,
                "unet_weight": weight,
                "base_model": asset.base_model,
                "trigger_words": asset.trained_words,
            }
        )
    warnings = family_check(checkpoint, resolved, allow_mismatch=req.allow_mismatch)
    params = {
        "model_path": f"/models/{checkpoint.mount_name}",
        "model_sha256": checkpoint.sha256.lower(),
        "model_name": checkpoint.alias,
        "base_model": checkpoint.base_model,
        "loras": loras,
        "prepend_trigger_words": req.add_trigger_words,
        "prompt": req.prompt,
        "negative_prompt": req.negative,
        "steps": req.steps,
        "cfg_scale": req.cfg,
        "seed": req.seed,
        "width": req.width,
        "height": req.height,
        "batch_size": req.batch,
        "sampler": canonical_sampler(req.sampler),
        "schedule_type": (
            None if req.schedule_type is None else split_sampler(req.sampler, req.schedule_type)[1]
        ),
        "clip_skip": req.clip_skip,
        "hires": None
        if req.hires_scale is None
        else {"scale": req.hires_scale, "steps": req.hires_steps, "denoise": req.hires_denoise},
        "dtype": req.dtype,
        "device": req.device,
        "threads": req.threads,
    }
    try:
        spec = GenSpec.model_validate(params).model_dump(mode="json")
    except ValidationError as exc:  # what the checks above cannot see: catalog names, say
        reason = f"the job spec is invalid{_first_problem(exc)}"
        raise InvalidRequestError("model", reason, message=reason) from None
    size = len(json.dumps(spec))
    if size > MAX_PARAMS_BYTES:
        raise InvalidRequestError(
            "prompt",
            f"the job spec is {size} bytes; at most {MAX_PARAMS_BYTES}",
            message=f"the job spec is {size} bytes; the sandbox takes at most {MAX_PARAMS_BYTES}",
            hint="Use fewer LoRAs (each brings its trigger words) or shorter prompts.",
        )
    return GenerationPlan(spec, mounts, models, warnings)


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest().upper()


def checked_mounts(
    engine: Engine,
    store: BlobStore,
    mounts: dict[str, Path],
    models: dict[str, Any],
    *,
    cancel: threading.Event | None = None,
) -> dict[str, Path]:
    """Mount name -> store file, each passed through `check_before_mount`.

    The one gate between the catalog and a job's mounts: whatever resolved the files (the CLI,
    the TUI, a rerun), only blobs whose bytes are still the verified ones reach the sandbox.
    """
    from assetmgr.store.service import check_before_mount

    if set(mounts) != set(models):
        raise GenerationError(
            f"model files {sorted(mounts)} do not match the recorded models {sorted(models)}"
        )
    checked: dict[str, Path] = {}
    for name, info in models.items():
        path = check_before_mount(engine, store, str(info["sha256"]), name=name, cancel=cancel)
        if Path(mounts[name]) != path:
            raise GenerationError(f"model file {name!r} is not the store's file {path}")
        checked[name] = path
    return checked


def _model_refs(models: dict[str, Any]) -> list[Any]:
    from sandbox.protocol import ModelRef

    return [
        ModelRef(name=name, mount_path=f"/models/{name}", sha256=info["sha256"].lower())
        for name, info in models.items()
    ]


def run_generation(
    engine: Engine,
    store: BlobStore,
    sandbox: Any,
    spec: dict[str, Any],
    mounts: dict[str, Path],
    models: dict[str, Any],
    *,
    plugins: Sequence[str],
    out_dir: Path,
    timeout_s: float = 1800.0,
    rerun_of: int | None = None,
    on_message: Callable[[Any], None] | None = None,
    cancel: threading.Event | None = None,
    batch_mounts: tuple[dict[str, Path], dict[str, Any]] | None = None,
) -> RunRecord:
    """Run a generation spec in the sandbox and record it; raises `GenerationError`.

    Every model file is checked unchanged since its verification (`check_before_mount`)
    before the engine is contacted; a changed one stops the run with `BlobChangedError`.
    `batch_mounts` (mount name -> file, and their models record) are the files of a whole
    batch: checked the same way, and mounted too if a warm worker starts for this job.
    """
    from sandbox.protocol import Limits

    mounts = checked_mounts(engine, store, mounts, models, cancel=cancel)
    refs = _model_refs(models)
    warm: dict[str, Any] = {}
    if batch_mounts is not None:
        files = checked_mounts(engine, store, *batch_mounts, cancel=cancel)
        warm = {"warm_models": _model_refs(batch_mounts[1]), "warm_model_files": files}
    image = sandbox.load_image()
    out_dir.mkdir(parents=True, exist_ok=True)  # no empty folder for a run that never started
    try:
        result = sandbox.run(
            "generate",
            spec,
            out_dir,
            plugins=list(plugins),
            limits=Limits(
                timeout_s=timeout_s,
                memory_bytes=16 * 2**30,
                cpus=2.0,
                tmpfs_bytes=1 << 30,
                shm_bytes=1 << 30,
            ),
            models=refs,
            model_files=mounts,
            on_message=on_message,
            cancel=cancel,
            image=image,
            **warm,
        )
    except EXPECTED_ERRORS as exc:
        with session_scope(engine, write=True) as session:
            session.add(
                GenerationRun(
                    status="failed",
                    spec=spec,
                    models=models,
                    plugins=list(plugins),
                    image_id=image.image_id,
                    model_sha256=spec.get("model_sha256"),
                    error=str(exc),
                    rerun_of=rerun_of,
                )
            )
        raise
    data = result.result.data or {}
    outputs: list[dict[str, Any]] = []
    by_name = {f"out/{p.name}": p for p in result.images}
    for item in data.get("images", []):
        path = by_name.get(item.get("name"))
        if path is None:
            continue
        outputs.append(
            {
                "path": str(path),
                "sha256": _sha256_file(path),
                "seed": item.get("seed"),
                "infotext": item.get("infotext"),
            }
        )
    lora_hashes = {lo["name"]: lo["sha256"] for lo in spec.get("loras", [])}
    with session_scope(engine, write=True) as session:
        run = GenerationRun(
            spec=spec,
            models=models,
            plugins=list(plugins),
            image_id=image.image_id,
            model_sha256=spec.get("model_sha256"),
            lora_hashes=lora_hashes,
            outputs=outputs,
            rerun_of=rerun_of,
        )
        session.add(run)
        session.flush()
        session.refresh(run)
        record = RunRecord.from_row(run)
    return record


def load_run(engine: Engine, run_id: int) -> GenerationRun:
    with Session(engine) as session:
        run = session.get(GenerationRun, run_id)
        if run is None:
            raise NotInCatalogError(f"no generation run {run_id}", kind="run", key=run_id)
        session.expunge(run)
        return run


def rerun(
    engine: Engine,
    store: BlobStore,
    sandbox: Any,
    run_id: int,
    *,
    out_dir: Path,
    on_message: Callable[[Any], None] | None = None,
    cancel: threading.Event | None = None,
) -> RunRecord:
    """Repeat a recorded run with the same spec and inputs; report whether the bytes match."""
    from pydantic import ValidationError

    from sandbox.protocol.jobspec import GenSpec

    old = load_run(engine, run_id)
    try:
        GenSpec.model_validate(old.spec)
    except ValidationError as exc:  # recorded by an older version, or a run that failed
        raise GenerationError(
            f"run {run_id} cannot be repeated: its spec is invalid{_first_problem(exc)}",
            hint="Start a new run with `assetmgr generate`.",
        ) from None
    mounts: dict[str, Path] = {}
    for name, info in old.models.items():
        sha = str(info["sha256"]).upper()
        if not store.has(sha):
            raise NotInCatalogError(
                f"input {name} (sha256 {sha}) of run {run_id} is no longer in the store",
                kind="run-input",
                key=info.get("version_id"),
            )
        mounts[name] = store.blob_path(sha)
    record = run_generation(
        engine,
        store,
        sandbox,
        dict(old.spec),
        mounts,
        dict(old.models),
        plugins=list(old.plugins),
        out_dir=out_dir,
        rerun_of=run_id,
        on_message=on_message,
        cancel=cancel,
    )
    record.identical_to = run_id
    old_hashes = [o.get("sha256") for o in old.outputs]
    record.identical = old_hashes == [o["sha256"] for o in record.outputs] and bool(old_hashes)
    return record
