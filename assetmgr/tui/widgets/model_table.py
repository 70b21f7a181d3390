"""The catalog table: rows arrive a page at a time and more are asked for near the end."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from rich.text import Text
from textual import events
from textual.binding import Binding
from textual.message import Message
from textual.widgets import DataTable

from assetmgr.app.queries import ModelRow, SortKey
from assetmgr.display import clean


@dataclass(frozen=True)
class Column:
    key: str
    header: str
    sort: SortKey | None
    """The sort key its header selects, if any."""
    width: int
    keep: int
    """Lower is kept longer when the table is narrow; 0 (name, type, local) always shows."""


# Fixed widths keep a page from resizing the columns as rows arrive; only Name stretches.
COLUMNS: tuple[Column, ...] = (
    Column("type", "Type", "type", 10, 0),
    Column("base", "Base model", None, 11, 1),
    Column("name", "Name", "name", 24, 0),
    Column("creator", "Creator", "creator", 13, 3),
    Column("downloads", "Downloads", "downloads", 9, 2),
    Column("local", "Local", None, 11, 0),
)
NAME_MIN_WIDTH = 16
NAME_MAX_WIDTH = 48
_CELL_PADDING = 1
_SCROLLBAR = 2


def fit_columns(width: int) -> list[tuple[Column, int]]:
    """The columns that fit a table `width` cells wide, in display order, with their widths.

    Name, Type and Local (which carries the update badge) always show; Base model, Downloads
    and Creator follow as room allows; Name takes what is left, between its min and max.
    """
    room = width - _SCROLLBAR
    shown = {c.key for c in COLUMNS if c.keep == 0}

    def used(keys: set[str]) -> int:
        return sum(
            (NAME_MIN_WIDTH if c.key == "name" else c.width) + 2 * _CELL_PADDING
            for c in COLUMNS
            if c.key in keys
        )

    for column in sorted((c for c in COLUMNS if c.keep), key=lambda c: c.keep):
        if used(shown | {column.key}) <= room:
            shown.add(column.key)
    name_width = max(NAME_MIN_WIDTH, min(NAME_MAX_WIDTH, NAME_MIN_WIDTH + room - used(shown)))
    return [(c, name_width if c.key == "name" else c.width) for c in COLUMNS if c.key in shown]


# Civitai's type names as users know them, short enough for the column.
_TYPE_LABELS = {
    "TextualInversion": "Embedding",
    "Checkpoint": "Checkpoint",
    "Controlnet": "ControlNet",
}
# How close to the last loaded row the cursor or viewport may get before the next page loads.
PREFETCH_ROWS = 40
_LOCAL_MARKS = {
    "verified": ("✓ local", "green"),
    "downloading": ("↓ partial", "yellow"),
    "quarantined": ("✗ quarantined", "red"),
    "missing": ("? missing", "red"),
}


def local_cell(state: str | None, has_update: bool) -> Text:
    label, style = _LOCAL_MARKS.get(state or "", ("", ""))
    text = Text(label, style=style)
    if has_update:
        text.append(" ↑ update" if not label else " ↑", style="bold cyan")
    return text


def downloads_cell(value: int | None) -> Text:
    if value is None:
        return Text("")
    if value >= 1_000_000:
        shown = f"{value / 1_000_000:.1f}M"
    elif value >= 10_000:
        shown = f"{value / 1_000:.0f}k"
    else:
        shown = f"{value:,}"
    return Text(shown, justify="right")


class ModelTable(DataTable[Text]):
    """Model rows keyed by model id; posts `MoreWanted` as the cursor nears the loaded end."""

    # In a list of rows, Home/End mean first/last row (DataTable's own are for columns).
    BINDINGS = [
        Binding("home", "scroll_top", "First row", show=False, id="catalog.table.first"),
        Binding("end", "scroll_bottom", "Last row", show=False, id="catalog.table.last"),
    ]

    @dataclass
    class MoreWanted(Message):
        table: ModelTable
        loaded: int

        @property
        def control(self) -> ModelTable:
            return self.table

    def __init__(self, **kwargs: object) -> None:
        super().__init__(cursor_type="row", zebra_stripes=True, **kwargs)  # type: ignore[arg-type]
        self.rows_by_id: dict[int, ModelRow] = {}
        self.update_ids: set[int] = set()
        self._asked_at = -1
        self._appending = False
        self.column_layout: list[tuple[Column, int]] = []
        """The columns shown now, with their widths (`fit_columns` of the table's width)."""

    def on_mount(self) -> None:
        self._fit(self.size.width)

    def on_resize(self, event: events.Resize) -> None:
        self._fit(event.size.width)

    def _fit(self, width: int) -> None:
        """Show the columns that fit; rows are rebuilt from `rows_by_id` when they change."""
        layout = fit_columns(width)
        if layout == self.column_layout:
            return
        self.column_layout = layout
        keep = self.selected_model_id
        rows = list(self.rows_by_id.values())
        # The rebuild moves the cursor through row 0; only the final position is news.
        with self.prevent(DataTable.RowHighlighted):
            self.clear(columns=True)
            for column, column_width in layout:
                self.add_column(column.header, key=column.key, width=column_width)
            self.rows_by_id.clear()
            self._appending = True
            try:
                self._add(rows)
            finally:
                self._appending = False
            if keep is not None and keep in self.rows_by_id:
                self.move_cursor(row=self.get_row_index(str(keep)), animate=False)

    @property
    def shown_columns(self) -> list[str]:
        return [column.key for column, _ in self.column_layout]

    def reset(self) -> None:
        self.clear()
        self.rows_by_id.clear()
        self._asked_at = -1

    def append_rows(self, rows: Iterable[ModelRow]) -> None:
        self._appending = True  # add_row moves the cursor; ask for more once, at the end
        try:
            self._add(rows)
        finally:
            self._appending = False
        self.call_after_refresh(self._check_near_end)

    def _add(self, rows: Iterable[ModelRow]) -> None:
        for row in rows:
            if row.id in self.rows_by_id:
                continue  # a sync between two pages can shift OFFSET by a row
            self.rows_by_id[row.id] = row
            name = Text(clean(row.name))
            if row.nsfw:
                name.append(" nsfw", style="dim red")
            # Text, never str: DataTable reads str cells as markup, and Civitai names often
            # contain brackets ("[Pony] …"). Cleaned: names are outside text.
            cells = {
                "type": Text(clean(_TYPE_LABELS.get(row.type, row.type))),
                "base": Text(clean(row.base_model or "")),
                "name": name,
                "creator": Text(clean(row.creator or "")),
                "downloads": downloads_cell(row.downloads),
                "local": local_cell(row.local_state, row.id in self.update_ids),
            }
            self.add_row(*(cells[c.key] for c, _ in self.column_layout), key=str(row.id))

    def mark_updates(self, model_ids: set[int]) -> None:
        changed = (self.update_ids | model_ids) - (self.update_ids & model_ids)
        self.update_ids = set(model_ids)
        for model_id in changed:
            row = self.rows_by_id.get(model_id)
            if row is not None:
                self.update_cell(
                    str(model_id),
                    "local",
                    local_cell(row.local_state, model_id in model_ids),
                )

    @property
    def selected_model_id(self) -> int | None:
        if not self.row_count:
            return None
        key = self.coordinate_to_cell_key(self.cursor_coordinate).row_key.value
        return int(key) if key is not None else None

    def _check_near_end(self) -> None:
        loaded = self.row_count
        if self._appending or not loaded or self._asked_at == loaded:
            return
        bottom_visible = int(self.scroll_y) + self.scrollable_content_region.height
        if max(self.cursor_row, bottom_visible) >= loaded - PREFETCH_ROWS:
            self._asked_at = loaded
            self.post_message(self.MoreWanted(self, loaded))

    def watch_cursor_coordinate(self, old: object, new: object) -> None:
        super().watch_cursor_coordinate(old, new)  # type: ignore[arg-type]
        self._check_near_end()

    def watch_scroll_y(self, old_value: float, new_value: float) -> None:
        super().watch_scroll_y(old_value, new_value)
        self._check_near_end()
