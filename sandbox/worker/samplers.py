"""A1111 sampler names -> diffusers schedulers, with every flag checked.

``from_config`` silently drops keyword arguments a scheduler does not know, so after building
we check that each flag landed in ``scheduler.config``; a combination the class cannot do
("Euler a" + Karras) fails loudly instead of quietly giving other pixels.

The schedule spacing is set explicitly per sampler so one name means one schedule whatever
the checkpoint's shipped scheduler config says: A1111's k-diffusion samplers space sigmas
linearly in t ("linspace"); its DDIM/PLMS use "uniform" steps ("leading", offset 1).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .errors import SamplerError


@dataclass(frozen=True)
class SamplerDef:
    cls: str
    flags: dict[str, Any] = field(default_factory=dict)
    #: Noise comes from a seeded Brownian tree, not the pipeline's generator.
    seeded_noise: bool = False


_K = {"timestep_spacing": "linspace"}
SAMPLERS: dict[str, SamplerDef] = {
    "Euler": SamplerDef("EulerDiscreteScheduler", _K),
    "Euler a": SamplerDef("EulerAncestralDiscreteScheduler", _K),
    "Heun": SamplerDef("HeunDiscreteScheduler", _K),
    "LMS": SamplerDef("LMSDiscreteScheduler", _K),
    "DPM2": SamplerDef("KDPM2DiscreteScheduler", _K),
    "DPM2 a": SamplerDef("KDPM2AncestralDiscreteScheduler", _K),
    "DPM++ 2M": SamplerDef(
        "DPMSolverMultistepScheduler", {**_K, "algorithm_type": "dpmsolver++", "solver_order": 2}
    ),
    "DPM++ 2M SDE": SamplerDef(
        "DPMSolverMultistepScheduler",
        {**_K, "algorithm_type": "sde-dpmsolver++", "solver_order": 2},
    ),
    "DPM++ SDE": SamplerDef("DPMSolverSDEScheduler", _K, seeded_noise=True),
    "DDIM": SamplerDef(
        "DDIMScheduler", {"timestep_spacing": "leading", "steps_offset": 1, "clip_sample": False}
    ),
    "PLMS": SamplerDef(
        "PNDMScheduler", {"timestep_spacing": "leading", "steps_offset": 1, "skip_prk_steps": True}
    ),
    "UniPC": SamplerDef("UniPCMultistepScheduler", _K),
    "DEIS": SamplerDef("DEISMultistepScheduler", _K),
    "LCM": SamplerDef("LCMScheduler", {"timestep_spacing": "leading"}),
}

#: A1111 schedule types (>=1.9) and the flags that select them.
SCHEDULE_TYPES: dict[str, dict[str, Any]] = {
    "Automatic": {},
    "Karras": {"use_karras_sigmas": True},
    "Exponential": {"use_exponential_sigmas": True},
    "SGM Uniform": {"timestep_spacing": "trailing"},
}

#: The names the issue lists, in A1111's pre-1.9 "sampler + suffix" form.
LISTED_NAMES = [
    "Euler", "Euler a", "DPM++ 2M", "DPM++ 2M Karras", "DPM++ 2M SDE", "DPM++ 2M SDE Karras",
    "DPM++ SDE", "DPM++ SDE Karras", "DDIM", "UniPC", "Heun", "LMS", "LMS Karras", "DPM2",
    "DPM2 Karras", "DPM2 a", "DPM2 a Karras", "PLMS", "DEIS", "LCM",
]  # fmt: skip


def split_name(name: str, schedule_type: str | None = None) -> tuple[str, str]:
    """("DPM++ 2M Karras", None) -> ("DPM++ 2M", "Karras"); also accepts the split form."""
    base = name.strip()
    sched = schedule_type or "Automatic"
    for suffix in ("Karras", "Exponential"):
        if base.endswith(" " + suffix) and base[: -len(suffix) - 1] in SAMPLERS:
            if schedule_type not in (None, "Automatic", suffix):
                raise SamplerError(
                    f"sampler {name!r} conflicts with schedule type {schedule_type!r}"
                )
            base, sched = base[: -len(suffix) - 1], suffix
    if base not in SAMPLERS:
        raise SamplerError(f"unknown sampler {name!r}; known: {', '.join(SAMPLERS)}")
    if sched not in SCHEDULE_TYPES:
        raise SamplerError(f"unknown schedule type {sched!r}; known: {', '.join(SCHEDULE_TYPES)}")
    return base, sched


def make_scheduler(
    base_config: Any, name: str, schedule_type: str | None = None, seed: int | None = None
) -> Any:
    """Build the diffusers scheduler for an A1111 sampler name from a pipeline's config."""
    import diffusers

    base, sched = split_name(name, schedule_type)
    spec = SAMPLERS[base]
    flags = {**spec.flags, **SCHEDULE_TYPES[sched]}
    if spec.seeded_noise:
        if seed is None:
            raise SamplerError(f"{base} needs a noise seed")
        flags["noise_sampler_seed"] = seed
    cls = getattr(diffusers, spec.cls)
    try:
        scheduler = cls.from_config(dict(base_config), **flags)
    except ImportError as exc:  # DPMSolverSDEScheduler without torchsde
        raise SamplerError(f"{name}: {exc}") from exc
    if spec.seeded_noise and not hasattr(scheduler, "noise_sampler_seed"):
        raise SamplerError(f"{name}: torchsde is not installed (needed by {spec.cls})")
    for key, value in flags.items():
        if key == "noise_sampler_seed":
            if scheduler.noise_sampler_seed != value:
                raise SamplerError(f"{name}: noise seed not accepted by {spec.cls}")
            continue
        if key not in scheduler.config or scheduler.config[key] != value:
            raise SamplerError(f"{spec.cls} does not support {key}={value!r} ({base} + {sched})")
    return scheduler


def infotext_fields(name: str, schedule_type: str | None = None) -> tuple[str, str | None]:
    """What A1111 >=1.9 writes: ``Sampler`` and ``Schedule type`` (None when automatic)."""
    base, sched = split_name(name, schedule_type)
    return base, (None if sched == "Automatic" else sched)
