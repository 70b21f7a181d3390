"""The worker's side of the A1111 ``parameters`` text: the text itself comes from the one
parser and writer in `sandbox.protocol.infotext` (re-exported here); this module adds the
deterministic PNG that carries it."""

from __future__ import annotations

import io
from typing import Any

from sandbox.protocol.infotext import (
    MAX_LORA_HASHES,
    MAX_PARAMETERS_CHARS,
    PARAM_ORDER,
    ParametersTooLongError,
    build,
    fmt_number,
    lora_hash_entries,
    lora_hashes_value,
    parse,
    parse_lora_hashes,
    parse_parameters,
    quote,
    unquote,
)


def png_bytes(image: Any, text: str, compress_level: int = 6) -> bytes:
    """PNG with one ``parameters`` text chunk; same pixels + same text -> same bytes.

    PIL writes no timestamp or other varying chunk; the compression level is fixed so the
    zlib stream is stable for a given zlib build.
    """
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text("parameters", text)  # PIL switches to iTXt for non-Latin-1 text
    buf = io.BytesIO()
    image.save(buf, format="PNG", pnginfo=info, compress_level=compress_level, optimize=False)
    return buf.getvalue()


def read_png_text(data: bytes) -> str | None:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as img:
        img.load()
        value = img.text.get("parameters") if hasattr(img, "text") else None
    return value if isinstance(value, str) else None


__all__ = [
    "MAX_LORA_HASHES",
    "MAX_PARAMETERS_CHARS",
    "PARAM_ORDER",
    "ParametersTooLongError",
    "build",
    "fmt_number",
    "lora_hash_entries",
    "lora_hashes_value",
    "parse",
    "parse_lora_hashes",
    "parse_parameters",
    "png_bytes",
    "quote",
    "read_png_text",
    "unquote",
]
