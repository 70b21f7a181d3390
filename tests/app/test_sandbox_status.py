"""The one verdict on the sandbox image, as `sandbox status` and the TUI take it, from the
image facts a job runner reports (the fake stands in for the engine)."""

from __future__ import annotations

from assetmgr.app.sandbox_status import BUILD_HINT, image_report, sandbox_state
from tests.app.fakes import FakeJobRunner


def test_a_built_current_image_is_ready() -> None:
    report = image_report(FakeJobRunner())
    assert report.verdict.available and report.verdict.words() == "ready"
    assert not report.needs_build
    assert report.verdict.as_json() == {"available": True, "reason": "", "note": ""}


def test_no_image_is_not_available_and_names_the_build() -> None:
    report = image_report(FakeJobRunner(image_built=False))
    assert not report.verdict.available and report.needs_build
    assert report.verdict.words() == (
        f"not available: no sandbox image has been built ({BUILD_HINT})"
    )


def test_a_stale_image_is_ready_with_a_note() -> None:
    runner = FakeJobRunner(stale_reasons=["plugin set changed", "worker edited"])
    report = image_report(runner, check_engine=False)
    assert report.verdict.available and report.needs_build
    assert report.verdict.words() == "ready; image is stale: plugin set changed; worker edited"


def test_an_unreachable_engine_is_not_available_whatever_the_record_says() -> None:
    runner = FakeJobRunner(engine_problem="Cannot connect to the Docker daemon")
    report = image_report(runner)
    assert report.verdict.words() == (
        "not available: the Docker engine is not reachable: Cannot connect to the Docker daemon"
    )
    assert not report.needs_build
    # The Generate screen's check is the same verdict.
    assert sandbox_state(runner) == report.verdict
