"""The catalog browser: filter bar, paged model table, detail pane, jobs bar.

Thin: it keeps the view state (the current query and its generation number, what is loaded,
which version is shown) and asks the App's workers for data; the App's handlers call the
``show_*`` methods when results arrive.

The layout follows the terminal (`layout_mode`): the detail pane beside the table on wide
terminals, under it on medium ones, and on small ones (80x24) hidden until asked for, when it
takes the table's place. Below `FULL_FILTERS_MIN_WIDTH` the filter bar keeps one line (search,
local, NSFW, sort) and shows the type, base-model and tag filters on a second line on demand.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Literal

from PIL.Image import Image as PILImage
from rich.text import Text
from textual import events, on
from textual.app import ComposeResult
from textual.containers import Horizontal
from textual.geometry import Size
from textual.screen import Screen
from textual.timer import Timer
from textual.widgets import DataTable, Footer, Header, Input, Static

from assetmgr.app.queries import SORT_KEYS, BrowseQuery, ModelDetail, VersionDetail
from assetmgr.display import clean
from assetmgr.tui import gallery
from assetmgr.tui.actions import action, bindings_for
from assetmgr.tui.widgets.detail import DetailPane
from assetmgr.tui.widgets.filter_bar import ASCENDING_FIRST, FilterBar
from assetmgr.tui.widgets.jobs import JobsBar
from assetmgr.tui.widgets.model_table import COLUMNS, ModelTable
from assetmgr.tui.widgets.preview import PreviewPane

if TYPE_CHECKING:
    from assetmgr.app.previews import CatalogImage
    from assetmgr.tui.app import AssetMgrApp
    from assetmgr.tui.messages import ModelsPageLoaded

SEARCH_DEBOUNCE_S = 0.15
DETAIL_DEBOUNCE_S = 0.08
SIDE_BY_SIDE_MIN_WIDTH = 140
"""From this width the detail pane sits beside the table (the table keeps ~96 columns)."""
STACKED_MIN_WIDTH = 100
STACKED_MIN_HEIGHT = 28
"""From 100x28 the detail pane sits under the table; below, it replaces it when opened."""
FULL_FILTERS_MIN_WIDTH = 140
NO_MATCH = "No model matches. Change the filters, or press {key} to sync from Civitai."

IMAGE_KEYS = ", and ."
"""How the caption names the image-stepping keys (`catalog.prev_image`, `catalog.next_image`)."""

LayoutMode = Literal["side", "stacked", "single"]


def layout_mode(size: Size) -> LayoutMode:
    """Where the detail pane goes on a terminal of `size`."""
    if size.width >= SIDE_BY_SIDE_MIN_WIDTH:
        return "side"
    if size.width >= STACKED_MIN_WIDTH and size.height >= STACKED_MIN_HEIGHT:
        return "stacked"
    return "single"


def demo_banner(unreachable: str | None) -> Text:
    """The first-run line over the browser while the catalog is the built-in demo."""
    key = action("catalog.sync").key
    text = Text.assemble(("Demo catalog", "bold"))
    if unreachable is None:
        text.append(f" (offline sample models) · press {key} to sync from Civitai")
    else:
        text.append(f" · press {key} to retry the sync · Civitai was unreachable: ")
        text.append(clean(unreachable))
    return text


class CatalogScreen(Screen[None]):
    BINDINGS = bindings_for("catalog")

    def __init__(self) -> None:
        super().__init__(id="catalog")
        self.query_state = BrowseQuery()
        self.generation = 0
        self.loaded = 0
        self.total: int | None = None
        self.exhausted = False
        self.page_loading = False
        self.first_rows_at: float | None = None
        """When the first rows were shown (monotonic seconds); the bench reads it."""
        self.first_page_at: float | None = None
        """When the first page (possibly empty) was shown."""
        self._first_paint_scheduled = False
        self.selected_model_id: int | None = None
        self.keep_selection = False
        self.revealed: set[int] = set()
        self.images: dict[int, list[CatalogImage]] = {}
        """The selected model's pictures by version (`PreviewService.images`)."""
        self.meta_asked: set[int] = set()
        self._search_timer: Timer | None = None
        self._detail_timer: Timer | None = None
        self.mode: LayoutMode = "side"
        self.detail_toggled = False
        """The user flipped the detail pane: opened it (single) or hid it (side, stacked)."""
        self.filters_open = False
        """The second filter line is shown (only below `FULL_FILTERS_MIN_WIDTH`)."""
        self.is_demo = False
        """The catalog holds only the built-in demo models (the banner says so)."""

    @property
    def mgr(self) -> AssetMgrApp:
        return self.app  # type: ignore[return-value]

    def compose(self) -> ComposeResult:
        yield Header(show_clock=False)
        yield Static("", id="banner")
        yield FilterBar(id="filters")
        with Horizontal(id="browser"):
            yield ModelTable(id="models")
            yield DetailPane(id="detail")
        yield Static("", id="status")
        yield JobsBar(id="jobs")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one(JobsBar).display = False
        self.query_one("#banner").display = False
        self.query_one(ModelTable).focus()
        self._apply_layout(self.app.size)
        self.refresh_listing()

    # --- layout ----------------------------------------------------------------------------

    def on_resize(self, event: events.Resize) -> None:
        self._apply_layout(event.size)

    def _apply_layout(self, size: Size) -> None:
        mode = layout_mode(size)
        if mode != self.mode:
            self.mode = mode
            self.detail_toggled = False
        compact = size.width < FULL_FILTERS_MIN_WIDTH
        for name in ("side", "stacked", "single"):
            self.set_class(name == mode, f"-layout-{name}")
        self.set_class(self.detail_toggled, "-detail-toggled")
        self.set_class(compact, "-compact-filters")
        self.set_class(compact and self.filters_open, "-filters-open")

    @property
    def detail_visible(self) -> bool:
        return self.detail_toggled if self.mode == "single" else not self.detail_toggled

    @property
    def table_visible(self) -> bool:
        return not (self.mode == "single" and self.detail_toggled)

    def action_toggle_detail(self) -> None:
        self.detail_toggled = not self.detail_toggled
        self._apply_layout(self.size)
        if self.detail_visible and self.mode == "single":
            self.query_one(DetailPane).focus()
        elif not self.detail_visible and not self.query_one(ModelTable).has_focus:
            self.query_one(ModelTable).focus()

    @on(DataTable.RowSelected, "#models")
    def row_selected(self) -> None:
        if self.mode == "single" and not self.detail_toggled:
            self.action_toggle_detail()

    @on(FilterBar.MoreFiltersPressed)
    def action_toggle_filters(self) -> None:
        if not self.has_class("-compact-filters"):
            self.query_one("#type-filter").focus()
            return
        self.filters_open = not self.filters_open
        self._apply_layout(self.size)
        if self.filters_open:
            self.query_one("#type-filter").focus()
        elif self.query_one(FilterBar).has_focus_within:
            self.query_one("#search", Input).focus()

    def show_demo_state(self, is_demo: bool, unreachable: str | None) -> None:
        """The demo banner, shown until a real sync has filled the catalog."""
        self.is_demo = is_demo
        banner = self.query_one("#banner", Static)
        banner.update(demo_banner(unreachable) if is_demo else "")
        banner.display = is_demo

    # --- the listing -----------------------------------------------------------------------

    def refresh_listing(
        self, query: BrowseQuery | None = None, *, keep_selection: bool = False
    ) -> None:
        """Start over: a new generation, so pages of the previous query are dropped.

        `keep_selection` (after a sync, pull or delete) keeps the shown model and reloads it.
        """
        if query is not None:
            self.query_state = query
        self.keep_selection = keep_selection
        self.generation += 1
        self.loaded = 0
        self.total = None
        self.exhausted = False
        self.page_loading = True
        self.query_one(ModelTable).reset()
        self._update_status("loading…")
        self.mgr.load_page(self.query_state, self.generation, 0)
        self.mgr.count_models(self.query_state, self.generation)

    def show_page(self, message: ModelsPageLoaded) -> None:

        table = self.query_one(ModelTable)
        if message.offset == 0:
            table.reset()
        table.append_rows(message.rows)
        self.loaded = table.row_count
        self.exhausted = message.exhausted
        self.page_loading = False
        if message.offset == 0:
            first = not self._first_paint_scheduled
            if first:
                self._first_paint_scheduled = True
                # The first page goes on screen before anything else competes for the CPU:
                # the detail, the filter bar's choices and the update marks come after it.
                self.call_after_refresh(self._after_first_paint, bool(message.rows))
            kept = self.selected_model_id if self.keep_selection else None
            if kept is not None:
                if kept in table.rows_by_id:
                    table.move_cursor(row=table.get_row_index(str(kept)))
                self._request_detail(kept, immediate=True)
            elif message.rows:
                if first:
                    self.selected_model_id = message.rows[0].id
                else:
                    self._request_detail(message.rows[0].id, immediate=True)
            else:
                self._show_no_match()
        self._update_status()

    def _show_no_match(self) -> None:
        # Nothing is selected now: a detail still on its way for the old model is dropped,
        # and pull, delete and copy find no version to act on.
        self.selected_model_id = None
        if self._detail_timer is not None:
            self._detail_timer.stop()
        self.query_one(DetailPane).show_empty(NO_MATCH.format(key=action("catalog.sync").key))

    def _after_first_paint(self, with_rows: bool) -> None:
        import time

        now = time.monotonic()
        self.first_page_at = now
        if with_rows:
            self.first_rows_at = now
        if self.selected_model_id is not None:
            self._request_detail(self.selected_model_id, immediate=True)
        self.mgr.load_facets()
        self.mgr.mark_updates()
        self.mgr.check_demo()

    def show_count(self, total: int) -> None:
        self.total = total
        self._update_status()

    def _update_status(self, note: str = "") -> None:
        total = "…" if self.total is None else f"{self.total:,}"
        q = self.query_state
        arrow = "↓" if q.descending else "↑"
        parts = [f"{self.loaded:,} of {total} models", f"sort: {q.effective_sort} {arrow}"]
        if q.search.strip():
            parts.append(f"search: {q.search.strip()!r}")
        for label, values in (("type", q.types), ("base", q.base_models), ("tags", q.tags)):
            if values:
                parts.append(f"{label}: {', '.join(values)}")
        if self.total == 0 and not self.page_loading:
            parts.append("no model matches")
        if note:
            parts.append(note)
        self.query_one("#status", Static).update(Text(clean("  ·  ".join(parts))))

    @on(ModelTable.MoreWanted)
    def more_wanted(self) -> None:
        if self.page_loading or self.exhausted:
            return
        self.page_loading = True
        self.mgr.load_page(self.query_state, self.generation, self.loaded)

    @on(FilterBar.SearchTyped)
    def search_typed(self) -> None:
        # Debounced: the exclusive worker would cancel stale queries anyway, but not
        # starting one per keystroke keeps the CPU for the UI.
        if self._search_timer is not None:
            self._search_timer.stop()
        self._search_timer = self.set_timer(SEARCH_DEBOUNCE_S, self._apply_filters)

    @on(FilterBar.Changed)
    def _apply_filters(self) -> None:
        query = self.query_one(FilterBar).build_query(self.query_state)
        if (
            query.search.strip()
            and not self.query_state.search.strip()
            and query.sort == "downloads"
        ):
            query = replace(query, sort="relevance")
            self.query_one(FilterBar).set_sort("relevance")
        if query != self.query_state:
            self.refresh_listing(query)

    @on(DataTable.HeaderSelected)
    def header_selected(self, event: DataTable.HeaderSelected) -> None:
        sort = {column.key: column.sort for column in COLUMNS}.get(str(event.column_key.value))
        if sort is None:
            return
        q = self.query_state
        descending = not q.descending if q.sort == sort else sort not in ASCENDING_FIRST
        self.query_one(FilterBar).set_sort(sort)
        self.refresh_listing(replace(q, sort=sort, descending=descending))

    # --- the detail pane -------------------------------------------------------------------

    @on(DataTable.RowHighlighted, "#models")
    def row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        if event.row_key.value is not None:
            self._request_detail(int(event.row_key.value))

    def _request_detail(self, model_id: int, *, immediate: bool = False) -> None:
        if model_id == self.selected_model_id and not immediate:
            return
        self.selected_model_id = model_id
        if self._detail_timer is not None:
            self._detail_timer.stop()
        if immediate:
            self.mgr.load_detail(model_id)
        else:
            self._detail_timer = self.set_timer(
                DETAIL_DEBOUNCE_S, lambda: self.mgr.load_detail(model_id)
            )

    def show_detail(
        self, detail: ModelDetail, images: dict[int, list[CatalogImage]] | None = None
    ) -> None:
        if detail.id != self.selected_model_id:
            return
        pane = self.query_one(DetailPane)
        same = pane.detail is not None and pane.detail.id == detail.id
        self.images = images or {}
        pane.show_detail(detail, version_index=pane.version_index if same else 0)
        self._load_preview()
        if not same and self.images:
            self.mgr.prefetch_previews(detail.id, self._neighbour_ids())

    def _neighbour_ids(self, around: int = 2) -> list[int]:
        table = self.query_one(ModelTable)
        row = table.cursor_row
        keys = [r.key.value for r in table.ordered_rows[max(0, row - around) : row + around + 1]]
        return [int(k) for k in keys if k is not None and int(k) != self.selected_model_id]

    @on(DetailPane.VersionChosen)
    def version_chosen(self, event: DetailPane.VersionChosen) -> None:
        self.query_one(DetailPane).show_version(event.index)
        self._load_preview()

    def action_version(self, step: int) -> None:
        pane = self.query_one(DetailPane)
        pane.show_version(pane.version_index + step)
        self._load_preview()

    def action_image(self, step: int) -> None:
        """Step through the shown version's example images."""
        pane = self.query_one(DetailPane)
        if len(pane.gallery) > 1:
            self._load_preview((pane.image_index + step) % len(pane.gallery))

    @property
    def version(self) -> VersionDetail | None:
        return self.query_one(DetailPane).version

    def image_meta_loaded(self, version_id: int, images: list[CatalogImage]) -> None:
        self.images[version_id] = images
        version = self.version
        if version is not None and version.id == version_id:
            self._load_preview(self.query_one(DetailPane).image_index, words_only=True)

    def _load_preview(self, index: int = 0, *, words_only: bool = False) -> None:
        """Draw picture `index` of the shown version: its placeholder now, then the file or
        the thumbnail from a worker; above the NSFW threshold only the blur until revealed."""
        pane = self.query_one(DetailPane)
        version, detail = pane.version, pane.detail
        if version is None or detail is None:
            return
        entries = gallery.entries_for(version, self.images.get(version.id, []))
        preview = self.query_one("#preview", PreviewPane)
        if not entries:
            pane.show_gallery([], 0, Text(), Text())
            preview.show_note("No preview")
            return
        entry = entries[index]
        image, revealed = entry.image, version.id in self.revealed
        previews = self.mgr.services.previews()
        held = image is not None and previews.held_back(image) and not revealed
        if entry.path is not None and not held and image is None:
            held = (detail.nsfw or any(i.is_nsfw for i in version.images)) and not revealed
        keys = IMAGE_KEYS
        threshold = f"above your NSFW threshold ({previews.threshold}) · press r to reveal"
        pane.show_gallery(
            entries,
            index,
            gallery.caption(index, entries, keys, held=threshold if held else None),
            gallery.generation_text(entry.meta),
        )
        lacking = any(e.image is not None and e.image.url and not e.meta for e in entries)
        if lacking and not self.is_demo and version.id not in self.meta_asked:
            self.meta_asked.add(version.id)  # once a session: Civitai's images endpoint
            self.mgr.load_image_meta(version.id)
        if words_only:
            return
        blur = previews.placeholder(image) if image is not None else None
        if held:
            if blur is not None:
                preview.show_image(blur, "NSFW · blurred")
            else:
                preview.show_note(f"NSFW preview hidden · {threshold}")
            return
        if blur is not None:
            preview.show_image(blur)
        if entry.path is not None:
            self.mgr.load_preview(version.id, entry.path, "", entry.key)
        elif image is not None and image.url is not None and image.is_still:
            self.mgr.load_gallery_image(version.id, image, entry.key, reveal=revealed)
        elif blur is None:
            preview.show_note(f"No preview ({clean(image.type or 'no URL') if image else ''})")

    def show_preview(
        self, version_id: int, image: PILImage | None, note: str, key: str | None = None
    ) -> None:
        pane = self.query_one(DetailPane)
        version = pane.version
        if version is None or version.id != version_id:
            return
        if key is not None and pane.gallery:
            shown = pane.gallery[min(pane.image_index, len(pane.gallery) - 1)]
            if shown.key != key:
                return  # the user stepped on meanwhile
        preview = self.query_one("#preview", PreviewPane)
        if isinstance(image, PILImage):
            preview.show_image(image)
        else:
            preview.show_note(note)

    def action_reveal_preview(self) -> None:
        version = self.version
        if version is not None:
            self.revealed.add(version.id)
            self._load_preview(self.query_one(DetailPane).image_index)

    # --- trigger words ---------------------------------------------------------------------

    @on(DetailPane.WordAction)
    def word_action(self, event: DetailPane.WordAction) -> None:
        if event.action == "copy" and event.word:
            self.app.copy_to_clipboard(event.word)
            self.notify(f"Copied “{event.word}”", timeout=2, markup=False)
        elif event.action == "copy-all":
            self.action_copy_words()
        elif event.action == "to-prompt":
            self.action_to_prompt()

    def action_copy_words(self) -> None:
        version = self.version
        if version is None or not version.trained_words:
            self.notify("This version has no trigger words.", severity="warning", timeout=3)
            return
        text = ", ".join(clean(word) for word in version.trained_words)
        self.app.copy_to_clipboard(text)
        self.notify(f"Copied: {text}", timeout=3, markup=False)

    def prompt_snippet(self) -> str | None:
        """The LoRA tag (for LoRA types) and the trigger words of the shown version."""
        pane = self.query_one(DetailPane)
        version, detail = pane.version, pane.detail
        if version is None or detail is None:
            return None
        parts = []
        if detail.type in ("LORA", "LoCon", "DoRA") and version.files:
            stem = version.files[0].name.rsplit(".", 1)[0]
            parts.append(f"<lora:{stem}:{version.weight.value:g}>")
        parts.extend(version.trained_words)
        # Catalog text going into the user's prompt: cleaned like anything shown.
        return clean(", ".join(parts)) if parts else None

    def action_to_prompt(self) -> None:
        snippet = self.prompt_snippet()
        if snippet is None:
            self.notify("Nothing to insert for this version.", severity="warning", timeout=3)
            return
        self.mgr.insert_into_prompt(snippet)
        self.notify("Added to the Generate prompt (F3)", timeout=3)

    @on(DetailPane.UsePrompt)
    def use_prompt_pressed(self, event: DetailPane.UsePrompt) -> None:
        self.mgr.resolve_generation_data(meta=event.meta)

    def action_use_prompt(self) -> None:
        meta = self.query_one(DetailPane).image_meta
        if meta is None:
            self.notify(
                "Civitai has no generation data for this image.", severity="warning", timeout=3
            )
            return
        self.mgr.resolve_generation_data(meta=meta)

    # --- keys ------------------------------------------------------------------------------

    def action_focus_search(self) -> None:
        self.query_one("#search", Input).focus()

    def action_escape(self) -> None:
        if isinstance(self.focused, Input) or self.query_one(FilterBar).has_focus_within:
            self.query_one(ModelTable).focus()
            return
        if self.mode == "single" and self.detail_toggled:
            self.action_toggle_detail()  # back from the detail to the list
            return
        self.mgr.action_cancel_job()

    def action_cycle_sort(self) -> None:
        current = self.query_state.sort
        keys = list(SORT_KEYS)
        sort = keys[(keys.index(current) + 1) % len(keys)]
        if sort == "relevance" and not self.query_state.search.strip():
            sort = keys[(keys.index(sort) + 1) % len(keys)]
        self.query_one(FilterBar).set_sort(sort)
        self.refresh_listing(
            replace(self.query_state, sort=sort, descending=sort not in ASCENDING_FIRST)
        )

    def action_reverse_sort(self) -> None:
        q = self.query_state
        self.refresh_listing(replace(q, descending=not q.descending))

    def action_toggle_local(self) -> None:
        self.query_one(FilterBar).toggle("#local-filter")

    def action_toggle_nsfw(self) -> None:
        self.query_one(FilterBar).toggle("#nsfw-filter")

    def action_sync(self) -> None:
        self.mgr.start_sync(self.query_state)

    def action_pull(self) -> None:
        pane = self.query_one(DetailPane)
        version, detail = pane.version, pane.detail
        if version is None or detail is None:
            self.notify("Select a model first.", severity="warning", timeout=3)
            return
        self.mgr.enqueue_pull(version.id, f"{detail.name} {version.name or version.id}")

    def action_delete_local(self) -> None:
        pane = self.query_one(DetailPane)
        version, detail = pane.version, pane.detail
        if version is None or detail is None:
            return
        local = [f for f in version.files if f.local_state is not None]
        if not local:
            self.notify("This version has no local file.", severity="warning", timeout=3)
            return
        self.mgr.plan_delete(local[0].id, f"{detail.name} {version.name or ''} · {local[0].name}")

    def action_verify(self) -> None:
        self.mgr.start_verify()

    def action_check_updates(self) -> None:
        self.mgr.check_updates()

    def action_import_folder(self) -> None:
        self.mgr.ask_import()

    def select_model(self, model_id: int) -> None:
        """Show a model that may not be in the loaded pages (from the updates dialog)."""
        table = self.query_one(ModelTable)
        if model_id in table.rows_by_id:
            table.move_cursor(row=table.get_row_index(str(model_id)))
        self._request_detail(model_id, immediate=True)
