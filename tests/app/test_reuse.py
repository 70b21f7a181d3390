"""Use this prompt through the application layer: generation data from a Civitai image, a
pasted A1111 block or a PNG into a request whose models are resolved by hash in the real
store, down to the job the fake runner receives; missing models come with the pull command;
hostile data is bounded and cleaned."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine

from assetmgr.app.context import AppContext
from assetmgr.app.generate import Generation
from assetmgr.app.genparams import (
    MAX_LORA_REFS,
    GenerationDataError,
    from_civitai_meta,
    from_parameters,
)
from assetmgr.app.reuse import (
    MissingModelsError,
    lookup_commands,
    pull_commands,
    reuse_generation,
)
from assetmgr.wording import describe
from tests.app.fakes import FakeJobRunner


def local_row(engine: Engine, file_name: str) -> Any:
    """The verified `LocalFile` of an imported file, and its catalog version id."""
    from sqlmodel import Session, select

    from catalog.models import LocalFile, ModelFile

    with Session(engine) as session:
        local, file = session.exec(
            select(LocalFile, ModelFile)
            .join(ModelFile)  # type: ignore[arg-type]
            .where(ModelFile.name == file_name)
        ).one()
        session.expunge(local)
        return local, file.version_id


def block(model_hash: str, lora_hash: str, *, tag: str = "inkwash_style_v1") -> str:
    """An A1111 parameters block naming the LoRA by another name than the local file's."""
    return (
        f"a heron in reeds <lora:{tag}:0.6>, misty\n"
        "Negative prompt: blurry, lowres\n"
        "Steps: 3, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 6.5, Seed: 1234, "
        f"Size: 64x128, Model hash: {model_hash.lower()}, Model: someMix_v2, Clip skip: 2, "
        "Denoising strength: 0.4, Hires upscale: 1.5, Hires steps: 2, Hires upscaler: Latent, "
        f'Lora hashes: "{tag}: {lora_hash.lower()}", Version: v1.10.1'
    )


def test_a_pasted_block_fills_the_request_and_resolves_models_by_hash(
    ctx: AppContext, runner: FakeJobRunner, tmp_path: Path
) -> None:
    checkpoint, checkpoint_version = local_row(ctx.engine, "base15.safetensors")
    lora, lora_version = local_row(ctx.engine, "inkwash.safetensors")
    data = from_parameters(block(checkpoint.autov2, lora.autov3))
    reuse = reuse_generation(ctx, data)
    request = reuse.request
    assert reuse.missing == () and data.notes == ()
    assert reuse.checkpoint is not None and reuse.checkpoint.matched_by == "AutoV2"
    assert [(r.tag, r.matched_by) for r in reuse.loras] == [("inkwash_style_v1", "AutoV3")]
    assert request.model == str(checkpoint_version)
    assert request.prompt == "a heron in reeds <lora:inkwash_style_v1:0.6>, misty"
    assert request.negative == "blurry, lowres"
    assert request.tag_versions == {"inkwash_style_v1": lora_version}
    assert (request.steps, request.cfg, request.seed) == (3, 6.5, 1234)
    assert (request.width, request.height, request.clip_skip) == (64, 128, 2)
    assert (request.sampler, request.schedule_type) == ("DPM++ 2M Karras", None)
    assert (request.hires_scale, request.hires_steps, request.hires_denoise) == (1.5, 2, 0.4)

    Generation(ctx).generate(request, out_dir=tmp_path / "out")
    spec = runner.jobs[0].params
    assert spec["model_sha256"] == checkpoint.sha256.lower()
    [job_lora] = spec["loras"]
    assert (job_lora["name"], job_lora["sha256"]) == ("inkwash_style_v1", lora.sha256.lower())
    assert spec["hires"] == {"scale": 1.5, "steps": 2, "denoise": 0.4, "upscaler": "Latent"}
    assert (spec["sampler"], spec["clip_skip"], spec["cfg_scale"]) == ("DPM++ 2M Karras", 2, 6.5)


def test_civitai_meta_with_resource_ids_only_gets_pinned_tags(
    ctx: AppContext, runner: FakeJobRunner, tmp_path: Path
) -> None:
    """Civitai's generator lists its LoRAs as version ids, without tags in the prompt."""
    checkpoint, checkpoint_version = local_row(ctx.engine, "base15.safetensors")
    _, lora_version = local_row(ctx.engine, "inkwash.safetensors")
    meta = {
        "prompt": "a lighthouse at night",
        "negativePrompt": "people",
        "steps": 4,
        "sampler": "Euler a",
        "cfgScale": 5,
        "seed": 99,
        "width": 96,
        "height": 64,
        "clipSkip": 1,
        "civitaiResources": [
            {"type": "checkpoint", "modelVersionId": checkpoint_version},
            {"type": "lora", "weight": 0.75, "modelVersionId": lora_version},
        ],
    }
    reuse = reuse_generation(ctx, from_civitai_meta(meta))
    request = reuse.request
    assert reuse.missing == ()
    assert request.model == str(checkpoint_version)
    assert request.prompt == "a lighthouse at night <lora:inkwash:0.75>"
    assert request.tag_versions == {"inkwash": lora_version}
    assert (request.width, request.height, request.sampler) == (96, 64, "Euler a")
    Generation(ctx).generate(request, out_dir=tmp_path / "out")
    assert [lo["name"] for lo in runner.jobs[0].params["loras"]] == ["inkwash"]


def test_models_that_are_not_local_come_with_the_pull_command(
    ctx: AppContext, engine: Engine
) -> None:
    """The demo catalog knows the image's checkpoint and LoRA, but they are not local; a
    third hash is in no catalog."""
    from catalog.demo import seed_demo

    seed_demo(engine)
    text = block("58260564C9", "29F71C3D1418", tag="detail") + ", Extra: x"
    text = text.replace(
        '"detail: 29f71c3d1418"', '"detail: 29f71c3d1418, ghost: 0123456789ab"'
    ).replace("misty", "misty <lora:ghost:1>")
    reuse = reuse_generation(ctx, from_parameters(text))
    assert [(m.ref.kind, m.version_id, m.tag) for m in reuse.missing] == [
        ("checkpoint", 920005, None),
        ("lora", 920006, "detail"),
        ("lora", None, "ghost"),
    ]
    assert pull_commands(reuse.missing) == ["assetmgr pull 920005 920006"]
    assert lookup_commands(reuse.missing) == ["assetmgr lookup 0123456789AB"]
    # The missing LoRA's tag asks for its version, so no other local file can stand in.
    assert reuse.request.tag_versions == {"detail": 920006}
    assert reuse.request.model == ""
    error = MissingModelsError(reuse.missing_for(reuse.request))
    words = describe(error)
    assert words is not None and words.exit_code == 3
    assert words.message == (
        "3 model(s) of this image are not local: checkpoint 'someMix_v2' (AutoV2 58260564C9): "
        "version 920005, LoRA 'detail' (AutoV3 29F71C3D1418): version 920006, "
        "LoRA 'ghost' (AutoV3 0123456789AB): not in the catalog"
    )
    assert words.hint == (
        "Pull them: `assetmgr pull 920005 920006`; look the others up on Civitai: "
        "`assetmgr lookup 0123456789AB`."
    )
    # Another checkpoint and a prompt without the tags: nothing is missing any more.
    overridden = reuse.request.__class__(model="base15", prompt="a heron")
    assert reuse.missing_for(overridden) == []


def test_a_hash_of_another_kind_or_of_nothing_is_not_used(ctx: AppContext) -> None:
    """A LoRA's hash given as the model hash, and hashes that match nothing, resolve to
    nothing; the local file named like the tag is not taken in their place."""
    lora, _ = local_row(ctx.engine, "inkwash.safetensors")
    reuse = reuse_generation(
        ctx, from_parameters(block(lora.autov2, "FFFFFFFFFFFF", tag="inkwash"))
    )
    assert reuse.checkpoint is None and reuse.loras == ()
    assert [(m.ref.kind, m.version_id) for m in reuse.missing] == [
        ("checkpoint", None),
        ("lora", None),
    ]
    assert reuse.missing_for(reuse.request) == list(reuse.missing)


def test_hostile_data_is_bounded_and_cleaned(ctx: AppContext) -> None:
    many = ", ".join(f"l{i}: {i:012x}" for i in range(3000))
    text = (
        "a \x1b[2J\x1b]52;c;cHduZWQ=\x07heron \u202eevil\n"
        "Negative prompt: \x1b[31mred\n"
        "Steps: 99999, Sampler: Nonsense 9000, CFG scale: nan, Seed: -1, Size: 10x10, "
        "Model hash: zz, "
        f'Lora hashes: "{many}"'
    )
    data = from_parameters(text)
    assert data.prompt == "a ␛[2J␛]52;c;cHduZWQ=␇heron ⟨U+202E⟩evil"
    assert data.negative == "␛[31mred"
    assert len(data.loras) == MAX_LORA_REFS
    assert (data.steps, data.sampler, data.cfg, data.seed, data.width) == (None,) * 5
    assert data.checkpoint is None
    assert data.notes == (
        "Steps 99999 is outside 1..150; the form keeps its own",
        "the sampler 'Nonsense 9000' is not available here; the form keeps its own",
        "CFG scale 'nan' is not a number; not used",
        "Seed -1 is outside 0..4294967295; the form keeps its own",
        "Width 10 is outside 64..2048; the form keeps its own",
        "Height 10 is outside 64..2048; the form keeps its own",
        "the hash 'zz' of the checkpoint is not a Civitai hash; not used",
        f"{3000 - MAX_LORA_REFS} more LoRA entries ignored (at most {MAX_LORA_REFS})",
    )
    reuse = reuse_generation(ctx, data)
    assert len(reuse.missing) == MAX_LORA_REFS and reuse.loras == ()


@pytest.mark.parametrize(
    ("text", "problem", "message"),
    [
        ("", "none", "the pasted text: holds no generation parameters"),
        (
            "x" * 70_000,
            "too-long",
            "the pasted text: the parameters text is 70000 characters; at most 65536 are read",
        ),
    ],
)
def test_unusable_text_is_refused_with_its_reason(text: str, problem: str, message: str) -> None:
    with pytest.raises(GenerationDataError) as caught:
        from_parameters(text)
    assert caught.value.problem == problem and caught.value.message == message
    words = describe(caught.value)
    assert words is not None and words.exit_code == 2 and words.hint
