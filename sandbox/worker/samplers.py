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

from sandbox.protocol.jobspec import LISTED_NAMES, SamplerNameError, split_sampler

from .errors import SamplerError


@dataclass(frozen=True)
class SamplerDef:
    cls: str
    flags: dict[str, Any] = field(default_factory=dict)
    #: Noise comes from a seeded Brownian tree, not the pipeline's generator.
    seeded_noise: bool = False


_K = {"timestep_spacing": "linspace"}
#: Keyed by `sandbox.protocol.jobspec.SAMPLER_NAMES` (a test keeps the two in step).
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

#: A1111 schedule types (>=1.9) and the flags that select them; keyed by
#: `sandbox.protocol.jobspec.SCHEDULE_TYPES`.
SCHEDULE_TYPES: dict[str, dict[str, Any]] = {
    "Automatic": {},
    "Karras": {"use_karras_sigmas": True},
    "Exponential": {"use_exponential_sigmas": True},
    "SGM Uniform": {"timestep_spacing": "trailing"},
}


def split_name(name: str, schedule_type: str | None = None) -> tuple[str, str]:
    """("DPM++ 2M Karras", None) -> ("DPM++ 2M", "Karras"); also accepts the split form.

    The names and their parsing are the job contract's (`sandbox.protocol.jobspec.split_sampler`),
    which the host checks before any job starts.
    """
    try:
        return split_sampler(name, schedule_type)
    except SamplerNameError as exc:
        raise SamplerError(str(exc)) from None


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


__all__ = [
    "LISTED_NAMES",
    "SAMPLERS",
    "SCHEDULE_TYPES",
    "infotext_fields",
    "make_scheduler",
    "split_name",
]
