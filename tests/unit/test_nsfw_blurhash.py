"""Civitai's NSFW levels and the threshold rule; the BlurHash decoder on real hashes and
malformed ones (the text comes from Civitai, so it is hostile)."""

from __future__ import annotations

import pytest

from catalog import blurhash, nsfw
from tests.fakeciv.images import blurhash as encode_blurhash
from tests.fakeciv.images import picture


@pytest.mark.parametrize(
    ("text", "level"),
    [("PG", 1), ("pg-13", 2), ("PG13", 2), ("r", 4), ("X", 8), (" xxx ", 16), (4, 4)],
)
def test_threshold_names(text: object, level: int) -> None:
    assert nsfw.parse_threshold(text) == level


@pytest.mark.parametrize("text", ["", "NC-17", "Blocked", 32, 3, True, None, 1.0])
def test_bad_thresholds(text: object) -> None:
    assert nsfw.parse_threshold(text) is None


def test_above_uses_the_highest_bit() -> None:
    assert not nsfw.above(1, nsfw.PG)
    assert nsfw.above(2, nsfw.PG)
    assert not nsfw.above(3, nsfw.PG13)  # PG|PG-13 rates PG-13
    assert nsfw.above(7, nsfw.PG13)
    assert nsfw.above(32, nsfw.XXX)  # Blocked is above everything
    assert not nsfw.above(16, nsfw.XXX)


def test_unrated_is_held_back_unless_the_user_supplied_it() -> None:
    assert nsfw.above(None, nsfw.R) and nsfw.above(0, nsfw.X)
    assert not nsfw.above(None, nsfw.XXX)
    assert not nsfw.above(None, nsfw.PG, unrated_above=False)
    assert nsfw.level_name(None) == "unrated" and nsfw.level_name(6) == "R"


def test_decodes_a_real_hash_to_the_pictures_colours() -> None:
    image = picture(11, 64, 48)
    text = encode_blurhash(image)
    assert blurhash.components(text) == (4, 3)
    pixels = blurhash.decode(text, 16, 12)
    assert len(pixels) == 16 * 12 * 3
    mean = [sum(pixels[c::3]) / (16 * 12) for c in range(3)]
    small = image.resize((1, 1)).getpixel((0, 0))
    assert isinstance(small, tuple)
    # A blur of the picture: its mean colour is the picture's within rounding of the terms.
    assert all(abs(m - s) < 24 for m, s in zip(mean, small, strict=True))
    # The average colour is the mean in linear light, brought back to sRGB.
    linear = [sum((v / 255) ** 2.2 for v in band.tobytes()) / (64 * 48) for band in image.split()]
    expected = [round(255 * m ** (1 / 2.2)) for m in linear]
    average = blurhash.average_colour(text)
    assert all(abs(a - e) < 8 for a, e in zip(average, expected, strict=True))
    assert len(set(zip(pixels[0::3], pixels[1::3], pixels[2::3], strict=True))) > 1  # not flat


def test_a_dc_only_hash_is_one_flat_colour() -> None:
    # 1x1 components: size flag 0, then the scale, then the average colour 0x336699.
    alphabet = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz#$%*+,-.:;=?@[]^_{|}~"
    value = 0x336699
    dc = "".join(alphabet[value // 83 ** (3 - i) % 83] for i in range(4))
    pixels = blurhash.decode("00" + dc, 5, 4)
    assert set(zip(pixels[0::3], pixels[1::3], pixels[2::3], strict=True)) == {(0x33, 0x66, 0x99)}


@pytest.mark.parametrize(
    "text",
    [
        "",
        "LEHV6n",  # a size flag (4x3) that wants 28 characters
        "LEHV6nWB2yk8pyo0adR*.7kCMdnj" + "x",  # one character too many
        "LEHV6nWB2yk8pyo0adR*.7kCMd\x1bj",  # not base 83
        "00~~~~",  # an average colour past 24 bits
        "10~~~~~~",  # an AC component past 19^3
    ],
)
def test_malformed_hashes_raise_value_error(text: str) -> None:
    with pytest.raises(ValueError):
        blurhash.decode(text, 8, 8)


def test_known_hash_decodes_and_sizes_are_capped() -> None:
    text = "LEHV6nWB2yk8pyo0adR*.7kCMdnj"
    assert blurhash.components(text) == (4, 3)
    assert len(blurhash.decode(text, 32, 32)) == 32 * 32 * 3
    with pytest.raises(ValueError):
        blurhash.decode(text, blurhash.MAX_SIDE + 1, 8)
    with pytest.raises(ValueError):
        blurhash.decode(text, 0, 8)
