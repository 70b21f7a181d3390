"""Deterministic fault injection for the fake Civitai's two servers.

Each server has its own `FaultInjector` (``fake.faults`` for the API, ``fake.storage_faults``
for storage). A request that matches (path prefix, see `path`) takes its fate from, in order:

1. the schedule: ``faults.schedule(["503", "ok", "drop"])`` - one entry per matching request,
   then back to normal (``repeat=True`` cycles forever);
2. ``faults.fail_every(3, "429")`` - every 3rd matching request fails;
3. ``faults.random(0.2, ["503", "drop"], seed=7)`` - seeded, so a run replays exactly.

Kinds:

* ``"ok"`` - serve normally;
* ``"503"`` - 503 ``{"error":"Model search is temporarily overloaded — please retry."}`` with
  ``Retry-After: <retry_after>`` (default ``"1"``; doc section 6 says 2) and ``no-store``;
* ``"429"`` - 429 ``{"error":"Too Many Requests"}`` *without* Retry-After (Cloudflare edge);
  ``"429html"`` - the same with an HTML body;
* ``"500"`` - generic 500 body of doc section 6;
* ``"drop"`` - close the connection without a response (FIN);
  ``"reset"`` - abort it (RST);
* ``"truncate"`` - full Content-Length, half the body, then close;
* ``"badjson"`` - 200 with an HTML body where JSON was expected;
* ``"delay:<seconds>"`` - sleep, then serve normally (for client timeouts);
* ``"403"`` / ``"404"`` - plain JSON errors (storage: expired link / missing object);
* ``"hold"`` - wait until ``faults.release()`` (or two minutes), then serve normally: a request
  that is provably still in flight (``faults.held`` counts them), for tests of what goes on
  meanwhile. ``faults.hold(path)`` holds the next matching request.

Hostile bodies (`tests.fakeciv.hostile`; on either server, JSON-ish on the API, zeros on
storage; ``faults.streamed_bytes`` counts what was sent):

* ``"gzipbomb"`` - 200 with ``Content-Encoding: gzip`` and an honest Content-Length: a valid
  gzip of a few MB that inflates to ``faults.bomb_inflated_bytes`` (default 4 GiB);
* ``"endless"`` - 200, chunked, a body that goes on until the client hangs up (or
  ``faults.endless_bytes``, default 1 GiB, so a client without a bound still ends);
  ``"endless_eof"`` - the same with no length at all (the body ends when the connection does);
* ``"length:<n>"`` - declares ``Content-Length: <n>`` and then sends an endless body (a lie
  either way: far less than sent, or more than will ever come);
* ``"redirect:<location>"`` - 302 to `location` (absolute, or a path on the same server).

Storage-only knobs, for the bytes of file downloads:

* ``faults.cut_body_after(n_bytes, times=1)`` - the next `times` downloads send `n_bytes` of
  the body and then drop the connection (tests resume);
* ``faults.throttle(bytes_per_second)`` - slow every body down (``None`` to stop), endless
  ones included.

``faults.injected`` lists ``(path, kind)`` for every fault served; ``faults.clear()`` resets all.
"""

from __future__ import annotations

import random as _random
import threading
from collections.abc import Iterable

FAULT_KINDS = frozenset(
    {
        "ok",
        "503",
        "429",
        "429html",
        "500",
        "drop",
        "reset",
        "truncate",
        "badjson",
        "403",
        "404",
        "hold",
        "gzipbomb",
        "endless",
        "endless_eof",
    }
)
_PREFIXED = ("delay:", "length:", "redirect:")


def _check(kind: str) -> str:
    if kind in FAULT_KINDS:
        return kind
    if kind.startswith("delay:"):
        float(kind.split(":", 1)[1])
        return kind
    if kind.startswith("length:"):
        int(kind.split(":", 1)[1])
        return kind
    if kind.startswith("redirect:") and len(kind) > len("redirect:"):
        return kind
    raise ValueError(f"unknown fault kind {kind!r}; known: {sorted(FAULT_KINDS)} or {_PREFIXED}")


class FaultInjector:
    """Decides, per request, whether to misbehave. Thread-safe; every knob is deterministic."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.retry_after = "1"
        """Retry-After value sent with injected 503s."""
        self.injected: list[tuple[str, str]] = []
        self.gate = threading.Event()
        """Held requests wait for this (`hold`, `release`)."""
        self.held = 0
        """Requests waiting at the gate right now."""
        self.bomb_inflated_bytes = 4 << 30
        """What a ``gzipbomb`` inflates to."""
        self.endless_bytes = 1 << 30
        """Where an ``endless`` body gives up if the client never does."""
        self.streamed_bytes = 0
        """Body bytes of hostile answers written so far."""
        self.clear()

    def clear(self) -> None:
        """Back to a well-behaved server."""
        self.gate.set()
        with self._lock:
            self._schedule: list[str] = []
            self._schedule_pos = 0
            self._repeat = False
            self._every = 0
            self._every_kind = "503"
            self._every_count = 0
            self._rng: _random.Random | None = None
            self._rate = 0.0
            self._random_kinds: list[str] = []
            self.path: str | None = None
            """Only requests whose path starts with this are affected (None: all)."""
            self._cut_after: int | None = None
            self._cut_times = 0
            self.bytes_per_second: float | None = None
            self.injected = []
            self.streamed_bytes = 0

    def schedule(
        self, kinds: Iterable[str], *, path: str | None = None, repeat: bool = False
    ) -> None:
        """Serve `kinds` to the next matching requests, one each, in order."""
        checked = [_check(k) for k in kinds]
        with self._lock:
            self._schedule, self._schedule_pos, self._repeat = checked, 0, repeat
            if path is not None:
                self.path = path

    def fail_every(self, n: int, kind: str = "503", *, path: str | None = None) -> None:
        """Every `n`-th matching request gets `kind` (n=0 turns it off)."""
        kind = _check(kind)
        with self._lock:
            self._every, self._every_kind, self._every_count = n, kind, 0
            if path is not None:
                self.path = path

    def random(
        self,
        rate: float,
        kinds: Iterable[str] = ("503",),
        *,
        seed: int = 0,
        path: str | None = None,
    ) -> None:
        """A seeded fraction `rate` of matching requests gets one of `kinds`."""
        checked = [_check(k) for k in kinds]
        with self._lock:
            self._rng, self._rate, self._random_kinds = _random.Random(seed), rate, checked
            if path is not None:
                self.path = path

    def cut_body_after(self, n_bytes: int, *, times: int = 1) -> None:
        """Storage: the next `times` bodies stop after `n_bytes` and the connection drops."""
        with self._lock:
            self._cut_after, self._cut_times = n_bytes, times

    def hold(self, *, path: str | None = None) -> None:
        """Hold the next matching request until `release` (see ``"hold"``)."""
        self.gate.clear()
        self.schedule(["hold"], path=path)

    def release(self) -> None:
        """Let held requests (and any later ones) go on."""
        self.gate.set()

    def wait_at_gate(self) -> None:
        """Called by the server for a held request."""
        with self._lock:
            self.held += 1
        try:
            self.gate.wait(timeout=120)
        finally:
            with self._lock:
                self.held -= 1

    def throttle(self, bytes_per_second: float | None) -> None:
        """Storage: pace bodies at this rate (None: full speed)."""
        with self._lock:
            self.bytes_per_second = bytes_per_second

    @property
    def pending(self) -> int:
        """Scheduled entries not served yet."""
        with self._lock:
            return (
                max(0, len(self._schedule) - self._schedule_pos)
                if not self._repeat
                else len(self._schedule)
            )

    def decide(self, path: str) -> str:
        """The fate of one request: a fault kind, or ``"ok"``."""
        with self._lock:
            if self.path is not None and not path.startswith(self.path):
                return "ok"
            kind = "ok"
            if self._schedule and (self._repeat or self._schedule_pos < len(self._schedule)):
                kind = self._schedule[self._schedule_pos % len(self._schedule)]
                self._schedule_pos += 1
            elif self._every > 0:
                self._every_count += 1
                if self._every_count % self._every == 0:
                    kind = self._every_kind
            elif self._rng is not None and self._random_kinds:
                if self._rng.random() < self._rate:
                    kind = self._rng.choice(self._random_kinds)
            if kind != "ok":
                self.injected.append((path, kind))
            return kind

    def add_streamed(self, n_bytes: int) -> None:
        """Called by the server for each piece of a hostile body it wrote."""
        with self._lock:
            self.streamed_bytes += n_bytes

    def take_cut(self) -> int | None:
        """Storage: the byte budget for this body, or None for the whole body."""
        with self._lock:
            if self._cut_after is None or self._cut_times <= 0:
                return None
            self._cut_times -= 1
            self.injected.append(("<body>", f"cut:{self._cut_after}"))
            return self._cut_after
