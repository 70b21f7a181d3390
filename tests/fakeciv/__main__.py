"""Run the fake Civitai standalone: ``python -m tests.fakeciv --port 8765 --models 2000``.

Prints the API and storage origins, then serves until interrupted. ``--big-file SIZE`` attaches
a generated file of SIZE bytes (e.g. ``1GiB``) as the primary of one version and prints its
download URL and SHA256, for downloader benchmarks against curl.
"""

from __future__ import annotations

import argparse
import re
import signal
import tempfile
import threading
import time
from pathlib import Path

from tests.fakeciv.data import FakeCatalog
from tests.fakeciv.hashes import write_big_file
from tests.fakeciv.server import FakeCivitai

_UNITS = {
    "": 1,
    "k": 1 << 10,
    "kib": 1 << 10,
    "m": 1 << 20,
    "mib": 1 << 20,
    "g": 1 << 30,
    "gib": 1 << 30,
}


def _size(text: str) -> int:
    m = re.fullmatch(r"\s*(\d+)\s*([a-zA-Z]*)\s*", text)
    if m is None or m.group(2).lower() not in _UNITS:
        raise argparse.ArgumentTypeError(f"bad size {text!r} (examples: 4096, 64MiB, 1GiB)")
    return int(m.group(1)) * _UNITS[m.group(2).lower()]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m tests.fakeciv", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765, help="API port (0: any)")
    parser.add_argument("--storage-port", type=int, default=0, help="storage port (0: any)")
    parser.add_argument("--models", type=int, default=2000, help="generated models")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-fixtures", action="store_true", help="leave out the fixture models")
    parser.add_argument("--api-key", action="append", default=[], help="valid API key (repeatable)")
    parser.add_argument(
        "--url-ttl", type=float, default=3600.0, help="signed URL lifetime, seconds"
    )
    parser.add_argument(
        "--materialize",
        type=_size,
        default=None,
        help="give every generated file real bytes of about this size",
    )
    parser.add_argument("--big-file", type=_size, default=None, help="attach one file of this size")
    parser.add_argument(
        "--big-file-path",
        type=Path,
        default=None,
        help="where to write/read the big file (default: a temp dir)",
    )
    parser.add_argument("--serve-images", action="store_true")
    args = parser.parse_args(argv)

    started = time.perf_counter()
    catalog = FakeCatalog.generate(
        args.models,
        seed=args.seed,
        include_fixtures=not args.no_fixtures,
        materialize_bytes=args.materialize,
    )
    print(
        f"catalog: {len(catalog.models)} models, {len(catalog.versions)} versions, "
        f"{len(catalog.files)} files in {time.perf_counter() - started:.2f}s"
    )
    tmp = None
    big_version = None
    if args.big_file is not None:
        path = args.big_file_path
        if path is None:
            tmp = tempfile.TemporaryDirectory(prefix="fakeciv-")
            path = Path(tmp.name) / "big.safetensors"
        if not path.exists() or path.stat().st_size != args.big_file:
            write_big_file(path, args.big_file)
        big_version = next(
            v
            for v in catalog.versions.values()
            if v.status == "Published"
            and catalog.models[v.model_id].mode is None
            and not v.require_auth
            and v.usage_control == "Download"
            and not v.early_access_deadline
            and not catalog.models[v.model_id].poi
        )
        started = time.perf_counter()
        f = catalog.add_file_bytes(big_version.id, path, name="big.safetensors")
        took = time.perf_counter() - started
        print(f"big file: {path} ({args.big_file} bytes, hashed in {took:.1f}s)")
        print(f"big file SHA256: {f.hashes['SHA256']}")

    fake = FakeCivitai(
        catalog,
        api_keys=args.api_key,
        url_ttl=args.url_ttl,
        host=args.host,
        port=args.port,
        storage_port=args.storage_port,
        serve_images=args.serve_images,
    )
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with fake:
        print(f"api:     {fake.base_url}")
        print(f"storage: {fake.storage_url}")
        if big_version is not None:
            print(f"big download: {fake.base_url}/api/download/models/{big_version.id}")
        print("Ctrl-C to stop", flush=True)
        try:
            while not stop.wait(0.5):
                pass
        except KeyboardInterrupt:
            pass
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
