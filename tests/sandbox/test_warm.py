"""The warm worker (stretch goal): several jobs through one hardened container."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from sandbox.errors import HostileOutputError, JobFailedError, JobTimeoutError
from sandbox.protocol import JobSpec, Limits
from sandbox.runner import LABEL_JOB, new_job_id, new_nonce
from sandbox.warm import WarmWorker

pytestmark = [pytest.mark.docker]

LIMITS = Limits(timeout_s=30, memory_bytes=512 << 20, tmpfs_bytes=32 << 20, shm_bytes=32 << 20)


def echo(text: str, **limits: Any) -> JobSpec:
    lim = LIMITS.model_copy(update=limits)
    return JobSpec(
        job_id=new_job_id(), nonce=new_nonce(), kind="echo", params={"text": text}, limits=lim
    )


def probe(name: str, args: dict[str, Any], **limits: Any) -> JobSpec:
    lim = LIMITS.model_copy(update=limits)
    return JobSpec(
        job_id=new_job_id(),
        nonce=new_nonce(),
        kind="probe",
        params={"probes": [{"name": name, "args": args}]},
        limits=lim,
    )


def all_worker_containers(client: Any) -> list[Any]:
    return [
        c
        for c in client.containers.list(all=True, filters={"label": LABEL_JOB})
        if c.labels.get("io.assetmgr.role") == "warm-worker"
    ]


@pytest.fixture
def worker_containers(docker_client: Any) -> Any:
    """Warm-worker containers made during this test (not ones an earlier test left behind)."""
    before = {c.id for c in all_worker_containers(docker_client)}

    def made_here(client: Any) -> list[Any]:
        return [c for c in all_worker_containers(client) if c.id not in before]

    return made_here


def test_jobs_share_one_container_and_cleanup(
    docker_client: Any, sandbox_image: Any, tmp_path: Path, worker_containers: Any
) -> None:
    with WarmWorker(sandbox_image, client=docker_client, limits=LIMITS, gpus="none") as w:
        first = w.run(echo("one"), tmp_path / "1")
        cid = w._container.container.id if w._container else None
        second = w.run(echo("two"), tmp_path / "2")
        assert w._container is not None and w._container.container.id == cid
        assert first.result.data["text"] == "one" and second.result.data["text"] == "two"
        assert [p.name for p in second.images] == ["echo.png"]
        assert w.jobs_done == 2
        # same isolation as one-shot jobs
        net = w.run(probe("net_interfaces", {}), tmp_path / "3")
        assert net.result.data["probes"][0]["sys_class_net"] == ["lo"]  # type: ignore[index, call-overload]
    assert worker_containers(docker_client) == []


def test_failures_recycle_the_worker(
    docker_client: Any, sandbox_image: Any, tmp_path: Path, worker_containers: Any
) -> None:
    with WarmWorker(sandbox_image, client=docker_client, limits=LIMITS, gpus="none") as w:
        w.run(echo("warm"), tmp_path / "0")
        with pytest.raises(JobTimeoutError):
            w.run(probe("hang", {}, timeout_s=2), tmp_path / "1")
        assert not w.running
        with pytest.raises(HostileOutputError):
            w.run(probe("write_output", {"kind": "symlink", "name": "x.png"}), tmp_path / "2")
        assert not w.running
        with pytest.raises(JobFailedError):
            # a spec the worker refuses (the host would never build it: unknown kind)
            bad = JobSpec.model_construct(
                job_id=new_job_id(),
                nonce=new_nonce(),
                kind="no_such_kind",
                params={},
                models=[],
                plugins=[],
                limits=LIMITS,
            )
            w.run(bad, tmp_path / "3")
        assert w.run(echo("again"), tmp_path / "4").result.data["text"] == "again"
        assert len(worker_containers(docker_client)) == 1
    assert worker_containers(docker_client) == []


def test_max_jobs_recycles(docker_client: Any, sandbox_image: Any, tmp_path: Path) -> None:
    with WarmWorker(
        sandbox_image, client=docker_client, limits=LIMITS, gpus="none", max_jobs=2
    ) as w:
        ids = []
        for i in range(3):
            w.run(echo(str(i)), tmp_path / str(i))
            assert w._container is not None
            ids.append(w._container.container.id)
        assert ids[0] == ids[1] != ids[2]


@pytest.mark.parametrize(
    ("kind", "name", "reason"),
    [
        ("symlink", "link.png", "links are not allowed"),
        ("hardlink", "hard.png", "links are not allowed"),
        ("subdir", "sub", "unexpected directory"),
        ("fifo", "pipe.png", "not a regular file"),
        ("bad_name", "evil.sh", "allowlist"),
        ("bomb_png", "bomb.png", "pixels"),
        ("big_file", "big.png", "larger than"),
    ],
)
def test_outputs_come_in_band_and_are_checked_like_archives(
    docker_client: Any,
    sandbox_image: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    kind: str,
    name: str,
    reason: str,
) -> None:
    def no_archive(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("warm jobs must not read outputs with get_archive")

    monkeypatch.setattr(docker_client.api, "get_archive", no_archive)
    with WarmWorker(sandbox_image, client=docker_client, limits=LIMITS, gpus="none") as w:
        good = w.run(probe("write_output", {"kind": "good_png", "name": "g.png"}), tmp_path / "g")
        assert [p.name for p in good.images] == ["g.png"]
        args = {"kind": kind, "name": name, "side": 10000, "bytes": 70 << 20}
        with pytest.raises(HostileOutputError) as info:
            w.run(probe("write_output", args), tmp_path / "bad")
        assert not w.running
    assert any(reason in why for _, why in info.value.rejected), info.value.rejected
    assert not list((tmp_path / "bad").glob("*"))
