"""The generation engine: one loaded checkpoint kept between jobs, LoRAs switched in place.

``Engine.load`` reads the safetensors header first (architecture, catalog cross-check), then
builds the diffusers pipeline from the single file with the shipped config folder, offline.
LoRAs are peft adapters, activated with ``set_adapters`` and removed with
``delete_adapters``; never fused, so the base weights stay bit-identical (no drift between
jobs). Each LoRA's wrapped-module count is compared with the file's module count, so a LoRA
that only partly applies fails instead of quietly doing less.

On CUDA with ``optimize=True`` the speed path applies: fp16 UNet, SDPA, channels_last, fused
QKV (only while no LoRA is loaded: peft wraps the unfused projections), ``torch.compile`` of
the UNet's blocks with its caches under ``compile_cache_dir``, the whole UNet forward replayed
as one CUDA graph (``cudagraph.UNetGraphs``), and a bf16 VAE decode (same exponent range as
fp32, so no fp16 overflow, and no fp32 upcast), compiled for SDXL.
"""

from __future__ import annotations

import functools
import gzip
import json
import logging
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from sandbox.protocol.hashing import FileHash, sha256_file

from . import arch as archmod
from .errors import EngineError, HashMismatchError, LoraMismatchError, SpecError, TokenizerError

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

CONFIG_ROOT = Path(__file__).resolve().parent / "configs"
TOKENIZER_DIR = CONFIG_ROOT / "tokenizer"
VOCAB_SIZE = 49408
#: "a photo of a cat" in CLIP ids: catches a tokenizer that loads but maps wrongly.
_PROBE = ("a photo of a cat", [49406, 320, 1125, 539, 320, 2368, 49407])
COMPONENTS_WITH_TE = ("text_encoder", "text_encoder_2")


def _offline_imports() -> None:
    """Force Hub-offline mode before diffusers/transformers are imported (or patch it after)."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    import huggingface_hub.constants as hub_constants

    hub_constants.HF_HUB_OFFLINE = True
    import diffusers
    import transformers

    # The per-LoRA "CLIPTextModel LOAD REPORT ... MISSING" table and progress bars are noise.
    tlog: Any = transformers.logging
    tlog.set_verbosity_error()
    tlog.disable_progress_bar()
    dlog: Any = diffusers.utils.logging
    dlog.set_verbosity_error()
    dlog.disable_progress_bar()


def _read_gz(name: str) -> bytes:
    path = TOKENIZER_DIR / name
    if not path.is_file():
        raise TokenizerError(f"shipped tokenizer file missing: {path}")
    return gzip.decompress(path.read_bytes())


@functools.cache
def _vocab_and_merges() -> tuple[dict[str, int], list[tuple[str, str]]]:
    vocab = json.loads(_read_gz("vocab.json.gz"))
    lines = _read_gz("merges.txt.gz").decode("utf-8").split("\n")
    merges = [tuple(line.split(" ")) for line in lines[1:] if line]
    if any(len(m) != 2 for m in merges):
        raise TokenizerError("merges.txt.gz is malformed")
    return vocab, [(m[0], m[1]) for m in merges]


def load_tokenizer(pad_token: str = "<|endoftext|>") -> Any:  # noqa: S107  # CLIP's pad token
    """The CLIP BPE tokenizer from the shipped files; SDXL's second one pads with ``!``.

    transformers returns a 2-token dummy tokenizer instead of failing when files are missing,
    so the size and a known encoding are checked here.
    """
    _offline_imports()
    from transformers import CLIPTokenizer

    vocab, merges = _vocab_and_merges()
    # The backend wants (a, b) tuples although the stub says list[str].
    tok = CLIPTokenizer(
        vocab=vocab, merges=cast(Any, merges), model_max_length=77, pad_token=pad_token
    )
    if len(tok) != VOCAB_SIZE:
        raise TokenizerError(f"CLIP tokenizer has {len(tok)} tokens, expected {VOCAB_SIZE}")
    text, ids = _PROBE
    if tok(text).input_ids != ids:
        raise TokenizerError("CLIP tokenizer does not encode a known prompt correctly")
    return tok


def autov3(path: str | os.PathLike[str]) -> str:
    """Civitai AutoV3 / A1111 "Lora hashes" value: sha256 after the safetensors header, 12 hex."""
    h = FileHash()
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        f.seek(8 + n if n < 16 * 1024 * 1024 else 8)
        for _ in h.chunks(f, 1 << 22):
            pass
    return h.hexdigest()[:12]


@dataclass(frozen=True)
class LoraUse:
    """One LoRA to apply in a job, with its weights already resolved."""

    name: str
    path: str
    te_weight: float = 1.0
    unet_weight: float = 1.0
    sha256: str | None = None
    base_model: str | None = None


@dataclass
class _Adapter:
    adapter: str
    info: archmod.LoraInfo
    autov3: str


@dataclass(frozen=True)
class _LoadKey:
    path: str
    config_dir: str
    dtype: str
    device: str
    optimize: bool


@dataclass
class Timings:
    """Seconds spent in the last ``load`` and the last ``set_loras``."""

    load_s: float = 0.0
    lora_s: float = 0.0


class Engine:
    """Holds one pipeline between jobs. Not thread-safe: one job at a time."""

    def __init__(
        self,
        *,
        compile_mode: str | None = "auto",
        compile_scope: str = "auto",
        compile_cache_dir: str | os.PathLike[str] | None = None,
        cuda_graphs: bool | str = "auto",
        attention: str = "auto",
        compile_vae: bool | str = "auto",
    ) -> None:
        """``compile_mode``: a ``torch.compile`` mode, None (no compile) or "auto";
        ``compile_scope``: "unet" (whole graph), "blocks" (each transformer/resnet block,
        compiled once per shape and reused: much shorter compiles), "transformers" (only the
        transformer blocks) or "auto";
        ``cuda_graphs``: replay the UNet as a CUDA graph (True, False or "auto": on unless
        the compile mode brings its own); ``attention``: the SDPA backend to prefer
        ("auto", "default", "flash", "cudnn", "efficient"); ``compile_vae``: compile the VAE
        decoder too. All only used on the CUDA speed path (``load(..., optimize=True)``).
        """
        self.compile_mode = compile_mode
        self.compile_scope = compile_scope
        self.compile_cache_dir = Path(compile_cache_dir) if compile_cache_dir else None
        self.cuda_graphs = cuda_graphs
        self.attention = attention
        self.compile_vae = compile_vae
        self.graphs: Any = None
        self._lora_state: Any = ()
        self.pipe: Any = None
        self.info: archmod.CheckpointInfo | None = None
        self.timings = Timings()
        self._key: _LoadKey | None = None
        self._adapters: dict[str, _Adapter] = {}
        self._base_scheduler_config: dict[str, Any] = {}
        self._compiled = False
        self._qkv_fused = False
        self._counter = 0
        self._img2img: Any = None
        self.vae_dtype: Any = None

    # --- loading ------------------------------------------------------------------------

    @property
    def arch(self) -> archmod.Arch:
        if self.info is None:
            raise EngineError("no checkpoint loaded")
        return self.info.arch

    def load(
        self,
        model_path: str | os.PathLike[str],
        *,
        dtype: str = "float32",
        device: str = "cpu",
        config_dir: str | os.PathLike[str] | None = None,
        base_model: str | None = None,
        optimize: bool = False,
    ) -> archmod.CheckpointInfo:
        """Load a checkpoint unless the same one is already loaded the same way."""
        path = str(Path(model_path).resolve())
        info = archmod.inspect_checkpoint(path, base_model)
        cfg = Path(config_dir) if config_dir else CONFIG_ROOT / info.arch
        key = _LoadKey(path, str(cfg), dtype, device, optimize and device == "cuda")
        if key == self._key and self.pipe is not None:
            return info
        self.close()
        self._check_config(cfg, info)
        _offline_imports()
        import torch
        from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

        started = time.perf_counter()
        tdtype = getattr(torch, dtype)
        kwargs: dict[str, Any] = {
            "config": str(cfg),
            "local_files_only": True,
            "torch_dtype": tdtype,
            "tokenizer": load_tokenizer(),
        }
        if info.arch == "sdxl":
            kwargs["tokenizer_2"] = load_tokenizer(pad_token="!")  # noqa: S106  # a token, no password
            cls: Any = StableDiffusionXLPipeline
        else:
            kwargs.update(
                safety_checker=None, feature_extractor=None, requires_safety_checker=False
            )
            cls = StableDiffusionPipeline
        try:
            pipe = cls.from_single_file(path, **kwargs)
        except (OSError, ValueError, RuntimeError, KeyError) as exc:
            raise EngineError(f"{Path(path).name}: failed to load: {exc}") from exc
        for tok_name in ("tokenizer", "tokenizer_2"):
            tok = getattr(pipe, tok_name, None)
            if tok is not None and len(tok) != VOCAB_SIZE:
                raise TokenizerError(f"{tok_name} has {len(tok)} tokens after loading")
        pipe.set_progress_bar_config(disable=True)
        if device != "cpu":
            pipe.to(device)
        self.pipe = pipe
        self.info = info
        self._key = key
        self._base_scheduler_config = dict(pipe.scheduler.config)
        self.vae_dtype = tdtype
        if key.optimize:
            self._speed_path()
        self.timings = Timings(load_s=time.perf_counter() - started)
        log.info("loaded %s (%s) in %.1fs", Path(path).name, info.arch, self.timings.load_s)
        return info

    @staticmethod
    def _check_config(cfg: Path, info: archmod.CheckpointInfo) -> None:
        try:
            ucfg = json.loads((cfg / "unet" / "config.json").read_text())
        except (OSError, ValueError) as exc:
            raise EngineError(f"config folder {cfg} is unusable: {exc}") from exc
        width = int(ucfg["block_out_channels"][0])
        if width != info.unet_channels:
            raise EngineError(
                f"checkpoint UNet is {info.unet_channels} channels wide but the config at {cfg} "
                f"says {width}; pass the matching config folder"
            )

    def close(self) -> None:
        """Drop the pipeline (and its adapters) so its memory can be reclaimed."""
        self.pipe = None
        self.info = None
        self._key = None
        self._adapters.clear()
        self._img2img = None
        self._compiled = False
        self._qkv_fused = False
        self._lora_state = ()
        if self.graphs is not None:
            self.graphs.reset()
            self.graphs = None

    # --- GPU speed path -----------------------------------------------------------------

    def _speed_path(self) -> None:
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
        pipe.fuse_qkv_projections()
        self._qkv_fused = True
        mode, scope = self._compile_choice()
        if mode is not None:
            self._compile(mode, scope)
        if self._graphs_choice(mode):
            from .cudagraph import UNetGraphs

            self.graphs = UNetGraphs.install(pipe.unet)

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

    # --- LoRA ---------------------------------------------------------------------------

    def _components(self) -> list[str]:
        return ["unet", *(c for c in COMPONENTS_WITH_TE if getattr(self.pipe, c, None) is not None)]

    def _wrapped_counts(self, adapter: str) -> dict[str, int]:
        counts: dict[str, int] = {}
        for comp in self._components():
            model = getattr(self.pipe, comp)
            model = getattr(model, "_orig_mod", model)
            n = sum(
                1
                for _, mod in model.named_modules()
                if hasattr(mod, "lora_A") and adapter in getattr(mod, "lora_A", {})
            )
            if n:
                counts[comp] = n
        return counts

    def set_loras(self, uses: Sequence[LoraUse]) -> dict[str, str]:
        """Make exactly these LoRAs active with these weights; returns name -> AutoV3 hash."""
        if self.pipe is None or self.info is None:
            raise EngineError("load a checkpoint before applying LoRAs")
        started = time.perf_counter()
        wanted: dict[str, LoraUse] = {}
        for use in uses:
            key = str(Path(use.path).resolve())
            if key in wanted:
                raise SpecError(f"LoRA file {use.path} is listed twice")
            wanted[key] = use
        state = tuple((k, u.te_weight, u.unet_weight) for k, u in wanted.items())
        if state != self._lora_state and self.graphs is not None:
            # Captured graphs bake in weight addresses, the adapters and their scales.
            self.graphs.reset()
            self._lora_state = None
        stale = [k for k in self._adapters if k not in wanted]
        if stale:
            self.pipe.delete_adapters([self._adapters[k].adapter for k in stale])
            for k in stale:
                del self._adapters[k]
        for key, use in wanted.items():
            if key not in self._adapters:
                self._adapters[key] = self._load_adapter(key, use)
        if not self._adapters:
            if self._any_lora_layers():
                self.pipe.unload_lora_weights()  # removes the empty peft wrappers too
            if self._key is not None and self._key.optimize and not self._qkv_fused:
                # Back to a fresh load's fused projections: same bytes as before any LoRA.
                self.pipe.fuse_qkv_projections()
                self._qkv_fused = True
        else:
            names, weights = [], []
            for key, use in wanted.items():
                ad = self._adapters[key]
                names.append(ad.adapter)
                w: dict[str, float] = {}
                for comp in ad.info.modules:
                    w[comp] = use.unet_weight if comp == "unet" else use.te_weight
                weights.append(w)
            self.pipe.set_adapters(names, adapter_weights=weights)
        self._lora_state = state
        self.timings.lora_s = time.perf_counter() - started
        return {use.name: self._adapters[k].autov3 for k, use in wanted.items()}

    def _any_lora_layers(self) -> bool:
        for comp in self._components():
            model = getattr(self.pipe, comp)
            if any(hasattr(m, "lora_A") for m in model.modules()):
                return True
        return False

    def _load_adapter(self, key: str, use: LoraUse) -> _Adapter:
        if self.info is None:
            raise RuntimeError("a LoRA was requested before any checkpoint was loaded")
        if use.sha256 is not None:
            got = sha256_file(key)
            if got.lower() != use.sha256.lower():
                raise HashMismatchError(f"LoRA {use.name}: sha256 {got} != expected {use.sha256}")
        info = archmod.inspect_lora(key, use.base_model)
        archmod.check_lora_fits(info, self.info.arch, f"LoRA {use.name!r}")
        if self._qkv_fused:
            # peft wraps to_q/to_k/to_v; fused to_qkv would bypass them.
            self.pipe.unfuse_qkv_projections()
            self._qkv_fused = False
        self._counter += 1
        adapter = f"lora{self._counter}"
        try:
            self.pipe.load_lora_weights(key, adapter_name=adapter)
        except Exception as exc:
            self._drop_partial(adapter)
            raise LoraMismatchError(
                f"LoRA {use.name!r} does not fit this checkpoint: {exc}"
            ) from exc
        counts = self._wrapped_counts(adapter)
        if counts != info.modules:
            self._drop_partial(adapter)
            raise LoraMismatchError(
                f"LoRA {use.name!r} applies only partly: the file has modules {info.modules}, "
                f"the checkpoint took {counts or 'none'}"
            )
        return _Adapter(adapter, info, autov3(key))

    def _drop_partial(self, adapter: str) -> None:
        try:
            self.pipe.delete_adapters([adapter])
        except Exception as exc:  # nothing was registered, or only part of it
            log.debug("cleanup of adapter %s: %s", adapter, exc)
        if not self._adapters and self._any_lora_layers():
            self.pipe.unload_lora_weights()

    # --- helpers for generate -----------------------------------------------------------

    def scheduler(self, name: str, schedule_type: str | None, seed: int | None) -> Any:
        from .samplers import make_scheduler

        return make_scheduler(self._base_scheduler_config, name, schedule_type, seed)

    def decode(self, latents: torch.Tensor) -> list[Any]:
        """Latents (as the pipeline returns them with output_type='latent') -> PIL images."""
        import torch

        vae = self.pipe.vae
        with torch.no_grad():
            scaled = latents.to(dtype=self.vae_dtype) / vae.config.scaling_factor
            if self._key is not None and self._key.device == "cuda":
                scaled = scaled.contiguous(memory_format=torch.channels_last)
            image = vae.decode(scaled, return_dict=False)[0]
            images: list[Any] = self.pipe.image_processor.postprocess(
                image.float() if image.dtype == torch.bfloat16 else image, output_type="pil"
            )
        return images

    def img2img_pipe(self) -> Any:
        """An img2img pipeline sharing this engine's modules (and so its LoRA adapters)."""
        if self._img2img is None:
            from diffusers import StableDiffusionImg2ImgPipeline, StableDiffusionXLImg2ImgPipeline

            if self.arch == "sdxl":
                i2i = StableDiffusionXLImg2ImgPipeline.from_pipe(self.pipe)
            else:
                i2i = StableDiffusionImg2ImgPipeline.from_pipe(
                    self.pipe, requires_safety_checker=False
                )
            i2i.set_progress_bar_config(disable=True)
            self._img2img = i2i
        return self._img2img

    def adapters(self) -> Iterator[tuple[str, str]]:
        for key, ad in self._adapters.items():
            yield key, ad.adapter
