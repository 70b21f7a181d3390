"""Running build tools (debootstrap, tar, pip) with cancellation and a bounded error tail."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import IO, Any

from sandbox.errors import BuildCancelledError, ImageError

ProgressCallback = Callable[[str, float | None], None]


def _noop(stage: str, fraction: float | None) -> None:
    return None


def privileged_prefix() -> list[str]:
    """Nothing as root; else non-interactive sudo (debootstrap and the rootfs tar need root)."""
    if os.geteuid() == 0:
        return []
    return ["sudo", "-n", "--"]


def base_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """A small explicit environment for build tools (proxies pass through)."""
    env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C"}
    for key in ("http_proxy", "https_proxy", "no_proxy", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY"):
        if key in os.environ:
            env[key] = os.environ[key]
    env.update(extra or {})
    return env


#: What pip reads besides ``PIP_*``: its configuration, certificates and the active venv.
_PIP_PASSTHROUGH = ("HOME", "XDG_CONFIG_HOME", "SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "VIRTUAL_ENV")


def pip_env() -> dict[str, str]:
    """`base_env` plus pip's own configuration (index URLs, find-links, certificates)."""
    env = base_env()
    for key, value in os.environ.items():
        if key.startswith("PIP_") or key in _PIP_PASSTHROUGH:
            env[key] = value
    return env


def run_command(
    argv: Sequence[str],
    *,
    what: str,
    cancel: threading.Event,
    env: Mapping[str, str] | None = None,
    on_line: Callable[[str], None] | None = None,
    stdout_sink: Callable[[bytes], None] | None = None,
    merge_stderr: bool = False,
    cwd: str | None = None,
) -> None:
    """Run `argv`; lines of stdout go to `on_line`, or raw chunks to `stdout_sink`.

    Raises `BuildCancelledError` if `cancel` is set meanwhile (the process is terminated), and
    `ImageError` with the last stderr lines on a non-zero exit.
    """
    if cancel.is_set():
        raise BuildCancelledError(f"{what}: cancelled")
    tail: deque[str] = deque(maxlen=40)
    proc = _start(argv, what=what, env=env, merge_stderr=merge_stderr, cwd=cwd)
    use_group = argv[0] != "sudo"  # a sudo'd child can't be signalled as a group by us
    threads = _start_helpers(proc, cancel, tail, use_group=use_group, merge_stderr=merge_stderr)
    try:
        _pump_stdout(proc, tail, on_line=on_line, stdout_sink=stdout_sink)
        rc = proc.wait()
    except BaseException:
        _terminate(proc, use_group)
        raise
    finally:
        for t in threads:
            t.join(timeout=10)
    if cancel.is_set():
        raise BuildCancelledError(f"{what}: cancelled")
    if rc != 0:
        detail = "\n".join(list(tail)[-15:])
        raise ImageError(f"{what} failed (exit {rc}):\n{detail}")


def _start(
    argv: Sequence[str],
    *,
    what: str,
    env: Mapping[str, str] | None,
    merge_stderr: bool,
    cwd: str | None,
) -> subprocess.Popen[bytes]:
    try:
        # argv is built by the image build from fixed tool names and paths it chose, no shell
        return subprocess.Popen(  # noqa: S603
            list(argv),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT if merge_stderr else subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            env=dict(env) if env is not None else None,
            cwd=cwd,
            start_new_session=True,
        )
    except OSError as exc:
        raise ImageError(f"{what}: cannot run {argv[0]}: {exc}") from exc


def _start_helpers(
    proc: subprocess.Popen[bytes],
    cancel: threading.Event,
    tail: deque[str],
    *,
    use_group: bool,
    merge_stderr: bool,
) -> list[threading.Thread]:
    """Start the cancel watcher and, unless stderr is merged, the stderr drain."""

    def drain(stream: IO[bytes]) -> None:
        for raw in stream:
            tail.append(raw.decode("utf-8", "replace").rstrip())

    def watch() -> None:
        while proc.poll() is None:
            if cancel.wait(0.2):
                _terminate(proc, use_group)
                return

    threads = [threading.Thread(target=watch, daemon=True)]
    if not merge_stderr and proc.stderr is not None:
        threads.append(threading.Thread(target=drain, args=(proc.stderr,), daemon=True))
    for t in threads:
        t.start()
    return threads


def _pump_stdout(
    proc: subprocess.Popen[bytes],
    tail: deque[str],
    *,
    on_line: Callable[[str], None] | None,
    stdout_sink: Callable[[bytes], None] | None,
) -> None:
    if proc.stdout is None:
        raise ImageError("internal: the build tool's stdout is not a pipe")
    if stdout_sink is not None:
        while chunk := proc.stdout.read(1 << 20):
            stdout_sink(chunk)
        return
    for raw in proc.stdout:
        line = raw.decode("utf-8", "replace").rstrip()
        tail.append(line)
        if on_line is not None:
            on_line(line)


def _terminate(proc: subprocess.Popen[Any], use_group: bool) -> None:
    if proc.poll() is not None:
        return
    try:
        if use_group:
            os.killpg(proc.pid, signal.SIGTERM)
        else:
            proc.terminate()
        proc.wait(timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        try:
            if use_group:
                os.killpg(proc.pid, signal.SIGKILL)
            else:
                proc.kill()
        except OSError:
            pass
