"""Generate, rerun and the run history: the use cases behind `assetmgr generate/rerun/runs`
and the Generate screen. Both runs take a cancel `Event` and a progress callback."""

from __future__ import annotations

import dataclasses
import threading
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from assetmgr import paths
from assetmgr.app.batch import (
    MAX_WORKER_MOUNTS,
    BatchJob,
    BatchProgress,
    BatchProgressFn,
    JobDoneFn,
    PromptLineError,
)
from assetmgr.app.generate_checks import (
    BaseModelMismatchError,
    GenerationWarning,
    request_problems,
    validate_request,
)
from assetmgr.app.generation import (
    GenerateRequest,
    GenerationPlan,
    RunRecord,
    build_spec,
    rerun,
    run_generation,
)
from assetmgr.app.sandbox_status import ServiceState, sandbox_state
from assetmgr.app.workers import batch_workers
from assetmgr.errors import EXPECTED_ERRORS, AssetMgrError
from sandbox.protocol.jobspec import LISTED_NAMES, SCHEDULE_TYPES

if TYPE_CHECKING:
    from assetmgr.app.context import AppContext

SAMPLERS: tuple[str, ...] = LISTED_NAMES
"""The sampler names the job contract accepts, in A1111's order (`sandbox.protocol.jobspec`)."""
SCHEDULES: tuple[str, ...] = SCHEDULE_TYPES
"""A1111's schedule types; ``Automatic`` leaves the schedule to the sampler's name."""


class NoCheckpointError(AssetMgrError):
    """A request without a checkpoint (the Generate screen with none local)."""

    def __init__(self) -> None:
        super().__init__("no checkpoint selected")


@dataclass(frozen=True)
class GenerationProgress:
    stage: str
    fraction: float | None = None
    step: int | None = None
    total: int | None = None


ProgressFn = Callable[[GenerationProgress], None]


@dataclass(frozen=True)
class GenerationCheck:
    """What the check before a run found; nothing ran.

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
class RunList:
    """Recorded runs, newest first, and how many there are in all."""

    runs: list[RunRecord]
    total: int


def new_run_dir(root: Path | None = None) -> Path:
    """A fresh folder per run, so no run ever overwrites another's images."""
    return (root or paths.runs_dir()) / f"{datetime.now():%Y%m%d-%H%M%S}-{uuid.uuid4().hex[:8]}"


def _on_message(progress: ProgressFn | None) -> Callable[[Any], None] | None:
    if progress is None:
        return None

    def on_message(message: Any) -> None:
        if getattr(message, "type", "") == "progress":
            progress(
                GenerationProgress(message.stage, message.fraction, message.step, message.total)
            )

    return on_message


def _batch_mounts(
    jobs: Sequence[BatchJob],
) -> tuple[dict[str, Path], dict[str, Any]] | None:
    """Every model file of the batch, for its warm worker to mount from the start (so a line
    with another LoRA needs no new container); None past `MAX_WORKER_MOUNTS` files."""
    mounts: dict[str, Path] = {}
    models: dict[str, Any] = {}
    for job in jobs:
        if job.plan is not None:
            mounts.update(job.plan.mounts)
            models.update(job.plan.models)
    return (mounts, models) if len(models) <= MAX_WORKER_MOUNTS else None


def _batch_progress(
    job: BatchJob, total: int, progress: BatchProgressFn | None
) -> ProgressFn | None:
    if progress is None:
        return None

    def on_progress(p: GenerationProgress) -> None:
        progress(BatchProgress(job.index, total, job.request.seed, p.stage, p.step, p.total))

    return on_progress


class Generation:
    """Generate, rerun and runs over an `AppContext` (its engine, store and sandbox)."""

    def __init__(self, ctx: AppContext) -> None:
        self.ctx = ctx

    def state(self) -> ServiceState:
        return sandbox_state(self.ctx.sandbox)

    def samplers(self) -> Sequence[str]:
        return list(SAMPLERS)

    def plugins(self) -> Sequence[tuple[str, str]]:
        """Selectable plugins as (name, sha256)."""
        try:
            return [(p.name, p.tree_sha256) for p in self.ctx.sandbox.list_plugins()]
        except EXPECTED_ERRORS:
            return []

    def plan(self, request: GenerateRequest) -> GenerationPlan:
        """The request checked and its files resolved (`build_spec`); nothing runs."""
        from catalog.db import session_scope

        if not request.model:
            raise NoCheckpointError()
        validate_request(request)
        with session_scope(self.ctx.engine) as session:
            return build_spec(session, self.ctx.store, request)

    def check(self, request: GenerateRequest) -> GenerationCheck:
        """Every problem `plan` would raise, as data for the form."""
        try:
            if not request.model:
                raise NoCheckpointError()
            problems: list[Exception] = list(request_problems(request))
            if problems:
                return GenerationCheck(problems=problems)
            plan = self.plan(request)
        except BaseModelMismatchError as exc:
            return GenerationCheck(mismatch=exc)
        except EXPECTED_ERRORS as exc:
            return GenerationCheck(problems=[exc])
        return GenerationCheck(warnings=plan.warnings)

    def generate(
        self,
        request: GenerateRequest,
        *,
        plan: GenerationPlan | None = None,
        out_dir: Path | None = None,
        progress: ProgressFn | None = None,
        cancel: threading.Event | None = None,
        batch_mounts: tuple[dict[str, Path], dict[str, Any]] | None = None,
    ) -> RunRecord:
        """Run the request in the sandbox and record it (`plan` when already made)."""
        plan = plan or self.plan(request)
        return run_generation(
            self.ctx.engine,
            self.ctx.store,
            self.ctx.sandbox,
            plan.spec,
            plan.mounts,
            plan.models,
            plugins=list(request.plugins),
            out_dir=out_dir or new_run_dir(),
            timeout_s=request.timeout_s,
            on_message=_on_message(progress),
            cancel=cancel,
            batch_mounts=batch_mounts,
        )

    def plan_batch(self, jobs: Sequence[BatchJob]) -> list[BatchJob]:
        """Every job checked and its files resolved before any runs (one plan per prompt;
        the seeds only change the spec's seed). A prompt file line that fails a check raises
        `PromptLineError` naming the line."""
        plans: dict[str, GenerationPlan] = {}
        planned = []
        for job in jobs:
            plan = plans.get(job.request.prompt)
            if plan is None:
                try:
                    plan = self.plan(job.request)
                except EXPECTED_ERRORS as exc:
                    if job.source is None:
                        raise
                    raise PromptLineError(job.source.path, job.source.line, exc) from exc
                plans[job.request.prompt] = plan
            spec = {**plan.spec, "seed": job.request.seed}
            planned.append(dataclasses.replace(job, plan=dataclasses.replace(plan, spec=spec)))
        return planned

    def generate_batch(
        self,
        jobs: Sequence[BatchJob],
        *,
        out_dir: Callable[[BatchJob], Path] = lambda job: new_run_dir(),
        progress: BatchProgressFn | None = None,
        done: JobDoneFn | None = None,
        mode: Callable[[str], None] | None = None,
        cancel: threading.Event | None = None,
    ) -> list[RunRecord]:
        """Run planned jobs in order in one warm worker (`batch_workers`: a container per job
        for untrusted plugins, said to `mode` first), each recorded as a run; the worker is
        removed at the end, on an error and on Ctrl-C. Jobs after a failed or cancelled one
        never start."""
        records: list[RunRecord] = []
        plugins = list(jobs[0].request.plugins) if jobs else []
        mounts = _batch_mounts(jobs)
        with batch_workers(self.ctx.sandbox, plugins) as how:
            if mode is not None:
                mode(how)
            for job in jobs:
                if cancel is not None and cancel.is_set():
                    break
                record = self.generate(
                    job.request,
                    plan=job.plan,
                    out_dir=out_dir(job),
                    progress=_batch_progress(job, len(jobs), progress),
                    cancel=cancel,
                    batch_mounts=mounts,
                )
                records.append(record)
                if done is not None:
                    done(job, record)
        return records

    def rerun(
        self,
        run_id: int,
        *,
        out_dir: Path | None = None,
        progress: ProgressFn | None = None,
        cancel: threading.Event | None = None,
    ) -> RunRecord:
        """Repeat a recorded run; the record says whether the bytes are `identical`."""
        return rerun(
            self.ctx.engine,
            self.ctx.store,
            self.ctx.sandbox,
            run_id,
            out_dir=out_dir or paths.runs_dir() / f"rerun-{run_id}-{uuid.uuid4().hex[:8]}",
            on_message=_on_message(progress),
            cancel=cancel,
        )

    def runs(self, limit: int = 20) -> RunList:
        """Recorded runs, newest first; `limit` 0 means all."""
        from sqlalchemy import func, select
        from sqlmodel import col

        from catalog.db import session_scope
        from catalog.runs import GenerationRun

        with session_scope(self.ctx.engine) as session:
            query = select(GenerationRun).order_by(col(GenerationRun.id).desc())
            rows = session.execute(query.limit(limit) if limit else query).scalars().all()
            total = len(rows)
            if limit and total == limit:
                counted = select(func.count()).select_from(GenerationRun)
                total = int(session.execute(counted).scalar_one())
            return RunList([RunRecord.from_row(r) for r in rows], total)

    def history(self) -> list[RunRecord]:
        """The Generate screen's history: the newest 100 runs."""
        return self.runs(100).runs


__all__ = [
    "SAMPLERS",
    "SCHEDULES",
    "GenerateRequest",
    "Generation",
    "GenerationCheck",
    "GenerationProgress",
    "NoCheckpointError",
    "ProgressFn",
    "RunList",
    "RunRecord",
    "ServiceState",
    "new_run_dir",
]
