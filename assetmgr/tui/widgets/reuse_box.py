"""What "Use this prompt" (or a paste) could not fill: the image's models that are not local,
with the pull offer and the commands, and the notes on values that were not used.

Model names, hashes and notes come from the image: cleaned (`assetmgr.display.clean`) into
`Text`, never markup.
"""

from __future__ import annotations

from dataclasses import dataclass

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.message import Message
from textual.widgets import Button, Static

from assetmgr.app.reuse import Reuse, lookup_commands, pull_commands
from assetmgr.display import clean


class ReuseBox(Vertical):
    """Hidden until an image's data leaves something to say."""

    @dataclass
    class PullWanted(Message):
        """Pull these (version id, job label): the image's models that are not local."""

        box: ReuseBox
        versions: list[tuple[int, str]]

        @property
        def control(self) -> ReuseBox:
            return self.box

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.reuse: Reuse | None = None

    def compose(self) -> ComposeResult:
        yield Static("", id="reuse-note")
        yield Button("Pull missing", id="pull-missing", compact=True, variant="warning")

    def on_mount(self) -> None:
        self.display = False

    def show(self, reuse: Reuse) -> None:
        self.reuse = reuse
        text = Text()
        if reuse.missing:
            text.append(f"{len(reuse.missing)} model(s) of the image are not local:\n", "bold")
        for missing in reuse.missing:
            text.append(f"✗ {clean(missing.label)}\n", style="red")
        commands = pull_commands(reuse.missing) + lookup_commands(reuse.missing)
        if commands:
            text.append(clean("or run: " + "; ".join(commands)) + "\n", style="dim")
        for note in reuse.notes:
            text.append(f"! {clean(note)}\n", style="yellow")
        text.rstrip()
        self.query_one("#reuse-note", Static).update(text)
        versions = reuse.pull_version_ids
        button = self.query_one("#pull-missing", Button)
        button.label = f"Pull {len(versions)} missing"
        button.display = bool(versions)
        self.display = bool(text.plain)

    def on_button_pressed(self, event: Button.Pressed) -> None:
        event.stop()
        if self.reuse is None:
            return
        wanted: dict[int, str] = {}
        for missing in self.reuse.missing:
            if missing.version_id:
                name = missing.model_name or missing.ref.name or missing.ref.label
                wanted.setdefault(missing.version_id, f"{name} (for the image's prompt)")
        self.post_message(self.PullWanted(self, list(wanted.items())))
