"""Every usage mistake on every command, as a user makes it: the installed `assetmgr` script in
a subprocess, on an install made exactly as the README's quick start makes it.

The table of cases is built from the typer app's own declarations, so a new command or option
is covered without touching this file: for each command an unknown option, a missing argument
or option, a value of the wrong type, a number out of range, a bad choice, an option missing
its value, an extra argument, and ``--help``; for each group a missing and an unknown command.
Each mistake must give exactly one ``error:`` line and one ``hint:`` line naming the command's
``--help`` on stderr, nothing on stdout, exit 2 and no traceback.
"""

from __future__ import annotations

import ast
import enum
import fcntl
import hashlib
import inspect
import os
import shutil
import subprocess
import sys
import tomllib
import types
import typing
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import typer
import typer.main
from typer.models import ArgumentInfo, OptionInfo

from assetmgr.cli import app

REPO_ROOT = Path(__file__).resolve().parents[2]
DEV_SCRIPT = Path(sys.executable).parent / "assetmgr"
BASE_VENVS = REPO_ROOT / ".cache" / "base-venv"
"""Venvs made by `scripts/bootstrap` in a copy of the tree, one per pyproject (kept between
runs: pip's caches make the first one, the stamp keeps it)."""


# --- the table of cases, from the app's declarations ---------------------------------------


@dataclass(frozen=True)
class Param:
    name: str
    kind: str
    """``option`` or ``argument``."""
    flag: str | None
    """The option's first long name (``--limit``); None for an argument."""
    base: Any
    """The value type (int, float, str, Path, an Enum), lists and None unwrapped."""
    required: bool
    takes_value: bool
    variadic: bool
    low: float | None
    high: float | None


@dataclass(frozen=True)
class Case:
    id: str
    argv: tuple[str, ...]
    command: str
    """The command path the hint must name (``assetmgr models list``)."""
    needle: str
    """Text the error line must hold (lowercase); empty for --help."""


def _base_type(annotation: Any) -> tuple[Any, bool]:
    """(value type, whether it is a list), with Optional removed."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        annotation = next(a for a in typing.get_args(annotation) if a is not type(None))
        origin = typing.get_origin(annotation)
    if origin is list:
        return typing.get_args(annotation)[0], True
    return annotation, False


def _params(callback: Any) -> list[Param]:
    hints = typing.get_type_hints(callback)
    found = []
    for name, parameter in inspect.signature(callback).parameters.items():
        info = parameter.default
        if not isinstance(info, OptionInfo | ArgumentInfo):
            continue
        base, is_list = _base_type(hints[name])
        if isinstance(info, OptionInfo):
            decls = [d for d in info.param_decls or () if d.startswith("--")]
            flag = decls[0] if decls else f"--{name.replace('_', '-')}"
            takes_value = base is not bool and not info.count
            kind = "option"
        else:
            flag, takes_value, kind = None, True, "argument"
        found.append(
            Param(
                name=name,
                kind=kind,
                flag=flag,
                base=base,
                required=info.default is ...,
                takes_value=takes_value,
                variadic=is_list and kind == "argument",
                low=getattr(info, "min", None),
                high=getattr(info, "max", None),
            )
        )
    return found


def _sample(param: Param) -> str:
    """A value that parses for this parameter."""
    if isinstance(param.base, type) and issubclass(param.base, enum.Enum):
        return str(next(iter(param.base)).value)
    if param.base in (int, float):
        return str(int(param.low) if param.low is not None else 1)
    return "x"


def _valid_args(params: list[Param], *, leave_out: str | None = None) -> list[str]:
    """Required options with a value, then every argument, in order."""
    argv: list[str] = []
    for p in params:
        if p.kind == "option" and p.required and p.name != leave_out:
            argv += [p.flag or "", _sample(p)]
    argv += [_sample(p) if p.name != leave_out else "{}" for p in params if p.kind == "argument"]
    return argv


def _command_cases(path: list[str], params: list[Param]) -> Iterator[Case]:
    words = tuple(path[1:])
    shown = " ".join(path)
    base = " ".join(path[1:])

    def case(kind: str, argv: list[str], needle: str) -> Case:
        return Case(f"{base or 'assetmgr'}: {kind}", tuple(argv), shown, needle)

    yield case("--help", [*words, "--help"], "")
    yield case("unknown option", [*words, "--no-such-option"], "no such option: --no-such-option")
    arguments = [p for p in params if p.kind == "argument"]
    if not (arguments and arguments[-1].variadic):  # a variadic argument takes any extra
        yield case(
            "extra argument", [*words, *_valid_args(params), "extra-arg"], "unexpected extra"
        )
    if any(p.required for p in params):
        yield case("missing argument", list(words), "missing ")
    numeric = next((p for p in params if p.base in (int, float) and p.takes_value), None)
    if numeric is not None:
        yield case("bad value type", _with_value(words, params, numeric, "abc"), "invalid value")
    ranged = next((p for p in params if p.low is not None or p.high is not None), None)
    if ranged is not None:
        outside = ranged.low - 1 if ranged.low is not None else (ranged.high or 0) + 1
        argv = _with_value(words, params, ranged, str(int(outside)))
        yield case("out of range", argv, "invalid value")
    choice = next(
        (p for p in params if isinstance(p.base, type) and issubclass(p.base, enum.Enum)), None
    )
    if choice is not None:
        argv = _with_value(words, params, choice, "no-such-choice")
        yield case("bad choice", argv, "no-such-choice")
    valued = next((p for p in params if p.kind == "option" and p.takes_value), None)
    if valued is not None:
        yield case("option missing its value", [*words, valued.flag or ""], "requires an argument")


def _with_value(words: tuple[str, ...], params: list[Param], param: Param, value: str) -> list[str]:
    """Valid arguments everywhere but `param`, which gets `value`."""
    argv = _valid_args(params, leave_out=param.name)
    if param.kind == "argument":
        return [*words, *[value if a == "{}" else a for a in argv]]
    return [*words, *argv, param.flag or "", value]


def _group_cases(path: list[str], group: typer.Typer) -> Iterator[Case]:
    words = tuple(path[1:])
    shown = " ".join(path)
    base = " ".join(path[1:])
    yield Case(f"{base}: --help", (*words, "--help"), shown, "")
    yield Case(f"{base}: unknown option", (*words, "--no-such-option"), shown, "no such option")
    yield Case(f"{base}: missing command", words, shown, "missing command")
    yield Case(f"{base}: unknown command", (*words, "no-such-command"), shown, "no such command")
    yield from _app_cases(path, group)


def _app_cases(path: list[str], typer_app: typer.Typer) -> Iterator[Case]:
    for command in typer_app.registered_commands:
        name = command.name or (command.callback.__name__ if command.callback else "")
        yield from _command_cases([*path, name], _params(command.callback))
    for group in typer_app.registered_groups:
        assert group.name and group.typer_instance is not None
        yield from _group_cases([*path, group.name], group.typer_instance)


def all_cases() -> list[Case]:
    root = [
        Case("assetmgr: --help", ("--help",), "assetmgr", ""),
        Case("assetmgr: unknown command", ("frobnicate",), "assetmgr", "no such command"),
        Case("assetmgr: unknown option", ("--no-such-option",), "assetmgr", "no such option"),
    ]
    return root + list(_app_cases(["assetmgr"], app))


CASES = all_cases()


def _click_paths(command: Any, path: tuple[str, ...] = ()) -> set[tuple[str, ...]]:
    subcommands = getattr(command, "commands", {}) or {}
    found = {path}
    for name, sub in subcommands.items():
        found |= _click_paths(sub, (*path, name))
    return found


def test_the_table_covers_every_command_of_the_app() -> None:
    """The declarations walked above are all the commands typer builds, groups included."""
    built = _click_paths(typer.main.get_command(app))
    covered = {c.argv[:-1] for c in CASES if c.argv[-1:] == ("--help",)}
    assert covered == built
    kinds = {case.id.split(": ", 1)[1] for case in CASES}
    assert {
        "--help",
        "unknown option",
        "extra argument",
        "missing argument",
        "bad value type",
        "out of range",
        "bad choice",
        "option missing its value",
        "missing command",
        "unknown command",
    } <= kinds


# --- the install the README's quick start makes ---------------------------------------------


def _source_files() -> list[str]:
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO_ROOT,
        capture_output=True,
        check=True,
    ).stdout.decode()
    return sorted(f for f in listed.split("\0") if f and (REPO_ROOT / f).is_file())


def _mirror(files: list[str], dest: Path) -> None:
    """`dest` holds exactly `files` of the tree (besides its .venv); unchanged ones stay as they
    are, so the bootstrap stamp stays newer than pyproject.toml."""
    wanted = set(files)
    for name in files:
        src, dst = REPO_ROOT / name, dest / name
        if dst.is_file() and dst.read_bytes() == src.read_bytes():
            continue
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dst)
    for found in dest.rglob("*"):
        rel = found.relative_to(dest)
        if rel.parts[0] == ".venv" or not found.is_file():
            continue
        if str(rel) not in wanted and "__pycache__" not in rel.parts:
            found.unlink()


@pytest.fixture(scope="session")
def base_install() -> Path:
    """The console script of a venv that `scripts/bootstrap` (no extras) made: base dependencies
    only, an editable install of a copy of this tree. Built once per pyproject.toml."""
    key = hashlib.sha256(
        (REPO_ROOT / "pyproject.toml").read_bytes()
        + (REPO_ROOT / "scripts" / "bootstrap").read_bytes()
        + sys.version.encode()
    ).hexdigest()[:16]
    BASE_VENVS.mkdir(parents=True, exist_ok=True)
    with open(BASE_VENVS / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        for old in BASE_VENVS.iterdir():
            if old.is_dir() and old.name != key:
                shutil.rmtree(old)
        tree = BASE_VENVS / key
        _mirror(_source_files(), tree)
        env = {k: v for k, v in os.environ.items() if k != "VIRTUAL_ENV"}
        made = subprocess.run(
            [str(tree / "scripts" / "bootstrap")],
            cwd=tree,
            env=env,
            capture_output=True,
            text=True,
            timeout=900,
        )
        assert made.returncode == 0, made.stderr[-4000:]
    return tree / ".venv" / "bin" / "assetmgr"


def run_script(script: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(script), *argv],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "COLUMNS": "100"},
    )


def check_case(result: subprocess.CompletedProcess[str], case: Case) -> None:
    assert "Traceback" not in result.stderr, result.stderr
    if not case.needle:  # --help
        assert result.returncode == 0, result.stderr
        assert "Usage:" in result.stdout and result.stderr == ""
        return
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 2, lines
    error, hint = lines
    assert error.startswith("error: ") and case.needle in error.lower(), error
    assert hint == f"hint: Run `{case.command} --help` for usage."


def test_the_base_install_has_no_click(base_install: Path) -> None:
    """The quick start's venv holds what pyproject declares and nothing else: no click."""
    python = base_install.parent / "python"
    probe = subprocess.run(
        [str(python), "-c", "import importlib.util as u; print(u.find_spec('click') is None)"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert probe.stdout.strip() == "True", probe.stderr


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_usage_errors_on_the_base_install(base_install: Path, case: Case) -> None:
    check_case(run_script(base_install, *case.argv), case)


ONE_PER_KIND = list({c.id.split(": ", 1)[1]: c for c in CASES}.values())


@pytest.mark.parametrize("case", ONE_PER_KIND, ids=[c.id for c in ONE_PER_KIND])
def test_usage_errors_on_the_development_install(case: Case) -> None:
    """The same words where click is installed too (the test extras bring it)."""
    check_case(run_script(DEV_SCRIPT, *case.argv), case)


def test_options_that_cannot_go_together_are_a_usage_error_too() -> None:
    result = run_script(DEV_SCRIPT, "pull", "1", "2", "--file-id", "3")
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.splitlines() == [
        "error: --file-id needs exactly one VERSION_ID",
        "hint: Pull one version at a time with --file-id (`assetmgr pull --help`).",
    ]


def test_a_usage_error_keeps_hostile_arguments_on_their_line() -> None:
    result = run_script(DEV_SCRIPT, "models", "show", "1\n\x1b[2Jevil")
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "error: invalid value for 'MODEL_ID': Input should be a valid integer, unable to parse "
        "string as an integer",
        "hint: Run `assetmgr models show --help` for usage.",
    ]
    result = run_script(DEV_SCRIPT, "models", "list", "--type", "x", "\x1b]0;title\x07extra")
    assert result.returncode == 2
    error, hint = result.stderr.splitlines()
    # Shown (click escapes it itself, our cleaning would show ␛ and ␇), never sent raw.
    assert error.startswith("error: got unexpected extra argument(s) (") and "title" in error
    assert not any(ord(c) < 32 or 0x7F <= ord(c) < 0xA0 for c in result.stderr.replace("\n", ""))


def test_click_is_imported_only_if_declared() -> None:
    """Typer vendors its own click: the project's code must not import click, which the quick
    start's install does not have, unless pyproject declares it."""
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    declared = {_dist_name(r) for r in project["dependencies"]}
    importers = []
    for package in ("assetmgr", "catalog", "sandbox"):
        for module in (REPO_ROOT / package).rglob("*.py"):
            for node in ast.walk(ast.parse(module.read_text("utf-8"))):
                names: list[str] = []
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                if any(name.split(".")[0] == "click" for name in names):
                    importers.append(f"{module.relative_to(REPO_ROOT)}:{node.lineno}")
    assert "click" in declared or importers == []


def _dist_name(requirement: str) -> str:
    name = requirement
    for stop in "<>=!~[ ;":
        name = name.split(stop, 1)[0]
    return name.strip().lower()
