"""Front-end words for preview images: refused fetches and images, the image cache."""

from __future__ import annotations

from assetmgr.app.previews import NotStillImageError, PreviewHeldBackError
from assetmgr.store.image_cache import ImageCacheConflictError, ImageCacheFullError
from assetmgr.store.thumbnails import ImageRejectedError
from assetmgr.wording import Wording, words_for
from catalog.civitai.errors import ImageFetchError

_HOSTS = "image.civitai.com and the API's own origin"
_FETCH_WORDS: dict[str, tuple[str, str]] = {
    "host": (
        "Image refused",
        f"Previews are fetched only from {_HOSTS}; the catalog named another host, so nothing "
        "was fetched.",
    ),
    "redirect": (
        "Image refused",
        f"Previews follow redirects only within {_HOSTS}; nothing was fetched from the other host.",
    ),
    "content-type": (
        "Image refused",
        "Only JPEG, PNG and WebP previews are taken; the host sent something else.",
    ),
    "too-large": (
        "Image refused",
        "No preview is this large (an oversized or endless body): the image host may be "
        "hostile or misconfigured.",
    ),
    "status": ("Image unavailable", "The image host refused it (removed?); try again later."),
    "connection": (
        "Image unavailable",
        "Check the network connection; the preview is asked for again when next shown.",
    ),
}
_REJECT_HINTS = {
    "bomb": "It declares more pixels than any preview needs (a decompression bomb), so it was "
    "never decoded.",
    "truncated": "The image ends early (a broken or cut-off file).",
    "format": "Only JPEG, PNG and WebP images are decoded as previews.",
    "undecodable": "The bytes are not a valid image.",
}


@words_for(ImageFetchError)
def _image_fetch(exc: ImageFetchError) -> Wording:
    title, hint = _FETCH_WORDS.get(exc.reason, ("Image unavailable", "Try again later."))
    return Wording(title, exc.message, hint)


@words_for(ImageRejectedError)
def _image_rejected(exc: ImageRejectedError) -> Wording:
    return Wording("Image refused", exc.message, _REJECT_HINTS.get(exc.reason, ""))


@words_for(ImageCacheFullError)
def _cache_full(exc: ImageCacheFullError) -> Wording:
    return Wording(
        "Image cache full",
        exc.message,
        "Raise preview_cache_size in the config file (`assetmgr config show` prints it), or "
        "fetch fewer models (--model-id N, --local).",
    )


@words_for(ImageCacheConflictError)
def _cache_conflict(exc: ImageCacheConflictError) -> Wording:
    return Wording(
        "Image cache conflict",
        exc.message,
        "Move it out of the image cache folder, then run `assetmgr previews prune`.",
    )


@words_for(PreviewHeldBackError)
def _held_back(exc: PreviewHeldBackError) -> Wording:
    return Wording(
        "Above the NSFW threshold",
        exc.message,
        "Reveal it in the browser, pass --nsfw, or set nsfw_threshold in the config file.",
    )


@words_for(NotStillImageError)
def _not_still(exc: NotStillImageError) -> Wording:
    return Wording("Not an image", exc.message, "Videos and audio are not shown as previews.")
