"""Static check of a created container's configuration, docker-bench style, before it starts.

`check_host_config` lists every way ``container.attrs`` differs from the hardened plan; it
catches a regression in the create() arguments even where no behaviour test could see it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import PurePosixPath
from typing import Any

from sandbox.labels import (
    COMPILE_CACHE_DIR,
    DNS_PLACEHOLDER,
    HOSTNAME,
    MODEL_FILE,
    PLUGIN_DIR,
    SANDBOX_USER,
)
from sandbox.plan import ContainerPlan
from sandbox.protocol import JOB_DIR

_MEMBER_WHAT = {MODEL_FILE: "model file", PLUGIN_DIR: "plugin directory"}


def _env_dict(entries: Sequence[str] | None) -> dict[str, str]:
    out = {}
    for item in entries or []:
        key, _, value = item.partition("=")
        out[key] = value
    return out


def check_host_config(
    attrs: Mapping[str, Any], plan: ContainerPlan, image_env: Sequence[str] = ()
) -> list[str]:
    """Violations of the hardening in `attrs` (``container.attrs``); empty when all hold.

    Catches a regression in the create() arguments even where no behaviour test could see it.
    """
    hc: Mapping[str, Any] = attrs.get("HostConfig") or {}
    cfg: Mapping[str, Any] = attrs.get("Config") or {}
    lim = plan.limits
    bad: list[str] = []

    def need(ok: bool, what: str) -> None:
        if not ok:
            bad.append(what)

    need(hc.get("NetworkMode") == "none", f"NetworkMode is {hc.get('NetworkMode')!r}")
    need(hc.get("ReadonlyRootfs") is True, "root filesystem is writable")
    need(list(hc.get("CapDrop") or []) == ["ALL"], f"CapDrop is {hc.get('CapDrop')!r}")
    need(not hc.get("CapAdd"), f"CapAdd is {hc.get('CapAdd')!r}")
    need(hc.get("Privileged") is False, "privileged")
    secopt = list(hc.get("SecurityOpt") or [])
    need("no-new-privileges:true" in secopt, "no-new-privileges missing")
    need(not any("unconfined" in s for s in secopt), f"unconfined profile in {secopt}")
    need(
        not any(s.startswith(("seccomp", "apparmor", "label")) for s in secopt),
        f"custom security profile in {secopt}",
    )
    need(hc.get("PidsLimit") == lim.pids, f"PidsLimit is {hc.get('PidsLimit')!r}")
    need(hc.get("Memory") == lim.memory_bytes, f"Memory is {hc.get('Memory')!r}")
    need(hc.get("MemorySwap") == hc.get("Memory"), "MemorySwap != Memory (swap allowed)")
    need(not hc.get("OomKillDisable"), "OOM killer disabled")
    need((hc.get("NanoCpus") or 0) > 0, "no CPU limit")
    need(hc.get("IpcMode") == "private", f"IpcMode is {hc.get('IpcMode')!r}")
    need(hc.get("PidMode") in ("", None), f"PidMode is {hc.get('PidMode')!r}")
    need(hc.get("UTSMode") in ("", None), f"UTSMode is {hc.get('UTSMode')!r}")
    need(hc.get("UsernsMode") in ("", None), f"UsernsMode is {hc.get('UsernsMode')!r}")
    need(hc.get("ShmSize") == lim.shm_bytes, f"ShmSize is {hc.get('ShmSize')!r}")
    need(not hc.get("Init"), "docker-init as PID 1 (the job could ptrace-stop it)")
    need(hc.get("AutoRemove") is False, "auto-remove on (state would vanish)")
    need((hc.get("RestartPolicy") or {}).get("Name") in ("", "no", None), "restart policy set")
    need(not hc.get("PortBindings") and not hc.get("PublishAllPorts"), "ports published")
    need(not hc.get("Links") and not hc.get("ExtraHosts"), "links or extra hosts")
    need(not hc.get("Devices") and not hc.get("DeviceCgroupRules"), "host devices mapped")
    need(not hc.get("Binds") and not hc.get("VolumesFrom"), "binds or volumes-from")
    need(not hc.get("Sysctls"), "sysctls set")
    need(list(hc.get("Dns") or []) == [DNS_PLACEHOLDER], f"DNS servers {hc.get('Dns')!r}")
    log = hc.get("LogConfig") or {}
    need(
        log.get("Type") == "local" and bool((log.get("Config") or {}).get("max-size")),
        f"log config {log!r} has no size cap",
    )
    # container-side paths: the job's private /tmp tmpfs
    tmpfs = hc.get("Tmpfs") or {}
    need(set(tmpfs) == {"/tmp"}, f"tmpfs mounts {sorted(tmpfs)}")  # noqa: S108
    opts = set(str(tmpfs.get("/tmp", "")).split(","))  # noqa: S108
    need({"noexec", "nosuid", "nodev"} <= opts, f"/tmp options {sorted(opts)}")  # noqa: S108
    ulimits = {u.get("Name"): u for u in hc.get("Ulimits") or []}
    need(ulimits.get("core", {}).get("Hard") == 0, "core dumps allowed")
    need(ulimits.get("nofile", {}).get("Hard") == lim.nofile, "nofile ulimit missing")
    requests_ = hc.get("DeviceRequests") or []
    need(len(requests_) == (1 if plan.gpu is not None else 0), f"device requests {requests_!r}")

    mounts = list(hc.get("Mounts") or [])
    expected = {(m.target, m.source) for m in (*plan.models, *plan.plugins)}
    in_volume = {
        (m.target, m.source): m for m in (*plan.models, *plan.plugins) if m.volume is not None
    }
    seen_models = set()
    job_volume = compile_cache = 0
    for m in mounts:
        target, source, kind = m.get("Target"), m.get("Source"), m.get("Type")
        need(
            "docker.sock" not in str(source) and "containerd" not in str(source),
            f"engine socket mounted from {source}",
        )
        if kind == "volume" and target == JOB_DIR and source == plan.volume_name:
            job_volume += 1
        elif kind == "volume" and target == COMPILE_CACHE_DIR and plan.compile_cache is not None:
            # the one writable mount besides the job volume: GPU jobs' compiled kernels
            need(source == plan.compile_cache, f"compile cache volume {source}")
            compile_cache += 1
        elif kind == "bind" and (target, source) in expected:
            seen_models.add((target, source))
            need(m.get("ReadOnly") is True, f"{target} is writable")
            prop = (m.get("BindOptions") or {}).get("Propagation", "rprivate")
            planned = in_volume.get((target, source))
            modes = ("private", "rprivate") if planned is None else ("rslave",)
            need(prop in modes, f"{target} propagation {prop}")
            if planned is not None:  # the model file / plugin dir in its volume, nothing else
                need(
                    PurePosixPath(str(source)).parts[-3:]
                    == (planned.volume, "_data", planned.member),
                    f"{target} is not the {_MEMBER_WHAT[planned.member]} "
                    f"of volume {planned.volume}",
                )
        else:
            bad.append(f"unexpected mount {kind} {source} -> {target}")
    need(job_volume == 1, "job volume not mounted exactly once")
    need(
        compile_cache == (0 if plan.compile_cache is None else 1),
        "compile cache volume not mounted as planned",
    )
    need(seen_models == expected, "model or plugin mounts differ from the plan")

    need(cfg.get("Image") == plan.image_id, f"image {cfg.get('Image')!r} is not the pinned id")
    need(cfg.get("User") == SANDBOX_USER, f"user is {cfg.get('User')!r}")
    need(cfg.get("Hostname") == HOSTNAME, f"hostname is {cfg.get('Hostname')!r}")
    need(not cfg.get("ExposedPorts"), "exposed ports")
    need(not cfg.get("AttachStdin") and not cfg.get("Tty"), "stdin or tty attached")
    need(bool(cfg.get("OpenStdin")) == plan.stdin_open, "stdin open unexpectedly")
    need(list(cfg.get("Cmd") or []) == plan.container_command, f"command is {cfg.get('Cmd')!r}")
    need(not cfg.get("Entrypoint"), f"entrypoint is {cfg.get('Entrypoint')!r}")
    labels = cfg.get("Labels") or {}
    need(all(labels.get(k) == v for k, v in plan.labels.items()), "job labels missing")
    env = _env_dict(cfg.get("Env"))
    allowed = dict(_env_dict(image_env))
    allowed.update(plan.environment)
    extra = sorted(k for k in env if k not in allowed or env[k] != allowed[k])
    need(not extra, f"environment not in the allowlist: {extra}")
    need(all(env.get(k) == v for k, v in plan.environment.items()), "allowlisted env missing")
    return bad
