"""The prompt editor: a TextArea that offers ``<lora:…>`` names and trigger words as you type.

The screen asks the catalog for suggestions (`CompletionWanted`) and shows them in an
`OptionList` under the editor; while that list is open, Up/Down move in it, Tab or Enter
accepts and Escape closes it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from textual import events
from textual.message import Message
from textual.widgets import TextArea

# The token before the cursor: a LoRA tag being typed, or a word (letters, digits, _ and -).
_TOKEN = re.compile(r"(<lora:[^<>\s]*|[\w-]{2,}(?: [\w-]+)?)$", re.IGNORECASE)


def token_before(text: str) -> str | None:
    """The completable token at the end of `text` (the line up to the cursor), if any."""
    match = _TOKEN.search(text)
    if match is None:
        return None
    token = match.group(1)
    if not token.lower().startswith("<lora:") and " " in token:
        token = token.rsplit(" ", 1)[1]  # only multi-word for phrases already started
        if len(token) < 2:
            return None
    return token


def lora_tags(prompt: str) -> list[tuple[str, float]]:
    """The well-formed ``<lora:name:weight>`` tags of a prompt (`queries.prompt_lora_tags`)."""
    from assetmgr.app.queries import prompt_lora_tags

    return prompt_lora_tags(prompt)


class PromptEditor(TextArea):
    @dataclass
    class CompletionWanted(Message):
        editor: PromptEditor
        prefix: str

        @property
        def control(self) -> PromptEditor:
            return self.editor

    @dataclass
    class CompletionKey(Message):
        """A key meant for the open suggestion list: ``up``, ``down``, ``tab``, ``enter`` or
        ``escape``."""

        editor: PromptEditor
        key: str

        @property
        def control(self) -> PromptEditor:
            return self.editor

    completion_open = False

    async def _on_key(self, event: events.Key) -> None:
        if self.completion_open and event.key in ("up", "down", "tab", "enter", "escape"):
            event.stop()
            event.prevent_default()
            self.post_message(self.CompletionKey(self, event.key))
            return
        await super()._on_key(event)

    def current_token(self) -> str | None:
        row, column = self.cursor_location
        line = self.document.get_line(row)[:column]
        return token_before(line)

    def replace_token(self, token: str, replacement: str) -> None:
        row, column = self.cursor_location
        start = (row, max(0, column - len(token)))
        self.replace(replacement, start, (row, column))

    def request_completion(self) -> None:
        token = self.current_token()
        if token:
            self.post_message(self.CompletionWanted(self, token))

    def on_text_area_changed(self, event: TextArea.Changed) -> None:
        if self.has_focus:  # text inserted from the catalog should not pop suggestions
            self.request_completion()
