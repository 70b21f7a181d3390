"""Front-end words for the app layer's errors (see `assetmgr.wording`)."""

from assetmgr.app.generate import NoCheckpointError
from assetmgr.wording import Wording, words_for


@words_for(NoCheckpointError)
def _no_checkpoint(exc: NoCheckpointError) -> Wording:
    return Wording("Generation failed", str(exc), "Pull a checkpoint, then pick it on this screen.")
