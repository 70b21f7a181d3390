"""Architecture detection from safetensors headers (no torch: headers are written by hand)."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from sandbox.worker import arch
from sandbox.worker.errors import (
    HeaderError,
    LoraMismatchError,
    ModelMismatchError,
    UnsupportedModelError,
)

U = "model.diffusion_model."


def write_header(path: Path, tensors: dict[str, list[int]], dtype: str = "F16") -> Path:
    """A safetensors file whose data section is all zeros; only the header matters here."""
    header: dict[str, object] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, shape in tensors.items():
        n = 2
        for d in shape:
            n *= d
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + n]}
        offset += n
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + bytes(offset))
    return path


def sd15_keys(context: int = 768, in_ch: int = 4) -> dict[str, list[int]]:
    return {
        U + "input_blocks.0.0.weight": [320, in_ch, 3, 3],
        U + "input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": [320, context],
        "first_stage_model.decoder.conv_in.weight": [512, 4, 3, 3],
        "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight": [4, 768],
    }


def sdxl_keys(width: int = 320) -> dict[str, list[int]]:
    return {
        U + "input_blocks.0.0.weight": [width, 4, 3, 3],
        U + "label_emb.0.0.weight": [1280, 2816],
        U + "input_blocks.4.1.transformer_blocks.0.attn2.to_k.weight": [640, 2048],
        "first_stage_model.decoder.conv_in.weight": [512, 4, 3, 3],
        "conditioner.embedders.0.transformer.text_model.embeddings.token_embedding.weight": [4, 8],
        "conditioner.embedders.1.model.positional_embedding": [77, 1280],
    }


def test_sd15_and_sdxl(tmp_path: Path) -> None:
    info = arch.inspect_checkpoint(write_header(tmp_path / "a.safetensors", sd15_keys()))
    assert (info.arch, info.unet_channels, info.context_dim, info.dtype) == (
        "sd15",
        320,
        768,
        "F16",
    )
    info = arch.inspect_checkpoint(write_header(tmp_path / "b.safetensors", sdxl_keys(32)))
    assert (info.arch, info.unet_channels) == ("sdxl", 32)


@pytest.mark.parametrize(
    ("keys", "needle"),
    [
        ({**sd15_keys(1024), "cond_stage_model.model.token_embedding.weight": [4, 1024]}, "SD 2"),
        (sd15_keys(1024), "SD 2"),
        ({"double_blocks.0.img_attn.qkv.weight": [9, 3]}, "Flux"),
        ({U + "joint_blocks.0.x_block.attn.qkv.weight": [9, 3]}, "SD3"),
        ({**sd15_keys(), "edm_mean": [4]}, "Playground"),
        ({"conditioner.embedders.0.model.text_projection": [1280, 1280]}, "refiner"),
        (sd15_keys(in_ch=9), "inpainting"),
        ({k: v for k, v in sd15_keys().items() if "first_stage" not in k}, "VAE"),
        ({"conv_in.weight": [320, 4, 3, 3], "down_blocks.0.x": [1]}, "bare diffusers"),
        ({"foo": [1]}, "not a Stable Diffusion"),
    ],
)
def test_unsupported_checkpoints(tmp_path: Path, keys: dict[str, list[int]], needle: str) -> None:
    with pytest.raises(UnsupportedModelError, match=needle):
        arch.inspect_checkpoint(write_header(tmp_path / "m.safetensors", keys))


def test_not_safetensors(tmp_path: Path) -> None:
    pickle = tmp_path / "m.ckpt"
    pickle.write_bytes(b"PK\x03\x04" + bytes(100))
    with pytest.raises(HeaderError, match="pickle"):
        arch.read_header(pickle)
    junk = tmp_path / "j.safetensors"
    junk.write_bytes(struct.pack("<Q", 10**12) + b"{}")
    with pytest.raises(HeaderError):
        arch.read_header(junk)
    short = tmp_path / "s.safetensors"
    short.write_bytes(b"abc")
    with pytest.raises(HeaderError):
        arch.read_header(short)


def test_base_model_cross_check(tmp_path: Path) -> None:
    path = write_header(tmp_path / "a.safetensors", sd15_keys())
    arch.inspect_checkpoint(path, "SD 1.5")
    arch.inspect_checkpoint(path, "Some New Thing")  # unknown: no opinion
    for base in ("SDXL 1.0", "Pony", "Illustrious", "Flux.1 D"):
        with pytest.raises(ModelMismatchError, match=base):
            arch.inspect_checkpoint(path, base)
    xl = write_header(tmp_path / "b.safetensors", sdxl_keys())
    arch.inspect_checkpoint(xl, "Pony")
    with pytest.raises(ModelMismatchError):
        arch.inspect_checkpoint(xl, "Pony V7")  # AuraFlow-based


def _kohya(names: dict[str, tuple[int, ...]]) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for name, down in names.items():
        out[name + ".lora_down.weight"] = list(down)
        out[name + ".lora_up.weight"] = [down[1], down[0]]
        out[name + ".alpha"] = []
    return out


def test_lora_kinds(tmp_path: Path) -> None:
    sd15 = _kohya(
        {
            "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k": (4, 768),
            "lora_unet_down_blocks_0_resnets_0_conv1": (4, 320, 3, 3),
            "lora_te_text_model_encoder_layers_0_self_attn_q_proj": (4, 768),
        }
    )
    info = arch.inspect_lora(write_header(tmp_path / "l.safetensors", sd15), "SD 1.5")
    assert (info.arch, info.kind, info.format, info.rank) == ("sd15", "locon", "kohya", 4)
    assert info.modules == {"text_encoder": 1, "unet": 2} and info.total_modules == 3

    sdxl = _kohya(
        {
            "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q": (8, 640),
            "lora_te1_text_model_encoder_layers_0_mlp_fc1": (8, 768),
            "lora_te2_text_model_encoder_layers_0_mlp_fc1": (8, 1280),
        }
    )
    info = arch.inspect_lora(write_header(tmp_path / "x.safetensors", sdxl))
    assert (info.arch, info.kind, info.rank) == ("sdxl", "lora", 8)
    assert info.modules == {"text_encoder": 1, "text_encoder_2": 1, "unet": 1}
    with pytest.raises(ModelMismatchError):
        arch.inspect_lora(tmp_path / "x.safetensors", "SD 1.5")
    with pytest.raises(LoraMismatchError, match="SDXL LoRA"):
        arch.check_lora_fits(info, "sd15")

    peft = {
        "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k.lora_A.weight": [4, 2048],
        "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k.lora_B.weight": [640, 4],
    }
    info = arch.inspect_lora(write_header(tmp_path / "p.safetensors", peft))
    assert (info.arch, info.format) == ("sdxl", "peft")


@pytest.mark.parametrize(
    ("keys", "needle"),
    [
        ({"lora_unet_a.hada_w1_a": [4, 4], "lora_unet_a.hada_w1_b": [4, 4]}, "LoHa"),
        ({"lora_unet_a.lokr_w1": [4, 4]}, "LoKr"),
        (_kohya({"lora_unet_double_blocks_0_img_attn_qkv": (4, 3072)}), "Flux"),
        (_kohya({"lora_unet_x_attn2_to_k": (4, 1024)}), "SD 2"),
        ({"something.weight": [4]}, "not a LoRA"),
    ],
)
def test_unsupported_loras(tmp_path: Path, keys: dict[str, list[int]], needle: str) -> None:
    with pytest.raises(UnsupportedModelError, match=needle):
        arch.inspect_lora(write_header(tmp_path / "l.safetensors", keys))
