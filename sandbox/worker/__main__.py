"""Entry point inside the container: ``python -I -B -m sandbox.worker [SPEC_PATH]``.

Never imports docker, httpx, sqlmodel, catalog or assetmgr (import-linter contract), and must
start fast: heavy libraries (torch, diffusers) are imported only by the job kinds that need them.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from sandbox.protocol import (
    MAX_SPEC_BYTES,
    OUT_DIR,
    READY_MARKER,
    SPEC_PATH,
    WORK_DIR,
    ErrorMessage,
    JobSpec,
    ReadyMessage,
)
from sandbox.worker import WORKER_VERSION, execute
from sandbox.worker.channel import Channel
from sandbox.worker.isolation import JobIsolation

#: How long to wait for the host to copy the spec in, and to linger after the result so the
#: host can read the outputs from the (tmpfs) job volume before it stops the container.
SPEC_WAIT_S = 120.0
LINGER_S = 300.0


def _wait_for(path: str, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    delay = 0.002
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            return False
        time.sleep(delay)
        delay = min(delay * 2, 0.05)
    return True


def serve(channel: Channel, work_root: Path, plugins_root: Path | None = None) -> int:
    """Warm mode: one JSON job spec per line on stdin, until EOF.

    Each job writes under ``<work_root>/<job_id>/out``; its outputs go back in-band, before the
    result line (`Channel.send_outputs`). Once they are sent, `JobIsolation` removes the job's
    folders and the files it left, and undoes its changes to the environment, so the next job
    starts clean (see `sandbox.worker.isolation`).
    """
    stdin = sys.stdin.buffer
    isolation = JobIsolation(work_root)
    while True:
        line = stdin.readline(MAX_SPEC_BYTES + 2)
        if not line:
            return 0
        if not line.endswith(b"\n"):
            while line and not line.endswith(b"\n"):  # skip the rest of an oversized line
                line = stdin.readline(1 << 16)
            channel.send(ErrorMessage(code="bad_spec", message="spec line too long"))
            continue
        try:
            spec = JobSpec.from_json_bytes(line.strip())
        except ValueError as exc:
            channel.send(ErrorMessage(code="bad_spec", message=str(exc)[:2000]))
            continue
        with isolation.job(spec.job_id) as job_dir:
            try:
                execute(
                    spec, job_dir / "out", channel, plugins_root=plugins_root, inline_outputs=True
                )
            except Exception as exc:
                channel.send(
                    ErrorMessage(
                        code=type(exc).__name__, message=str(exc)[:2000], job_id=spec.job_id
                    )
                )
        _idle()


def _idle() -> None:
    """The result is out and the worker waits for the next job: compile what ran eagerly."""
    from sandbox.worker import kind_generate

    try:
        kind_generate.idle()
    except Exception as exc:  # a failed compile must not end the worker: jobs stay eager
        logging.getLogger(__name__).warning("warm-up failed: %s: %.500s", type(exc).__name__, exc)


def main(argv: Sequence[str] | None = None) -> int:
    channel = Channel.take_stdout()
    parser = argparse.ArgumentParser(prog="sandbox.worker")
    parser.add_argument("spec", nargs="?", default=SPEC_PATH)
    parser.add_argument("--out", default=OUT_DIR)
    parser.add_argument("--no-linger", action="store_true")
    parser.add_argument("--serve", action="store_true", help="warm mode: job specs on stdin")
    parser.add_argument("--plugins-root", type=Path, help="where plugins are mounted (tests)")
    args = parser.parse_args(argv)

    channel.send(ReadyMessage(worker_version=WORKER_VERSION))
    if args.serve:
        return serve(channel, Path(WORK_DIR), args.plugins_root)
    if args.spec == SPEC_PATH and not _wait_for(READY_MARKER, SPEC_WAIT_S):
        channel.send(ErrorMessage(code="no_spec", message="the job spec never arrived"))
        return 2
    try:
        with open(args.spec, "rb") as f:
            spec = JobSpec.from_json_bytes(f.read(512 * 1024))
    except (OSError, ValueError) as exc:
        channel.send(ErrorMessage(code="bad_spec", message=str(exc)[:2000]))
        return 2
    try:
        execute(spec, Path(args.out), channel, plugins_root=args.plugins_root)
    except Exception as exc:
        channel.send(
            ErrorMessage(code=type(exc).__name__, message=str(exc)[:2000], job_id=spec.job_id)
        )
        return 1
    if not args.no_linger:
        sys.stderr.flush()
        time.sleep(LINGER_S)
    return 0


if __name__ == "__main__":
    sys.exit(main())
