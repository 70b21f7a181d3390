"""Benchmark: sandbox container start and per-job overhead.

Measures, with the pinned image (from `.cache/sandbox`, built if needed) and an ``echo`` job
(writes one 64x64 PNG; no model load, so only the sandbox's own cost shows):

1. cold start: per-job container, from ``create`` (volume + container) to the worker's first
   ``ready`` line. Goal: <= 3 s.
2. per-job wall time of three paths, run round-robin so background load hits each alike:
   one-shot container (``run_job``: verify image, create, check, start, spec in, result,
   outputs out, remove), warm worker (``WarmWorker.run``: spec over stdin, outputs out) and
   in-process (``sandbox.worker.execute`` on the host). Overhead = path - in-process.

    .venv/bin/python bench/sandbox.py                 # 10 rounds
    .venv/bin/python bench/sandbox.py --repeat 20 --json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sandbox.engine import engine_client  # noqa: E402
from sandbox.image import build_image, load_record, verify_image  # noqa: E402
from sandbox.image.build import worker_digest  # noqa: E402
from sandbox.protocol import JobSpec, Limits  # noqa: E402
from sandbox.runner import new_job_id, new_nonce, run_job  # noqa: E402
from sandbox.warm import WarmWorker  # noqa: E402
from sandbox.worker import execute  # noqa: E402
from sandbox.worker.channel import CollectingChannel  # noqa: E402

GOAL_READY_S = 3.0
CACHE = Path(os.environ.get("ASSETMGR_SANDBOX_CACHE") or ROOT / ".cache" / "sandbox")
LIMITS = Limits(timeout_s=120, memory_bytes=1 << 30, tmpfs_bytes=64 << 20, shm_bytes=64 << 20)


def image(client: object) -> object:
    record_path = CACHE / "image.json"
    try:
        record = load_record(record_path)
        verify_image(record, client)
        if record.worker_sha256 == worker_digest():
            return record
    except Exception:
        pass
    print("building the sandbox image from the caches ...", file=sys.stderr)
    return build_image(client=client, cache_dir=CACHE, record_path=record_path)


def spec() -> JobSpec:
    return JobSpec(
        job_id=new_job_id(),
        nonce=new_nonce(),
        kind="echo",
        params={"text": "bench"},
        limits=LIMITS,
    )


def summary(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {
        "median": round(statistics.median(ordered), 4),
        "min": round(ordered[0], 4),
        "p90": round(ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))], 4),
        "n": len(ordered),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    client = engine_client()
    record = image(client)
    scratch = Path(tempfile.mkdtemp(prefix="bench-sandbox-"))
    ready: list[float] = []
    times: dict[str, list[float]] = {"one-shot container": [], "warm worker": [], "in-process": []}
    try:
        warm = WarmWorker(record, client=client, limits=LIMITS, gpus="none")  # type: ignore[arg-type]
        t0 = time.monotonic()
        warm.start()
        warm_start = time.monotonic() - t0

        def one_shot(out: Path) -> None:
            result = run_job(spec(), image=record, client=client, output_dir=out, gpus="none")  # type: ignore[arg-type]
            ready.append(result.timings_s["ready"])

        def warm_job(out: Path) -> None:
            warm.run(spec(), out)

        def in_process(out: Path) -> None:
            execute(spec(), out, CollectingChannel())

        paths: dict[str, Callable[[Path], None]] = {
            "one-shot container": one_shot,
            "warm worker": warm_job,
            "in-process": in_process,
        }
        for name, fn in paths.items():  # warm-up: page cache, imports, first connections
            fn(scratch / f"warmup-{name.replace(' ', '-')}")
        ready.clear()
        for i in range(args.repeat):
            for name, fn in paths.items():
                out = scratch / f"{i}-{name.replace(' ', '-')}"
                t = time.monotonic()
                fn(out)
                times[name].append(time.monotonic() - t)
        warm.close()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    base = statistics.median(times["in-process"])
    report = {
        "image": record.image_id,  # type: ignore[attr-defined]
        "cpus": os.cpu_count(),
        "cold_start_to_ready_s": summary(ready),
        "warm_worker_start_to_ready_s": round(warm_start, 4),
        "per_job_s": {k: summary(v) for k, v in times.items()},
        "overhead_vs_in_process_s": {
            k: round(statistics.median(v) - base, 4) for k, v in times.items() if k != "in-process"
        },
        "goal_ready_s": GOAL_READY_S,
        "goal_met": statistics.median(ready) <= GOAL_READY_S,
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    r = report["cold_start_to_ready_s"]
    print(f"cold start -> ready (create to first ready line), n={r['n']}:")  # type: ignore[index]
    print(
        f"  median {r['median']:.3f}s  min {r['min']:.3f}s  p90 {r['p90']:.3f}s  "  # type: ignore[index]
        f"(goal <= {GOAL_READY_S:.1f}s: {'met' if report['goal_met'] else 'NOT met'})"
    )
    print(f"warm worker start -> ready: {warm_start:.3f}s")
    print("per-job wall time (echo job, 64x64 PNG):")
    for name, s in report["per_job_s"].items():  # type: ignore[attr-defined]
        over = report["overhead_vs_in_process_s"].get(name)  # type: ignore[attr-defined]
        extra = f"  overhead {over * 1000:7.1f} ms" if over is not None else ""
        print(
            f"  {name:20s} median {s['median'] * 1000:8.1f} ms  min {s['min'] * 1000:8.1f} ms"
            f"  p90 {s['p90'] * 1000:8.1f} ms{extra}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
