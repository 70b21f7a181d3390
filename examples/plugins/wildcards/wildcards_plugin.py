"""Wildcards: ``__color__`` in a prompt becomes a line of ``wildcards/color.txt``.

The choice comes from ``ctx.rng()``, which depends only on the job's seed, the image index
and the plugin's name, so the same seed always expands the same way. Chosen lines may hold
wildcards themselves (``scene.txt`` does); nesting stops after `MAX_DEPTH` levels. A name
with no file stays in the prompt as written. Sub-folders work: ``__light/time__`` reads
``wildcards/light/time.txt``. The extra output ``wildcards.choices.json`` lists every choice.
"""

from __future__ import annotations

import json
import re

TOKEN = re.compile(r"__([A-Za-z0-9_-]+(?:/[A-Za-z0-9_-]+)*)__")
MAX_DEPTH = 8


def _options(ctx, name):
    cache = ctx.state.setdefault("files", {})
    if name not in cache:
        try:
            text = ctx.read_text(f"wildcards/{name}.txt")
        except FileNotFoundError:
            cache[name] = []
        else:
            lines = (line.strip() for line in text.splitlines())
            cache[name] = [line for line in lines if line and not line.startswith("#")]
    return cache[name]


def _expand(text, ctx, rng, depth=0):
    def replace(match):
        options = _options(ctx, match[1])
        if not options:
            return match[0]
        choice = rng.choice(options)
        ctx.state.setdefault("choices", []).append(
            {"index": ctx.index, "wildcard": match[1], "choice": choice}
        )
        return _expand(choice, ctx, rng, depth + 1) if depth < MAX_DEPTH else choice

    return TOKEN.sub(replace, text)


def prompt_transform(prompt, negative, ctx):
    rng = ctx.rng("wildcards")
    return _expand(prompt, ctx, rng), _expand(negative, ctx, rng)


def extra_outputs(ctx):
    return {"choices.json": json.dumps(ctx.state.get("choices", []), indent=2)}
