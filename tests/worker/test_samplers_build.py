"""Every listed A1111 sampler builds from both shipped scheduler configs and steps."""

from __future__ import annotations

import inspect
import json
from typing import Any

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

from sandbox.worker import samplers  # noqa: E402
from sandbox.worker.errors import SamplerError  # noqa: E402
from tests.synth import CONFIG_ROOT  # noqa: E402

pytestmark = pytest.mark.worker


def config(kind: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(
        (CONFIG_ROOT / kind / "scheduler" / "scheduler_config.json").read_text()
    )
    return data


def run(scheduler: Any, steps: int = 4, seed: int = 0) -> Any:
    gen = torch.Generator().manual_seed(seed)
    scheduler.set_timesteps(steps)
    sample = torch.randn(1, 4, 8, 8, generator=gen) * scheduler.init_noise_sigma
    for t in scheduler.timesteps:
        model_in = scheduler.scale_model_input(sample, t)
        eps = 0.1 * model_in + torch.randn(1, 4, 8, 8, generator=gen) * 0.01
        # Pass the generator only where step() takes one, as the pipelines do.
        extra = (
            {"generator": gen}
            if "generator" in inspect.signature(scheduler.step).parameters
            else {}
        )
        sample = scheduler.step(eps, t, sample, **extra).prev_sample
    return sample


@pytest.mark.parametrize("kind", ["sd15", "sdxl"])
@pytest.mark.parametrize("name", samplers.LISTED_NAMES)
def test_every_listed_sampler_builds_and_steps(kind: str, name: str) -> None:
    scheduler = samplers.make_scheduler(config(kind), name, seed=7)
    base, _ = samplers.split_name(name)
    assert type(scheduler).__name__ == samplers.SAMPLERS[base].cls
    if name.endswith("Karras"):
        assert scheduler.config["use_karras_sigmas"] is True
    out = run(scheduler)
    assert torch.isfinite(out).all()


def test_same_sampler_means_same_schedule_whatever_the_config() -> None:
    a = samplers.make_scheduler(config("sd15"), "Euler")
    b = samplers.make_scheduler(config("sdxl"), "Euler")
    a.set_timesteps(10)
    b.set_timesteps(10)
    assert torch.equal(a.timesteps, b.timesteps)


def test_sde_noise_is_seeded() -> None:
    cfg = config("sd15")
    first = run(samplers.make_scheduler(cfg, "DPM++ SDE Karras", seed=5))
    second = run(samplers.make_scheduler(cfg, "DPM++ SDE Karras", seed=5))
    other = run(samplers.make_scheduler(cfg, "DPM++ SDE Karras", seed=6))
    assert torch.equal(first, second) and not torch.equal(first, other)


def test_unsupported_flag_is_refused() -> None:
    with pytest.raises(SamplerError, match="use_karras_sigmas"):
        samplers.make_scheduler(config("sd15"), "Euler a Karras")
    with pytest.raises(SamplerError, match="noise seed"):
        samplers.make_scheduler(config("sd15"), "DPM++ SDE")
