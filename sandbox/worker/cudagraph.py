"""Whole-UNet CUDA graphs: one capture per input signature, replayed for every later step.

At SD1.5 sizes the UNet is launch-bound (hundreds of small kernels, Python in between), and
even at SDXL sizes the eager glue between compiled blocks leaves the GPU idle at times. A CUDA
graph replays the whole forward with one launch. Capturing the UNet directly (instead of
``torch.compile(mode="reduce-overhead")`` of the whole model) keeps the compile per block, so a
restarted worker only retraces a handful of small graphs: seconds, not a whole-UNet trace.

``UNetGraphs.install(unet)`` replaces the instance's ``forward``; the module itself stays the
same object, so diffusers and peft (LoRA loading) see the plain UNet. Rules:

* only the pipelines' plain call is graphed (sample, timestep, text states, SDXL's added
  conditioning, ``return_dict``); anything else (ControlNet residuals, masks, gradients,
  non-CUDA inputs) runs the normal forward;
* the first call of a new signature runs normally (it compiles, cuDNN picks its algorithms),
  the second captures, later ones replay;
* captured graphs bake in weights' addresses: LoRAs are written into the weights in place
  (`lora_merge`), so they stay valid; ``reset()`` drops them;
* with ``eager_until_warm`` (set while the UNet's compile is deferred), a signature not yet
  warmed runs eagerly (still graphed) and its inputs are kept; ``warm_up()``, called while the
  worker is idle, compiles those signatures and captures the compiled forward instead.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from typing import Any

log = logging.getLogger(__name__)

#: Distinct shapes kept captured (each holds its own activation memory): base + hires pass.
MAX_GRAPHS = 3

_PLAIN_NONE = (
    "class_labels",
    "timestep_cond",
    "attention_mask",
    "down_block_additional_residuals",
    "mid_block_additional_residual",
    "down_intrablock_additional_residuals",
    "encoder_attention_mask",
)


class _Captured:
    def __init__(self) -> None:
        self.graph: Any = None
        self.static: dict[str, Any] = {}
        self.added: dict[str, Any] = {}
        self.out: Any = None


class UNetGraphs:
    """Callable installed as ``unet.forward``; see the module docstring."""

    def __init__(self, unet: Any, forward: Any) -> None:
        self.unet = unet
        self.forward = forward  # the bound original forward
        self.graphs: OrderedDict[tuple[Any, ...], _Captured] = OrderedDict()
        self.enabled = True
        self.replays = 0
        self.captures = 0
        self.eager_until_warm = False
        self.warm: set[tuple[Any, ...]] = set()
        #: Inputs of signatures that ran eagerly, for ``warm_up``.
        self.pending: dict[tuple[Any, ...], tuple[Any, Any, Any, dict[str, Any]]] = {}

    @classmethod
    def install(cls, unet: Any) -> UNetGraphs:
        existing = unet.__dict__.get("forward")
        if isinstance(existing, UNetGraphs):
            return existing
        runner = cls(unet, unet.forward)
        unet.forward = runner
        return runner

    @staticmethod
    def uninstall(unet: Any) -> None:
        existing = unet.__dict__.get("forward")
        if isinstance(existing, UNetGraphs):
            existing.reset()
            del unet.forward

    def reset(self) -> None:
        """Drop every captured graph (after weights or adapters changed)."""
        self.graphs.clear()

    # --- the call ---------------------------------------------------------------------

    def __call__(
        self,
        sample: Any,
        timestep: Any,
        encoder_hidden_states: Any,
        *args: Any,
        **kwargs: Any,
    ) -> Any:
        key = self._key(sample, timestep, encoder_hidden_states, args, kwargs)
        if key is None:
            return self.forward(sample, timestep, encoder_hidden_states, *args, **kwargs)
        if self.eager_until_warm and key not in self.warm:
            import torch

            if key not in self.pending:
                added = kwargs.get("added_cond_kwargs") or {}
                self.pending[key] = (
                    sample.detach().clone(memory_format=torch.preserve_format),
                    timestep.detach().clone() if isinstance(timestep, torch.Tensor) else timestep,
                    encoder_hidden_states.detach().clone(),
                    {k: v.detach().clone() for k, v in added.items()},
                )
            with torch.compiler.set_stance("force_eager"):
                return self._graphed(key, sample, timestep, encoder_hidden_states, args, kwargs)
        return self._graphed(key, sample, timestep, encoder_hidden_states, args, kwargs)

    def warm_up(self) -> int:
        """Compile and capture every signature that ran eagerly; returns how many."""
        done = 0
        for key, (sample, timestep, states, added) in list(self.pending.items()):
            self.graphs.pop(key, None)  # drop the eager capture
            self.warm.add(key)
            kwargs = {"added_cond_kwargs": added or None, "return_dict": False}
            try:
                for _ in range(2):  # the first call compiles, the second captures
                    self(sample, timestep, states, **kwargs)
            except Exception:
                self.warm.discard(key)  # this signature keeps running eagerly
                self.graphs.pop(key, None)
                raise
            del self.pending[key]
            done += 1
        return done

    def _graphed(
        self,
        key: tuple[Any, ...],
        sample: Any,
        timestep: Any,
        encoder_hidden_states: Any,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> Any:
        entry = self.graphs.get(key)
        if entry is None:
            # First call with this signature: plain forward (compiles, warms up cuDNN).
            self.graphs[key] = _Captured()
            while len(self.graphs) > MAX_GRAPHS:
                self.graphs.popitem(last=False)
            return self.forward(sample, timestep, encoder_hidden_states, *args, **kwargs)
        self.graphs.move_to_end(key)
        added = kwargs.get("added_cond_kwargs") or {}
        if entry.graph is None:
            try:
                self._capture(entry, sample, timestep, encoder_hidden_states, added)
            except Exception as exc:  # capture must never fail a job: run uncaptured from now
                log.warning("CUDA graph capture failed, running the UNet uncaptured: %s", exc)
                self.enabled = False
                self.graphs.clear()
                return self.forward(sample, timestep, encoder_hidden_states, *args, **kwargs)
        else:
            self._fill(entry, sample, timestep, encoder_hidden_states, added)
        entry.graph.replay()
        self.replays += 1
        out = entry.out.clone()
        if kwargs.get("return_dict", True):
            from diffusers.models.unets.unet_2d_condition import UNet2DConditionOutput

            return UNet2DConditionOutput(sample=out)
        return (out,)

    def _key(
        self,
        sample: Any,
        timestep: Any,
        states: Any,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> tuple[Any, ...] | None:
        import torch

        if not self.enabled or args or torch.is_grad_enabled():
            return None
        if not (isinstance(sample, torch.Tensor) and self._on_gpu(sample)):
            return None
        if not (isinstance(states, torch.Tensor) and states.device == sample.device):
            return None
        if any(kwargs.get(name) is not None for name in _PLAIN_NONE):
            return None
        if kwargs.get("cross_attention_kwargs"):
            return None  # a LoRA scale or processor arguments: not baked into a graph
        known = {"added_cond_kwargs", "return_dict", "cross_attention_kwargs", *_PLAIN_NONE}
        if set(kwargs) - known:
            return None
        if isinstance(timestep, torch.Tensor):
            if timestep.numel() != 1:
                return None
            t_key: Any = ("t", timestep.dtype)
        elif isinstance(timestep, (int, float)):
            t_key = ("n", type(timestep).__name__)
        else:
            return None
        added = kwargs.get("added_cond_kwargs") or {}
        added_key = []
        for name in sorted(added):
            value = added[name]
            if not (isinstance(value, torch.Tensor) and value.device == sample.device):
                return None
            added_key.append((name, tuple(value.shape), value.dtype))
        return (
            tuple(sample.shape),
            sample.dtype,
            sample.stride(),
            sample.device,
            t_key,
            tuple(states.shape),
            states.dtype,
            tuple(added_key),
            bool(kwargs.get("return_dict", True)),
        )

    @staticmethod
    def _on_gpu(tensor: Any) -> bool:
        return bool(tensor.is_cuda)

    def _fill(self, entry: _Captured, sample: Any, timestep: Any, states: Any, added: Any) -> None:
        import torch

        entry.static["sample"].copy_(sample)
        t = entry.static["timestep"]
        if isinstance(timestep, torch.Tensor):
            t.copy_(timestep.reshape(()))
        else:
            t.fill_(timestep)
        entry.static["states"].copy_(states)
        for name, value in added.items():
            entry.added[name].copy_(value)

    def _capture(
        self, entry: _Captured, sample: Any, timestep: Any, states: Any, added: Any
    ) -> None:
        import torch

        if isinstance(timestep, torch.Tensor):
            t_static = timestep.detach().reshape(()).to(sample.device, copy=True)
        else:
            dtype = torch.float32 if isinstance(timestep, float) else torch.int64
            t_static = torch.tensor(timestep, dtype=dtype, device=sample.device)
        entry.static = {
            "sample": sample.detach().clone(memory_format=torch.preserve_format),
            "timestep": t_static,
            "states": states.detach().clone(),
        }
        entry.added = {k: v.detach().clone() for k, v in added.items()}

        def run() -> Any:
            return self.forward(
                entry.static["sample"],
                entry.static["timestep"],
                entry.static["states"],
                added_cond_kwargs=dict(entry.added) if entry.added else None,
                return_dict=False,
            )[0]

        cuda: Any = torch.cuda
        stream = cuda.Stream(device=sample.device)
        stream.wait_stream(torch.cuda.current_stream(sample.device))
        with torch.cuda.stream(stream):
            run()  # warm-up on the capture stream (lazy per-stream state)
        torch.cuda.current_stream(sample.device).wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, stream=stream, capture_error_mode="thread_local"):
            out = run()
        entry.graph = graph
        entry.out = out
        self.captures += 1
        log.info("captured a CUDA graph of the UNet for %s", tuple(sample.shape))
