"""Front-end words for the app layer's errors (see `assetmgr.wording`)."""

from assetmgr.app.batch import PromptLineError
from assetmgr.app.generate import NoCheckpointError
from assetmgr.app.genparams import GenerationDataError
from assetmgr.app.reuse import MissingModelsError, lookup_commands, pull_commands
from assetmgr.wording import Wording, describe, words_for

_DATA_HINTS = {
    "not-png": "Give the PNG an A1111-style tool wrote (it keeps a 'parameters' text chunk).",
    "too-large": "This is no generated image; give the PNG the tool wrote, not a scan or a render.",
    "bomb": "The image is larger than the pixel cap, so it is not decoded at all.",
    "chunk": "The PNG is damaged or built to exhaust memory; nothing was read from it.",
    "unreadable": "Check the file; a PNG that image viewers open is read the same way.",
    "none": "Paste the whole block: the prompt, 'Negative prompt: ...' and the 'Steps: ...' line.",
    "too-long": "A1111's parameters are a few hundred characters; this is not such a block.",
}


@words_for(NoCheckpointError)
def _no_checkpoint(exc: NoCheckpointError) -> Wording:
    return Wording("Generation failed", str(exc), "Pull a checkpoint, then pick it on this screen.")


@words_for(GenerationDataError)
def _generation_data(exc: GenerationDataError) -> Wording:
    return Wording(
        "Cannot read the generation data", exc.message, _DATA_HINTS[exc.problem], exc.exit_code
    )


@words_for(MissingModelsError)
def _missing_models(exc: MissingModelsError) -> Wording:
    parts = []
    pulls = pull_commands(exc.missing)
    if pulls:
        parts.append("Pull them: " + "; ".join(f"`{line}`" for line in pulls))
    lookups = lookup_commands(exc.missing)
    if lookups:
        others = "the others" if pulls else "them"
        parts.append(f"look {others} up on Civitai: " + "; ".join(f"`{x}`" for x in lookups))
    if not parts:
        parts.append("The image names them without a hash; pick local models in their place")
    hint = "; ".join(parts) + "."
    return Wording("Models not local", exc.message, hint[0].upper() + hint[1:], exc.exit_code)


@words_for(PromptLineError)
def _prompt_line(exc: PromptLineError) -> Wording:
    """The line's own problem, worded as usual, behind the file and line it came from."""
    cause = describe(exc.cause)
    if cause is None:  # not an error raised on purpose: still name the line
        return Wording("Invalid prompt file", str(exc), "", exc.exit_code)
    return Wording(
        cause.title, f"{exc.path} line {exc.line}: {cause.message}", cause.hint, cause.exit_code
    )
