"""A1111 "parameters" text (the PNG ``parameters`` chunk): write it exactly, read it back.

One parser for both sides: the worker writes a generated image's text with `build`; the host
reads it back from a PNG, a pasted block or a Civitai image with `parse_parameters`.

Layout (A1111 ``create_infotext``): the prompt, then ``Negative prompt: ...`` if any, then one
line of ``Key: value`` pairs joined by ``", "``, values with ``,``, ``:`` or a newline
JSON-quoted. Key order follows A1111: Steps, Sampler, Schedule type, CFG scale, Seed, Size,
Model hash, Model, Denoising strength, Clip skip, RNG, then extra keys (Hires ..., Lora
hashes), then Version.

Text read back is outside input: it is refused past `MAX_PARAMETERS_CHARS`, the params line is
scanned in one linear pass (A1111's own pattern backtracks quadratically on long lines), and at
most `MAX_PARAMS` pairs and `MAX_LORA_HASHES` LoRA hashes are kept. Stdlib only.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any, Final

PARAM_ORDER = [
    "Steps", "Sampler", "Schedule type", "CFG scale", "Seed", "Size", "Model hash", "Model",
    "Denoising strength", "Clip skip", "RNG",
    "Hires upscale", "Hires steps", "Hires upscaler", "Lora hashes",
    "Version",
]  # fmt: skip

#: The longest parameters text read back (characters); A1111's are a few hundred.
MAX_PARAMETERS_CHARS: Final = 64 * 1024
#: Key/value pairs kept from one params line.
MAX_PARAMS: Final = 256
#: ``Lora hashes`` entries kept (a job takes far fewer LoRAs).
MAX_LORA_HASHES: Final = 64
_NEGATIVE = "Negative prompt:"


class ParametersTooLongError(ValueError):
    """Parameters text longer than `MAX_PARAMETERS_CHARS`; `chars` is its length."""

    def __init__(self, chars: int, limit: int = MAX_PARAMETERS_CHARS) -> None:
        super().__init__(f"the parameters text is {chars} characters; at most {limit}")
        self.chars = chars
        self.limit = limit


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
    return ", ".join(f"{lora_hash_name(name)}: {h}" for name, h in hashes)


def lora_hash_name(name: str) -> str:
    """A LoRA's name as written in ``Lora hashes`` (without ``:`` and ``,``)."""
    return name.replace(":", "").replace(",", "")


def build(prompt: str, negative: str, params: Mapping[str, Any]) -> str:
    """The infotext; ``params`` values that are None are skipped, order is PARAM_ORDER."""
    known = [k for k in PARAM_ORDER if k in params]
    extra = [k for k in params if k not in PARAM_ORDER]
    order = (
        [k for k in known if k != "Version"] + extra + (["Version"] if "Version" in params else [])
    )
    line = ", ".join(f"{k}: {quote(str(params[k]))}" for k in order if params[k] is not None)
    neg = f"\n{_NEGATIVE} {negative}" if negative else ""
    return f"{prompt}{neg}\n{line}".strip()


# --- reading ----------------------------------------------------------------------------------


def _is_word(ch: str) -> bool:
    return ch.isalnum() or ch == "_"


def _is_key_char(ch: str) -> bool:
    return _is_word(ch) or ch in " -/"


def _quoted_end(line: str, start: int) -> int | None:
    """The index after a JSON-quoted value at `start` that ends the pair, or None."""
    i, n = start + 1, len(line)
    while i < n:
        ch = line[i]
        if ch == "\\":
            i += 2
        elif ch == '"':
            break
        else:
            i += 1
    if i >= n or i == start + 1 or (i + 1 < n and line[i + 1] != ","):
        return None
    return i + 1


def params_line(line: str, limit: int = MAX_PARAMS) -> list[tuple[str, str]]:
    """The ``Key: value`` pairs of one line, as A1111's pattern finds them, in one pass.

    A key is a word character then word characters, spaces, ``-`` or ``/`` (two at least),
    right before a ``:``; a value runs to the next ``,`` unless it is a JSON string that ends
    at a ``,`` or the line's end. Values come back unquoted and stripped; at most `limit`.
    """
    pairs: list[tuple[str, str]] = []
    pos, n = 0, len(line)
    while pos < n and len(pairs) < limit:
        run_start = pos
        while pos < n and _is_key_char(line[pos]):
            pos += 1
        first_word = next((i for i in range(run_start, pos) if _is_word(line[i])), pos)
        key = line[first_word:pos]
        if pos >= n or line[pos] != ":" or len(key) < 2:
            pos += 1  # the character that ended the run starts no key
            continue
        pos += 1
        while pos < n and line[pos].isspace():
            pos += 1
        end = _quoted_end(line, pos) if pos < n and line[pos] == '"' else None
        if end is not None:
            value, pos = line[pos:end], end + 1
        else:
            comma = line.find(",", pos)
            stop = n if comma < 0 else comma
            value, pos = line[pos:stop], stop + 1
        pairs.append((key.strip(), unquote(value.strip())))
    return pairs


def parse_parameters(text: str) -> dict[str, str]:
    """Parse an A1111 infotext into ``prompt``, ``negative_prompt`` and the params (strings).

    Raises `ParametersTooLongError` past `MAX_PARAMETERS_CHARS`.
    """
    if len(text) > MAX_PARAMETERS_CHARS:
        raise ParametersTooLongError(len(text))
    lines = text.replace("\r\n", "\n").strip().split("\n")
    params: dict[str, str] = {}
    last = params_line(lines[-1]) if lines else []
    if len(last) >= 3:
        lines.pop()
        for key, value in last:
            params[key] = value
    prompt_lines: list[str] = []
    negative_lines: list[str] = []
    in_negative = False
    for line in lines:
        if line.startswith(_NEGATIVE):
            in_negative = True
            line = line[len(_NEGATIVE) :].lstrip()
        (negative_lines if in_negative else prompt_lines).append(line)
    return {
        "prompt": "\n".join(prompt_lines),
        "negative_prompt": "\n".join(negative_lines),
        **params,
    }


parse = parse_parameters


def lora_hash_entries(
    value: str, limit: int = MAX_LORA_HASHES
) -> tuple[list[tuple[str, str]], int]:
    """``"a: 0123, b: 4567"`` -> ([(name, hash)...], how many entries past `limit` were left).

    Entries without a name are skipped.
    """
    parts = value.split(",", limit)
    dropped = 0
    if len(parts) > limit:
        dropped = parts[-1].count(",") + 1
        parts = parts[:limit]
    entries: list[tuple[str, str]] = []
    for part in parts:
        name, _, digest = part.strip().rpartition(":")
        if name.strip():
            entries.append((name.strip(), digest.strip()))
    return entries, dropped


def parse_lora_hashes(value: str) -> dict[str, str]:
    return dict(lora_hash_entries(value)[0])


__all__ = [
    "MAX_LORA_HASHES",
    "MAX_PARAMETERS_CHARS",
    "MAX_PARAMS",
    "PARAM_ORDER",
    "ParametersTooLongError",
    "build",
    "fmt_number",
    "lora_hash_entries",
    "lora_hash_name",
    "lora_hashes_value",
    "params_line",
    "parse",
    "parse_lora_hashes",
    "parse_parameters",
    "quote",
    "unquote",
]
