"""The host reads the environment in one module (`assetmgr.environment`), and the README names
every variable it reads."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from assetmgr import environment

REPO = Path(__file__).resolve().parents[2]
# Building a child process's environment (proxies, pip's own settings) is not a settings read;
# the worker runs in the container and never sees the host's environment.
ALLOWED = {"assetmgr/environment.py", "sandbox/image/_proc.py"}
SKIPPED_TREES = ("sandbox/worker/",)


def _environment_reads(path: Path) -> list[int]:
    tree = ast.parse(path.read_text("utf-8"), str(path))
    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr in ("environ", "getenv", "environb"):
            lines.append(node.lineno)
        elif isinstance(node, ast.ImportFrom) and node.module == "os":
            if any(a.name in ("environ", "getenv", "environb") for a in node.names):
                lines.append(node.lineno)
    return lines


def test_only_the_environment_module_reads_the_environment() -> None:
    found = []
    for package in ("assetmgr", "catalog", "sandbox"):
        for path in sorted((REPO / package).rglob("*.py")):
            rel = path.relative_to(REPO).as_posix()
            if rel in ALLOWED or rel.startswith(SKIPPED_TREES):
                continue
            found += [f"{rel}:{line}" for line in _environment_reads(path)]
    assert found == []


def test_the_guard_sees_a_read() -> None:
    sample = REPO / "assetmgr" / "environment.py"
    assert _environment_reads(sample), "the AST check must find environment.py's own read"


def test_every_variable_is_in_the_readme() -> None:
    readme = (REPO / "README.md").read_text("utf-8")
    missing = [name for name in environment.VARIABLES if f"`{name}`" not in readme]
    assert missing == []


def test_an_unknown_variable_is_a_bug_not_a_silent_none(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ASSETMGR_SYNC_WORKERS", "")
    assert environment.get("ASSETMGR_SYNC_WORKERS") is None
    monkeypatch.setenv("ASSETMGR_DEBUG", "1")
    assert environment.flag("ASSETMGR_DEBUG")
    with pytest.raises(KeyError):
        environment.get("ASSETMGR_NO_SUCH_THING")
