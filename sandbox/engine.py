"""The Docker engine connection shared by the image builder and the runner (docker-py)."""

from __future__ import annotations

from typing import Any

import docker
import docker.errors

from sandbox.errors import EngineUnavailableError


def engine_client(timeout_s: float = 120.0) -> Any:
    """`docker.from_env()`: honours DOCKER_HOST, DOCKER_TLS_VERIFY and DOCKER_CERT_PATH.

    A remote engine works unchanged for jobs (inputs and outputs travel through the API). Host
    paths mean nothing to it, so models and plugins take the volume transport there
    (`sandbox.runner.model_transport`): each model file and each plugin's verified files are
    copied once, through the API, into a docker volume labelled with their SHA256 and mounted
    read-only from it; with a local engine (unix socket) they are bind-mounted.
    """
    try:
        client = docker.from_env(timeout=int(timeout_s))
        client.ping()
    except docker.errors.DockerException as exc:
        raise EngineUnavailableError(f"cannot reach the Docker engine: {exc}") from exc
    return client


def is_local_engine(client: Any) -> bool:
    """Whether the engine runs on this machine (unix socket), so host paths mean the same."""
    base_url = str(getattr(client.api, "base_url", ""))
    return base_url.startswith("http+docker://") and "localhost" in base_url


def has_nvidia_runtime(client: Any) -> bool:
    """Whether the engine reports the NVIDIA runtime (set up by the NVIDIA Container Toolkit)."""
    try:
        info = client.info()
    except docker.errors.DockerException:
        return False
    runtimes = info.get("Runtimes") or {}
    return "nvidia" in runtimes or info.get("DefaultRuntime") == "nvidia"


def engine_security_problems(client: Any) -> list[str]:
    """What the engine itself lacks for the sandbox (per-container settings can't fix these)."""
    try:
        info = client.info()
    except docker.errors.DockerException as exc:
        return [f"cannot read engine info: {exc}"]
    options = [str(o) for o in info.get("SecurityOptions") or []]
    problems = []
    if not any(o.startswith("name=seccomp") for o in options):
        problems.append("the engine runs containers without seccomp")
    elif any(o.startswith("name=seccomp") and "profile=unconfined" in o for o in options):
        problems.append("the engine's default seccomp profile is unconfined")
    return problems
