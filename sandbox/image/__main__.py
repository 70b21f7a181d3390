"""``python -m sandbox.image build|verify|show``: build the pinned image without the app's CLI."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from sandbox.errors import SandboxError
from sandbox.image import build_image, load_record, verify_image


class _StderrProgress:
    """Prints each new stage (and fraction) once, with the elapsed time."""

    def __init__(self) -> None:
        self.t0 = time.monotonic()
        self.last = ""

    def __call__(self, stage: str, fraction: float | None) -> None:
        line = stage if fraction is None else f"{stage} {fraction:4.0%}"
        if line != self.last:
            self.last = line
            sys.stderr.write(f"[{time.monotonic() - self.t0:6.1f}s] {line}\n")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sandbox.image")
    sub = parser.add_subparsers(dest="command", required=True)
    build = sub.add_parser("build", help="build (or re-use) the pinned sandbox image")
    build.add_argument("--cache-dir", type=Path, required=True)
    build.add_argument(
        "--record", type=Path, required=True, help="where to write the image record (JSON)"
    )
    build.add_argument(
        "--app-version", required=True, help="the version of the app the image serves"
    )
    build.add_argument("--torch-variant", choices=["cpu", "cuda"], default="cpu")
    build.add_argument(
        "--torch-index-url",
        default="",
        help="extra index for torch ('' = variant default, 'none' = never)",
    )
    build.add_argument("--mirror", help="Debian mirror (default: from the host's apt sources)")
    build.add_argument("--base", help="digest-pinned base image name@sha256:... (needs a registry)")
    build.add_argument("--offline", action="store_true", help="use only the caches")
    build.add_argument("--force", action="store_true", help="rebuild even if unchanged")
    for name in ("verify", "show"):
        p = sub.add_parser(name)
        p.add_argument("--record", type=Path, required=True)
    args = parser.parse_args(argv)
    try:
        if args.command == "build":
            record = build_image(
                cache_dir=args.cache_dir,
                record_path=args.record,
                app_version=args.app_version,
                torch_variant=args.torch_variant,
                torch_index_url=None if args.torch_index_url == "none" else args.torch_index_url,
                mirror=args.mirror,
                base_ref=args.base,
                offline=args.offline,
                force=args.force,
                progress=_StderrProgress(),
            )
            sys.stdout.write(record.model_dump_json(indent=2) + "\n")
        elif args.command == "verify":
            verify_image(load_record(args.record))
            sys.stderr.write("sandbox image matches its record\n")
        else:
            sys.stdout.write(load_record(args.record).model_dump_json(indent=2) + "\n")
    except SandboxError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
