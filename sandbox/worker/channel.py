"""The worker's protocol channel: a private duplicate of the original stdout.

`Channel.take_stdout` must run before any job or plugin code: it keeps the container's stdout
on a new, non-inheritable descriptor and points fd 1 at stderr, so ``print()``, C extensions and
subprocesses write to the logs, never to the protocol stream the host parses.
"""

from __future__ import annotations

import base64
import os
import stat
import sys
import threading
from pathlib import Path

from pydantic import BaseModel

from sandbox.protocol import OUTPUT_CHUNK_BYTES, OutputMessage, encode_message


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

    def send_outputs(self, out_dir: Path, job_id: str, nonce: str) -> None:
        """Send every entry of `out_dir` in-band, as `OutputMessage` pieces (warm workers).

        Anything but a regular file with one link goes out as a bare entry without data (the
        host refuses the job for it). A file that shrinks while being read ends short, which
        the host also refuses.
        """
        for entry in sorted(os.scandir(out_dir), key=lambda e: e.name):
            name = "out/" + os.fsencode(entry.name).decode("utf-8", "replace")
            st = entry.stat(follow_symlinks=False)
            kind = (
                "link"
                if stat.S_ISLNK(st.st_mode) or (stat.S_ISREG(st.st_mode) and st.st_nlink > 1)
                else "dir"
                if stat.S_ISDIR(st.st_mode)
                else "file"
                if stat.S_ISREG(st.st_mode)
                else "other"
            )
            if kind != "file":
                self.send(OutputMessage(job_id=job_id, nonce=nonce, name=name, entry=kind))
                continue
            fd = os.open(entry.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
            with os.fdopen(fd, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                offset = 0
                while True:
                    data = f.read(min(OUTPUT_CHUNK_BYTES, size - offset))
                    self.send(
                        OutputMessage(
                            job_id=job_id,
                            nonce=nonce,
                            name=name,
                            size=size,
                            offset=offset,
                            data=base64.b64encode(data).decode("ascii"),
                        )
                    )
                    offset += len(data)
                    if not data or offset >= size:
                        break

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
