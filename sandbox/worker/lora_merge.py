"""LoRAs written into the base weights in place, outside any compiled graph, exactly reversible.

peft (through diffusers) only reads the file: it maps every key format to the model's modules
and gives each module's down/up factors and alpha/rank scale; its wrappers are removed again
before anything runs, so the compiled blocks and the captured CUDA graph see the same modules
and the same weight addresses whatever LoRAs are active. A weight change rewrites
``W = W0 + sum(weight * scale * up @ down)`` from a kept copy of ``W0``: no recompile, no new
capture, and removing every LoRA copies ``W0`` back byte for byte. A LoRA at weight 0 is left
out, so it equals no LoRA exactly.

Fused projections (``to_qkv``, ``to_kv``) hold copies of ``to_q``/``to_k``/``to_v``: a factor
of one of those is written into both, so fusing or unfusing later stays consistent.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .errors import LoraMismatchError

if TYPE_CHECKING:
    import torch

#: Fused projection name -> the projections it concatenates, in row order.
_FUSED = {"to_qkv": ("to_q", "to_k", "to_v"), "to_kv": ("to_k", "to_v")}


@dataclass(frozen=True)
class Factor:
    """One module's LoRA pair: ``delta = scale * up @ down`` in the weight's shape."""

    down: torch.Tensor
    up: torch.Tensor
    scale: float

    def delta(self, shape: Sequence[int]) -> torch.Tensor:
        down = self.down.float().flatten(1)
        up = self.up.float().flatten(1)
        return (up @ down).mul_(self.scale).reshape(tuple(shape))


#: (component, module path) -> its factor, for one LoRA file.
Factors = dict[tuple[str, str], Factor]


def harvest(models: Mapping[str, Any], adapter: str) -> Factors:
    """Copy the factors peft injected for ``adapter`` out of its wrapper layers."""
    found: Factors = {}
    for comp, model in models.items():
        root = getattr(model, "_orig_mod", model)
        for name, mod in root.named_modules():
            lora_a = getattr(mod, "lora_A", None)
            if lora_a is None or adapter not in lora_a:
                continue
            if getattr(mod, "use_dora", {}).get(adapter):
                raise LoraMismatchError("DoRA LoRAs are not supported")
            found[(comp, name)] = Factor(
                down=lora_a[adapter].weight.detach().clone(),
                up=mod.lora_B[adapter].weight.detach().clone(),
                scale=float(mod.scaling[adapter]),
            )
    return found


@dataclass(frozen=True)
class _Target:
    """Where one factor lands: a weight, and the rows of it (all rows when ``rows`` is None)."""

    param: torch.nn.Parameter
    rows: tuple[int, int] | None


def _targets(root: Any, name: str) -> Iterator[_Target]:
    module = root.get_submodule(name)
    weight = getattr(module, "weight", None)
    if weight is None:
        raise LoraMismatchError(f"LoRA module {name} has no weight")
    yield _Target(weight, None)
    parent_name, _, leaf = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    for fused, parts in _FUSED.items():
        fused_mod = getattr(parent, fused, None)
        if fused_mod is None or leaf not in parts:
            continue
        start = 0
        for part in parts:
            rows = getattr(parent, part).weight.shape[0]
            if part == leaf:
                yield _Target(fused_mod.weight, (start, start + rows))
                break
            start += rows


class WeightPatcher:
    """Writes the active LoRAs into the weights; keeps each touched weight's original bytes."""

    def __init__(self) -> None:
        self._originals: dict[int, tuple[torch.nn.Parameter, torch.Tensor]] = {}

    @property
    def touched(self) -> int:
        return len(self._originals)

    def apply(
        self, models: Mapping[str, Any], active: Iterable[tuple[Factors, Mapping[str, float]]]
    ) -> None:
        """Make the weights ``W0 + sum(weight * delta)`` for ``active`` (factors, per-component
        weight) pairs; a weight no LoRA touches any more gets its original bytes back."""
        import torch

        plan: dict[int, tuple[torch.nn.Parameter, list[tuple[_Target, Factor, float]]]] = {}
        for factors, weights in active:
            for (comp, name), factor in factors.items():
                weight = weights.get(comp, 0.0)
                if weight == 0.0:
                    continue
                root = models[comp]
                root = getattr(root, "_orig_mod", root)
                for target in _targets(root, name):
                    entry = plan.setdefault(id(target.param), (target.param, []))
                    entry[1].append((target, factor, weight))
        with torch.no_grad():
            for key in [k for k in self._originals if k not in plan]:
                param, original = self._originals.pop(key)
                param.copy_(original)
            for key, (param, parts) in plan.items():
                if key not in self._originals:
                    self._originals[key] = (param, param.detach().clone())
                merged = self._originals[key][1].to(torch.float32, copy=True)
                for target, factor, weight in parts:
                    if target.rows is None:
                        merged.add_(factor.delta(merged.shape), alpha=weight)
                    else:
                        lo, hi = target.rows
                        rows = merged[lo:hi]
                        rows.add_(factor.delta(rows.shape), alpha=weight)
                param.copy_(merged.to(param.dtype))

    def restore(self) -> None:
        """Every touched weight back to its original bytes."""
        self.apply({}, ())

    def forget(self) -> None:
        """Drop the kept originals without writing them (the model itself is being dropped)."""
        self._originals.clear()
