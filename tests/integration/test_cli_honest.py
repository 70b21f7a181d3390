"""Listings say when they are cut or empty, on stderr, so stdout stays what a pipe expects.

The installed `assetmgr` script on the demo catalog (12 models) and on an empty one.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
SCRIPT = Path(sys.executable).parent / "assetmgr"
DEMO_MODELS = 12
NOTHING_LOCAL = "`assetmgr pull VERSION_ID` or `assetmgr import DIR` adds files"


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [str(SCRIPT), *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    return result


@pytest.fixture
def demo() -> None:
    run_cli("demo")


@pytest.mark.usefixtures("demo")
@pytest.mark.parametrize("as_json", [False, True], ids=["table", "json"])
def test_a_cut_model_list_says_so_and_how_to_see_more(as_json: bool) -> None:
    json_flag = ["--json"] if as_json else []
    cut = run_cli("models", "list", "--limit", "5", *json_flag)
    assert cut.stderr.splitlines() == [
        f"5 of {DEMO_MODELS} models shown; pass --limit N for more, or --all"
    ]
    if as_json:
        assert len(json.loads(cut.stdout)) == 5  # still the array of model objects
    for more in (["--all"], ["--limit", "0"], ["--limit", str(DEMO_MODELS)], []):
        whole = run_cli("models", "list", *more, *json_flag)
        assert whole.stderr == "", more
        if as_json:
            assert len(json.loads(whole.stdout)) == DEMO_MODELS


@pytest.mark.usefixtures("demo")
def test_a_cut_search_counts_only_what_matches() -> None:
    every = json.loads(run_cli("models", "list", "--type", "LORA", "--json").stdout)
    assert len(every) > 1
    cut = run_cli("models", "list", "--type", "LORA", "--limit", "1", "--json")
    assert json.loads(cut.stdout) == every[:1]
    assert cut.stderr.splitlines() == [
        f"1 of {len(every)} models shown; pass --limit N for more, or --all"
    ]


def test_empty_listings_say_why() -> None:
    empty = run_cli("models", "list")
    assert empty.stdout == ""
    assert empty.stderr.splitlines() == [
        "the catalog is empty; run `assetmgr sync` or `assetmgr demo` first"
    ]
    run_cli("demo")
    local = run_cli("models", "list", "--local", "--json")
    assert json.loads(local.stdout) == []
    assert local.stderr.splitlines() == [
        "no local models match; `assetmgr pull VERSION_ID` or `assetmgr import DIR` adds files "
        "to the store"
    ]
    nothing = run_cli("models", "list", "--search", "zzqqxx")
    assert nothing.stdout == ""
    assert nothing.stderr.splitlines() == ["no models match these filters"]


@pytest.mark.parametrize("as_json", [False, True], ids=["plain", "json"])
def test_runs_updates_and_duplicates_with_nothing_say_so(as_json: bool) -> None:
    json_flag = ["--json"] if as_json else []
    runs = run_cli("runs", *json_flag)
    assert runs.stderr.splitlines() == [
        "no generation runs yet; `assetmgr generate --model M --prompt P` records one"
    ]
    updates = run_cli("updates", *json_flag)
    assert updates.stderr.splitlines() == [
        f"nothing is local yet, so there is nothing to update; {NOTHING_LOCAL}"
    ]
    duplicates = run_cli("duplicates", *json_flag)
    assert duplicates.stderr.splitlines() == [
        f"nothing is local yet, so there are no duplicates to find; {NOTHING_LOCAL}"
    ]
    if as_json:
        assert json.loads(runs.stdout) == [] and json.loads(updates.stdout) == []
        assert json.loads(duplicates.stdout) == {"by_sha256": [], "by_autov3": []}
    else:
        assert runs.stdout == updates.stdout == duplicates.stdout == ""


def test_a_cut_run_list_says_so() -> None:
    from assetmgr.config import Settings
    from assetmgr.context import open_engine
    from catalog.db import session_scope
    from catalog.runs import GenerationRun

    engine = open_engine(Settings.load())
    with session_scope(engine, write=True) as session:
        for seed in range(3):
            session.add(GenerationRun(spec={"prompt": f"run {seed}", "seed": seed}))
    engine.dispose()
    cut = run_cli("runs", "--limit", "2", "--json")
    assert [r["seed"] for r in json.loads(cut.stdout)] == [2, 1]
    assert cut.stderr.splitlines() == ["2 of 3 runs shown; pass --limit N for more, or --limit 0"]
    whole = run_cli("runs", "--limit", "0")
    assert len(whole.stdout.splitlines()) == 3 and whole.stderr == ""


@pytest.mark.usefixtures("demo")
def test_updates_and_duplicates_count_what_is_local() -> None:
    """With local files the summary says how many were looked at."""
    from sqlalchemy import select

    from assetmgr.config import Settings
    from assetmgr.context import open_engine
    from assetmgr.store import records
    from catalog.db import session_scope
    from catalog.models import Model

    engine = open_engine(Settings.load())
    with session_scope(engine, write=True) as session:
        # Files of two models with one version each, as if pulled: nothing can be newer.
        single = [m for m in session.execute(select(Model)).scalars() if len(m.versions) == 1]
        for model in single[:2]:
            f = model.versions[0].files[0]
            records.set_local_state(
                session, file_id=f.id, sha256=f.sha256 or "0" * 64, state="verified", path=None
            )
    engine.dispose()
    updates = run_cli("updates")
    assert updates.stdout == ""
    assert updates.stderr.splitlines() == ["all 2 local files in the store are up to date"]
    duplicates = run_cli("duplicates")
    assert duplicates.stderr.splitlines() == ["no duplicates among 2 local files"]
