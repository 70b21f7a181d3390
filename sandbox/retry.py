"""The sandbox's one retry policy for engine calls that usually succeed when asked again.

Removing a container or a volume right after a kill can fail for a moment (an engine slower
than the client's timeout, "volume in use"); each such call retries with a named `EngineRetry`.
Network retries with jitter and ``Retry-After`` are the catalog's concern, not the sandbox's.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass


@dataclass(frozen=True)
class EngineRetry:
    """At most `tries` attempts; before attempt n (n >= 1) wait ``step_s`` (times n if growing)."""

    tries: int
    step_s: float
    growing: bool = False

    def delay_s(self, attempt: int) -> float:
        return self.step_s * attempt if self.growing else self.step_s

    def attempts(self, sleep: Callable[[float], None] = time.sleep) -> Iterator[int]:
        """Attempt numbers from 0, sleeping between them; the caller breaks on success."""
        for attempt in range(self.tries):
            if attempt:
                sleep(self.delay_s(attempt))
            yield attempt


#: Removing a just-killed container: a slow engine usually finishes on a second ask.
CONTAINER_REMOVAL = EngineRetry(tries=3, step_s=0.5, growing=True)
#: Removing a volume right after its container ("volume in use" for a moment).
VOLUME_REMOVAL = EngineRetry(tries=20, step_s=0.1)

__all__ = ["CONTAINER_REMOVAL", "VOLUME_REMOVAL", "EngineRetry"]
