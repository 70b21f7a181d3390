"""Write the demo catalog's preview PNGs: ``<version_id>.png`` beside this script.

Deterministic (no randomness, no timestamps in the PNGs), so rerunning it changes no bytes.
The demo models are invented, so their Civitai image URLs point nowhere; these small procedural
pictures stand in for them. Run: ``python catalog/demo_previews/make_previews.py``.
"""

from __future__ import annotations

import colorsys
import json
import math
from pathlib import Path

from PIL import Image, ImageDraw

HERE = Path(__file__).resolve().parent
SIZE = 192


def _rgb(h: float, s: float, v: float) -> tuple[int, int, int]:
    r, g, b = colorsys.hsv_to_rgb(h % 1.0, max(0.0, min(1.0, s)), max(0.0, min(1.0, v)))
    return int(r * 255), int(g * 255), int(b * 255)


def _landscape(img: Image.Image, hue: float) -> None:
    draw = ImageDraw.Draw(img)
    for y in range(SIZE):
        t = y / SIZE
        draw.line(
            [(0, y), (SIZE, y)], fill=_rgb(hue + 0.55 - 0.1 * t, 0.5 + 0.3 * t, 1.0 - 0.3 * t)
        )
    draw.ellipse([120, 30, 160, 70], fill=_rgb(hue + 0.12, 0.55, 1.0))
    for layer, (amp, base, shade) in enumerate([(10, 120, 0.55), (14, 140, 0.4), (8, 165, 0.25)]):
        points = [(0, SIZE)]
        for x in range(0, SIZE + 1, 4):
            crest = base + amp * math.sin(x / (18 + 6 * layer) + layer * 1.7 + hue * 6)
            points.append((x, int(crest)))
        points.append((SIZE, SIZE))
        draw.polygon(points, fill=_rgb(hue + 0.3 + 0.05 * layer, 0.6, shade + 0.2))


def _brush(img: Image.Image, hue: float) -> None:
    draw = ImageDraw.Draw(img)
    draw.rectangle([0, 0, SIZE, SIZE], fill=_rgb(hue + 0.1, 0.08, 0.96))
    for i in range(9):
        y = 24 + i * 17
        width = 6 + (i * 7) % 11
        for x in range(12, SIZE - 12, 2):
            wobble = 5 * math.sin(x / 13 + i * 0.9)
            fade = 0.15 + 0.6 * abs(math.sin(x / 40 + i))
            draw.ellipse(
                [x - width / 2, y + wobble - width / 4, x + width / 2, y + wobble + width / 4],
                fill=_rgb(hue, 0.25, 0.9 - fade * 0.8),
            )


def _rings(img: Image.Image, hue: float) -> None:
    draw = ImageDraw.Draw(img)
    draw.rectangle([0, 0, SIZE, SIZE], fill=_rgb(hue + 0.6, 0.6, 0.2))
    for r in range(SIZE, 0, -12):
        k = r / SIZE
        draw.ellipse(
            [SIZE / 2 - r, SIZE / 2 - r, SIZE / 2 + r, SIZE / 2 + r],
            fill=_rgb(hue + 0.4 * k, 0.7, 0.35 + 0.6 * (1 - k)),
        )


def _isometric(img: Image.Image, hue: float) -> None:
    draw = ImageDraw.Draw(img)
    draw.rectangle([0, 0, SIZE, SIZE], fill=_rgb(hue + 0.5, 0.2, 0.95))
    cx, cy, s = SIZE / 2, SIZE / 2 + 10, 60
    top = [(cx, cy - s), (cx + s, cy - s / 2), (cx, cy), (cx - s, cy - s / 2)]
    left = [(cx - s, cy - s / 2), (cx, cy), (cx, cy + s), (cx - s, cy + s / 2)]
    right = [(cx + s, cy - s / 2), (cx, cy), (cx, cy + s), (cx + s, cy + s / 2)]
    draw.polygon(top, fill=_rgb(hue, 0.35, 0.95))
    draw.polygon(left, fill=_rgb(hue, 0.55, 0.7))
    draw.polygon(right, fill=_rgb(hue, 0.6, 0.5))
    draw.rectangle([cx - 18, cy + 12, cx - 6, cy + 34], fill=_rgb(hue + 0.1, 0.6, 1.0))


def _aurora(img: Image.Image, hue: float) -> None:
    draw = ImageDraw.Draw(img)
    for y in range(SIZE):
        draw.line([(0, y), (SIZE, y)], fill=_rgb(0.65, 0.8, 0.1 + 0.25 * y / SIZE))
    for band in range(4):
        for x in range(SIZE):
            top = 40 + band * 12 + 18 * math.sin(x / 25 + band)
            for dy in range(0, 36, 3):
                draw.point(
                    (x, int(top + dy)), fill=_rgb(hue + 0.33 + band * 0.05, 0.7, 0.9 - dy / 45)
                )
    draw.polygon(
        [(0, SIZE), (0, 160), (60, 140), (110, 158), (SIZE, 136), (SIZE, SIZE)], fill=(8, 12, 20)
    )


def _bands(img: Image.Image, hue: float) -> None:
    draw = ImageDraw.Draw(img)
    for i in range(12):
        draw.rectangle([0, i * 16, SIZE, i * 16 + 16], fill=_rgb(hue + i / 12, 0.45, 0.85))


def _pixels(img: Image.Image, hue: float) -> None:
    draw = ImageDraw.Draw(img)
    cell = 12
    for gy in range(SIZE // cell):
        for gx in range(SIZE // cell):
            v = (gx * 7 + gy * 13 + int(hue * 100)) % 5
            inside = (gx - 8) ** 2 + (gy - 8) ** 2 < 30
            color = (
                _rgb(hue + v * 0.03, 0.8, 0.95) if inside else _rgb(hue + 0.5, 0.3, 0.25 + v * 0.05)
            )
            draw.rectangle(
                [gx * cell, gy * cell, gx * cell + cell - 1, gy * cell + cell - 1], fill=color
            )


def _botanical(img: Image.Image, hue: float) -> None:
    draw = ImageDraw.Draw(img)
    draw.rectangle([0, 0, SIZE, SIZE], fill=(250, 248, 240))
    for i in range(7):
        angle = i * 2 * math.pi / 7
        x, y = SIZE / 2 + 50 * math.cos(angle), SIZE / 2 + 50 * math.sin(angle)
        draw.ellipse([x - 26, y - 26, x + 26, y + 26], fill=_rgb(hue + i * 0.02, 0.35, 0.95))
    draw.ellipse(
        [SIZE / 2 - 20, SIZE / 2 - 20, SIZE / 2 + 20, SIZE / 2 + 20],
        fill=_rgb(hue + 0.15, 0.7, 0.9),
    )


_PAINTERS = {
    "Checkpoint": _landscape,
    "VAE": _bands,
    "TextualInversion": _pixels,
    "LoCon": _isometric,
}
_BY_NAME = {
    "Ink Wash Style": _brush,
    "Northern Lights Sky": _aurora,
    "Retro Pixel Sprites": _pixels,
    "Watercolor Botanicals": _botanical,
    "Detail Tweaker": _rings,
    "Film Grain Kodak Portra": _rings,
}


def main() -> None:
    raw = json.loads((HERE.parent / "demo_catalog.json").read_text("utf-8"))
    for m_index, model in enumerate(raw["items"]):
        painter = _BY_NAME.get(model["name"]) or _PAINTERS.get(model["type"], _rings)
        for v_index, version in enumerate(model["modelVersions"]):
            img = Image.new("RGB", (SIZE, SIZE))
            painter(img, (m_index * 0.137 + v_index * 0.05) % 1.0)
            img.save(HERE / f"{version['id']}.png", optimize=True)


if __name__ == "__main__":
    main()
