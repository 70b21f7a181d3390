"""Loads a job's plugins from their read-only mounts and calls their hooks, containing failures.

Runs only inside the container (the host never imports plugin code). First each plugin's
requirement directory (``/opt/plugin-deps/<PluginRef.deps>``, built into the image apart from
the worker's venv) is appended to ``sys.path`` as a plain entry: after the venv, so it shadows
nothing the worker imports, and without ``site.addsitedir``, so no ``.pth`` file in it is read.
A job that names no plugin never gets any of these directories. Then, for each `PluginRef`, in
order, the entry module is imported as ``assetmgr_plugin_<name>.<entry>`` from
``/plugins/<name>`` (the plugin directory acts as a package, so relative imports work). Only
the hooks the vetted manifest declares are looked up, and each must be a callable.

Every hook call goes through `PluginHost._call`: whatever a plugin raises, ``SystemExit``
included, becomes a `PluginError` naming the plugin and the hook, which fails the job with that
message. Return values are checked (types, sizes, names) before anything uses them.

The generation code calls the module-level helpers, which act on the job's active host (set by
`activate`) and do nothing when the job has no plugins:

    prompt, negative = plugin_host.apply_prompt_hooks(prompt, negative, seed=seed, index=i)
    image = plugin_host.apply_post_process(image, seed=seed, index=i)
    samplers = plugin_host.sampler_factories()

Extra outputs are written by `sandbox.worker.execute` after the job kind ran.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import json
import logging
import os
import re
import sys
import types
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from sandbox.protocol import (
    OUTPUT_EXTRA_RE,
    OUTPUT_PNG_RE,
    PLUGIN_DEPS_DIR,
    PLUGINS_DIR,
    JobSpec,
    PluginRef,
)
from sandbox.worker.plugin_api import PluginContext

log = logging.getLogger(__name__)

MAX_PROMPT_CHARS: Final = 32_768
MAX_IMAGE_SIDE: Final = 8192
MAX_IMAGE_PIXELS: Final = 64 * 1024 * 1024
MAX_EXTRA_FILES: Final = 16
MAX_EXTRA_BYTES: Final = 8 * 1024 * 1024
MAX_SAMPLERS: Final = 32
_SAMPLER_NAME_RE: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 _+.-]{0,63}$")
_EXTRA_NAME_RE: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,80}\.(png|txt|json)$")
_PNG_SIGNATURE: Final = b"\x89PNG\r\n\x1a\n"


class PluginError(Exception):
    """A plugin failed to load or a hook failed; the job fails with this message."""

    def __init__(self, plugin: str, stage: str, message: str) -> None:
        super().__init__(f"plugin {plugin!r} {stage}: {message}")
        self.plugin = plugin
        self.stage = stage


@dataclass
class LoadedPlugin:
    ref: PluginRef
    directory: Path
    module: types.ModuleType
    hooks: dict[str, Callable[..., Any]]
    options: Mapping[str, Any]
    state: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.ref.name


#: Warm workers serve many jobs; a plugin is imported once per (name, tree sha256).
_MODULES: dict[tuple[str, str], types.ModuleType] = {}


def _package_name(ref: PluginRef) -> str:
    return "assetmgr_plugin_" + ref.name.replace("-", "_")


def _import_entry(ref: PluginRef, directory: Path) -> types.ModuleType:
    cached = _MODULES.get((ref.name, ref.sha256))
    if cached is not None:
        return cached
    package = _package_name(ref)
    for name in [m for m in sys.modules if m == package or m.startswith(package + ".")]:
        del sys.modules[name]  # an older version of the same plugin in a warm worker
    spec = importlib.machinery.ModuleSpec(package, None, is_package=True)
    spec.submodule_search_locations = [str(directory)]
    pkg = importlib.util.module_from_spec(spec)
    sys.modules[package] = pkg
    module = importlib.import_module(f"{package}.{ref.entry}")
    _MODULES[(ref.name, ref.sha256)] = module
    return module


def add_dependency_paths(refs: Sequence[PluginRef], deps_root: Path) -> list[str]:
    """Append each plugin's requirement directory to ``sys.path``; return those added.

    Plain entries at the end (never ``site.addsitedir``): ``.pth`` files and
    ``sitecustomize`` there are never run, and nothing of the venv can be shadowed.
    """
    added = []
    for ref in refs:
        if ref.deps is None:
            continue
        directory = deps_root / ref.deps
        if not directory.is_dir():
            raise PluginError(
                ref.name, "load", f"its requirements are not in the sandbox image ({directory})"
            )
        if str(directory) not in sys.path:
            sys.path.append(str(directory))
            added.append(str(directory))
    return added


def _contained(plugin: str, stage: str, fn: Callable[..., Any], *args: Any) -> Any:
    try:
        return fn(*args)
    except PluginError:
        raise
    except BaseException as exc:  # SystemExit and KeyboardInterrupt from plugin code too
        detail = str(exc)[:1000]
        raise PluginError(plugin, stage, f"{type(exc).__name__}: {detail}") from None


class PluginHost:
    """The plugins of one job, loaded, with their hooks."""

    def __init__(self, spec: JobSpec, plugins: list[LoadedPlugin]) -> None:
        self.spec = spec
        self.plugins = plugins

    @classmethod
    def load(
        cls, spec: JobSpec, root: Path | None = None, deps_root: Path | None = None
    ) -> PluginHost:
        root = Path(root or PLUGINS_DIR)
        add_dependency_paths(spec.plugins, Path(deps_root or PLUGIN_DEPS_DIR))
        raw_options = spec.params.get("plugin_options")
        all_options = raw_options if isinstance(raw_options, dict) else {}
        loaded = []
        for ref in spec.plugins:
            directory = root / ref.name
            if not directory.is_dir():
                raise PluginError(ref.name, "load", f"not mounted at {directory}")
            module = _contained(ref.name, "import", _import_entry, ref, directory)
            hooks = {}
            for hook in ref.hooks:
                fn = getattr(module, hook, None)
                if not callable(fn):
                    raise PluginError(
                        ref.name,
                        "load",
                        f"declares hook {hook!r} but its entry has no such callable",
                    )
                hooks[hook] = fn
            options = all_options.get(ref.name)
            loaded.append(
                LoadedPlugin(
                    ref=ref,
                    directory=directory,
                    module=module,
                    hooks=hooks,
                    options=types.MappingProxyType(dict(options))
                    if isinstance(options, dict)
                    else types.MappingProxyType({}),
                )
            )
            log.info("loaded plugin %s %s (%s)", ref.name, ref.version, ", ".join(ref.hooks))
        return cls(spec, loaded)

    def _with(self, hook: str) -> list[LoadedPlugin]:
        return [p for p in self.plugins if hook in p.hooks]

    def context(
        self,
        plugin: LoadedPlugin,
        *,
        seed: int = 0,
        index: int = 0,
        width: int | None = None,
        height: int | None = None,
    ) -> PluginContext:
        return PluginContext(
            plugin_name=plugin.name,
            plugin_dir=plugin.directory,
            job_id=self.spec.job_id,
            kind=self.spec.kind,
            seed=seed,
            index=index,
            width=width,
            height=height,
            options=plugin.options,
            state=plugin.state,
        )

    # --- hooks ---------------------------------------------------------------------------

    def transform_prompt(
        self,
        prompt: str,
        negative: str,
        *,
        seed: int = 0,
        index: int = 0,
        width: int | None = None,
        height: int | None = None,
    ) -> tuple[str, str]:
        for p in self._with("prompt_transform"):
            ctx = self.context(p, seed=seed, index=index, width=width, height=height)
            out = _contained(
                p.name, "prompt_transform", p.hooks["prompt_transform"], prompt, negative, ctx
            )
            if (
                not isinstance(out, tuple | list)
                or len(out) != 2
                or not all(isinstance(s, str) for s in out)
            ):
                raise PluginError(
                    p.name, "prompt_transform", "must return (prompt, negative) strings"
                )
            if any(len(s) > MAX_PROMPT_CHARS for s in out):
                raise PluginError(
                    p.name,
                    "prompt_transform",
                    f"returned a prompt over {MAX_PROMPT_CHARS} characters",
                )
            prompt, negative = out[0], out[1]
        return prompt, negative

    def post_process(self, image: Any, *, seed: int = 0, index: int = 0) -> Any:
        hooked = self._with("post_process")
        if not hooked:
            return image
        from PIL import Image

        for p in hooked:
            ctx = self.context(p, seed=seed, index=index, width=image.width, height=image.height)
            out = _contained(p.name, "post_process", p.hooks["post_process"], image, ctx)
            if not isinstance(out, Image.Image):
                raise PluginError(p.name, "post_process", "must return a PIL image")
            w, h = out.size
            if (
                not (0 < w <= MAX_IMAGE_SIDE and 0 < h <= MAX_IMAGE_SIDE)
                or w * h > MAX_IMAGE_PIXELS
            ):
                raise PluginError(p.name, "post_process", f"returned a {w}x{h} image")
            if out.mode not in ("RGB", "RGBA"):
                out = _contained(
                    p.name,
                    "post_process",
                    out.convert,
                    "RGBA" if "A" in out.mode or out.mode == "P" else "RGB",
                )
            image = out
        return image

    def sampler_factories(self) -> dict[str, Callable[..., object]]:
        found: dict[str, Callable[..., object]] = {}
        for p in self._with("sampler_provider"):
            out = _contained(p.name, "sampler_provider", p.hooks["sampler_provider"])
            if not isinstance(out, Mapping) or len(out) > MAX_SAMPLERS:
                raise PluginError(
                    p.name, "sampler_provider", f"must return a dict of at most {MAX_SAMPLERS}"
                )
            for name, factory in out.items():
                if not isinstance(name, str) or not _SAMPLER_NAME_RE.match(name):
                    raise PluginError(p.name, "sampler_provider", f"bad sampler name {name!r}")
                if not callable(factory):
                    raise PluginError(p.name, "sampler_provider", f"{name!r} is not callable")
                if name in found:
                    raise PluginError(
                        p.name, "sampler_provider", f"sampler {name!r} already exists"
                    )
                found[name] = factory
        return found

    def write_extra_outputs(self, out_dir: Path, *, seed: int = 0) -> list[str]:
        """Call every ``extra_outputs`` hook; write ``out/<plugin>.<name>``; return the names."""
        written: list[str] = []
        for p in self._with("extra_outputs"):
            ctx = self.context(p, seed=seed)
            out = _contained(p.name, "extra_outputs", p.hooks["extra_outputs"], ctx)
            if not isinstance(out, Mapping) or len(out) > MAX_EXTRA_FILES:
                raise PluginError(
                    p.name,
                    "extra_outputs",
                    f"must return a dict of at most {MAX_EXTRA_FILES} files",
                )
            for name, payload in out.items():
                final = self._check_extra(p.name, name, payload)
                data = payload.encode("utf-8") if isinstance(payload, str) else bytes(payload)
                _write_new(out_dir / final, data, p.name)
                written.append(final)
        return written

    @staticmethod
    def _check_extra(plugin: str, name: object, payload: object) -> str:
        if not isinstance(name, str) or not _EXTRA_NAME_RE.match(name):
            raise PluginError(plugin, "extra_outputs", f"output name {name!r} is not allowed")
        final = f"{plugin}.{name}"
        if not (OUTPUT_PNG_RE.match("out/" + final) or OUTPUT_EXTRA_RE.match("out/" + final)):
            raise PluginError(plugin, "extra_outputs", f"output name {name!r} is too long")
        if isinstance(payload, str):
            payload = payload.encode("utf-8")
        if not isinstance(payload, bytes | bytearray):
            raise PluginError(plugin, "extra_outputs", f"{name!r} must be bytes or str")
        if len(payload) > MAX_EXTRA_BYTES:
            raise PluginError(plugin, "extra_outputs", f"{name!r} exceeds {MAX_EXTRA_BYTES} bytes")
        try:
            if name.endswith(".png") and not bytes(payload).startswith(_PNG_SIGNATURE):
                raise ValueError("not a PNG file")
            if name.endswith(".json"):
                json.loads(bytes(payload).decode("utf-8"))
            if name.endswith(".txt"):
                bytes(payload).decode("utf-8")
        except ValueError as exc:
            raise PluginError(plugin, "extra_outputs", f"{name!r}: {exc}") from None
        return final

    def summary(self) -> list[dict[str, Any]]:
        return [
            {
                "name": p.name,
                "version": p.ref.version,
                "sha256": p.ref.sha256,
                "hooks": list(p.ref.hooks),
            }
            for p in self.plugins
        ]


def _write_new(path: Path, data: bytes, plugin: str) -> None:
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags, 0o644)
    except FileExistsError:
        raise PluginError(plugin, "extra_outputs", f"{path.name} already exists") from None
    with os.fdopen(fd, "wb") as f:
        f.write(data)


# --- the job's active host -------------------------------------------------------------------

_ACTIVE: PluginHost | None = None


@contextmanager
def activate(
    spec: JobSpec, root: Path | None = None, deps_root: Path | None = None
) -> Iterator[PluginHost]:
    """Load the job's plugins and make them the active set until the block ends."""
    global _ACTIVE
    if _ACTIVE is not None:
        raise RuntimeError("a plugin host is already active")
    host = PluginHost.load(spec, root, deps_root) if spec.plugins else PluginHost(spec, [])
    _ACTIVE = host
    try:
        yield host
    finally:
        _ACTIVE = None


def active() -> PluginHost | None:
    return _ACTIVE


def apply_prompt_hooks(
    prompt: str,
    negative: str,
    *,
    seed: int = 0,
    index: int = 0,
    width: int | None = None,
    height: int | None = None,
) -> tuple[str, str]:
    """The prompt after every plugin's ``prompt_transform`` (unchanged without plugins)."""
    host = _ACTIVE
    if host is None:
        return prompt, negative
    return host.transform_prompt(
        prompt, negative, seed=seed, index=index, width=width, height=height
    )


def apply_post_process(image: Any, *, seed: int = 0, index: int = 0) -> Any:
    """The PIL image after every plugin's ``post_process`` (unchanged without plugins)."""
    host = _ACTIVE
    if host is None:
        return image
    return host.post_process(image, seed=seed, index=index)


def sampler_factories() -> dict[str, Callable[..., object]]:
    """Samplers the active plugins provide, name -> factory (empty without plugins)."""
    host = _ACTIVE
    return host.sampler_factories() if host is not None else {}


__all__ = [
    "LoadedPlugin",
    "PluginError",
    "PluginHost",
    "activate",
    "active",
    "add_dependency_paths",
    "apply_post_process",
    "apply_prompt_hooks",
    "sampler_factories",
]
