"""Job spec validation, sampler names and shipped tokenizer files (no torch)."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from sandbox.protocol import jobspec
from sandbox.protocol.jobspec import GenSpec
from sandbox.worker import samplers
from sandbox.worker.errors import SamplerError
from tests.synth import build_tokenizer

from .helpers import base_spec


def spec(**over: Any) -> GenSpec:
    return GenSpec.model_validate(base_spec(Path("/models/m.safetensors"), **over))


def test_defaults_and_seeds() -> None:
    s = spec(batch_size=3, seed=2**32 - 2)
    assert s.image_seeds == [2**32 - 2, 2**32 - 1, 0]
    assert s.dtype == "float32" and s.device == "cpu" and s.clip_skip == 1
    hires = spec(width=512, height=768, hires={"scale": 1.5, "denoise": 0.4})
    assert hires.hires_size() == (768, 1152)


@pytest.mark.parametrize(
    "over",
    [
        {"width": 100},
        {"seed": -1},
        {"steps": 0},
        {"model_sha256": "xyz"},
        {"unknown_field": 1},
        {"dtype": "float16", "device": "cpu"},
        {"optimize": True},
        {"img2img": {"init_image": "a.png"}, "hires": {}},
        {"loras": [{"name": "a", "path": "x"}, {"name": "a", "path": "y"}]},
        {"loras": [{"name": "a:b", "path": "x"}]},
    ],
)
def test_invalid_specs(over: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        spec(**over)


def test_the_worker_builds_every_sampler_the_contract_names() -> None:
    assert tuple(samplers.SAMPLERS) == jobspec.SAMPLER_NAMES
    assert tuple(samplers.SCHEDULE_TYPES) == jobspec.SCHEDULE_TYPES


def test_sampler_names() -> None:
    assert samplers.split_name("DPM++ 2M Karras") == ("DPM++ 2M", "Karras")
    assert samplers.split_name("DPM++ 2M", "Karras") == ("DPM++ 2M", "Karras")
    assert samplers.split_name("DPM2 a Karras") == ("DPM2 a", "Karras")
    assert samplers.infotext_fields("Euler a") == ("Euler a", None)
    assert samplers.infotext_fields("DPM++ SDE Karras") == ("DPM++ SDE", "Karras")
    for bad in ("Euler b", "DPM adaptive"):
        with pytest.raises(SamplerError):
            samplers.split_name(bad)
    with pytest.raises(SamplerError):
        samplers.split_name("DPM++ 2M Karras", "Exponential")
    for name in samplers.LISTED_NAMES:
        samplers.split_name(name)


def test_shipped_tokenizer_files_are_consistent() -> None:
    """vocab.json.gz is exactly what CLIP's rule derives from merges.txt.gz (provenance)."""
    folder = build_tokenizer.DEFAULT_OUT
    assert (folder / "LICENSE").read_text().count("Copyright (c) 2021 OpenAI") == 1
    merges_txt = gzip.decompress((folder / "merges.txt.gz").read_bytes()).decode()
    assert merges_txt.startswith("#version: 0.2\n")
    # Rebuild the vocabulary from the shipped merges as if they were the original .gz.
    fake_bpe = '"bpe_simple_vocab_16e6.txt#version: 0.2\n' + merges_txt.split("\n", 1)[1]
    vocab, merges = build_tokenizer.vocab_and_merges(fake_bpe)
    shipped = json.loads(gzip.decompress((folder / "vocab.json.gz").read_bytes()))
    assert shipped == vocab and len(vocab) == 49408 and len(merges) == 48894
    assert vocab["<|startoftext|>"] == 49406 and vocab["<|endoftext|>"] == 49407
