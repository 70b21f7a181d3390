"""The worker's protocol channel: a private duplicate of the original stdout.

`Channel.take_stdout` must run before any job or plugin code: it keeps the container's stdout
on a new, non-inheritable descriptor and points fd 1 at stderr, so ``print()``, C extensions and
subprocesses write to the logs, never to the protocol stream the host parses.
"""

from __future__ import annotations

import os
import sys
import threading

from pydantic import BaseModel

from sandbox.protocol import encode_message


class Channel:
    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._lock = threading.Lock()

    @classmethod
    def take_stdout(cls) -> Channel:
        sys.stdout.flush()
        fd = os.dup(1)  # os.dup makes it non-inheritable: children don't get it
        os.dup2(2, 1)
        return cls(fd)

    @property
    def fd(self) -> int:
        return self._fd

    def send(self, message: BaseModel) -> None:
        self.write_raw(encode_message(message))

    def write_raw(self, data: bytes) -> None:
        with self._lock:
            view = memoryview(data)
            while view:
                written = os.write(self._fd, view)
                view = view[written:]


class CollectingChannel(Channel):
    """In-process stand-in that keeps the messages (tests, the in-process bench)."""

    def __init__(self) -> None:
        super().__init__(-1)
        self.messages: list[BaseModel] = []
        self.raw: list[bytes] = []

    def send(self, message: BaseModel) -> None:
        self.messages.append(message)

    def write_raw(self, data: bytes) -> None:
        self.raw.append(data)
