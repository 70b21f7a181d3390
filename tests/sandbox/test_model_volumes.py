"""Models through docker volumes (the transport for remote engines), on the real local engine.

``transport="volume"`` makes the local engine take the remote path: the
model is copied into a volume labelled with its sha256 through ``put_archive``, reused by
later jobs, rebuilt when its completion marker is missing, and removed by ``prune(models=True)``.
The transport choice itself (from the engine's URL) is tested without an engine.
"""

from __future__ import annotations

import copy
import hashlib
import io
import json
import os
import tarfile
from pathlib import Path
from typing import Any
from unittest.mock import MagicMock

import docker
import docker.errors
import docker.types
import pytest

from sandbox.errors import SandboxError
from sandbox.protocol import JobSpec, Limits, ModelRef
from sandbox.runner import (
    FILL_DIR,
    LABEL_MODEL_SHA256,
    LABEL_SESSION,
    MODEL_FILE,
    MODEL_MARKER,
    SESSION_ID,
    StagedModel,
    check_host_config,
    engine_is_remote,
    model_transport,
    new_job_id,
    new_nonce,
    plan_job,
    prune,
    run_job,
)
from sandbox.transport import _volume_helper, model_tar_stream

MiB = 1 << 20
IMAGE_ENV = ["PATH=/opt/venv/bin"]
SMALL = Limits(timeout_s=60, memory_bytes=512 * MiB, tmpfs_bytes=16 * MiB, shm_bytes=16 * MiB)


def _client(base_url: str) -> Any:
    client = MagicMock()
    client.api.base_url = base_url
    return client


@pytest.mark.parametrize(
    ("base_url", "remote"),
    [
        ("http+docker://localhost", False),  # unix:///var/run/docker.sock
        ("http+docker://localnpipe", False),
        ("http://10.0.0.5:2375", True),  # tcp://
        ("https://docker.example:2376", True),  # tcp:// with TLS
        ("http+docker://ssh", True),  # ssh://
        ("http://127.0.0.1:2375", True),  # tcp to this machine: still no shared paths assumed
    ],
)
def test_remote_engines_select_the_volume_transport(base_url: str, remote: bool) -> None:
    client = _client(base_url)
    assert engine_is_remote(client) is remote
    assert model_transport(client) == ("volume" if remote else "bind")
    assert model_transport(client, "auto") == ("volume" if remote else "bind")
    assert model_transport(client, "bind") == "bind"
    assert model_transport(client, "VOLUME") == "volume"
    with pytest.raises(SandboxError):
        model_transport(client, "nfs")


def test_the_app_passes_the_transport_setting_and_words_a_bad_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from assetmgr.config import Settings
    from assetmgr.context import open_sandbox_service
    from assetmgr.wording import describe
    from catalog.db import open_catalog

    monkeypatch.setenv("ASSETMGR_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("ASSETMGR_NO_KEYRING", "1")
    monkeypatch.setenv("ASSETMGR_SANDBOX_MODEL_TRANSPORT", "nfs")
    settings = Settings.load(database_url=f"sqlite:///{tmp_path / 'c.sqlite3'}")
    service = open_sandbox_service(settings, open_catalog(settings.database_url))
    assert service.model_transport == "nfs"
    assert service.record_path == tmp_path / "home" / "sandbox" / "image.json"
    with pytest.raises(SandboxError) as info:
        model_transport(_client("http+docker://localhost"), service.model_transport)
    words = describe(info.value)
    assert words is not None
    assert (words.message, words.hint) == (
        "model transport 'nfs' is not one of auto, bind, volume",
        "Unset ASSETMGR_SANDBOX_MODEL_TRANSPORT or set it to bind or volume.",
    )


def test_static_check_covers_volume_backed_models(tmp_path: Path) -> None:
    from tests.sandbox.test_runner_unit import RECORD, attrs_for, job

    sha = "ab" * 32
    ref = ModelRef(name="m.safetensors", mount_path="/models/m.safetensors", sha256=sha)
    volume = f"assetmgr-model-{sha[:32]}-000000"
    staged = StagedModel(sha, volume, f"/var/lib/docker/volumes/{volume}/_data/{MODEL_FILE}")
    host_file = tmp_path / "elsewhere"  # not looked at: the volume's file is mounted
    plan = plan_job(job([ref]), RECORD, {ref.name: host_file}, model_volumes={ref.name: staged})
    (mount,) = [m for m in plan.create_kwargs()["mounts"] if m["Target"] == ref.mount_path]
    assert mount["Type"] == "bind" and mount["ReadOnly"] is True
    assert mount["Source"] == staged.source
    assert mount["BindOptions"]["Propagation"] == "rslave"  # the engine refuses private here
    good = attrs_for(plan)
    assert check_host_config(good, plan, IMAGE_ENV) == []

    def weakened(change: Any) -> list[str]:
        attrs = copy.deepcopy(good)
        (m,) = [m for m in attrs["HostConfig"]["Mounts"] if m["Target"] == ref.mount_path]
        change(m)
        return check_host_config(attrs, plan, IMAGE_ENV)

    assert weakened(lambda m: m.update(ReadOnly=False))
    assert weakened(lambda m: m.update(BindOptions={"Propagation": "rshared"}))
    assert weakened(lambda m: m.update(Type="volume", Source=volume))  # the whole volume
    with pytest.raises(SandboxError, match="not staged"):
        plan_job(job([ref]), RECORD, {ref.name: host_file}, model_volumes={})
    # a plan whose staged path is not inside its volume is caught too
    odd = StagedModel(sha, volume, "/srv/models/m.safetensors")
    bad_plan = plan_job(job([ref]), RECORD, {ref.name: host_file}, model_volumes={ref.name: odd})
    assert any(
        "not the model file" in v
        for v in check_host_config(attrs_for(bad_plan), bad_plan, IMAGE_ENV)
    )


def _untar(data: bytes) -> dict[str, bytes]:
    out = {}
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
        for member in tar:
            fh = tar.extractfile(member)
            out[member.name] = fh.read() if fh else b""
    return out


def test_model_tar_is_streamed_and_checked(tmp_path: Path) -> None:
    blob = os.urandom(3 * 1000 + 7)
    path = tmp_path / "blob"
    path.write_bytes(blob)
    sha = hashlib.sha256(blob).hexdigest()
    chunks = list(model_tar_stream(path, sha, chunk=1000))
    assert max(len(c) for c in chunks) <= 1024  # never the whole file at once
    members = _untar(b"".join(chunks))
    assert members[MODEL_FILE] == blob
    assert list(members) == [MODEL_FILE, MODEL_MARKER]  # the marker comes last
    with pytest.raises(SandboxError, match="not the blob"):
        list(model_tar_stream(path, "0" * 64, chunk=1000))


# ---------------------------------------------------------------------------------------------
# Real engine


def _spec(ref: ModelRef, size: int) -> JobSpec:
    probes = [
        {"name": "read_file", "args": {"path": ref.mount_path, "max_bytes": 2 * size}},
        {"name": "write_file", "args": {"path": ref.mount_path, "mode": "a"}},
        {"name": "mounts", "args": {}},
    ]
    return JobSpec(
        job_id=new_job_id(),
        nonce=new_nonce(),
        kind="probe",
        params={"probes": probes},
        models=[ref],
        limits=SMALL,
    )


def watch_volume_fills(
    monkeypatch: pytest.MonkeyPatch, docker_client: Any, mounts: str
) -> tuple[list[str], list[list[str | None]]]:
    """Record each volume fill (put_archive into FILL_DIR) and, per static check, the volumes
    of the plan's `mounts` ("models" or "plugins")."""
    fills: list[str] = []
    checked: list[list[str | None]] = []
    api = docker_client.api
    real_put, real_check = api.put_archive, check_host_config

    def counting_put(container: Any, path: str, data: Any) -> Any:
        if path == FILL_DIR:
            fills.append(str(container))
        return real_put(container, path, data)

    def recording_check(attrs: Any, plan: Any, image_env: Any = ()) -> list[str]:
        bad = real_check(attrs, plan, image_env)
        checked.append([m.volume for m in getattr(plan, mounts)])
        return bad

    monkeypatch.setattr(api, "put_archive", counting_put)
    monkeypatch.setattr("sandbox.runner.check_host_config", recording_check)
    return fills, checked


def _model_volumes(client: Any, sha: str) -> list[Any]:
    return list(client.volumes.list(filters={"label": f"{LABEL_MODEL_SHA256}={sha}"}))


@pytest.mark.docker
def test_models_travel_in_reused_read_only_volumes(
    docker_client: Any, sandbox_image: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    blob = os.urandom(2 * MiB + 123)  # more than one streamed chunk
    model = tmp_path / "m.safetensors"
    model.write_bytes(blob)
    model.chmod(0o666)  # only the read-only mount can stop a write (EROFS)
    sha = hashlib.sha256(blob).hexdigest()
    ref = ModelRef(name="m.safetensors", mount_path="/models/m.safetensors", sha256=sha)

    real_put = docker_client.api.put_archive  # uncounted: plants broken volumes
    fills, checked = watch_volume_fills(monkeypatch, docker_client, "models")

    def run() -> list[dict[str, Any]]:
        result = run_job(
            _spec(ref, len(blob)),
            image=sandbox_image,
            client=docker_client,
            output_dir=tmp_path / new_job_id(),
            models={ref.name: model},
            gpus="none",
            transport="volume",
        )
        return result.result.data["probes"]  # type: ignore[no-any-return]

    try:
        read, write, mounts = run()
        assert read == {"name": "read_file", "ok": True, "bytes": len(blob)}
        assert write["ok"] is False and write["errname"] == "EROFS", write
        by_target = {m["target"]: m for m in mounts["mounts"]}
        assert "ro" in by_target[ref.mount_path]["options"].split(",")
        assert not [t for t in by_target if t.startswith("/models/") and t != ref.mount_path]
        assert len(fills) == 1
        (volume,) = _model_volumes(docker_client, sha)
        assert checked[-1] == [volume.name]  # the static check saw the volume-backed mount
        with _volume_helper(docker_client, sandbox_image, volume.name, writable=False) as ct:
            stream, _ = docker_client.api.get_archive(ct.id, f"{FILL_DIR}/{MODEL_FILE}")
            assert _untar(b"".join(stream))[MODEL_FILE] == blob
        assert model.read_bytes() == blob

        # a second job reuses the volume: no copy
        assert run()[0]["bytes"] == len(blob)
        assert len(fills) == 1
        assert [v.name for v in _model_volumes(docker_client, sha)] == [volume.name]

        # an interrupted copy (the model cut short, no marker) is removed and rebuilt
        volume.remove(force=True)
        broken = docker_client.volumes.create(
            name=f"assetmgr-model-test-{new_nonce()[:12]}",
            labels={LABEL_MODEL_SHA256: sha, LABEL_SESSION: SESSION_ID},
        )
        with _volume_helper(docker_client, sandbox_image, broken.name, writable=True) as ct:
            assert real_put(ct.id, FILL_DIR, _partial_copy(blob[: MiB // 2]))
        assert run()[0]["bytes"] == len(blob)
        assert len(fills) == 2
        (rebuilt,) = _model_volumes(docker_client, sha)
        assert rebuilt.name not in (volume.name, broken.name)

        # prune finds model volumes only when asked to
        assert rebuilt.name not in prune(docker_client, session=SESSION_ID).model_volumes
        report = prune(docker_client, session=SESSION_ID, models=True)
        assert report.model_volumes == [rebuilt.name]
        assert _model_volumes(docker_client, sha) == []
    finally:
        for vol in _model_volumes(docker_client, sha):
            vol.remove(force=True)


def _partial_copy(data: bytes) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo(MODEL_FILE)
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@pytest.mark.docker
def test_warm_worker_reads_models_from_volumes(
    docker_client: Any, sandbox_image: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sandbox.warm import WarmWorker

    blob = os.urandom(64 << 10)
    model = tmp_path / "w.safetensors"
    model.write_bytes(blob)
    sha = hashlib.sha256(blob).hexdigest()
    ref = ModelRef(name="w.safetensors", mount_path="/models/w.safetensors", sha256=sha)
    try:
        with WarmWorker(
            sandbox_image,
            client=docker_client,
            limits=SMALL,
            models=[ref],
            model_files={ref.name: model},
            gpus="none",
            transport="volume",
        ) as worker:
            result = worker.run(_spec(ref, len(blob)), tmp_path / "out")
            read, write, _mounts = result.result.data["probes"]
            assert read == {"name": "read_file", "ok": True, "bytes": len(blob)}
            assert write["ok"] is False and write["errname"] in ("EROFS", "EACCES"), write
        assert len(_model_volumes(docker_client, sha)) == 1
    finally:
        for vol in _model_volumes(docker_client, sha):
            vol.remove(force=True)


def test_cli_prune_passes_models_through(monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    import assetmgr.cli.sandbox_cmds as cmds
    from assetmgr.cli import app

    calls: list[dict[str, Any]] = []

    class FakeService:
        def prune(self, **kw: Any) -> dict[str, list[str]]:
            calls.append(kw)
            names = ["assetmgr-model-x"] if kw["models"] else []
            return {"containers": [], "volumes": [], "model_volumes": names, "images": []}

    monkeypatch.setattr(cmds, "_service", FakeService)
    result = CliRunner().invoke(app, ["sandbox", "prune", "--models", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["model_volumes"] == ["assetmgr-model-x"]
    assert calls == [{"include_running": False, "models": True}]
    assert CliRunner().invoke(app, ["sandbox", "prune", "--json"]).exit_code == 0
    assert calls[-1]["models"] is False


@pytest.mark.docker
def test_compile_cache_is_writable_by_the_sandbox_user_only_in_its_kernels_dir(
    docker_client: Any, sandbox_image: Any
) -> None:
    from sandbox.runner import (
        COMPILE_CACHE_DIR,
        LABEL_COMPILE_CACHE,
        compile_cache_volume,
        ensure_compile_cache,
    )

    name = compile_cache_volume(sandbox_image.image_id, ()) + "-test"
    try:
        ensure_compile_cache(docker_client, name, sandbox_image)
        ensure_compile_cache(docker_client, name, sandbox_image)  # found, not refilled
        volume = docker_client.volumes.get(name)
        assert volume.attrs["Labels"][LABEL_COMPILE_CACHE] == sandbox_image.image_id
        script = (
            f"touch {COMPILE_CACHE_DIR}/kernels/k.so && echo kernels-ok; "
            f"touch {COMPILE_CACHE_DIR}/root-file 2>/dev/null || echo root-refused"
        )
        out = docker_client.containers.run(
            sandbox_image.image_id,
            ["/bin/sh", "-c", script],
            entrypoint=[],
            user="65534:65534",
            network_mode="none",
            mounts=[docker.types.Mount(COMPILE_CACHE_DIR, name, type="volume")],
            labels={"io.assetmgr.job": "compile-cache-test"},
            remove=True,
        )
        assert out.decode().split() == ["kernels-ok", "root-refused"]
    finally:
        try:
            docker_client.volumes.get(name).remove(force=True)
        except docker.errors.NotFound:
            pass
