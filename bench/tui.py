"""Time to first paint of the TUI: app start until the browser table shows its first rows.

In one run, alternating: a catalog of >= 100,000 versions (generated payloads upserted through
`catalog.repo`, like `bench/sync.py`) and an empty one. The clock starts before the catalog
engine opens (migration check included) and stops when the first page is on screen (for the
empty catalog: the empty first page). Headless Textual, so terminal I/O is not measured.
Prints medians, the ratio big/empty, and whether the goal (<= 1 s at 100k) is met.

With ``--previews``: selection to preview instead. A catalog synced from the fake Civitai
serving images on loopback, a cold image cache; each model is selected in turn (no debounce)
and the bench records when the detail pane is filled, whether the BlurHash placeholder was
already drawn in that same call (the same frame), and when the fetched thumbnail is drawn.
Printed beside the no-preview baseline: the same selections on a catalog without images.

Usage: python bench/tui.py [--versions 100000] [--repeat 5]
       python bench/tui.py --previews [--models 12]
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

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


PREVIEW_GOAL_S = 0.3


async def select_models(home: Path, with_images: bool, models: int) -> list[tuple[float, ...]]:
    """(selection to detail pane, placeholder in that frame (1/0), selection to the fetched
    image or NaN) for each model of a catalog synced from the fake, cold cache in `home`."""
    import dataclasses

    from assetmgr.config import Settings
    from assetmgr.tui.app import make_app
    from assetmgr.tui.services import Services
    from assetmgr.tui.widgets.preview import PreviewPane, TerminalImage
    from catalog.civitai.client import CivitaiClient
    from catalog.db import open_catalog
    from catalog.sync import SyncRequest, run_sync
    from tests.fakeciv import FakeCatalog, FakeCivitai
    from tests.fakeciv.images import FakeImages

    os.environ["ASSETMGR_HOME"] = str(home)
    per_version = (3, 3) if with_images else (0, 0)
    catalog = FakeCatalog.generate(models, seed=7, images_per_version=per_version)
    for version in catalog.versions.values():
        for image in version.images:  # stills, safe for work: every one is fetched
            image.nsfw_level = 1
            if image.type != "image":
                image.type, image.url = "image", image.url.rsplit(".", 1)[0] + ".jpeg"
    with FakeCivitai(catalog, images=FakeImages()) as fake:
        settings = dataclasses.replace(
            Settings.load(database_url=f"sqlite:///{home / 'catalog.sqlite3'}"),
            api_base=fake.base_url,
        )
        engine = open_catalog(settings.database_url)
        with CivitaiClient(base_url=fake.base_url) as client:
            run_sync(engine, client, SyncRequest(model_ids=list(catalog.models)))
        url = fake.base_url
        services = Services(settings, engine, client_factory=lambda: CivitaiClient(base_url=url))
        app = make_app(settings, services=services)
        out: list[tuple[float, ...]] = []
        async with app.run_test(size=(160, 48)) as pilot:
            while app.catalog.first_page_at is None:
                await pilot.pause(0.01)
            screen = app.catalog
            marks: dict[str, float] = {}
            show_detail, show_preview = screen.show_detail, screen.show_preview

            def drawn() -> Any:
                return screen.query_one(PreviewPane).query_one(TerminalImage).image

            def on_detail(*a: Any, **k: Any) -> None:
                show_detail(*a, **k)
                marks.setdefault("detail", time.monotonic())
                marks["placeholder"] = float(drawn() is not None)

            def on_preview(*a: Any, **k: Any) -> None:
                show_preview(*a, **k)
                image = drawn()
                if image is not None and max(image.size) > 32:  # not the 32-px BlurHash
                    marks.setdefault("image", time.monotonic())
                elif os.environ.get("BENCH_DEBUG"):
                    print(a, k, image)

            screen.show_detail = on_detail  # type: ignore[method-assign]
            screen.show_preview = on_preview  # type: ignore[method-assign]
            for model_id in catalog.models:
                marks.clear()
                started = time.monotonic()
                screen._request_detail(model_id, immediate=True)
                deadline = started + 5
                while time.monotonic() < deadline and (
                    "detail" not in marks or (with_images and "image" not in marks)
                ):
                    await pilot.pause(0.001)
                out.append(
                    (
                        marks.get("detail", math.nan) - started,
                        marks.get("placeholder", 0.0),
                        marks.get("image", math.nan) - started,
                    )
                )
        engine.dispose()
    return out


def previews_main(models: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        base = asyncio.run(select_models(root / "plain", False, models))
        shown = asyncio.run(select_models(root / "images", True, models))

    def median(values: list[float]) -> float:
        kept = [v for v in values if not math.isnan(v)]
        return statistics.median(kept) * 1000 if kept else math.nan

    print(f"{models} selections each, cold image cache, fake Civitai on loopback")
    base_ms, detail_ms = median([b[0] for b in base]), median([s[0] for s in shown])
    print(f"baseline, no previews: selection to detail pane  median {base_ms:.0f} ms")
    print(f"with previews:         selection to detail pane  median {detail_ms:.0f} ms")
    same = sum(int(s[1]) for s in shown)
    print(f"placeholder in the detail pane's frame: {same}/{len(shown)} selections")
    image_ms = median([s[2] for s in shown])
    print(
        f"with previews:         selection to image        median {image_ms:.0f} ms  "
        f"(runs: {', '.join(f'{s[2] * 1000:.0f}' for s in shown)})"
    )
    verdict = "meets" if image_ms <= PREVIEW_GOAL_S * 1000 and same == len(shown) else "MISSES"
    print(
        f"goal: placeholder in the same frame, image <= {PREVIEW_GOAL_S * 1000:.0f} ms: {verdict}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--versions", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--catalog", type=Path, help="reuse (or build once into) this SQLite file")
    parser.add_argument("--previews", action="store_true", help="selection to preview instead")
    parser.add_argument("--models", type=int, default=12, help="selections with --previews")
    args = parser.parse_args()
    os.environ.setdefault("ASSETMGR_NO_KEYRING", "1")
    if args.previews:
        previews_main(args.models)
        return
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
