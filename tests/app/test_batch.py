"""Batches as the app builds them (no engine): seeds of --count and ranges, prompt files,
the warm worker policy and its setting."""

from __future__ import annotations

from pathlib import Path

import pytest

from assetmgr.app.batch import Seeds, expand_batch, parse_seeds, read_prompt_file
from assetmgr.app.generation import GenerateRequest
from assetmgr.app.workers import WorkerPolicy, tui_policy
from assetmgr.config import Settings, parse_duration
from assetmgr.errors import ConfigError


def request(**fields: object) -> GenerateRequest:
    return GenerateRequest(model="m", prompt="a heron", **fields)  # type: ignore[arg-type]


def test_count_steps_by_the_batch_so_every_image_has_its_own_seed() -> None:
    jobs = expand_batch(request(batch=2), Seeds(10), count=3)
    assert [j.request.seed for j in jobs] == [10, 12, 14]
    assert [j.index for j in jobs] == [0, 1, 2]
    assert [j.request.seed for j in expand_batch(request(), Seeds(7), count=2)] == [7, 8]
    assert [j.request.seed for j in expand_batch(request(), Seeds(7))] == [7]


def test_every_prompt_gets_every_seed_in_file_order(tmp_path: Path) -> None:
    path = tmp_path / "p.txt"
    path.write_bytes("\ufeff# herons\r\n  a heron  \r\n\r\n#x\r\na crane\r\n".encode())
    lines = read_prompt_file(path)
    assert [(p.line, p.text) for p in lines] == [(2, "a heron"), (5, "a crane")]
    jobs = expand_batch(request(negative="blurry"), parse_seeds("5-6"), prompts=lines)
    assert [
        (j.request.prompt, j.request.seed, j.source.line if j.source else None) for j in jobs
    ] == [
        ("a heron", 5, 2),
        ("a heron", 6, 2),
        ("a crane", 5, 5),
        ("a crane", 6, 5),
    ]
    assert {j.request.negative for j in jobs} == {"blurry"}


def test_seed_text() -> None:
    assert parse_seeds("42") == Seeds(42) and not parse_seeds("42").is_range
    assert parse_seeds(" 5 - 9 ") == Seeds(5, 9)
    assert parse_seeds("3-3") == Seeds(3, 3)
    assert parse_seeds("0-4294967295") == Seeds(0, 4294967295)  # parses; too many to run


def test_the_idle_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    assert [parse_duration(v) for v in ("600", "90s", "10m", "1h", "0", 5, "1.5m")] == [
        600,
        90,
        600,
        3600,
        0,
        5,
        90,
    ]
    assert [parse_duration(v) for v in ("ten", "-1", "5d", True, -3)] == [None] * 5
    assert Settings.load().warm_worker_idle_s == 600
    assert tui_policy(Settings.load()) == WorkerPolicy(keep_warm=True, idle_s=600)
    monkeypatch.setenv("ASSETMGR_WARM_WORKER_IDLE", "0")
    assert tui_policy(Settings.load()) == WorkerPolicy(keep_warm=False, idle_s=None)
    monkeypatch.setenv("ASSETMGR_WARM_WORKER_IDLE", "soon")
    with pytest.raises(ConfigError) as info:
        Settings.load()
    assert info.value.message == "bad warm worker idle time 'soon'"
    assert "600, 90s, 10m or 1h" in info.value.hint
