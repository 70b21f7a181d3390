"""Which job containers the engine created during a test: its own ``create`` events, read
back by the project's labels (the containers themselves are gone by then)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from sandbox.runner import LABEL_JOB, LABEL_ROLE, LABEL_SESSION, SESSION_ID


@dataclass(frozen=True)
class Created:
    id: str
    role: str
    session: str
    image: str


class ContainerLog:
    """Create events of job containers from `start` on, this process's (`session`) or, with
    ``session=None``, any process's whose image is `image` (a CLI run in a subprocess)."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.start_ns = time.time_ns()

    def created(
        self, *, session: str | None = SESSION_ID, image: str | None = None
    ) -> list[Created]:
        labels = [LABEL_JOB] if session is None else [f"{LABEL_SESSION}={session}"]
        events = self.client.events(
            since=self.start_ns // 10**9,
            until=time.time_ns() // 10**9 + 1,
            decode=True,
            filters={"type": "container", "event": "create", "label": labels},
        )
        found = []
        for event in events:
            attrs = event.get("Actor", {}).get("Attributes", {})
            if event.get("timeNano", 0) < self.start_ns or LABEL_JOB not in attrs:
                continue
            if image is not None and attrs.get("image") != image:
                continue
            found.append(
                Created(
                    event["id"],
                    attrs.get(LABEL_ROLE, ""),
                    attrs.get(LABEL_SESSION, ""),
                    attrs.get("image", ""),
                )
            )
        return found

    def alive(self, created: list[Created]) -> list[str]:
        """The ids of those containers that still exist."""
        return [
            c.id for c in created if self.client.containers.list(all=True, filters={"id": c.id})
        ]


def wait_gone(log: ContainerLog, created: list[Created], timeout_s: float = 120.0) -> list[str]:
    """Poll (bounded) until none of `created` exists; returns those still there at the end."""
    deadline = time.monotonic() + timeout_s
    alive = log.alive(created)
    while alive and time.monotonic() < deadline:
        time.sleep(0.5)
        alive = log.alive(created)
    return alive
