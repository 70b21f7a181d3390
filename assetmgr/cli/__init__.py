"""The `assetmgr` command line (typer). Output for pipes goes to stdout; everything else,
progress bars and errors included, goes to stderr.

Every line the commands write goes through `print_line`, `print_json`, `print_rich` or `fail`,
which pass it through the display sanitizer (`assetmgr.display`): names, file names and
server or job messages in it are outside text.
"""

from __future__ import annotations

import sys
from typing import Any

import typer

from assetmgr import environment
from assetmgr.display import clean, dumps_json
from assetmgr.errors import EXPECTED_ERRORS

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
    from assetmgr.logs import setup_logging

    setup_logging(verbose=verbose, terminal=True)


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
    """`data` as indented JSON on stdout; terminal controls in strings come out as escapes."""
    sys.stdout.write(dumps_json(data) + "\n")


def print_line(text: str = "", *, err: bool = False, multiline: bool = False) -> None:
    """One line of plain output (stdout, or stderr with `err`), cleaned for the terminal.

    With `multiline` the text may hold line breaks of its own; without, every value in it
    stays on this one line.
    """
    stream = sys.stderr if err else sys.stdout
    stream.write(clean(text, multiline=multiline) + "\n")


def print_rich(renderable: Any) -> None:
    """A Rich table or `Text` on stdout. Build it from `Text` cells of cleaned values, never
    from markup strings of outside text."""
    from rich.console import Console

    Console().print(renderable)


def fail(exc: BaseException) -> int:
    """The error line and its hint on stderr, each one cleaned line; returns the exit code."""
    from assetmgr.wording import describe

    words = describe(exc)
    if words is None:  # not raised on purpose: worded as a bug
        from assetmgr.logs import redact_secrets

        print_line(f"error: unexpected {type(exc).__name__}: {redact_secrets(str(exc))}", err=True)
        print_line(f"hint: {_unexpected_hint(exc)}", err=True)
        return 70
    print_line(f"error: {words.message}", err=True)
    if words.hint:
        print_line(f"hint: {words.hint}", err=True)
    return words.exit_code


def _register() -> None:
    from assetmgr.cli import (
        catalog_cmds,
        generate_cmds,
        preview_cmds,
        sandbox_cmds,
        store_cmds,
        tui_cmd,
    )

    catalog_cmds.register(app)
    store_cmds.register(app)
    preview_cmds.register(app)
    sandbox_cmds.register(app)
    generate_cmds.register(app)
    tui_cmd.register(app)


_register()


def main() -> None:
    """Console entry point: one-line errors with a hint, never a traceback for expected ones.

    Usage mistakes exit 2 with an ``error:`` and a ``hint:`` line; an interrupt exits 130.
    """
    from assetmgr.cli.usage import PROG, is_usage_error, usage_error_lines

    argv = sys.argv[1:]
    try:
        # Without standalone mode typer returns the code of an exit (`--help`: 0; Ctrl-C,
        # which it turns into an exit: 130) and raises usage errors for us to word.
        code = app(args=argv, prog_name=PROG, standalone_mode=False)
    except EXPECTED_ERRORS as exc:
        raise SystemExit(fail(exc)) from None
    except KeyboardInterrupt:
        code = 130
    except typer.Abort:
        print_line("error: aborted", err=True)
        raise SystemExit(1) from None
    except SystemExit:
        raise
    except Exception as exc:  # usage errors and the unexpected
        if is_usage_error(exc):
            error, hint, exit_code = usage_error_lines(exc, typer.main.get_command(app), argv)
            print_line(error, err=True)
            print_line(hint, err=True)
            raise SystemExit(exit_code) from None
        if environment.flag("ASSETMGR_DEBUG"):
            raise
        from assetmgr.logs import redact_secrets

        print_line(f"error: unexpected {type(exc).__name__}: {redact_secrets(str(exc))}", err=True)
        print_line(f"hint: {_unexpected_hint(exc)}", err=True)
        raise SystemExit(70) from None
    if code == 130:
        print_line("error: interrupted", err=True)
        print_line(
            "hint: Run the same command again; an interrupted pull or sync goes on where it "
            "stopped.",
            err=True,
        )
    if isinstance(code, int) and not isinstance(code, bool) and code:
        raise SystemExit(code)


def _unexpected_hint(exc: BaseException) -> str:
    """The traceback goes to the log file only; the hint says where it is."""
    from assetmgr.logs import record_unexpected

    log_path = record_unexpected(exc, "assetmgr.cli")
    if log_path is not None:
        return (
            f"this is a bug in assetmgr; the traceback is in {log_path} "
            "(or rerun with ASSETMGR_DEBUG=1); please report it."
        )
    return "this is a bug in assetmgr; rerun with ASSETMGR_DEBUG=1 for a traceback and report it."
