"""Isolation suite: real engine, real pinned image, production container config.

Every negative probe sits next to a positive control and asserts the specific errno, so a
missing tool or a crashed probe never passes for "blocked". The
read-only probes share one container; probes that need other limits or kill the worker get
their own.
"""

from __future__ import annotations

import errno
import hashlib
import ipaddress
import os
import socket
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from assetmgr.wording import describe
from assetmgr.wording.sandbox import OOM_HINT
from sandbox.errors import (
    HostConfigError,
    HostileOutputError,
    JobFailedError,
    JobTimeoutError,
    WorkerProtocolError,
)
from sandbox.labels import INIT_COMMAND, WORKER_COMMAND
from sandbox.protocol import JobSpec, Limits, ModelRef, StreamLimits
from sandbox.runner import (
    BASE_ENVIRONMENT,
    LABEL_JOB,
    ContainerPlan,
    JobContainer,
    JobResult,
    check_host_config,
    new_job_id,
    new_nonce,
    plan_job,
    run_job,
)

pytestmark = [pytest.mark.docker]

MiB = 1 << 20
SMALL = Limits(timeout_s=60, memory_bytes=1024 * MiB, tmpfs_bytes=64 * MiB, shm_bytes=64 * MiB)


def probe_spec(
    probes: Sequence[tuple[str, dict[str, Any]]],
    limits: Limits = SMALL,
    models: Sequence[ModelRef] = (),
) -> JobSpec:
    return JobSpec(
        job_id=new_job_id(),
        nonce=new_nonce(),
        kind="probe",
        params={"probes": [{"name": n, "args": a} for n, a in probes]},
        models=list(models),
        limits=limits,
    )


def run_probes(
    image: Any, client: Any, out: Path, probes: Sequence[tuple[str, dict[str, Any]]], **kw: Any
) -> tuple[list[dict[str, Any]], JobResult]:
    models = kw.pop("model_files", None)
    spec = probe_spec(probes, **kw)
    result = run_job(spec, image=image, client=client, output_dir=out, models=models, gpus="none")
    observations = result.result.data["probes"]
    assert isinstance(observations, list) and len(observations) == len(probes)
    return observations, result  # type: ignore[return-value]


def leftovers(client: Any, job_id: str) -> tuple[list[Any], list[Any]]:
    label = f"{LABEL_JOB}={job_id}"
    return (
        client.containers.list(all=True, filters={"label": label}),
        client.volumes.list(filters={"label": label}),
    )


class Listener:
    """A TCP server on all host interfaces that counts accepted connections."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("0.0.0.0", 0))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.accepted += 1
            conn.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self.sock.close()


@pytest.fixture
def listener() -> Iterator[Listener]:
    server = Listener()
    yield server
    server.close()


@pytest.fixture(scope="module")
def bridge_ip(docker_client: Any) -> str:
    config = docker_client.networks.get("bridge").attrs["IPAM"]["Config"][0]
    if config.get("Gateway"):
        return str(config["Gateway"])
    return str(ipaddress.ip_network(config["Subnet"])[1])  # docker0 takes the first address


# ---------------------------------------------------------------------------------------------
# One container, many read-only probes


@pytest.fixture(scope="module")
def readonly_probes(
    docker_client: Any, sandbox_image: Any, bridge_ip: str, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("ro")
    model = tmp / "model.safetensors"
    model.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ")
    # world-writable on the host, so only the read-only mount can stop the write (EROFS, not
    # a permission error)
    model.chmod(0o666)
    ref = ModelRef(
        name="model.safetensors",
        mount_path="/models/model.safetensors",
        sha256=hashlib.sha256(model.read_bytes()).hexdigest(),
    )
    server = Listener()
    old_key = os.environ.get("CIVITAI_API_KEY")
    os.environ["CIVITAI_API_KEY"] = "sk-fake-host-secret-0123456789"
    os.environ["ASSETMGR_TEST_SECRET"] = "host-only"
    try:
        # positive control: the same connect from the host reaches the listener
        with socket.create_connection((bridge_ip, server.port), timeout=3):
            pass
        deadline = time.monotonic() + 3
        while server.accepted < 1 and time.monotonic() < deadline:
            time.sleep(0.02)
        control_accepts = server.accepted
        probes: list[tuple[str, dict[str, Any]]] = [
            ("net_interfaces", {}),
            ("dns", {"host": "example.com"}),
            ("udp_nameserver", {"server": "9.9.9.9"}),
            ("tcp_connect", {"host": bridge_ip, "port": server.port, "timeout": 3}),
            ("tcp_connect", {"host": "127.0.0.1", "port": server.port, "timeout": 3}),
            ("write_file", {"path": "/evil"}),
            ("write_file", {"path": "/usr/lib/evil"}),
            ("write_file", {"path": "/models/model.safetensors", "mode": "a"}),
            ("write_file", {"path": "/models/new.safetensors"}),
            ("write_file", {"path": "/tmp/ok"}),
            ("read_file", {"path": "/models/model.safetensors"}),
            ("exec_tmp", {}),
            ("run_binary", {"argv": ["/bin/true"]}),
            ("tmpfs_fill", {"max_bytes": 256 * MiB}),
            ("proc_status", {}),
            ("mount_tmpfs", {"target": "/tmp"}),
            ("unshare", {"namespaces": ["user", "net", "mount"]}),
            ("environ", {}),
            ("docker_socket", {}),
            ("processes", {}),
            ("hostname", {}),
            ("mounts", {}),
            ("read_file", {"path": "/proc/kcore"}),
            ("ptrace_init", {}),
            ("ptrace_child", {}),
            ("proc_mem_init", {}),
            ("process_vm_init", {}),
            ("signal_init", {}),
            ("read_file", {"path": "/proc/1/environ"}),
        ]
        observations, result = run_probes(
            sandbox_image,
            docker_client,
            tmp / "out",
            probes,
            models=[ref],
            model_files={ref.name: model},
        )
        time.sleep(0.3)  # let a late SYN land, if one were ever sent
        return {
            "obs": observations,
            "result": result,
            "control_accepts": control_accepts,
            "accepts_after": server.accepted,
            "model_bytes": model.read_bytes(),
            "model_path": model,
        }
    finally:
        server.close()
        if old_key is None:
            os.environ.pop("CIVITAI_API_KEY", None)
        else:
            os.environ["CIVITAI_API_KEY"] = old_key
        os.environ.pop("ASSETMGR_TEST_SECRET", None)


def obs(data: dict[str, Any], index: int) -> dict[str, Any]:
    o = data["obs"][index]
    assert "exception" not in o, o  # a crashed probe is never a pass
    return o  # type: ignore[no-any-return]


def test_only_loopback_exists(readonly_probes: dict[str, Any]) -> None:
    o = obs(readonly_probes, 0)
    assert o["sys_class_net"] == ["lo"]
    assert o["proc_net_dev"] == ["lo"]


def test_dns_fails(readonly_probes: dict[str, Any]) -> None:
    o = obs(readonly_probes, 1)
    assert o["ok"] is False
    assert o["gai_errno"] in (socket.EAI_AGAIN, socket.EAI_NONAME, socket.EAI_FAIL), o
    udp = obs(readonly_probes, 2)
    assert udp["ok"] is False and udp["errname"] == "ENETUNREACH", udp
    assert udp["resolv_conf"] == "127.0.0.1"  # the host's resolver address is not leaked


def test_tcp_to_host_bridge_and_loopback_fails(readonly_probes: dict[str, Any]) -> None:
    bridge = obs(readonly_probes, 3)
    assert bridge["ok"] is False and bridge["errname"] == "ENETUNREACH", bridge
    loop = obs(readonly_probes, 4)  # the container's own lo: nothing listens there
    assert loop["ok"] is False and loop["errname"] == "ECONNREFUSED", loop
    assert readonly_probes["control_accepts"] == 1  # positive control from the host
    assert readonly_probes["accepts_after"] == 1  # zero accepts from the container


def test_root_and_models_are_read_only(readonly_probes: dict[str, Any]) -> None:
    for index in (5, 6, 7, 8):
        o = obs(readonly_probes, index)
        assert o["ok"] is False and o["errname"] == "EROFS", o
    assert obs(readonly_probes, 9)["ok"] is True  # control: /tmp is writable
    assert obs(readonly_probes, 10) == {"name": "read_file", "ok": True, "bytes": 16}
    assert readonly_probes["model_path"].read_bytes() == readonly_probes["model_bytes"]
    mounts = {m["target"]: m for m in obs(readonly_probes, 21)["mounts"]}
    assert "ro" in mounts["/models/model.safetensors"]["options"].split(",")
    assert "ro" in mounts["/"]["options"].split(",")
    job = mounts["/job"]  # the job volume: a size-capped tmpfs, nothing executable
    assert job["fstype"] == "tmpfs"
    assert {"nosuid", "nodev", "noexec"} <= set(job["options"].split(","))
    assert not [t for t in mounts if t.startswith("/models/") and t != "/models/model.safetensors"]


def test_tmp_is_noexec_and_size_capped(readonly_probes: dict[str, Any]) -> None:
    o = obs(readonly_probes, 11)
    assert o["wrote"] is True and o["errname"] == "EACCES", o
    assert obs(readonly_probes, 12)["ok"] is True  # control: image binaries run
    fill = obs(readonly_probes, 13)
    assert fill["errname"] == "ENOSPC", fill
    assert fill["written"] <= 64 * MiB


def test_no_privileges(readonly_probes: dict[str, Any]) -> None:
    o = obs(readonly_probes, 14)
    for cap in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
        assert int(o[cap], 16) == 0, (cap, o[cap])
    assert o["NoNewPrivs"] == "1"
    assert o["Seccomp"] == "2"
    assert o["uid"] == 65534 and o["euid"] == 65534 and o["gid"] == 65534


def test_mount_and_unshare_refused(readonly_probes: dict[str, Any]) -> None:
    m = obs(readonly_probes, 15)
    assert m["ok"] is False and m["errno"] == errno.EPERM, m
    u = obs(readonly_probes, 16)
    for ns in ("user", "net", "mount"):
        assert u["namespaces"][ns]["errno"] == errno.EPERM, u


def test_host_environment_is_invisible(readonly_probes: dict[str, Any]) -> None:
    env = obs(readonly_probes, 17)["environ"]
    assert "CIVITAI_API_KEY" not in env
    assert "ASSETMGR_TEST_SECRET" not in env
    assert not [k for k in env if "proxy" in k.lower()]
    assert set(env) <= set(BASE_ENVIRONMENT) | {
        "PATH",
        "HOSTNAME",
        "OMP_NUM_THREADS",
        "MKL_NUM_THREADS",
    }
    assert all(env[k] == v for k, v in BASE_ENVIRONMENT.items())


def test_no_docker_socket_and_no_host_processes(readonly_probes: dict[str, Any]) -> None:
    sock = obs(readonly_probes, 18)
    assert sock["present"] == [] and sock["mounted"] == []
    procs = obs(readonly_probes, 19)["processes"]
    comms = {p["comm"] for p in procs}
    assert comms <= {"sandbox-init", "python", "python3", "python3.11"}, comms
    assert {p["uid"] for p in procs} == {65534}
    assert (procs[0]["pid"], procs[0]["comm"]) == (1, "sandbox-init")
    assert obs(readonly_probes, 20)["hostname"] == "sandbox"


def test_proc_kcore_is_masked(readonly_probes: dict[str, Any]) -> None:
    o = obs(readonly_probes, 22)
    # masked (reads as empty) or, on kernels without it, absent
    assert (o["ok"] and o["bytes"] == 0) or o.get("errname") in ("EACCES", "EPERM", "ENOENT"), o


def test_the_init_cannot_be_traced_stopped_or_written(readonly_probes: dict[str, Any]) -> None:
    control = obs(readonly_probes, 24)  # ptrace itself works on the job's own processes
    assert control["ok"] is True and control["state_while_traced"] == "t", control
    traced = obs(readonly_probes, 23)
    assert traced["ok"] is False and traced["errname"] == "EPERM", traced
    assert traced["init_state_after"] == "S", traced
    mem = obs(readonly_probes, 25)
    assert mem["ok"] is False and mem["errname"] in ("EACCES", "EPERM"), mem
    vm = obs(readonly_probes, 26)
    assert vm["ok"] is False and vm["errname"] == "EPERM", vm  # EFAULT would mean allowed
    stop = obs(readonly_probes, 27)
    assert stop["ok"] is True and stop["stopped_by"] == [], stop
    assert set(stop["states"]) == {"SIGSTOP", "SIGTSTP", "SIGTTIN", "SIGTTOU"}
    environ = obs(readonly_probes, 28)  # non-dumpable: not even readable by the job's uid
    assert environ["ok"] is False and environ["errname"] == "EACCES", environ


# ---------------------------------------------------------------------------------------------
# Resource abuse: each in its own container


def test_fork_bomb_stops_at_pids_limit(
    docker_client: Any, sandbox_image: Any, tmp_path: Path
) -> None:
    limits = Limits(timeout_s=60, memory_bytes=1024 * MiB, pids=64)
    (o,), _ = run_probes(
        sandbox_image, docker_client, tmp_path, [("fork_bomb", {"max": 1000})], limits=limits
    )
    assert o["ok"] is False and o["errname"] == "EAGAIN", o
    assert 0 < o["forked"] < 64


def test_memory_hog_is_oom_killed(docker_client: Any, sandbox_image: Any, tmp_path: Path) -> None:
    limits = Limits(timeout_s=60, memory_bytes=256 * MiB, tmpfs_bytes=16 * MiB, shm_bytes=16 * MiB)
    with pytest.raises(JobFailedError) as info:
        run_probes(sandbox_image, docker_client, tmp_path, [("memory_hog", {})], limits=limits)
    assert info.value.oom_killed is True
    assert info.value.container_exit_code == 137
    assert f"job {info.value.job_id} was killed by the kernel's OOM killer" in info.value.message
    words = describe(info.value)
    assert words is not None and words.hint == OOM_HINT
    assert docker_client.ping()  # the engine (and this host process) carry on
    assert leftovers(docker_client, info.value.job_id) == ([], [])


def test_hung_job_is_killed_at_timeout_and_cleaned_up(
    docker_client: Any, sandbox_image: Any, tmp_path: Path
) -> None:
    limits = Limits(timeout_s=3, memory_bytes=512 * MiB)
    t0 = time.monotonic()
    with pytest.raises(JobTimeoutError) as info:
        run_probes(sandbox_image, docker_client, tmp_path, [("hang", {})], limits=limits)
    elapsed = time.monotonic() - t0
    assert 3 <= elapsed < 15
    assert any("log tail" in note for note in getattr(info.value, "__notes__", []))
    assert leftovers(docker_client, info.value.job_id) == ([], [])


# ---------------------------------------------------------------------------------------------
# Hostile output, floods and forged results


def test_hostile_outputs_are_rejected(
    docker_client: Any, sandbox_image: Any, tmp_path: Path
) -> None:
    kinds = [
        ("good_png", "good.png"),
        ("bomb_png", "bomb.png"),
        ("symlink", "link.png"),
        ("hardlink", "hard.png"),
        ("fifo", "pipe.png"),
        ("bad_name", "evil.sh"),
        ("subdir", "sub.png"),
        ("not_png", "fake.png"),
        ("big_file", "big.png"),
    ]
    probes = [
        ("write_output", {"kind": k, "name": n, "side": 10000, "bytes": 70 * MiB}) for k, n in kinds
    ]
    out = tmp_path / "out"
    with pytest.raises(HostileOutputError) as info:
        run_probes(sandbox_image, docker_client, out, probes)
    reasons = dict(info.value.rejected)
    assert "pixels" in reasons["out/bomb.png"]
    assert "Link" in reasons["out/link.png"]  # tarfile data filter: absolute link
    # whichever of the two names docker's tar lists second is the hard-link entry
    hard = reasons.get("out/hard.png", "") + reasons.get("out/hardlink-src.png", "")
    assert "links are not allowed" in hard
    assert "SpecialFileError" in reasons["out/pipe.png"]
    assert "allowlist" in reasons["out/evil.sh"]
    assert "unexpected directory" in reasons["out/sub.png"]
    assert "allowlist" in reasons["out/sub.png/inner.png"]
    assert "not a PNG" in reasons["out/fake.png"]
    assert "larger than" in reasons["out/big.png"]
    assert "out/good.png" not in reasons
    assert list(out.iterdir()) == []  # nothing kept when anything was rejected
    assert leftovers(docker_client, info.value.job_id) == ([], [])


def test_good_output_is_reencoded(docker_client: Any, sandbox_image: Any, tmp_path: Path) -> None:
    from PIL import Image

    spec = JobSpec(
        job_id=new_job_id(),
        nonce=new_nonce(),
        kind="echo",
        params={"width": 48, "height": 32, "rgb": [10, 20, 30], "text": "hello"},
        limits=SMALL,
    )
    result = run_job(spec, image=sandbox_image, client=docker_client, output_dir=tmp_path)
    assert [p.name for p in result.images] == ["echo.png"]
    with Image.open(result.images[0]) as im:
        assert im.size == (48, 32) and im.getpixel((0, 0)) == (10, 20, 30)
    assert result.result.data["text"] == "hello"


def test_log_flood_is_bounded(docker_client: Any, sandbox_image: Any, tmp_path: Path) -> None:
    # stderr and print() floods: the job still completes; the host keeps only a bounded tail
    probes: list[tuple[str, dict[str, Any]]] = [
        ("log_flood", {"stream": "stderr", "bytes": 8 * MiB, "line_bytes": 64 * 1024}),
        ("log_flood", {"stream": "stdout", "bytes": 8 * MiB, "line_bytes": 2 * MiB}),
    ]
    _, result = run_probes(sandbox_image, docker_client, tmp_path, probes)
    assert len(result.log_tail) <= 200
    assert all(len(line) <= 1000 for line in result.log_tail)
    # protocol flood (a plugin writing to the protocol descriptor): job rejected, quickly
    t0 = time.monotonic()
    with pytest.raises(WorkerProtocolError) as info:
        run_job(
            probe_spec([("log_flood", {"stream": "protocol", "bytes": 64 * MiB})]),
            image=sandbox_image,
            client=docker_client,
            output_dir=tmp_path / "2",
            stream_limits=StreamLimits(max_total_bytes=4 * MiB),
        )
    assert "exceeded" in str(info.value)
    assert time.monotonic() - t0 < 30
    assert leftovers(docker_client, info.value.job_id) == ([], [])


def test_forged_result_lines_do_not_win(
    docker_client: Any, sandbox_image: Any, tmp_path: Path
) -> None:
    probes: list[tuple[str, dict[str, Any]]] = [
        ("forge_result", {"via": "print", "nonce": "right"}),  # lands on stderr
        ("forge_result", {"via": "protocol", "nonce": "wrong"}),  # ignored
    ]
    obs_, result = run_probes(sandbox_image, docker_client, tmp_path, probes)
    assert "forged" not in result.result.data
    assert [o["via"] for o in obs_] == ["print", "protocol"]
    assert any("wrong job id or nonce" in v for v in result.violations)
    assert any('"forged":true' in line for line in result.log_tail)
    # a plugin that found the nonce and the protocol descriptor: the job is rejected whole
    with pytest.raises(WorkerProtocolError, match="second result"):
        run_probes(
            sandbox_image,
            docker_client,
            tmp_path / "2",
            [("forge_result", {"via": "protocol", "nonce": "right"})],
        )


# ---------------------------------------------------------------------------------------------
# Static HostConfig checks on a really created container


def test_created_container_passes_static_checks(
    docker_client: Any, sandbox_image: Any, tmp_path: Path
) -> None:
    model = tmp_path / "m.safetensors"
    model.write_bytes(b"x" * 16)
    ref = ModelRef(name="m.safetensors", mount_path="/models/m.safetensors", sha256="0" * 64)
    spec = probe_spec([("sleep", {})], models=[ref])
    plan = plan_job(spec, sandbox_image, {ref.name: model}, client=docker_client, gpus="none")
    with JobContainer(docker_client, plan) as job:
        attrs = job.container.attrs
        hc, cfg = attrs["HostConfig"], attrs["Config"]
        assert hc["NetworkMode"] == "none"
        assert hc["ReadonlyRootfs"] is True
        assert hc["CapDrop"] == ["ALL"] and not hc["CapAdd"]
        assert hc["Privileged"] is False
        assert hc["SecurityOpt"] == ["no-new-privileges:true"]
        assert hc["PidsLimit"] == spec.limits.pids
        assert hc["Memory"] == hc["MemorySwap"] == spec.limits.memory_bytes
        assert hc["NanoCpus"] > 0
        assert hc["IpcMode"] == "private" and hc["ShmSize"] == spec.limits.shm_bytes
        assert not hc["Init"]  # our own PID 1 instead of docker-init
        assert cfg["Cmd"] == [*INIT_COMMAND, *WORKER_COMMAND]
        assert hc["LogConfig"]["Type"] == "local" and hc["LogConfig"]["Config"]["max-size"]
        assert hc["Tmpfs"]["/tmp"].startswith("rw,noexec,nosuid,nodev")
        assert not hc["PortBindings"] and not hc.get("Devices")
        assert cfg["User"] == "65534:65534" and cfg["Image"] == sandbox_image.image_id
        binds = [m for m in hc["Mounts"] if m["Type"] == "bind"]
        assert [(m["Target"], m["ReadOnly"]) for m in binds] == [("/models/m.safetensors", True)]
        image_env = docker_client.images.get(sandbox_image.image_id).attrs["Config"]["Env"]
        assert check_host_config(attrs, plan, image_env) == []
        job_id = spec.job_id
    assert leftovers(docker_client, job_id) == ([], [])


def test_prune_removes_strays_by_label(docker_client: Any, sandbox_image: Any) -> None:
    from sandbox.runner import SESSION_ID, prune

    spec = probe_spec([("sleep", {})])
    plan = plan_job(spec, sandbox_image, gpus="none")
    stray = JobContainer(docker_client, plan)
    stray.create()  # never removed: what a crashed host process leaves behind
    assert leftovers(docker_client, spec.job_id) != ([], [])
    report = prune(docker_client, session=SESSION_ID)
    assert plan.name in report.containers and plan.volume_name in report.volumes
    assert leftovers(docker_client, spec.job_id) == ([], [])


def test_weakened_config_is_caught_before_start(
    docker_client: Any, sandbox_image: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = probe_spec([("sleep", {})])
    plan = plan_job(spec, sandbox_image, client=docker_client, gpus="none")
    original = ContainerPlan.create_kwargs
    weakenings = {
        "CapDrop": lambda kw: kw.pop("cap_drop"),
        "network": lambda kw: kw.update(network_mode="bridge"),
        "swap": lambda kw: kw.update(memswap_limit=-1),
        "seccomp": lambda kw: kw.update(security_opt=["seccomp=unconfined"]),
        "environment": lambda kw: kw["environment"].update(CIVITAI_API_KEY="leak"),
    }
    for what, weaken in weakenings.items():

        def patched(self: ContainerPlan, _weaken: Any = weaken) -> dict[str, Any]:
            kw = original(self)
            _weaken(kw)
            return kw

        monkeypatch.setattr(ContainerPlan, "create_kwargs", patched)
        with pytest.raises(HostConfigError):
            with JobContainer(docker_client, plan):
                pytest.fail(f"weakened {what} was not caught")
        assert leftovers(docker_client, spec.job_id) == ([], []), what
