"""The sandbox worker: runs inside the container (see `sandbox.worker.__main__`).

`execute` is also callable in-process (tests, the in-process baseline of the bench). It loads
the job's plugins (`sandbox.worker.plugin_host`) before the job kind runs; the kinds call the
hooks through the plugin host's module-level helpers, and `execute` collects the plugins'
extra outputs afterwards.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sandbox.protocol import (
    EchoParams,
    JobSpec,
    PluginDemoParams,
    ProbeParams,
    ProgressMessage,
    ResultMessage,
)
from sandbox.worker import plugin_host
from sandbox.worker.channel import Channel

WORKER_VERSION = "1"


def _run_probe_job(spec: JobSpec, out_dir: Path, channel: Channel) -> dict[str, Any]:
    from sandbox.worker.probes import ProbeContext, run_probe

    params = spec.typed_params()
    if not isinstance(params, ProbeParams):
        raise ValueError(f"job kind {spec.kind!r} has no probe parameters")
    ctx = ProbeContext(spec=spec, channel=channel, out_dir=out_dir)
    results = []
    for i, call in enumerate(params.probes):
        channel.send(
            ProgressMessage(
                stage=call.name, step=i, total=len(params.probes), fraction=i / len(params.probes)
            )
        )
        results.append(run_probe(ctx, call.name, dict(call.args)))
    data: dict[str, Any] = {"probes": results}
    prompt = params.model_extra.get("prompt") if params.model_extra else None
    if isinstance(prompt, str):
        data["prompt"], data["negative"] = plugin_host.apply_prompt_hooks(prompt, "")
    return data


def _run_echo_job(spec: JobSpec, out_dir: Path, channel: Channel) -> dict[str, Any]:
    from sandbox.worker.probes import png_bytes

    params = spec.typed_params()
    if not isinstance(params, EchoParams):
        raise ValueError(f"job kind {spec.kind!r} has no echo parameters")
    text, _ = plugin_host.apply_prompt_hooks(params.text, "")
    png = png_bytes(params.width, params.height, params.rgb)
    host = plugin_host.active()
    if host is not None and any("post_process" in p.hooks for p in host.plugins):
        png = _post_process_png(png, seed=0)
    (out_dir / params.name).write_bytes(png)
    channel.send(ProgressMessage(stage="echo", fraction=1.0))
    return {"text": text, "size": [params.width, params.height], "name": params.name}


def _post_process_png(png: bytes, *, seed: int, index: int = 0) -> bytes:
    import io

    from PIL import Image

    with Image.open(io.BytesIO(png), formats=["PNG"]) as im:
        image = im.convert("RGB")
    image = plugin_host.apply_post_process(image, seed=seed, index=index)
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def _demo_image(width: int, height: int, seed: int) -> Any:
    """A seeded two-colour gradient with a few bands: something a filter visibly changes."""
    import random

    from PIL import Image

    rng = random.Random(seed)  # noqa: S311  # a reproducible picture, not a secret
    a = [rng.randrange(256) for _ in range(3)]
    b = [rng.randrange(256) for _ in range(3)]
    image = Image.new("RGB", (width, height))
    pixels = []
    for y in range(height):
        for x in range(width):
            t = (x + y) / max(1, width + height - 2)
            wave = 24 if (x // 8 + y // 8) % 2 else 0
            pixels.append(tuple(min(255, int(a[c] + (b[c] - a[c]) * t) + wave) for c in range(3)))
    image.putdata(pixels)
    return image


def _run_plugin_demo_job(spec: JobSpec, out_dir: Path, channel: Channel) -> dict[str, Any]:
    import json

    params = spec.typed_params()
    if not isinstance(params, PluginDemoParams):
        raise ValueError(f"job kind {spec.kind!r} has no plugin demo parameters")
    prompt, negative = plugin_host.apply_prompt_hooks(
        params.prompt,
        params.negative,
        seed=params.seed,
        width=params.width,
        height=params.height,
    )
    channel.send(ProgressMessage(stage="prompt", fraction=0.3))
    image = _demo_image(params.width, params.height, params.seed)
    image = plugin_host.apply_post_process(image, seed=params.seed)
    image.save(out_dir / "demo.png", format="PNG")
    channel.send(ProgressMessage(stage="image", fraction=0.9))
    samplers = sorted(plugin_host.sampler_factories())
    data: dict[str, Any] = {
        "prompt": prompt,
        "negative": negative,
        "seed": params.seed,
        "size": list(image.size),
        "samplers": samplers,
    }
    (out_dir / "result.json").write_text(json.dumps(data, sort_keys=True))
    return data


def _job_seed(spec: JobSpec) -> int:
    seed = spec.params.get("seed")
    return seed if isinstance(seed, int) and not isinstance(seed, bool) and seed >= 0 else 0


def _run_generate_job(spec: JobSpec, out_dir: Path, channel: Channel) -> dict[str, Any]:
    from sandbox.worker.kind_generate import run_generate_job

    return run_generate_job(spec, out_dir, channel)


_KINDS = {
    "probe": _run_probe_job,
    "echo": _run_echo_job,
    "plugin_demo": _run_plugin_demo_job,
    "generate": _run_generate_job,
}


def execute(
    spec: JobSpec,
    out_dir: Path,
    channel: Channel,
    *,
    plugins_root: Path | None = None,
    plugin_deps_root: Path | None = None,
    inline_outputs: bool = False,
) -> ResultMessage:
    """Run one validated job, write its files under `out_dir` and send its result line.

    `plugins_root` is where the job's plugins are mounted (default ``/plugins``) and
    `plugin_deps_root` where the image keeps their requirements (``/opt/plugin-deps``). With
    `inline_outputs` (warm workers) the files also go out over `channel`, before the result
    line (see `Channel.send_outputs`).
    """
    runner = _KINDS.get(spec.kind)
    if runner is None:
        raise ValueError(f"this worker cannot run kind {spec.kind!r}")
    out_dir.mkdir(parents=True, exist_ok=True)
    with plugin_host.activate(spec, plugins_root, plugin_deps_root) as host:
        data = runner(spec, out_dir, channel)
        if host.plugins:
            extra = host.write_extra_outputs(out_dir, seed=_job_seed(spec))
            data = {**data, "plugins": host.summary(), "plugin_outputs": extra}
    outputs = sorted(f"out/{p.name}" for p in out_dir.iterdir() if p.is_file())
    result = ResultMessage(job_id=spec.job_id, nonce=spec.nonce, outputs=outputs, data=data)
    if inline_outputs:
        channel.send_outputs(out_dir, spec.job_id, spec.nonce)
    channel.send(result)
    return result


__all__ = ["WORKER_VERSION", "execute"]
