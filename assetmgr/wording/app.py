"""Front-end words for the app layer's errors (see `assetmgr.wording`)."""

from assetmgr.app.batch import PromptLineError
from assetmgr.app.generate import NoCheckpointError
from assetmgr.wording import Wording, describe, words_for


@words_for(NoCheckpointError)
def _no_checkpoint(exc: NoCheckpointError) -> Wording:
    return Wording("Generation failed", str(exc), "Pull a checkpoint, then pick it on this screen.")


@words_for(PromptLineError)
def _prompt_line(exc: PromptLineError) -> Wording:
    """The line's own problem, worded as usual, behind the file and line it came from."""
    cause = describe(exc.cause)
    if cause is None:  # not an error raised on purpose: still name the line
        return Wording("Invalid prompt file", str(exc), "", exc.exit_code)
    return Wording(
        cause.title, f"{exc.path} line {exc.line}: {cause.message}", cause.hint, cause.exit_code
    )
