"""A1111 "parameters" text (PNG tEXt/iTXt chunk): write it exactly, read it back.

Layout (A1111 ``create_infotext``): the prompt, then ``Negative prompt: ...`` if any, then one
line of ``Key: value`` pairs joined by ``", "``, values with ``,``, ``:`` or a newline
JSON-quoted. Key order follows A1111: Steps, Sampler, Schedule type, CFG scale, Seed, Size,
Model hash, Model, Denoising strength, Clip skip, RNG, then extra keys (Hires ..., Lora
hashes), then Version.
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Iterable, Mapping
from typing import Any

PARAM_ORDER = [
    "Steps", "Sampler", "Schedule type", "CFG scale", "Seed", "Size", "Model hash", "Model",
    "Denoising strength", "Clip skip", "RNG",
    "Hires upscale", "Hires steps", "Hires upscaler", "Lora hashes",
    "Version",
]  # fmt: skip

# A1111's own pattern for one "Key: value" pair of the params line.
_PARAM = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')


def quote(value: str) -> str:
    if "," not in value and "\n" not in value and ":" not in value:
        return value
    return json.dumps(value, ensure_ascii=False)


def unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == '"' and value[-1] == '"':
        try:
            out = json.loads(value)
        except ValueError:
            return value
        return out if isinstance(out, str) else value
    return value


def fmt_number(x: float) -> str:
    """7.0 -> "7", 0.55 -> "0.55" (shortest round-trip form)."""
    x = float(x)
    return str(int(x)) if x.is_integer() else repr(x)


def lora_hashes_value(hashes: Iterable[tuple[str, str]]) -> str:
    # A1111 strips ':' and ',' from names so the quoted list stays parseable.
    return ", ".join(f"{name.replace(':', '').replace(',', '')}: {h}" for name, h in hashes)


def build(prompt: str, negative: str, params: Mapping[str, Any]) -> str:
    """The infotext; ``params`` values that are None are skipped, order is PARAM_ORDER."""
    known = [k for k in PARAM_ORDER if k in params]
    extra = [k for k in params if k not in PARAM_ORDER]
    order = (
        [k for k in known if k != "Version"] + extra + (["Version"] if "Version" in params else [])
    )
    line = ", ".join(f"{k}: {quote(str(params[k]))}" for k in order if params[k] is not None)
    neg = f"\nNegative prompt: {negative}" if negative else ""
    return f"{prompt}{neg}\n{line}".strip()


def parse_parameters(text: str) -> dict[str, str]:
    """Parse an A1111 infotext into ``prompt``, ``negative_prompt`` and the params (strings)."""
    lines = text.strip().split("\n")
    params: dict[str, str] = {}
    if lines and len(_PARAM.findall(lines[-1])) >= 3:
        for key, value in _PARAM.findall(lines.pop()):
            params[key.strip()] = unquote(value.strip())
    prompt_lines: list[str] = []
    negative_lines: list[str] = []
    in_negative = False
    for line in lines:
        if line.startswith("Negative prompt:"):
            in_negative = True
            line = line[len("Negative prompt:") :].lstrip()
        (negative_lines if in_negative else prompt_lines).append(line)
    return {
        "prompt": "\n".join(prompt_lines),
        "negative_prompt": "\n".join(negative_lines),
        **params,
    }


parse = parse_parameters


def parse_lora_hashes(value: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for part in value.split(","):
        name, _, h = part.strip().rpartition(":")
        if name:
            out[name.strip()] = h.strip()
    return out


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
