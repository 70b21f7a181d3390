"""PID 1 of every sandbox container: starts the worker, forwards signals, reaps, exits with it.

Usage: ``python -I -S -B /opt/assetmgr/sandbox/worker/pid1.py -- WORKER_ARGV...``

It replaces docker's ``--init`` (tini), which runs as the job's uid and stays dumpable, so a
plugin could ptrace-stop it and keep the container, and the job, alive until the timeout after
the worker died. This init first marks itself non-dumpable (``PR_SET_DUMPABLE`` 0): the kernel
then refuses ptrace, ``/proc/1/mem`` and ``process_vm_readv``/``writev`` against it to every
process without CAP_SYS_PTRACE, which a job never has; SIGSTOP and the other default-action
signals sent from inside the container are dropped for a namespace's init. If the flag cannot
be set, nothing is started (exit 125).

It runs by path with ``-I -S``: the standard library only, no site-packages, no ``.pth`` files,
never any plugin code. Its job is tini's: fork and exec the worker, pass SIGTERM, SIGINT,
SIGHUP, SIGQUIT, SIGUSR1 and SIGUSR2 on to it, reap every child (orphans included), and exit
with the worker's status (``128 + N`` if signal N ended it); the rest of the container dies
with it.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from collections.abc import Sequence

PR_SET_DUMPABLE = 4
PR_SET_NAME = 15
PR_GET_DUMPABLE = 3
NAME = b"sandbox-init"
FORWARDED = (
    signal.SIGTERM,
    signal.SIGINT,
    signal.SIGHUP,
    signal.SIGQUIT,
    signal.SIGUSR1,
    signal.SIGUSR2,
)
#: Exit codes of the init itself (like ``env``/shells: cannot set up, cannot exec).
EXIT_SETUP = 125
EXIT_EXEC = 127


def _make_untraceable() -> bool:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_NAME, NAME, 0, 0, 0)
    if libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0:
        return False
    return int(libc.prctl(PR_GET_DUMPABLE, 0, 0, 0, 0)) == 0


def _exec_worker(argv: Sequence[str]) -> None:
    """In the forked child: default signal handling back, then become the worker."""
    for sig in (*FORWARDED, signal.SIGPIPE, signal.SIGXFSZ):
        signal.signal(sig, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_SETMASK, set())
    try:
        os.execv(argv[0], list(argv))  # noqa: S606  # the worker command fixed in the image
    except OSError as exc:
        os.write(2, f"sandbox-init: cannot run {argv[0]}: {exc.strerror}\n".encode())
    os._exit(EXIT_EXEC)


def main(argv: Sequence[str]) -> int:
    if len(argv) < 2 or argv[0] != "--":
        sys.stderr.write("usage: pid1.py -- WORKER_ARGV...\n")
        return EXIT_SETUP
    if not _make_untraceable():
        sys.stderr.write("sandbox-init: cannot mark itself non-dumpable; not starting the job\n")
        return EXIT_SETUP
    worker = 0

    def forward(signum: int, _frame: object) -> None:
        if worker:
            try:
                os.kill(worker, signum)
            except ProcessLookupError:
                pass

    # blocked across the fork, so a signal arriving then is forwarded, not lost
    signal.pthread_sigmask(signal.SIG_BLOCK, set(FORWARDED))
    for sig in FORWARDED:
        signal.signal(sig, forward)
    worker = os.fork()
    if worker == 0:
        _exec_worker(argv[1:])
    signal.pthread_sigmask(signal.SIG_UNBLOCK, set(FORWARDED))
    while True:
        pid, status = os.wait()  # reaps orphans too; retried after a forwarded signal
        if pid == worker:
            code = os.waitstatus_to_exitcode(status)
            return 128 - code if code < 0 else code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
