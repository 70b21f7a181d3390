"""The host's checks and the worker agree: a request the host accepts is a spec the worker
accepts (job spec, `GenSpec`, prompt tags, sampler), and one the host refuses the worker would
refuse too, so no refusal is left for after a container started. No torch needed."""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from assetmgr.app.generate_checks import request_problems
from assetmgr.app.generation import GenerateRequest
from sandbox.protocol import JobSpec, Limits, ModelRef, jobspec
from sandbox.protocol.jobspec import GenSpec
from sandbox.worker import samplers
from sandbox.worker.errors import EngineError
from sandbox.worker.generate import resolve_prompt

SHA = "cd" * 32
NAMES = ("inkwash", "Ink_Wash", "detail-v2", "a.b")


def _cased(text: str, flips: list[bool]) -> str:
    flips = (flips + [False] * len(text))[: len(text)]
    return "".join(c.upper() if f else c.lower() for c, f in zip(text, flips, strict=True))


def sometimes(good: st.SearchStrategy[Any], bad: st.SearchStrategy[Any]) -> Any:
    """Mostly `good`, one draw in twenty from `bad`: most requests are valid or nearly so."""
    return st.integers(0, 19).flatmap(lambda n: bad if n == 0 else good)


good_weights = st.floats(-3, 3, allow_nan=False).map(lambda w: f"{w:g}")
bad_weights = st.sampled_from(["abc", "nan", "inf", "", "1_0", "0x1", "1e999"])


@st.composite
def tags(draw: st.DrawFn) -> str:
    kind = draw(sometimes(st.sampled_from(["lora", "lyco", "LoRA", "LYCO"]), st.just("hypernet")))
    name = draw(sometimes(st.sampled_from(NAMES), st.sampled_from(["", " inkwash "])))
    fields = draw(st.lists(sometimes(good_weights, bad_weights), max_size=3))
    named = draw(
        sometimes(st.just(""), st.sampled_from([":te=0.4", ":unet=x", ":te=1:te=2", ":1:1"]))
    )
    closed = draw(sometimes(st.just(">"), st.just("")))
    return f"<{kind}:" + ":".join([name, *fields]) + named + closed


words = st.sampled_from(["a heron", "(reeds:1.2)", "BREAK", ",", "[mist]"])
prompts = st.lists(st.one_of(words, tags()), max_size=4).map(" ".join)
sampler_names = sometimes(
    st.tuples(st.sampled_from(jobspec.sampler_names()), st.lists(st.booleans(), max_size=20)).map(
        lambda t: _cased(t[0], t[1])
    ),
    st.sampled_from(["Euler b", "DPM adaptive", "", "Karras", "DPM++ 2M Exponential Karras"]),
)


def bounded(bound: jobspec.Bound, bad: st.SearchStrategy[Any]) -> Any:
    step = bound.multiple_of or 1
    good = st.integers(int(bound.lo) // step, int(bound.hi) // step).map(lambda n: n * step)
    return sometimes(good.filter(lambda v: v >= bound.lo), bad)


@st.composite
def requests(draw: st.DrawFn) -> GenerateRequest:
    return GenerateRequest(
        model="base",
        prompt=draw(prompts),
        negative=draw(sometimes(st.just("blurry"), prompts)),
        loras=draw(st.lists(st.tuples(st.sampled_from(NAMES), st.floats(-2, 2)), max_size=3)),
        steps=draw(bounded(jobspec.STEPS, st.sampled_from([0, -1, 151]))),
        cfg=draw(sometimes(st.floats(0, 30), st.sampled_from([-0.5, 30.01, 1e9]))),
        seed=draw(bounded(jobspec.SEED, st.sampled_from([-1, 2**32]))),
        width=draw(bounded(jobspec.SIZE, st.sampled_from([513, 60, 2056, 0]))),
        height=draw(bounded(jobspec.SIZE, st.integers(-8, 3000))),
        batch=draw(bounded(jobspec.BATCH_SIZE, st.sampled_from([0, 17]))),
        sampler=draw(sampler_names),
        clip_skip=draw(bounded(jobspec.CLIP_SKIP, st.sampled_from([0, 13]))),
        dtype=draw(sometimes(st.sampled_from(jobspec.DTYPES), st.just("fp8"))),
        device=draw(sometimes(st.sampled_from(jobspec.DEVICES), st.just("tpu"))),
        threads=draw(st.one_of(st.none(), bounded(jobspec.THREADS, st.sampled_from([0, 257])))),
        timeout_s=draw(sometimes(st.floats(1, 86400), st.sampled_from([0.0, -1.0, 86401.0]))),
    )


def params_of(req: GenerateRequest, *, host_accepted: bool) -> dict[str, Any]:
    """The job params `build_spec` sends for `req`, its LoRA references taken as resolved."""
    wanted: dict[str, float | None] = dict(req.loras)
    try:
        tagged = [t.name for t in jobspec.parse_tags(req.prompt) if t.is_lora]
    except jobspec.TagError:
        tagged = []
    for name in tagged:
        wanted.setdefault(name, None)
    loras = [
        {
            "name": ref,
            "path": f"/models/{ref}.safetensors",
            "sha256": SHA,
            "te_weight": w,
            "unet_weight": w,
        }
        for ref, w in wanted.items()
    ]
    return {
        "model_path": "/models/base.safetensors",
        "model_sha256": SHA,
        "loras": loras,
        "prompt": req.prompt,
        "negative_prompt": req.negative,
        "steps": req.steps,
        "cfg_scale": req.cfg,
        "seed": req.seed,
        "width": req.width,
        "height": req.height,
        "batch_size": req.batch,
        "sampler": jobspec.canonical_sampler(req.sampler) if host_accepted else req.sampler,
        "clip_skip": req.clip_skip,
        "dtype": req.dtype,
        "device": req.device,
        "threads": req.threads,
    }


def worker_accepts(params: dict[str, Any], timeout_s: float) -> bool:
    """Everything the worker checks before loading a model, in its order."""
    try:
        limits = Limits(timeout_s=timeout_s)
        names = ["base.safetensors"] + [f"{lo['name']}.safetensors" for lo in params["loras"]]
        job = JobSpec(
            job_id="j1",
            nonce="0" * 32,
            kind="generate",
            params=params,
            models=[ModelRef(name=n, mount_path=f"/models/{n}", sha256=SHA) for n in names],
            limits=limits,
        )
        gen = GenSpec.model_validate(dict(job.params))
        resolve_prompt(gen)
        samplers.split_name(gen.sampler, gen.schedule_type)
    except (ValidationError, ValueError, EngineError):
        return False
    return True


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(requests())
def test_the_host_accepts_exactly_what_the_worker_accepts(req: GenerateRequest) -> None:
    host_accepted = not request_problems(req)
    assert (
        worker_accepts(params_of(req, host_accepted=host_accepted), req.timeout_s) == host_accepted
    )


TABLE = [
    GenerateRequest(model="base", prompt="a heron"),
    GenerateRequest(model="base", prompt="a <lora:inkwash:0.8> b <LYCO:detail-v2:0.5:1>"),
    GenerateRequest(
        model="base", prompt="a <lora:inkwash:te=0.2:unet=1.5:dyn=8>", sampler="dpm++ 2m sde KARRAS"
    ),
    GenerateRequest(model="base", prompt="x", loras=[("inkwash", -1.0)], width=2048, height=64),
    GenerateRequest(
        model="base", prompt="x", steps=150, cfg=30.0, seed=2**32 - 1, batch=16, clip_skip=12
    ),
    GenerateRequest(model="base", prompt="x" * jobspec.PROMPT_MAX_CHARS, negative="y" * 4096),
    GenerateRequest(model="base", prompt="x", dtype="float16", device="cuda", threads=None),
    GenerateRequest(model="base", prompt="x", dtype="bfloat16", timeout_s=86400),
]


def test_every_edge_the_host_accepts_the_worker_accepts() -> None:
    for req in TABLE:
        assert request_problems(req) == [], req
        assert worker_accepts(params_of(req, host_accepted=True), req.timeout_s), req
