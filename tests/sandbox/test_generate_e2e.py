"""Generation end to end: synthetic SD1.5 checkpoint and kohya LoRAs in the store, `assetmgr
generate` through the real sandbox container (CPU, 64x64, 2 steps), reruns compared by bytes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.sandbox.conftest import CACHE_DIR, RECORD_PATH

REPO_ROOT = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.docker, pytest.mark.worker, pytest.mark.slow]


@pytest.fixture(scope="module")
def synth() -> Any:
    pytest.importorskip("torch")
    from tests.synth import SynthCache

    root = os.environ.get("ASSETMGR_SYNTH_CACHE") or str(REPO_ROOT / ".cache" / "synth")
    return SynthCache(root)


@pytest.fixture(scope="module")
def library(tmp_path_factory: pytest.TempPathFactory, synth: Any, sandbox_image: Any) -> Path:
    """An ASSETMGR_HOME with the synthetic models imported (hardlinks, no copies)."""
    home = tmp_path_factory.mktemp("gen-home")
    src = tmp_path_factory.mktemp("gen-models")
    for path, name in (
        (synth.sd15(), "synth15.safetensors"),
        (synth.lora("sd15", "lora15_a", seed=1), "inkwash15.safetensors"),
        (synth.lora("sdxl", "loraxl_a", seed=3), "xl_only.safetensors"),
    ):
        try:
            os.link(path, src / name)
        except OSError:
            (src / name).symlink_to(path)
    env = {**os.environ, "ASSETMGR_HOME": str(home)}
    out = subprocess.run(
        [sys.executable, "-m", "assetmgr", "import", str(src), "--offline", "--json"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["local"] == 3, report
    return home


def generate(home: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "ASSETMGR_HOME": str(home),
        "ASSETMGR_SANDBOX_RECORD": str(RECORD_PATH),
        "ASSETMGR_SANDBOX_CACHE": str(CACHE_DIR),
    }
    result = subprocess.run(
        [sys.executable, "-m", "assetmgr", *args],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    if check:
        assert result.returncode == 0, result.stderr[-3000:]
    return result


COMMON = (
    "--model",
    "synth15",
    "--steps",
    "2",
    "--width",
    "64",
    "--height",
    "64",
    "--seed",
    "42",
    "--sampler",
    "Euler",
    "--threads",
    "2",
    "--json",
)


def run_json(home: Path, *args: str) -> dict[str, Any]:
    return json.loads(generate(home, "generate", *args, *COMMON).stdout)


def output_bytes(record: dict[str, Any]) -> bytes:
    return Path(record["outputs"][0]["path"]).read_bytes()


def test_generate_in_the_sandbox_is_reproducible_with_a1111_metadata(library: Path) -> None:
    from PIL import Image

    from sandbox.protocol.infotext import parse_parameters

    plain = run_json(library, "--prompt", "a heron in reeds at dawn", "--negative", "blurry")
    again = run_json(library, "--prompt", "a heron in reeds at dawn", "--negative", "blurry")
    assert plain["outputs"][0]["path"] != again["outputs"][0]["path"]  # one folder per run
    assert output_bytes(plain) == output_bytes(again)  # same spec + image: same bytes
    assert plain["outputs"][0]["sha256"] == again["outputs"][0]["sha256"]
    with Image.open(plain["outputs"][0]["path"]) as im:
        assert len(set(im.convert("RGB").tobytes())) > 50  # a real image, not a flat one

    zero = run_json(
        library, "--prompt", "a heron in reeds at dawn <lora:inkwash15:0>", "--negative", "blurry"
    )
    with Image.open(plain["outputs"][0]["path"]) as a, Image.open(zero["outputs"][0]["path"]) as b:
        assert a.tobytes() == b.tobytes()  # weight 0 == no LoRA, pixel for pixel

    with Image.open(zero["outputs"][0]["path"]) as im:
        params = parse_parameters(im.info["parameters"])
    assert params["prompt"].startswith("a heron in reeds at dawn")
    assert params["negative_prompt"] == "blurry"
    assert params["Steps"] == "2" and params["Seed"] == "42" and params["Size"] == "64x64"
    assert params["Sampler"] == "Euler"
    assert params["Model hash"] == zero["spec"]["model_sha256"][:10].lower()
    assert "inkwash15" in params["Lora hashes"]


def test_from_png_repeats_a_run_from_its_own_png(library: Path) -> None:
    """The PNG of a run names everything that made it (the checkpoint and LoRA by hash); the
    run it describes, read back with --from-png, is the same spec and the same bytes."""
    first = json.loads(
        generate(
            library,
            "generate",
            "--model", "synth15",
            "--prompt", "a heron in reeds at dawn <lora:inkwash15:0.6>",
            "--negative", "blurry",
            "--steps", "2", "--width", "64", "--height", "64", "--seed", "42",
            "--sampler", "DPM++ 2M Karras", "--cfg", "5.5", "--clip-skip", "2",
            "--hires-scale", "1.5", "--hires-steps", "1", "--hires-denoise", "0.6",
            "--threads", "2", "--json",
        ).stdout
    )  # fmt: skip
    assert first["spec"]["hires"] is not None and first["spec"]["clip_skip"] == 2
    png = first["outputs"][0]["path"]
    result = generate(library, "generate", "--from-png", png, "--json")
    again = json.loads(result.stdout)
    found = result.stderr.splitlines()[:2]
    assert found[0].startswith("checkpoint: synth15 (version ") and found[0].endswith("AutoV2)")
    assert found[1].startswith("LoRA <inkwash15>: inkwash15 (") and found[1].endswith("AutoV3)")
    assert again["spec"] == first["spec"]
    assert output_bytes(again) == output_bytes(first)
    assert again["outputs"][0]["sha256"] == first["outputs"][0]["sha256"]


def test_a_nonzero_lora_weight_changes_the_image_in_the_sandbox(library: Path) -> None:
    from PIL import Image

    plain = run_json(library, "--prompt", "a heron in reeds at dawn", "--negative", "blurry")
    one = run_json(
        library, "--prompt", "a heron in reeds at dawn <lora:inkwash15:1>", "--negative", "blurry"
    )
    with Image.open(one["outputs"][0]["path"]) as c, Image.open(plain["outputs"][0]["path"]) as a:
        assert c.tobytes() != a.tobytes()


def test_rerun_repeats_bytes_and_runs_are_listed(library: Path) -> None:
    first = run_json(library, "--prompt", "lighthouse at night <lora:inkwash15:0.7>")
    out = generate(library, "rerun", str(first["run_id"]), "--json")
    record = json.loads(out.stdout)
    assert record["identical"] is True and record["rerun_of"] == first["run_id"]
    listed = json.loads(generate(library, "runs", "--json").stdout)
    assert {first["run_id"], record["run_id"]} <= {r["run_id"] for r in listed}


def test_mismatched_lora_fails_clearly(library: Path) -> None:
    """The host refuses an SDXL LoRA on an SD 1.5 checkpoint before any container starts;
    overridden, the worker refuses its tensors, and its own reason comes back (not the hint
    about memory, which only an OOM kill gets)."""
    result = generate(library, "generate", "--prompt", "x <lora:xl_only:1>", *COMMON, check=False)
    assert result.returncode == 2
    assert result.stderr.splitlines()[0] == (
        "error: 'xl_only' is a LoRA for SDXL 1.0; the checkpoint 'synth15' is SD 1.5"
    )
    forced = generate(
        library,
        "generate",
        "--prompt",
        "x <lora:xl_only:1>",
        "--allow-mismatch",
        *COMMON,
        check=False,
    )
    assert forced.returncode == 1
    lines = forced.stderr.splitlines()
    assert lines[0].startswith("warning: 'xl_only' is a LoRA for SDXL 1.0")
    assert lines[-2].startswith("error: job ") and "LoRA" in lines[-2], lines
    assert lines[-1] == (
        "hint: The worker stopped the job with its own error (LoraMismatchError); see the message."
    )
    assert "traceback" not in forced.stderr.lower() and "memory" not in forced.stderr.lower()
