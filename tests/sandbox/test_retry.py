"""The sandbox's one retry policy for engine removals (no engine; the sleeps are recorded)."""

from __future__ import annotations

from sandbox.retry import CONTAINER_REMOVAL, VOLUME_REMOVAL, EngineRetry


def test_attempts_wait_between_tries_only() -> None:
    waits: list[float] = []
    tries = list(CONTAINER_REMOVAL.attempts(sleep=waits.append))
    assert tries == [0, 1, 2]
    assert waits == [0.5, 1.0]  # growing, and no wait after the last try


def test_fixed_policy_waits_the_same_step() -> None:
    waits: list[float] = []
    assert len(list(VOLUME_REMOVAL.attempts(sleep=waits.append))) == 20
    assert waits == [0.1] * 19


def test_a_caller_that_succeeds_stops_the_waiting() -> None:
    waits: list[float] = []
    for attempt in EngineRetry(tries=5, step_s=2.0).attempts(sleep=waits.append):
        if attempt == 1:
            break
    assert waits == [2.0]
