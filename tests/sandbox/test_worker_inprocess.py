"""The worker's job code called in-process (what the bench compares the container path with)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from sandbox.protocol import JobSpec, PluginRef, ResultMessage
from sandbox.worker import execute
from sandbox.worker.channel import CollectingChannel


def spec(kind: str, params: dict[str, object]) -> JobSpec:
    return JobSpec(job_id="job-inproc", nonce="2" * 32, kind=kind, params=params)


def test_echo_writes_a_png_and_one_result(tmp_path: Path) -> None:
    from PIL import Image

    channel = CollectingChannel()
    result = execute(spec("echo", {"width": 5, "height": 3, "rgb": [9, 8, 7]}), tmp_path, channel)
    assert result.outputs == ["out/echo.png"]
    assert [m for m in channel.messages if isinstance(m, ResultMessage)] == [result]
    with Image.open(tmp_path / "echo.png") as im:
        assert im.size == (5, 3) and im.getpixel((4, 2)) == (9, 8, 7)


def test_probe_job_reports_each_probe(tmp_path: Path) -> None:
    channel = CollectingChannel()
    result = execute(
        spec("probe", {"probes": [{"name": "hostname"}, {"name": "no_such_probe"}]}),
        tmp_path,
        channel,
    )
    probes = result.data["probes"]
    assert isinstance(probes, list) and isinstance(probes[0], dict)
    assert probes[0]["ok"] is True
    assert probes[1] == {"name": "no_such_probe", "ok": False, "exception": "unknown probe"}


def test_plugins_that_are_not_mounted_are_refused(tmp_path: Path) -> None:
    from sandbox.worker.plugin_host import PluginError

    s = JobSpec(
        job_id="job-p",
        nonce="3" * 32,
        kind="echo",
        params={},
        plugins=[
            PluginRef(name="p", version="1", sha256="0" * 64, entry="p", hooks=("post_process",))
        ],
    )
    with pytest.raises(PluginError, match="'p' load: not mounted"):
        execute(s, tmp_path / "out", CollectingChannel(), plugins_root=tmp_path)


def test_print_never_reaches_the_protocol_channel(tmp_path: Path) -> None:
    """Run the real entry point: fd 1 must carry only protocol lines, print() goes to stderr."""
    job = spec("probe", {"probes": [{"name": "forge_result", "args": {"via": "print"}}]})
    (tmp_path / "job.json").write_bytes(job.to_json_bytes())
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "sandbox.worker",
            str(tmp_path / "job.json"),
            "--out",
            str(tmp_path / "out"),
            "--no-linger",
        ],
        capture_output=True,
        timeout=60,
        cwd=Path(__file__).parents[2],
    )
    assert proc.returncode == 0, proc.stderr
    stdout_types = [line.split(b'"type":"')[1].split(b'"')[0] for line in proc.stdout.splitlines()]
    assert stdout_types == [b"ready", b"progress", b"result"]
    assert b'"forged":true' in proc.stderr
    assert b'"forged":true' not in proc.stdout
