"""Sandbox and plugin commands: sandbox build/status/prune/demo, plugins add/list/remove/verify."""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path
from typing import Any

import typer

from assetmgr.cli import fail, print_json, print_line
from assetmgr.config import Settings
from assetmgr.errors import AssetMgrError

sandbox_app = typer.Typer(help="The container sandbox: image, status, cleanup.")
plugins_app = typer.Typer(help="Vetted plugins: hashed, read-only, run only inside the sandbox.")


def register(app: typer.Typer) -> None:
    app.add_typer(sandbox_app, name="sandbox")
    app.add_typer(plugins_app, name="plugins")


def _service() -> Any:
    from assetmgr.context import open_engine, open_sandbox_service

    settings = Settings.load()
    return open_sandbox_service(settings, open_engine(settings))


def _short(digest: str | None, n: int = 19) -> str:
    return (digest or "-")[:n]


# ---------------------------------------------------------------------------------------------
# sandbox


@sandbox_app.command("build")
def sandbox_build(
    offline: bool = typer.Option(False, "--offline", help="Use only the caches (no network)."),
    force: bool = typer.Option(False, "--force", help="Rebuild even when nothing changed."),
    torch_variant: str = typer.Option(
        "cpu", "--torch-variant", help="cpu or cuda (the CUDA build of torch and its wheels)."
    ),
    find_links: list[Path] = typer.Option(
        [], "--find-links", help="Extra local directory of wheels for plugin requirements."
    ),
    no_index: bool = typer.Option(
        False, "--no-index", help="Plugin wheels only from --find-links (no package index)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the image record as JSON."),
) -> None:
    """Build (or re-use) the pinned sandbox image, with every added plugin's wheels locked in."""
    from rich.progress import BarColumn, Progress, SpinnerColumn, TimeElapsedColumn

    from assetmgr.cli.progress import label_column, progress_label, stderr_console

    if torch_variant not in ("cpu", "cuda"):
        raise AssetMgrError(
            f"unknown torch variant {torch_variant!r}", hint="Use --torch-variant cpu or cuda."
        )
    service = _service()
    cancel = threading.Event()
    outcome: dict[str, Any] = {}
    show_bar = not as_json and sys.stderr.isatty()
    with Progress(
        SpinnerColumn(),
        label_column("{task.description}"),
        BarColumn(),
        TimeElapsedColumn(),
        console=stderr_console,
        disable=not show_bar,
    ) as bars:
        task = bars.add_task("sandbox build", total=None)
        last = [""]
        t0 = time.monotonic()

        def on_progress(stage: str, fraction: float | None) -> None:
            if show_bar:
                bars.update(
                    task,
                    description=progress_label(stage, 60),
                    total=None if fraction is None else 1.0,
                    completed=fraction or 0.0,
                )
            elif not as_json and stage != last[0]:
                last[0] = stage
                print_line(f"[{time.monotonic() - t0:6.1f}s] {stage}", err=True)

        done = threading.Event()

        def work() -> None:
            try:
                outcome["record"] = service.build(
                    torch_variant=torch_variant,
                    offline=offline,
                    force=force,
                    progress=on_progress,
                    cancel=cancel,
                    find_links=find_links,
                    no_index=no_index,
                )
            except BaseException as exc:
                outcome["error"] = exc
            finally:
                done.set()

        # An Event, not Thread.join: on Python 3.11 a Ctrl-C inside join() can mark the
        # thread as finished while it still runs.
        threading.Thread(target=work, name="sandbox-build", daemon=True).start()
        try:
            while not done.wait(0.2):
                pass
        except KeyboardInterrupt:
            cancel.set()
            print_line("cancelling the build…", err=True)
            while not done.wait(0.2):
                pass
    error = outcome.get("error")
    if error is not None:
        if cancel.is_set():
            fail(error)
            raise SystemExit(130)
        raise error
    record = outcome["record"]
    if as_json:
        print_json(record.model_dump(mode="json"))
        return
    reused = bool(record.build_inputs.get("reused"))
    print_line(
        f"sandbox image {record.tag} ({_short(record.image_id)}) "
        f"{'re-used' if reused else 'built'} in {record.timings_s.get('total', 0):.1f}s",
        err=True,
    )
    if record.plugin_requirements:
        print_line("plugin wheels: " + ", ".join(record.plugin_requirements), err=True)


@sandbox_app.command("status")
def sandbox_status(
    as_json: bool = typer.Option(False, "--json", help="Print the status as JSON."),
    no_engine: bool = typer.Option(
        False, "--no-engine", help="Skip checking the image against the Docker engine."
    ),
) -> None:
    """The recorded image, whether the engine still holds it, whether it is stale, and the
    verdict: whether a job can run (the words the TUI shows)."""
    from assetmgr.app.sandbox_status import BUILD_HINT, image_report

    report = image_report(_service(), check_engine=not no_engine)
    status, verdict = report.status, report.verdict
    if as_json:
        print_json({**status.as_json(), "verdict": verdict.as_json()})
        return
    out = print_line
    if status.record is not None:
        _print_image_facts(status)
        if status.stale:
            out("STALE:")
            for why in status.stale_reasons:
                out(f"  - {why}")
    out(f"verdict      {verdict.words()}")
    if report.needs_build and BUILD_HINT not in verdict.reason:
        out(BUILD_HINT)


def _print_image_facts(status: Any) -> None:
    out = print_line
    r = status.record
    out(f"image        {r.tag}  {r.image_id}")
    out(f"built at     {r.created_at.isoformat(timespec='seconds')}  (assetmgr {r.app_version})")
    out(f"torch        {r.torch_variant}")
    out(f"lock sha256  {r.lock_sha256}")
    out(f"rootfs       {r.rootfs_sha256 or '(digest-pinned base)'}")
    for i, layer in enumerate(r.layer_diff_ids or [""]):
        out(f"{'layers' if i == 0 else '':13}{layer}")
    if status.engine_reachable is None:
        engine = "not checked"
    elif not status.engine_reachable:
        engine = f"unreachable: {status.engine_problem}"
    else:
        engine = "matches the record" if status.engine_matches else str(status.engine_problem)
    out(f"engine       {engine}")
    out("plugin wheels " + (", ".join(status.in_image) or "none"))
    added = ", ".join(f"{p.name} {p.version}" for p in status.added_plugins) or "none"
    out(f"plugins      {added}")


@sandbox_app.command("prune")
def sandbox_prune(
    running: bool = typer.Option(
        False, "--running", help="Also remove running job containers (other processes' jobs)."
    ),
    models: bool = typer.Option(
        False,
        "--models",
        help="Also remove the model and plugin volumes (copies made for remote engines) and "
        "GPU compile caches.",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print what was removed as JSON."),
) -> None:
    """Remove stray job containers and volumes, and superseded sandbox images."""
    report = _service().prune(include_running=running, models=models)
    if as_json:
        print_json(report)
        return
    print_line(
        f"removed {len(report['containers'])} containers, {len(report['volumes'])} volumes, "
        f"{len(report['model_volumes'])} model volumes, "
        f"{len(report.get('plugin_volumes', []))} plugin volumes, "
        f"{len(report.get('compile_caches', []))} compile caches, "
        f"{len(report.get('plugin_copies', []))} leftover plugin copies, "
        f"{len(report['images'])} images",
        err=True,
    )


@sandbox_app.command("demo")
def sandbox_demo(
    plugins: list[str] = typer.Option([], "--plugin", "-p", help="Plugin to use (repeatable)."),
    prompt: str = typer.Option("a __color__ cat", "--prompt", help="The prompt to transform."),
    negative: str = typer.Option("", "--negative", help="The negative prompt."),
    seed: int = typer.Option(0, "--seed", min=0, help="Seed (wildcards are chosen from it)."),
    size: int = typer.Option(64, "--size", min=8, max=1024, help="Image side in pixels."),
    out: Path | None = typer.Option(None, "--out", help="Output folder (default: a new run dir)."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Run the plugin demo job in the sandbox: prompt hooks, a post-processed image, outputs."""
    from assetmgr import paths
    from assetmgr.app.plugins import run_plugin_demo

    output_dir = out or paths.runs_dir() / time.strftime("demo-%Y%m%d-%H%M%S")
    result = run_plugin_demo(
        _service(),
        plugins=list(plugins),
        prompt=prompt,
        negative=negative,
        seed=seed,
        size=size,
        output_dir=output_dir,
    )
    data = {
        "job_id": result.job_id,
        "data": result.result.data,
        "images": [str(p) for p in result.images],
        "output_dir": str(result.output_dir),
    }
    if as_json:
        print_json(data)
        return
    for line in demo_lines(result):
        print_line(line)


def demo_lines(result: Any) -> list[str]:
    """The plain report of a demo job: the prompt its plugins made, then the output files.

    Both come from the job (a plugin's text, the names it gave its outputs); `print_line`
    cleans them.
    """
    return [f"prompt: {result.result.data.get('prompt', '')}", *(str(p) for p in result.images)]


# ---------------------------------------------------------------------------------------------
# plugins


def _plugin_json(p: Any, sets_in_image: set[str] | None = None) -> dict[str, Any]:
    data = {
        "name": p.name,
        "version": p.version,
        "entry": p.entry,
        "hooks": list(p.hooks),
        "requirements": list(p.requirements),
        "trusted": p.trusted,
        "tree_sha256": p.tree_sha256,
        "files": len(p.files),
        "path": str(p.path),
        "description": p.description,
        "added_at": p.added_at.isoformat() if p.added_at else None,
    }
    if sets_in_image is not None:
        data["in_image"] = p.deps_key is None or p.deps_key in sets_in_image
    return data


@plugins_app.command("add")
def plugins_add(
    directory: Path = typer.Argument(..., metavar="DIR", help="The plugin directory."),
    trust: bool = typer.Option(
        False, "--trust", help="Trusted: its plugin set may share a warm worker between jobs."
    ),
    replace: bool = typer.Option(
        False, "--replace", help="Replace an added plugin of the same name."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the added plugin as JSON."),
) -> None:
    """Vet a plugin directory, hash every file, keep a read-only copy (no code runs here)."""
    service = _service()
    result = service.add_plugin(directory, trust=trust, replace=replace)
    p = result.plugin
    stale = p.deps_key is not None and not _image_has(service, p.deps_key)
    if as_json:
        print_json(
            {
                **_plugin_json(p),
                "already_added": result.already_added,
                "replaced": result.replaced,
                "image_stale": stale,
            }
        )
        return
    verb = "already added" if result.already_added else "added"
    print_line(
        f"{verb} plugin {p.name} {p.version} ({len(p.files)} files, tree sha256 "
        f"{p.tree_sha256[:16]}…){' [trusted]' if p.trusted else ''}",
        err=True,
    )
    if stale:
        print_line(
            "note: its requirements (" + ", ".join(p.requirements) + ") are not in the sandbox "
            "image yet; run `assetmgr sandbox build`",
            err=True,
        )


def _image_has(service: Any, deps_key: str) -> bool:
    """Whether the built image holds this requirement set (its own directory of wheels)."""
    from assetmgr.app.plugins import image_dep_sets

    return deps_key in (image_dep_sets(service) or set())


@plugins_app.command("list")
def plugins_list(
    as_json: bool = typer.Option(False, "--json", help="Print a JSON array."),
) -> None:
    """The added plugins."""
    from assetmgr.app.plugins import image_dep_sets

    service = _service()
    plugins = service.list_plugins()
    sets_in_image = image_dep_sets(service)
    if as_json:
        print_json([_plugin_json(p, sets_in_image) for p in plugins])
        return
    if not plugins:
        print_line("no plugins added; add one with `assetmgr plugins add DIR`", err=True)
        return
    for p in plugins:
        reqs = f" requires {', '.join(p.requirements)}" if p.requirements else ""
        print_line(
            f"{p.name} {p.version}  hooks: {', '.join(p.hooks)}"
            f"{'  [trusted]' if p.trusted else ''}{reqs}"
        )


@plugins_app.command("remove")
def plugins_remove(
    name: str = typer.Argument(..., help="The plugin's name."),
    as_json: bool = typer.Option(False, "--json", help="Print the removed plugin as JSON."),
) -> None:
    """Remove a plugin from the catalog and delete its stored copy."""
    p = _service().remove_plugin(name)
    if as_json:
        print_json(_plugin_json(p))
    else:
        print_line(f"removed plugin {p.name} {p.version}", err=True)


@plugins_app.command("trust")
def plugins_trust(
    name: str = typer.Argument(..., help="The plugin's name."),
    revoke: bool = typer.Option(False, "--revoke", help="Mark it untrusted again."),
) -> None:
    """Mark a plugin trusted (may share a warm worker), or untrusted with --revoke."""
    p = _service().set_trusted(name, not revoke)
    print_line(f"plugin {p.name} is now {'trusted' if p.trusted else 'untrusted'}", err=True)


@plugins_app.command("verify")
def plugins_verify(
    names: list[str] = typer.Argument(None, metavar="[NAME]...", help="Default: every plugin."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
) -> None:
    """Re-hash every stored plugin file against the catalog (non-zero exit on any change)."""
    checks = _service().verify_plugins(list(names or []))
    if as_json:
        print_json(
            [
                {"name": c.name, "version": c.version, "ok": c.ok, "problems": list(c.problems)}
                for c in checks
            ]
        )
    else:
        for c in checks:
            if c.ok:
                print_line(f"ok: {c.name} {c.version}", err=True)
            else:
                for problem in c.problems:
                    print_line(f"MODIFIED: {c.name} {c.version}: {problem}", err=True)
    if any(not c.ok for c in checks):
        raise SystemExit(1)
