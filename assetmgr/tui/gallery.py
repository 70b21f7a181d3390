"""The detail pane's example images: which ones a version has, stepping through them, and the
words under each (position, NSFW level, generation data).

The screen owns one `Gallery`. The images come with the detail (`ModelDetailLoaded.images`,
listed off the UI thread by `ctx.previews().images`), so the BlurHash placeholder is drawn in
the same frame as the detail pane; the thumbnail is then read from the cache or fetched by a
worker (`WorkersMixin.load_gallery_image`), and a result for an image no longer shown is
dropped. Images above the NSFW threshold stay blurred and are fetched only once revealed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.text import Text

from assetmgr.display import clean

if TYPE_CHECKING:
    from assetmgr.app.previews import CatalogImage
    from assetmgr.app.queries import VersionDetail

PROMPT_CHARS = 400
RESOURCES_SHOWN = 6


@dataclass(frozen=True)
class Entry:
    """One picture the pane can show: Civitai's image (by the preview service), a picture on
    disk standing in for it (the demo catalog's bundled PNG, a user's ``previews/`` file), or
    both (the file is drawn, the image's generation data shown)."""

    image: CatalogImage | None
    path: Path | None = None

    @property
    def key(self) -> str:
        if self.path is not None:
            return f"file:{self.path}"
        return self.image.key if self.image is not None else ""

    @property
    def meta(self) -> dict[str, Any] | None:
        return self.image.meta if self.image is not None else None


def entries_for(version: VersionDetail, images: list[CatalogImage]) -> list[Entry]:
    """The version's pictures in order; a picture on disk stands in for the first one."""
    entries = [Entry(image) for image in images]
    path = version.preview_path
    if path is not None and not any(i.origin == "sidecar" for i in images):
        if entries:
            entries[0] = Entry(entries[0].image, path)
        else:
            entries.append(Entry(None, path))
    return entries


def _resources(meta: dict[str, Any]) -> list[str]:
    from assetmgr.app.genparams import from_civitai_meta

    data = from_civitai_meta(meta)
    out = []
    if data.checkpoint is not None:
        out.append(data.checkpoint.label)
    for lora in data.loras:
        weight = f":{lora.weight:g}" if lora.weight is not None else ""
        out.append(f"{lora.label}{weight}")
    return out


def generation_text(meta: dict[str, Any] | None) -> Text:
    """An image's generation data in a few lines, every value cleaned (never markup)."""
    from assetmgr.app.genparams import from_civitai_meta

    if not meta:
        return Text("no generation data", style="dim")
    data = from_civitai_meta(meta)
    text = Text()

    def line(label: str, value: str) -> None:
        if value:
            short = value if len(value) <= PROMPT_CHARS else value[:PROMPT_CHARS] + " …"
            text.append(f"{label:<9}", style="dim")
            text.append(clean(short) + "\n")

    line("prompt", data.prompt)
    line("negative", data.negative)
    settings = [
        data.sampler or "",
        data.schedule_type or "",
        f"{data.steps} steps" if data.steps is not None else "",
        f"CFG {data.cfg:g}" if data.cfg is not None else "",
        f"seed {data.seed}" if data.seed is not None else "",
        f"{data.width}×{data.height}" if data.width and data.height else "",
        f"clip skip {data.clip_skip}" if data.clip_skip is not None else "",
    ]
    line("settings", " · ".join(s for s in settings if s))
    resources = _resources(meta)
    more = f" +{len(resources) - RESOURCES_SHOWN}" if len(resources) > RESOURCES_SHOWN else ""
    line("models", ", ".join(resources[:RESOURCES_SHOWN]) + more)
    if not text.plain:
        return Text("no generation data", style="dim")
    text.rstrip()
    return text


def caption(index: int, entries: list[Entry], keys: str, *, held: str | None) -> Text:
    """``image 2 of 5 · R · 832×1216`` and how to step (only when there is more than one)."""
    entry = entries[index]
    text = Text(f"image {index + 1} of {len(entries)}", style="bold")
    image = entry.image
    if image is not None:
        if image.nsfw_level is not None:
            text.append(f" · {image.nsfw_name}", style="red" if held else "")
        if image.width and image.height:
            text.append(f" · {image.width}×{image.height}", style="dim")
        if not image.is_still:
            text.append(f" · {clean(image.type or '?')}", style="dim")
    if held:
        text.append(f" · {held}", style="red")
    if len(entries) > 1:
        text.append(f"  ({keys} to step)", style="dim")
    return text


def failure_note(exc: BaseException) -> str:
    """One line for an image that could not be shown: offline, or refused and why."""
    from assetmgr.wording import describe

    words = describe(exc)
    why = words.message if words is not None else type(exc).__name__
    # `ImageFetchError.reason` (the front ends do not import catalog): no connection at all.
    if getattr(exc, "reason", None) == "connection":
        return f"Civitai previews need the network: {why}"
    return f"Preview refused: {why}"
