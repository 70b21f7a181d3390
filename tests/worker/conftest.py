"""Fixtures for the generation engine's tests.

Synthetic models (random weights, real key layout) are built once and cached under
``ASSETMGR_SYNTH_CACHE`` (default ``<repo>/.cache/synth``), keyed by ``SYNTH_VERSION``; the
first run spends a minute or two building them, later runs reuse them. Loaded engines are
session-scoped: loading is the slow part, generation at 64x64 / 2 steps takes seconds.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .helpers import THREADS, base_spec

REPO_ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
# The ML libraries warn about their own internals (numpy 2 copy semantics, deprecations);
# the suite turns warnings into errors, so those are let through here, ours are not.
_LIBS = r"(diffusers|transformers|peft|torch|torchsde|accelerate|huggingface_hub|numpy)(\..*)?$"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in Path(str(item.fspath)).resolve().parents:
            for category in (
                "DeprecationWarning",
                "FutureWarning",
                "UserWarning",
                "RuntimeWarning",
            ):
                item.add_marker(pytest.mark.filterwarnings(f"ignore::{category}:{_LIBS}"))


def _needs_torch() -> None:
    pytest.importorskip("torch")
    pytest.importorskip("diffusers")
    pytest.importorskip("peft")


@pytest.fixture(scope="session")
def synth_cache() -> Any:
    _needs_torch()
    from tests.synth import SynthCache

    root = os.environ.get("ASSETMGR_SYNTH_CACHE") or str(REPO_ROOT / ".cache" / "synth")
    return SynthCache(root)


@pytest.fixture(scope="session")
def sd15_path(synth_cache: Any) -> Path:
    path: Path = synth_cache.sd15()
    return path


@pytest.fixture(scope="session")
def loras15(synth_cache: Any) -> dict[str, Path]:
    return {
        "a": synth_cache.lora("sd15", "lora15_a", seed=1),
        "b": synth_cache.lora("sd15", "locon15_b", seed=2, conv=True),
        "partial": synth_cache.lora("sd15", "lora15_partial", seed=3, bogus=3),
    }


@pytest.fixture(scope="session")
def loraxl(synth_cache: Any) -> Path:
    path: Path = synth_cache.lora("sdxl", "loraxl_a", seed=4)
    return path


@pytest.fixture(scope="session")
def engine15(sd15_path: Path) -> Iterator[Any]:
    import torch

    from sandbox.worker.pipeline import Engine

    torch.set_num_threads(THREADS)
    engine = Engine()
    engine.load(sd15_path, dtype="float32")
    yield engine
    engine.close()


@pytest.fixture(scope="session")
def baseline15(engine15: Any, sd15_path: Path) -> Any:
    """The no-LoRA image every drift test compares against (generated first, on a fresh load)."""
    from sandbox.worker.generate import generate

    return generate(engine15, base_spec(sd15_path))[0]
