"""A1111 ``parameters`` text and deterministic PNGs (no torch)."""

from __future__ import annotations

from PIL import Image

from sandbox.worker import infotext

DOC_EXAMPLE = (
    "score_9, inkwash style, a heron in reeds at dawn <lora:inkwash_style_pony_v11:0.8>\n"
    "Negative prompt: score_4, color, blurry\n"
    "Steps: 28, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 6, Seed: 1734419982, "
    "Size: 832x1216, Model hash: 0bdfbb4c0b, Model: harborlightMix_v20, Clip skip: 2, "
    'Lora hashes: "inkwash_style_pony_v11: ddc056e1336e", Version: v1.10.1'
)


def test_build_reproduces_the_a1111_example_exactly() -> None:
    params = {
        "Version": "v1.10.1",  # order comes from A1111's list, not from the dict
        "Steps": 28,
        "Sampler": "DPM++ 2M",
        "Schedule type": "Karras",
        "CFG scale": infotext.fmt_number(6.0),
        "Seed": 1734419982,
        "Size": "832x1216",
        "Model hash": "0bdfbb4c0b",
        "Model": "harborlightMix_v20",
        "Denoising strength": None,
        "Clip skip": 2,
        "Lora hashes": infotext.lora_hashes_value([("inkwash_style_pony_v11", "ddc056e1336e")]),
    }
    text = infotext.build(
        "score_9, inkwash style, a heron in reeds at dawn <lora:inkwash_style_pony_v11:0.8>",
        "score_4, color, blurry",
        params,
    )
    assert text == DOC_EXAMPLE


def test_parse_round_trip() -> None:
    parsed = infotext.parse_parameters(DOC_EXAMPLE)
    assert parsed["prompt"].endswith("<lora:inkwash_style_pony_v11:0.8>")
    assert parsed["negative_prompt"] == "score_4, color, blurry"
    assert parsed["Steps"] == "28" and parsed["Schedule type"] == "Karras"
    assert parsed["Lora hashes"] == "inkwash_style_pony_v11: ddc056e1336e"
    assert infotext.parse_lora_hashes(parsed["Lora hashes"]) == {
        "inkwash_style_pony_v11": "ddc056e1336e"
    }


def test_multiline_prompt_no_negative_and_quoting() -> None:
    text = infotext.build(
        "line one\nline two", "", {"Steps": 2, "Model": "a, b: c", "Seed": 1, "Version": "x"}
    )
    assert text == 'line one\nline two\nSteps: 2, Seed: 1, Model: "a, b: c", Version: x'
    parsed = infotext.parse(text)
    assert parsed["prompt"] == "line one\nline two" and parsed["negative_prompt"] == ""
    assert parsed["Model"] == "a, b: c"


def test_lora_names_lose_separators() -> None:
    assert infotext.lora_hashes_value([("a:b,c", "0123"), ("d", "4567")]) == "abc: 0123, d: 4567"


def test_fmt_number() -> None:
    assert [infotext.fmt_number(x) for x in (7.0, 6.5, 0.55, 2)] == ["7", "6.5", "0.55", "2"]


def test_png_is_deterministic_and_carries_text() -> None:
    img = Image.new("RGB", (16, 8), (10, 200, 30))
    text = "a café ☕\nSteps: 2, Seed: 3, Size: 16x8"
    a, b = infotext.png_bytes(img, text), infotext.png_bytes(img.copy(), text)
    assert a == b
    assert infotext.read_png_text(a) == text  # non-Latin-1 -> iTXt, still read back
    assert b"tIME" not in a
