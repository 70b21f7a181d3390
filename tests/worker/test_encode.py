"""Prompt encoding parity with diffusers, clip skip, chunking; tokenizer; synth round trip."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

from sandbox.worker import pipeline as pipemod  # noqa: E402
from sandbox.worker.errors import TokenizerError  # noqa: E402
from sandbox.worker.prompts import encode_prompts  # noqa: E402
from tests import synth  # noqa: E402

pytestmark = pytest.mark.worker

PROMPT = "a photo of a cat, masterpiece, soft light"
NEGATIVE = "blurry, lowres"


def test_tokenizer_is_complete() -> None:
    tok = pipemod.load_tokenizer()
    assert len(tok) == 49408 and tok.model_max_length == 77
    tok2 = pipemod.load_tokenizer(pad_token="!")
    ids = tok2("a cat", padding="max_length", max_length=77).input_ids
    assert ids[:4] == [49406, 320, 2368, 49407] and set(ids[4:]) == {0}


def test_missing_tokenizer_files_fail_clearly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pipemod, "TOKENIZER_DIR", tmp_path)
    pipemod._vocab_and_merges.cache_clear()
    try:
        with pytest.raises(TokenizerError, match="missing"):
            pipemod.load_tokenizer()
    finally:
        monkeypatch.undo()
        pipemod._vocab_and_merges.cache_clear()


def test_unweighted_prompt_is_bit_identical_to_diffusers(engine15: Any) -> None:
    engine15.set_loras([])
    pipe = engine15.pipe
    ours = encode_prompts(pipe, PROMPT, NEGATIVE, clip_skip=1)
    ref_pos, ref_neg = pipe.encode_prompt(PROMPT, "cpu", 1, True, NEGATIVE)
    assert torch.equal(ours.prompt, ref_pos) and torch.equal(ours.negative, ref_neg)


def test_clip_skip_applies_to_both_prompts(engine15: Any) -> None:
    pipe = engine15.pipe
    ours = encode_prompts(pipe, PROMPT, NEGATIVE, clip_skip=2)
    # diffusers' clip_skip=1 is A1111's "Clip skip 2", but only for the positive prompt.
    ref_pos, ref_neg_last = pipe.encode_prompt(PROMPT, "cpu", 1, True, NEGATIVE, clip_skip=1)
    assert torch.equal(ours.prompt, ref_pos)
    assert not torch.equal(ours.negative, ref_neg_last)
    ids = pipe.tokenizer(NEGATIVE, padding="max_length", max_length=77, return_tensors="pt")
    with torch.no_grad():
        hidden = pipe.text_encoder(ids.input_ids, output_hidden_states=True).hidden_states[-2]
        expected = pipemod_final_norm(pipe.text_encoder)(hidden)
    assert torch.equal(ours.negative, expected)


def pipemod_final_norm(te: Any) -> Any:
    return getattr(te, "text_model", te).final_layer_norm


def test_long_prompts_break_and_weights(engine15: Any) -> None:
    pipe = engine15.pipe
    long = ", ".join(["a very detailed castle on a hill"] * 12)  # ~90 tokens
    emb = encode_prompts(pipe, long, "", clip_skip=1)
    assert emb.prompt.shape == (1, 154, 768) and emb.negative.shape == (1, 154, 768)
    broken = encode_prompts(pipe, "a cat BREAK a dog", "", clip_skip=1)
    assert broken.prompt.shape[1] == 154
    plain = encode_prompts(pipe, "a cat on a mat", "", clip_skip=1)
    weighted = encode_prompts(pipe, "a (cat:1.5) on a mat", "", clip_skip=1)
    assert plain.prompt.shape == weighted.prompt.shape
    assert not torch.equal(plain.prompt, weighted.prompt)
    # Emphasis keeps the mean of the chunk, as A1111's "Original" emphasis does.
    assert torch.allclose(weighted.prompt.mean(), plain.prompt.mean(), atol=1e-4)


def _file_tensors(path: Path, keys: list[str]) -> dict[str, Any]:
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        return {k: f.get_tensor(k) for k in keys}


def test_synth_sd15_round_trips_through_from_single_file(engine15: Any, sd15_path: Path) -> None:
    """Our diffusers->LDM conversion, read back by diffusers' loader, gives the same tensors."""
    engine15.set_loras([])
    pipe = engine15.pipe
    ours = {
        **synth.unet_to_ldm(pipe.unet.state_dict(), pipe.unet.config),
        **synth.vae_to_ldm(pipe.vae.state_dict(), pipe.vae.config),
        **synth.clip_l_to_ldm(pipe.text_encoder.state_dict(), "cond_stage_model.transformer."),
    }
    stored = _file_tensors(sd15_path, list(ours))
    assert len(ours) > 1100
    bad = [k for k, v in ours.items() if not torch.equal(v.to(stored[k].dtype), stored[k])]
    assert not bad
