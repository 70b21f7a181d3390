"""The log file: ``$ASSETMGR_HOME/logs/assetmgr.log``, which the CLI and the TUI both write.

Rotated at `MAX_LOG_BYTES` with `LOG_BACKUPS` old files, created 0600 in a 0700 folder without
following a link (like the store's files), and opened only when the first record arrives.
Records are cleaned (`assetmgr.display.CleanLogFormatter`) and secrets are masked: URLs go
through the one redaction (`catalog.redact.redact_text`: every query value, URL passwords,
bearer tokens, ``api_key=`` values) and the secrets this process holds are replaced as well.

The CLI logs to stderr too (`setup_logging(terminal=True)`); the TUI must never write records
onto the screen it draws, so `leave_terminal` takes the stderr handler away before it starts.
"""

from __future__ import annotations

import logging
import os
import stat
import sys
from io import TextIOWrapper
from logging.handlers import RotatingFileHandler
from pathlib import Path

from assetmgr import paths
from assetmgr.display import CleanLogFormatter
from catalog.redact import redact_text

LOG_FILE_NAME = "assetmgr.log"
MAX_LOG_BYTES = 2 * 1024 * 1024
LOG_BACKUPS = 3
"""At most ``(LOG_BACKUPS + 1) * MAX_LOG_BYTES`` of logs on disk."""
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(process)d]: %(message)s"
TERMINAL_FORMAT = "%(levelname)s %(name)s: %(message)s"

MIN_SECRET_CHARS = 6
_known_secrets: set[str] = set()
FILE_ONLY = {"assetmgr_file_only": True}
"""``extra=`` for a record meant for the log file only (a traceback the terminal must not get)."""
_MARK = "_assetmgr_handler"
"""Attribute that tags the handlers this module installed (so a second setup replaces them)."""


def log_file() -> Path:
    """Where the log is written: ``logs/assetmgr.log`` under the data folder."""
    return paths.logs_dir() / LOG_FILE_NAME


def register_secret(value: str | None) -> None:
    """A credential this process holds (the API key, the database password): masked wherever
    a record quotes it, labelled or not."""
    if value and len(value) >= MIN_SECRET_CHARS:
        _known_secrets.add(value)


def redact_secrets(text: str) -> str:
    """`text` with credentials masked: the registered secrets, every query value, URL
    passwords, bearer tokens, ``api_key=``/``token:`` values (`catalog.redact`)."""
    return redact_text(text, _known_secrets)


class RedactingFormatter(CleanLogFormatter):
    """A cleaned record (one line, tracebacks with their line breaks) with secrets masked."""

    def format(self, record: logging.LogRecord) -> str:
        return redact_secrets(super().format(record))


class PrivateLogHandler(RotatingFileHandler):
    """A rotating log file created 0600, never through a link, in a 0700 folder.

    A failure to open or write (a planted link, a full disk) turns the handler off quietly:
    logging never breaks a command or draws over the TUI.
    """

    def __init__(self, path: Path) -> None:
        self.failed: str | None = None
        """Why the handler stopped writing, once it has."""
        super().__init__(
            path, maxBytes=MAX_LOG_BYTES, backupCount=LOG_BACKUPS, encoding="utf-8", delay=True
        )

    def _open(self) -> TextIOWrapper:
        from assetmgr.store.blobs import PRIVATE_DIR_MODE, open_private

        path = Path(self.baseFilename)
        path.parent.mkdir(mode=PRIVATE_DIR_MODE, parents=True, exist_ok=True)
        if path.parent.is_symlink():
            raise OSError(f"{path.parent} is a symbolic link")
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NONBLOCK
        fd = open_private(path, flags)
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise OSError(f"{path} is not a regular file")
            if stat.S_IMODE(st.st_mode) & 0o077:
                os.fchmod(fd, stat.S_IMODE(st.st_mode) & 0o600)
            return open(fd, "a", encoding="utf-8", errors="backslashreplace")  # noqa: SIM115
        except BaseException:
            os.close(fd)
            raise

    def emit(self, record: logging.LogRecord) -> None:
        if self.failed is None:
            super().emit(record)

    def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802 (logging's name)
        error = sys.exc_info()[1]
        self.failed = f"{type(error).__name__}: {error}" if error else "unknown error"


def _installed(root: logging.Logger) -> list[logging.Handler]:
    return [h for h in root.handlers if getattr(h, _MARK, None)]


def _writes_this_log(root: logging.Logger) -> bool:
    """Whether our file handler is installed and writes the current data folder's log (an
    earlier setup may have written another folder's, in a process that changed its home)."""
    here = os.path.abspath(log_file())
    return any(
        getattr(h, _MARK, None) == "file" and getattr(h, "baseFilename", None) == here
        for h in root.handlers
    )


def setup_logging(*, verbose: int = 0, terminal: bool = True) -> None:
    """Log to the file (INFO, DEBUG with ``-vv``) and, with `terminal`, to stderr (WARNING,
    INFO with ``-v``, DEBUG with ``-vv``); replaces what an earlier call installed."""
    root = logging.getLogger()
    for handler in _installed(root):
        root.removeHandler(handler)
        handler.close()
    file_level = logging.DEBUG if verbose >= 2 else logging.INFO
    file_handler = PrivateLogHandler(log_file())
    file_handler.setLevel(file_level)
    file_handler.setFormatter(RedactingFormatter(LOG_FORMAT))
    setattr(file_handler, _MARK, "file")
    root.addHandler(file_handler)
    level = file_level
    if terminal:
        term_level = {0: logging.WARNING, 1: logging.INFO}.get(verbose, logging.DEBUG)
        stream = logging.StreamHandler(sys.stderr)
        stream.setLevel(term_level)
        stream.setFormatter(RedactingFormatter(TERMINAL_FORMAT))
        stream.addFilter(lambda record: not getattr(record, "assetmgr_file_only", False))
        setattr(stream, _MARK, "terminal")
        root.addHandler(stream)
        level = min(level, term_level)
    root.setLevel(level)
    # httpx logs full request URLs at INFO; ours are redacted, its are not: keep it quiet.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("httpcore").setLevel(logging.WARNING)


def leave_terminal() -> None:
    """Before a full-screen UI starts: no handler may write to the terminal any more.

    Handlers on the root logger that write to stderr or stdout are removed (ours and any a
    library added), the file handler stays (installed now if it was not), and Python warnings
    go to the log instead of stderr.
    """
    root = logging.getLogger()
    if not _writes_this_log(root):
        setup_logging(terminal=False)
    for handler in list(root.handlers):
        if _writes_to_terminal(handler):
            root.removeHandler(handler)
    logging.captureWarnings(True)


def _writes_to_terminal(handler: logging.Handler) -> bool:
    if not isinstance(handler, logging.StreamHandler) or isinstance(handler, logging.FileHandler):
        return False
    stream = handler.stream
    if stream in (sys.stderr, sys.stdout, sys.__stderr__, sys.__stdout__):
        return True
    try:
        return bool(stream.isatty())
    except (AttributeError, OSError, ValueError):
        return False


def record_unexpected(exc: BaseException, logger: str = "assetmgr") -> Path | None:
    """Write an unexpected error with its traceback to the log file (never to the terminal);
    returns the log's path, or None when it could not be written."""
    root = logging.getLogger()
    if not _writes_this_log(root):
        setup_logging(terminal=False)
    logging.getLogger(logger).error(
        "unexpected %s", type(exc).__name__, exc_info=exc, extra=FILE_ONLY
    )
    path = log_file()
    return path if file_handler_problem() is None and path.is_file() else None


def file_handler_problem() -> str | None:
    """Why the log file could not be written in this process, if it could not."""
    for handler in _installed(logging.getLogger()):
        if isinstance(handler, PrivateLogHandler) and handler.failed:
            return handler.failed
    return None


__all__ = [
    "LOG_BACKUPS",
    "LOG_FILE_NAME",
    "MAX_LOG_BYTES",
    "FILE_ONLY",
    "PrivateLogHandler",
    "RedactingFormatter",
    "file_handler_problem",
    "leave_terminal",
    "log_file",
    "record_unexpected",
    "redact_secrets",
    "register_secret",
    "setup_logging",
]
