"""Posterize: keep only the top ``bits`` bits of each colour channel of every image.

``bits`` comes from the job's ``plugin_options`` (``{"posterize": {"bits": 2}}``), else from
``settings.json`` in the plugin, and is clamped to 1..8. Alpha, if any, is kept unchanged.
"""

from __future__ import annotations

import json

from PIL import ImageOps


def _bits(ctx):
    value = ctx.options.get("bits")
    if value is None:
        value = json.loads(ctx.read_text("settings.json")).get("bits", 3)
    return max(1, min(8, int(value)))


def post_process(image, ctx):
    bits = _bits(ctx)
    if image.mode == "RGBA":
        rgb = ImageOps.posterize(image.convert("RGB"), bits)
        rgb.putalpha(image.getchannel("A"))
        return rgb
    return ImageOps.posterize(image.convert("RGB"), bits)
