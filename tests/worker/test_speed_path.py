"""The GPU speed path's choices and the CUDA-graph wrapper's fallbacks (no GPU needed).

The graphs themselves only run on CUDA (bench/gpu.py checks their images against an eager
run there); here: which inputs are graphed at all, that anything else reaches the plain
forward unchanged, and what the engine picks per architecture.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

pytest.importorskip("torch")

import torch  # noqa: E402

from sandbox.worker.cudagraph import UNetGraphs  # noqa: E402
from sandbox.worker.pipeline import Engine  # noqa: E402


class _TinyUNet(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = torch.nn.Linear(4, 4)
        self.calls = 0

    def forward(
        self,
        sample: Any,
        timestep: Any,
        encoder_hidden_states: Any,
        added_cond_kwargs: Any = None,
        return_dict: bool = True,
        **_: Any,
    ) -> Any:
        self.calls += 1
        out = self.proj(sample) + encoder_hidden_states.mean() + timestep
        return (out,)


def test_graphs_wrapper_falls_back_to_the_plain_forward_off_cuda() -> None:
    unet = _TinyUNet()
    runner = UNetGraphs.install(unet)
    assert UNetGraphs.install(unet) is runner  # idempotent
    x, states = torch.randn(2, 4), torch.randn(2, 3, 4)
    with torch.no_grad():
        for _ in range(3):  # a CUDA input would be captured on the second call
            out = unet(x, torch.tensor(5), encoder_hidden_states=states, return_dict=False)[0]
    assert unet.calls == 3 and not runner.graphs and runner.captures == 0
    expected = unet.proj(x) + states.mean() + 5
    assert torch.equal(out, expected)
    UNetGraphs.uninstall(unet)
    assert "forward" not in unet.__dict__


def test_graphs_key_rejects_what_a_graph_cannot_replay(monkeypatch: pytest.MonkeyPatch) -> None:
    runner = UNetGraphs(_TinyUNet(), lambda *a, **k: None)
    x, states = torch.randn(2, 4), torch.randn(2, 3, 4)
    assert runner._key(x, 1, states, (), {}) is None  # not on a GPU
    monkeypatch.setattr(UNetGraphs, "_on_gpu", staticmethod(lambda t: True))
    assert runner._key(x, 1, states, (), {}) is None  # gradients on
    with torch.no_grad():
        plain = runner._key(x, torch.tensor(1), states, (), {"return_dict": False})
        assert plain is not None
        assert runner._key(x, torch.tensor(2), states, (), {"return_dict": False}) == plain
        assert runner._key(x[:1], torch.tensor(1), states, (), {"return_dict": False}) != plain
        sdxl = {"added_cond_kwargs": {"text_embeds": x, "time_ids": x}}
        assert runner._key(x, 1, states, (), sdxl) is not None
        for extra in (
            {"down_block_additional_residuals": (x,)},  # ControlNet
            {"cross_attention_kwargs": {"scale": 0.5}},  # a LoRA scale
            {"something_new": 1},
            {"added_cond_kwargs": {"text_embeds": "not a tensor"}},
        ):
            assert runner._key(x, 1, states, (), extra) is None, extra
        assert runner._key(x, torch.tensor([1, 2]), states, (), {}) is None
        assert runner._key(x, 1, states, (x,), {}) is None  # positional extras
        runner.enabled = False
        assert runner._key(x, 1, states, (), {}) is None


def _engine_for(arch: str | None, **kw: Any) -> Engine:
    engine = Engine(**kw)
    engine.info = None if arch is None else SimpleNamespace(arch=arch)  # type: ignore[assignment]
    return engine


def test_speed_path_choices_per_architecture() -> None:
    assert _engine_for("sd15")._compile_choice() == ("default", "transformers")
    assert _engine_for("sdxl")._compile_choice() == ("default", "blocks")
    assert not _engine_for("sd15")._vae_compile_choice()
    assert _engine_for("sdxl")._vae_compile_choice()
    assert not _engine_for("sdxl", compile_vae=False)._vae_compile_choice()
    e = _engine_for("sd15", compile_mode="reduce-overhead", compile_scope="unet")
    assert e._compile_choice() == ("reduce-overhead", "unet")
    assert not e._graphs_choice("reduce-overhead")  # that mode captures graphs itself
    assert e._graphs_choice("default") and e._graphs_choice(None)
    assert not _engine_for("sd15", cuda_graphs=False)._graphs_choice("default")


class _Block(torch.nn.Module):
    """Compiled like the UNet's transformer blocks (torch's own modules are not traced)."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.randn(4, 4))

    def forward(self, x: Any) -> Any:
        return torch.nn.functional.gelu(x @ self.weight)


def test_a_new_signature_runs_eagerly_until_the_idle_warm_up(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A fresh worker's first job never waits for the compile; ``warm_up`` compiles it."""
    monkeypatch.setattr(UNetGraphs, "_on_gpu", staticmethod(lambda t: True))

    def fake_capture(
        self: UNetGraphs, entry: Any, sample: Any, timestep: Any, states: Any, added: Any
    ) -> None:  # CUDA graphs need a GPU: "replay" leaves the last output in place
        entry.static = {"sample": sample.clone(), "timestep": timestep.clone(), "states": states}
        entry.added = {}
        entry.out = self.forward(sample, timestep, states, return_dict=False)[0]
        entry.graph = SimpleNamespace(replay=lambda: None)

    monkeypatch.setattr(UNetGraphs, "_capture", fake_capture)
    traced: list[Any] = []

    def backend(gm: Any, _inputs: Any) -> Any:
        traced.append(gm)
        return gm.forward

    unet = _TinyUNet()
    unet.proj = _Block()
    unet.proj.compile(backend=backend, fullgraph=True, dynamic=False)
    runner = UNetGraphs.install(unet)
    runner.eager_until_warm = True
    x, states = torch.randn(2, 4), torch.randn(2, 3, 4)
    with torch.no_grad():
        for _ in range(3):
            unet(x, torch.tensor(5), encoder_hidden_states=states, return_dict=False)
        assert traced == []  # ran eagerly: nothing traced
        assert len(runner.pending) == 1 and not runner.warm
        assert runner.warm_up() == 1
        assert len(traced) == 1 and not runner.pending and len(runner.warm) == 1
        out = unet(x, torch.tensor(5), encoder_hidden_states=states, return_dict=False)[0]
        assert len(traced) == 1  # a warm signature: no new trace
        assert torch.allclose(out, unet.proj(x) + states.mean() + 5)
        assert runner.warm_up() == 0  # nothing left to do
