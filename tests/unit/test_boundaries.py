"""The package boundaries of the design card, checked two ways: import-linter's static
contracts, and a real import in a fresh interpreter that must not load the banned modules."""

from __future__ import annotations

import json
import pkgutil
import shutil
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def _modules(package: str) -> list[str]:
    pkg_path = REPO_ROOT / package.replace(".", "/")
    names = [package]
    for info in pkgutil.walk_packages([str(pkg_path)], prefix=package + "."):
        if ".migrations.versions" in info.name or info.name.endswith("__main__"):
            continue
        names.append(info.name)
    return names


def _loaded_after_import(modules: list[str], *, full_names: bool = False) -> set[str]:
    # httpx imports its optional CLI (httpx._main), which pulls in rich when rich is installed;
    # stub it so the check sees only what our own modules import.
    code = (
        "import importlib, json, sys, types\n"
        "stub = types.ModuleType('httpx._main'); stub.main = lambda: None\n"
        "sys.modules['httpx._main'] = stub\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        "real = [m for m in sys.modules if m != 'httpx._main']\n"
        f"print(json.dumps(sorted({{m if {full_names!r} else m.split('.')[0] for m in real}})))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=True
    )
    return set(json.loads(out.stdout.strip().splitlines()[-1]))


def test_import_linter_contracts_hold() -> None:
    lint = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    assert lint, "import-linter is not installed in this environment"
    result = subprocess.run([lint], cwd=REPO_ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_catalog_imports_no_ui_or_sandbox_libraries() -> None:
    loaded = _loaded_after_import(_modules("catalog"))
    assert "catalog" in loaded
    assert not loaded & {"textual", "typer", "rich", "docker", "torch", "diffusers"}


def test_sandbox_host_side_never_imports_torch_or_ui() -> None:
    host_modules = [m for m in _modules("sandbox") if not m.startswith("sandbox.worker")]
    loaded = _loaded_after_import(host_modules)
    assert not loaded & {"torch", "diffusers", "transformers", "textual", "typer", "rich"}


def test_worker_never_imports_host_libraries() -> None:
    # Worker modules import torch lazily, inside functions, so this works on any host.
    loaded = _loaded_after_import(_modules("sandbox.worker"))
    assert not loaded & {
        "docker",
        "sqlmodel",
        "sqlalchemy",
        "httpx",
        "textual",
        "catalog",
        "assetmgr",
    }


def test_store_and_core_modules_do_not_import_ui() -> None:
    names = ["assetmgr", "assetmgr.errors", "assetmgr.paths", "assetmgr.config", "assetmgr.context"]
    store = REPO_ROOT / "assetmgr" / "store"
    if store.exists():
        names += _modules("assetmgr.store")
    loaded = _loaded_after_import(names)
    assert not loaded & {"textual", "typer", "rich"}


def test_the_host_never_loads_the_worker_package() -> None:
    """Host and worker share `sandbox.protocol`; nothing on the host
    (the CLI, the TUI, the catalog, the sandbox's host side) loads a `sandbox.worker` module."""
    host = [
        *_modules("assetmgr"),
        *_modules("catalog"),
        *[m for m in _modules("sandbox") if not m.startswith("sandbox.worker")],
    ]
    loaded = _loaded_after_import(host, full_names=True)
    assert "assetmgr.app.generate_checks" in loaded and "sandbox.protocol.jobspec" in loaded
    assert not {m for m in loaded if m == "sandbox.worker" or m.startswith("sandbox.worker.")}
