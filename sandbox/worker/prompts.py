"""A1111 prompt syntax: LoRA tags, emphasis, BREAK, 75-token chunks, clip skip.

Parsing is plain Python. Encoding (``encode_prompts``) computes ``prompt_embeds`` itself,
the way A1111's "Original" emphasis does, so that weights, BREAK, prompts longer than 77
tokens and clip skip on both prompts all work; for an unweighted prompt of at most 75 tokens
the result is bit-identical to ``pipe.encode_prompt`` (a test checks it).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sandbox.protocol.jobspec import TagError, parse_tags, strip_tags

from .errors import SpecError

if TYPE_CHECKING:
    import torch

#: Tokens per chunk between the start and end tokens, as in A1111.
CHUNK_TOKENS = 75
#: A1111 moves the tail after the last comma to the next chunk if it is this close to the end.
COMMA_BACKTRACK = 20
EMPHASIS = 1.1


class _Break:
    """Marker for A1111's ``BREAK`` keyword in parsed prompts (starts a new 75-token chunk)."""

    def __repr__(self) -> str:
        return "BREAK"


BREAK = _Break()


@dataclass(frozen=True)
class LoraRef:
    """One ``<lora:name:te[:unet]>`` tag. ``unet`` None means "same as te"."""

    name: str
    te: float = 1.0
    unet: float | None = None

    @property
    def unet_weight(self) -> float:
        return self.te if self.unet is None else self.unet


@dataclass
class Extracted:
    loras: list[LoraRef]
    prompt: str
    #: Tags of other extra-network kinds (hypernet, ...), which we do not run.
    other: list[str] = field(default_factory=list)


def extract_loras(prompt: str) -> Extracted:
    """Take ``<lora:...>``/``<lyco:...>`` tags out of a prompt (A1111 extra-network syntax).

    The syntax is the job contract's (`sandbox.protocol.jobspec.parse_tags`), which the host checks
    before a job starts; a malformed tag raises `SpecError`.
    """
    try:
        tags = parse_tags(prompt)
    except TagError as exc:
        raise SpecError(str(exc)) from None
    loras = [LoraRef(t.name, t.te, t.unet) for t in tags if t.is_lora]
    other = [prompt[t.start : t.end] for t in tags if not t.is_lora]
    return Extracted(loras, strip_tags(prompt, tags), other)


# --- emphasis -------------------------------------------------------------------------------

_ATTN_TOKEN = re.compile(
    r"""\\[()\[\]\\]        # escaped bracket or backslash
      | \\                  # lone backslash
      | :\s*([+-]?[.\d]+)\s*\)   # explicit weight closing a round bracket
      | [()\[\]]
      | [^\\()\[\]:]+
      | :""",
    re.VERBOSE,
)
_BREAK = re.compile(r"\s*\bBREAK\b\s*")


def parse_attention(text: str) -> list[tuple[Any, float]]:
    """Split a prompt into (text, weight) runs the way A1111's parser does.

    ``(x)`` multiplies by 1.1, ``[x]`` divides by 1.1, ``(x:w)`` sets w, they nest, ``\\(``
    escapes, unbalanced brackets apply to the rest of the prompt, and ``BREAK`` becomes the
    ``BREAK`` marker with weight -1.
    """
    runs: list[list[Any]] = []
    round_open: list[int] = []
    square_open: list[int] = []

    def scale(start: int, factor: float) -> None:
        for run in runs[start:]:
            run[1] *= factor

    for m in _ATTN_TOKEN.finditer(text):
        tok, weight = m.group(0), m.group(1)
        if tok.startswith("\\") and len(tok) == 2:
            runs.append([tok[1], 1.0])
        elif tok == "(":
            round_open.append(len(runs))
        elif tok == "[":
            square_open.append(len(runs))
        elif weight is not None and round_open and _is_float(weight):
            scale(round_open.pop(), float(weight))
        elif tok == ")" and round_open:
            scale(round_open.pop(), EMPHASIS)
        elif tok == "]" and square_open:
            scale(square_open.pop(), 1 / EMPHASIS)
        else:
            _append_text(runs, tok)
    for pos in round_open:
        scale(pos, EMPHASIS)
    for pos in square_open:
        scale(pos, 1 / EMPHASIS)
    return _merge_runs(runs)


def _append_text(runs: list[list[Any]], tok: str) -> None:
    """Plain text as runs of weight 1, each ``BREAK`` in it as the marker."""
    for i, piece in enumerate(_BREAK.split(tok)):
        if i > 0:
            runs.append([BREAK, -1.0])
        runs.append([piece, 1.0])


def _merge_runs(runs: list[list[Any]]) -> list[tuple[Any, float]]:
    """Neighbouring runs of one weight joined, empty ones dropped (BREAK kept apart)."""
    merged: list[tuple[Any, float]] = []
    for piece, w in runs:
        if piece is not BREAK and piece == "":
            continue
        if merged and piece is not BREAK and merged[-1][0] is not BREAK and merged[-1][1] == w:
            merged[-1] = (merged[-1][0] + piece, w)
        else:
            merged.append((piece, w))
    return merged or [("", 1.0)]


def _is_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


# --- chunking -------------------------------------------------------------------------------


@dataclass
class Chunk:
    tokens: list[int]
    weights: list[float]


def chunk_prompt(tokenizer: Any, text: str) -> list[Chunk]:
    """Token chunks of exactly 77 (start + 75 + end), A1111-style, with per-token weights."""
    parsed = parse_attention(text)
    texts = [p for p, _ in parsed if p is not BREAK]
    ids_per_text = (
        tokenizer(texts, add_special_tokens=False, truncation=False)["input_ids"] if texts else []
    )
    it = iter(ids_per_text)
    start, end = tokenizer.bos_token_id, tokenizer.eos_token_id
    pad = tokenizer.pad_token_id
    comma = tokenizer.get_vocab().get(",</w>")

    chunks: list[Chunk] = []
    cur = Chunk([], [])
    last_comma = -1

    def close() -> None:
        nonlocal cur, last_comma
        fill = CHUNK_TOKENS - len(cur.tokens)
        toks = [start, *cur.tokens, *([end] * fill), end]
        weights = [1.0, *cur.weights, *([1.0] * fill), 1.0]
        if pad != end:  # OpenCLIP-style: everything after the first end token is padding
            first_end = toks.index(end)
            toks = toks[: first_end + 1] + [pad] * (len(toks) - first_end - 1)
        chunks.append(Chunk(toks, weights))
        cur = Chunk([], [])
        last_comma = -1

    for piece, weight in parsed:
        if piece is BREAK:
            close()
            continue
        for token in next(it):
            if token == comma:
                last_comma = len(cur.tokens)
            elif (
                len(cur.tokens) == CHUNK_TOKENS
                and last_comma != -1
                and len(cur.tokens) - last_comma <= COMMA_BACKTRACK
            ):
                cut = last_comma + 1
                tail = Chunk(cur.tokens[cut:], cur.weights[cut:])
                cur = Chunk(cur.tokens[:cut], cur.weights[:cut])
                close()
                cur = tail
            if len(cur.tokens) == CHUNK_TOKENS:
                close()
            cur.tokens.append(token)
            cur.weights.append(weight)
    if cur.tokens or not chunks:
        close()
    return chunks


# --- encoding (torch) -----------------------------------------------------------------------


@dataclass
class Embeds:
    prompt: torch.Tensor
    negative: torch.Tensor
    pooled: torch.Tensor | None = None
    negative_pooled: torch.Tensor | None = None

    def as_kwargs(self) -> dict[str, Any]:
        kw: dict[str, Any] = {"prompt_embeds": self.prompt, "negative_prompt_embeds": self.negative}
        if self.pooled is not None:
            kw["pooled_prompt_embeds"] = self.pooled
            kw["negative_pooled_prompt_embeds"] = self.negative_pooled
        return kw


def _final_norm(text_encoder: Any) -> Any:
    # transformers >=5.6 flattened CLIPTextModel; older ones nest it under .text_model.
    inner = getattr(text_encoder, "text_model", text_encoder)
    return inner.final_layer_norm


def _encode_chunk(
    text_encoder: Any, chunk: Chunk, layer: int, final_norm: bool, device: Any
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Hidden states of one 77-token chunk at ``layer`` (-1 = last), with A1111 emphasis."""
    import torch

    ids = torch.tensor([chunk.tokens], dtype=torch.long, device=device)
    if layer == -1 and final_norm:
        out = text_encoder(ids)
        z = out[0]
    else:
        out = text_encoder(ids, output_hidden_states=True)
        z = out.hidden_states[layer]
        if final_norm:
            z = _final_norm(text_encoder)(z)
    pooled = out[0] if out[0].ndim == 2 else None
    if any(w != 1.0 for w in chunk.weights):
        mult = torch.tensor(chunk.weights, dtype=z.dtype, device=z.device)
        original_mean = z.mean()
        z = z * mult.reshape(1, -1, 1).expand(z.shape)
        z = z * (original_mean / z.mean())
    return z, pooled


def _encode_text(
    tokenizer: Any,
    text_encoder: Any,
    text: str,
    layer: int,
    final_norm: bool,
    device: Any,
    min_chunks: int = 0,
) -> tuple[list[torch.Tensor], torch.Tensor | None]:
    chunks = chunk_prompt(tokenizer, text)
    while len(chunks) < min_chunks:
        chunks += chunk_prompt(tokenizer, "")
    zs: list[torch.Tensor] = []
    first_pooled = None
    for i, chunk in enumerate(chunks):
        z, pooled = _encode_chunk(text_encoder, chunk, layer, final_norm, device)
        zs.append(z)
        if i == 0:
            first_pooled = pooled  # A1111 takes the pooled output of the first chunk
    return zs, first_pooled


def _pad_to(zs: list[torch.Tensor], n: int, empty: torch.Tensor) -> list[torch.Tensor]:
    return zs + [empty] * (n - len(zs))


def encode_prompts(
    pipe: Any, prompt: str, negative: str, clip_skip: int = 1, *, sdxl: bool = False
) -> Embeds:
    """Embeddings for a prompt and its negative, A1111-style (see module docstring).

    Clip skip (A1111 numbering, 1 = last layer) applies to both prompts. SD1.x uses
    ``hidden_states[-clip_skip]`` + final layer norm. SDXL always conditions on the
    penultimate layer without the norm (as A1111 and diffusers do); a clip skip above 2 moves
    both encoders further back. An empty SDXL negative gives zeros, as in both A1111 and
    diffusers.
    """
    import torch

    if clip_skip < 1:
        raise SpecError("clip_skip counts from 1 (A1111 numbering)")
    device = pipe._execution_device
    with torch.no_grad():
        if not sdxl:
            layer = -clip_skip if clip_skip > 1 else -1
            te, tok = pipe.text_encoder, pipe.tokenizer
            pos, _ = _encode_text(tok, te, prompt, layer, True, device)
            neg, _ = _encode_text(tok, te, negative, layer, True, device)
            n = max(len(pos), len(neg))
            if len(pos) != len(neg):
                empty = _encode_text(tok, te, "", layer, True, device)[0][0]
                pos, neg = _pad_to(pos, n, empty), _pad_to(neg, n, empty)
            dtype = te.dtype
            return Embeds(
                torch.cat(pos, dim=1).to(dtype=dtype, device=device),
                torch.cat(neg, dim=1).to(dtype=dtype, device=device),
            )
        layer = -max(2, clip_skip)
        encoders = [(pipe.tokenizer, pipe.text_encoder), (pipe.tokenizer_2, pipe.text_encoder_2)]
        pos_parts = [_encode_text(t, e, prompt, layer, False, device) for t, e in encoders]
        n_pos = max(len(p[0]) for p in pos_parts)
        pos_parts = [
            _encode_text(t, e, prompt, layer, False, device, n_pos) if len(p[0]) < n_pos else p
            for (t, e), p in zip(encoders, pos_parts, strict=True)
        ]
        pos_chunks = [torch.cat(p[0], dim=1) for p in pos_parts]
        prompt_embeds = torch.cat(pos_chunks, dim=-1)
        pooled = pos_parts[1][1]
        if pooled is None:
            raise RuntimeError("SDXL's second text encoder gave no pooled embedding")
        dtype = pipe.text_encoder_2.dtype
        if negative == "":
            neg_embeds = torch.zeros_like(prompt_embeds)
            neg_pooled = torch.zeros_like(pooled)
        else:
            neg_parts = [
                _encode_text(t, e, negative, layer, False, device, n_pos) for t, e in encoders
            ]
            n_neg = max(len(p[0]) for p in neg_parts)
            neg_parts = [
                _encode_text(t, e, negative, layer, False, device, n_neg)
                if len(p[0]) < n_neg
                else p
                for (t, e), p in zip(encoders, neg_parts, strict=True)
            ]
            neg_embeds = torch.cat([torch.cat(p[0], dim=1) for p in neg_parts], dim=-1)
            neg_pooled_t = neg_parts[1][1]
            if neg_pooled_t is None:
                raise RuntimeError("SDXL's second text encoder gave no pooled embedding")
            neg_pooled = neg_pooled_t
            n = max(prompt_embeds.shape[1], neg_embeds.shape[1])
            if prompt_embeds.shape[1] != neg_embeds.shape[1]:
                empty = torch.cat(
                    [_encode_text(t, e, "", layer, False, device)[0][0] for t, e in encoders],
                    dim=-1,
                )
                prompt_embeds = _pad_seq(prompt_embeds, n, empty)
                neg_embeds = _pad_seq(neg_embeds, n, empty)
        return Embeds(
            prompt_embeds.to(dtype=dtype, device=device),
            neg_embeds.to(dtype=dtype, device=device),
            pooled.to(dtype=dtype, device=device),
            neg_pooled.to(dtype=dtype, device=device),
        )


def _pad_seq(z: torch.Tensor, n: int, empty: torch.Tensor) -> torch.Tensor:
    import torch

    reps = (n - z.shape[1]) // empty.shape[1]
    if reps <= 0:
        return z
    return torch.cat([z, empty.repeat(1, reps, 1)], dim=1)


def prepend_triggers(prompt: str, triggers: Sequence[str]) -> str:
    """Put trigger words first, comma-separated, skipping ones already in the prompt."""
    missing = [t.strip() for t in triggers if t.strip() and t.strip() not in prompt]
    if not missing:
        return prompt
    return ", ".join([*missing, prompt]) if prompt.strip() else ", ".join(missing)
