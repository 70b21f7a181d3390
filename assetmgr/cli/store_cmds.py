"""Store commands: pull, verify, path, import, export, updates, duplicates."""

from __future__ import annotations

import sys
import threading
from enum import StrEnum
from pathlib import Path
from typing import Any

import typer

from assetmgr.cli import print_json, print_line
from assetmgr.config import Settings
from assetmgr.wording import describe


def register(app: typer.Typer) -> None:
    app.command("pull")(pull)
    app.command("verify")(verify)
    app.command("path")(path)
    app.command("import")(import_cmd)
    app.command("export")(export_cmd)
    app.command("updates")(updates)
    app.command("duplicates")(duplicates)


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
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    from assetmgr.app.context import AppContext
    from assetmgr.app.library import DownloadProgress, pull_many
    from assetmgr.cli.progress import label_column, progress_label, stderr_console
    from assetmgr.errors import UsageError

    if file_id is not None and len(version_ids) != 1:
        raise UsageError(
            "--file-id needs exactly one VERSION_ID",
            hint="Pull one version at a time with --file-id (`assetmgr pull --help`).",
        )
    cancel = threading.Event()
    show_bars = not as_json and sys.stderr.isatty()
    tasks: dict[int, Any] = {}
    lock = threading.Lock()
    with (
        AppContext(Settings.load(api_base=api_base)) as ctx,
        Progress(
            label_column("{task.description}"),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=stderr_console,
            disable=not show_bars,
        ) as bars,
    ):

        def on_progress(p: DownloadProgress) -> None:
            with lock:
                task = tasks.get(p.file_id)
                if task is None:
                    task = tasks[p.file_id] = bars.add_task(
                        progress_label(p.name), total=p.total_bytes
                    )
            bars.update(task, completed=p.done_bytes, total=p.total_bytes)

        try:
            outcomes = pull_many(
                ctx,
                version_ids,
                file_id=file_id,
                concurrency=concurrency,
                allow_pickle=allow_pickle,
                progress=on_progress,
                cancel=cancel,
            )
        except KeyboardInterrupt:
            cancel.set()
            raise
    results = [_pull_json(o) for o in outcomes]
    if as_json:
        print_json(results)
    else:
        for res in results:
            _print_pull_result(res)
        print_line(_pull_summary(results), err=True)
    failed = [o.error for o in outcomes if o.error is not None]
    if failed:
        raise SystemExit(max(_exit_code(e) for e in failed))


def _exit_code(error: Exception) -> int:
    words = describe(error)
    return words.exit_code if words is not None else 70


def _pull_json(outcome: Any) -> dict[str, Any]:
    """One pull's result: what was asked, what the catalog calls it, and what happened."""
    target = outcome.target
    data: dict[str, Any] = {
        "version_id": outcome.version_id,
        "file_id": outcome.file_id,
        "model_name": target.model_name if target else None,
        "version_name": target.version_name if target else None,
        "file_name": target.name if target else None,
    }
    if outcome.error is not None:
        words = describe(outcome.error)
        return {
            **data,
            "error": words.message if words else str(outcome.error),
            "hint": words.hint if words else "",
        }
    r = outcome.result
    return {
        **data,
        "sha256": r.sha256,
        "size_bytes": r.hashes.size if r.hashes is not None else r.blob_path.stat().st_size,
        "path": str(r.blob_path),
        "link": str(r.link_path) if r.link_path else None,
        "downloaded_bytes": r.downloaded_bytes,
        "resumed_from": r.resumed_from,
        "already_present": r.already_present,
        "state": "verified",
    }


def _pull_label(res: dict[str, Any]) -> str:
    """``Model / version (#id) / file``, from what the catalog knows."""
    if res["file_name"] is None:
        return f"version {res['version_id']}"
    return (
        f"{res['model_name'] or '?'} / {res['version_name'] or '?'} (#{res['version_id']})"
        f" / {res['file_name']}"
    )


def _print_pull_result(res: dict[str, Any]) -> None:
    """The blob's path on stdout (for scripts); what it is, or why not, on stderr."""
    from assetmgr.store.targets import describe_bytes

    if "error" in res:
        # The model and version; the message itself names the file or the request.
        what = (
            f" ({res['model_name'] or '?'} / {res['version_name'] or '?'})"
            if res["file_name"] is not None
            else ""
        )
        print_line(f"error: version {res['version_id']}{what}: {res['error']}", err=True)
        if res.get("hint"):
            print_line(f"hint: {res['hint']}", err=True)
        return
    if res["already_present"]:
        how = "already in the store"
    elif res["resumed_from"]:
        how = f"downloaded and verified (resumed at byte {res['resumed_from']})"
    else:
        how = "downloaded and verified"
    print_line(f"{_pull_label(res)}, {describe_bytes(res['size_bytes'])}: {how}", err=True)
    print_line(res["path"])


def _pull_summary(results: list[dict[str, Any]]) -> str:
    from assetmgr.store.targets import describe_bytes

    done = [r for r in results if "error" not in r]
    fresh = [r for r in done if not r["already_present"]]
    downloaded = describe_bytes(sum(r["downloaded_bytes"] for r in fresh))
    parts = [f"{len(fresh)} downloaded ({downloaded})"]
    if len(done) > len(fresh):
        parts.append(f"{len(done) - len(fresh)} already in the store")
    if len(done) < len(results):
        parts.append(f"{len(results) - len(done)} failed")
    return f"pulled {len(done)} of {len(results)} files: " + ", ".join(parts)


def verify(
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
) -> None:
    """Re-hash every file in the store; quarantine corrupt ones (non-zero exit if any)."""
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

    from assetmgr.app.context import AppContext
    from assetmgr.app.library import verify as verify_store
    from assetmgr.cli.progress import stderr_console

    with (
        AppContext(Settings.load()) as ctx,
        Progress(
            TextColumn("verify"),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            console=stderr_console,
            disable=as_json or not sys.stderr.isatty(),
        ) as bars,
    ):
        task = bars.add_task("verify", total=None)

        def on_progress(done: int, total: int, files: int) -> None:
            bars.update(task, completed=done, total=total)

        report = verify_store(ctx, progress=on_progress)
    data = {
        "checked": report.checked,
        "ok": report.ok,
        "corrupt": report.corrupt,
        "missing": report.missing,
    }
    if as_json:
        print_json(data)
    else:
        print_line(
            f"verified {report.checked} files: {report.ok} ok, {len(report.corrupt)} corrupt, "
            f"{len(report.missing)} missing",
            err=True,
        )
        for item in report.corrupt:
            where = (
                "the store dropped its link; your original file was left as it is"
                if item.get("link_removed")
                else f"quarantined to {item['quarantined_to']}"
            )
            print_line(f"corrupt: expected {item['sha256']} got {item['got']}; {where}", err=True)
        for item in report.missing:
            print_line(f"missing: {item['sha256']} (file {item['file_id']})", err=True)
    if not report.clean:
        raise SystemExit(4)


def path(
    ref: str = typer.Argument(..., metavar="VERSION_ID|SHA256", help="A version id or a SHA256."),
) -> None:
    """Print the local path of a verified file."""
    from assetmgr.context import open_engine
    from assetmgr.store.service import local_path

    engine = open_engine(Settings.load())
    print_line(str(local_path(engine, _store(), ref)))


def import_cmd(
    folder: Path = typer.Argument(..., help="An A1111 or ComfyUI models folder."),
    copy: bool = typer.Option(
        False,
        "--copy",
        help="Share no inode with the originals: a reflink where the file system can, else a "
        "copy (default: reflink, else hardlink).",
    ),
    allow_pickle: bool = typer.Option(
        False,
        "--allow-pickle",
        help="Also store real pickle checkpoints (checked by their bytes, never unpickled).",
    ),
    offline: bool = typer.Option(
        False,
        "--offline",
        help="Do not ask Civitai; identify files by the local catalog and checked sidecars.",
    ),
    api_base: str | None = typer.Option(None, "--api-base", help="API root."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
) -> None:
    """Hash a models folder, identify its files by their hashes and add them (never modifies them).

    Links are followed and listed; only files whose bytes are a valid model are taken.
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from assetmgr.app.context import AppContext
    from assetmgr.app.library import import_models
    from assetmgr.cli.progress import label_column, progress_label, stderr_console

    with AppContext(Settings.load(api_base=api_base)) as ctx:
        with Progress(
            TextColumn("import"),
            BarColumn(),
            MofNCompleteColumn(),
            label_column("{task.fields[name]}"),
            console=stderr_console,
            disable=as_json or not sys.stderr.isatty(),
        ) as bars:
            task = bars.add_task("import", total=None, name="")

            def on_progress(done: int, total: int, name: str) -> None:
                bars.update(task, completed=done, total=total, name=progress_label(Path(name).name))

            report = import_models(
                ctx,
                folder,
                offline=offline,
                copy=copy,
                allow_pickle=allow_pickle,
                progress=on_progress,
            )
    data = report.as_json()
    if as_json:
        print_json(data)
    else:
        _print_import_report(data)
    if report.stopped is not None:
        from assetmgr.cli import fail
        from assetmgr.errors import AssetMgrError
        from assetmgr.import_hints import STOP_HINTS

        left = len(report.not_reached)
        fail(
            AssetMgrError(
                f"import stopped: {report.stopped.reason}; {left} file{'s' if left != 1 else ''}"
                " not reached",
                hint=STOP_HINTS.get(report.stopped.code, ""),
            )
        )
        raise SystemExit(130 if report.stopped.code == "cancelled" else 1)


def _print_import_report(data: dict[str, Any]) -> None:
    """The import report on stderr: counts, then one line per followed link, skipped file,
    duplicate, ignored sidecar and file not reached, then one hint per reason code."""
    from assetmgr.import_hints import DUPLICATE_HINT, hint_for

    counts = data["counts"]
    others = [
        f"{counts['skipped']} skipped" if counts["skipped"] else "",
        f"{counts['duplicates']} duplicate{'s' if counts['duplicates'] != 1 else ''}"
        if counts["duplicates"]
        else "",
        f"{counts['not_reached']} not reached" if counts["not_reached"] else "",
    ]
    rest = "; " + ", ".join(o for o in others if o) if any(others) else ""
    print_line(
        f"imported {counts['imported']} of {counts['files']} files ({data['civitai']} known to "
        f"Civitai, {data['sidecar']} identified by a sidecar only, {data['local']} local){rest}",
        err=True,
    )
    if data["lookup_error"]:
        print_line(
            f"warning: Civitai lookup failed ({data['lookup_error']}); files were identified "
            "by the local catalog and checked sidecars only",
            err=True,
        )
    for link in data["links"]:
        where = " (outside the folder)" if link["outside"] else ""
        print_line(f"followed link {link['path']} -> {link['target']}{where}", err=True)
    for f in data["imported"]:
        if f["folder_hint"]:
            print_line(
                f"typed by its folder {f['path']}: {f['model_type']}, {f['base_model']} "
                f"(from {f['folder_hint']}/; the header could not tell)",
                err=True,
            )
    codes: list[str] = []
    for s in data["skipped"]:
        via = f" (link to {s['target']})" if s["target"] else ""
        print_line(f"skipped {s['path']}{via}: {s['reason']}", err=True)
        codes.append(s["code"])
    for d in data["duplicates"]:
        print_line(f"duplicate {d['path']}: the same bytes as {d['duplicate_of']}", err=True)
    for issue in data["ignored_sidecars"]:
        print_line(f"ignored sidecar {issue['path']}: {issue['reason']}", err=True)
        codes.append(issue["code"])
    for path in data["not_reached"]:
        print_line(f"not reached {path}", err=True)
    hints = [hint_for(code) for code in codes]
    hints += [DUPLICATE_HINT] if data["duplicates"] else []
    for hint in dict.fromkeys(h for h in hints if h):
        print_line(f"hint: {hint}", err=True)


class Layout(StrEnum):
    """The folder layouts `export` writes (a choice, so a typo is a usage error)."""

    A1111 = "a1111"
    COMFYUI = "comfyui"


def export_cmd(
    dest: Path = typer.Argument(..., help="Folder to write the layout into."),
    layout: Layout = typer.Option(..., "--layout", help="a1111 or comfyui."),
    hardlink: bool = typer.Option(False, "--hardlink", help="Hard links instead of symlinks."),
    move_aside: bool = typer.Option(
        False,
        "--move-aside",
        help="Rename files in the way that the export did not write to NAME.user-<time>.",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print what was written as JSON."),
) -> None:
    """Write the store as an A1111 or ComfyUI models folder (links plus sidecars).

    Never writes through a link inside DEST and never replaces a file it did not write.
    """
    from assetmgr.app.context import AppContext
    from assetmgr.app.library import export

    with AppContext(Settings.load()) as ctx:
        report = export(ctx, dest, layout=layout.value, hardlink=hardlink, move_aside=move_aside)
    if as_json:
        print_json(report.as_json())
    else:
        print_line(f"exported {len(report.written)} files to {dest}", err=True)
        for moved in report.moved_aside:
            print_line(f"moved aside: {moved['path']} -> {moved['moved_to']}", err=True)
        for removed in report.removed:
            print_line(f"removed (no longer in the store): {removed}", err=True)
        for skipped in report.skipped:
            if "path" in skipped:
                print_line(f"kept (not written by export): {skipped['path']}", err=True)


def updates(as_json: bool = typer.Option(False, "--json", help="Print as JSON.")) -> None:
    """Models whose newest version (same base-model family) is not in the store."""
    from assetmgr.app.context import AppContext
    from assetmgr.app.updates import find_updates

    with AppContext(Settings.load()) as ctx:
        report = find_updates(ctx)
    found, local = report.as_json(), report.local_files
    if as_json:
        print_json(found)
    else:
        for u in found:
            print_line(
                f"{u['model_name']} [{u['base_model_family']}]: have {u['local_version']['name']}"
                f" (#{u['local_version']['id']}), newest {u['newest_version']['name']}"
                f" (#{u['newest_version']['id']}) -> assetmgr pull {u['newest_version']['id']}"
            )
    if not local:
        print_line(
            "nothing is local yet, so there is nothing to update; `assetmgr pull VERSION_ID` "
            "or `assetmgr import DIR` adds files",
            err=True,
        )
    elif not found:
        print_line(f"all {_files(local)} in the store are up to date", err=True)
    else:
        count = f"{len(found)} model" + (" has" if len(found) == 1 else "s have")
        print_line(f"{count} a newer version than the one in the store", err=True)


def _files(n: int) -> str:
    return f"{n} local file" + ("" if n == 1 else "s")


def duplicates(as_json: bool = typer.Option(False, "--json", help="Print as JSON.")) -> None:
    """Local files with the same bytes (SHA256) or the same tensors (AutoV3)."""
    from assetmgr.app.context import AppContext
    from assetmgr.app.updates import find_duplicates

    with AppContext(Settings.load()) as ctx:
        report = find_duplicates(ctx)
    groups, local = report.groups, report.local_files
    if as_json:
        print_json(groups)
    else:
        for g in groups["by_sha256"]:
            names = ", ".join(str(f["file_name"]) for f in g["files"])
            print_line(f"same bytes {g['sha256'][:16]}…: {names}")
        for g in groups["by_autov3"]:
            names = ", ".join(str(f["file_name"]) for f in g["files"])
            print_line(f"same tensors {g['autov3']}: {names}")
    if not local:
        print_line(
            "nothing is local yet, so there are no duplicates to find; `assetmgr pull "
            "VERSION_ID` or `assetmgr import DIR` adds files",
            err=True,
        )
    elif report.empty:
        print_line(f"no duplicates among {_files(local)}", err=True)
