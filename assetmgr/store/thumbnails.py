"""Hostile image bytes in, a small clean thumbnail out: the one decode path for previews.

Every preview the image cache keeps passes here, whether it came from the network or from a
file beside an imported model. The bytes must be a JPEG, PNG or WebP image (Pillow's other
decoders are never tried), of at most `MAX_SOURCE_PIXELS` pixels as declared in the header,
checked before a pixel is decoded: a decompression bomb is a small file that declares a huge
canvas. Pillow's own `DecompressionBombWarning` is an error here too. A truncated image is
refused (Pillow's ``LOAD_TRUNCATED_IMAGES`` is never used). What is kept is a new image built
from the decoded pixels only, scaled into `THUMBNAIL_BOX` and encoded as WebP (PNG where
Pillow has no WebP): no EXIF, ICC profile, text chunks or anything else of the source.
"""

from __future__ import annotations

import io
import re
import warnings
import zlib
from dataclasses import dataclass
from typing import Final

from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError, features

from assetmgr.errors import StoreError

THUMBNAIL_BOX: Final = 512
"""The largest side of a stored preview: what the TUI's preview pane draws (terminals scale
it down further)."""
MAX_SOURCE_PIXELS: Final = 36_000_000
"""The largest canvas decoded (6000x6000): above any preview or example image, below Pillow's
own bomb limit, so this check always comes first."""
MAX_SOURCE_SIDE: Final = 16_383
SOURCE_FORMATS: Final = ("JPEG", "PNG", "WEBP")
THUMBNAIL_SUFFIX: Final = ".webp" if features.check("webp") else ".png"
_THUMBNAIL_FORMAT: Final = "WEBP" if THUMBNAIL_SUFFIX == ".webp" else "PNG"
_PILLOW_PIXELS_RE = re.compile(r"\((\d+) pixels\)")


class ImageRejectedError(StoreError):
    """Image bytes that were not turned into a thumbnail; nothing of them was kept.

    `reason` is ``format`` (not a JPEG, PNG or WebP image), ``bomb`` (declares more than
    `limit` pixels: `width` x `height`), ``truncated`` or ``undecodable``; `source` names
    where the bytes came from (a redacted URL or a path).
    """

    def __init__(
        self,
        source: str,
        reason: str,
        detail: str,
        *,
        width: int | None = None,
        height: int | None = None,
        limit: int | None = None,
    ) -> None:
        self.source = source
        self.reason = reason
        self.detail = detail
        self.width = width
        self.height = height
        self.limit = limit
        super().__init__(f"image {source} {detail}; refused, nothing was kept")


@dataclass(frozen=True)
class Thumbnail:
    data: bytes
    """The encoded thumbnail (`THUMBNAIL_SUFFIX`'s format)."""
    width: int
    height: int
    source_format: str
    source_width: int
    source_height: int


def _bomb_as_error() -> None:
    """Make Pillow's bomb warning an exception in every thread, for good.

    (`warnings.catch_warnings` would do it for one block, but it swaps process-wide state and
    is not safe with the TUI's worker threads.)
    """
    first = warnings.filters[0] if warnings.filters else None
    if first is not None and first[0] == "error" and first[2] is Image.DecompressionBombWarning:
        return
    # In front, so no earlier "ignore" (someone else's) wins over it.
    warnings.filterwarnings("error", category=Image.DecompressionBombWarning)


def _open(data: bytes, source: str) -> Image.Image:
    try:
        image = Image.open(io.BytesIO(data), formats=SOURCE_FORMATS)
    except UnidentifiedImageError:
        raise ImageRejectedError(source, "format", "is not a JPEG, PNG or WebP image") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        # Pillow's own limit (above ours) stopped it while reading the header.
        declared = _PILLOW_PIXELS_RE.search(str(exc))
        pixels = f"{declared.group(1)} pixels" if declared else "a canvas"
        raise ImageRejectedError(
            source,
            "bomb",
            f"declares {pixels}, over the {MAX_SOURCE_PIXELS}-pixel limit (a decompression bomb?)",
            limit=MAX_SOURCE_PIXELS,
        ) from None
    except (OSError, SyntaxError, ValueError, EOFError, zlib.error) as exc:
        raise ImageRejectedError(
            source, "undecodable", f"cannot be decoded ({exc!s:.80})"
        ) from None
    return image


def _check_canvas(image: Image.Image, source: str, max_pixels: int) -> None:
    width, height = image.size
    if width <= 0 or height <= 0 or width > MAX_SOURCE_SIDE or height > MAX_SOURCE_SIDE:
        raise ImageRejectedError(
            source, "bomb", f"declares {width}x{height} pixels", width=width, height=height
        )
    if width * height > max_pixels:
        raise ImageRejectedError(
            source,
            "bomb",
            f"declares {width}x{height} pixels, over the {max_pixels}-pixel limit "
            "(a decompression bomb?)",
            width=width,
            height=height,
            limit=max_pixels,
        )


def _decode(image: Image.Image, source: str, box: int) -> Image.Image:
    """The decoded pixels, upright, in RGB or RGBA; a JPEG is decoded at a reduced scale."""
    if image.format == "JPEG":
        image.draft("RGB", (box, box))  # libjpeg scales by 1/2..1/8 while decoding
    try:
        image.load()
        if ImageFile.LOAD_TRUNCATED_IMAGES:  # someone else's setting must not let one through
            raise OSError("image file is truncated (truncated images are accepted globally)")
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageRejectedError(source, "bomb", f"is a decompression bomb ({exc})") from None
    except OSError as exc:
        if "truncated" in str(exc):
            raise ImageRejectedError(source, "truncated", "is truncated") from None
        raise ImageRejectedError(
            source, "undecodable", f"cannot be decoded ({exc!s:.80})"
        ) from None
    except (SyntaxError, ValueError, EOFError, zlib.error, MemoryError) as exc:
        reason = "truncated" if isinstance(exc, EOFError) else "undecodable"
        what = "is truncated" if reason == "truncated" else f"cannot be decoded ({exc!s:.80})"
        raise ImageRejectedError(source, reason, what) from None
    try:
        upright = ImageOps.exif_transpose(image) or image
    except Exception:  # a broken orientation tag costs the rotation, not the preview
        upright = image
    has_alpha = upright.mode in ("RGBA", "LA", "PA") or "transparency" in upright.info
    return upright.convert("RGBA" if has_alpha else "RGB")


def make_thumbnail(
    data: bytes,
    *,
    source: str,
    box: int = THUMBNAIL_BOX,
    max_pixels: int = MAX_SOURCE_PIXELS,
) -> Thumbnail:
    """A clean thumbnail of the image in `data`; `ImageRejectedError` when it is not one.

    `source` names the bytes in errors (a redacted URL or a path).
    """
    _bomb_as_error()
    with _open(data, source) as image:
        _check_canvas(image, source, max_pixels)
        source_format = str(image.format)
        source_width, source_height = image.size
        pixels = _decode(image, source, box)
    pixels.thumbnail((box, box), Image.Resampling.LANCZOS)
    # A new image from the raw pixels: nothing of the source's metadata can come along.
    clean = Image.frombytes(pixels.mode, pixels.size, pixels.tobytes())
    out = io.BytesIO()
    if _THUMBNAIL_FORMAT == "WEBP":
        clean.save(out, format="WEBP", quality=82, method=4)
    else:
        clean.save(out, format="PNG", optimize=False)
    return Thumbnail(
        out.getvalue(), clean.width, clean.height, source_format, source_width, source_height
    )


def to_png(data: bytes, *, source: str) -> bytes:
    """A thumbnail (or any image `make_thumbnail` takes) as PNG bytes, for a ``.preview.png``."""
    thumb = make_thumbnail(data, source=source)
    with Image.open(io.BytesIO(thumb.data), formats=(_THUMBNAIL_FORMAT,)) as image:
        image.load()
        clean = Image.frombytes(image.mode, image.size, image.tobytes())
    out = io.BytesIO()
    clean.save(out, format="PNG")
    return out.getvalue()


__all__ = [
    "MAX_SOURCE_PIXELS",
    "SOURCE_FORMATS",
    "THUMBNAIL_BOX",
    "THUMBNAIL_SUFFIX",
    "ImageRejectedError",
    "Thumbnail",
    "make_thumbnail",
    "to_png",
]
