"""Rich adapters for the services' progress callbacks (stderr, so stdout stays pipeable)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
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

if TYPE_CHECKING:
    from catalog.sync import SyncProgress

stderr_console = Console(stderr=True)


@contextmanager
def sync_progress(enabled: bool = True) -> Iterator[object]:
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


def _forced() -> bool:
    import os

    return bool(os.environ.get("ASSETMGR_FORCE_PROGRESS"))
