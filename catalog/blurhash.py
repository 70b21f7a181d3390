"""BlurHash decoding: the few bytes Civitai sends with every image, drawn as a tiny picture.

A BlurHash is base-83 text: one character for the number of cosine components on each axis
(1 to 9), one for the scale of the AC terms, four for the average colour (sRGB, 24 bits), then
two per AC component (three signed 19-step values). `decode` turns one into RGB pixels, to
draw at once while the image loads and as the blurred form of an image held back. The text
comes from Civitai, so it is hostile like everything else: a malformed one raises
`ValueError`, and the output size is capped.
"""

from __future__ import annotations

import math
from typing import Final

MAX_SIDE: Final = 128
"""The largest placeholder decoded, in pixels per side (the terminal scales it up)."""
_ALPHABET: Final = (
    "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz#$%*+,-.:;=?@[]^_{|}~"
)
_DIGITS: Final = {ch: i for i, ch in enumerate(_ALPHABET)}


def _base83(text: str) -> int:
    value = 0
    for ch in text:
        digit = _DIGITS.get(ch)
        if digit is None:
            raise ValueError(f"not a BlurHash character: {ch!r}")
        value = value * 83 + digit
    return value


def _to_linear(channel: int) -> float:
    v = channel / 255
    return v / 12.92 if v <= 0.04045 else ((v + 0.055) / 1.055) ** 2.4


def _to_srgb(value: float) -> int:
    v = min(1.0, max(0.0, value))
    scaled = v * 12.92 if v <= 0.0031308 else 1.055 * v ** (1 / 2.4) - 0.055
    return int(scaled * 255 + 0.5)


def _signed_square(value: float) -> float:
    return math.copysign(value * value, value)


def components(blurhash: str) -> tuple[int, int]:
    """(columns, rows) of cosine components a well-formed BlurHash holds; `ValueError` else."""
    if not isinstance(blurhash, str) or len(blurhash) < 6:
        raise ValueError("a BlurHash has at least 6 characters")
    size_flag = _base83(blurhash[0])
    columns, rows = size_flag % 9 + 1, size_flag // 9 + 1
    if len(blurhash) != 4 + 2 * columns * rows:
        raise ValueError(
            f"a BlurHash of {columns}x{rows} components has {4 + 2 * columns * rows} "
            f"characters, not {len(blurhash)}"
        )
    return columns, rows


def _colours(blurhash: str, columns: int, rows: int, punch: float) -> list[tuple[float, ...]]:
    scale = (_base83(blurhash[1]) + 1) / 166 * punch
    average = _base83(blurhash[2:6])
    if average >= 1 << 24:
        raise ValueError("the BlurHash's average colour is out of range")
    colours: list[tuple[float, ...]] = [
        (_to_linear(average >> 16), _to_linear(average >> 8 & 255), _to_linear(average & 255))
    ]
    for index in range(1, columns * rows):
        value = _base83(blurhash[4 + 2 * index : 6 + 2 * index])
        if value >= 19**3:
            raise ValueError(f"the BlurHash's component {index} is out of range")
        colours.append(
            tuple(
                _signed_square((step - 9) / 9) * scale
                for step in (value // (19 * 19), value // 19 % 19, value % 19)
            )
        )
    return colours


def decode(blurhash: str, width: int, height: int, *, punch: float = 1.0) -> bytes:
    """The pixels of `blurhash` at `width` x `height` (each 1 to `MAX_SIDE`), as packed RGB.

    `punch` scales the contrast (1 is as encoded). Raises `ValueError` for a malformed hash.
    """
    if not (1 <= width <= MAX_SIDE and 1 <= height <= MAX_SIDE):
        raise ValueError(f"a placeholder is 1 to {MAX_SIDE} pixels per side, not {width}x{height}")
    columns, rows = components(blurhash)
    colours = _colours(blurhash, columns, rows, punch)
    cos_x = [[math.cos(math.pi * x * i / width) for x in range(width)] for i in range(columns)]
    out = bytearray()
    for y in range(height):
        # The rows' cosines fold into one set of column colours per pixel row.
        row = [
            [
                sum(
                    colours[j * columns + i][c] * math.cos(math.pi * y * j / height)
                    for j in range(rows)
                )
                for c in range(3)
            ]
            for i in range(columns)
        ]
        for x in range(width):
            for c in range(3):
                out.append(_to_srgb(sum(row[i][c] * cos_x[i][x] for i in range(columns))))
    return bytes(out)


def average_colour(blurhash: str) -> tuple[int, int, int]:
    """The average colour (sRGB) a well-formed BlurHash says; `ValueError` else."""
    components(blurhash)
    value = _base83(blurhash[2:6])
    if value >= 1 << 24:
        raise ValueError("the BlurHash's average colour is out of range")
    return value >> 16, value >> 8 & 255, value & 255


__all__ = ["MAX_SIDE", "average_colour", "components", "decode"]
