"""The engine on a full-size SD1.5 checkpoint with random weights: 64x64, 2 steps, CPU."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("torch")
pytest.importorskip("peft")

from sandbox.worker import infotext  # noqa: E402
from sandbox.worker.errors import LoraMismatchError, SpecError  # noqa: E402
from sandbox.worker.generate import generate  # noqa: E402

from .helpers import base_spec, pixels  # noqa: E402

pytestmark = pytest.mark.worker


def civitai_autov3(path: Path) -> str:
    """AutoV3 as Civitai defines it (independent of the engine's own helper)."""
    data = path.read_bytes()
    n = int.from_bytes(data[:8], "little")
    return hashlib.sha256(data[8 + n :]).hexdigest()[:12]


def test_same_seed_gives_identical_png_bytes(
    engine15: Any, sd15_path: Path, baseline15: Any
) -> None:
    again = generate(engine15, base_spec(sd15_path))[0]
    assert again.png == baseline15.png
    assert (again.width, again.height) == (64, 64)
    assert len(set(pixels(again.png))) > 50  # a real image, not a flat or NaN-black one


def test_lora_weight_zero_equals_no_lora(
    engine15: Any, sd15_path: Path, loras15: dict[str, Path], baseline15: Any
) -> None:
    spec = base_spec(
        sd15_path,
        prompt=base_spec(sd15_path)["prompt"] + " <lora:a:0>",
        loras=[{"name": "a", "path": str(loras15["a"])}],
    )
    out = generate(engine15, spec)[0]
    assert pixels(out.png) == pixels(baseline15.png)


def test_lora_changes_output_and_switching_has_no_drift(
    engine15: Any, sd15_path: Path, loras15: dict[str, Path], baseline15: Any
) -> None:
    a = {"name": "a", "path": str(loras15["a"])}
    b = {"name": "b", "path": str(loras15["b"]), "te_weight": 0.0, "unet_weight": 1.0}
    with_a = generate(engine15, base_spec(sd15_path, loras=[a]))[0]
    assert pixels(with_a.png) != pixels(baseline15.png)
    both = generate(engine15, base_spec(sd15_path, loras=[a, b]))[0]  # LoRA + LoCon at once
    assert pixels(both.png) not in (pixels(with_a.png), pixels(baseline15.png))
    again_a = generate(engine15, base_spec(sd15_path, loras=[a]))[0]
    assert again_a.png == with_a.png  # switching back and forth: same bytes
    assert list(engine15.adapters())  # the adapter stayed loaded, nothing was fused
    none = generate(engine15, base_spec(sd15_path))[0]
    assert none.png == baseline15.png  # all LoRAs removed: bit-identical to a fresh load


def test_png_metadata_parses_back_to_the_job(
    engine15: Any, sd15_path: Path, loras15: dict[str, Path]
) -> None:
    spec = base_spec(
        sd15_path,
        prompt="a fox, (snow:1.3) <lora:a:0.7>",
        sampler="DPM++ 2M Karras",
        clip_skip=2,
        seed=42,
        batch_size=2,
        model_name="foxMix_v1",
        loras=[{"name": "a", "path": str(loras15["a"]), "trigger_words": ["foxstyle"]}],
        prepend_trigger_words=True,
    )
    images = generate(engine15, spec)
    assert [im.seed for im in images] == [42, 43]
    assert images[0].png != images[1].png
    parsed = infotext.parse(infotext.read_png_text(images[1].png) or "")
    assert parsed["prompt"] == "foxstyle, a fox, (snow:1.3) <lora:a:0.7>"
    assert parsed["negative_prompt"] == "blurry"
    assert parsed["Steps"] == "2" and parsed["Seed"] == "43" and parsed["Size"] == "64x64"
    assert (parsed["Sampler"], parsed["Schedule type"]) == ("DPM++ 2M", "Karras")
    assert parsed["CFG scale"] == "7" and parsed["Clip skip"] == "2"
    assert parsed["Model hash"] == "ab" * 5 and parsed["Model"] == "foxMix_v1"
    assert infotext.parse_lora_hashes(parsed["Lora hashes"]) == {"a": civitai_autov3(loras15["a"])}
    assert parsed["Version"] == "assetmgr 0.1" and parsed["RNG"] == "CPU"
    assert list(parsed)[2:] == [
        "Steps", "Sampler", "Schedule type", "CFG scale", "Seed", "Size", "Model hash",
        "Model", "Clip skip", "RNG", "Lora hashes", "Version",
    ]  # fmt: skip


def test_mismatched_and_partial_loras_fail_clearly(
    engine15: Any, sd15_path: Path, loras15: dict[str, Path], loraxl: Path, baseline15: Any
) -> None:
    with pytest.raises(LoraMismatchError, match="SDXL LoRA .* SD 1.5 checkpoint"):
        generate(engine15, base_spec(sd15_path, loras=[{"name": "x", "path": str(loraxl)}]))
    with pytest.raises(LoraMismatchError, match="applies only partly"):
        generate(
            engine15, base_spec(sd15_path, loras=[{"name": "p", "path": str(loras15["partial"])}])
        )
    with pytest.raises(SpecError, match="no file"):
        generate(engine15, base_spec(sd15_path, prompt="a <lora:missing:1>"))
    # The failed loads left nothing behind.
    assert generate(engine15, base_spec(sd15_path))[0].png == baseline15.png


def test_img2img_and_hires_fix(
    engine15: Any, sd15_path: Path, baseline15: Any, tmp_path: Path
) -> None:
    init = tmp_path / "init.png"
    init.write_bytes(baseline15.png)
    out = generate(
        engine15,
        base_spec(sd15_path, img2img={"init_image": str(init), "denoise": 0.5}),
        out_dir=tmp_path / "out",
    )[0]
    assert out.path is not None and out.path.read_bytes() == out.png
    assert infotext.parse(out.infotext)["Denoising strength"] == "0.5"
    hires = generate(
        engine15, base_spec(sd15_path, hires={"scale": 1.5, "steps": 1, "denoise": 0.6})
    )[0]
    assert (hires.width, hires.height) == (96, 96)
    meta = infotext.parse(hires.infotext)
    assert meta["Size"] == "64x64" and meta["Hires upscale"] == "1.5"
    assert meta["Hires steps"] == "1" and meta["Hires upscaler"] == "Latent"
