"""Usage errors (unknown command or option, missing or bad value, extra arguments) as one
``error:`` line and one ``hint:`` line naming the command's ``--help``.

Typer raises the exceptions of its own vendored copy of click (and of click itself in older
releases), so they are recognised by their shape, never imported: the project does not
depend on click.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

PROG = "assetmgr"


def is_usage_error(exc: BaseException) -> bool:
    """A click-style exception: it formats its own message and carries an exit code."""
    return callable(getattr(exc, "format_message", None)) and isinstance(
        getattr(exc, "exit_code", None), int
    )


def usage_error_lines(exc: BaseException, root: Any, argv: Sequence[str]) -> tuple[str, str, int]:
    """(error line, hint line, exit code) for a click-style exception.

    `root` is the click group of the app and `argv` the arguments it was given; they name the
    command the mistake belongs to when the exception carries no context.
    """
    ctx = getattr(exc, "ctx", None)
    command: Any = getattr(ctx, "command", None)
    path = command_path(root, argv)
    message = " ".join(str(exc.format_message()).split())  # type: ignore[attr-defined]
    if message.startswith("Missing command") and hasattr(command, "list_commands"):
        # A group given no command: name its commands rather than print the whole help.
        names = ", ".join(sorted(command.list_commands(ctx)))
        message = f"missing command: `{path}` takes one of: {names}"
    if message[:1].isupper() and message[1:2].islower():  # "No such option" → "no such…"
        message = message[0].lower() + message[1:]
    # Typer checks values with pydantic, whose messages may start "Value error, ".
    message = message.replace(": Value error, ", ": ").removesuffix(".")
    exit_code = int(exc.exit_code)  # type: ignore[attr-defined]
    hint = f"Run `{path} --help` for usage."
    if exit_code != 2:  # a click error that is not about usage (e.g. an unreadable file)
        hint = f"See `{path} --help`."
    return f"error: {message}", f"hint: {hint}", exit_code


def command_path(root: Any, argv: Sequence[str]) -> str:
    """``assetmgr models list``: the deepest command that `argv` names, options skipped."""
    words = [PROG]
    command = root
    for arg in argv:
        if arg == "--":
            break
        if arg.startswith("-"):
            continue
        subcommands = getattr(command, "commands", None)
        if not subcommands or arg not in subcommands:
            break
        command = subcommands[arg]
        words.append(arg)
    return " ".join(words)
