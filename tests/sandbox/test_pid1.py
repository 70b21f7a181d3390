"""The sandbox's PID 1 (`sandbox/worker/pid1.py`) as a real process on the host.

The container tests (test_isolation.py, test_plugin_security.py) show the job cannot ptrace,
stop or write it; these check its tini duties: exit status, signal forwarding, refusals.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

PID1 = Path(__file__).resolve().parents[2] / "sandbox" / "worker" / "pid1.py"


def start(*worker: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-I", "-S", "-B", str(PID1), *worker],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_exits_with_the_workers_status() -> None:
    proc = start("--", sys.executable, "-c", "import sys; sys.exit(7)")
    assert proc.wait(timeout=60) == 7
    proc = start("--", sys.executable, "-c", "import os, signal; os.kill(os.getpid(), 9)")
    assert proc.wait(timeout=60) == 128 + signal.SIGKILL


def test_forwards_termination_to_the_worker() -> None:
    code = (
        "import signal, sys, time\n"
        "signal.signal(signal.SIGTERM, lambda *a: sys.exit(42))\n"
        "print('ready', flush=True)\n"
        "time.sleep(60)\n"
    )
    proc = start("--", sys.executable, "-c", code)
    assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 42


def test_refuses_bad_usage_and_reports_a_missing_worker() -> None:
    proc = start(sys.executable, "-c", "pass")  # no "--"
    assert proc.wait(timeout=60) == 125
    proc = start("--", "/nonexistent/worker")
    assert proc.wait(timeout=60) == 127
    assert proc.stderr is not None
    assert "cannot run /nonexistent/worker" in proc.stderr.read()
