"""Runner pieces that need no engine: the plan, the static check, GPU requests, verify_image."""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from unittest.mock import MagicMock

import docker
import docker.errors
import pytest

from sandbox.errors import ImageMismatchError, SandboxError
from sandbox.image.record import ImageRecord, verify_image
from sandbox.protocol import JobSpec, ModelRef
from sandbox.runner import (
    BASE_ENVIRONMENT,
    SANDBOX_USER,
    ContainerPlan,
    check_host_config,
    plan_job,
)

IMAGE_ID = "sha256:" + "a" * 64
RECORD = ImageRecord(
    image_id=IMAGE_ID,
    tag="assetmgr-sandbox:test",
    layer_diff_ids=["sha256:" + "b" * 64, "sha256:" + "c" * 64],
    lock_sha256="d" * 64,
    rootfs_sha256="b" * 64,
    base_ref="sha256:" + "e" * 64,
    torch_variant="cpu",
    app_version="0.1.0",
    worker_sha256="f" * 64,
    inputs_sha256="0" * 64,
    labels={"io.assetmgr.lock.sha256": "d" * 64},
    created_at=datetime.now(UTC),
)


def job(models: list[ModelRef] | None = None) -> JobSpec:
    return JobSpec(
        job_id="job-unit",
        nonce="1" * 32,
        kind="probe",
        params={"probes": [{"name": "sleep"}]},
        models=models or [],
    )


def attrs_for(plan: ContainerPlan) -> dict[str, Any]:
    """What the engine reports for a container created from `plan` (shape of API 1.41)."""
    kw = plan.create_kwargs()
    mounts = []
    for m in kw["mounts"]:
        entry = {
            "Target": m["Target"],
            "Source": m["Source"],
            "Type": m["Type"],
            "ReadOnly": m.get("ReadOnly", False),
        }
        if m.get("BindOptions"):
            entry["BindOptions"] = m["BindOptions"]
        mounts.append(entry)
    return {
        "HostConfig": {
            "NetworkMode": "none",
            "ReadonlyRootfs": True,
            "CapDrop": ["ALL"],
            "CapAdd": None,
            "Privileged": False,
            "SecurityOpt": ["no-new-privileges:true"],
            "PidsLimit": plan.limits.pids,
            "Memory": plan.limits.memory_bytes,
            "MemorySwap": plan.limits.memory_bytes,
            "NanoCpus": kw["nano_cpus"],
            "IpcMode": "private",
            "PidMode": "",
            "UTSMode": "",
            "UsernsMode": "",
            "ShmSize": plan.limits.shm_bytes,
            "Init": False,
            "AutoRemove": False,
            "RestartPolicy": {"Name": "", "MaximumRetryCount": 0},
            "PortBindings": {},
            "LogConfig": {"Type": "local", "Config": {"max-size": "10m", "max-file": "2"}},
            "Tmpfs": dict(kw["tmpfs"]),
            "Ulimits": [
                {"Name": "nofile", "Soft": 4096, "Hard": 4096},
                {"Name": "core", "Soft": 0, "Hard": 0},
            ],
            "Mounts": mounts,
            "OomKillDisable": False,
            "Dns": ["127.0.0.1"],
        },
        "Config": {
            "Image": plan.image_id,
            "Cmd": plan.container_command,
            "OpenStdin": False,
            "User": SANDBOX_USER,
            "Hostname": "sandbox",
            "Labels": dict(plan.labels),
            "Env": [f"{k}={v}" for k, v in plan.environment.items()] + ["PATH=/opt/venv/bin"],
        },
    }


@pytest.fixture
def plan(tmp_path: Path) -> ContainerPlan:
    model = tmp_path / "m.safetensors"
    model.write_bytes(b"x")
    ref = ModelRef(name="m.safetensors", mount_path="/models/m.safetensors", sha256="0" * 64)
    return plan_job(job([ref]), RECORD, {ref.name: model})


def test_plan_is_hardened(plan: ContainerPlan) -> None:
    kw = plan.create_kwargs()
    assert kw["image"] == IMAGE_ID and kw["network_mode"] == "none" and kw["read_only"]
    assert kw["cap_drop"] == ["ALL"] and "cap_add" not in kw
    assert kw["mem_limit"] == kw["memswap_limit"]
    assert kw["use_config_proxy"] is False and kw["init"] is False
    assert kw["user"] == "65534:65534" and kw["ipc_mode"] == "private"
    assert kw["environment"]["HF_HUB_OFFLINE"] == "1"
    assert "device_requests" not in kw
    targets = [(m["Target"], m.get("ReadOnly", False)) for m in kw["mounts"]]
    assert targets == [("/job", False), ("/models/m.safetensors", True)]


def test_static_check_accepts_the_plan_and_catches_each_weakening(plan: ContainerPlan) -> None:
    env = ["PATH=/opt/venv/bin"]
    good = attrs_for(plan)
    assert check_host_config(good, plan, env) == []
    weakenings = {
        "network": ("HostConfig", "NetworkMode", "bridge"),
        "rw root": ("HostConfig", "ReadonlyRootfs", False),
        "caps": ("HostConfig", "CapAdd", ["SYS_ADMIN"]),
        "cap drop": ("HostConfig", "CapDrop", []),
        "privileged": ("HostConfig", "Privileged", True),
        "nnp": ("HostConfig", "SecurityOpt", []),
        "seccomp": ("HostConfig", "SecurityOpt", ["no-new-privileges:true", "seccomp=unconfined"]),
        "pids": ("HostConfig", "PidsLimit", 0),
        "swap": ("HostConfig", "MemorySwap", -1),
        "ipc": ("HostConfig", "IpcMode", "host"),
        "pid": ("HostConfig", "PidMode", "host"),
        "userns": ("HostConfig", "UsernsMode", "host"),
        "docker-init": ("HostConfig", "Init", True),
        "logs": ("HostConfig", "LogConfig", {"Type": "json-file", "Config": {}}),
        "ports": ("HostConfig", "PortBindings", {"80/tcp": [{"HostPort": "80"}]}),
        "devices": ("HostConfig", "Devices", [{"PathOnHost": "/dev/sda"}]),
        "tmpfs exec": ("HostConfig", "Tmpfs", {"/tmp": "rw,size=1m"}),
        "user": ("Config", "User", "0"),
        "command": ("Config", "Cmd", ["sh"]),
        "stdin": ("Config", "OpenStdin", True),
        "image": ("Config", "Image", "busybox:latest"),
        "env": ("Config", "Env", ["PATH=/opt/venv/bin", "CIVITAI_API_KEY=x"]),
        "socket": (
            "HostConfig",
            "Mounts",
            [
                {
                    "Type": "bind",
                    "Source": "/var/run/docker.sock",
                    "Target": "/var/run/docker.sock",
                    "ReadOnly": True,
                }
            ],
        ),
    }
    for what, (section, key, value) in weakenings.items():
        bad = copy.deepcopy(good)
        bad[section][key] = value
        assert check_host_config(bad, plan, env), what
    rw_model = copy.deepcopy(good)
    rw_model["HostConfig"]["Mounts"][1]["ReadOnly"] = False
    assert check_host_config(rw_model, plan, env)


def test_models_are_exactly_what_the_spec_names(tmp_path: Path) -> None:
    a = tmp_path / "a"
    a.write_bytes(b"a")
    ref = ModelRef(name="a", mount_path="/models/a", sha256="0" * 64)
    with pytest.raises(SandboxError):
        plan_job(job([ref]), RECORD, {"a": a, "b": a})  # extra file: refused
    with pytest.raises(SandboxError):
        plan_job(job([ref]), RECORD, {"a": tmp_path / "missing"})
    with pytest.raises(SandboxError):
        plan_job(job([ref]), RECORD, {"a": tmp_path})  # a directory, not a file
    link = tmp_path / "link"
    link.symlink_to(a)
    plan = plan_job(job([ref]), RECORD, {"a": link})
    assert plan.models[0].source == str(a.resolve())  # the blob itself is mounted
    remote = plan_job(job([ref]), RECORD, {"a": Path("/srv/models/a")}, check_local_paths=False)
    assert remote.models[0].source == "/srv/models/a"


def test_gpu_requests_follow_the_engine() -> None:
    client = MagicMock(spec=docker.DockerClient)
    client.info.return_value = {"Runtimes": {"runc": {}}}
    assert plan_job(job(), RECORD, client=client).gpu is None
    client.info.return_value = {"Runtimes": {"runc": {}, "nvidia": {}}}
    plan = plan_job(job(), RECORD, client=client)
    assert plan.gpu is not None and plan.gpu["Count"] == -1
    assert plan.gpu["Capabilities"] == [["gpu"]]
    assert plan.environment["NVIDIA_DRIVER_CAPABILITIES"] == "compute,utility"
    assert "device_requests" in plan.create_kwargs()
    ids = plan_job(job(), RECORD, client=client, gpus=["1"]).gpu
    assert ids is not None and ids["DeviceIDs"] == ["1"]
    assert plan_job(job(), RECORD, client=client, gpus="none").gpu is None


def test_gpu_jobs_get_a_compile_cache_per_image_and_plugin_set() -> None:
    from sandbox.protocol import PluginRef
    from sandbox.runner import COMPILE_CACHE_DIR, COMPILE_CACHE_ENV, compile_cache_volume

    client = MagicMock(spec=docker.DockerClient)
    client.info.return_value = {"Runtimes": {"runc": {}}}
    cpu = plan_job(job(), RECORD, client=client)
    assert cpu.compile_cache is None and COMPILE_CACHE_ENV not in cpu.environment
    assert all(m["Target"] != COMPILE_CACHE_DIR for m in cpu.create_kwargs()["mounts"])

    client.info.return_value = {"Runtimes": {"runc": {}, "nvidia": {}}}
    gpu = plan_job(job(), RECORD, client=client)
    assert gpu.compile_cache == compile_cache_volume(IMAGE_ID, ())
    assert gpu.environment[COMPILE_CACHE_ENV] == f"{COMPILE_CACHE_DIR}/kernels"
    (mount,) = [m for m in gpu.create_kwargs()["mounts"] if m["Target"] == COMPILE_CACHE_DIR]
    assert mount["Type"] == "volume" and mount["Source"] == gpu.compile_cache
    assert mount["ReadOnly"] is False  # compiled kernels are written here
    # Plugins share the worker's process and could plant code in the cache: another plugin
    # set (or another image) gets another cache.
    plugin = PluginRef(
        name="wildcards",
        version="1.0.0",
        sha256="9" * 64,
        entry="wildcards",
        hooks=("prompt_transform",),
    )
    assert compile_cache_volume(IMAGE_ID, (plugin,)) != gpu.compile_cache
    assert compile_cache_volume("sha256:" + "1" * 64, ()) != gpu.compile_cache

    attrs = attrs_for(gpu)
    attrs["HostConfig"]["DeviceRequests"] = [gpu.gpu]
    assert check_host_config(attrs, gpu, ["PATH=/opt/venv/bin"]) == []
    # The writable cache is allowed only where planned, and only that volume.
    cpu_attrs = attrs_for(cpu)
    cpu_attrs["HostConfig"]["Mounts"].append(dict(mount))
    assert any("unexpected mount" in v for v in check_host_config(cpu_attrs, cpu, []))
    attrs["HostConfig"]["Mounts"][-1]["Source"] = "someone-elses-volume"
    assert any("compile cache" in v for v in check_host_config(attrs, gpu, ["PATH=/opt/venv/bin"]))


def test_environment_is_only_the_allowlist(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CIVITAI_API_KEY", "secret")
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy:3128")
    env = plan_job(job(), RECORD).environment
    assert set(env) == set(BASE_ENVIRONMENT) | {"OMP_NUM_THREADS", "MKL_NUM_THREADS"}


def _image(id_: str, layers: list[str], labels: dict[str, str]) -> MagicMock:
    img = MagicMock()
    img.id = id_
    img.attrs = {"RootFS": {"Layers": layers}}
    img.labels = labels
    return img


def test_verify_image_detects_changes() -> None:
    client = MagicMock()
    good = _image(IMAGE_ID, RECORD.layer_diff_ids, dict(RECORD.labels))
    client.images.get.side_effect = lambda ref: good
    verify_image(RECORD, client)

    cases = {
        "layers": _image(IMAGE_ID, ["sha256:" + "9" * 64], dict(RECORD.labels)),
        "labels": _image(IMAGE_ID, RECORD.layer_diff_ids, {"io.assetmgr.lock.sha256": "x"}),
    }
    for what, img in cases.items():
        client.images.get.side_effect = lambda ref, img=img: img
        with pytest.raises(ImageMismatchError):
            verify_image(RECORD, client)
        assert what

    other = _image("sha256:" + "9" * 64, RECORD.layer_diff_ids, dict(RECORD.labels))
    client.images.get.side_effect = lambda ref: good if ref == IMAGE_ID else other
    with pytest.raises(ImageMismatchError, match="tag"):
        verify_image(RECORD, client)

    def missing(ref: str) -> Any:
        raise docker.errors.ImageNotFound("gone")

    client.images.get.side_effect = missing
    with pytest.raises(ImageMismatchError, match="not on this Docker engine"):
        verify_image(RECORD, client)


def test_verify_image_costs_one_engine_call_when_the_tag_holds() -> None:
    client = MagicMock()
    good = _image(IMAGE_ID, RECORD.layer_diff_ids, dict(RECORD.labels))
    client.images.get.side_effect = lambda ref: good
    verify_image(RECORD, client)
    assert [c.args for c in client.images.get.call_args_list] == [(RECORD.tag,)]

    def tag_removed(ref: str) -> Any:
        if ref == RECORD.tag:
            raise docker.errors.ImageNotFound("untagged")
        return good

    client.images.get.side_effect = tag_removed
    with pytest.raises(ImageMismatchError, match="was removed"):
        verify_image(RECORD, client)
    # the tag inspected alone never vouches for an image with other layers or labels
    tampered = _image(IMAGE_ID, ["sha256:" + "9" * 64], dict(RECORD.labels))
    client.images.get.side_effect = lambda ref: tampered
    with pytest.raises(ImageMismatchError, match="layer"):
        verify_image(RECORD, client)


def test_engines_without_seccomp_are_refused() -> None:
    from sandbox.engine import engine_security_problems
    from sandbox.runner import check_engine

    client = MagicMock()
    client.info.return_value = {"SecurityOptions": ["name=seccomp,profile=default"]}
    assert engine_security_problems(client) == []
    check_engine(client)
    for options in ([], ["name=apparmor"], ["name=seccomp,profile=unconfined"]):
        bad = MagicMock()
        bad.info.return_value = {"SecurityOptions": options}
        assert engine_security_problems(bad)
        with pytest.raises(SandboxError, match="seccomp"):
            check_engine(bad)
