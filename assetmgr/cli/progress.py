"""Rich adapters for the services' progress callbacks (stderr, so stdout stays pipeable).

Labels that name outside things (file names, build stages) go through `progress_label` and
are drawn by a `label_column`, which reads no markup in them.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)

from assetmgr.display import clean

if TYPE_CHECKING:
    from assetmgr.app.sync import SyncProgress

stderr_console = Console(stderr=True)
LABEL_CHARS = 40


def progress_label(text: str, limit: int = LABEL_CHARS) -> str:
    """A progress bar's label: outside text cleaned to one line, cut to `limit` characters."""
    return clean(text)[:limit]


def label_column(template: str) -> TextColumn:
    """A column that shows a task field (``{task.description}``) as plain text, not markup."""
    return TextColumn(template, markup=False)


def rewrite_status(text: str) -> None:
    """Overwrite the current stderr line with `text` (cleaned): a progress line without Rich."""
    sys.stderr.write(f"\r{clean(text)}   ")
    sys.stderr.flush()


@contextmanager
def sync_progress(enabled: bool = True) -> Iterator[Callable[[SyncProgress], None] | None]:
    """Yield a callback for `run_sync` that drives a Rich progress bar."""
    if not enabled or not sys.stderr.isatty() and not _forced():
        yield None
        return
    with Progress(
        SpinnerColumn(),
        TextColumn("[bold]sync[/]"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("models · {task.fields[versions]} versions · {task.fields[written]} written"),
        TimeElapsedColumn(),
        console=stderr_console,
        transient=False,
    ) as bar:
        task = bar.add_task("sync", total=None, versions=0, written=0)

        def update(p: SyncProgress) -> None:
            bar.update(
                task,
                completed=p.models,
                total=p.total_models,
                versions=p.versions,
                written=p.models_written,
            )

        yield update


def forced_progress() -> bool:
    """Whether ASSETMGR_FORCE_PROGRESS asks for progress bars on a non-terminal stderr."""
    return _forced()


def _forced() -> bool:
    from assetmgr import environment

    return environment.flag("ASSETMGR_FORCE_PROGRESS")
