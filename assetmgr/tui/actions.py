"""The one registry of bindable actions: keys, ids and tooltips for every screen.

Screens take their ``BINDINGS`` from `bindings_for`, the help screen lists `ACTIONS`, and the
command palette offers every action that has a `palette` title. Ids are stable
(``<scope>.<name>``) so a keymap can rebind them (Textual's ``App.set_keymap``).
"""

from __future__ import annotations

from dataclasses import dataclass

from textual.binding import Binding, BindingType


@dataclass(frozen=True)
class ActionSpec:
    id: str
    key: str
    action: str
    description: str
    tooltip: str
    scope: str
    """``app`` (everywhere) or a screen: ``catalog``, ``generate``, ``sandbox``, ``settings``."""
    show: bool = True
    priority: bool = False
    palette: bool = True
    """Offer it in the command palette (screen actions only while that screen is shown)."""


SCOPES = ("app", "catalog", "generate", "sandbox", "settings")

ACTIONS: tuple[ActionSpec, ...] = (
    # everywhere
    ActionSpec("app.help", "f1", "help", "Help", "List every key and action", "app"),
    ActionSpec("app.catalog", "f2", "show_catalog", "Catalog", "The catalog browser", "app"),
    ActionSpec("app.generate", "f3", "show_generate", "Generate", "Prompt, models and runs", "app"),
    ActionSpec(
        "app.sandbox", "f4", "show_sandbox", "Sandbox", "Image record, plugins, workers", "app"
    ),
    ActionSpec(
        "app.settings", "f5", "show_settings", "Settings", "API key, store, concurrency", "app"
    ),
    ActionSpec(
        "app.cancel",
        "escape",
        "cancel_job",
        "Cancel job",
        "Cancel the newest running job (sync, download, verify, import, generation)",
        "app",
        show=False,
    ),
    ActionSpec("app.quit", "ctrl+q", "quit", "Quit", "Leave assetmgr", "app", show=False),
    # the catalog browser (letters act while the table or detail pane has focus)
    ActionSpec(
        "catalog.search", "slash", "focus_search", "Search", "Type to search as you go", "catalog"
    ),
    ActionSpec(
        "catalog.escape",
        "escape",
        "escape",
        "Back / cancel",
        "Leave the filter bar; elsewhere cancel the newest running job",
        "catalog",
        show=False,
        palette=False,
    ),
    ActionSpec(
        "catalog.sync",
        "s",
        "sync",
        "Sync",
        "Fetch models matching the current filters from Civitai (up to 500)",
        "catalog",
    ),
    ActionSpec(
        "catalog.pull",
        "d",
        "pull",
        "Download",
        "Queue the selected version's primary file for download (verified by SHA256)",
        "catalog",
    ),
    ActionSpec(
        "catalog.delete",
        "x",
        "delete_local",
        "Delete local",
        "Remove the selected version's local file (the blob stays if another file uses it)",
        "catalog",
        show=False,
    ),
    ActionSpec(
        "catalog.verify",
        "V",
        "verify",
        "Verify store",
        "Re-hash every file in the store; corrupt ones are quarantined",
        "catalog",
        show=False,
    ),
    ActionSpec(
        "catalog.updates",
        "u",
        "check_updates",
        "Updates",
        "Local models with a newer version in the same base-model family",
        "catalog",
    ),
    ActionSpec(
        "catalog.import",
        "i",
        "import_folder",
        "Import",
        "Import an A1111/ComfyUI models folder into the store",
        "catalog",
        show=False,
    ),
    ActionSpec(
        "catalog.detail",
        "v",
        "toggle_detail",
        "Detail",
        "Show or hide the detail pane (small terminals: in the list's place)",
        "catalog",
    ),
    ActionSpec(
        "catalog.filters",
        "f",
        "toggle_filters",
        "Filters",
        "Show the type, base-model and tag filters (a second line on narrow terminals)",
        "catalog",
        show=False,
    ),
    ActionSpec(
        "catalog.sort", "o", "cycle_sort", "Sort", "Cycle the sort order", "catalog", show=False
    ),
    ActionSpec(
        "catalog.reverse",
        "O",
        "reverse_sort",
        "Reverse",
        "Reverse the sort order",
        "catalog",
        show=False,
    ),
    ActionSpec(
        "catalog.local",
        "l",
        "toggle_local",
        "Local only",
        "Show only local models",
        "catalog",
        show=False,
    ),
    ActionSpec(
        "catalog.nsfw",
        "n",
        "toggle_nsfw",
        "NSFW",
        "Include NSFW models in the listing",
        "catalog",
        show=False,
    ),
    ActionSpec(
        "catalog.reveal",
        "r",
        "reveal_preview",
        "Reveal preview",
        "Show an NSFW preview image that is hidden by default",
        "catalog",
        show=False,
    ),
    ActionSpec(
        "catalog.copy_words",
        "y",
        "copy_words",
        "Copy words",
        "Copy the selected version's trigger words to the clipboard",
        "catalog",
        show=False,
    ),
    ActionSpec(
        "catalog.to_prompt",
        "g",
        "to_prompt",
        "To prompt",
        "Insert the trigger words (and the LoRA tag) into the Generate prompt",
        "catalog",
        show=False,
    ),
    ActionSpec(
        "catalog.use_prompt",
        "p",
        "use_prompt",
        "Use this prompt",
        "Load the example image's prompt and settings into Generate (models found by hash)",
        "catalog",
        show=False,
    ),
    ActionSpec(
        "catalog.prev_version",
        "left_square_bracket",
        "version(-1)",
        "Prev version",
        "Previous version in the detail pane",
        "catalog",
        show=False,
        palette=False,
    ),
    ActionSpec(
        "catalog.next_version",
        "right_square_bracket",
        "version(1)",
        "Next version",
        "Next version in the detail pane",
        "catalog",
        show=False,
        palette=False,
    ),
    ActionSpec(
        "catalog.prev_image",
        "comma",
        "image(-1)",
        "Prev image",
        "Previous example image of the version (with its generation data)",
        "catalog",
        show=False,
    ),
    ActionSpec(
        "catalog.next_image",
        "full_stop",
        "image(1)",
        "Next image",
        "Next example image of the version (with its generation data)",
        "catalog",
        show=False,
    ),
    # generate
    ActionSpec(
        "generate.run", "ctrl+r", "run_generation", "Generate", "Run in the sandbox", "generate"
    ),
    ActionSpec(
        "generate.complete",
        "ctrl+space",
        "complete",
        "Complete",
        "Complete the <lora:…> name or trigger word at the cursor",
        "generate",
        palette=False,
    ),
    ActionSpec(
        "generate.rerun",
        "ctrl+t",
        "rerun",
        "Rerun",
        "Rerun the selected history entry",
        "generate",
    ),
    ActionSpec(
        "generate.paste",
        "ctrl+o",
        "paste_parameters",
        "Paste parameters",
        "Fill every field from a pasted A1111 parameters block (models found by hash)",
        "generate",
        show=False,
    ),
    ActionSpec(
        "generate.seed",
        "ctrl+n",
        "new_seed",
        "New seed",
        "Pick a random seed",
        "generate",
        show=False,
    ),
    # sandbox
    ActionSpec(
        "sandbox.refresh",
        "ctrl+r",
        "refresh",
        "Refresh",
        "Check the image and workers again",
        "sandbox",
    ),
    # settings
    ActionSpec("settings.save", "ctrl+s", "save", "Save", "Save the settings", "settings"),
)

_BY_ID = {spec.id: spec for spec in ACTIONS}


def action(action_id: str) -> ActionSpec:
    return _BY_ID[action_id]


def bindings_for(scope: str) -> list[BindingType]:
    """The Textual bindings of one scope, built from the registry."""
    bindings: list[BindingType] = [
        Binding(
            spec.key,
            spec.action,
            spec.description,
            show=spec.show,
            priority=spec.priority,
            tooltip=spec.tooltip,
            id=spec.id,
        )
        for spec in ACTIONS
        if spec.scope == scope
    ]
    return bindings


def for_scope(scope: str) -> list[ActionSpec]:
    return [spec for spec in ACTIONS if spec.scope == scope]


__all__ = ["ACTIONS", "SCOPES", "ActionSpec", "action", "bindings_for", "for_scope"]
