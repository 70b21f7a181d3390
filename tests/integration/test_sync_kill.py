"""`kill -9` of a running `assetmgr sync`: no page worker outlives it holding the catalog open."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from tests.fakeciv import FakeCatalog, FakeCivitai

REPO_ROOT = Path(__file__).resolve().parents[2]


def _session_members(session_id: int) -> dict[int, str]:
    """Live processes (zombies left out) of the session `session_id`, with their command lines."""
    members: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat_text = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:  # it exited while we looked
            continue
        # pid (comm) state ppid pgrp session ...; comm may hold spaces and parentheses
        state, _ppid, _pgrp, session = stat_text.rpartition(")")[2].split()[:4]
        if int(session) == session_id and state != "Z":
            members[int(entry.name)] = cmdline.strip()
    return members


def _pages(db: Path) -> int:
    try:
        with sqlite3.connect(db, timeout=0.5) as conn:
            row = conn.execute("SELECT pages FROM sync_state").fetchone()
    except sqlite3.Error:
        return 0
    return int(row[0]) if row else 0


def test_a_killed_sync_leaves_no_page_worker_and_the_next_sync_resumes(
    fake: FakeCivitai, fake_catalog: FakeCatalog
) -> None:
    home = Path(os.environ["ASSETMGR_HOME"])
    db = home / "catalog.sqlite3"
    fake.faults.fail_every(1, "delay:0.3", path="/api/v1/models")
    command = [sys.executable, "-m", "assetmgr", "sync", "--api-base", fake.base_url]
    proc = subprocess.Popen(
        [*command, "--page-size", "10", "--json"],
        cwd=REPO_ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        # Its own session: every process it starts (page workers, a fork server, the
        # resource tracker) carries the session id, even once reparented after the kill.
        start_new_session=True,
        env={**os.environ, "ASSETMGR_SYNC_WORKERS": "2"},
    )
    survivors: dict[int, str] = {}
    try:
        deadline = time.monotonic() + 120
        workers: dict[int, str] = {}
        while time.monotonic() < deadline:
            time.sleep(0.2)
            workers = {p: c for p, c in _session_members(proc.pid).items() if p != proc.pid}
            if len(workers) >= 2 and _pages(db) >= 2:
                break
        assert len(workers) >= 2, f"the sync never started its page workers: {workers}"
        assert _pages(db) >= 2, "the sync never got going"

        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        # The workers notice their parent's death on their own; give them time to go.
        deadline = time.monotonic() + 60
        survivors = _session_members(proc.pid)
        while survivors and time.monotonic() < deadline:
            time.sleep(0.2)
            survivors = _session_members(proc.pid)
        assert survivors == {}, f"processes of the killed sync survived: {survivors}"
    finally:
        for pid in _session_members(proc.pid):  # never leave a worker behind, pass or fail
            os.kill(pid, signal.SIGKILL)

    # Nobody holds the catalog: a writer gets its lock at once.
    with sqlite3.connect(db, timeout=1) as conn:
        conn.execute("BEGIN IMMEDIATE")
        status, cursor = conn.execute("SELECT status, cursor FROM sync_state").fetchone()
        conn.rollback()
    assert status == "running" and cursor

    fake.faults.clear()
    result = subprocess.run(
        [*command, "--page-size", "10", "--json"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    summary = json.loads(result.stdout)
    assert summary["resumed"] is True
    with sqlite3.connect(db) as conn:
        stored = {r[0] for r in conn.execute("SELECT id FROM model")}
    assert stored == fake_catalog.expected_listing_ids()
