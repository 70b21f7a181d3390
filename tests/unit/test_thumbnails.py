"""The one decode path for previews: real images become clean thumbnails; bombs, truncated
images and other formats are refused with the reason, before or while decoding."""

from __future__ import annotations

import io
import threading
import warnings

import pytest
from PIL import Image, ImageFile

from assetmgr.store.thumbnails import (
    MAX_SOURCE_PIXELS,
    THUMBNAIL_BOX,
    ImageRejectedError,
    make_thumbnail,
    to_png,
)
from assetmgr.wording import describe
from tests.fakeciv.images import SECRET_TEXT, SVG, bomb_png, encode, gif_bytes, picture, truncated


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
def test_real_images_become_metadata_free_thumbnails(fmt: str) -> None:
    source = encode(picture(5, 832, 1216), fmt)
    assert SECRET_TEXT.encode() in source
    thumb = make_thumbnail(source, source="test")
    assert (thumb.source_format, thumb.source_width, thumb.source_height) == (fmt, 832, 1216)
    assert max(thumb.width, thumb.height) == THUMBNAIL_BOX
    assert SECRET_TEXT.encode() not in thumb.data
    with Image.open(io.BytesIO(thumb.data)) as out:
        assert out.size == (thumb.width, thumb.height)
        assert not out.info.get("exif") and "parameters" not in out.info
        assert not out.getexif()


def test_small_images_are_not_enlarged_and_png_export_is_png() -> None:
    thumb = make_thumbnail(encode(picture(2, 40, 30), "PNG"), source="test")
    assert (thumb.width, thumb.height) == (40, 30)
    png = to_png(thumb.data, source="test")
    assert png.startswith(b"\x89PNG\r\n\x1a\n")


@pytest.mark.parametrize(
    ("data", "reason", "words"),
    [
        (bomb_png(20_000, 20_000), "bomb", "declares 400000000 pixels, over the 36000000-pixel"),
        # Past Pillow's warning limit but under its hard one: the warning is an error too.
        (bomb_png(10_000, 10_000), "bomb", "declares 100000000 pixels"),
        # Under Pillow's limits: our own cap, checked before a pixel is decoded.
        (bomb_png(7_000, 7_000), "bomb", "declares 7000x7000 pixels, over the 36000000-pixel"),
        (truncated(encode(picture(3, 256, 256), "JPEG")), "truncated", "is truncated"),
        (truncated(encode(picture(3, 256, 256), "PNG")), "truncated", "is truncated"),
        (gif_bytes(), "format", "is not a JPEG, PNG or WebP image"),
        (SVG, "format", "is not a JPEG, PNG or WebP image"),
        (b"", "format", "is not a JPEG, PNG or WebP image"),
    ],
    ids=["bomb", "bomb-warning", "bomb-own-cap", "trunc-jpeg", "trunc-png", "gif", "svg", "empty"],
)
def test_hostile_bytes_are_refused_with_the_reason(data: bytes, reason: str, words: str) -> None:
    with pytest.raises(ImageRejectedError) as caught:
        make_thumbnail(data, source="http://host/x.png")
    exc = caught.value
    assert exc.reason == reason
    assert words in exc.message
    assert exc.message.startswith("image http://host/x.png ")
    assert exc.message.endswith("; refused, nothing was kept")
    wording = describe(exc)
    assert wording is not None and wording.title == "Image refused" and wording.hint
    if reason == "bomb" and exc.width is not None:
        assert exc.width * (exc.height or 0) > MAX_SOURCE_PIXELS


def test_pillows_bomb_warning_is_an_error_even_where_warnings_are_ignored() -> None:
    """Pillow only warns between its two limits; assetmgr makes that warning an error itself
    (without it this bomb would reach the own-cap check and be worded from the header)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ImageRejectedError) as caught:
            make_thumbnail(bomb_png(10_000, 10_000), source="x")
    assert "declares 100000000 pixels" in caught.value.message


def test_a_global_truncated_images_setting_does_not_let_one_through(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    with pytest.raises(ImageRejectedError) as caught:
        make_thumbnail(truncated(encode(picture(3, 256, 256), "JPEG")), source="x")
    assert caught.value.reason == "truncated"


def test_bomb_refusal_holds_in_worker_threads() -> None:
    """The TUI decodes in worker threads: the warning filter must hold there too."""
    seen: list[str] = []

    def decode() -> None:
        try:
            make_thumbnail(bomb_png(10_000, 10_000), source="x")
        except ImageRejectedError as exc:
            seen.append(exc.reason)

    threads = [threading.Thread(target=decode) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert seen == ["bomb", "bomb", "bomb"]
