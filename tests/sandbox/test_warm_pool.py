"""The warm pool's rules without an engine: workers stand in for `WarmWorker` (what the real
container does is in test_warm_sharing)."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from sandbox.errors import JobCancelledError
from sandbox.protocol import JobSpec, Limits, ModelRef
from sandbox.runner import new_job_id, new_nonce
from sandbox.warm_pool import WarmPool

KEY = ("sha256:" + "1" * 64, ())
A = ModelRef(name="a.safetensors", mount_path="/models/a.safetensors", sha256="a" * 64)
B = ModelRef(name="b.safetensors", mount_path="/models/b.safetensors", sha256="b" * 64)
FILES = {A.name: Path("/store/a"), B.name: Path("/store/b")}


@dataclass
class StandIn:
    models: list[ModelRef]
    model_files: dict[str, Path]
    closed: threading.Event = field(default_factory=threading.Event)
    jobs: int = 0

    def close(self) -> None:
        self.closed.set()


def spec(*models: ModelRef) -> JobSpec:
    return JobSpec(
        job_id=new_job_id(),
        nonce=new_nonce(),
        kind="echo",
        params={},
        models=list(models),
        limits=Limits(),
    )


class Starts:
    def __init__(self, *models: ModelRef) -> None:
        self.models = list(models)
        self.made: list[StandIn] = []

    def __call__(self) -> StandIn:
        worker = StandIn(list(self.models), {m.name: FILES[m.name] for m in self.models})
        self.made.append(worker)
        return worker


def use(worker: StandIn) -> StandIn:
    worker.jobs += 1
    return worker


def run(pool: WarmPool, job: JobSpec, start: Starts, key: tuple = KEY) -> StandIn:  # type: ignore[type-arg]
    files = {m.name: FILES[m.name] for m in job.models}
    return pool.run(key, job, files, start, use)  # type: ignore[arg-type, return-value]


def test_a_worker_serves_jobs_whose_files_it_mounts_and_is_replaced_otherwise() -> None:
    pool = WarmPool()
    both = Starts(A, B)
    first = run(pool, spec(A, B), both)
    assert run(pool, spec(A), both) is first  # fewer files: the same worker
    assert run(pool, spec(), both) is first
    other = Starts(B)
    replaced = run(pool, spec(A, B), other, key=("sha256:" + "2" * 64, ()))  # another image
    assert replaced is not first and first.closed.is_set()
    assert list(pool.workers.values()) == [replaced]  # one at a time
    again = Starts(A)
    assert run(pool, spec(A), again, key=("sha256:" + "2" * 64, ())) is not replaced
    assert replaced.closed.is_set()
    moved = Starts(A)  # the same name from another host file: not the same model
    job = spec(A)
    pool.run(KEY, job, {A.name: Path("/elsewhere/a")}, moved, use)
    pool.close()
    assert all(w.closed.is_set() for w in [*both.made, *other.made, *again.made, *moved.made])
    assert pool.workers == {}


def test_the_idle_time_closes_the_worker_but_never_during_a_job() -> None:
    pool = WarmPool(idle_s=0.05)
    start = Starts(A)
    worker = run(pool, spec(A), start)

    def slow(w: StandIn) -> bool:
        time.sleep(0.3)  # far past the idle time of the previous job
        return w.closed.is_set()

    assert pool.run(KEY, spec(A), {A.name: FILES[A.name]}, start, slow) is False  # type: ignore[arg-type]
    assert len(start.made) == 1
    assert worker.closed.wait(10)  # the idle time after the last job
    assert pool.workers == {}
    assert run(pool, spec(A), start) is not worker  # a fresh one for the next job
    pool.close()


def test_a_job_waiting_for_its_turn_can_be_cancelled() -> None:
    pool = WarmPool()
    start = Starts(A)
    inside, leave = threading.Event(), threading.Event()

    def hold(w: StandIn) -> None:
        inside.set()
        leave.wait(10)

    holder = threading.Thread(
        target=pool.run, args=(KEY, spec(A), {A.name: FILES[A.name]}, start, hold)
    )
    holder.start()
    assert inside.wait(10)
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(JobCancelledError):
        pool.run(KEY, spec(A), {A.name: FILES[A.name]}, start, use, cancel)  # type: ignore[arg-type]
    leave.set()
    holder.join(10)
    pool.close()
