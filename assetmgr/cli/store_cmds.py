"""Store commands: pull, verify, path, import, export, updates, duplicates."""

from __future__ import annotations

import sys
import threading
from typing import Any

import typer

from assetmgr.cli import print_json
from assetmgr.config import Settings


def register(app: typer.Typer) -> None:
    app.command("pull")(pull)
    app.command("verify")(verify)
    app.command("path")(path)


def _store() -> Any:
    from assetmgr import paths
    from assetmgr.store.blobs import BlobStore

    return BlobStore(paths.store_dir())


def pull(
    version_ids: list[int] = typer.Argument(
        ..., metavar="VERSION_ID...", help="Model version ids."
    ),
    file_id: int | None = typer.Option(
        None, "--file-id", help="A specific file of the version (default: primary)."
    ),
    allow_pickle: bool = typer.Option(
        False, "--allow-pickle", help="Allow .ckpt/.pt/.bin files (stored, never unpickled)."
    ),
    concurrency: int | None = typer.Option(
        None, "--concurrency", "-j", min=1, max=16, help="Parallel downloads."
    ),
    api_base: str | None = typer.Option(None, "--api-base", help="API root."),
    as_json: bool = typer.Option(False, "--json", help="Print results as JSON."),
) -> None:
    """Download files into the verified store (resumable; verified against Civitai's SHA256)."""
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    from assetmgr.cli.progress import stderr_console
    from assetmgr.context import make_client, open_engine
    from assetmgr.errors import AssetMgrError
    from assetmgr.store.service import StoreService

    if file_id is not None and len(version_ids) != 1:
        raise AssetMgrError(
            "--file-id needs exactly one VERSION_ID",
            hint="Pull one version at a time with --file-id.",
        )
    settings = Settings.load(api_base=api_base)
    engine = open_engine(settings)
    cancel = threading.Event()
    show_bars = not as_json and sys.stderr.isatty()
    tasks: dict[int, Any] = {}
    lock = threading.Lock()
    with make_client(settings) as client:
        service = StoreService(engine, _store(), client)
        try:
            with Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                DownloadColumn(),
                TransferSpeedColumn(),
                TimeRemainingColumn(),
                console=stderr_console,
                disable=not show_bars,
            ) as bars:

                def on_progress(p: Any) -> None:
                    with lock:
                        task = tasks.get(p.file_id)
                        if task is None:
                            task = tasks[p.file_id] = bars.add_task(
                                p.name[:40], total=p.total_bytes
                            )
                    bars.update(task, completed=p.done_bytes, total=p.total_bytes)

                outcomes = service.pull_many(
                    [(vid, file_id) for vid in version_ids],
                    concurrency=concurrency or settings.download_concurrency,
                    allow_pickle=allow_pickle,
                    progress=on_progress,
                    cancel=cancel,
                )
        except KeyboardInterrupt:
            cancel.set()
            raise
        finally:
            service.close()
    results: list[dict[str, Any]] = []
    failed: list[AssetMgrError] = []
    for o in outcomes:
        if o.error is not None:
            failed.append(o.error)
            results.append(
                {
                    "version_id": o.version_id,
                    "file_id": o.file_id,
                    "error": o.error.message,
                    "hint": o.error.hint,
                }
            )
        else:
            r = o.result
            assert r is not None
            results.append(
                {
                    "version_id": o.version_id,
                    "file_id": r.file_id,
                    "sha256": r.sha256,
                    "path": str(r.blob_path),
                    "link": str(r.link_path) if r.link_path else None,
                    "downloaded_bytes": r.downloaded_bytes,
                    "resumed_from": r.resumed_from,
                    "already_present": r.already_present,
                    "state": "verified",
                }
            )
    if as_json:
        print_json(results)
    else:
        for res in results:
            if "error" in res:
                sys.stderr.write(f"error: version {res['version_id']}: {res['error']}\n")
                if res.get("hint"):
                    sys.stderr.write(f"hint: {res['hint']}\n")
            else:
                note = (
                    " (already in the store)"
                    if res["already_present"]
                    else (
                        f" (resumed at byte {res['resumed_from']})" if res["resumed_from"] else ""
                    )
                )
                sys.stdout.write(f"{res['path']}{note}\n")
    if failed:
        raise SystemExit(max(e.exit_code for e in failed))


def verify(
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
) -> None:
    """Re-hash every file in the store; quarantine corrupt ones (non-zero exit if any)."""
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

    from assetmgr.cli.progress import stderr_console
    from assetmgr.context import open_engine
    from assetmgr.store.service import verify_store

    engine = open_engine(Settings.load())
    store = _store()
    with Progress(
        TextColumn("verify"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        console=stderr_console,
        disable=as_json or not sys.stderr.isatty(),
    ) as bars:
        task = bars.add_task("verify", total=None)

        def on_progress(done: int, total: int, files: int) -> None:
            bars.update(task, completed=done, total=total)

        report = verify_store(engine, store, progress=on_progress)
    data = {
        "checked": report.checked,
        "ok": report.ok,
        "corrupt": report.corrupt,
        "missing": report.missing,
    }
    if as_json:
        print_json(data)
    else:
        sys.stderr.write(
            f"verified {report.checked} files: {report.ok} ok, {len(report.corrupt)} corrupt, "
            f"{len(report.missing)} missing\n"
        )
        for item in report.corrupt:
            sys.stderr.write(
                f"corrupt: expected {item['sha256']} got {item['got']}; "
                f"quarantined to {item['quarantined_to']}\n"
            )
        for item in report.missing:
            sys.stderr.write(f"missing: {item['sha256']} (file {item['file_id']})\n")
    if not report.clean:
        raise SystemExit(4)


def path(
    ref: str = typer.Argument(..., metavar="VERSION_ID|SHA256", help="A version id or a SHA256."),
) -> None:
    """Print the local path of a verified file."""
    from assetmgr.context import open_engine
    from assetmgr.store.service import local_path

    engine = open_engine(Settings.load())
    sys.stdout.write(f"{local_path(engine, _store(), ref)}\n")
