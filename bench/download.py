"""Download throughput: `assetmgr`'s verified pull vs curl, 1 GiB from the fake's storage.

The fake Civitai runs in its own process and serves one path-backed 1 GiB file. In one run,
alternating, this times:

* curl: the 307 is resolved first, then `curl -s -o FILE <signed storage URL>` (curl does no
  hashing, no verification);
* ours: `StoreService.pull`: resolve the signed URL, stream to a partial file while computing
  its SHA256, fsync, verify size + SHA256, validate the safetensors header, promote, record.

Both write to the same filesystem. It prints the best time of each and the ratio ours/curl
(goal <= 1.11).

Usage: python bench/download.py [--size-mib 1024] [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

import httpx  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_safetensors_file(path: Path, size: int) -> None:
    """A valid safetensors file of `size` bytes: one U8 tensor of random-ish bytes."""
    import json
    import struct

    header_body = json.dumps({"filler": {"dtype": "U8", "shape": [0], "data_offsets": [0, 0]}})
    # Solve for the tensor length so the whole file is exactly `size` bytes.
    pad_to = 64
    for _ in range(3):
        n = size - 8 - pad_to
        header_body = json.dumps(
            {"filler": {"dtype": "U8", "shape": [n], "data_offsets": [0, n]}}, separators=(",", ":")
        )
        pad_to = len(header_body) + (-len(header_body) % 8)
    header = header_body.encode().ljust(pad_to, b" ")
    n = size - 8 - len(header)
    block = os.urandom(1 << 20)
    with open(path, "wb") as fh:
        fh.write(struct.pack("<Q", len(header)) + header)
        left = n
        while left > 0:
            fh.write(block[: min(left, len(block))])
            left -= len(block)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--workdir", default=str(REPO_ROOT / ".bench"))
    args = parser.parse_args()
    if not shutil.which("curl"):
        raise SystemExit("curl is not installed")
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    big = work / f"download-{args.size_mib}MiB.safetensors"
    if not big.exists() or big.stat().st_size != args.size_mib << 20:
        print(f"writing {big} ...")
        write_safetensors_file(big, args.size_mib << 20)

    port = free_port()
    fake = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.fakeciv",
            "--port",
            str(port),
            "--models",
            "20",
            "--no-fixtures",
            "--big-file-path",
            str(big),
            "--big-file",
            f"{args.size_mib}MiB",
        ],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    version_id = None
    try:
        deadline = time.monotonic() + 300
        assert fake.stdout is not None
        while time.monotonic() < deadline and version_id is None:
            line = fake.stdout.readline()
            if not line:
                time.sleep(0.1)
                continue
            if "/api/download/models/" in line:
                version_id = int(line.split("/api/download/models/")[1].split()[0].split("?")[0])
        if version_id is None:
            raise SystemExit("the fake did not print the big file's download URL")
        run(base, version_id, args.repeat, work)
    finally:
        fake.terminate()
        fake.wait(timeout=20)


def run(base: str, version_id: int, repeat: int, work: Path) -> None:
    from assetmgr.store.blobs import BlobStore
    from assetmgr.store.service import StoreService
    from catalog.civitai.client import CivitaiClient
    from catalog.db import open_catalog

    size_bytes = 0
    curl_times: list[float] = []
    our_times: list[float] = []
    synced_times: list[float] = []
    for i in range(repeat + 1):  # the first round warms the page cache and is not counted
        with tempfile.TemporaryDirectory(dir=work) as tmp:
            tmpdir = Path(tmp)
            # curl: resolve the redirect (cheap), then time the storage transfer.
            # Every timed run starts with no dirty pages left by the previous one: otherwise
            # the kernel's writeback of curl's unsynced gigabyte lands inside our fsync.
            os.sync()
            start = time.perf_counter()
            loc = httpx.get(f"{base}/api/download/models/{version_id}", follow_redirects=False)
            url = loc.headers["location"]
            subprocess.run(["curl", "-s", "-f", "-o", str(tmpdir / "curl.bin"), url], check=True)
            curl = time.perf_counter() - start
            # Context only: what making curl's file durable adds (our pull fsyncs before it
            # promotes, as an atomic store must; curl never does).
            fd = os.open(tmpdir / "curl.bin", os.O_RDONLY)
            os.fsync(fd)
            os.close(fd)
            curl_synced = time.perf_counter() - start
            (tmpdir / "curl.bin").unlink()
            os.sync()

            os.environ["ASSETMGR_HOME"] = str(tmpdir / "home")
            engine = open_catalog(f"sqlite:///{tmpdir / 'catalog.sqlite3'}")
            with CivitaiClient(base_url=base) as client:
                service = StoreService(engine, BlobStore(tmpdir / "home" / "store"), client)
                service.target(version_id)  # catalog the version first; not part of the timing
                start = time.perf_counter()
                result = service.pull(version_id)
                ours = time.perf_counter() - start
                service.close()
            engine.dispose()
            size_bytes = result.blob_path.stat().st_size
            if i:
                curl_times.append(curl)
                synced_times.append(curl_synced)
                our_times.append(ours)
            print(
                f"round {i}: curl {curl:.2f} s (+fsync {curl_synced:.2f} s), assetmgr {ours:.2f} s"
            )
    size_gib = size_bytes / 2**30
    c, o = min(curl_times), min(our_times)
    print(f"download of {size_gib:.2f} GiB from the fake's storage (loopback)")
    print(f"  curl -o FILE          : best {c:.2f} s ({size_gib / c:.2f} GiB/s)")
    print(f"  assetmgr pull (verify, fsync, promote): best {o:.2f} s ({size_gib / o:.2f} GiB/s)")
    s = min(synced_times)
    print(f"  curl -o FILE + fsync  : best {s:.2f} s (context: the disk's cost of durability)")
    print(f"  ratio ours/curl       : {o / c:.2f}  (goal <= 1.11)")
    print(f"  ratio ours/(curl+fsync): {o / s:.2f}")


if __name__ == "__main__":
    main()
