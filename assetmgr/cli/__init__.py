"""The `assetmgr` command line (typer). Output for pipes goes to stdout; everything else,
progress bars and errors included, goes to stderr."""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

import typer

from assetmgr.errors import AssetMgrError

app = typer.Typer(
    name="assetmgr",
    help="Stable Diffusion model and LoRA manager: Civitai catalog, verified store, sandbox.",
    no_args_is_help=False,
    add_completion=False,
    pretty_exceptions_enable=False,
)


class _State:
    verbose: int = 0


state = _State()


def _setup_logging(verbose: int) -> None:
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(
        level=level, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s"
    )
    # httpx logs full request URLs at INFO; ours are redacted, its are not: keep it quiet.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("httpcore").setLevel(logging.WARNING)


@app.callback(invoke_without_command=True)
def _root(
    ctx: typer.Context,
    verbose: int = typer.Option(0, "--verbose", "-v", count=True, help="More logging on stderr."),
) -> None:
    state.verbose = verbose
    _setup_logging(verbose)
    if ctx.invoked_subcommand is None:
        from assetmgr.cli.tui_cmd import open_tui

        open_tui()


def print_json(data: Any) -> None:
    import json

    sys.stdout.write(json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n")


def fail(exc: AssetMgrError) -> None:
    sys.stderr.write(f"error: {exc.message}\n")
    if exc.hint:
        sys.stderr.write(f"hint: {exc.hint}\n")


def _register() -> None:
    from assetmgr.cli import catalog_cmds, generate_cmds, sandbox_cmds, store_cmds, tui_cmd

    catalog_cmds.register(app)
    store_cmds.register(app)
    sandbox_cmds.register(app)
    generate_cmds.register(app)
    tui_cmd.register(app)


_register()


def main() -> None:
    """Console entry point: one-line errors with a hint, never a traceback for expected ones."""
    try:
        app(standalone_mode=False)
    except AssetMgrError as exc:
        fail(exc)
        raise SystemExit(exc.exit_code) from None
    except KeyboardInterrupt:
        sys.stderr.write("error: interrupted\n")
        raise SystemExit(130) from None
    except typer.Abort:
        sys.stderr.write("error: aborted\n")
        raise SystemExit(1) from None
    except SystemExit:
        raise
    except Exception as exc:  # click usage errors and the unexpected
        import click

        if isinstance(exc, click.ClickException):
            exc.show()
            raise SystemExit(exc.exit_code) from None
        if os.environ.get("ASSETMGR_DEBUG"):
            raise
        sys.stderr.write(f"error: unexpected {type(exc).__name__}: {exc}\n")
        sys.stderr.write("hint: rerun with ASSETMGR_DEBUG=1 for a traceback and report it.\n")
        raise SystemExit(70) from None
