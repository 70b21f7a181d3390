"""The detail pane: one model's description, versions, files with hashes, trigger words, preview.

Everything it shows comes from the catalog, that is from outside: each value goes through the
display sanitizer (`assetmgr.display.clean`) into a `Text` or `Content`, never into markup.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.content import Content
from textual.message import Message
from textual.widgets import Button, Label, OptionList, Static
from textual.widgets.option_list import Option

from assetmgr.app.queries import (
    DOWNLOADS_DISABLED,
    EARLY_ACCESS,
    FileDetail,
    ModelDetail,
    VersionDetail,
    describe_access,
)
from assetmgr.display import clean
from assetmgr.tui.gallery import Entry
from assetmgr.tui.widgets.preview import PreviewPane

DESCRIPTION_CHARS = 4_000
_STATE_STYLE = {
    "verified": ("✓ verified", "green"),
    "downloading": ("↓ partial download (d resumes it)", "yellow"),
    "quarantined": ("✗ quarantined (hash mismatch)", "red"),
    "missing": ("? missing from the store", "red"),
}
_ACCESS_BADGE = {
    EARLY_ACCESS: "⏳ early access",
    DOWNLOADS_DISABLED: "⊘ no downloads",
}
_CHECK_MARK = {"match": ("✓", "green"), "mismatch": ("✗", "bold red"), "unchecked": ("·", "dim")}


def _size(kb: float | None) -> str:
    if kb is None:
        return "?"
    if kb >= 1024 * 1024:
        return f"{kb / 1024 / 1024:.2f} GiB"
    if kb >= 1024:
        return f"{kb / 1024:.1f} MiB"
    return f"{kb:.0f} KiB"


def files_renderable(files: list[FileDetail]) -> RenderableType:
    if not files:
        return Text("No files in the catalog for this version.", style="dim")
    parts: list[RenderableType] = []
    for f in files:
        state, style = _STATE_STYLE.get(f.local_state or "", ("not local", "dim"))
        head = Text.assemble(
            ("★ " if f.primary else "  ", "yellow"),
            (clean(f.name), "bold"),
            clean(f"  {_size(f.size_kb)}  {f.format or ''}  "),
            (state, style),
        )
        scans = clean(f"pickle scan: {f.pickle_scan or '?'} · virus scan: {f.virus_scan or '?'}")
        table = Table(box=None, show_header=False, padding=(0, 1), pad_edge=False)
        table.add_column(style="dim", no_wrap=True)
        table.add_column(overflow="fold")
        table.add_column(no_wrap=True)
        for check in f.hashes:
            if not check.expected and not check.local:
                continue
            mark, mark_style = _CHECK_MARK[check.state]
            table.add_row(
                check.name,
                Text(clean(check.expected or check.local or "")),
                Text(mark, mark_style),
            )
        parts.extend([head, Text(scans, style="dim"), table])
    return Group(*parts)


class DetailPane(VerticalScroll):
    """Fills from a `ModelDetail`; the screen tells it which version to show."""

    @dataclass
    class VersionChosen(Message):
        pane: DetailPane
        index: int

        @property
        def control(self) -> DetailPane:
            return self.pane

    @dataclass
    class WordAction(Message):
        """A trigger-word button: copy one word, copy all, or send them to the prompt."""

        pane: DetailPane
        action: str
        word: str | None = None

        @property
        def control(self) -> DetailPane:
            return self.pane

    @dataclass
    class UsePrompt(Message):
        """ "Use this prompt": the shown example image's generation data, for Generate."""

        pane: DetailPane
        meta: dict[str, Any]

        @property
        def control(self) -> DetailPane:
            return self.pane

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.detail: ModelDetail | None = None
        self.version_index = 0
        self.image_index = 0
        """The example image the pane shows of the version (its generation data is used)."""
        self.gallery: list[Entry] = []
        """The shown version's pictures (`assetmgr.tui.gallery`); empty until listed."""

    def compose(self) -> ComposeResult:
        yield Static("Select a model", id="detail-title")
        yield Static("", id="detail-meta")
        yield OptionList(id="versions")
        with Horizontal(id="version-row"):
            yield PreviewPane(id="preview")
            yield Static("", id="version-info")
        yield Static("", id="image-caption")
        yield Static("", id="image-meta")
        yield Label("Trigger words", classes="section")
        yield Vertical(id="words")
        with Horizontal(id="word-actions"):
            yield Button(
                "Copy all",
                classes="copy-words",
                compact=True,
                variant="primary",
                tooltip="Copy every trigger word (y)",
            )
            yield Button(
                "→ Prompt",
                classes="to-prompt",
                compact=True,
                variant="success",
                tooltip="Insert into the Generate prompt (g)",
            )
            yield Button(
                "Use this prompt",
                classes="use-prompt",
                compact=True,
                variant="success",
                tooltip="The example image's prompt, settings and models into Generate (p)",
            )
        yield Label("Files", classes="section")
        yield Static("", id="files")
        yield Label("About", classes="section")
        yield Static("", id="description")

    def on_mount(self) -> None:
        self.add_class("-empty")

    def show_empty(self, text: str) -> None:
        """No model to show (nothing matches): the pane keeps nothing of the previous one."""
        self.detail = None
        self.version_index = 0
        self.add_class("-empty")
        self.query_one("#detail-title", Static).update(Text(clean(text), style="bold"))
        self.gallery = []
        for part in (
            "#detail-meta",
            "#version-info",
            "#image-caption",
            "#image-meta",
            "#files",
            "#description",
        ):
            self.query_one(part, Static).update("")
        self.query_one("#versions", OptionList).clear_options()
        self.query_one("#words", Vertical).remove_children()
        self.query_one("#preview", PreviewPane).show_note("")

    @property
    def image_meta(self) -> dict[str, Any] | None:
        """The shown example image's generation data, when Civitai has a prompt for it."""
        version = self.version
        if self.gallery:
            meta = self.gallery[min(self.image_index, len(self.gallery) - 1)].meta
        elif version is None or not version.images:
            return None
        else:
            meta = version.images[min(self.image_index, len(version.images) - 1)].meta
        return meta if meta and isinstance(meta.get("prompt"), str) else None

    def show_gallery(self, entries: list[Entry], index: int, caption: Text, meta: Text) -> None:
        """The shown picture's place and words; keeps "Use this prompt" on that picture."""
        self.gallery = entries
        self.image_index = index
        self.query_one("#image-caption", Static).update(caption)
        self.query_one("#image-meta", Static).update(meta)
        self.query_one(".use-prompt", Button).display = self.image_meta is not None

    @property
    def version(self) -> VersionDetail | None:
        if self.detail is None or not self.detail.versions:
            return None
        return self.detail.versions[min(self.version_index, len(self.detail.versions) - 1)]

    def show_detail(self, detail: ModelDetail, *, version_index: int = 0) -> None:
        self.detail = detail
        self.remove_class("-empty")
        title = Text(clean(detail.name), style="bold")
        title.append(f"  {clean(detail.type)}", style="cyan")
        if detail.nsfw:
            title.append("  NSFW", style="bold red")
        self.query_one("#detail-title", Static).update(title)
        meta = Text()
        meta.append(f"by {clean(detail.creator or 'unknown')}")
        if detail.downloads is not None:
            meta.append(f" · {detail.downloads:,} downloads")
        if detail.tags:
            meta.append(" · " + ", ".join(clean(tag) for tag in detail.tags[:12]), style="dim")
        self.query_one("#detail-meta", Static).update(meta)
        versions = self.query_one("#versions", OptionList)
        versions.clear_options()
        for v in detail.versions:
            label = Text(clean(v.name or v.id), style="bold" if v.is_local else "")
            label.append(f"  {clean(v.base_model or '?')}", style="cyan")
            if v.published_at:
                label.append(f"  {v.published_at:%Y-%m-%d}", style="dim")
            if v.is_local:
                label.append("  ✓ local", style="green")
            if v.id in detail.update_version_ids:
                label.append("  ↑ update", style="bold cyan")
            for rule in v.access:
                if rule.code in _ACCESS_BADGE:
                    label.append(f"  {_ACCESS_BADGE[rule.code]}", style="yellow")
            if v.state != "active":
                label.append(f"  {clean(v.state)}", style="red")
            versions.add_option(Option(label, id=str(v.id)))
        text = detail.description or "No description."
        if len(text) > DESCRIPTION_CHARS:
            text = text[:DESCRIPTION_CHARS].rstrip() + " …"
        self.query_one("#description", Static).update(Text(clean(text, multiline=True)))
        self.show_version(version_index)

    def show_version(self, index: int) -> None:
        if self.detail is None or not self.detail.versions:
            self.query_one("#version-info", Static).update("No versions.")
            return
        index = max(0, min(index, len(self.detail.versions) - 1))
        self.version_index = index
        versions = self.query_one("#versions", OptionList)
        if versions.highlighted != index:
            with self.prevent(OptionList.OptionHighlighted):
                versions.highlighted = index
        v = self.detail.versions[index]
        info = Text()
        info.append(f"{clean(v.name or v.id)}\n", style="bold")
        info.append(f"base model  {clean(v.base_model or '?')}\n")
        if v.published_at:
            info.append(f"published   {v.published_at:%Y-%m-%d}\n")
        info.append(f"version id  {v.id}\n", style="dim")
        for rule in v.access:
            info.append(f"download    {describe_access(rule)}\n", style="yellow")
        if not v.is_local and not v.access and not self._api_key_set():
            info.append("login       no API key (F5)\n", style="dim")
        if self.detail.type in ("LORA", "LoCon", "DoRA"):
            info.append(f"weight      {v.weight.label()}\n")
        if v.description:
            info.append("\n" + clean(v.description[:600], multiline=True), style="italic")
        self.query_one("#version-info", Static).update(info)
        words = self.query_one("#words", Vertical)
        words.remove_children()
        if v.trained_words:
            words.mount_all(
                # Content, not str: a Button parses a str label as markup. The button carries
                # the cleaned word: that is what is copied.
                Button(
                    Content(shown),
                    name=shown,
                    classes="word",
                    compact=True,
                    tooltip=Text(f"Copy “{shown}”"),
                )
                for shown in (clean(word) for word in v.trained_words)
            )
        else:
            words.mount(Label("none", classes="dim"))
        self.query_one(".copy-words", Button).display = bool(v.trained_words)
        self.image_index = 0
        self.gallery = []
        self.query_one("#image-caption", Static).update("")
        self.query_one("#image-meta", Static).update("")
        self.query_one(".use-prompt", Button).display = self.image_meta is not None
        self.query_one("#files", Static).update(files_renderable(v.files))

    def _api_key_set(self) -> bool:
        """Whether downloads go out with a key (the app's settings; True when unknown)."""
        settings = getattr(getattr(self.app, "services", None), "settings", None)
        return settings is None or getattr(settings, "api_key", None) is not None

    def on_option_list_option_highlighted(self, event: OptionList.OptionHighlighted) -> None:
        event.stop()
        if event.option_index != self.version_index:
            self.post_message(self.VersionChosen(self, event.option_index))

    def on_button_pressed(self, event: Button.Pressed) -> None:
        event.stop()
        if event.button.has_class("copy-words"):
            self.post_message(self.WordAction(self, "copy-all"))
        elif event.button.has_class("to-prompt"):
            self.post_message(self.WordAction(self, "to-prompt"))
        elif event.button.has_class("use-prompt") and self.image_meta is not None:
            self.post_message(self.UsePrompt(self, self.image_meta))
        elif event.button.has_class("word"):
            self.post_message(self.WordAction(self, "copy", event.button.name))
