"""A picture in the terminal (textual-image: Kitty TGP or Sixel, else unicode half cells).

textual-image asks the terminal what it supports when it is imported, which only works before
Textual takes over the terminal: `assetmgr.tui.app` imports this module at import time.
Kitty's graphics protocol or Sixel draw real pixels; elsewhere half-block characters.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Container
from textual.widgets import Static
from textual_image.renderable import Image as _DetectedRenderable
from textual_image.renderable import UnicodeImage as _UnicodeRenderable
from textual_image.widget import HalfcellImage
from textual_image.widget import Image as _DetectedImage

from assetmgr.display import clean

# Off a terminal (tests, screenshots, pipes) textual-image falls back to grey unicode shading;
# coloured half cells look like the picture and work in every truecolor terminal.
TerminalImage = HalfcellImage if _DetectedRenderable is _UnicodeRenderable else _DetectedImage

if TYPE_CHECKING:
    from PIL.Image import Image as PILImage


class PreviewPane(Container):
    """Shows one image, or a line that says why there is none."""

    def compose(self) -> ComposeResult:
        yield TerminalImage(None, classes="preview-image")
        yield Static("", classes="preview-note")

    def show_image(self, image: PILImage, note: str = "") -> None:
        self.query_one(".preview-image", TerminalImage).image = image
        self.set_class(True, "-has-image")
        self.query_one(".preview-note", Static).update(Text(clean(note)))

    def show_note(self, note: str) -> None:
        self.query_one(".preview-image", TerminalImage).image = None
        self.set_class(False, "-has-image")
        self.query_one(".preview-note", Static).update(Text(clean(note)))
