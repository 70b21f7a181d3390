"""The plugin API (version 1): what a plugin's entry module may define. Standard library only.

A plugin is a directory with a manifest (``assetmgr-plugin.toml`` or ``assetmgr-plugin.json``)::

    name = "wildcards"              # lower case: [a-z][a-z0-9_-]*
    version = "1.0.0"
    entry = "wildcards_plugin"      # <entry>.py or <entry>/__init__.py in the plugin directory
    hooks = ["prompt_transform", "extra_outputs"]
    requirements = []               # wheels from PyPI, pinned: ["name==1.2.3"]
    api = 1
    description = "..."

`assetmgr plugins add DIR` vets it on the host (the manifest is read as data; no plugin code
runs there), records the sha256 of every file, and keeps a read-only copy. Its requirements go
into the sandbox image's hash-locked wheelhouse when the image is built: nothing is installed
at run time, and the sandbox has no network. A job that asks for the plugin gets that copy
mounted read-only at ``/plugins/<name>``; the worker imports the entry module (as a package
named after the plugin, so ``from . import helpers`` works) and calls only the hooks the
manifest declares, in the order the job lists its plugins:

``prompt_transform(prompt: str, negative: str, ctx: PluginContext) -> tuple[str, str]``
    Rewrite the positive and negative prompt before encoding; called once per image.

``sampler_provider() -> dict[str, Callable[..., object]]``
    Extra samplers, name -> factory; the generation code decides how to call the factory.

``post_process(image: PIL.Image.Image, ctx: PluginContext) -> PIL.Image.Image``
    Filter each generated image (RGB or RGBA, at most 8192 pixels a side).

``extra_outputs(ctx: PluginContext) -> dict[str, bytes | str]``
    Side files, called once after the job's images are written. Names must be
    ``<name>.png``, ``<name>.txt`` or ``<name>.json`` ([A-Za-z0-9][A-Za-z0-9_.-]*); they are
    written as ``out/<plugin>.<name>``, and the host re-validates them (PNG re-encoded, text
    strict UTF-8, JSON re-serialised).

Rules the worker enforces: a hook that raises (or exits) fails the job with an error naming the
plugin and the hook; a hook that returns the wrong type or too much data does too. State kept in
module globals lives for one job in a one-shot container, and for the life of a warm worker
only when every plugin of the set is marked trusted.

What a plugin can and cannot do is decided by the container, not by this API: no network, a
read-only root and plugin directory, a small noexec /tmp, no secrets in the environment, and
resource limits; outputs are whatever the host's allowlist accepts.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Final, Protocol

API_VERSION: Final = 1
HOOKS: Final = ("prompt_transform", "sampler_provider", "post_process", "extra_outputs")
MAX_PLUGIN_READ_BYTES: Final = 8 * 1024 * 1024


class PluginAPIError(Exception):
    """Raised by the helpers below when a plugin asks for something it may not have."""


@dataclass(frozen=True)
class PluginContext:
    """What a hook learns about the job. Never carries the job's nonce or anything secret."""

    plugin_name: str
    plugin_dir: Path
    """The plugin's own read-only directory (``/plugins/<name>`` in the container)."""
    job_id: str
    kind: str
    seed: int = 0
    index: int = 0
    """Which image of the job this call is about (0 for per-job hooks)."""
    width: int | None = None
    height: int | None = None
    options: Mapping[str, Any] = field(default_factory=dict)
    """This plugin's entry of the job's ``plugin_options`` (empty when the job gives none)."""
    state: dict[str, Any] = field(default_factory=dict)
    """Scratch space shared by this plugin's hooks within one job (e.g. what was chosen)."""

    def rng(self, salt: str = "") -> random.Random:
        """A generator that depends only on (seed, index, plugin name, salt): deterministic."""
        # reproducible choices for an image, not a secret
        return random.Random(f"{self.seed}:{self.index}:{self.plugin_name}:{salt}")  # noqa: S311

    def resolve(self, relative: str) -> Path:
        """A path inside the plugin's directory; refuses absolute paths and ``..``."""
        rel = PurePosixPath(relative)
        if rel.is_absolute() or ".." in rel.parts or not rel.parts:
            raise PluginAPIError(f"path {relative!r} is not inside the plugin")
        return self.plugin_dir.joinpath(*rel.parts)

    def read_bytes(self, relative: str) -> bytes:
        path = self.resolve(relative)
        with open(path, "rb") as f:
            data = f.read(MAX_PLUGIN_READ_BYTES + 1)
        if len(data) > MAX_PLUGIN_READ_BYTES:
            raise PluginAPIError(f"{relative} is larger than {MAX_PLUGIN_READ_BYTES} bytes")
        return data

    def read_text(self, relative: str) -> str:
        return self.read_bytes(relative).decode("utf-8")


class PromptTransform(Protocol):
    def __call__(self, prompt: str, negative: str, ctx: PluginContext) -> tuple[str, str]: ...


class SamplerProvider(Protocol):
    def __call__(self) -> Mapping[str, Callable[..., object]]: ...


class PostProcess(Protocol):
    def __call__(self, image: Any, ctx: PluginContext) -> Any: ...


class ExtraOutputs(Protocol):
    def __call__(self, ctx: PluginContext) -> Mapping[str, bytes | str]: ...


__all__ = [
    "API_VERSION",
    "HOOKS",
    "ExtraOutputs",
    "PluginAPIError",
    "PluginContext",
    "PostProcess",
    "PromptTransform",
    "SamplerProvider",
]
