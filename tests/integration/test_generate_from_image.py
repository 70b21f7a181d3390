"""`assetmgr generate --from-png / --from-params`: an image's run as a request, its models found
by hash in the store, flags on top; hostile PNGs and text refused with one clear line.

The installed `assetmgr` runs in a subprocess on a store of synthetic models imported by the
CLI, with no Docker engine and no sandbox image (as in `test_generate_validation`): `--dry-run`
shows the checked job spec, and a real run stops only at the missing image.
"""

from __future__ import annotations

import json
import os
import sqlite3
import struct
import subprocess
import zlib
from pathlib import Path
from typing import Any

import pytest

from tests.integration.test_export_attacks import sd15_checkpoint
from tests.integration.test_generate_validation import ASSETMGR, NO_IMAGE, REPO_ROOT
from tests.integration.test_import_export import sd15_lora

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def run(home: Path, *args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
    """The CLI with no engine and no sandbox image (`test_generate_validation.run`), and stdin."""
    env = {
        **os.environ,
        "ASSETMGR_HOME": str(home),
        "ASSETMGR_NO_KEYRING": "1",
        "DOCKER_HOST": "unix:///nonexistent/docker.sock",
        "ASSETMGR_SANDBOX_RECORD": "/nonexistent/sandbox-record.json",
    }
    env.pop("ASSETMGR_DB_URL", None)
    return subprocess.run(
        [str(ASSETMGR), *args],
        cwd=REPO_ROOT,
        env=env,
        input=input,
        capture_output=True,
        text=True,
        timeout=300,
    )


def chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png(width: int, height: int, before: bytes = b"", after: bytes = b"") -> bytes:
    """A black 1-bit PNG, its rows compressed as they go (a big one stays a small file)."""
    header = chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0))
    rows = zlib.compressobj(9)
    row = b"\0" * (1 + (width + 7) // 8)
    data = b"".join(rows.compress(row * min(1000, height - i)) for i in range(0, height, 1000))
    idat = chunk(b"IDAT", data + rows.flush())
    return PNG_SIGNATURE + header + before + idat + after + chunk(b"IEND", b"")


def text_chunk(text: str) -> bytes:
    return chunk(b"tEXt", b"parameters\0" + text.encode("latin-1"))


@pytest.fixture(scope="module")
def library(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """An ASSETMGR_HOME with a checkpoint and a LoRA imported by the CLI, and their hashes."""
    home = tmp_path_factory.mktemp("from-image-home")
    src = tmp_path_factory.mktemp("from-image-models")
    (src / "base15.safetensors").write_bytes(sd15_checkpoint())
    (src / "inkwash.safetensors").write_bytes(sd15_lora(fill=5))
    result = run(home, "import", str(src), "--offline", "--json")
    assert result.returncode == 0, result.stderr
    with sqlite3.connect(home / "catalog.sqlite3") as db:
        rows = db.execute(
            "select f.name, l.sha256, l.autov2, l.autov3, f.version_id from local_file l "
            "join model_file f on f.id = l.file_id"
        ).fetchall()
    files = {
        name: {"sha256": s, "autov2": a2, "autov3": a3, "version": v} for name, s, a2, a3, v in rows
    }
    return home, files


def parameters(files: dict[str, Any], prompt: str = "a heron in reeds <lora:ink_v1:0.6>") -> str:
    base, lora = files["base15.safetensors"], files["inkwash.safetensors"]
    return (
        f"{prompt}\nNegative prompt: blurry, lowres\n"
        "Steps: 3, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 6.5, Seed: 1234, "
        f"Size: 64x128, Model hash: {base['autov2'].lower()}, Model: someMix, Clip skip: 2, "
        "Denoising strength: 0.4, Hires upscale: 1.5, Hires steps: 2, Hires upscaler: Latent, "
        f'Lora hashes: "ink_v1: {lora["autov3"].lower()}", Version: v1.10.1'
    )


def dry_run(home: Path, *args: str, stdin: str | None = None) -> tuple[dict[str, Any], list[str]]:
    result = run(home, "generate", *args, "--dry-run", input=stdin)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout), result.stderr.splitlines()


def test_a_png_and_a_pasted_block_fill_the_spec_and_flags_win(
    library: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    home, files = library
    text = parameters(files)
    image = tmp_path / "heron.png"
    image.write_bytes(png(64, 128, before=text_chunk(text)))
    spec, stderr = dry_run(home, "--from-png", str(image))
    base, lora = files["base15.safetensors"], files["inkwash.safetensors"]
    assert stderr == [
        f"checkpoint: base15 (version {base['version']}, by AutoV2)",
        f"LoRA <ink_v1>: inkwash (version {lora['version']}, by AutoV3)",
    ]
    assert spec["model_sha256"] == base["sha256"].lower()
    assert [(lo["name"], lo["sha256"]) for lo in spec["loras"]] == [
        ("ink_v1", lora["sha256"].lower())
    ]
    assert spec["prompt"] == "a heron in reeds <lora:ink_v1:0.6>"
    assert spec["negative_prompt"] == "blurry, lowres"
    assert (spec["steps"], spec["cfg_scale"], spec["seed"]) == (3, 6.5, 1234)
    assert (spec["width"], spec["height"], spec["clip_skip"]) == (64, 128, 2)
    assert (spec["sampler"], spec["schedule_type"]) == ("DPM++ 2M Karras", None)
    assert spec["hires"] == {"scale": 1.5, "steps": 2, "denoise": 0.4, "upscaler": "Latent"}

    pasted, _ = dry_run(home, "--from-params", "-", stdin=text)
    assert pasted == spec
    saved = tmp_path / "params.txt"
    saved.write_text(text)
    overridden, _ = dry_run(
        home, "--from-params", str(saved), "--steps", "5", "--sampler", "Euler", "--seed", "9"
    )
    assert (overridden["steps"], overridden["sampler"], overridden["seed"]) == (5, "Euler", 9)
    assert overridden["schedule_type"] is None and overridden["cfg_scale"] == 6.5

    # A real run passes every check and stops only at the missing sandbox image.
    result = run(home, "generate", "--from-png", str(image))
    assert result.returncode == 1 and result.stderr.splitlines()[-2:] == NO_IMAGE


def test_models_not_in_the_store_stop_it_with_the_command_to_fetch_them(
    library: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    home, files = library
    text = parameters(files).replace(files["base15.safetensors"]["autov2"].lower(), "0bdfbb4c0b")
    text = text.replace(files["inkwash.safetensors"]["autov3"].lower(), "ddc056e1336e")
    saved = tmp_path / "elsewhere.txt"
    saved.write_text(text)
    result = run(home, "generate", "--from-params", str(saved))
    assert result.returncode == 3 and result.stdout == ""
    assert result.stderr.splitlines() == [
        "error: 2 model(s) of this image are not local: checkpoint 'someMix' (AutoV2 "
        "0BDFBB4C0B): not in the catalog, LoRA 'ink_v1' (AutoV3 DDC056E1336E): not in the "
        "catalog",
        "hint: Look them up on Civitai: `assetmgr lookup 0BDFBB4C0B`; "
        "`assetmgr lookup DDC056E1336E`.",
    ]
    # With a checkpoint given and the tag gone from the prompt, nothing is missing.
    spec, _ = dry_run(home, "--from-params", str(saved), "--model", "base15", "--prompt", "a heron")
    assert spec["prompt"] == "a heron" and spec["loras"] == [] and spec["steps"] == 3


def test_control_characters_in_the_prompt_arrive_cleaned(
    library: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    home, files = library
    text = parameters(files, prompt="a heron \x1b]52;c;cHduZWQ=\x07\x1b[2J<lora:ink_v1:0.6>")
    image = tmp_path / "escapes.png"
    image.write_bytes(png(64, 64, before=text_chunk(text)))
    result = run(home, "generate", "--from-png", str(image), "--dry-run")
    assert result.returncode == 0, result.stderr
    assert "\x1b" not in result.stdout and "\x07" not in result.stdout
    assert json.loads(result.stdout)["prompt"] == "a heron ␛]52;c;cHduZWQ=␇␛[2J<lora:ink_v1:0.6>"


HOSTILE = [
    pytest.param(
        lambda: png(9000, 9000, after=text_chunk("a cat\nSteps: 2, Seed: 1, Size: 64x64")),
        "error: bomb.png: is 9000x9000 pixels; at most 16777216 are decoded",
        "hint: The image is larger than the pixel cap, so it is not decoded at all.",
        id="decompression-bomb",
    ),
    pytest.param(
        lambda: png(8, 8, before=text_chunk("a" * 1_000_000 + "\nSteps: 2, Seed: 1, Size: 8x8")),
        "error: bomb.png: has a text chunk of 1000040 bytes; at most 263168",
        "hint: The PNG is damaged or built to exhaust memory; nothing was read from it.",
        id="huge-parameters-chunk",
    ),
    pytest.param(
        lambda: png(8, 8, before=chunk(b"zTXt", b"parameters\0\0" + zlib.compress(b"a" * 10**6))),
        "error: bomb.png: the parameters text is 1000000 characters; at most 65536 are read",
        "hint: A1111's parameters are a few hundred characters; this is not such a block.",
        id="compressed-text-bomb",
    ),
    pytest.param(
        lambda: png(8, 8)[:-40],
        "error: bomb.png: is truncated or has too many chunks",
        "hint: The PNG is damaged or built to exhaust memory; nothing was read from it.",
        id="truncated",
    ),
    pytest.param(
        lambda: b"GIF89a" + b"\0" * 64,
        "error: bomb.png: is not a PNG file",
        "hint: Give the PNG an A1111-style tool wrote (it keeps a 'parameters' text chunk).",
        id="not-a-png",
    ),
    pytest.param(
        lambda: png(8, 8),
        "error: bomb.png: has no generation parameters (no 'parameters' text)",
        "hint: Paste the whole block: the prompt, 'Negative prompt: ...' and the 'Steps: ...' "
        "line.",
        id="no-parameters",
    ),
]


@pytest.mark.parametrize(("make", "error", "hint"), HOSTILE)
def test_hostile_pngs_are_refused_before_anything_runs(
    library: tuple[Path, dict[str, Any]], tmp_path: Path, make: Any, error: str, hint: str
) -> None:
    home, _ = library
    image = tmp_path / "bomb.png"
    image.write_bytes(make())
    result = run(home, "generate", "--from-png", str(image))
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.splitlines() == [error, hint]
    assert not (home / "runs").exists() or not any((home / "runs").iterdir())


def test_a_png_that_is_not_a_file_and_two_sources_are_refused(
    library: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    home, _ = library
    assert run(home, "generate", "--from-png", str(tmp_path)).stderr.splitlines() == [
        f"error: {tmp_path.name}: is not a regular file",
        "hint: Check the file; a PNG that image viewers open is read the same way.",
    ]
    both = run(home, "generate", "--from-png", "a.png", "--from-params", "-")
    assert both.returncode == 2 and both.stderr.splitlines() == [
        "error: --from-png and --from-params cannot go together",
        "hint: Give the generation data once: a PNG, or a parameters block.",
    ]
    neither = run(home, "generate", "--prompt", "a heron")
    assert neither.returncode == 2 and neither.stderr.splitlines() == [
        "error: missing option '--model' (or give --from-png FILE or --from-params FILE)",
        "hint: Run `assetmgr generate --help` for usage.",
    ]


NEW_FLAGS = [
    pytest.param(
        ["--schedule-type", "Nope"],
        "error: --schedule-type 'Nope' is not a schedule type",
        "hint: --schedule-type takes Automatic, Karras, Exponential, SGM Uniform (any case).",
        id="schedule",
    ),
    pytest.param(
        ["--sampler", "DPM++ 2M Karras", "--schedule-type", "Exponential"],
        "error: --schedule-type 'Exponential' conflicts with the sampler 'DPM++ 2M Karras'",
        "hint: Name the schedule once: in --sampler (DPM++ 2M Karras) or --schedule-type.",
        id="schedule-conflict",
    ),
    pytest.param(
        ["--hires-scale", "1"],
        "error: --hires-scale 1 is out of range (more than 1, at most 4)",
        "hint: --hires-scale takes an upscale factor such as 1.5 or 2.",
        id="hires-scale",
    ),
    pytest.param(
        ["--hires-scale", "2", "--hires-steps", "151"],
        "error: --hires-steps 151 is out of range (0 to 150)",
        "hint: --hires-steps takes a value from 0 to 150.",
        id="hires-steps",
    ),
    pytest.param(
        ["--hires-scale", "2", "--hires-denoise", "0"],
        "error: --hires-denoise 0 is out of range (more than 0, at most 1)",
        "hint: --hires-denoise takes a strength such as 0.5.",
        id="hires-denoise",
    ),
]


@pytest.mark.parametrize(("args", "error", "hint"), NEW_FLAGS)
def test_schedule_and_hires_flags_are_checked_before_anything_runs(
    library: tuple[Path, dict[str, Any]], args: list[str], error: str, hint: str
) -> None:
    home, _ = library
    result = run(home, "generate", "--model", "base15", "--prompt", "a heron", *args)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.splitlines() == [error, hint]
