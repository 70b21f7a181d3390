"""The one A1111 ``parameters`` parser (`sandbox.protocol.infotext`) against hostile text:
A1111's own results on ordinary lines, bounded sizes, and one linear pass over long lines."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sandbox.protocol import infotext

# A1111's pattern (modules/infotext_utils.py), the reference the scanner must agree with.
A1111_PARAM = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')


def a1111_pairs(line: str) -> list[tuple[str, str]]:
    return [(k.strip(), infotext.unquote(v.strip())) for k, v in A1111_PARAM.findall(line)]


@settings(max_examples=3000, deadline=None)
@given(st.text(alphabet='ab1_é :,"\\-/\t', max_size=30))
def test_the_scanner_finds_what_a1111s_pattern_finds(line: str) -> None:
    assert infotext.params_line(line) == a1111_pairs(line)


def test_real_lines_parse_as_a1111_does() -> None:
    line = (
        "Steps: 28, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 6, Seed: 1734419982, "
        'Size: 832x1216, Lora hashes: "ink: ddc056e1336e, b\\"q: 0123456789ab", Version: v1.10.1'
    )
    assert infotext.params_line(line) == a1111_pairs(line)
    assert dict(infotext.params_line(line))["Lora hashes"] == 'ink: ddc056e1336e, b"q: 0123456789ab'


class CountingStr(str):
    """A str that counts how often the scanner reads one of its characters."""

    reads = 0

    def __getitem__(self, key: object) -> str:
        if isinstance(key, int):
            CountingStr.reads += 1
        return str.__getitem__(self, key)  # type: ignore[index]


@pytest.mark.parametrize(
    "hostile",
    [
        "a" * 60_000,  # one endless key: A1111's pattern backtracks over it from every position
        "a-" * 30_000,
        'Steps: "' + "\\a" * 30_000,  # an unterminated quoted value full of escapes
        ("Key one: " + '"' + "x, " * 10 + '"' + "y") * 2_000,
    ],
    ids=["word-run", "dash-run", "open-quote", "quotes-not-ending-pairs"],
)
def test_a_long_hostile_line_is_scanned_in_one_linear_pass(hostile: str) -> None:
    CountingStr.reads = 0
    infotext.params_line(CountingStr(hostile))
    assert CountingStr.reads <= 4 * len(hostile)


def test_text_past_the_bound_is_refused_before_parsing() -> None:
    text = "a heron\nSteps: 2, Seed: 1, Size: 64x64" + " " * infotext.MAX_PARAMETERS_CHARS
    with pytest.raises(infotext.ParametersTooLongError) as caught:
        infotext.parse_parameters(text)
    assert caught.value.chars == len(text) and caught.value.limit == 64 * 1024
    assert str(caught.value) == f"the parameters text is {len(text)} characters; at most 65536"


def test_pairs_and_lora_hashes_are_bounded() -> None:
    line = ", ".join(f"Key{i}: {i}" for i in range(5000))
    assert len(infotext.params_line(line)) == infotext.MAX_PARAMS
    value = ", ".join(f"lora{i}: {i:012x}" for i in range(5000))
    entries, dropped = infotext.lora_hash_entries(value)
    assert len(entries) == infotext.MAX_LORA_HASHES == 64
    assert dropped == 5000 - 64
    assert entries[0] == ("lora0", "000000000000") and entries[-1][0] == "lora63"


def test_windows_line_ends_and_a_short_last_line() -> None:
    parsed = infotext.parse_parameters(
        "a cat\r\nNegative prompt: dog\r\nSteps: 2, Seed: 3, Size: 8x8"
    )
    assert parsed["prompt"] == "a cat" and parsed["negative_prompt"] == "dog"
    assert parsed["Seed"] == "3"
    # Fewer than three pairs: A1111 reads the line as part of the prompt.
    only_prompt = infotext.parse_parameters("a cat\nStyle: ink, Mood: calm")
    assert only_prompt["prompt"] == "a cat\nStyle: ink, Mood: calm" and "Style" not in only_prompt
