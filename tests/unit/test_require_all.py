"""CI cannot pass by skipping: a real pytest run over a small test file, with and without
ASSETMGR_REQUIRE_ALL, through the plugin .ci/run relies on (tests/require_all.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT

INI = """[pytest]
markers =
    docker: needs a running Docker engine
    postgres: needs PostgreSQL
    worker: needs torch
"""

SERVICE_TESTS = """
import pytest

@pytest.mark.docker
def test_needs_engine():
    pytest.skip("no Docker engine: connection refused")

@pytest.fixture(params=["sqlite", "postgresql"])
def db(request):
    if request.param == "postgresql":
        pytest.skip("ASSETMGR_TEST_PG_URL is not set")
    return request.param

def test_db(db):
    assert db == "sqlite"

def test_reflink():
    pytest.skip("this file system has no reflinks")

@pytest.mark.docker
@pytest.mark.xfail(reason="known engine bug", strict=True)
def test_known_bug():
    raise RuntimeError("engine bug")
"""

MODULE_SKIP = """
import pytest

pytest.importorskip("assetmgr_no_such_module")

def test_never_collected():
    pass
"""


def _run_pytest(folder: Path, require_all: str | None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "ASSETMGR_REQUIRE_ALL"}
    env["PYTHONPATH"] = str(REPO_ROOT)
    if require_all is not None:
        env["ASSETMGR_REQUIRE_ALL"] = require_all
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "tests.require_all",
            "-p",
            "no:cacheprovider",
            "-q",
            "-rA",
            str(folder),
        ],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )


@pytest.fixture
def service_tests(tmp_path: Path) -> Path:
    (tmp_path / "pytest.ini").write_text(INI)
    (tmp_path / "test_services.py").write_text(SERVICE_TESTS)
    return tmp_path


def test_without_the_variable_service_tests_skip(service_tests: Path) -> None:
    run = _run_pytest(service_tests, None)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "1 passed, 3 skipped, 1 xfailed" in run.stdout
    assert "ASSETMGR_REQUIRE_ALL" not in run.stdout


def test_zero_means_off(service_tests: Path) -> None:
    run = _run_pytest(service_tests, "0")
    assert run.returncode == 0, run.stdout + run.stderr
    assert "1 passed, 3 skipped, 1 xfailed" in run.stdout


def test_with_the_variable_a_skipped_service_test_fails(service_tests: Path) -> None:
    run = _run_pytest(service_tests, "1")
    out = run.stdout
    assert run.returncode == 1, out + run.stderr
    # The docker-marked skip fails, the PostgreSQL variant (it skips in its fixture) errors;
    # the unmarked skip stays a skip, and an xfail is not a skip.
    assert "1 failed, 1 passed, 1 skipped, 1 xfailed, 1 error" in out
    assert (
        "test_services.py::test_needs_engine: needs a Docker engine with the sandbox image: "
        "no Docker engine: connection refused"
    ) in out
    assert (
        "test_services.py::test_db[postgresql]: needs a PostgreSQL server "
        "(ASSETMGR_TEST_PG_URL): ASSETMGR_TEST_PG_URL is not set"
    ) in out
    # Every other skip is listed in a section of its own.
    assert "ASSETMGR_REQUIRE_ALL: other skips (1)" in out
    assert "test_services.py::test_reflink: this file system has no reflinks" in out


def test_with_the_variable_a_module_skipped_while_collecting_fails(tmp_path: Path) -> None:
    (tmp_path / "pytest.ini").write_text(INI)
    (tmp_path / "test_module_skip.py").write_text(MODULE_SKIP)
    (tmp_path / "test_plain.py").write_text("def test_plain():\n    pass\n")
    quiet = _run_pytest(tmp_path, None)
    assert quiet.returncode == 0, quiet.stdout + quiet.stderr
    assert "1 passed, 1 skipped" in quiet.stdout

    run = _run_pytest(tmp_path, "1")
    assert run.returncode != 0, run.stdout + run.stderr
    assert "1 error" in run.stdout
    assert (
        "test_module_skip.py: skipped while collecting: could not import 'assetmgr_no_such_module'"
    ) in run.stdout


def test_the_ci_script_asks_for_it() -> None:
    ci = (REPO_ROOT / ".ci" / "run").read_text()
    assert "export ASSETMGR_REQUIRE_ALL=1" in ci
