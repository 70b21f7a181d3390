"""SDXL through the same loader, on the reduced-width test checkpoint (full text encoders)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("peft")

from sandbox.worker.errors import EngineError, LoraMismatchError  # noqa: E402
from sandbox.worker.generate import generate  # noqa: E402
from sandbox.worker.pipeline import Engine  # noqa: E402
from sandbox.worker.prompts import encode_prompts  # noqa: E402
from tests import synth  # noqa: E402

from .helpers import THREADS, base_spec, pixels  # noqa: E402

pytestmark = pytest.mark.worker


@pytest.fixture(scope="module")
def xl(synth_cache: Any) -> Iterator[tuple[Engine, dict[str, Any]]]:
    torch.set_num_threads(THREADS)
    path, cfg = synth_cache.sdxl_small(), synth_cache.sdxl_small_config()
    engine = Engine()
    spec = base_spec(path, config_dir=str(cfg), base_model="Pony")
    yield engine, spec
    engine.close()  # free it before other modules run


@pytest.fixture(scope="module")
def xl_baseline(xl: tuple[Engine, dict[str, Any]]) -> Any:
    engine, spec = xl
    return generate(engine, spec)[0]


def test_sdxl_generates_deterministically(
    xl: tuple[Engine, dict[str, Any]], xl_baseline: Any
) -> None:
    engine, spec = xl
    assert engine.arch == "sdxl" and engine.info is not None and engine.info.unet_channels == 32
    assert generate(engine, spec)[0].png == xl_baseline.png
    assert len(set(pixels(xl_baseline.png))) > 50


def test_shipped_config_refuses_the_narrow_test_unet(synth_cache: Any) -> None:
    with pytest.raises(EngineError, match="32 channels wide"):
        Engine().load(synth_cache.sdxl_small())


def test_sdxl_encoding_is_bit_identical_to_diffusers(
    xl: tuple[Engine, dict[str, Any]], xl_baseline: Any
) -> None:
    engine, _ = xl
    engine.set_loras([])
    pipe = engine.pipe
    ours = encode_prompts(pipe, "a photo of a cat", "blurry", clip_skip=1, sdxl=True)
    ref = pipe.encode_prompt("a photo of a cat", None, "cpu", 1, True, "blurry")
    got = (ours.prompt, ours.negative, ours.pooled, ours.negative_pooled)
    assert all(torch.equal(a, b) for a, b in zip(got, ref, strict=True))
    empty = encode_prompts(pipe, "a photo of a cat", "", clip_skip=1, sdxl=True)
    assert not empty.negative.any() and empty.negative_pooled is not None
    assert not empty.negative_pooled.any()


def test_sdxl_lora_applies_fully_and_sd15_lora_is_refused(
    xl: tuple[Engine, dict[str, Any]], xl_baseline: Any, loraxl: Path, loras15: dict[str, Path]
) -> None:
    engine, spec = xl
    out = generate(engine, dict(spec, loras=[{"name": "x", "path": str(loraxl)}]))[0]
    assert pixels(out.png) != pixels(xl_baseline.png)
    with pytest.raises(LoraMismatchError, match="SD 1.5 LoRA .* SDXL checkpoint"):
        generate(engine, dict(spec, loras=[{"name": "a", "path": str(loras15["a"])}]))


def test_synth_sdxl_round_trips(
    xl: tuple[Engine, dict[str, Any]], xl_baseline: Any, synth_cache: Any
) -> None:
    from safetensors import safe_open

    engine, _ = xl
    engine.set_loras([])
    pipe = engine.pipe
    ours = {
        **synth.unet_to_ldm(pipe.unet.state_dict(), pipe.unet.config),
        **synth.vae_to_ldm(pipe.vae.state_dict(), pipe.vae.config),
        **synth.clip_l_to_ldm(
            pipe.text_encoder.state_dict(), "conditioner.embedders.0.transformer."
        ),
        **synth.open_clip_to_ldm(
            pipe.text_encoder_2.state_dict(), "conditioner.embedders.1.model."
        ),
    }
    with safe_open(str(synth_cache.sdxl_small()), "pt") as f:
        assert set(f.keys()) == set(ours)
        bad = [k for k, v in ours.items() if not torch.equal(v.half(), f.get_tensor(k))]
    assert not bad
