"""`assetmgr generate` refuses every request the worker would refuse before anything runs.

Each test drives the installed `assetmgr` script in a subprocess, on a store holding synthetic
models imported from a folder (an SD 1.5 checkpoint, LoRAs for SD 1.5, SDXL and an unknown
base model). ``DOCKER_HOST`` points at a socket that does not exist and there is no sandbox
image record, so a refusal that came later than the host's checks would be an engine or image
error instead: each test asserts the exact error and hint lines, exit code 2, and that no run
was recorded or started. A valid request is the control: it passes the checks and stops only
at the missing sandbox image.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.test_export_attacks import sd15_checkpoint
from tests.integration.test_import_export import sd15_lora, st_bytes

REPO_ROOT = Path(__file__).resolve().parents[2]
ASSETMGR = Path(sys.executable).parent / "assetmgr"

NO_IMAGE = [
    "error: no sandbox image has been built yet (/nonexistent/sandbox-record.json is missing)",
    "hint: Run `assetmgr sandbox build` to build the pinned image.",
]


def sdxl_lora() -> bytes:
    """Kohya keys of both SDXL text encoders: detected as a LORA for SDXL 1.0."""
    te = "text_model_encoder_layers_0_self_attn_q_proj"
    return st_bytes(
        {
            f"lora_te1_{te}.lora_down.weight": (4, 768),
            f"lora_te1_{te}.lora_up.weight": (768, 4),
            f"lora_te2_{te}.lora_down.weight": (4, 1280),
            f"lora_te2_{te}.lora_up.weight": (1280, 4),
        },
        fill=7,
    )


def unknown_base_lora() -> bytes:
    """A LoRA whose key layout names no known base model: catalogued as base model "Other"."""
    proj = "lora_unet_mid_block_attentions_0_proj_in"
    return st_bytes(
        {f"{proj}.lora_down.weight": (4, 999), f"{proj}.lora_up.weight": (999, 4)}, fill=9
    )


def run(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "ASSETMGR_HOME": str(home),
        "ASSETMGR_NO_KEYRING": "1",
        # Nothing may reach an engine: there is none, and no image either.
        "DOCKER_HOST": "unix:///nonexistent/docker.sock",
        "ASSETMGR_SANDBOX_RECORD": "/nonexistent/sandbox-record.json",
    }
    env.pop("ASSETMGR_DB_URL", None)
    return subprocess.run(
        [str(ASSETMGR), *args], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300
    )


@pytest.fixture(scope="module")
def library(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An ASSETMGR_HOME whose store holds the synthetic models, imported by the CLI."""
    home = tmp_path_factory.mktemp("gen-check-home")
    src = tmp_path_factory.mktemp("gen-check-models")
    for name, data in (
        ("base15.safetensors", sd15_checkpoint()),
        ("inkwash.safetensors", sd15_lora(fill=5)),
        ("xlstyle.safetensors", sdxl_lora()),
        ("oddlora.safetensors", unknown_base_lora()),
    ):
        (src / name).write_bytes(data)
    result = run(home, "import", str(src), "--offline", "--json")
    assert result.returncode == 0, result.stderr
    assert len(json.loads(result.stdout)["imported"]) == 4
    return home


def generate(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    runs_before = sorted((home / "runs").glob("*")) if (home / "runs").exists() else []
    result = run(home, "generate", *args)
    assert "Traceback" not in result.stderr
    runs_after = sorted((home / "runs").glob("*")) if (home / "runs").exists() else []
    assert runs_after == runs_before  # no output folder: no run started
    with sqlite3.connect(home / "catalog.sqlite3") as db:
        assert db.execute("select count(*) from generation_run").fetchone() == (0,)
    return result


def refused(home: Path, *args: str) -> list[str]:
    result = generate(home, *args)
    assert result.returncode == 2, result.stderr
    assert result.stdout == ""
    return result.stderr.splitlines()


BASE = ("--model", "base15", "--prompt", "a heron at dawn")

BOUNDS = [
    pytest.param(
        ["--width", "513"],
        "error: --width 513 is not a multiple of 8",
        "hint: Use a multiple of 8 from 64 to 2048, e.g. --width 512 or --width 520.",
        id="width-multiple",
    ),
    pytest.param(
        ["--height", "4096"],
        "error: --height 4096 is out of range (64 to 2048)",
        "hint: --height takes a value from 64 to 2048 in steps of 8.",
        id="height-range",
    ),
    pytest.param(
        ["--steps", "0"],
        "error: --steps 0 is out of range (1 to 150)",
        "hint: --steps takes a value from 1 to 150.",
        id="steps",
    ),
    pytest.param(
        ["--cfg", "30.5"],
        "error: --cfg 30.5 is out of range (0 to 30)",
        "hint: --cfg takes a value from 0 to 30.",
        id="cfg",
    ),
    pytest.param(
        ["--seed", str(2**32)],
        "error: --seed 4294967296 is out of range (0 to 4294967295)",
        "hint: --seed takes a value from 0 to 4294967295.",
        id="seed",
    ),
    pytest.param(
        ["--batch", "17"],
        "error: --batch 17 is out of range (1 to 16)",
        "hint: --batch takes a value from 1 to 16.",
        id="batch",
    ),
    pytest.param(
        ["--clip-skip", "0"],
        "error: --clip-skip 0 is out of range (1 to 12)",
        "hint: --clip-skip takes a value from 1 to 12.",
        id="clip-skip",
    ),
    pytest.param(
        ["--threads", "0"],
        "error: --threads 0 is out of range (1 to 256)",
        "hint: --threads takes a value from 1 to 256.",
        id="threads",
    ),
    pytest.param(
        ["--timeout", "0"],
        "error: --timeout 0 is out of range (more than 0, at most 86400 seconds)",
        "hint: --timeout takes seconds, e.g. --timeout 1800.",
        id="timeout",
    ),
    pytest.param(
        ["--dtype", "float64"],
        "error: --dtype 'float64' is not one of float32, float16, bfloat16",
        "hint: --dtype takes float32 or float16 or bfloat16.",
        id="dtype",
    ),
    pytest.param(
        ["--dtype", "float16"],
        "error: --dtype 'float16' needs --device cuda (float16 on a CPU is emulated and very slow)",
        "hint: Use --dtype float32 or bfloat16 on the CPU.",
        id="float16-on-cpu",
    ),
    pytest.param(
        ["--negative", "x" * 4097],
        "error: --negative: is 4097 characters long; at most 4096",
        "hint: Shorten it; the sandbox takes at most that much text.",
        id="negative-length",
    ),
]


@pytest.mark.parametrize(("args", "error", "hint"), BOUNDS)
def test_spec_bounds_are_checked_before_the_engine(
    library: Path, args: list[str], error: str, hint: str
) -> None:
    assert refused(library, *BASE, *args) == [error, hint]


SAMPLER_HINT = (
    "hint: Samplers (any case): Euler, Euler a, Heun, LMS, DPM2, DPM2 a, DPM++ 2M, "
    "DPM++ 2M SDE, DPM++ SDE, DDIM, PLMS, UniPC, DEIS, LCM; add ' Karras' or ' Exponential' "
    "for those schedules."
)


def test_an_unknown_sampler_gets_a_did_you_mean(library: Path) -> None:
    assert refused(library, *BASE, "--sampler", "Euler b") == [
        "error: --sampler 'Euler b' is not a sampler; did you mean 'Euler a' or 'Euler' or "
        "'Euler Karras'?",
        SAMPLER_HINT,
    ]
    assert refused(library, *BASE, "--sampler", "dpm 2m karas")[0] == (
        "error: --sampler 'dpm 2m karas' is not a sampler; did you mean 'DPM++ 2M Karras' or "
        "'DPM2 Karras' or 'DPM2 a Karras'?"
    )
    assert refused(library, *BASE, "--sampler", "Restart")[0] == (
        "error: --sampler 'Restart' is not a sampler"
    )


TAG_HINT = "hint: Write LoRA tags as <lora:NAME:WEIGHT> (or <lyco:...>), e.g. <lora:inkwash:0.8>."
TAGS = [
    pytest.param(
        ["--prompt", "a heron <lora:inkwash:abc>"],
        "error: --prompt: '<lora:inkwash:abc>' at character 9: weight 'abc' is not a number",
        TAG_HINT,
        id="non-numeric-weight",
    ),
    pytest.param(
        ["--prompt", "a heron <LoRA:inkwash:nan>"],
        "error: --prompt: '<LoRA:inkwash:nan>' at character 9: weight 'nan' is not a number",
        TAG_HINT,
        id="nan-weight-any-case",
    ),
    pytest.param(
        ["--prompt", "a heron <lyco:inkwash:1:1e999>"],
        "error: --prompt: '<lyco:inkwash:1:1e999>' at character 9: unet weight '1e999' is not "
        "a number",
        TAG_HINT,
        id="infinite-unet-weight",
    ),
    pytest.param(
        ["--prompt", "a <lora:inkwash:0.5, heron"],
        "error: --prompt: '<lora:inkwash:0.5, heron' at character 3: the tag is not closed "
        "with '>'",
        TAG_HINT,
        id="unclosed",
    ),
    pytest.param(
        ["--prompt", "a heron <lora::0.5>"],
        "error: --prompt: '<lora::0.5>' at character 9: the tag has no LoRA name",
        TAG_HINT,
        id="no-name",
    ),
    pytest.param(
        ["--prompt", "a heron <lora:inkwash:1:1:1:1>"],
        "error: --prompt: '<lora:inkwash:1:1:1:1>' at character 9: too many fields (at most "
        "NAME:TE:UNET:DYN)",
        TAG_HINT,
        id="too-many-fields",
    ),
    pytest.param(
        ["--prompt", "a heron <hypernet:inkwash:1>"],
        "error: --prompt: '<hypernet:inkwash:1>' at character 9: <hypernet:...> tags are not "
        "supported (only <lora:...> and <lyco:...>)",
        "hint: Remove the tag: the sandbox runs <lora:...> and <lyco:...> networks only.",
        id="unsupported-kind",
    ),
    pytest.param(
        ["--prompt", "<lora:inkwash:1> a heron <lyco:inkwash:0.2>"],
        "error: --prompt: '<lyco:inkwash:0.2>' at character 26: LoRA 'inkwash' is already "
        "tagged at character 1",
        "hint: Tag each LoRA once, with the weight you want.",
        id="tagged-twice",
    ),
    pytest.param(
        ["--prompt", "a heron", "--negative", "blurry <lora:inkwash:1>"],
        "error: --negative: '<lora:inkwash:1>' at character 8: LoRA and other network tags "
        "belong in the positive prompt",
        "hint: Move the tag into the prompt; LoRAs apply to the whole image.",
        id="in-the-negative-prompt",
    ),
    pytest.param(
        ["--prompt", "a heron", "--lora", "inkwash:abc"],
        "error: --lora 'inkwash:abc' has a weight 'abc' that is not a number",
        "hint: Use --lora REF:WEIGHT, e.g. --lora inkwash:0.8 (a REF with ':' needs the weight).",
        id="lora-option-weight",
    ),
    pytest.param(
        ["--prompt", "a heron", "--lora", ":0.5"],
        "error: --lora ':0.5' has no LoRA before the weight",
        "hint: Use --lora REF:WEIGHT, e.g. --lora inkwash:0.8 (a REF with ':' needs the weight).",
        id="lora-option-no-ref",
    ),
]


@pytest.mark.parametrize(("args", "error", "hint"), TAGS)
def test_lora_tags_and_weights_are_checked_before_the_engine(
    library: Path, args: list[str], error: str, hint: str
) -> None:
    assert refused(library, "--model", "base15", *args) == [error, hint]


def test_a_lora_given_as_the_checkpoint_and_the_reverse_are_refused(library: Path) -> None:
    assert refused(library, "--model", "inkwash", "--prompt", "a heron") == [
        "error: 'inkwash' is a LORA, not a checkpoint",
        "hint: Give LoRAs as --lora REF:WEIGHT or <lora:NAME:WEIGHT> in the prompt, and a "
        "checkpoint as --model (`assetmgr models list --local` shows the types).",
    ]
    reverse_hint = (
        "hint: Give the checkpoint as --model; --lora and <lora:...> tags take LORA, LoCon or "
        "DoRA files (`assetmgr models list --local` shows the types)."
    )
    for args in (["--prompt", "a heron <lora:base15:1>"], ["--prompt", "a", "--lora", "base15"]):
        assert refused(library, "--model", "base15", *args) == [
            "error: 'base15' is a Checkpoint, not a LoRA",
            reverse_hint,
        ]


def test_a_lora_for_another_base_model_is_refused_unless_allowed(library: Path) -> None:
    args = ("--model", "base15", "--prompt", "a heron <lora:xlstyle:0.6>")
    assert refused(library, *args) == [
        "error: 'xlstyle' is a LoRA for SDXL 1.0; the checkpoint 'base15' is SD 1.5",
        "hint: Pick a LoRA made for SD 1.5, or pass --allow-mismatch to run it anyway (the "
        "worker still refuses tensors that do not fit).",
    ]
    allowed = generate(library, *args, "--allow-mismatch")
    assert allowed.returncode == 1
    assert allowed.stderr.splitlines() == [
        "warning: 'xlstyle' is a LoRA for SDXL 1.0; the checkpoint 'base15' is SD 1.5 "
        "(--allow-mismatch)",
        *NO_IMAGE,
    ]


def test_a_lora_of_an_unknown_base_model_only_warns(library: Path) -> None:
    result = generate(library, "--model", "base15", "--prompt", "a heron <lora:oddlora:0.4>")
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        "warning: cannot check that LoRA 'oddlora' (Other) fits the checkpoint 'base15' (SD 1.5)",
        *NO_IMAGE,
    ]


def test_the_same_file_twice_is_refused(library: Path) -> None:
    listed = run(library, "models", "list", "--local", "--json")
    (ink,) = [m for m in json.loads(listed.stdout) if m["name"] == "inkwash"]
    assert refused(
        library, *BASE, "--lora", "inkwash:0.5", "--lora", f"{ink['versions'][0]['id']}:0.3"
    ) == [
        f"error: --lora '{ink['versions'][0]['id']}' names the same file as 'inkwash' (inkwash)",
        "hint: Give each LoRA once, as a tag or as --lora.",
    ]


def test_a_valid_request_passes_every_check_and_goes_on_to_the_sandbox(library: Path) -> None:
    """The control: the same library and options, valid, get past the host's checks (here to
    the missing image), with any-case tag kinds and sampler names accepted."""
    result = generate(
        library,
        "--model",
        "base15",
        "--prompt",
        "a heron <LoRA:inkwash:0.5:te=0.3> <lyco:oddlora:1>",
        "--sampler",
        "dpm++ 2m KARRAS",
        "--width",
        "520",
        "--steps",
        "150",
        "--seed",
        str(2**32 - 1),
        "--dtype",
        "bfloat16",
    )
    assert result.returncode == 1
    assert result.stderr.splitlines()[-2:] == NO_IMAGE


def test_a_recorded_spec_that_is_invalid_today_is_not_rerun(tmp_path: Path) -> None:
    """A run recorded before these checks (here a sampler name the worker never knew) is
    refused by `rerun` with one line, before its files or the engine are looked at."""
    from sqlmodel import Session

    from catalog.db import open_catalog
    from catalog.runs import GenerationRun

    home = tmp_path / "home"
    home.mkdir()
    engine = open_catalog(f"sqlite:///{home / 'catalog.sqlite3'}")
    spec = {"model_path": "/models/m.safetensors", "model_sha256": "ab" * 32, "prompt": "x"}
    with Session(engine) as session:
        run_row = GenerationRun(status="failed", spec={**spec, "seed": 1, "sampler": "Euler b"})
        session.add(run_row)
        session.commit()
        run_id = run_row.id
    engine.dispose()
    result = run(home, "rerun", str(run_id))
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        f"error: run {run_id} cannot be repeated: its spec is invalid: unknown sampler 'Euler b'",
        "hint: Start a new run with `assetmgr generate`.",
    ]
