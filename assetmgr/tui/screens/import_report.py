"""The report of a finished import: which files went in, which were skipped and why, the
duplicates, the sidecars that were not used, the links followed, and what to do about each.

Opened from the import's line in the jobs bar (Report) or the command palette. Every path and
reason is outside text: cleaned (`assetmgr.display.clean`) and shown as `Text`, never markup.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Button, Label, Static

from assetmgr.display import clean
from assetmgr.import_hints import DUPLICATE_HINT, STOP_HINTS, hint_for
from assetmgr.store.import_report import ImportReport


class ImportReportScreen(ModalScreen[None]):
    """One import's outcome, file by file."""

    BINDINGS = [Binding("escape,q", "dismiss", "Close", id="dialog.close")]
    AUTO_FOCUS = "#report-body"
    """Arrow keys and Page Up/Down scroll the report."""

    DEFAULT_CSS = """
    ImportReportScreen .import-report-dialog {
        width: 110;
        max-width: 95%;
        height: 90%;
    }
    ImportReportScreen #report-body {
        height: 1fr;
    }
    ImportReportScreen .report-section {
        text-style: bold;
        color: $accent;
        margin-top: 1;
    }
    ImportReportScreen .report-stop {
        color: $error;
    }
    """

    def __init__(self, report: ImportReport, title: str = "Import report") -> None:
        super().__init__(classes="dialog-screen")
        self.report = report
        self.report_title = title

    def _path(self, path: str) -> str:
        """`path` relative to the imported folder when it lies inside it."""
        folder = self.report.folder
        try:
            if folder and path != folder and os.path.commonpath([folder, path]) == folder:
                return os.path.relpath(path, folder)
        except ValueError:  # one absolute, one relative
            pass
        return path

    def _section(self, title: str, lines: Iterable[Text], *, counted: bool = True) -> ComposeResult:
        body = list(lines)
        if not body:
            return
        yield Label(f"{title} ({len(body)})" if counted else title, classes="report-section")
        yield Static(Text("\n").join(body), classes="report-lines")

    @staticmethod
    def _line(*parts: tuple[str, str] | str) -> Text:
        """A line of cleaned values; a (text, style) part is styled."""
        line = Text()
        for part in parts:
            if isinstance(part, tuple):
                line.append(clean(part[0]), style=part[1])
            else:
                line.append(clean(part))
        return line

    def compose(self) -> ComposeResult:
        r = self.report
        with Vertical(classes="dialog import-report-dialog"):
            yield Label(Text(clean(self.report_title)), classes="dialog-title")
            yield Static(Text(clean(r.summary())), id="report-summary")
            with VerticalScroll(id="report-body"):
                yield from self._compose_body()
            with Horizontal(classes="dialog-buttons"):
                yield Button("Close", variant="primary", id="close")

    def _compose_body(self) -> ComposeResult:
        r, line, rel = self.report, self._line, self._path
        if r.stopped is not None:
            yield Static(
                self._line(("stopped: ", "bold"), r.stopped.reason),
                classes="report-stop",
                id="report-stop",
            )
        if r.lookup_error:
            yield Static(
                line(
                    f"Civitai could not be asked ({r.lookup_error}); files were identified by "
                    "the catalog and checked sidecars only"
                ),
                classes="dim",
            )
        yield from self._section(
            "Skipped",
            (
                line(
                    (rel(s.path), "bold"),
                    f" (link to {s.target})" if s.target else "",
                    f": {s.reason}",
                )
                for s in r.skipped
            ),
        )
        yield from self._section(
            "Duplicates",
            (
                line((rel(d.path), "bold"), f": the same bytes as {rel(d.duplicate_of)}")
                for d in r.duplicates
            ),
        )
        yield from self._section("Not reached", (line(rel(path)) for path in r.not_reached))
        yield from self._section(
            "Ignored sidecars",
            (line((rel(i.path), "bold"), f": {i.reason}") for i in r.ignored_sidecars),
        )
        yield from self._section(
            "Imported",
            (
                line(
                    (rel(f.path), "bold"),
                    f": {f.model_type or '?'}, {f.base_model or '?'} ({f.source})",
                    f" · typed by its folder {f.folder_hint}/" if f.folder_hint else "",
                )
                for f in r.imported
            ),
        )
        yield from self._section(
            "Followed links",
            (
                line(
                    rel(link.path),
                    " → ",
                    link.target,
                    " (outside the folder)" if link.outside else "",
                )
                for link in r.links
            ),
        )
        yield from self._section("What to do", (line(h) for h in self._hints()), counted=False)

    def _hints(self) -> list[str]:
        r = self.report
        codes = [s.code for s in r.skipped] + [i.code for i in r.ignored_sidecars]
        hints = [h for h in (hint_for(c) for c in dict.fromkeys(codes)) if h]
        if r.duplicates:
            hints.append(DUPLICATE_HINT)
        if r.stopped is not None and r.stopped.code in STOP_HINTS:
            hints.insert(0, STOP_HINTS[r.stopped.code])
        return list(dict.fromkeys(hints))

    @on(Button.Pressed, "#close")
    def close(self) -> None:
        self.dismiss(None)


__all__ = ["ImportReportScreen"]
