"""Checks of a generation request on the host, before any container starts or the engine is
contacted: every spec field against the job contract's bounds (`sandbox.protocol`, the worker's
own definition), sampler names, ``<lora:...>``/``<lyco:...>`` tags and ``--lora REF:WEIGHT``,
the model types of the files, and the base-model families of the LoRAs and the checkpoint.

The CLI (`assetmgr generate`) and the TUI's Generate screen call the same functions; the
errors carry the option at fault, the value and the reason, and leave the wording of titles
to the front ends. The host never imports the worker package: the contract is shared.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from assetmgr.errors import AssetMgrError
from sandbox.protocol import MAX_TIMEOUT_S, jobspec

if TYPE_CHECKING:
    from assetmgr.app.generation import GenerateRequest, LocalAsset

#: GenerateRequest field -> the `assetmgr generate` option that sets it.
OPTION_FLAGS: dict[str, str] = {
    "model": "--model",
    "prompt": "--prompt",
    "negative": "--negative",
    "loras": "--lora",
    "steps": "--steps",
    "cfg": "--cfg",
    "seed": "--seed",
    "width": "--width",
    "height": "--height",
    "batch": "--batch",
    "sampler": "--sampler",
    "schedule_type": "--schedule-type",
    "clip_skip": "--clip-skip",
    "hires_scale": "--hires-scale",
    "hires_steps": "--hires-steps",
    "hires_denoise": "--hires-denoise",
    "dtype": "--dtype",
    "device": "--device",
    "threads": "--threads",
    "timeout_s": "--timeout",
    "count": "--count",
    "prompt_file": "--prompt-file",
}
#: GenerateRequest field -> the GenSpec field whose bound it must meet.
_BOUNDED: dict[str, str] = {
    "steps": "steps",
    "cfg": "cfg_scale",
    "seed": "seed",
    "width": "width",
    "height": "height",
    "batch": "batch_size",
    "clip_skip": "clip_skip",
    "threads": "threads",
}
_TAG_FIELDS = {"prompt": "prompt", "negative_prompt": "negative"}
_TAG_HINTS = {
    "syntax": "Write LoRA tags as <lora:NAME:WEIGHT> (or <lyco:...>), e.g. <lora:inkwash:0.8>.",
    "unsupported": "Remove the tag: the sandbox runs <lora:...> and <lyco:...> networks only.",
    "duplicate": "Tag each LoRA once, with the weight you want.",
    "negative": "Move the tag into the prompt; LoRAs apply to the whole image.",
}


class InvalidRequestError(AssetMgrError):
    """A generation request the worker would refuse, found before anything ran.

    `option` is the `GenerateRequest` field at fault (`OPTION_FLAGS` names its CLI option),
    `value` the value given (None where the reason says it all).
    """

    title = "Invalid generation request"
    hint = "See `assetmgr generate --help` for the options and their ranges."
    exit_code = 2

    def __init__(
        self,
        option: str,
        reason: str,
        *,
        value: object = None,
        hint: str | None = None,
        message: str | None = None,
    ) -> None:
        self.option = option
        self.reason = reason
        self.value = value
        self._own_message = message is not None
        super().__init__(message or self.worded(OPTION_FLAGS.get(option, option)), hint=hint)

    def worded(self, name: str) -> str:
        """The problem, naming the option as `name` (a CLI flag, or a label in the TUI)."""
        if self._own_message:
            return self.message
        if self.value is None:
            return f"{name}: {self.reason}"
        return f"{name} {_shown(self.value)} {self.reason}"


class PromptTagError(InvalidRequestError):
    """A malformed or misplaced extra-network tag; `tag` is its text, `position` 0-based."""

    def __init__(
        self, option: str, reason: str, *, tag: str, position: int, kind: str = "syntax"
    ) -> None:
        self.tag = tag
        self.position = position
        self.kind = kind
        super().__init__(
            option,
            f"{tag!r} at character {position + 1}: {reason}",
            hint=_TAG_HINTS.get(kind, _TAG_HINTS["syntax"]),
        )


class UnknownSamplerError(InvalidRequestError):
    def __init__(self, name: str, suggestions: Sequence[str], reason: str) -> None:
        self.suggestions = list(suggestions)
        if self.suggestions:
            reason += "; did you mean " + " or ".join(repr(s) for s in self.suggestions) + "?"
        known = ", ".join(jobspec.SAMPLER_NAMES)
        suffixes = " or ".join(repr(" " + s) for s in jobspec.SCHEDULE_SUFFIXES)
        super().__init__(
            "sampler",
            reason,
            value=name,
            hint=f"Samplers (any case): {known}; add {suffixes} for those schedules.",
        )


class WrongModelTypeError(InvalidRequestError):
    """A file of another catalog type than the option takes (a LoRA as the checkpoint...)."""

    def __init__(self, option: str, ref: str, model_type: str, model_name: str) -> None:
        self.ref = ref
        self.model_type = model_type
        self.model_name = model_name
        if option == "model":
            reason = f"{ref!r} is a {model_type}, not a checkpoint"
            hint = (
                "Give LoRAs as --lora REF:WEIGHT or <lora:NAME:WEIGHT> in the prompt, and a "
                "checkpoint as --model (`assetmgr models list --local` shows the types)."
            )
        else:
            reason = f"{ref!r} is a {model_type}, not a LoRA"
            hint = (
                "Give the checkpoint as --model; --lora and <lora:...> tags take LORA, LoCon "
                "or DoRA files (`assetmgr models list --local` shows the types)."
            )
        super().__init__(option, reason, hint=hint, message=reason)


class BaseModelMismatchError(InvalidRequestError):
    """A LoRA made for another base-model family than the checkpoint's."""

    def __init__(self, lora: LocalAsset, checkpoint: LocalAsset, lora_ref: str) -> None:
        self.lora_name = lora_ref
        self.lora_base = lora.base_model or "?"
        self.checkpoint_name = checkpoint.alias
        self.checkpoint_base = checkpoint.base_model or "?"
        reason = (
            f"{lora_ref!r} is a LoRA for {self.lora_base}; the checkpoint "
            f"{checkpoint.alias!r} is {self.checkpoint_base}"
        )
        super().__init__(
            "loras",
            reason,
            message=reason,
            hint=(
                f"Pick a LoRA made for {self.checkpoint_base}, or pass --allow-mismatch to run "
                "it anyway (the worker still refuses tensors that do not fit)."
            ),
        )


@dataclass(frozen=True)
class GenerationWarning:
    """Something the run goes ahead with: an overridden mismatch, an unknown base model."""

    kind: Literal["mismatch", "unknown_base"]
    message: str


def _shown(value: object) -> str:
    if isinstance(value, float):
        return _number(value)
    if isinstance(value, str):
        return repr(value)
    return str(value)


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def _bound_problem(option: str, value: float, bound: jobspec.Bound) -> InvalidRequestError | None:
    if bound.allows(value):
        return None
    flag = OPTION_FLAGS[option]
    span = f"from {_number(bound.lo)} to {_number(bound.hi)}"
    if bound.lo <= value <= bound.hi and bound.multiple_of:
        step = bound.multiple_of
        below = max(int(value) // step * step, int(bound.lo))
        above = min(below + step, int(bound.hi))
        return InvalidRequestError(
            option,
            f"is not a multiple of {step}",
            value=value,
            hint=f"Use a multiple of {step} {span}, e.g. {flag} {below} or {flag} {above}.",
        )
    steps = f" in steps of {bound.multiple_of}" if bound.multiple_of else ""
    return InvalidRequestError(
        option,
        f"is out of range ({_number(bound.lo)} to {_number(bound.hi)})",
        value=value,
        hint=f"{flag} takes a value {span}{steps}.",
    )


def tag_problem(exc: jobspec.TagError) -> PromptTagError:
    """A `jobspec.TagError` of the request's prompts, as the request's error."""
    return PromptTagError(
        _TAG_FIELDS.get(exc.field, exc.field),
        exc.problem,
        tag=exc.tag,
        position=exc.position,
        kind=exc.kind,
    )


def parse_lora_option(text: str) -> tuple[str, float]:
    """``--lora REF[:WEIGHT]`` -> (ref, weight); the weight defaults to 1."""
    ref, sep, weight = text.rpartition(":")
    if not sep:
        ref, weight = text, ""
    ref = ref.strip()
    hint = "Use --lora REF:WEIGHT, e.g. --lora inkwash:0.8 (a REF with ':' needs the weight)."
    if not ref:
        raise InvalidRequestError("loras", "has no LoRA before the weight", value=text, hint=hint)
    if any(c in ref for c in "<>"):
        raise InvalidRequestError("loras", "is a tag; give the LoRA's name", value=text, hint=hint)
    if not sep:
        return ref, 1.0
    try:
        return ref, jobspec.parse_weight(weight)
    except ValueError:
        raise InvalidRequestError(
            "loras", f"has a weight {weight.strip()!r} that is not a number", value=text, hint=hint
        ) from None


def request_problems(req: GenerateRequest) -> list[InvalidRequestError]:
    """Everything wrong with a request that needs no catalog: bounds, choices, text lengths,
    the sampler name and the prompt's tags. Empty when the worker would accept it."""
    problems: list[InvalidRequestError] = []
    for option, spec_field in _BOUNDED.items():
        value = getattr(req, option)
        if value is None and option == "threads":
            continue
        problem = _bound_problem(option, value, jobspec.BOUNDS[spec_field])
        if problem is not None:
            problems.append(problem)
    for option, choices in (("dtype", jobspec.DTYPES), ("device", jobspec.DEVICES)):
        if getattr(req, option) not in choices:
            problems.append(
                InvalidRequestError(
                    option,
                    f"is not one of {', '.join(choices)}",
                    value=getattr(req, option),
                    hint=f"{OPTION_FLAGS[option]} takes {' or '.join(choices)}.",
                )
            )
    if req.dtype == "float16" and req.device == "cpu":
        problems.append(
            InvalidRequestError(
                "dtype",
                "needs --device cuda (float16 on a CPU is emulated and very slow)",
                value=req.dtype,
                hint="Use --dtype float32 or bfloat16 on the CPU.",
            )
        )
    if not 0 < req.timeout_s <= MAX_TIMEOUT_S:
        problems.append(
            InvalidRequestError(
                "timeout_s",
                f"is out of range (more than 0, at most {MAX_TIMEOUT_S} seconds)",
                value=req.timeout_s,
                hint="--timeout takes seconds, e.g. --timeout 1800.",
            )
        )
    for option in ("prompt", "negative"):
        text = getattr(req, option)
        if len(text) > jobspec.PROMPT_MAX_CHARS:
            problems.append(
                InvalidRequestError(
                    option,
                    f"is {len(text)} characters long; at most {jobspec.PROMPT_MAX_CHARS}",
                    hint="Shorten it; the sandbox takes at most that much text.",
                )
            )
    try:
        jobspec.split_sampler(req.sampler)
    except jobspec.SamplerNameError as exc:
        problems.append(UnknownSamplerError(req.sampler, exc.suggestions, "is not a sampler"))
    else:
        problems.extend(_schedule_problems(req))
    problems.extend(_hires_problems(req))
    try:
        tags = jobspec.check_prompt_tags(req.prompt, req.negative)
    except jobspec.TagError as exc:
        problems.append(tag_problem(exc))
        tags = []
    refs = {ref for ref, _ in req.loras} | {t.name for t in tags}
    if len(refs) > jobspec.MAX_LORAS:
        problems.append(
            InvalidRequestError(
                "loras",
                f"{len(refs)} LoRAs in one job; at most {jobspec.MAX_LORAS}",
                hint="Split the LoRAs over several runs.",
            )
        )
    return problems


def _schedule_problems(req: GenerateRequest) -> list[InvalidRequestError]:
    if req.schedule_type is None:
        return []
    known = ", ".join(jobspec.SCHEDULE_TYPES)
    if req.schedule_type.strip().lower() not in {s.lower() for s in jobspec.SCHEDULE_TYPES}:
        return [
            InvalidRequestError(
                "schedule_type",
                "is not a schedule type",
                value=req.schedule_type,
                hint=f"--schedule-type takes {known} (any case).",
            )
        ]
    try:
        jobspec.split_sampler(req.sampler, req.schedule_type)
    except jobspec.SamplerNameError:
        return [
            InvalidRequestError(
                "schedule_type",
                f"conflicts with the sampler {req.sampler!r}",
                value=req.schedule_type,
                hint="Name the schedule once: in --sampler (DPM++ 2M Karras) or --schedule-type.",
            )
        ]
    return []


def _hires_problems(req: GenerateRequest) -> list[InvalidRequestError]:
    """The hires fix's fields against `jobspec.HiresSpec` (only when it is asked for)."""
    if req.hires_scale is None:
        return []
    problems: list[InvalidRequestError] = []
    if not 1.0 < req.hires_scale <= 4.0:
        problems.append(
            InvalidRequestError(
                "hires_scale",
                "is out of range (more than 1, at most 4)",
                value=float(req.hires_scale),
                hint="--hires-scale takes an upscale factor such as 1.5 or 2.",
            )
        )
    steps = _bound_problem("hires_steps", req.hires_steps, jobspec.HIRES_STEPS)
    if steps is not None:
        problems.append(steps)
    if not 0.0 < req.hires_denoise <= 1.0:
        problems.append(
            InvalidRequestError(
                "hires_denoise",
                "is out of range (more than 0, at most 1)",
                value=float(req.hires_denoise),
                hint="--hires-denoise takes a strength such as 0.5.",
            )
        )
    return problems


def validate_request(req: GenerateRequest) -> None:
    """Raise the first of `request_problems`."""
    problems = request_problems(req)
    if problems:
        raise problems[0]


def family_check(
    checkpoint: LocalAsset, loras: Sequence[tuple[str, LocalAsset]], *, allow_mismatch: bool
) -> list[GenerationWarning]:
    """Refuse a LoRA of another base-model family than the checkpoint (`BaseModelMismatchError`)
    unless `allow_mismatch`; a base model the catalog cannot place only warns."""
    from catalog.updates import known_base_model_family

    warnings: list[GenerationWarning] = []
    checkpoint_family = known_base_model_family(checkpoint.base_model)
    for ref, lora in loras:
        lora_family = known_base_model_family(lora.base_model)
        if checkpoint_family is None or lora_family is None:
            warnings.append(
                GenerationWarning(
                    "unknown_base",
                    f"cannot check that LoRA {ref!r} ({lora.base_model or 'no base model'}) "
                    f"fits the checkpoint {checkpoint.alias!r} "
                    f"({checkpoint.base_model or 'no base model'})",
                )
            )
            continue
        if lora_family == checkpoint_family:
            continue
        mismatch = BaseModelMismatchError(lora, checkpoint, ref)
        if not allow_mismatch:
            raise mismatch
        warnings.append(GenerationWarning("mismatch", mismatch.message + " (--allow-mismatch)"))
    return warnings


__all__ = [
    "OPTION_FLAGS",
    "BaseModelMismatchError",
    "GenerationWarning",
    "InvalidRequestError",
    "PromptTagError",
    "UnknownSamplerError",
    "WrongModelTypeError",
    "family_check",
    "parse_lora_option",
    "request_problems",
    "tag_problem",
    "validate_request",
]
