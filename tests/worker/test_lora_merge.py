"""LoRAs written into the weights in place: same modules, same addresses, exact removal."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("torch")
pytest.importorskip("peft")

from sandbox.worker.lora_merge import Factor, WeightPatcher  # noqa: E402
from sandbox.worker.pipeline import LoraUse  # noqa: E402

pytestmark = pytest.mark.worker


def _models(engine: Any) -> dict[str, Any]:
    return {"unet": engine.pipe.unet, "text_encoder": engine.pipe.text_encoder}


def _fingerprint(engine: Any) -> tuple[str, dict[str, int], list[tuple[str, str]]]:
    """Every weight's bytes, every weight's address, every module's name and type."""
    digest = hashlib.sha256()
    addresses: dict[str, int] = {}
    layout: list[tuple[str, str]] = []
    for comp, model in _models(engine).items():
        for name, param in model.named_parameters():
            digest.update(name.encode())
            digest.update(param.detach().cpu().contiguous().numpy().tobytes())
            addresses[f"{comp}.{name}"] = param.data_ptr()
        layout += [(f"{comp}.{n}", type(m).__name__) for n, m in model.named_modules()]
    return digest.hexdigest(), addresses, layout


def test_weight_changes_keep_modules_and_addresses_and_removal_is_exact(
    engine15: Any, loras15: dict[str, Path]
) -> None:
    engine15.set_loras([])
    before, addresses, layout = _fingerprint(engine15)

    a = str(loras15["a"])
    engine15.set_loras([LoraUse("a", a, 0.5, 0.5)])
    half, addresses_half, layout_half = _fingerprint(engine15)
    assert half != before  # the LoRA is in the weights
    # Same modules (no wrappers left) and the same storage: compiled code and captured CUDA
    # graphs read these addresses, so they stay valid across LoRA changes.
    assert layout_half == layout
    assert addresses_half == addresses

    engine15.set_loras([LoraUse("a", a, 1.0, 1.0), LoraUse("b", str(loras15["b"]), 0.0, 1.0)])
    both, addresses_both, layout_both = _fingerprint(engine15)
    assert both not in (before, half)
    assert (addresses_both, layout_both) == (addresses, layout)

    engine15.set_loras([LoraUse("a", a, 0.5, 0.5)])
    assert _fingerprint(engine15)[0] == half  # recomputed from the originals: no drift

    engine15.set_loras([LoraUse("a", a, 0.0, 0.0)])
    assert _fingerprint(engine15)[0] == before  # weight 0 is left out, exactly

    engine15.set_loras([])
    assert _fingerprint(engine15) == (before, addresses, layout)


def test_a_factor_of_a_fused_projection_lands_in_both_copies() -> None:
    import torch
    from diffusers.models.attention_processor import Attention

    torch.manual_seed(0)
    attn = Attention(query_dim=32, heads=2, dim_head=16)
    attn.fuse_projections()
    qkv0 = attn.to_qkv.weight.detach().clone()
    k0 = attn.to_k.weight.detach().clone()
    factor = Factor(down=torch.randn(4, 32), up=torch.randn(32, 4), scale=0.5)
    patcher = WeightPatcher()

    patcher.apply({"m": attn}, [({("m", "to_k"): factor}, {"m": 0.8})])
    k1 = attn.to_k.weight.detach()
    assert not torch.equal(k1, k0)
    assert torch.equal(attn.to_qkv.weight[32:64], k1)  # the fused copy of to_k
    assert torch.equal(attn.to_qkv.weight[:32], qkv0[:32])  # q and v untouched
    assert torch.equal(attn.to_qkv.weight[64:], qkv0[64:])
    expected = (k0 + 0.8 * 0.5 * (factor.up @ factor.down)).to(k0.dtype)
    assert torch.allclose(k1, expected, atol=1e-6)

    patcher.restore()
    assert torch.equal(attn.to_k.weight, k0)
    assert torch.equal(attn.to_qkv.weight, qkv0)
    assert patcher.touched == 0
