"""Pytest plugin: with ASSETMGR_REQUIRE_ALL set (CI sets it), a test cannot pass by skipping.

A skipped test that needs a service CI provides (marked docker, postgres or worker, or using a
fixture that skips without one) fails with one line naming the service; a module that skips
while being collected fails too; every other skip is listed in a summary section of its own.
"""

from __future__ import annotations

import os
from collections.abc import Generator

import pytest

REQUIRE_ALL_ENV = "ASSETMGR_REQUIRE_ALL"

# marker -> what is missing when a test with that marker skips
SERVICES = {
    "docker": "a Docker engine with the sandbox image",
    "postgres": "a PostgreSQL server (ASSETMGR_TEST_PG_URL)",
    "worker": "torch/diffusers on the host (the worker extra)",
}
# Fixtures that skip when their service is missing, for tests that do not carry the marker.
FIXTURE_SERVICES = {
    "docker_client": "docker",
    "sandbox_image": "docker",
    "synth_cache": "worker",
}
# A parametrized fixture's PostgreSQL variant skips without ASSETMGR_TEST_PG_URL.
POSTGRES_PARAM = "postgresql"

_MISSING = pytest.StashKey[list[tuple[str, str]]]()
_ALLOWED = pytest.StashKey[list[tuple[str, str]]]()


def require_all() -> bool:
    return os.environ.get(REQUIRE_ALL_ENV, "") not in ("", "0")


def _skip_reason(report: pytest.TestReport | pytest.CollectReport) -> str:
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2]).removeprefix("Skipped: ")
    return str(longrepr)


def _services_of(item: pytest.Item) -> list[str]:
    return [marker for marker in SERVICES if item.get_closest_marker(marker) is not None]


def pytest_configure(config: pytest.Config) -> None:
    config.stash[_MISSING] = []
    config.stash[_ALLOWED] = []


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # Runs before -m deselects, so `-m "not docker"` also leaves out the unmarked engine tests.
    for item in items:
        fixtures = getattr(item, "fixturenames", ())
        needed = {FIXTURE_SERVICES[name] for name in fixtures if name in FIXTURE_SERVICES}
        callspec = getattr(item, "callspec", None)
        if callspec is not None and POSTGRES_PARAM in callspec.params.values():
            needed.add("postgres")
        for marker in sorted(needed):
            if item.get_closest_marker(marker) is None:
                item.add_marker(marker)


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(
    collector: pytest.Collector,
) -> Generator[None, pytest.CollectReport, pytest.CollectReport]:
    report = yield
    if require_all() and report.skipped:
        reason = _skip_reason(report)
        line = f"skipped while collecting: {reason}"
        collector.config.stash[_MISSING].append((report.nodeid, line))
        report.outcome = "failed"
        report.longrepr = f"{REQUIRE_ALL_ENV}: {report.nodeid} skipped while collecting: {reason}"
    return report


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if not report.skipped or hasattr(report, "wasxfail"):
        return report
    reason = _skip_reason(report)
    services = _services_of(item)
    if require_all() and services:
        missing = " and ".join(SERVICES[name] for name in services)
        item.config.stash[_MISSING].append((report.nodeid, f"needs {missing}: {reason}"))
        report.outcome = "failed"
        report.longrepr = f"{REQUIRE_ALL_ENV}: this test needs {missing}, and it skipped: {reason}"
    else:
        item.config.stash[_ALLOWED].append((report.nodeid, reason))
    return report


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not require_all():
        return
    config = terminalreporter.config
    missing = config.stash[_MISSING]
    allowed = config.stash[_ALLOWED]
    if missing:
        terminalreporter.section(f"{REQUIRE_ALL_ENV}: required services missing", red=True)
        for nodeid, line in missing:
            terminalreporter.line(f"{nodeid}: {line}")
    title = f"{REQUIRE_ALL_ENV}: other skips ({len(allowed)})"
    terminalreporter.section(title, yellow=bool(allowed))
    for nodeid, reason in allowed:
        terminalreporter.line(f"{nodeid}: {reason}")
