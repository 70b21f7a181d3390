"""`assetmgr generate` batches in the real sandbox (synthetic SD1.5 checkpoint, CPU, 64x64,
2 steps): --count and a seed range with a prompt file run in ONE container whose images are
byte-for-byte those of separate runs, and Ctrl-C stops a batch cleanly. The CLI runs in a
subprocess (its own session id), so its containers are told apart by the image they run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tests.sandbox.conftest import CACHE_DIR, RECORD_PATH
from tests.sandbox.containers import ContainerLog
from tests.sandbox.test_generate_e2e import REPO_ROOT, generate, library, synth  # noqa: F401

pytestmark = [pytest.mark.docker, pytest.mark.worker, pytest.mark.slow]

SMALL = ("--model", "synth15", "--steps", "2", "--width", "64", "--height", "64")
SMALL += ("--sampler", "Euler", "--threads", "2")


def pixels(path: str) -> bytes:
    from PIL import Image

    with Image.open(path) as im:
        return im.convert("RGB").tobytes()


def run_ids(home: Path) -> set[int]:
    listed = json.loads(generate(home, "runs", "--json", "--limit", "0").stdout)
    return {r["run_id"] for r in listed}


def batch_json(home: Path, *args: str) -> tuple[list[dict[str, Any]], list[str]]:
    result = generate(home, "generate", *SMALL, *args, "--json")
    return json.loads(result.stdout), result.stderr.splitlines()


def test_count_runs_in_one_container_with_the_pixels_of_separate_runs(
    library: Path,  # noqa: F811
    docker_client: Any,
    sandbox_image: Any,
) -> None:
    log = ContainerLog(docker_client)
    records, stderr = batch_json(library, "--prompt", "a heron", "--seed", "42", "--count", "3")
    created = log.created(session=None, image=sandbox_image.image_id)
    assert [c.role for c in created] == ["warm-worker"], created  # ONE container for the three
    assert log.alive(created) == []  # removed when the command ended
    assert [r["spec"]["seed"] for r in records] == [42, 43, 44]
    assert [[o["seed"] for o in r["outputs"]] for r in records] == [[42], [43], [44]]
    assert stderr == [
        f"[{i}/3] run {r['run_id']} done (seed {r['spec']['seed']})"
        for i, r in enumerate(records, start=1)
    ]
    assert {r["run_id"] for r in records} <= run_ids(library)  # each recorded

    log = ContainerLog(docker_client)
    for record in records:
        seed = str(record["spec"]["seed"])
        alone = generate(
            library, "generate", *SMALL, "--prompt", "a heron", "--seed", seed, "--json"
        )
        image = json.loads(alone.stdout)["outputs"][0]["path"]
        assert pixels(image) == pixels(record["outputs"][0]["path"]), seed
    alone_created = log.created(session=None, image=sandbox_image.image_id)
    assert [c.role for c in alone_created] == ["job"] * 3  # the control: a container each


def test_a_prompt_file_with_a_seed_range(
    library: Path,  # noqa: F811
    docker_client: Any,
    sandbox_image: Any,
    tmp_path: Path,
) -> None:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("# two birds\na heron in reeds\n\na crane <lora:inkwash15:0.5>\n")
    out = tmp_path / "out"
    log = ContainerLog(docker_client)
    records, _ = batch_json(
        library, "--prompt-file", str(prompts), "--seed", "7-8", "--out", str(out)
    )
    assert [c.role for c in log.created(session=None, image=sandbox_image.image_id)] == [
        "warm-worker"
    ]
    assert [(r["spec"]["prompt"], r["spec"]["seed"]) for r in records] == [
        ("a heron in reeds", 7),
        ("a heron in reeds", 8),
        ("a crane <lora:inkwash15:0.5>", 7),
        ("a crane <lora:inkwash15:0.5>", 8),
    ]
    assert [r["spec"]["loras"] != [] for r in records] == [False, False, True, True]
    for i, record in enumerate(records, start=1):
        (image,) = (Path(o["path"]) for o in record["outputs"])
        assert image.parent == out / f"job-{i:04d}" and image.is_file()
    assert pixels(records[0]["outputs"][0]["path"]) != pixels(records[2]["outputs"][0]["path"])


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_ctrl_c_stops_a_batch_and_removes_its_container(
    library: Path,  # noqa: F811
    docker_client: Any,
    sandbox_image: Any,
) -> None:
    before = run_ids(library)
    env = {
        **os.environ,
        "ASSETMGR_HOME": str(library),
        "ASSETMGR_SANDBOX_RECORD": str(RECORD_PATH),
        "ASSETMGR_SANDBOX_CACHE": str(CACHE_DIR),
    }
    log = ContainerLog(docker_client)
    proc = subprocess.Popen(
        [sys.executable, "-m", "assetmgr", "generate", *SMALL, "--prompt", "a heron"]
        + ["--seed", "1", "--count", "50"],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # Ctrl-C as a terminal delivers it: a test run started in the background by a
        # non-interactive shell ignores SIGINT, and a child would inherit that.
        preexec_fn=_default_sigint,
    )
    lines: list[str] = []
    first_done = threading.Event()

    def read() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.append(line.rstrip("\n"))
            if line.startswith("[1/50] run"):
                first_done.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    assert first_done.wait(600), lines
    time.sleep(0.5)  # into the next job
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=120)
    reader.join(10)  # the reader alone takes stderr (communicate would race it for lines)
    assert proc.stdout is not None
    stdout = proc.stdout.read()
    assert proc.returncode == 130, lines
    done = [line for line in lines if line.startswith("[") and " run " in line]
    assert 1 <= len(done) < 50
    assert f"stopped after {len(done)} of 50 jobs; the rest never started" in "\n".join(lines)
    assert lines[-2] == "error: interrupted" and "Traceback" not in "\n".join(lines), lines
    assert len(stdout.splitlines()) == len(done)  # a path per finished image
    created = log.created(session=None, image=sandbox_image.image_id)
    assert [c.role for c in created] == ["warm-worker"]
    assert log.alive(created) == []  # removed before the command exited
    after = run_ids(library)
    assert len(after - before) == len(done)  # the finished jobs are recorded, no more


def test_an_untrusted_plugin_gets_a_container_per_image_and_says_so(
    library: Path,  # noqa: F811
    docker_client: Any,
    sandbox_image: Any,
    tmp_path: Path,
) -> None:
    from tests.sandbox.test_plugins import write_plugin

    source = write_plugin(tmp_path / "src", "tagger")
    generate(library, "plugins", "add", str(source))  # not --trust
    log = ContainerLog(docker_client)
    args = ("--prompt", "a heron", "--seed", "3", "--count", "2", "--plugin", "tagger")
    records, stderr = batch_json(library, *args)
    assert stderr[0] == (
        "note: the plugins tagger are not all trusted: each image runs in its own container"
    )
    assert [c.role for c in log.created(session=None, image=sandbox_image.image_id)] == [
        "job",
        "job",
    ]
    assert [r["spec"]["seed"] for r in records] == [3, 4]
