"""Preview images: what the catalog says each version shows, the image cache, and fetching.

`PreviewService` (``ctx.previews()``) is what both front ends use: `images` lists a version's
pictures (a preview imported from beside its model file first, then Civitai's in their
order), `cached` finds one in the cache, `fetch` brings one in, `prefetch` fills the cache in
the background for a selected model and its neighbours, `placeholder` draws a BlurHash at
once, and `held_back` applies the NSFW threshold. `fetch_previews` (``assetmgr previews
fetch``) and `prune` are the bulk use cases.

Every fetched image goes through `CivitaiClient.fetch_image` (its hosts, no credentials, a
capped body) and `assetmgr.store.thumbnails` (the pixel cap, a clean re-encode) before the
cache (`assetmgr.store.image_cache`) keeps it; a refusal leaves nothing behind. Images above
the threshold are never fetched in bulk or in the background, only when the user reveals one.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from assetmgr.errors import EXPECTED_ERRORS, AssetMgrError
from assetmgr.store.image_cache import (
    CachedImage,
    CacheUsage,
    ImageCache,
    ImageCacheFullError,
    PruneReport,
    sidecar_key,
)
from assetmgr.store.thumbnails import THUMBNAIL_BOX, make_thumbnail

if TYPE_CHECKING:
    from PIL.Image import Image as PILImage

    from assetmgr.app.context import AppContext

log = logging.getLogger(__name__)

FETCH_WORKERS = 4
PREFETCH_IMAGES_PER_VERSION = 10
PLACEHOLDER_SIDE = 32


@dataclass(frozen=True)
class CatalogImage:
    """One picture of a version: Civitai's (by URL) or the user's own (a sidecar preview)."""

    key: str
    """The image cache's key: the URL, or ``sidecar:<version id>``."""
    version_id: int
    model_id: int
    position: int
    url: str | None
    width: int | None
    height: int | None
    nsfw_level: int | None
    blurhash: str | None
    type: str | None
    meta: dict[str, Any] | None
    origin: str = "civitai"
    """``civitai`` or ``sidecar``."""
    model_name: str = ""
    version_name: str = ""

    @property
    def nsfw_name(self) -> str:
        """``PG``, ``PG-13``, ``R``, ``X``, ``XXX``, ``Blocked`` or ``unrated``."""
        from catalog import nsfw

        return nsfw.level_name(self.nsfw_level)

    @property
    def is_still(self) -> bool:
        """A still image (Civitai also lists videos and audio, which are not previewed)."""
        return self.type in (None, "image")


class PreviewHeldBackError(AssetMgrError):
    """A fetch of an image above the NSFW threshold that the user did not reveal."""

    def __init__(self, image: CatalogImage, threshold: str) -> None:
        self.image = image
        self.threshold = threshold
        super().__init__(f"image {image.key} is above the NSFW threshold ({threshold})")


class NotStillImageError(AssetMgrError):
    """An entry that is a video or audio, or has no URL: nothing to fetch as a preview."""

    def __init__(self, image: CatalogImage) -> None:
        self.image = image
        what = image.type if image.url else "without a URL"
        super().__init__(f"image {image.key} is a {what}, not a still image")


# --- the catalog's images --------------------------------------------------------------------


def _image_rows(
    session: Any,
    version_ids: Sequence[int] | None,
    model_ids: Sequence[int] | None,
    local_only: bool,
) -> list[CatalogImage]:
    from sqlalchemy import and_, select

    from assetmgr.app.queries.tables import _t
    from catalog.search import model_filters

    image, version, model = _t("image"), _t("model_version"), _t("model")
    query = (
        select(
            image.c.version_id,
            version.c.model_id,
            image.c.position,
            image.c.url,
            image.c.width,
            image.c.height,
            image.c.nsfw_level,
            image.c.blurhash,
            image.c.type,
            image.c.meta,
            model.c.name,
            version.c.name,
        )
        .select_from(
            image.join(version, version.c.id == image.c.version_id).join(
                model, model.c.id == version.c.model_id
            )
        )
        .order_by(model.c.id, version.c.position, version.c.id.desc(), image.c.position)
    )
    if version_ids is not None:
        query = query.where(image.c.version_id.in_(list(version_ids)))
    else:
        # The models in a subquery of their own: their filters look at all their versions,
        # not at the image's (which auto-correlation would make them do).
        chosen = select(model.c.id).where(and_(*model_filters(local_only=local_only)))
        if model_ids:
            chosen = chosen.where(model.c.id.in_(list(model_ids)))
        query = query.where(
            model.c.id.in_(chosen.correlate(None).scalar_subquery()), version.c.state != "gone"
        )
    out: list[CatalogImage] = []
    for r in session.execute(query):
        url = r[3] if isinstance(r[3], str) and r[3] else None
        out.append(
            CatalogImage(
                key=url or f"image:{r[0]}:{r[2]}",
                version_id=int(r[0]),
                model_id=int(r[1]),
                position=int(r[2]),
                url=url,
                width=r[4],
                height=r[5],
                nsfw_level=r[6],
                blurhash=r[7],
                type=r[8],
                meta=r[9] if isinstance(r[9], dict) else None,
                model_name=str(r[10] or ""),
                version_name=str(r[11] or ""),
            )
        )
    return out


def _sidecar_image(entry: CachedImage, model_id: int = 0) -> CatalogImage:
    return CatalogImage(
        key=entry.key,
        version_id=entry.version_id or 0,
        model_id=model_id,
        position=-1,
        url=None,
        width=entry.width,
        height=entry.height,
        nsfw_level=entry.nsfw_level,
        blurhash=None,
        type="image",
        meta=None,
        origin="sidecar",
    )


# --- the service -----------------------------------------------------------------------------


@dataclass
class FetchItem:
    """What became of one image in a bulk fetch or a prefetch."""

    image: CatalogImage
    state: str
    """``fetched``, ``cached`` (already there), ``skipped`` or ``failed``."""
    reason: str | None = None
    """Why skipped: ``nsfw``, ``not-still``, ``cache-full``, ``unreachable`` (the image host
    failed to answer several times in a row) or ``cancelled``."""
    error: Exception | None = None
    cached: CachedImage | None = None


@dataclass
class FetchReport:
    items: list[FetchItem] = field(default_factory=list)
    usage: CacheUsage | None = None
    threshold: str = "PG"
    cache_full: bool = False

    def count(self, state: str, reason: str | None = None) -> int:
        return sum(
            1 for i in self.items if i.state == state and (reason is None or i.reason == reason)
        )

    @property
    def failed(self) -> list[FetchItem]:
        return [i for i in self.items if i.state == "failed"]


class PreviewService:
    """Previews for one `AppContext` (see the module docstring); safe across threads."""

    def __init__(self, ctx: AppContext) -> None:
        self._ctx = ctx
        self._cache: ImageCache | None = None
        self._lock = threading.Lock()
        self._refused: dict[str, Exception] = {}
        self._inflight: dict[str, threading.Event] = {}

    @property
    def cache(self) -> ImageCache:
        with self._lock:
            if self._cache is None:
                from assetmgr import paths

                self._cache = ImageCache(
                    paths.image_cache_dir(), max_bytes=self._ctx.settings.preview_cache_bytes
                )
            return self._cache

    @property
    def threshold(self) -> str:
        return self._ctx.settings.nsfw_threshold

    def held_back(self, image: CatalogImage) -> bool:
        """Whether `image` is above the NSFW threshold: blurred, fetched only when revealed."""
        from catalog import nsfw

        return nsfw.above(
            image.nsfw_level,
            self._ctx.settings.nsfw_threshold_level,
            unrated_above=image.origin != "sidecar",
        )

    def images(self, version_ids: Sequence[int]) -> dict[int, list[CatalogImage]]:
        """Each version's pictures: its sidecar preview first, then Civitai's in order."""
        from catalog.db import session_scope

        with session_scope(self._ctx.engine) as session:
            rows = _image_rows(session, list(version_ids), None, False)
        out: dict[int, list[CatalogImage]] = {vid: [] for vid in version_ids}
        for image in rows:
            out.setdefault(image.version_id, []).append(image)
        own = self.cache.peek(sidecar_key(vid) for vid in version_ids)
        for vid in version_ids:
            entry = own.get(sidecar_key(vid))
            if entry is not None:
                model_id = out[vid][0].model_id if out[vid] else 0
                out[vid].insert(0, _sidecar_image(entry, model_id))
        return out

    def cached(self, image: CatalogImage | str) -> CachedImage | None:
        """The cached thumbnail of `image` (or of a key), marked as used; None if not cached."""
        return self.cache.get(image if isinstance(image, str) else image.key)

    def peek(self, images: Iterable[CatalogImage]) -> dict[str, CachedImage]:
        """The cached thumbnails among `images`, by key, without marking them used."""
        return self.cache.peek(i.key for i in images)

    def picture(self, image: CatalogImage | str) -> PILImage | None:
        """The cached thumbnail of `image` decoded (RGB or RGBA), marked as used; None when it
        is not cached. Never fetches: see `fetch`."""
        entry = self.cached(image)
        data = self.cache.read(entry) if entry is not None else None
        if data is None:
            return None
        import io

        from PIL import Image

        try:
            with Image.open(io.BytesIO(data), formats=("WEBP", "PNG")) as stored:
                stored.load()
                return stored.copy()
        except (OSError, SyntaxError, ValueError) as exc:  # not what the cache wrote
            log.warning("cached preview %s unreadable: %s", entry.path if entry else "?", exc)
            return None

    def placeholder(self, image: CatalogImage, *, side: int = PLACEHOLDER_SIDE) -> PILImage | None:
        """The image's BlurHash as a small RGB picture of its shape; None when it has none."""
        from PIL import Image

        from catalog import blurhash

        if not image.blurhash:
            return None
        w, h = image.width or 1, image.height or 1
        width = max(1, min(side, round(side * w / h) if w < h else side))
        height = max(1, min(side, round(side * h / w) if h < w else side))
        try:
            pixels = blurhash.decode(image.blurhash, width, height)
        except ValueError:
            return None
        return Image.frombytes("RGB", (width, height), pixels)

    def fetch(
        self,
        image: CatalogImage,
        *,
        reveal: bool = False,
        retry: bool = False,
        protect: Iterable[str] = (),
    ) -> CachedImage:
        """`image`'s thumbnail: from the cache, else fetched, checked and stored.

        An image above the threshold needs `reveal`. A refusal is remembered for this session
        (raised again without asking the network) unless `retry`. Raises `ImageFetchError`,
        `ImageRejectedError`, `ImageCacheFullError`, `PreviewHeldBackError`, ...
        """
        hit = self.cache.get(image.key)
        if hit is not None:
            return hit
        if image.url is None or not image.is_still:
            raise NotStillImageError(image)
        if not reveal and self.held_back(image):
            raise PreviewHeldBackError(image, self.threshold)
        with self._lock:
            known = None if retry else self._refused.get(image.key)
            waiting = self._inflight.get(image.key)
            if known is None and waiting is None:
                self._inflight[image.key] = threading.Event()
        if known is not None:
            raise known
        if waiting is not None:  # another thread is fetching it: wait for that one
            waiting.wait(60)
            return self.fetch(image, reveal=reveal, retry=retry, protect=protect)
        try:
            return self._fetch_new(image, protect)
        finally:
            with self._lock:
                self._inflight.pop(image.key).set()

    def _fetch_new(self, image: CatalogImage, protect: Iterable[str]) -> CachedImage:
        from catalog.civitai.errors import ImageFetchError
        from catalog.civitai.images import sized_url
        from catalog.redact import redact_url

        url = image.url or ""  # `fetch` checked there is one
        try:
            fetched = self._ctx.client().fetch_image(sized_url(url, THUMBNAIL_BOX))
            thumbnail = make_thumbnail(fetched.data, source=redact_url(url))
        except ImageFetchError as exc:
            if exc.reason != "connection":
                self._remember(image.key, exc)
            raise
        except AssetMgrError as exc:  # ImageRejectedError
            self._remember(image.key, exc)
            raise
        return self.cache.put(
            image.key,
            thumbnail,
            origin="civitai",
            version_id=image.version_id,
            nsfw_level=image.nsfw_level,
            protect=protect,
        )

    def _remember(self, key: str, exc: Exception) -> None:
        with self._lock:
            self._refused[key] = exc
        log.info("preview refused: %s", exc)

    def prefetch(
        self,
        model_id: int,
        neighbour_ids: Sequence[int] = (),
        *,
        cancel: threading.Event | None = None,
    ) -> list[FetchItem]:
        """Fill the cache for a selected model (up to `PREFETCH_IMAGES_PER_VERSION` images of
        each version) and then its neighbours (the first image of each version); images above
        the threshold are left out. Never raises for one image: each outcome is returned."""
        from catalog.db import session_scope

        ids = [model_id, *(n for n in neighbour_ids if n != model_id)]
        with session_scope(self._ctx.engine) as session:
            rows = _image_rows(session, None, ids, False)
        order = {mid: i for i, mid in enumerate(ids)}
        seen: dict[int, int] = {}
        chosen: list[CatalogImage] = []
        for image in sorted(rows, key=lambda i: order.get(i.model_id, len(ids))):
            limit = PREFETCH_IMAGES_PER_VERSION if image.model_id == model_id else 1
            if seen.get(image.version_id, 0) < limit:
                seen[image.version_id] = seen.get(image.version_id, 0) + 1
                chosen.append(image)
        return [self._one(image, cancel, include_nsfw=False) for image in chosen]

    def _one(
        self,
        image: CatalogImage,
        cancel: threading.Event | None,
        *,
        include_nsfw: bool,
        protect: Iterable[str] = (),
    ) -> FetchItem:
        if cancel is not None and cancel.is_set():
            return FetchItem(image, "skipped", "cancelled")
        if image.url is None or not image.is_still:
            return FetchItem(image, "skipped", "not-still")
        if not include_nsfw and self.held_back(image):
            return FetchItem(image, "skipped", "nsfw")
        hit = self.cache.get(image.key)
        if hit is not None:
            return FetchItem(image, "cached", cached=hit)
        try:
            return FetchItem(
                image, "fetched", cached=self.fetch(image, reveal=True, protect=protect)
            )
        except ImageCacheFullError as exc:
            return FetchItem(image, "skipped", "cache-full", error=exc)
        except EXPECTED_ERRORS as exc:
            return FetchItem(image, "failed", error=exc)


def image_object(
    image: CatalogImage, cached: CachedImage | None, *, above_threshold: bool
) -> dict[str, Any]:
    """One image of a version in `models show --json` (README "Model object")."""
    from catalog import nsfw

    return {
        "url": image.url,
        "source": image.origin,
        "width": image.width,
        "height": image.height,
        "nsfw_level": image.nsfw_level,
        "nsfw": nsfw.level_name(image.nsfw_level),
        "above_threshold": above_threshold,
        "blurhash": image.blurhash,
        "type": image.type,
        "meta": image.meta,
        "local_path": str(cached.path) if cached is not None else None,
    }


def add_images(ctx: AppContext, model: dict[str, Any]) -> None:
    """Put each version's ``images`` into a model object of the JSON contract."""
    service = ctx.previews()
    by_version = service.images([v["id"] for v in model.get("versions", [])])
    cached = service.peek(i for images in by_version.values() for i in images)
    for version in model.get("versions", []):
        version["images"] = [
            image_object(i, cached.get(i.key), above_threshold=service.held_back(i))
            for i in by_version.get(version["id"], [])
        ]


# --- bulk use cases --------------------------------------------------------------------------


FetchProgress = Callable[[int, int, FetchItem], None]
UNREACHABLE_AFTER = 3
"""Connection failures in a row after which a bulk fetch skips the rest (``unreachable``)."""


def _is_unreachable(error: Exception | None) -> bool:
    from catalog.civitai.errors import ImageFetchError

    return isinstance(error, ImageFetchError) and error.reason == "connection"


def _bulk_order(images: list[CatalogImage]) -> list[CatalogImage]:
    """Every version's first image before any version's second: a full cache still has one
    card per version."""
    firsts: list[CatalogImage] = []
    rest: list[CatalogImage] = []
    seen: set[int] = set()
    for image in images:
        (rest if image.version_id in seen else firsts).append(image)
        seen.add(image.version_id)
    return firsts + rest


def fetch_previews(
    ctx: AppContext,
    *,
    model_ids: Sequence[int] = (),
    local_only: bool = False,
    include_nsfw: bool = False,
    progress: FetchProgress | None = None,
    cancel: threading.Event | None = None,
    workers: int = FETCH_WORKERS,
) -> FetchReport:
    """Fetch the still images of the selected models into the cache (`assetmgr previews
    fetch`): `model_ids` (default: every model), only models with local files when
    `local_only`, images above the NSFW threshold only with `include_nsfw`.

    What this run fetched or found is protected from eviction while it runs, so when the cap is
    reached the rest is skipped (``cache-full``) instead of pushing out this run's own images.
    """
    from catalog.db import session_scope
    from catalog.errors import NotInCatalogError
    from catalog.models import Model

    service = ctx.previews()
    with session_scope(ctx.engine) as session:
        for model_id in model_ids:
            if session.get(Model, model_id) is None:
                raise NotInCatalogError(
                    f"model {model_id} is not in the catalog", kind="model", key=model_id
                )
        images = _bulk_order(_image_rows(session, None, list(model_ids), local_only))
    report = FetchReport(threshold=service.threshold)
    # Every image of the run, fetched yet or not: none of them is evicted for another.
    protect = frozenset(image.key for image in images)
    full = threading.Event()
    unreachable = threading.Event()
    done_lock = threading.Lock()
    done = 0
    failed_in_a_row = 0

    def one(image: CatalogImage) -> FetchItem:
        nonlocal done, failed_in_a_row
        if full.is_set():
            item = FetchItem(image, "skipped", "cache-full")
        elif unreachable.is_set():
            item = FetchItem(image, "skipped", "unreachable")
        else:
            item = service._one(image, cancel, include_nsfw=include_nsfw, protect=protect)
        with done_lock:
            if item.reason == "cache-full":
                full.set()
            if _is_unreachable(item.error):
                failed_in_a_row += 1
                if failed_in_a_row >= UNREACHABLE_AFTER:
                    unreachable.set()  # offline: not one more error line per image
            elif item.state == "fetched":
                failed_in_a_row = 0
            done += 1
            if progress is not None:
                progress(done, len(images), item)
        return item

    with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="previews") as pool:
        report.items = list(pool.map(one, images))
    report.cache_full = full.is_set()
    report.usage = service.cache.usage()
    return report


def prune(ctx: AppContext) -> tuple[PruneReport, CacheUsage]:
    """Bring the cache within its cap and drop what a crash left; see `ImageCache.prune`."""
    cache = ctx.previews().cache
    return cache.prune(), cache.usage()


def usage(ctx: AppContext) -> CacheUsage:
    return ctx.previews().cache.usage()


__all__ = [
    "CatalogImage",
    "FetchItem",
    "FetchReport",
    "NotStillImageError",
    "PreviewHeldBackError",
    "PreviewService",
    "add_images",
    "fetch_previews",
    "image_object",
    "prune",
    "usage",
]
