"""Time to first paint of the TUI: app start until the browser table shows its first rows.

In one run, alternating: a catalog of >= 100,000 versions (generated payloads upserted through
`catalog.repo`, like `bench/sync.py`) and an empty one. The clock starts before the catalog
engine opens (migration check included) and stops when the first page is on screen (for the
empty catalog: the empty first page). Headless Textual, so terminal I/O is not measured.
Prints medians, the ratio big/empty, and whether the goal (<= 1 s at 100k) is met.

Usage: python bench/tui.py [--versions 100000] [--repeat 5]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

GOAL_S = 1.0


def build_catalog(db_path: Path, target_versions: int) -> int:
    """Upsert generated models until `target_versions`; returns the versions written."""
    from bench.fill import fill_catalog

    return fill_catalog(db_path, target_versions)


def count_versions(db_path: Path) -> int:
    import sqlite3

    with sqlite3.connect(db_path) as conn:
        return int(conn.execute("SELECT count(*) FROM model_version").fetchone()[0])


async def first_paint(db_path: Path, home: Path) -> tuple[float, int]:
    """Seconds from app start to the first page on screen, and the rows it showed."""
    from assetmgr.config import Settings
    from assetmgr.tui.app import make_app
    from assetmgr.tui.services import Services
    from catalog.db import open_catalog

    os.environ["ASSETMGR_HOME"] = str(home)
    settings = Settings.load(database_url=f"sqlite:///{db_path}")
    started = time.monotonic()
    engine = open_catalog(settings.database_url)
    app = make_app(settings, services=Services(settings, engine))
    async with app.run_test(size=(160, 48)) as pilot:
        while app.catalog.first_page_at is None:
            await pilot.pause(0.005)
        elapsed = app.catalog.first_page_at - started
        rows = app.catalog.loaded
    engine.dispose()
    return elapsed, rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--versions", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--catalog", type=Path, help="reuse (or build once into) this SQLite file")
    args = parser.parse_args()
    os.environ.setdefault("ASSETMGR_NO_KEYRING", "1")
    import assetmgr.tui.app  # noqa: F401  (import cost is the same for both; keep it out)

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        big, empty = args.catalog or root / "big.sqlite3", root / "empty.sqlite3"
        t0 = time.perf_counter()
        if big.exists():
            versions = count_versions(big)
            print(f"catalog: {versions:,} versions, reused {big}")
        else:
            versions = build_catalog(big, args.versions)
            print(f"catalog: {versions:,} versions, built in {time.perf_counter() - t0:.0f} s")
        from catalog.db import open_catalog

        open_catalog(f"sqlite:///{empty}").dispose()
        times: dict[str, list[float]] = {"big": [], "empty": []}
        for _ in range(args.repeat):
            for name, path in (("empty", empty), ("big", big)):
                elapsed, rows = asyncio.run(first_paint(path, root / f"home-{name}"))
                times[name].append(elapsed)
                if name == "big":
                    assert rows > 0, "the big catalog showed no rows"
        big_s = statistics.median(times["big"])
        empty_s = statistics.median(times["empty"])
        print(
            f"first paint, empty catalog:  median {empty_s * 1000:.0f} ms  "
            f"(runs: {', '.join(f'{t * 1000:.0f}' for t in times['empty'])})"
        )
        print(
            f"first paint, {versions:,} versions: median {big_s * 1000:.0f} ms  "
            f"(runs: {', '.join(f'{t * 1000:.0f}' for t in times['big'])})"
        )
        print(f"ratio big/empty: {big_s / empty_s:.2f}")
        verdict = "meets" if big_s <= GOAL_S else "MISSES"
        print(f"goal <= {GOAL_S:.1f} s at {versions:,} versions: {verdict}")


if __name__ == "__main__":
    main()
