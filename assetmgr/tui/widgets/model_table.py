"""The catalog table: rows arrive a page at a time and more are asked for near the end."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from rich.text import Text
from textual.binding import Binding
from textual.message import Message
from textual.widgets import DataTable

from assetmgr.display import clean
from assetmgr.tui.queries import ModelRow, SortKey

# (column key, header, sort key the header selects or None, width): fixed widths keep a page
# from resizing the columns as rows arrive, and the table inside its pane.
COLUMNS: tuple[tuple[str, str, SortKey | None, int], ...] = (
    ("type", "Type", "type", 10),
    ("base", "Base model", None, 11),
    ("name", "Name", "name", 24),
    ("creator", "Creator", "creator", 13),
    ("downloads", "Downloads", "downloads", 9),
    ("local", "Local", None, 9),
)
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

    def on_mount(self) -> None:
        for key, header, _, width in COLUMNS:
            self.add_column(header, key=key, width=width)

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
            self.add_row(
                Text(clean(_TYPE_LABELS.get(row.type, row.type))),
                Text(clean(row.base_model or "")),
                name,
                Text(clean(row.creator or "")),
                downloads_cell(row.downloads),
                local_cell(row.local_state, row.id in self.update_ids),
                key=str(row.id),
            )

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
