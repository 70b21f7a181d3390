"""The generation engine: one loaded checkpoint kept between jobs, LoRAs switched in place.

``Engine.load`` reads the safetensors header first (architecture, catalog cross-check), then
builds the diffusers pipeline from the single file with the shipped config folder, offline.
LoRAs are written into the weights in place and taken out exactly (`lora_merge`); each
LoRA's module count is compared with the file's, so a LoRA that only partly applies fails
instead of quietly doing less.

On CUDA with ``optimize=True`` the speed path applies: fp16 UNet, SDPA, channels_last, fused
QKV, ``torch.compile`` of the UNet's blocks with its caches under ``compile_cache_dir``, the
whole UNet forward replayed as one CUDA graph (``cudagraph.UNetGraphs``), and a bf16 VAE
decode (same exponent range as fp32, so no fp16 overflow, and no fp32 upcast), compiled for
SDXL. ``timings.load_split`` says where a load's seconds went.
"""

from __future__ import annotations

import functools
import gzip
import json
import logging
import os
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from sandbox.protocol.hashing import FileHash, sha256_file

from . import arch as archmod
from . import lora_merge
from .errors import EngineError, HashMismatchError, LoraMismatchError, SpecError, TokenizerError
from .speed import SpeedPath

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
    factors: lora_merge.Factors


class _Laps:
    """Seconds between marks, by name."""

    def __init__(self) -> None:
        self.start = self.last = time.perf_counter()
        self.split: dict[str, float] = {}

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.split[name] = round(self.split.get(name, 0.0) + now - self.last, 4)
        self.last = now

    def total(self) -> float:
        return time.perf_counter() - self.start


@dataclass(frozen=True)
class _LoadKey:
    path: str
    config_dir: str
    dtype: str
    device: str
    optimize: bool


@dataclass
class Timings:
    """Seconds spent in the last ``load`` (and its parts) and the last ``set_loras``."""

    load_s: float = 0.0
    lora_s: float = 0.0
    load_split: dict[str, float] = field(default_factory=dict)


class Engine(SpeedPath):
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
        self.pipe: Any = None
        self.info: archmod.CheckpointInfo | None = None
        self.timings = Timings()
        self._key: _LoadKey | None = None
        self._adapters: dict[str, _Adapter] = {}
        self._base_scheduler_config: dict[str, Any] = {}
        self._compiled = False
        self._patcher = lora_merge.WeightPatcher()
        self._lora_state: tuple[tuple[str, float, float], ...] = ()
        self._reset_speed_state()
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
        laps = _Laps()
        path = str(Path(model_path).resolve())
        info = archmod.inspect_checkpoint(path, base_model)
        cfg = Path(config_dir) if config_dir else CONFIG_ROOT / info.arch
        key = _LoadKey(path, str(cfg), dtype, device, optimize and device == "cuda")
        if key == self._key and self.pipe is not None:
            return info
        self.close()
        self._check_config(cfg, info)
        laps.lap("inspect")
        _offline_imports()
        import torch
        from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

        laps.lap("imports")
        tdtype = getattr(torch, dtype)
        kwargs: dict[str, Any] = {
            "config": str(cfg),
            "local_files_only": True,
            "torch_dtype": tdtype,
            "tokenizer": load_tokenizer(),
        }
        if info.arch == "sdxl":
            kwargs["tokenizer_2"] = load_tokenizer(pad_token="!")  # noqa: S106  # a token, no password
        laps.lap("tokenizers")
        if info.arch == "sdxl":
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
        laps.lap("from_single_file")
        if device != "cpu":
            pipe.to(device)
            if device == "cuda":
                torch.cuda.synchronize()
        laps.lap("to_device")
        self.pipe = pipe
        self.info = info
        self._key = key
        self._base_scheduler_config = dict(pipe.scheduler.config)
        self.vae_dtype = tdtype
        if key.optimize:
            self._speed_path(laps)
        self.timings = Timings(load_s=laps.total(), load_split=laps.split)
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
        self._patcher.forget()
        self._lora_state = ()
        self._reset_speed_state()
        if self.graphs is not None:
            self.graphs.reset()
            self.graphs = None

    # --- LoRA ---------------------------------------------------------------------------

    def _models(self) -> dict[str, Any]:
        comps = [
            "unet",
            *(c for c in COMPONENTS_WITH_TE if getattr(self.pipe, c, None) is not None),
        ]
        return {c: getattr(self.pipe, c) for c in comps}

    def set_loras(self, uses: Sequence[LoraUse]) -> dict[str, str]:
        """Make exactly these LoRAs active with these weights; returns name -> AutoV3 hash.

        The weights are rewritten in place (`lora_merge`): compiled blocks and captured
        CUDA graphs stay valid, so a changed weight costs milliseconds, not a recompile.
        """
        if self.pipe is None or self.info is None:
            raise EngineError("load a checkpoint before applying LoRAs")
        started = time.perf_counter()
        wanted: dict[str, LoraUse] = {}
        for use in uses:
            key = str(Path(use.path).resolve())
            if key in wanted:
                raise SpecError(f"LoRA file {use.path} is listed twice")
            wanted[key] = use
        for key in [k for k in self._adapters if k not in wanted]:
            del self._adapters[key]
        for key, use in wanted.items():
            if key not in self._adapters:
                self._adapters[key] = self._load_adapter(key, use)
        state = tuple((k, u.te_weight, u.unet_weight) for k, u in wanted.items())
        if state != self._lora_state:
            self._apply_loras(wanted)
            self._lora_state = state
        self.timings.lora_s = time.perf_counter() - started
        return {use.name: self._adapters[k].autov3 for k, use in wanted.items()}

    def _apply_loras(self, wanted: dict[str, LoraUse]) -> None:
        active = []
        for key, use in wanted.items():
            ad = self._adapters[key]
            weights = {
                c: use.unet_weight if c == "unet" else use.te_weight for c in ad.info.modules
            }
            active.append((ad.factors, weights))
        self._patcher.apply(self._models(), active)

    def _load_adapter(self, key: str, use: LoraUse) -> _Adapter:
        """Read one LoRA file's factors through diffusers/peft, then take the wrappers out."""
        if self.info is None:
            raise RuntimeError("a LoRA was requested before any checkpoint was loaded")
        if use.sha256 is not None:
            got = sha256_file(key)
            if got.lower() != use.sha256.lower():
                raise HashMismatchError(f"LoRA {use.name}: sha256 {got} != expected {use.sha256}")
        info = archmod.inspect_lora(key, use.base_model)
        archmod.check_lora_fits(info, self.info.arch, f"LoRA {use.name!r}")
        self._counter += 1
        adapter = f"lora{self._counter}"
        try:
            try:
                self.pipe.load_lora_weights(key, adapter_name=adapter)
            except LoraMismatchError:
                raise
            except Exception as exc:
                raise LoraMismatchError(
                    f"LoRA {use.name!r} does not fit this checkpoint: {exc}"
                ) from exc
            factors = lora_merge.harvest(self._models(), adapter)
        finally:
            self._remove_wrappers(adapter)
        counts = dict(Counter(comp for comp, _ in factors))
        if counts != info.modules:
            raise LoraMismatchError(
                f"LoRA {use.name!r} applies only partly: the file has modules {info.modules}, "
                f"the checkpoint took {counts or 'none'}"
            )
        return _Adapter(adapter, info, autov3(key), factors)

    def _remove_wrappers(self, adapter: str) -> None:
        """Back to the plain modules (the same objects, so compiled code and graphs stay)."""
        try:
            self.pipe.delete_adapters([adapter])
        except Exception as exc:  # nothing was registered, or only part of it
            log.debug("cleanup of adapter %s: %s", adapter, exc)
        if self._any_lora_layers():
            self.pipe.unload_lora_weights()

    def _any_lora_layers(self) -> bool:
        return any(
            hasattr(m, "lora_A")
            for model in self._models().values()
            for m in getattr(model, "_orig_mod", model).modules()
        )

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
            with self._decode_stance(tuple(scaled.shape)):
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
