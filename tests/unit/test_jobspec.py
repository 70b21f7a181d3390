"""The generate job's shared contract (`sandbox.protocol.jobspec`): the tag parser, the sampler
names, the field bounds, and the host's checks built on them (`assetmgr.app.generate_checks`)."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from assetmgr.app.generate_checks import (
    InvalidRequestError,
    PromptTagError,
    UnknownSamplerError,
    parse_lora_option,
    request_problems,
)
from assetmgr.app.generation import GenerateRequest
from sandbox.protocol import jobspec
from sandbox.protocol.jobspec import (
    GenSpec,
    NetworkTag,
    TagError,
    check_prompt_tags,
    parse_tags,
    parse_weight,
    scan_tags,
    split_sampler,
)

SHA = "ab" * 32


def spec(**over: Any) -> dict[str, Any]:
    return {
        "model_path": "/models/m.safetensors",
        "model_sha256": SHA,
        "prompt": "x",
        "seed": 1,
        **over,
    }


def test_tags_of_every_form_with_their_positions() -> None:
    prompt = (
        "x <lora:foo:0.8> y <LoRA:bar:.5:1e0> <Lyco:baz> <lora: q :te=0.3:unet=-2> <lora:d:1:1:8>"
    )
    tags = parse_tags(prompt)
    assert [(t.kind, t.name, t.te, t.unet) for t in tags] == [
        ("lora", "foo", 0.8, None),
        ("lora", "bar", 0.5, 1.0),
        ("lyco", "baz", 1.0, None),
        ("lora", "q", 0.3, -2.0),
        ("lora", "d", 1.0, 1.0),
    ]
    assert [prompt[t.start : t.end] for t in tags][:2] == ["<lora:foo:0.8>", "<LoRA:bar:.5:1e0>"]
    assert jobspec.strip_tags(prompt, tags) == "x  y    "
    other = parse_tags("a <hypernet:h:1> b <3 and a:b")
    assert other == [NetworkTag("hypernet", "h:1", 2, 16)]


@pytest.mark.parametrize(
    ("text", "problem", "position"),
    [
        ("a <lora:x:abc>", "weight 'abc' is not a number", 2),
        ("<lora:x:1:zz>", "unet weight 'zz' is not a number", 0),
        ("<lora:x:nan>", "weight 'nan' is not a number", 0),
        ("<lora:x:inf>", "weight 'inf' is not a number", 0),
        ("<lora:x:1e999>", "weight '1e999' is not a number", 0),
        ("<lora:x:1_0>", "weight '1_0' is not a number", 0),
        ("<lora:x:>", "weight '' is not a number", 0),
        ("<lora::1>", "the tag has no LoRA name", 0),
        ("<lora:>", "the tag has no LoRA name", 0),
        ("<lora:x:1:1:1:1>", "too many fields (at most NAME:TE:UNET:DYN)", 0),
        ("<lora:x:te=1:te=2>", "te= is given twice", 0),
        ("ab <lora:x:1", "the tag is not closed with '>'", 3),
        ("<lora:x <lora:y:1>", "the tag is not closed with '>'", 0),
        ("<LYCO:x:dyn=q>", "dyn 'q' is not a number", 0),
    ],
)
def test_malformed_tags_name_the_tag_and_where_it_is(
    text: str, problem: str, position: int
) -> None:
    tags, errors = scan_tags(text)
    assert [(e.problem, e.position) for e in errors[:1]] == [(problem, position)]
    with pytest.raises(TagError) as info:
        parse_tags(text)
    assert info.value.problem == problem and text[info.value.position :].startswith(
        info.value.tag.rstrip("…")[:6]
    )


def test_a_half_typed_tag_does_not_hide_the_good_ones() -> None:
    tags, errors = scan_tags("<lora:a:0.5> b <lora:Det")
    assert [t.name for t in tags] == ["a"] and len(errors) == 1


def test_the_prompt_rules_of_the_worker() -> None:
    assert [t.name for t in check_prompt_tags("<lora:a:1> <lyco:b>", "blurry")] == ["a", "b"]
    cases = [
        (("<hypernet:h:1>", ""), "unsupported"),
        (("<lora:a:1> <LORA:a:0.2>", ""), "duplicate"),
        (("a", "<lora:a:1>"), "negative"),
        (("a", "<lora:a:x>"), "syntax"),
    ]
    for (prompt, negative), kind in cases:
        with pytest.raises(TagError) as info:
            check_prompt_tags(prompt, negative)
        assert info.value.kind == kind


def test_weights_are_finite_decimals() -> None:
    assert parse_weight(" -0.25 ") == -0.25 and parse_weight("1e-2") == 0.01
    for bad in ("", "abc", "nan", "inf", "-Infinity", "1e400", "0x10", "1_000", "١"):
        with pytest.raises(ValueError):
            parse_weight(bad)


def test_lora_option() -> None:
    assert parse_lora_option("inkwash") == ("inkwash", 1.0)
    assert parse_lora_option("Ink: Wash:0.5") == ("Ink: Wash", 0.5)
    assert parse_lora_option("12345:-1") == ("12345", -1.0)
    for bad in ("inkwash:abc", ":1", "inkwash:nan", "<lora:x>:1"):
        with pytest.raises(InvalidRequestError) as info:
            parse_lora_option(bad)
        assert info.value.option == "loras" and info.value.exit_code == 2


def test_sampler_names_any_case_with_suggestions() -> None:
    assert split_sampler("dpm++ 2m KARRAS") == ("DPM++ 2M", "Karras")
    assert split_sampler("DPM++ 2M", "karras") == ("DPM++ 2M", "Karras")
    assert jobspec.canonical_sampler("euler A") == "Euler a"
    for name in jobspec.LISTED_NAMES:
        base, sched = split_sampler(name.upper())
        assert base in jobspec.SAMPLER_NAMES and sched in jobspec.SCHEDULE_TYPES
    with pytest.raises(jobspec.SamplerNameError) as info:
        split_sampler("Eular a")
    assert info.value.suggestions[0] == "Euler a"
    with pytest.raises(jobspec.SamplerNameError):
        split_sampler("DPM++ 2M Karras", "Exponential")
    with pytest.raises(jobspec.SamplerNameError):
        split_sampler("Euler", "Fancy")


def _values(bound: jobspec.Bound) -> list[Any]:
    lo, hi = bound.lo, bound.hi
    values: list[Any] = [lo, hi, lo - 1, hi + 1, (lo + hi) / 2]
    if bound.multiple_of:
        values += [lo + 1, hi - 1, lo + bound.multiple_of]
    if isinstance(lo, float):
        values += [math.nextafter(hi, math.inf), math.nextafter(lo, -math.inf)]
    return values


@pytest.mark.parametrize("field", sorted(jobspec.BOUNDS))
def test_the_spec_model_and_the_bounds_are_one_definition(field: str) -> None:
    """GenSpec accepts a value exactly when the shared bound allows it."""
    bound = jobspec.BOUNDS[field]
    for value in _values(bound):
        if not isinstance(bound.lo, float):
            if value != int(value):
                continue
            value = int(value)
        try:
            GenSpec.model_validate(spec(**{field: value}))
            accepted = True
        except ValidationError:
            accepted = False
        assert accepted == bound.allows(value), (field, value)


def test_the_spec_refuses_what_the_host_refuses() -> None:
    for bad in (
        {"prompt": "x" * (jobspec.PROMPT_MAX_CHARS + 1)},
        {"negative_prompt": "x" * (jobspec.PROMPT_MAX_CHARS + 1)},
        {"sampler": "Euler b"},
        {"prompt": "<lora:x:abc>"},
        {"negative_prompt": "<lora:x:1>"},
        {"loras": [{"name": f"l{i}", "path": "p"} for i in range(jobspec.MAX_LORAS + 1)]},
        {"loras": [{"name": "a", "path": "p", "te_weight": math.inf}]},
    ):
        with pytest.raises(ValidationError):
            GenSpec.model_validate(spec(**bad))


def test_host_errors_carry_the_option_and_the_value() -> None:
    req = GenerateRequest(
        model="m", prompt="<lora:a:x>", width=513, sampler="Eular a", steps=0, dtype="fp8"
    )
    problems = request_problems(req)
    by_option = {p.option: p for p in problems}
    assert set(by_option) == {"steps", "width", "dtype", "sampler", "prompt"}
    assert by_option["width"].value == 513 and by_option["width"].reason == "is not a multiple of 8"
    assert by_option["width"].worded("Width") == "Width 513 is not a multiple of 8"
    assert isinstance(by_option["sampler"], UnknownSamplerError)
    assert by_option["sampler"].suggestions[0] == "Euler a"
    tag = by_option["prompt"]
    assert isinstance(tag, PromptTagError) and tag.tag == "<lora:a:x>" and tag.position == 0
    assert all(p.exit_code == 2 for p in problems)
    assert request_problems(GenerateRequest(model="m", prompt="a <lora:a:0.5>")) == []


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("<>:lorayc=1.-ax ")), max_size=200) | st.text())
def test_any_text_scans_without_raising(text: str) -> None:
    """Prompts from outside (preview images, half-typed ones) never make the scanner raise;
    every tag it returns is a span of the text, and the strict parser agrees with it."""
    tags, errors = scan_tags(text)
    for tag in tags:
        assert 0 <= tag.start < tag.end <= len(text) and text[tag.start] == "<"
        assert text[tag.end - 1] == ">"
    for error in errors:
        assert 0 <= error.position < len(text)
    if errors:
        with pytest.raises(TagError):
            parse_tags(text)
    else:
        assert parse_tags(text) == tags


def test_a_long_run_of_unclosed_tags_is_one_error_each() -> None:
    tags, errors = scan_tags("<lora:" * 50_000)
    assert tags == [] and len(errors) == 50_000
