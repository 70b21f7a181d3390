"""Warm workers shared by jobs through the sandbox service, in the real container: what one
job leaves is gone before the next starts, one worker at a time, the idle timeout."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine

from sandbox.protocol import Limits, ModelRef
from sandbox.service import SandboxService
from tests.sandbox.containers import ContainerLog, wait_gone
from tests.sandbox.services import catalog_service
from tests.sandbox.test_plugins import write_plugin

pytestmark = [pytest.mark.docker]

MiB = 1 << 20
SMALL = Limits(timeout_s=60, memory_bytes=1024 * MiB, tmpfs_bytes=64 * MiB, shm_bytes=64 * MiB)

# A trusted plugin that, in one job, leaves files everywhere a job can write, changes the
# environment and the working directory; in the next, looks for all of it.
SNOOP = """
import json, os, tempfile

def _put(path, made):
    with open(path, "w") as f:
        f.write("job one's secret")
    made[path] = os.path.exists(path)

def prompt_transform(prompt, negative, ctx):
    order, _, arg = prompt.partition(" ")
    if order == "plant":
        made = {}
        [job_dir] = os.listdir("/job/work")
        _put(os.path.join("/job/work", job_dir, "notes.txt"), made)
        fd, path = tempfile.mkstemp()
        os.write(fd, b"secret")
        os.close(fd)
        made[path] = os.path.exists(path)
        _put(os.path.join(os.getcwd(), "cwd-file.txt"), made)
        _put("/tmp/planted.txt", made)
        os.makedirs("/tmp/planted-dir", exist_ok=True)
        _put("/tmp/planted-dir/x.txt", made)
        _put("/dev/shm/planted", made)
        os.environ["PLANTED_SECRET"] = "job one"
        os.environ["HOME"] = "/tmp/planted-dir"
        cwd = os.getcwd()
        os.chdir("/dev/shm")
        report = {"made": made, "job_dir": job_dir, "tmpdir": tempfile.gettempdir(), "cwd": cwd}
        return json.dumps(report), negative
    if order == "look":
        paths = json.loads(arg)
        report = {
            "seen": {p: os.path.exists(p) for p in paths},
            "work": os.listdir("/job/work"),
            "tmp": sorted(os.listdir("/tmp")),
            "shm": sorted(os.listdir("/dev/shm")),
            "secret": os.environ.get("PLANTED_SECRET"),
            "home": os.environ.get("HOME"),
            "cwd": os.getcwd(),
            "tmpdir": tempfile.gettempdir(),
        }
        return json.dumps(report), negative
    return prompt, negative
"""


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    from catalog.db import open_catalog

    e = open_catalog(f"sqlite:///{tmp_path / 'catalog.sqlite3'}")
    yield e
    e.dispose()


@pytest.fixture
def warm_service(
    engine: Engine, tmp_path: Path, docker_client: Any, sandbox_image: Any
) -> Iterator[SandboxService]:
    from tests.sandbox.conftest import RECORD_PATH

    svc = catalog_service(
        engine,
        plugins_root=tmp_path / "plugins",
        record_path=RECORD_PATH,
        client=docker_client,
        reuse_workers=True,
    )
    yield svc
    svc.close()


def echo(service: SandboxService, text: str, out: Path, **options: Any) -> Any:
    return service.run("echo", {"text": text}, out, limits=SMALL, gpus="none", **options)


def test_jobs_in_one_worker_cannot_read_each_others_files(
    warm_service: SandboxService, docker_client: Any, tmp_path: Path
) -> None:
    """Job 1's plugin writes into its own folder, its TMPDIR, its working directory, /tmp and
    /dev/shm and changes its environment; job 2, in the same container, finds none of it."""
    warm_service.add_plugin(write_plugin(tmp_path / "src", "snoop", code=SNOOP), trust=True)
    log = ContainerLog(docker_client)
    first = echo(warm_service, "plant", tmp_path / "1", plugins=["snoop"])
    planted = json.loads(first.result.data["text"])
    assert planted["job_dir"] == first.job_id
    assert planted["tmpdir"] == planted["cwd"] == f"/tmp/{first.job_id}"
    assert all(planted["made"].values()) and len(planted["made"]) == 6  # the writes happened
    assert [p.name for p in first.images] == ["echo.png"]
    left = [*planted["made"], f"/job/work/{first.job_id}/out/echo.png", planted["tmpdir"]]

    second = echo(warm_service, "look " + json.dumps(left), tmp_path / "2", plugins=["snoop"])
    seen = json.loads(second.result.data["text"])
    assert seen["seen"] == dict.fromkeys(left, False)
    assert seen["work"] == [second.job_id]
    assert second.job_id in seen["tmp"]
    assert not {"planted.txt", "planted-dir", first.job_id} & set(seen["tmp"])
    assert "planted" not in seen["shm"]
    assert seen["secret"] is None and seen["home"] == "/tmp"
    assert seen["cwd"] == seen["tmpdir"] == f"/tmp/{second.job_id}"
    # ... and it was the same container, not a fresh one
    created = log.created()
    assert [c.role for c in created] == ["warm-worker"], created
    [worker] = warm_service._warm.values()
    assert worker.jobs_done == 2


def model_file(root: Path, name: str) -> tuple[ModelRef, Path]:
    path = root / name
    path.write_bytes(name.encode() * 64)
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    return ModelRef(name=name, mount_path=f"/models/{name}", sha256=sha), path


def test_one_warm_worker_at_a_time(
    warm_service: SandboxService, docker_client: Any, tmp_path: Path
) -> None:
    """The worker serves every job whose model files it mounts; a job needing another model
    replaces it, and the replaced container is gone before the new one runs the job."""
    a, a_path = model_file(tmp_path, "a.safetensors")
    b, b_path = model_file(tmp_path, "b.safetensors")
    log = ContainerLog(docker_client)
    echo(warm_service, "one", tmp_path / "1", models=[a], model_files={a.name: a_path})
    echo(warm_service, "two", tmp_path / "2", models=[a], model_files={a.name: a_path})
    echo(warm_service, "none", tmp_path / "3")  # no model at all: the same worker
    first = log.created()
    assert len(first) == 1 and log.alive(first) == [first[0].id]
    echo(warm_service, "other", tmp_path / "4", models=[b], model_files={b.name: b_path})
    created = log.created()
    assert [c.role for c in created] == ["warm-worker", "warm-worker"]
    assert log.alive(created) == [created[1].id]  # the first went before the second started
    warm_service.close()
    assert log.alive(created) == []


def test_an_idle_worker_is_removed(
    warm_service: SandboxService, docker_client: Any, tmp_path: Path
) -> None:
    warm_service.warm_idle_s = 1.0
    log = ContainerLog(docker_client)
    echo(warm_service, "one", tmp_path / "1")
    created = log.created()
    assert [c.role for c in created] == ["warm-worker"]
    assert wait_gone(log, created) == []
    assert warm_service._warm == {}
    # the next job starts a fresh worker
    echo(warm_service, "two", tmp_path / "2")
    assert len(log.created()) == 2
