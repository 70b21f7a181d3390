"""Benchmark: all six Civitai hashes (`compute_hashes`) against one plain SHA-256 pass.

Creates (or reuses) a file of random bytes under ``.bench/`` and times, in one run and
round-robin so background load hits every tool alike: ``openssl dgst -sha256``, ``sha256sum``
and our `compute_hashes` (mapped; with ``--pread`` also the pread variant; and, when an optional
CRC-32 accelerator is installed, also with stdlib zlib's CRC-32). Each is run once
to warm the page cache and the code paths, then `--repeat` times; the best time counts.

Goal: ours / openssl <= 1.3 on a 2-core machine.

    .venv/bin/python bench/hash.py                 # 2 GiB, best of 3
    .venv/bin/python bench/hash.py --size-mib 256 --repeat 5 --pread
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import ssl
import statistics
import subprocess
import sys
import time
import zlib
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from assetmgr.store import hashing  # noqa: E402

GOAL = 1.3


def make_file(directory: Path, size_mib: int) -> Path:
    path = directory / f"random-{size_mib}MiB.bin"
    if path.exists() and path.stat().st_size == size_mib << 20:
        return path
    directory.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    print(f"writing {size_mib} MiB of random bytes to {path} ...", flush=True)
    with open(tmp, "wb") as out:
        left = size_mib << 20
        while left:
            block = os.urandom(min(left, 64 << 20))
            out.write(block)
            left -= len(block)
    tmp.replace(path)
    return path


def external(argv: list[str]) -> Callable[[], str]:
    def run() -> str:
        done = subprocess.run(argv, check=True, capture_output=True, text=True)
        return done.stdout

    return run


def cpu_seconds() -> float:
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def with_zlib_crc(path: Path) -> str:
    """compute_hashes with the optional CRC-32 accelerator switched off, to show its gain."""
    fast = hashing._crc32
    hashing._crc32 = zlib.crc32
    try:
        return hashing.compute_hashes(path).sha256
    finally:
        hashing._crc32 = fast


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=2048, help="test file size (2048)")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs per tool (3)")
    parser.add_argument("--dir", type=Path, default=ROOT / ".bench", help="where the file lives")
    parser.add_argument("--pread", action="store_true", help="also time use_mmap=False")
    args = parser.parse_args()

    path = make_file(args.dir, args.size_mib)
    tools: dict[str, Callable[[], str]] = {}
    if shutil.which("openssl"):
        tools["openssl dgst -sha256"] = external(["openssl", "dgst", "-sha256", str(path)])
    if shutil.which("sha256sum"):
        tools["sha256sum"] = external(["sha256sum", str(path)])
    tools["compute_hashes (6 hashes)"] = lambda: hashing.compute_hashes(path).sha256
    if hashing._crc32 is not zlib.crc32:
        tools["compute_hashes, stdlib zlib CRC"] = lambda: with_zlib_crc(path)
    if args.pread:
        tools["compute_hashes use_mmap=False"] = lambda: (
            hashing.compute_hashes(path, use_mmap=False).sha256
        )

    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    crc = getattr(hashing._crc32, "__module__", None) or "zlib"
    print(f"file: {path} ({args.size_mib} MiB); CPUs: {cpus}; python {sys.version.split()[0]}")
    print(f"hashlib backend: {ssl.OPENSSL_VERSION}; CRC-32 from: {crc}")

    times: dict[str, list[float]] = {name: [] for name in tools}
    cpu: dict[str, list[float]] = {name: [] for name in tools}
    outputs: dict[str, str] = {}
    for name, run in tools.items():  # warm-up, untimed
        outputs[name] = run()
    for _ in range(args.repeat):
        for name, run in tools.items():
            cpu_start = cpu_seconds()
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
            cpu[name].append(cpu_seconds() - cpu_start)

    ours = hashing.compute_hashes(path).sha256.lower()
    for name, out in outputs.items():
        if ours not in out.lower():
            print(f"WARNING: {name} printed {out.strip()!r}, expected sha256 {ours}")

    gib = args.size_mib / 1024
    best = {name: min(ts) for name, ts in times.items()}
    # CPU seconds (user + sys, threads and child processes included) do not depend on other load,
    # so they tell a busy machine from a slow implementation.
    print(f"\n{'tool':32} {'best s':>8} {'median s':>9} {'GiB/s':>7} {'CPU s':>7}")
    for name, ts in times.items():
        print(
            f"{name:32} {best[name]:8.3f} {statistics.median(ts):9.3f} "
            f"{gib / best[name]:7.2f} {min(cpu[name]):7.2f}"
        )
    mine = best["compute_hashes (6 hashes)"]
    print()
    for ref in ("openssl dgst -sha256", "sha256sum"):
        if ref in best:
            extra = f" (goal <= {GOAL})" if ref.startswith("openssl") else ""
            print(f"ours / {ref}: {mine / best[ref]:.2f}{extra}")
    if "openssl dgst -sha256" in best:
        return 0 if mine / best["openssl dgst -sha256"] <= GOAL else 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
