"""The sandbox worker: runs inside the container (see `sandbox.worker.__main__`).

`execute` is also callable in-process (tests, the in-process baseline of the bench).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sandbox.protocol import (
    EchoParams,
    JobSpec,
    ProbeParams,
    ProgressMessage,
    ResultMessage,
)
from sandbox.worker.channel import Channel

WORKER_VERSION = "1"


def _run_probe_job(spec: JobSpec, out_dir: Path, channel: Channel) -> dict[str, Any]:
    from sandbox.worker.probes import ProbeContext, run_probe

    params = spec.typed_params()
    assert isinstance(params, ProbeParams)
    ctx = ProbeContext(spec=spec, channel=channel, out_dir=out_dir)
    results = []
    for i, call in enumerate(params.probes):
        channel.send(
            ProgressMessage(
                stage=call.name, step=i, total=len(params.probes), fraction=i / len(params.probes)
            )
        )
        results.append(run_probe(ctx, call.name, dict(call.args)))
    return {"probes": results}


def _run_echo_job(spec: JobSpec, out_dir: Path, channel: Channel) -> dict[str, Any]:
    from sandbox.worker.probes import png_bytes

    params = spec.typed_params()
    assert isinstance(params, EchoParams)
    (out_dir / params.name).write_bytes(png_bytes(params.width, params.height, params.rgb))
    channel.send(ProgressMessage(stage="echo", fraction=1.0))
    return {"text": params.text, "size": [params.width, params.height], "name": params.name}


_KINDS = {"probe": _run_probe_job, "echo": _run_echo_job}


def execute(spec: JobSpec, out_dir: Path, channel: Channel) -> ResultMessage:
    """Run one validated job, write its files under `out_dir` and send its result line."""
    if spec.plugins:
        raise ValueError("this worker version does not load plugins yet")
    runner = _KINDS.get(spec.kind)
    if runner is None:
        raise ValueError(f"this worker cannot run kind {spec.kind!r}")
    out_dir.mkdir(parents=True, exist_ok=True)
    data = runner(spec, out_dir, channel)
    outputs = sorted(f"out/{p.name}" for p in out_dir.iterdir() if p.is_file())
    result = ResultMessage(job_id=spec.job_id, nonce=spec.nonce, outputs=outputs, data=data)
    channel.send(result)
    return result


__all__ = ["WORKER_VERSION", "execute"]
