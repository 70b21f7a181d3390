"""The engine's GPU speed path: layouts, fused projections, per-block compile, CUDA graphs.

A mixin of `pipeline.Engine`. The compile is deferred to ``warm_up`` (the worker calls it while
idle), so a fresh worker's first image never waits for it; choices and their numbers:
docs/decisions/gpu-speed-path.md.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from pathlib import Path
from typing import Any, Protocol

log = logging.getLogger(__name__)


class Laps(Protocol):
    def lap(self, name: str) -> None: ...


class SpeedPath:
    """Speed-path state and methods; `pipeline.Engine` owns the pipeline itself."""

    pipe: Any
    info: Any
    graphs: Any
    vae_dtype: Any
    compile_mode: str | None
    compile_scope: str
    compile_cache_dir: Path | None
    cuda_graphs: bool | str
    attention: str
    compile_vae: bool | str
    _compiled: bool

    def decode(self, latents: Any) -> list[Any]:
        raise NotImplementedError

    def _reset_speed_state(self) -> None:
        self._deferred: tuple[str, str] | None = None
        self._vae_gate = False
        self._vae_warm: set[tuple[int, ...]] = set()
        self._vae_pending: set[tuple[int, ...]] = set()

    def _speed_path(self, laps: Laps) -> None:
        import torch

        pipe = self.pipe
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        # benchmarking gains nothing and costs seconds at start: docs/decisions/gpu-speed-path.md
        torch.backends.cudnn.benchmark = False
        self._set_attention(self._attention_choice())
        pipe.unet.to(memory_format=torch.channels_last)
        pipe.vae.to(memory_format=torch.channels_last)
        # bf16 has fp32's exponent range: no overflow in the SDXL VAE, no fp32 upcast needed.
        pipe.vae.to(dtype=torch.bfloat16)
        self.vae_dtype = torch.bfloat16
        laps.lap("layout")
        pipe.fuse_qkv_projections()
        laps.lap("fuse_qkv")
        mode, scope = self._compile_choice()
        graphs = self._graphs_choice(mode)
        if graphs:
            from .cudagraph import UNetGraphs

            self.graphs = UNetGraphs.install(pipe.unet)
        if mode is not None and graphs:
            # Compiled when the worker is idle (`warm_up`): a fresh worker's first image
            # runs eagerly (graphed) instead of waiting for the compile.
            self._deferred = (mode, scope)
            self.graphs.eager_until_warm = True
        elif mode is not None:
            self._compile(mode, scope)
        laps.lap("graphs_setup")

    def warm_up(self) -> float:
        """Compile and capture what ran eagerly so far (the worker calls this while idle).

        Returns the seconds spent; 0 when there was nothing to do.
        """
        graphs_pending = self.graphs is not None and bool(self.graphs.pending)
        if self.pipe is None or not (self._deferred or self._vae_pending or graphs_pending):
            return 0.0
        import torch

        started = time.perf_counter()
        if self._deferred is not None:
            self._compile(*self._deferred)
            self._deferred = None
        with torch.no_grad():
            if self.graphs is not None:
                self.graphs.warm_up()
            for shape in sorted(self._vae_pending):
                latents = torch.randn(shape, device="cuda", dtype=self.vae_dtype)
                self.decode(latents)  # compiles the decoder for this shape
                self._vae_warm.add(shape)
            self._vae_pending.clear()
        torch.cuda.synchronize()
        seconds = time.perf_counter() - started
        log.info("compiled and captured while idle in %.1fs", seconds)
        return seconds

    def _decode_stance(self, shape: tuple[int, ...]) -> Any:
        """Eager for a decoder shape not compiled yet (remembered for ``warm_up``)."""
        if not self._vae_gate or shape in self._vae_warm:
            return contextlib.nullcontext()
        import torch

        self._vae_pending.add(shape)
        return torch.compiler.set_stance("force_eager")

    def _compile(self, mode: str, scope: str) -> None:
        import torch

        pipe = self.pipe
        self._setup_compile_caches()
        inductor_config: Any = torch._inductor.config
        if mode.startswith("max-autotune") and hasattr(
            inductor_config, "max_autotune_conv_backends"
        ):
            # Tune the GEMMs only: cuDNN convs are hard to beat and conv tuning costs minutes.
            inductor_config.max_autotune_conv_backends = "ATEN"
        if scope == "unet":
            pipe.unet = torch.compile(pipe.unet, mode=mode, fullgraph=True, dynamic=False)
        else:
            from diffusers.models.attention import BasicTransformerBlock
            from diffusers.models.resnet import ResnetBlock2D

            # One compiled graph per distinct block shape, shared by all blocks of that shape.
            dynamo_config: Any = torch._dynamo.config
            for name in ("cache_size_limit", "recompile_limit"):
                if hasattr(dynamo_config, name):
                    setattr(dynamo_config, name, max(getattr(dynamo_config, name), 64))
            kinds: tuple[Any, ...] = (BasicTransformerBlock,)
            if scope == "blocks":
                kinds = (BasicTransformerBlock, ResnetBlock2D)
            for module in pipe.unet.modules():
                if isinstance(module, kinds):
                    module.compile(mode=mode, fullgraph=True, dynamic=False)
        if self._vae_compile_choice():
            self._vae_gate = self._deferred is not None
            # One graph per image size; cudagraph modes make no sense for one call per job.
            vae_mode = "default" if mode in ("reduce-overhead", "max-autotune") else mode
            pipe.vae.decoder.compile(mode=vae_mode, fullgraph=True, dynamic=False)
        self._compiled = True
        log.info("torch.compile: mode=%s scope=%s", mode, scope)

    def _compile_choice(self) -> tuple[str | None, str]:
        """Compile mode and scope: SD1.5 its transformer blocks, SDXL its resnets too (why:
        docs/decisions/gpu-speed-path.md)."""
        mode = self.compile_mode
        scope = self.compile_scope
        sdxl = self.info is not None and self.info.arch == "sdxl"
        if mode == "auto":
            mode = "default"
        if scope == "auto":
            scope = "blocks" if sdxl else "transformers"
        return mode, scope

    def _graphs_choice(self, mode: str | None) -> bool:
        if self.cuda_graphs == "auto":
            # These modes capture CUDA graphs of their own.
            return mode not in ("reduce-overhead", "max-autotune")
        return bool(self.cuda_graphs)

    def _vae_compile_choice(self) -> bool:
        """Compile the VAE decoder for SDXL only (why: docs/decisions/gpu-speed-path.md)."""
        if self.compile_vae == "auto":
            return self.info is not None and self.info.arch == "sdxl"
        return bool(self.compile_vae)

    def _attention_choice(self) -> str:
        # torch's own pick is already the fastest: docs/decisions/gpu-speed-path.md
        return "default" if self.attention == "auto" else self.attention

    @staticmethod
    def _set_attention(choice: str) -> None:
        """Prefer one SDPA backend (process-wide); the others stay as fallbacks."""
        if choice == "default":
            return
        try:
            from torch.nn.attention import SDPBackend, _sdpa_kernel

            first = {
                "flash": SDPBackend.FLASH_ATTENTION,
                "cudnn": SDPBackend.CUDNN_ATTENTION,
                "efficient": SDPBackend.EFFICIENT_ATTENTION,
            }[choice]
            rest = [
                SDPBackend.FLASH_ATTENTION,
                SDPBackend.CUDNN_ATTENTION,
                SDPBackend.EFFICIENT_ATTENTION,
                SDPBackend.MATH,
            ]
            _sdpa_kernel([first, *(b for b in rest if b != first)], set_priority=True)
        except (ImportError, KeyError, TypeError, AttributeError, RuntimeError) as exc:
            log.warning("cannot prefer SDPA backend %s: %s", choice, exc)

    def _setup_compile_caches(self) -> None:
        if self.compile_cache_dir is None:
            return
        import torch

        root = self.compile_cache_dir
        root.mkdir(parents=True, exist_ok=True)
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(root / "inductor")
        os.environ["TRITON_CACHE_DIR"] = str(root / "triton")
        torch._inductor.config.fx_graph_cache = True
        functorch_config: Any = torch._functorch.config
        if hasattr(functorch_config, "enable_autograd_cache"):
            functorch_config.enable_autograd_cache = True  # AOTAutograd cache (torch >= 2.6)
        mega = root / "mega-cache.bin"
        if mega.is_file() and hasattr(torch.compiler, "load_cache_artifacts"):
            try:
                torch.compiler.load_cache_artifacts(mega.read_bytes())
            except Exception as exc:  # a stale cache must never stop generation
                log.warning("ignoring unusable compile cache %s: %s", mega, exc)

    def save_compile_cache(self) -> Path | None:
        """Write torch's portable compile artifacts ("mega-cache") for the next process."""
        if not self._compiled or self.compile_cache_dir is None:
            return None
        import torch

        if not hasattr(torch.compiler, "save_cache_artifacts"):
            return None

        result = torch.compiler.save_cache_artifacts()
        if result is None:
            return None
        data, _info = result
        path = self.compile_cache_dir / "mega-cache.bin"
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)
        return path
