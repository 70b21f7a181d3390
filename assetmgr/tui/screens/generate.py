"""Generate: prompt with completion, checkpoint and LoRAs, sampler settings, run and history.

LoRAs live in the prompt as A1111 ``<lora:name:weight>`` tags (parsed by the job contract's
parser, `sandbox.protocol`, as the worker does); the LoRA picker inserts such a tag, and the line
under the editor says which tags resolve to local files. Generate first runs the CLI's checks
(`GenerationService.check`); what they refuse shows under the button and nothing starts.

Model names, trigger words, plugin names, job progress and sandbox notes are outside text:
shown cleaned (`assetmgr.display.clean`), and cleaned before they go into the prompt.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import TYPE_CHECKING

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import Screen
from textual.timer import Timer
from textual.widgets import (
    Button,
    Footer,
    Header,
    Input,
    Label,
    OptionList,
    ProgressBar,
    Select,
    SelectionList,
    Static,
    TextArea,
)
from textual.widgets.option_list import Option

from assetmgr.app.generate import SCHEDULES
from assetmgr.app.generate_checks import InvalidRequestError
from assetmgr.app.queries import Completion, LocalModel
from assetmgr.app.reuse import Missing, MissingModelsError, Reuse
from assetmgr.display import clean
from assetmgr.tui.actions import bindings_for
from assetmgr.tui.screens.dialogs import PasteModal
from assetmgr.tui.services import (
    SAMPLERS,
    GenerateRequest,
    GenerationCheck,
    RunRecord,
    ServiceState,
)
from assetmgr.tui.widgets.jobs import JobsBar
from assetmgr.tui.widgets.preview import PreviewPane
from assetmgr.tui.widgets.prompt import PromptEditor, lora_tags
from assetmgr.tui.widgets.reuse_box import ReuseBox
from assetmgr.wording import describe

if TYPE_CHECKING:
    from PIL.Image import Image as PILImage

    from assetmgr.tui.app import AssetMgrApp

COMPLETION_DEBOUNCE_S = 0.12
#: GenerateRequest field -> the label of its control here (the check's errors name it).
FIELD_LABELS = {
    "model": "Checkpoint",
    "prompt": "Prompt",
    "negative": "Negative prompt",
    "loras": "LoRA",
    "sampler": "Sampler",
    "steps": "Steps",
    "cfg": "CFG",
    "seed": "Seed",
    "width": "Width",
    "height": "Height",
    "schedule_type": "Schedule",
    "clip_skip": "Clip skip",
    "hires_scale": "Hires ×",
    "hires_steps": "HR steps",
    "hires_denoise": "HR denoise",
}
SIZES = ("512", "640", "768", "832", "896", "1024", "1152", "1216")


def _number(value: float) -> str:
    """A number as typed: 1734419982, 4.5, 7 (never an exponent, never rounded)."""
    if isinstance(value, int) or float(value).is_integer():
        return str(int(value))
    return repr(float(value))


def run_label(run: RunRecord) -> str:
    """One line of the history: when, seed, status and the start of the prompt."""
    prompt = str(run.spec.get("prompt", "")).replace("\n", " ")
    when = run.created_at.astimezone().strftime("%Y-%m-%d %H:%M") if run.created_at else "?"
    status = "done" if run.status == "ok" else run.status
    return f"{when}  seed {run.spec.get('seed')}  {status}  {prompt[:60]}"


class GenerateScreen(Screen[None]):
    BINDINGS = bindings_for("generate")
    AUTO_FOCUS = None
    """The prompt takes the focus once laid out (`on_mount`); later visits keep the last one."""

    def __init__(self) -> None:
        super().__init__(id="generate")
        self.checkpoints: list[LocalModel] = []
        self.loras: list[LocalModel] = []
        self.completions: list[Completion] = []
        self.completion_prefix = ""
        self.state = ServiceState(False, "checking…")
        self.runs: list[RunRecord] = []
        self._completion_timer: Timer | None = None
        self.reuse: Reuse | None = None
        """The image data the form was last filled from ("Use this prompt", a paste)."""
        self.pinned_tags: dict[str, int] = {}
        """Prompt tag -> the LoRA version the image's hash found (or the one to pull)."""
        self.unmatched_tags: set[str] = set()
        """Tags whose hash matches no file the catalog knows: no local file stands in."""
        self.wanted_checkpoint: int | None = None
        self.sampler_names: list[str] = list(SAMPLERS)
        self.size_names: list[str] = list(SIZES)

    @property
    def mgr(self) -> AssetMgrApp:
        return self.app  # type: ignore[return-value]

    def compose(self) -> ComposeResult:
        yield Header(show_clock=False)
        with Horizontal(id="gen-main"):
            with VerticalScroll(id="gen-form"):
                yield Static("", id="gen-state")
                yield ReuseBox(id="reuse-box")
                yield Label("Prompt", classes="section")
                yield PromptEditor(id="prompt", soft_wrap=True, show_line_numbers=False)
                yield OptionList(id="completions")
                yield Static("", id="lora-summary")
                yield Label("Negative prompt", classes="section")
                yield TextArea(id="negative", soft_wrap=True)
                yield Label("Checkpoint", classes="section")
                yield Select[int]([], prompt="No local checkpoint", id="checkpoint")
                with Horizontal(classes="form-row"):
                    yield Select[int]([], prompt="Add a local LoRA…", id="lora-pick")
                    yield Input("1.0", id="lora-weight", type="number", tooltip="LoRA weight")
                    yield Button("Add LoRA", id="add-lora", compact=True)
                with Horizontal(classes="label-row"):
                    yield Label("Sampler", classes="w-select")
                    yield Label("Steps", classes="w-num")
                    yield Label("CFG", classes="w-num")
                    yield Label("Seed", classes="w-seed")
                with Horizontal(classes="form-row"):
                    yield Select[str](
                        [(s, s) for s in SAMPLERS],
                        value=SAMPLERS[0],
                        allow_blank=False,
                        id="sampler",
                        classes="w-select",
                    )
                    yield Input("20", id="steps", type="integer", classes="w-num")
                    yield Input("7", id="cfg", type="number", classes="w-num")
                    yield Input(
                        str(random.randrange(2**32)),  # noqa: S311  # a seed to vary images, no secret
                        id="seed",
                        type="integer",
                        classes="w-seed",
                    )
                    yield Button("New seed", id="new-seed", compact=True)
                with Horizontal(classes="label-row"):
                    yield Label("Width", classes="w-size")
                    yield Label("Height", classes="w-size")
                with Horizontal(classes="form-row"):
                    yield Select[str](
                        [(s, s) for s in SIZES],
                        value="512",
                        allow_blank=False,
                        id="width",
                        classes="w-size",
                    )
                    yield Select[str](
                        [(s, s) for s in SIZES],
                        value="512",
                        allow_blank=False,
                        id="height",
                        classes="w-size",
                    )
                    yield Button("Paste parameters…", id="paste-params", compact=True)
                with Horizontal(classes="label-row"):
                    yield Label("Schedule", classes="w-select")
                    for label in ("Clip skip", "Hires ×", "HR steps", "HR denoise"):
                        yield Label(label, classes="w-num")
                with Horizontal(classes="form-row"):
                    yield Select[str](
                        [(s, s) for s in SCHEDULES],
                        value=SCHEDULES[0],
                        allow_blank=False,
                        id="schedule",
                        classes="w-select",
                    )
                    yield Input("1", id="clip-skip", type="integer", classes="w-num")
                    yield Input(
                        "", id="hires-scale", type="number", placeholder="off", classes="w-num"
                    )
                    yield Input("0", id="hires-steps", type="integer", classes="w-num")
                    yield Input("0.5", id="hires-denoise", type="number", classes="w-num")
                yield Label("Plugins", classes="section")
                yield SelectionList[str](id="plugins")
                yield Static("", id="plugins-note")
                with Horizontal(classes="form-row"):
                    yield Button("Generate", id="run", variant="success")
                    yield ProgressBar(total=1.0, show_eta=False, id="gen-progress")
                    yield Label("", id="gen-text")
                yield Static("", id="gen-problems")
            with Vertical(id="gen-output"):
                yield PreviewPane(id="output")
                yield Static("", id="gen-result")
                yield Label("History", classes="section")
                yield OptionList(id="history")
                yield Button("Rerun selected", id="rerun", compact=True)
        yield JobsBar(id="jobs")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one(JobsBar).display = False
        self.query_one("#completions").display = False
        self.query_one("#gen-problems").display = False
        self.query_one("#output", PreviewPane).show_note("No image yet.")
        self.mgr.load_local_models()
        self.mgr.check_generation()
        self.mgr.load_history()
        for text in self.mgr.pending_prompt:
            self.insert_prompt_text(text)
        self.mgr.pending_prompt.clear()
        if self.mgr.pending_reuse is not None:
            self.apply_reuse(self.mgr.pending_reuse)
            self.mgr.pending_reuse = None
        self.mgr._jobs_changed()
        # After the first layout: focusing earlier scrolls the form past the prompt's label.
        self.call_after_refresh(self.query_one(PromptEditor).focus)

    # --- data from the App -----------------------------------------------------------------

    def show_state(
        self, state: ServiceState, samplers: list[str], plugins: list[tuple[str, str]]
    ) -> None:
        self.state = state
        banner = self.query_one("#gen-state", Static)
        if state.available and state.note:
            banner.update(Text.assemble(("Sandbox: ", "bold"), clean(state.note)))
            banner.display = True
        elif state.available:
            banner.update("")
            banner.display = False
        else:
            banner.update(
                Text.assemble(("Generation not available: ", "bold"), clean(state.reason))
            )
            banner.display = True
        self.query_one("#run", Button).disabled = not state.available
        if samplers:
            extra = [s for s in self.sampler_names if s not in samplers and s not in SAMPLERS]
            self.sampler_names = [*samplers, *extra]
            sampler = self.query_one("#sampler", Select)
            current = sampler.value
            sampler.set_options([(s, s) for s in self.sampler_names])
            sampler.value = current if current in self.sampler_names else samplers[0]
        selection = self.query_one("#plugins", SelectionList)
        selection.clear_options()
        for name, sha in plugins:
            selection.add_option((Text(clean(f"{name}  {sha[:12]}")), name))
        selection.display = bool(plugins)
        self.query_one("#plugins-note", Static).update(
            "" if plugins else "No vetted plugins (see the Sandbox screen, F4)."
        )

    def show_local_models(self, checkpoints: list[LocalModel], loras: list[LocalModel]) -> None:
        self.checkpoints, self.loras = checkpoints, loras
        select = self.query_one("#checkpoint", Select)
        select.set_options([(Text(clean(c.label)), i) for i, c in enumerate(checkpoints)])
        if checkpoints:
            select.value = 0
        self._select_wanted_checkpoint()
        self.query_one("#lora-pick", Select).set_options(
            [(Text(clean(lora.label)), i) for i, lora in enumerate(loras)]
        )
        self._update_lora_summary()

    def show_completions(self, prefix: str, items: list[Completion]) -> None:
        editor = self.query_one(PromptEditor)
        if prefix != editor.current_token():
            return  # typed on since
        self.completions, self.completion_prefix = items, prefix
        options = self.query_one("#completions", OptionList)
        options.clear_options()
        for item in items:
            label = Text(clean(item.text), style="bold")
            label.append(clean(f"  {item.kind} · {item.detail}"), style="dim")
            options.add_option(Option(label))
        visible = bool(items)
        options.display = visible
        editor.completion_open = visible
        if visible:
            options.highlighted = 0

    def show_progress(self, fraction: float | None, text: str) -> None:
        bar = self.query_one("#gen-progress", ProgressBar)
        if fraction is None:
            bar.update(total=None)
        else:
            bar.update(total=1.0, progress=fraction)
        self.query_one("#gen-text", Label).update(Text(clean(text)))

    def show_result(self, result: RunRecord, image: PILImage | None, elapsed_s: float) -> None:
        done = f"done in {elapsed_s:.1f} s · seed {result.seed}"
        if result.identical_to is not None:
            verdict = "identical bytes" if result.identical else "DIFFERENT bytes"
            done += f" · rerun of run {result.identical_to}: {verdict}"
        self.show_progress(1.0, done)
        output = self.query_one("#output", PreviewPane)
        if image is not None:
            output.show_image(image)
        else:
            output.show_note("The run produced no image.")
        self._show_outputs(f"run {result.run_id}", result.images)

    def _show_outputs(self, what: str, images: tuple[Path, ...]) -> None:
        """Where a run's images were written, under the picture."""
        text = Text(clean(what), style="bold")
        if images:
            text.append(" saved to ")
            text.append(clean(str(images[0])))
            if len(images) > 1:
                text.append(f" (+{len(images) - 1} more in that folder)", style="dim")
        else:
            text.append(" wrote no image", style="dim")
        self.query_one("#gen-result", Static).update(text)

    @on(OptionList.OptionHighlighted, "#history")
    def history_highlighted(self, event: OptionList.OptionHighlighted) -> None:
        run = next((r for r in self.runs if str(r.run_id) == event.option.id), None)
        if run is not None:
            self._show_outputs(f"run {run.run_id}", run.images)

    def show_check(self, check: GenerationCheck) -> None:
        """What the check before a run found, under the Generate button (empty: hidden)."""
        text = Text()
        for problem in check.problems:
            words = describe(problem)
            hint = words.hint if words is not None else ""
            if isinstance(problem, InvalidRequestError):
                line = problem.worded(FIELD_LABELS.get(problem.option, problem.option))
            else:
                line = words.message if words is not None else str(problem)
            text.append(f"✗ {clean(line)}\n", style="bold red")
            if hint:
                text.append(f"  {clean(hint)}\n", style="dim")
        if check.mismatch is not None:
            text.append(f"? {clean(check.mismatch.message)}\n", style="yellow")
        for warning in check.warnings:
            text.append(f"! {clean(warning.message)}\n", style="yellow")
        text.rstrip()
        box = self.query_one("#gen-problems", Static)
        box.update(text)
        box.display = bool(text.plain)
        if check.problems:
            self.show_progress(0.0, "not started: see below")

    def show_history(self, runs: list[RunRecord]) -> None:
        self.runs = runs
        history = self.query_one("#history", OptionList)
        history.clear_options()
        for run in runs:
            history.add_option(Option(Text(clean(run_label(run))), id=str(run.run_id)))
        if not runs:
            history.add_option(Option(Text("No runs yet.", style="dim"), disabled=True))

    # --- the prompt ------------------------------------------------------------------------

    def insert_prompt_text(self, text: str) -> None:
        """Append catalog text (a LoRA tag, trigger words) to the prompt, cleaned."""
        text = clean(text)
        editor = self.query_one(PromptEditor)
        current = editor.text.rstrip()
        editor.text = f"{current}, {text}" if current else text
        editor.move_cursor(editor.document.end)
        self._update_lora_summary()

    @on(PromptEditor.CompletionWanted)
    def completion_wanted(self, event: PromptEditor.CompletionWanted) -> None:
        if self._completion_timer is not None:
            self._completion_timer.stop()
        prefix = event.prefix
        self._completion_timer = self.set_timer(
            COMPLETION_DEBOUNCE_S, lambda: self.mgr.find_completions(prefix)
        )

    @on(PromptEditor.CompletionKey)
    def completion_key(self, event: PromptEditor.CompletionKey) -> None:
        options = self.query_one("#completions", OptionList)
        if event.key == "down":
            options.action_cursor_down()
        elif event.key == "up":
            options.action_cursor_up()
        elif event.key in ("tab", "enter") and options.highlighted is not None:
            self._accept_completion(options.highlighted)
        else:
            self._close_completions()

    @on(OptionList.OptionSelected, "#completions")
    def completion_clicked(self, event: OptionList.OptionSelected) -> None:
        self._accept_completion(event.option_index)
        self.query_one(PromptEditor).focus()

    def _accept_completion(self, index: int) -> None:
        if not 0 <= index < len(self.completions):
            return
        editor = self.query_one(PromptEditor)
        token = editor.current_token() or self.completion_prefix
        editor.replace_token(token, clean(self.completions[index].text))
        self._close_completions()
        self._update_lora_summary()

    def _close_completions(self) -> None:
        self.query_one("#completions").display = False
        self.query_one(PromptEditor).completion_open = False
        self.completions = []

    def action_complete(self) -> None:
        self.query_one(PromptEditor).request_completion()

    @on(TextArea.Changed, "#prompt")
    def prompt_changed(self) -> None:
        self._update_lora_summary()

    def _resolve_loras(self) -> tuple[list[tuple[str, LocalModel, float]], list[str]]:
        """The prompt's tags that name a local LoRA, as (tag name, LoRA, weight), and the
        names of those that do not; a tag the image's hash pinned names only that version."""
        by_name = {lora.lora_name.lower(): lora for lora in self.loras}
        by_version = {lora.version_id: lora for lora in self.loras}
        chosen, missing = [], []
        for name, weight in lora_tags(self.query_one(PromptEditor).text):
            pinned = self.pinned_tags.get(name)
            if name in self.unmatched_tags:
                model = None
            elif pinned is not None:
                model = by_version.get(pinned)
            else:
                model = by_name.get(name.lower())
            if model is None:
                missing.append(name)
            else:
                chosen.append((name, model, weight))
        return chosen, missing

    def _update_lora_summary(self) -> None:
        chosen, missing = self._resolve_loras()
        text = Text()
        for _, model, weight in chosen:
            text.append(clean(f"✓ {model.lora_name} ({weight:g})  "), style="green")
        for name in missing:
            text.append(clean(f"✗ {name} (not local)  "), style="red")
        if not chosen and not missing:
            text.append("No LoRAs in the prompt.", style="dim")
        self.query_one("#lora-summary", Static).update(text)

    @on(Button.Pressed, "#add-lora")
    def add_lora(self) -> None:
        index = self.query_one("#lora-pick", Select).value
        if not isinstance(index, int):
            self.notify("Pick a local LoRA first.", severity="warning", timeout=3)
            return
        lora = self.loras[index]
        try:
            weight = float(self.query_one("#lora-weight", Input).value or "1")
        except ValueError:
            weight = 1.0
        words = ", ".join(lora.trained_words)
        self.insert_prompt_text(
            f"<lora:{lora.lora_name}:{weight:g}>" + (f", {words}" if words else "")
        )

    # --- running ---------------------------------------------------------------------------

    def _int(self, widget_id: str, default: int) -> int:
        try:
            return int(self.query_one(widget_id, Input).value)
        except ValueError:
            return default

    def _float(self, widget_id: str, default: float) -> float:
        value = self._optional_float(widget_id)
        return default if value is None else value

    def _optional_float(self, widget_id: str) -> float | None:
        try:
            return float(self.query_one(widget_id, Input).value)
        except ValueError:
            return None

    def build_request(self) -> GenerateRequest:
        checkpoint_index = self.query_one("#checkpoint", Select).value
        checkpoint = (
            self.checkpoints[checkpoint_index] if isinstance(checkpoint_index, int) else None
        )
        chosen, _ = self._resolve_loras()
        schedule = str(self.query_one("#schedule", Select).value)
        return GenerateRequest(
            model=str(checkpoint.version_id) if checkpoint is not None else "",
            prompt=self.query_one(PromptEditor).text,
            negative=self.query_one("#negative", TextArea).text,
            # A pinned tag with no local file asks for its version: the check says to pull it.
            tag_versions={
                **self.pinned_tags,
                **{name: model.version_id for name, model, _ in chosen},
            },
            sampler=str(self.query_one("#sampler", Select).value),
            schedule_type=None if schedule == "Automatic" else schedule,
            steps=self._int("#steps", 20),
            cfg=self._float("#cfg", 7.0),
            seed=self._int("#seed", 0),
            width=int(str(self.query_one("#width", Select).value)),
            height=int(str(self.query_one("#height", Select).value)),
            clip_skip=self._int("#clip-skip", 1),
            hires_scale=self._optional_float("#hires-scale"),
            hires_steps=self._int("#hires-steps", 0),
            hires_denoise=self._float("#hires-denoise", 0.5),
            plugins=list(self.query_one("#plugins", SelectionList).selected),
        )

    @on(Button.Pressed, "#run")
    def action_run_generation(self) -> None:
        if not self.state.available:
            self.notify(
                f"Generation not available: {self.state.reason}", severity="error", markup=False
            )
            return
        request = self.build_request()
        if not request.prompt.strip():
            self.notify("Write a prompt first.", severity="warning", timeout=3)
            return
        missing = self._still_missing(request)
        if missing:
            self.show_check(GenerationCheck(problems=[MissingModelsError(missing)]))
            return
        self.show_progress(0.0, "checking…")
        self.mgr.check_generation_request(request)  # starts the run when the check passes

    @on(Button.Pressed, "#rerun")
    def action_rerun(self) -> None:
        index = self.query_one("#history", OptionList).highlighted
        if index is None or index >= len(self.runs):
            self.notify("Select a run in the history first.", severity="warning", timeout=3)
            return
        if not self.state.available:
            self.notify(
                f"Generation not available: {self.state.reason}", severity="error", markup=False
            )
            return
        self.show_progress(0.0, "starting…")
        self.mgr.start_generation(None, rerun_id=self.runs[index].run_id)

    @on(Button.Pressed, "#new-seed")
    def action_new_seed(self) -> None:
        # a seed to vary images, not a secret
        self.query_one("#seed", Input).value = str(random.randrange(2**32))  # noqa: S311

    # --- use this prompt / pasted parameters -----------------------------------------------

    def action_paste_parameters(self) -> None:
        def answered(text: str | None) -> None:
            if text is not None and text.strip():
                self.mgr.resolve_generation_data(text=text)

        self.mgr.push_screen(
            PasteModal(
                "Paste generation parameters",
                "An A1111 parameters block: the prompt, 'Negative prompt: ...' and the "
                "'Steps: ...' line. Every field is filled from it; models are found by hash.",
            ),
            answered,
        )

    @on(Button.Pressed, "#paste-params")
    def paste_pressed(self) -> None:
        self.action_paste_parameters()

    def apply_reuse(self, reuse: Reuse) -> None:
        """Fill every field from an image's generation data (`app.reuse`); what it leaves out
        or gives out of range keeps the form's value, as its notes say."""
        data, request = reuse.data, reuse.request
        self.reuse = reuse
        self.pinned_tags = dict(request.tag_versions)
        self.unmatched_tags = {m.tag for m in reuse.missing if m.tag and not m.version_id}
        checkpoint_missing = next((m for m in reuse.missing if m.ref.kind == "checkpoint"), None)
        self.wanted_checkpoint = None  # an image that names none keeps the form's checkpoint
        if reuse.checkpoint is not None:
            self.wanted_checkpoint = reuse.checkpoint.version_id
        elif checkpoint_missing is not None:
            self.wanted_checkpoint = checkpoint_missing.version_id or 0
        self.query_one(PromptEditor).text = clean(request.prompt, multiline=True)
        self.query_one("#negative", TextArea).text = clean(request.negative, multiline=True)
        for widget_id, value in (
            ("#steps", data.steps),
            ("#cfg", data.cfg),
            ("#seed", data.seed),
            ("#clip-skip", data.clip_skip or 1),
            ("#hires-steps", data.hires_steps or 0),
            ("#hires-denoise", data.hires_denoise or 0.5),
        ):
            if value is not None:
                self.query_one(widget_id, Input).value = _number(value)
        hires = "" if data.hires_scale is None else _number(data.hires_scale)
        self.query_one("#hires-scale", Input).value = hires
        if data.sampler is not None:
            self._choose("#sampler", data.sampler, self.sampler_names)
            self.query_one("#schedule", Select).value = data.schedule_type or "Automatic"
        for widget_id, size in (("#width", data.width), ("#height", data.height)):
            if size is not None:
                self._choose(widget_id, str(size), self.size_names)
        self._select_wanted_checkpoint()
        self._update_lora_summary()
        self.query_one(ReuseBox).show(reuse)
        self.query_one("#gen-problems").display = False
        self.notify("Filled from the image's generation data.", timeout=3)

    def _choose(self, widget_id: str, value: str, names: list[str]) -> None:
        """Select `value`, adding it to the choices when the list lacks it (832, "Euler
        Karras")."""
        select = self.query_one(widget_id, Select)
        if value not in names:
            names.append(value)
            if widget_id != "#sampler":
                names.sort(key=int)
            select.set_options([(n, n) for n in names])
        select.value = value

    def _select_wanted_checkpoint(self) -> None:
        if self.wanted_checkpoint is None:
            return
        select = self.query_one("#checkpoint", Select)
        index = next(
            (i for i, c in enumerate(self.checkpoints) if c.version_id == self.wanted_checkpoint),
            None,
        )
        if index is None:
            select.clear()  # not local: no other checkpoint stands in for the image's
        else:
            select.value = index
            self.wanted_checkpoint = None  # found; from now on the user's choice stands

    def _still_missing(self, request: GenerateRequest) -> list[Missing]:
        """What the image's request still lacks, less what was pulled since."""
        if self.reuse is None:
            return []
        local = {model.version_id for model in [*self.checkpoints, *self.loras]}
        return [
            m
            for m in self.reuse.missing_for(request)
            if not (m.version_id and m.version_id in local)
        ]

    @on(ReuseBox.PullWanted)
    def pull_missing(self, event: ReuseBox.PullWanted) -> None:
        for version_id, label in event.versions:
            self.mgr.enqueue_pull(version_id, label)
        self.notify("Queued; the jobs bar shows the downloads.", timeout=3)
