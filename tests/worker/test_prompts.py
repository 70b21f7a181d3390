"""A1111 prompt syntax: pure-Python parts (no torch)."""

from __future__ import annotations

from typing import Any

import pytest

from sandbox.worker.errors import SpecError
from sandbox.worker.prompts import (
    BREAK,
    CHUNK_TOKENS,
    LoraRef,
    chunk_prompt,
    extract_loras,
    parse_attention,
    prepend_triggers,
)

# Examples from the docstring of A1111's parse_prompt_attention.
A1111_EXAMPLES = [
    ("normal text", [("normal text", 1.0)]),
    ("an (important) word", [("an ", 1.0), ("important", 1.1), (" word", 1.0)]),
    ("(unbalanced", [("unbalanced", 1.1)]),
    ("\\(literal\\]", [("(literal]", 1.0)]),
    ("(unnecessary)(parens)", [("unnecessaryparens", 1.1)]),
    (
        "a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).",
        [
            ("a ", 1.0),
            ("house", 1.5730000000000004),
            (" ", 1.1),
            ("on", 1.0),
            (" a ", 1.1),
            ("hill", 0.55),
            (", sun, ", 1.1),
            ("sky", 1.4641000000000006),
            (".", 1.1),
        ],
    ),
]


@pytest.mark.parametrize(("text", "expected"), A1111_EXAMPLES)
def test_parse_attention_matches_a1111(text: str, expected: list[tuple[str, float]]) -> None:
    assert parse_attention(text) == expected


def test_parse_attention_details() -> None:
    assert parse_attention("") == [("", 1.0)]
    assert parse_attention("[a]") == [("a", 1 / 1.1)]
    assert parse_attention("((a))")[0][1] == pytest.approx(1.21)
    assert parse_attention("(a:1.5) b") == [("a", 1.5), (" b", 1.0)]
    assert parse_attention("(a: 0.7 )") == [("a", 0.7)]
    # A weight with no open bracket, a stray closer and a bad number stay literal.
    assert parse_attention("x :1.2) y") == [("x :1.2) y", 1.0)]
    assert parse_attention("a) b]") == [("a) b]", 1.0)]
    assert parse_attention("(a:1.2.3)") == [("a:1.2.3)", 1.1)]
    assert parse_attention("\\\\ back") == [("\\ back", 1.0)]


def test_break_splits_runs() -> None:
    assert parse_attention("a cat BREAK a dog") == [("a cat", 1.0), (BREAK, -1.0), ("a dog", 1.0)]
    assert parse_attention("BREAKFAST") == [("BREAKFAST", 1.0)]
    runs = parse_attention("(a BREAK b)")
    assert runs[0] == ("a", 1.1) and runs[1][0] is BREAK and runs[2] == ("b", 1.1)


def test_extract_loras_forms() -> None:
    got = extract_loras("x <lora:foo:0.8> y <lora:bar:0.5:1.0> <lyco:baz> <lora:q:te=0.3:unet=0.9>")
    assert got.loras == [
        LoraRef("foo", 0.8),
        LoraRef("bar", 0.5, 1.0),
        LoraRef("baz", 1.0),
        LoraRef("q", 0.3, 0.9),
    ]
    assert got.prompt == "x  y   "
    assert got.loras[0].unet_weight == 0.8 and got.loras[1].unet_weight == 1.0
    assert not got.other


def test_extract_other_networks_and_errors() -> None:
    got = extract_loras("a <hypernet:h:1> b")
    assert got.other == ["<hypernet:h:1>"] and got.prompt == "a  b"
    with pytest.raises(SpecError):
        extract_loras("<lora:x:abc>")
    with pytest.raises(SpecError):
        extract_loras("<lora::1>")


def test_prepend_triggers() -> None:
    assert prepend_triggers("a cat", ["inkwash", "style"]) == "inkwash, style, a cat"
    assert prepend_triggers("inkwash, a cat", ["inkwash"]) == "inkwash, a cat"
    assert prepend_triggers("", ["x"]) == "x"


class WordTokenizer:
    """Stand-in for CLIPTokenizer: one token per word, ',' is its own token."""

    bos_token_id = 1
    eos_token_id = 2
    pad_token_id = 2

    def __init__(self, pad: int = 2) -> None:
        self.pad_token_id = pad
        self.vocab = {",</w>": 3}

    def get_vocab(self) -> dict[str, int]:
        return self.vocab

    def _ids(self, text: str) -> list[int]:
        out = []
        for word in text.replace(",", " , ").split():
            out.append(
                3 if word == "," else self.vocab.setdefault(word + "</w>", len(self.vocab) + 10)
            )
        return out

    def __call__(self, texts: list[str], **_: Any) -> dict[str, list[list[int]]]:
        return {"input_ids": [self._ids(t) for t in texts]}


def test_chunks_short_prompt_is_one_77_token_chunk() -> None:
    chunks = chunk_prompt(WordTokenizer(), "a (b:1.5) c")
    assert len(chunks) == 1
    c = chunks[0]
    assert len(c.tokens) == CHUNK_TOKENS + 2 and c.tokens[0] == 1 and c.tokens[-1] == 2
    assert c.weights[:4] == [1.0, 1.0, 1.5, 1.0]


def test_chunks_long_prompt_and_comma_backtrack() -> None:
    tok = WordTokenizer()
    words = " ".join(f"w{i}" for i in range(70)) + ", " + " ".join(f"v{i}" for i in range(10))
    chunks = chunk_prompt(tok, words)
    assert len(chunks) == 2 and all(len(c.tokens) == 77 for c in chunks)
    # 70 words + comma fit; the words after the comma overflow 75 and the comma is within 20
    # tokens of the end, so A1111 moves them to the next chunk whole.
    assert chunks[0].tokens[71] == 3 and set(chunks[0].tokens[72:]) == {2}
    assert chunks[1].tokens[1:11] == tok._ids(" ".join(f"v{i}" for i in range(10)))


def test_chunks_break_and_empty() -> None:
    assert len(chunk_prompt(WordTokenizer(), "a BREAK b")) == 2
    assert len(chunk_prompt(WordTokenizer(), "")) == 1
    assert len(chunk_prompt(WordTokenizer(), " ".join(["x"] * 150))) == 2


def test_openclip_padding_after_end_token() -> None:
    tok = WordTokenizer(pad=0)
    c = chunk_prompt(tok, "a b")[0]
    assert c.tokens[:4] == [1, c.tokens[1], c.tokens[2], 2]
    assert set(c.tokens[4:]) == {0}
