"""Retry rules for the Civitai client: which answers to retry and how long to wait.

Kept apart from the client so the policy is one small value object that tests can tune
(no sleeps, deterministic jitter) and the download code can reuse.
"""

from __future__ import annotations

import email.utils
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC

# 408 and 429 are "try later"; 500/502/503/504 are the transient server and edge failures.
RETRY_STATUSES: frozenset[int] = frozenset({408, 429, 500, 502, 503, 504})


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` value (delta seconds or HTTP date); None if unusable.

    A date in the past gives 0, so a skewed server clock never makes us wait longer.
    """
    if value is None:
        return None
    text = value.strip()
    if not text:
        return None
    try:
        seconds = float(text)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:  # "-0000" parses naive; HTTP dates are GMT anyway
            when = when.replace(tzinfo=UTC)
        current = time.time() if now is None else now
        return max(0.0, when.timestamp() - current)
    if seconds != seconds or seconds in (float("inf"), float("-inf")):  # NaN, inf
        return None
    return max(0.0, seconds)


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently to retry; the defaults suit Civitai's edge (about 1 s to 30 s).

    `jitter` returns a number in [0, 1]; it is injectable so tests get exact delays.
    """

    max_attempts: int = 6
    """Attempts in total, the first one included; 1 turns retrying off."""
    base_delay: float = 0.5
    """Upper bound of the first backoff, doubled on each further attempt."""
    max_delay: float = 30.0
    """Upper bound of any backoff without ``Retry-After``."""
    retry_after_cap: float = 60.0
    """A server-sent ``Retry-After`` is honoured up to this many seconds."""
    retry_statuses: frozenset[int] = RETRY_STATUSES
    """Statuses that are retried; every other status is final."""
    jitter: Callable[[], float] = field(default=random.random, repr=False, compare=False)
    """Source of the full-jitter factor."""

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if self.base_delay < 0 or self.max_delay < 0 or self.retry_after_cap < 0:
            raise ValueError("delays must not be negative")

    def backoff(self, failures: int) -> float:
        """Full-jitter exponential backoff after `failures` failed attempts (1 for the first)."""
        ceiling = min(self.max_delay, self.base_delay * 2.0 ** min(failures - 1, 60))
        return max(0.0, min(1.0, self.jitter())) * ceiling

    def delay(self, failures: int, retry_after: float | None = None) -> float:
        """The wait before the next attempt: ``Retry-After`` when given (capped), else backoff."""
        if retry_after is not None:
            return min(max(0.0, retry_after), self.retry_after_cap)
        return self.backoff(failures)


__all__ = ["RETRY_STATUSES", "RetryPolicy", "parse_retry_after"]
