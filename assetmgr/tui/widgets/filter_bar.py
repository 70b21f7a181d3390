"""The filter bar of the browser: search, type, base model, tags, local only, NSFW, sort.

Three groups (search; type, base model and tags; local, NSFW and sort) on one line; on a
narrow terminal the catalog screen's CSS moves the middle group to a second line that the
"Filters" button (or its key) shows and hides.
"""

from __future__ import annotations

from dataclasses import dataclass

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Horizontal
from textual.message import Message
from textual.suggester import SuggestFromList
from textual.widgets import Button, Checkbox, Input, Select

from assetmgr.app.queries import SORT_KEYS, BrowseQuery, Facets, SortKey
from assetmgr.display import clean

SORT_LABELS: dict[SortKey, str] = {
    "relevance": "Relevance",
    "downloads": "Downloads",
    "name": "Name",
    "newest": "Newest",
    "updated": "Updated",
    "type": "Type",
    "creator": "Creator",
}
# The direction a sort starts in: names read A→Z, counts and dates biggest/newest first.
ASCENDING_FIRST = frozenset({"name", "type", "creator"})


class FilterBar(Horizontal):
    """Posts `Changed` for every edit except search typing, which posts `SearchTyped`."""

    @dataclass
    class Changed(Message):
        bar: FilterBar

        @property
        def control(self) -> FilterBar:
            return self.bar

    @dataclass
    class MoreFiltersPressed(Message):
        """The "Filters" button of the narrow layout: show or hide the second line."""

        bar: FilterBar

        @property
        def control(self) -> FilterBar:
            return self.bar

    @dataclass
    class SearchTyped(Message):
        bar: FilterBar
        text: str

        @property
        def control(self) -> FilterBar:
            return self.bar

    def compose(self) -> ComposeResult:
        with Horizontal(id="filters-main"):
            yield Input(
                placeholder="/ search names, tags, trigger words…", id="search", compact=True
            )
        with Horizontal(id="filters-more"):
            yield Select[str]([], prompt="Any type", id="type-filter", compact=True)
            yield Select[str]([], prompt="Any base", id="base-filter", compact=True)
            yield Input(placeholder="tags, comma-separated", id="tag-filter", compact=True)
        with Horizontal(id="filters-flags"):
            yield Checkbox("Local", id="local-filter", compact=True)
            yield Checkbox("NSFW", id="nsfw-filter", compact=True)
            yield Select[str](
                [(label, key) for key, label in SORT_LABELS.items()],
                value="downloads",
                allow_blank=False,
                id="sort",
                compact=True,
            )
            yield Button(
                "Filters", id="more-filters", compact=True, tooltip="Type, base model, tags (f)"
            )

    def set_facets(self, facets: Facets) -> None:
        for select_id, values in (
            ("#type-filter", facets.types),
            ("#base-filter", facets.base_models),
        ):
            select = self.query_one(select_id, Select)
            current = select.value
            with self.prevent(Select.Changed):
                select.set_options(
                    [(Text(clean(f"{name} ({count:,})")), name) for name, count in values]
                )
                if current is not Select.NULL and any(v == current for v, _ in values):
                    select.value = current
        # Suggestions are drawn in the field and become its value: cleaned like any label.
        tags = [clean(name) for name, _ in facets.tags]
        self.query_one("#tag-filter", Input).suggester = SuggestFromList(tags, case_sensitive=False)

    def build_query(self, previous: BrowseQuery) -> BrowseQuery:
        type_value = self.query_one("#type-filter", Select).value
        base_value = self.query_one("#base-filter", Select).value
        tags_text = self.query_one("#tag-filter", Input).value
        sort_value = self.query_one("#sort", Select).value
        sort: SortKey = sort_value if sort_value in SORT_KEYS else "downloads"
        descending = previous.descending if sort == previous.sort else sort not in ASCENDING_FIRST
        return BrowseQuery(
            search=self.query_one("#search", Input).value,
            types=(str(type_value),) if type_value is not Select.NULL else (),
            base_models=(str(base_value),) if base_value is not Select.NULL else (),
            tags=tuple(t.strip() for t in tags_text.split(",") if t.strip()),
            local_only=self.query_one("#local-filter", Checkbox).value,
            nsfw=self.query_one("#nsfw-filter", Checkbox).value,
            sort=sort,
            descending=descending,
        )

    def set_sort(self, sort: SortKey) -> None:
        with self.prevent(Select.Changed):
            self.query_one("#sort", Select).value = sort

    def toggle(self, checkbox_id: str) -> None:
        box = self.query_one(checkbox_id, Checkbox)
        box.value = not box.value

    def on_input_changed(self, event: Input.Changed) -> None:
        event.stop()
        if event.input.id == "search":
            self.post_message(self.SearchTyped(self, event.value))

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        self.post_message(self.Changed(self))

    def on_select_changed(self, event: Select.Changed) -> None:
        event.stop()
        self.post_message(self.Changed(self))

    def on_checkbox_changed(self, event: Checkbox.Changed) -> None:
        event.stop()
        self.post_message(self.Changed(self))

    def on_button_pressed(self, event: Button.Pressed) -> None:
        event.stop()
        if event.button.id == "more-filters":
            self.post_message(self.MoreFiltersPressed(self))

    def on_descendant_blur(self, event: object) -> None:
        # A tags edit applies when the user leaves the field as well as on Enter.
        tags = self.query_one("#tag-filter", Input)
        if getattr(event, "widget", None) is tags and tags.value != getattr(self, "_last_tags", ""):
            self._last_tags = tags.value
            self.post_message(self.Changed(self))
