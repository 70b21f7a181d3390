"""Modal dialogs: errors (title, message, hint), confirmations, a one-line prompt, a pasted
block of text, updates.

Their text quotes outside strings (names, paths, server and job messages): each dialog
cleans what it is given (`assetmgr.display.clean`) and shows it as `Text`, never as markup.
"""

from __future__ import annotations

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, OptionList, Static, TextArea
from textual.widgets.option_list import Option

from assetmgr.display import clean


class ErrorModal(ModalScreen[None]):
    """A failed worker or action: what happened and what to do next."""

    BINDINGS = [Binding("escape,enter", "dismiss", "Close", id="dialog.close")]

    def __init__(self, title: str, message: str, hint: str = "") -> None:
        super().__init__(classes="dialog-screen")
        self.error_title = title
        self.message = message
        self.hint = hint

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog error-dialog"):
            yield Label(Text(clean(self.error_title)), classes="dialog-title")
            yield Static(Text(clean(self.message, multiline=True)), classes="dialog-body")
            if self.hint:
                yield Static(
                    Text.assemble(("hint: ", "bold"), clean(self.hint, multiline=True)),
                    classes="dialog-hint",
                )
            with Horizontal(classes="dialog-buttons"):
                yield Button("Close", variant="primary", id="close")

    @on(Button.Pressed, "#close")
    def close(self) -> None:
        self.dismiss(None)


class ConfirmModal(ModalScreen[bool]):
    """A yes/no question before something destructive: Cancel has the focus, so a stray
    Enter cancels; the action needs its own button or ``y``."""

    AUTO_FOCUS = "#no"
    BINDINGS = [
        Binding("escape,n", "answer(False)", "No", id="dialog.no"),
        Binding("y", "answer(True)", "Yes", id="dialog.yes"),
    ]

    def __init__(self, title: str, body: str, *, yes: str = "Yes") -> None:
        super().__init__(classes="dialog-screen")
        self.confirm_title = title
        self.body = body
        self.yes = yes

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label(Text(clean(self.confirm_title)), classes="dialog-title")
            yield Static(Text(clean(self.body, multiline=True)), classes="dialog-body")
            with Horizontal(classes="dialog-buttons"):
                yield Button(self.yes, variant="error", id="yes")
                yield Button("Cancel", id="no")

    def action_answer(self, value: bool) -> None:
        self.dismiss(value)

    @on(Button.Pressed)
    def pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "yes")


class PromptModal(ModalScreen[str | None]):
    """Asks for one line of text (a folder to import)."""

    BINDINGS = [Binding("escape", "cancel", "Cancel", id="dialog.cancel")]

    def __init__(self, title: str, placeholder: str = "", value: str = "") -> None:
        super().__init__(classes="dialog-screen")
        self.prompt_title = title
        self.placeholder = placeholder
        self.value = value

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label(Text(clean(self.prompt_title)), classes="dialog-title")
            yield Input(value=self.value, placeholder=self.placeholder, id="answer")
            with Horizontal(classes="dialog-buttons"):
                yield Button("OK", variant="primary", id="ok")
                yield Button("Cancel", id="cancel")

    def action_cancel(self) -> None:
        self.dismiss(None)

    @on(Input.Submitted)
    @on(Button.Pressed, "#ok")
    def accept(self) -> None:
        self.dismiss(self.query_one(Input).value.strip() or None)

    @on(Button.Pressed, "#cancel")
    def cancel(self) -> None:
        self.dismiss(None)


class PasteModal(ModalScreen[str | None]):
    """Asks for a block of text: A1111 parameters pasted from another tool or a web page."""

    BINDINGS = [Binding("escape", "cancel", "Cancel", id="dialog.cancel")]
    AUTO_FOCUS = "#pasted"

    def __init__(self, title: str, explanation: str) -> None:
        super().__init__(classes="dialog-screen")
        self.paste_title = title
        self.explanation = explanation

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog paste-dialog"):
            yield Label(Text(clean(self.paste_title)), classes="dialog-title")
            yield Static(Text(clean(self.explanation, multiline=True)), classes="dialog-body")
            yield TextArea(id="pasted", soft_wrap=True)
            with Horizontal(classes="dialog-buttons"):
                yield Button("Use", variant="primary", id="use")
                yield Button("Cancel", id="cancel")

    def action_cancel(self) -> None:
        self.dismiss(None)

    @on(Button.Pressed, "#use")
    def accept(self) -> None:
        self.dismiss(self.query_one(TextArea).text or None)

    @on(Button.Pressed, "#cancel")
    def cancel(self) -> None:
        self.dismiss(None)


class UpdatesModal(ModalScreen[tuple[str, list[tuple[int, int]]] | None]):
    """The result of "check updates": jump to one, or download them all."""

    BINDINGS = [Binding("escape", "cancel", "Close", id="dialog.close")]

    def __init__(self, updates: list[tuple[int, int, str]]) -> None:
        super().__init__(classes="dialog-screen")
        self.updates = updates

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog updates-dialog"):
            yield Label(f"{len(self.updates)} update(s) available", classes="dialog-title")
            if self.updates:
                yield OptionList(
                    *(
                        Option(Text(clean(label)), id=str(i))
                        for i, (_, _, label) in enumerate(self.updates)
                    ),
                    id="update-list",
                )
            else:
                yield Static(
                    "Every local model has the newest version of its base-model family.",
                    classes="dialog-body",
                )
            with Horizontal(classes="dialog-buttons"):
                if self.updates:
                    yield Button("Download all", variant="success", id="all")
                yield Button("Close", id="close")

    def action_cancel(self) -> None:
        self.dismiss(None)

    @on(OptionList.OptionSelected)
    def chosen(self, event: OptionList.OptionSelected) -> None:
        model_id, version_id, _ = self.updates[event.option_index]
        self.dismiss(("show", [(model_id, version_id)]))

    @on(Button.Pressed)
    def pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "all":
            self.dismiss(("download", [(m, v) for m, v, _ in self.updates]))
        else:
            self.dismiss(None)
