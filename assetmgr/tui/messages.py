"""App-wide messages: facts that workers post and the App's handlers act on.

Workers never touch widgets; they post one of these (thread-safe) and the App's ``@on``
handlers update the screens. Names are past-tense facts. Progress messages override
`can_replace`, so a burst from a fast download collapses into the latest one in the queue.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from textual.message import Message

if TYPE_CHECKING:
    from PIL.Image import Image as PILImage

    from assetmgr.app.previews import CatalogImage
    from assetmgr.app.queries import (
        BrowseQuery,
        Completion,
        Facets,
        LocalModel,
        ModelDetail,
        ModelRow,
    )
    from assetmgr.app.reuse import Reuse
    from assetmgr.tui.services import (
        GenerateRequest,
        GenerationCheck,
        RunRecord,
        SandboxInfo,
        ServiceState,
    )


# --- the catalog browser ---------------------------------------------------------------------


@dataclass
class ModelsPageLoaded(Message):
    """A page of the listing arrived; `generation` tells stale pages from current ones."""

    generation: int
    query: BrowseQuery
    offset: int
    rows: list[ModelRow]
    exhausted: bool
    """True when the page was short: there is nothing after it."""
    elapsed_s: float = 0.0


@dataclass
class ModelsCounted(Message):
    generation: int
    total: int


@dataclass
class FacetsLoaded(Message):
    facets: Facets


@dataclass
class UpdatesMarked(Message):
    """Model ids with an update available, for the listing's local column."""

    model_ids: set[int]


@dataclass
class ModelDetailLoaded(Message):
    detail: ModelDetail
    images: dict[int, list[CatalogImage]] = field(default_factory=dict)
    """Each version's pictures (`PreviewService.images`), for placeholders in the same frame."""


@dataclass
class PreviewLoaded(Message):
    """A preview decoded off the UI thread (or the reason there is none)."""

    version_id: int
    image: PILImage | None
    note: str = ""
    key: str | None = None
    """The gallery entry it is for (`assetmgr.tui.gallery.Entry.key`): a late one is dropped."""


@dataclass
class ImageMetaLoaded(Message):
    """A version's images again, with the generation data Civitai's images endpoint gave."""

    version_id: int
    images: list[CatalogImage]


# --- jobs: sync, pull, verify, delete, import ------------------------------------------------


@dataclass
class JobProgressed(Message):
    """A long job moved on; only the newest message per job matters."""

    job_id: str
    done: float
    total: float | None
    text: str = ""

    def can_replace(self, message: Message) -> bool:
        return isinstance(message, JobProgressed) and message.job_id == self.job_id


@dataclass
class JobFinished(Message):
    job_id: str
    summary: str
    result: Any = None


@dataclass
class CatalogChanged(Message):
    """Rows changed (a sync wrote models, a pull or delete changed local state)."""

    reason: str
    model_ids: list[int] = field(default_factory=list)


@dataclass
class DemoChecked(Message):
    """Whether the catalog is still the built-in demo (the browser's first-run banner)."""

    is_demo: bool


@dataclass
class UpdatesFound(Message):
    """The result of "check updates": (model id, newest version id) pairs, with labels."""

    updates: list[tuple[int, int, str]]


@dataclass
class DeletePlanned(Message):
    plan: Any
    label: str


# --- prompt editing and generation -----------------------------------------------------------


@dataclass
class CompletionsFound(Message):
    prefix: str
    items: list[Completion]


@dataclass
class LocalModelsLoaded(Message):
    checkpoints: list[LocalModel]
    loras: list[LocalModel]


@dataclass
class GenerationStateChecked(Message):
    state: ServiceState
    samplers: list[str]
    plugins: list[tuple[str, str]]


@dataclass
class GenerationRequestChecked(Message):
    """The check before a run (`GenerationService.check`) of the request the user asked for."""

    request: GenerateRequest
    check: GenerationCheck


@dataclass
class GenerationDataResolved(Message):
    """An image's generation data as a request, its models looked up (`app.reuse.Reuse`)."""

    reuse: Reuse


@dataclass
class GenerationProgressed(Message):
    job_id: str
    fraction: float | None
    text: str

    def can_replace(self, message: Message) -> bool:
        return isinstance(message, GenerationProgressed) and message.job_id == self.job_id


@dataclass
class GenerationFinished(Message):
    job_id: str
    result: RunRecord
    image: PILImage | None
    elapsed_s: float = 0.0


@dataclass
class HistoryLoaded(Message):
    runs: list[RunRecord]


@dataclass
class SandboxInfoLoaded(Message):
    info: SandboxInfo


# --- settings --------------------------------------------------------------------------------


@dataclass
class SettingsSaved(Message):
    summary: str


__all__ = [
    "CatalogChanged",
    "CompletionsFound",
    "DeletePlanned",
    "DemoChecked",
    "FacetsLoaded",
    "GenerationDataResolved",
    "GenerationFinished",
    "GenerationProgressed",
    "GenerationStateChecked",
    "HistoryLoaded",
    "JobFinished",
    "JobProgressed",
    "LocalModelsLoaded",
    "ModelDetailLoaded",
    "ModelsCounted",
    "ModelsPageLoaded",
    "PreviewLoaded",
    "SandboxInfoLoaded",
    "SettingsSaved",
    "UpdatesFound",
    "UpdatesMarked",
]
