"""Preview commands: fill the image cache in bulk, keep it within its cap."""

from __future__ import annotations

import sys
import threading
from typing import TYPE_CHECKING, Any

import typer

from assetmgr.cli import print_json, print_line
from assetmgr.config import Settings
from assetmgr.wording import describe

if TYPE_CHECKING:
    from assetmgr.app.previews import FetchItem, FetchReport
    from assetmgr.store.image_cache import CacheUsage

previews_app = typer.Typer(help="Preview images: the image cache and bulk fetching.")

_SKIPS = {
    "nsfw": "above the NSFW threshold ({threshold}; --nsfw fetches them)",
    "not-still": "videos or audio (not previewed)",
    "cache-full": "not fetched: the cache is full (raise preview_cache_size)",
    "unreachable": "not fetched: the image host cannot be reached",
    "cancelled": "not reached",
}


def register(app: typer.Typer) -> None:
    app.add_typer(previews_app, name="previews")


def _size(n: int) -> str:
    from assetmgr.store.targets import describe_bytes

    return describe_bytes(n)


def _usage_json(usage: CacheUsage | None) -> dict[str, int] | None:
    if usage is None:
        return None
    return {
        "entries": usage.entries,
        "files": usage.files,
        "bytes": usage.bytes,
        "max_bytes": usage.max_bytes,
    }


def _item_json(item: FetchItem) -> dict[str, Any]:
    image = item.image
    data: dict[str, Any] = {
        "model_id": image.model_id,
        "version_id": image.version_id,
        "position": image.position,
        "url": image.url,
        "nsfw_level": image.nsfw_level,
        "state": item.state,
        "reason": item.reason,
        "local_path": str(item.cached.path) if item.cached is not None else None,
    }
    if item.state == "failed" and item.error is not None:
        words = describe(item.error)
        data["error"] = words.message if words else str(item.error)
        data["hint"] = words.hint if words else ""
    return data


def _label(item: FetchItem) -> str:
    image = item.image
    return (
        f"version {image.version_id} ({image.model_name or '?'} / {image.version_name or '?'}),"
        f" image {image.position + 1}"
    )


def _summary(report: FetchReport) -> str:
    parts = [f"{report.count('fetched')} fetched", f"{report.count('cached')} already cached"]
    for reason, words in _SKIPS.items():
        n = report.count("skipped", reason)
        if n:
            parts.append(f"{n} {words.format(threshold=report.threshold)}")
    if report.failed:
        parts.append(f"{len(report.failed)} failed")
    usage = report.usage
    tail = f"; cache {_size(usage.bytes)} of {_size(usage.max_bytes)}" if usage else ""
    return f"previews of {len(report.items)} images: " + ", ".join(parts) + tail


@previews_app.command("fetch")
def fetch(
    model_ids: list[int] = typer.Option(
        [], "--model-id", help="Only this model (repeatable; default: every model)."
    ),
    local: bool = typer.Option(False, "--local", help="Only models with files in the store."),
    nsfw: bool = typer.Option(
        False, "--nsfw", help="Also fetch images above the NSFW threshold (nsfw_threshold)."
    ),
    api_base: str | None = typer.Option(None, "--api-base", help="API root."),
    as_json: bool = typer.Option(False, "--json", help="Print one object per image as JSON."),
) -> None:
    """Fetch preview images into the image cache (each checked and stored as a thumbnail)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from assetmgr.app.context import AppContext
    from assetmgr.app.previews import fetch_previews
    from assetmgr.cli.progress import forced_progress, stderr_console

    cancel = threading.Event()
    show_bar = not as_json and (sys.stderr.isatty() or forced_progress())
    with (
        AppContext(Settings.load(api_base=api_base)) as ctx,
        Progress(
            TextColumn("previews"),
            BarColumn(),
            MofNCompleteColumn(),
            console=stderr_console,
            disable=not show_bar,
        ) as bars,
    ):
        task = bars.add_task("previews", total=None)

        def on_progress(done: int, total: int, item: FetchItem) -> None:
            bars.update(task, completed=done, total=total)

        try:
            report = fetch_previews(
                ctx,
                model_ids=model_ids,
                local_only=local,
                include_nsfw=nsfw,
                progress=on_progress,
                cancel=cancel,
            )
        except KeyboardInterrupt:
            cancel.set()
            raise
    if as_json:
        print_json(
            {
                "images": [_item_json(i) for i in report.items],
                "threshold": report.threshold,
                "cache_full": report.cache_full,
                "cache": _usage_json(report.usage),
            }
        )
    else:
        for item in report.items:
            if item.cached is not None:
                print_line(str(item.cached.path))
            if item.state == "failed" and item.error is not None:
                words = describe(item.error)
                message = words.message if words else str(item.error)
                print_line(f"error: {_label(item)}: {message}", err=True)
                if words and words.hint:
                    print_line(f"hint: {words.hint}", err=True)
        print_line(_summary(report), err=True)
    if report.failed:
        raise SystemExit(1)


@previews_app.command("prune")
def prune(
    as_json: bool = typer.Option(False, "--json", help="Print what was removed as JSON."),
) -> None:
    """Bring the image cache within its cap (least recently used out first)."""
    from assetmgr.app.context import AppContext
    from assetmgr.app.previews import prune as prune_cache

    with AppContext(Settings.load()) as ctx:
        report, usage = prune_cache(ctx)
    if as_json:
        print_json(
            {
                "removed": [
                    {"key": e.key, "path": str(e.path), "size": e.size, "origin": e.origin}
                    for e in report.removed
                ],
                "stale": report.stale,
                "orphans": report.orphans,
                "freed_bytes": report.freed_bytes,
                "cache": _usage_json(usage),
            }
        )
        return
    for entry in report.removed:
        print_line(f"removed: {entry.key} ({_size(entry.size)})", err=True)
    for key in report.stale:
        print_line(f"forgotten (its file was gone): {key}", err=True)
    for path in report.orphans:
        print_line(f"removed (no entry named it): {path}", err=True)
    print_line(
        f"pruned {len(report.removed)} previews, {_size(report.freed_bytes)} freed; "
        f"cache {_size(usage.bytes)} of {_size(usage.max_bytes)} ({usage.entries} previews)",
        err=True,
    )
