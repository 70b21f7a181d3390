"""Synthetic test models: real key layout, random weights (a development tool, not in the image).

Builds single-file LDM checkpoints (what Civitai serves) from diffusers models with random
weights, and kohya-style LoRA/LoCon files, so tests and benchmarks never need a download.
The diffusers->LDM key conversion is ours (``unet_to_ldm``, ``vae_to_ldm``, ``clip_l_to_ldm``,
``open_clip_to_ldm``); its inverse is diffusers' own single-file loader, and the tests check
the round trip tensor by tensor.

torch and diffusers are imported inside functions so that importing this module is cheap.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    import torch

#: Bump when anything here changes the bytes of a built file: it keys the cache.
SYNTH_VERSION = "synth-v1"
#: The worker's model configs (the layouts the files are built to).
CONFIG_ROOT = Path(__file__).resolve().parents[2] / "sandbox" / "worker" / "configs"

Kind = Literal["sd15", "sdxl"]

# --- diffusers -> LDM key conversion ------------------------------------------------------

_RESNET_UNET = {
    "norm1.": "in_layers.0.",
    "conv1.": "in_layers.2.",
    "time_emb_proj.": "emb_layers.1.",
    "norm2.": "out_layers.0.",
    "conv2.": "out_layers.3.",
    "conv_shortcut.": "skip_connection.",
}


def unet_prefix_map(config: Mapping[str, Any]) -> dict[str, str]:
    """Module-prefix map diffusers UNet -> LDM ``model.diffusion_model.`` (without that prefix)."""
    m: dict[str, str] = {
        "time_embedding.linear_1.": "time_embed.0.",
        "time_embedding.linear_2.": "time_embed.2.",
        "conv_in.": "input_blocks.0.0.",
        "conv_norm_out.": "out.0.",
        "conv_out.": "out.2.",
        "mid_block.resnets.0.": "middle_block.0.",
        "mid_block.attentions.0.": "middle_block.1.",
        "mid_block.resnets.1.": "middle_block.2.",
    }
    if config.get("addition_embed_type") == "text_time":
        m["add_embedding.linear_1."] = "label_emb.0.0."
        m["add_embedding.linear_2."] = "label_emb.0.2."
    per = int(config["layers_per_block"])
    levels = len(config["block_out_channels"])
    for i in range(levels):
        for j in range(per):
            idx = i * (per + 1) + j + 1
            m[f"down_blocks.{i}.resnets.{j}."] = f"input_blocks.{idx}.0."
            m[f"down_blocks.{i}.attentions.{j}."] = f"input_blocks.{idx}.1."
        if i < levels - 1:
            m[f"down_blocks.{i}.downsamplers.0.conv."] = f"input_blocks.{(i + 1) * (per + 1)}.0.op."
    for i, block_type in enumerate(config["up_block_types"]):
        for j in range(per + 1):
            idx = i * (per + 1) + j
            m[f"up_blocks.{i}.resnets.{j}."] = f"output_blocks.{idx}.0."
            m[f"up_blocks.{i}.attentions.{j}."] = f"output_blocks.{idx}.1."
        if i < levels - 1:
            slot = 2 if "CrossAttn" in block_type else 1
            m[f"up_blocks.{i}.upsamplers.0."] = f"output_blocks.{i * (per + 1) + per}.{slot}."
    return m


def _split_prefix(key: str, prefixes: Mapping[str, str]) -> tuple[str, str]:
    # Longest match first, so "down_blocks.1.resnets.1." never matches "...resnets.1" of 11.
    best = ""
    for p in prefixes:
        if key.startswith(p) and len(p) > len(best):
            best = p
    if not best:
        raise KeyError(f"no LDM mapping for {key!r}")
    return best, key[len(best) :]


def unet_module_to_ldm(path: str, config: Mapping[str, Any]) -> str:
    """Map a diffusers UNet module/param path to its LDM name (without the model prefix)."""
    prefixes = unet_prefix_map(config)
    head, rest = _split_prefix(path + ("" if path.endswith(".") else "."), prefixes)
    if ".resnets." in head or head.startswith("mid_block.resnets"):
        for old, new in _RESNET_UNET.items():
            if rest.startswith(old):
                rest = new + rest[len(old) :]
                break
    return (prefixes[head] + rest).rstrip(".")


def unet_to_ldm(
    sd: Mapping[str, torch.Tensor], config: Mapping[str, Any]
) -> dict[str, torch.Tensor]:
    return {"model.diffusion_model." + unet_module_to_ldm(k, config): v for k, v in sd.items()}


def vae_to_ldm(
    sd: Mapping[str, torch.Tensor], config: Mapping[str, Any]
) -> dict[str, torch.Tensor]:
    levels = len(config["block_out_channels"])
    prefixes: dict[str, str] = {
        "quant_conv.": "quant_conv.",
        "post_quant_conv.": "post_quant_conv.",
    }
    for part in ("encoder", "decoder"):
        prefixes[f"{part}.conv_in."] = f"{part}.conv_in."
        prefixes[f"{part}.conv_out."] = f"{part}.conv_out."
        prefixes[f"{part}.conv_norm_out."] = f"{part}.norm_out."
        prefixes[f"{part}.mid_block.resnets.0."] = f"{part}.mid.block_1."
        prefixes[f"{part}.mid_block.resnets.1."] = f"{part}.mid.block_2."
        prefixes[f"{part}.mid_block.attentions.0."] = f"{part}.mid.attn_1."
    for i in range(levels):
        for j in range(int(config["layers_per_block"]) + 1):
            prefixes[f"encoder.down_blocks.{i}.resnets.{j}."] = f"encoder.down.{i}.block.{j}."
            prefixes[f"decoder.up_blocks.{i}.resnets.{j}."] = (
                f"decoder.up.{levels - 1 - i}.block.{j}."
            )
        prefixes[f"encoder.down_blocks.{i}.downsamplers.0."] = f"encoder.down.{i}.downsample."
        prefixes[f"decoder.up_blocks.{i}.upsamplers.0."] = f"decoder.up.{levels - 1 - i}.upsample."
    attn = {
        "group_norm.": "norm.",
        "to_q.": "q.",
        "to_k.": "k.",
        "to_v.": "v.",
        "to_out.0.": "proj_out.",
    }
    out: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        head, rest = _split_prefix(key, prefixes)
        if head.endswith("attentions.0."):
            for old, new in attn.items():
                if rest.startswith(old):
                    rest = new + rest[len(old) :]
                    break
            # LDM keeps the VAE attention projections as 1x1 convs.
            if rest.endswith(".weight") and value.ndim == 2:
                value = value[:, :, None, None]
        elif rest.startswith("conv_shortcut."):
            rest = "nin_shortcut." + rest[len("conv_shortcut.") :]
        out["first_stage_model." + prefixes[head] + rest] = value
    return out


def _with_text_model(key: str) -> str:
    # transformers >=5.6 dropped the "text_model." level of CLIPTextModel; LDM files keep it.
    if key.startswith(("text_model.", "text_projection.")):
        return key
    return "text_model." + key


def clip_l_to_ldm(sd: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """CLIP ViT-L/14 text encoder: LDM keeps the transformers names under a prefix."""
    return {prefix + _with_text_model(k): v for k, v in sd.items() if "position_ids" not in k}


def open_clip_to_ldm(sd: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """OpenCLIP bigG naming: fused in_proj, ln_1/ln_2, c_fc/c_proj, transposed projection."""
    import torch

    src = {_with_text_model(k): v for k, v in sd.items() if "position_ids" not in k}
    out: dict[str, torch.Tensor] = {}
    layer_keys: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in src.items():
        if key == "text_model.embeddings.token_embedding.weight":
            out[prefix + "token_embedding.weight"] = value
        elif key == "text_model.embeddings.position_embedding.weight":
            out[prefix + "positional_embedding"] = value
        elif key.startswith("text_model.final_layer_norm."):
            out[prefix + "ln_final." + key.rsplit(".", 1)[1]] = value
        elif key == "text_projection.weight":
            out[prefix + "text_projection"] = value.t().contiguous()
        elif key.startswith("text_model.encoder.layers."):
            n, rest = key[len("text_model.encoder.layers.") :].split(".", 1)
            base = f"{prefix}transformer.resblocks.{n}."
            parts = rest.split(".")
            if parts[0] == "self_attn" and parts[1] in ("q_proj", "k_proj", "v_proj"):
                # OpenCLIP fuses q, k, v into one in_proj tensor per layer.
                layer_keys.setdefault(f"{base}|{parts[2]}", {})[parts[1]] = value
                continue
            rest = (
                rest.replace("self_attn.out_proj.", "attn.out_proj.")
                .replace("layer_norm1.", "ln_1.")
                .replace("layer_norm2.", "ln_2.")
                .replace("mlp.fc1.", "mlp.c_fc.")
                .replace("mlp.fc2.", "mlp.c_proj.")
            )
            out[base + rest] = value
        else:
            raise KeyError(f"no OpenCLIP mapping for {key!r}")
    for tag, qkv in layer_keys.items():
        base, kind = tag.split("|")
        out[f"{base}attn.in_proj_{kind}"] = torch.cat(
            [qkv["q_proj"], qkv["k_proj"], qkv["v_proj"]], dim=0
        )
    return out


def ddpm_buffers(beta_start: float = 0.00085, beta_end: float = 0.012) -> dict[str, torch.Tensor]:
    """The schedule buffers real SD1.x files carry (unused by diffusers, present for realism)."""
    import torch

    betas = torch.linspace(beta_start**0.5, beta_end**0.5, 1000, dtype=torch.float64) ** 2
    alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
    prev = torch.cat([torch.ones(1, dtype=torch.float64), alphas_cumprod[:-1]])
    bufs = {
        "betas": betas,
        "alphas_cumprod": alphas_cumprod,
        "alphas_cumprod_prev": prev,
        "sqrt_alphas_cumprod": alphas_cumprod.sqrt(),
        "sqrt_one_minus_alphas_cumprod": (1.0 - alphas_cumprod).sqrt(),
    }
    return {k: v.float() for k, v in bufs.items()}


# --- configs ---------------------------------------------------------------------------------


def load_config(kind: Kind, component: str) -> dict[str, Any]:
    name = "scheduler_config.json" if component == "scheduler" else "config.json"
    data: dict[str, Any] = json.loads((CONFIG_ROOT / kind / component / name).read_text())
    return data


def sdxl_small_unet_config() -> dict[str, Any]:
    """SDXL UNet with the same blocks and key pattern, 10x narrower (32/64/128 channels)."""
    cfg = load_config("sdxl", "unet")
    cfg["block_out_channels"] = [32, 64, 128]
    cfg["attention_head_dim"] = [1, 2, 4]  # 32-wide heads
    cfg["addition_time_embed_dim"] = 8
    cfg["projection_class_embeddings_input_dim"] = 1280 + 6 * 8
    return cfg


def write_config_dir(kind: Kind, dest: Path, unet_config: Mapping[str, Any] | None = None) -> Path:
    """Copy a shipped config folder, optionally replacing the UNet config (test models)."""
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(CONFIG_ROOT / kind, dest)
    if unet_config is not None:
        (dest / "unet" / "config.json").write_text(json.dumps(dict(unet_config), indent=2) + "\n")
    return dest


# --- model builders ---------------------------------------------------------------------------


def _cast(sd: Mapping[str, torch.Tensor], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    return {
        k: (v.to(dtype) if v.is_floating_point() else v).detach().to("cpu").contiguous()
        for k, v in sd.items()
    }


def _build_unet(config: Mapping[str, Any], device: str) -> Any:
    from diffusers import UNet2DConditionModel

    cls: Any = UNet2DConditionModel
    with _default_device(device):
        return cls.from_config(dict(config))


def _build_vae(config: Mapping[str, Any], device: str) -> Any:
    from diffusers import AutoencoderKL

    cls: Any = AutoencoderKL
    with _default_device(device):
        return cls.from_config(dict(config))


def _build_clip(config: Mapping[str, Any], device: str, projection: bool) -> Any:
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    cfg = CLIPTextConfig(**{k: v for k, v in config.items() if k != "architectures"})
    cls = CLIPTextModelWithProjection if projection else CLIPTextModel
    with _default_device(device):
        return cls(cfg)


@contextlib.contextmanager
def _default_device(device: str) -> Iterator[None]:
    import torch

    # Building on the target device (meta for shapes only, cuda on the bench box) is far
    # faster than initialising gigabytes on CPU and copying.
    with torch.device(device):
        yield


def build_checkpoint_tensors(
    kind: Kind,
    *,
    seed: int = 0,
    dtype: str = "float16",
    device: str = "cpu",
    unet_config: Mapping[str, Any] | None = None,
) -> dict[str, torch.Tensor]:
    """All tensors of a random single-file checkpoint, built one model at a time (low peak RAM)."""
    import torch

    tdtype = getattr(torch, dtype)
    ucfg = dict(unet_config) if unet_config is not None else load_config(kind, "unet")
    out: dict[str, torch.Tensor] = {}
    steps: list[tuple[str, Callable[[], dict[str, torch.Tensor]]]] = []

    def unet() -> dict[str, torch.Tensor]:
        m = _build_unet(ucfg, device)
        return unet_to_ldm(_cast(m.state_dict(), tdtype), ucfg)

    def vae() -> dict[str, torch.Tensor]:
        cfg = load_config(kind, "vae")
        return vae_to_ldm(_cast(_build_vae(cfg, device).state_dict(), tdtype), cfg)

    def te1() -> dict[str, torch.Tensor]:
        m = _build_clip(load_config(kind, "text_encoder"), device, projection=False)
        prefix = (
            "cond_stage_model.transformer."
            if kind == "sd15"
            else "conditioner.embedders.0.transformer."
        )
        return clip_l_to_ldm(_cast(m.state_dict(), tdtype), prefix)

    def te2() -> dict[str, torch.Tensor]:
        m = _build_clip(load_config(kind, "text_encoder_2"), device, projection=True)
        return open_clip_to_ldm(_cast(m.state_dict(), tdtype), "conditioner.embedders.1.model.")

    steps = [("unet", unet), ("vae", vae), ("text_encoder", te1)]
    if kind == "sdxl":
        steps.append(("text_encoder_2", te2))
    for i, (_, make) in enumerate(steps):
        torch.manual_seed(seed * 1000 + i)
        out.update(make())
    if kind == "sd15":
        out.update(ddpm_buffers())
    return out


def _save(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str]) -> None:
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata={"format": "pt", **metadata})
    os.replace(tmp, path)


def write_checkpoint(
    kind: Kind,
    path: Path,
    *,
    seed: int = 0,
    dtype: str = "float16",
    device: str = "cpu",
    small: bool = False,
) -> Path:
    """Write a random single-file checkpoint. ``small`` (SDXL only): reduced-width UNet."""
    if small and kind != "sdxl":
        raise ValueError("only the SDXL test model has a reduced-width variant")
    ucfg = sdxl_small_unet_config() if small else None
    tensors = build_checkpoint_tensors(
        kind, seed=seed, dtype=dtype, device=device, unet_config=ucfg
    )
    _save(tensors, path, {})
    return path


# --- LoRA builders ----------------------------------------------------------------------------

_ATTN_LINEARS = (
    "attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0",
    "attn2.to_q", "attn2.to_k", "attn2.to_v", "attn2.to_out.0",
    "ff.net.0.proj", "ff.net.2",
)  # fmt: skip
_CLIP_LINEARS = (
    "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj",
    "mlp.fc1", "mlp.fc2",
)  # fmt: skip


def lora_targets(
    kind: Kind, *, conv: bool = False, unet_config: Mapping[str, Any] | None = None
) -> dict[str, tuple[int, int, int]]:
    """kohya module name -> (in, out, kernel; 0 = Linear) for every module kohya trains."""
    import torch

    ucfg = dict(unet_config) if unet_config is not None else load_config(kind, "unet")
    unet = _build_unet(ucfg, "meta")
    targets: dict[str, tuple[int, int, int]] = {}
    for name, mod in unet.named_modules():
        is_attn = ".transformer_blocks." in name and name.endswith(_ATTN_LINEARS)
        is_proj = ".attentions." in name and name.endswith((".proj_in", ".proj_out"))
        is_conv = conv and ".resnets." in name and name.endswith((".conv1", ".conv2"))
        if not (is_attn or is_proj or is_conv):
            continue
        if isinstance(mod, torch.nn.Linear):
            shape = (mod.in_features, mod.out_features, 0)
        elif isinstance(mod, torch.nn.Conv2d):
            shape = (mod.in_channels, mod.out_channels, int(mod.kernel_size[0]))
        else:
            continue
        # kohya names SD1.x UNet modules by diffusers paths and SDXL ones by LDM paths.
        path = unet_module_to_ldm(name, ucfg) if kind == "sdxl" else name
        targets["lora_unet_" + path.replace(".", "_")] = shape
    encoders = [("text_encoder", "lora_te_" if kind == "sd15" else "lora_te1_")]
    if kind == "sdxl":
        encoders.append(("text_encoder_2", "lora_te2_"))
    for comp, prefix in encoders:
        cfg = load_config(kind, comp)
        for i in range(int(cfg["num_hidden_layers"])):
            for lin in _CLIP_LINEARS:
                hidden, inter = int(cfg["hidden_size"]), int(cfg["intermediate_size"])
                fan_in = inter if lin == "mlp.fc2" else hidden
                fan_out = inter if lin == "mlp.fc1" else hidden
                name = f"text_model.encoder.layers.{i}.{lin}".replace(".", "_")
                targets[prefix + name] = (fan_in, fan_out, 0)
    return targets


def build_lora_tensors(
    kind: Kind,
    *,
    seed: int = 0,
    rank: int = 4,
    alpha: float = 2.0,
    conv: bool = False,
    strength: float = 1.0,
    unet_config: Mapping[str, Any] | None = None,
    bogus_modules: int = 0,
) -> dict[str, torch.Tensor]:
    """A kohya LoRA (LoCon with ``conv``) with random down/up weights, fp16.

    ``bogus_modules`` adds triplets naming modules that do not exist: a LoRA that can only
    partly apply, for testing the engine's partial-application check.
    """
    import torch

    gen = torch.Generator().manual_seed(seed)
    out: dict[str, torch.Tensor] = {}
    targets = lora_targets(kind, conv=conv, unet_config=unet_config)
    for i in range(bogus_modules):
        targets[f"lora_unet_not_a_block_{i}_attn1_to_q"] = (64, 64, 0)
    for name, (fan_in, fan_out, k) in targets.items():
        kk = max(k, 1)
        down = torch.randn(rank, fan_in, kk, kk, generator=gen) / (fan_in * kk * kk) ** 0.5
        up = torch.randn(fan_out, rank, 1, 1, generator=gen) * (strength / rank**0.5)
        if k == 0:  # Linear target: 2-D factors
            down, up = down[:, :, 0, 0], up[:, :, 0, 0]
        out[name + ".lora_down.weight"] = down.half().contiguous()
        out[name + ".lora_up.weight"] = up.half().contiguous()
        out[name + ".alpha"] = torch.tensor(float(alpha)).half()
    return out


def write_lora(
    kind: Kind,
    path: Path,
    *,
    seed: int = 0,
    rank: int = 4,
    alpha: float = 2.0,
    conv: bool = False,
    strength: float = 1.0,
    unet_config: Mapping[str, Any] | None = None,
    bogus_modules: int = 0,
) -> Path:
    tensors = build_lora_tensors(
        kind,
        seed=seed,
        rank=rank,
        alpha=alpha,
        conv=conv,
        strength=strength,
        unet_config=unet_config,
        bogus_modules=bogus_modules,
    )
    meta = {
        "ss_network_module": "lycoris.kohya" if conv else "networks.lora",
        "ss_network_dim": str(rank),
        "ss_network_alpha": str(alpha),
        "ss_base_model_version": "sd_v1" if kind == "sd15" else "sdxl_base_v1-0",
        "ss_output_name": path.stem,
    }
    _save(tensors, path, meta)
    return path


# --- cache for tests --------------------------------------------------------------------------


@contextlib.contextmanager
def _locked(lock_path: Path) -> Iterator[None]:
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with lock_path.open("a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)  # several test processes may race to build
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


class SynthCache:
    """Builds each synthetic file once under ``root/SYNTH_VERSION`` and reuses it after."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.dir = Path(root) / SYNTH_VERSION

    def _get(self, name: str, build: Callable[[Path], object]) -> Path:
        path = self.dir / name
        if path.exists():
            return path
        with _locked(self.dir / ".lock"):
            if not path.exists():
                build(path)
        return path

    def sd15(self) -> Path:
        return self._get("sd15.safetensors", lambda p: write_checkpoint("sd15", p, seed=1))

    def sdxl_small(self) -> Path:
        return self._get(
            "sdxl_small.safetensors", lambda p: write_checkpoint("sdxl", p, seed=2, small=True)
        )

    def sdxl_small_config(self) -> Path:
        def build(p: Path) -> None:
            tmp = p.with_name(p.name + ".tmp")
            write_config_dir("sdxl", tmp, sdxl_small_unet_config())
            os.replace(tmp, p)

        return self._get("sdxl_small_config", build)

    def lora(
        self, kind: Kind, name: str, *, seed: int = 0, conv: bool = False, bogus: int = 0
    ) -> Path:
        ucfg = sdxl_small_unet_config() if kind == "sdxl" else None
        return self._get(
            f"{name}.safetensors",
            lambda p: write_lora(
                kind, p, seed=seed, conv=conv, unet_config=ucfg, bogus_modules=bogus
            ),
        )
