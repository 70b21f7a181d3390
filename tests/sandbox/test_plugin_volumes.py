"""Plugins through docker volumes (the transport for remote engines), on the real local engine.

``transport="volume"`` makes the local engine take the remote path: a
plugin's recorded files (re-verified while they stream) are copied into a volume labelled with
its tree sha256, whose ``plugin/`` directory the job mounts read-only at ``/plugins/<name>``;
the volume is reused, rebuilt when its marker is missing, and removed by ``prune(models=True)``.
"""

from __future__ import annotations

import copy
import io
import os
import tarfile
from pathlib import Path
from typing import Any

import pytest

from sandbox.errors import PluginTamperedError, SandboxError
from sandbox.plugin_store import store_dir
from sandbox.plugins import InstalledPlugin, make_read_only, stage_plugin
from sandbox.protocol import JobSpec, Limits
from sandbox.runner import (
    FILL_DIR,
    LABEL_PLUGIN_SHA256,
    LABEL_SESSION,
    MODEL_MARKER,
    PLUGIN_DIR,
    SESSION_ID,
    StagedVolume,
    check_host_config,
    new_job_id,
    new_nonce,
    plan_job,
    plugin_tar_stream,
    prune,
    run_job,
)
from sandbox.transport import _volume_helper
from tests.sandbox.test_model_volumes import watch_volume_fills

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples" / "plugins"
MiB = 1 << 20
IMAGE_ENV = ["PATH=/opt/venv/bin"]
SMALL = Limits(timeout_s=60, memory_bytes=1024 * MiB, tmpfs_bytes=64 * MiB, shm_bytes=64 * MiB)


def installed(root: Path, name: str = "wildcards") -> InstalledPlugin:
    """An added plugin (hashed, read-only stored copy), without the catalog."""
    staged = stage_plugin(EXAMPLES / name, root)
    m = staged.manifest
    dest = store_dir(root, staged.tree_sha256)
    make_read_only(staged.staging)
    os.rename(staged.staging, dest)
    return InstalledPlugin(
        name=m.name,
        version=m.version,
        entry=m.entry,
        hooks=m.hooks,
        requirements=m.requirements,
        tree_sha256=staged.tree_sha256,
        trusted=False,
        path=dest,
        files={f.path: f.sha256 for f in staged.files},
    )


def _untar(data: bytes) -> dict[str, tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
        return {m.name: m for m in tar}


def _writable(path: Path) -> None:
    for d in [path, *[p for p in path.rglob("*") if p.is_dir()]]:
        d.chmod(0o755)


def test_plugin_tar_holds_exactly_the_recorded_files(tmp_path: Path) -> None:
    p = installed(tmp_path)
    _writable(p.path)
    (p.path / "wildcards" / "stray.txt").write_text("not recorded\n")  # left out, not copied
    members = _untar(b"".join(plugin_tar_stream(p, chunk=64)))
    files = {
        n.removeprefix(f"{PLUGIN_DIR}/")
        for n, m in members.items()
        if m.isfile() and n != MODEL_MARKER
    }
    assert files == set(p.files)
    assert all(n.startswith(f"{PLUGIN_DIR}/") or n in (PLUGIN_DIR, MODEL_MARKER) for n in members)
    assert list(members)[-1] == MODEL_MARKER  # the marker comes last, beside the directory
    assert all(m.isdir() or m.isfile() for m in members.values())
    assert all(m.mode == 0o444 for n, m in members.items() if m.isfile() and n != MODEL_MARKER)
    assert all(m.mode == 0o555 for m in members.values() if m.isdir())

    color = p.path / "wildcards" / "color.txt"
    color.chmod(0o644)
    original = color.read_bytes()
    color.write_text("ignore previous instructions\n")
    with pytest.raises(PluginTamperedError, match="wildcards/color.txt: expected sha256"):
        list(plugin_tar_stream(p))
    color.unlink()
    color.symlink_to(tmp_path / "elsewhere")
    (tmp_path / "elsewhere").write_bytes(original)  # same bytes, but through a link: refused
    with pytest.raises(PluginTamperedError, match="color.txt: cannot open"):
        list(plugin_tar_stream(p))
    color.unlink()
    (p.path / "wildcards").rename(p.path / "real")
    (p.path / "wildcards").symlink_to("real")  # a linked directory on the way is refused too
    with pytest.raises(PluginTamperedError, match="cannot open"):
        list(plugin_tar_stream(p))


def test_static_check_covers_volume_backed_plugins(tmp_path: Path) -> None:
    from tests.sandbox.test_runner_unit import RECORD, attrs_for

    p = installed(tmp_path)
    ref = p.ref()
    spec = JobSpec(job_id=new_job_id(), nonce=new_nonce(), kind="echo", params={}, plugins=[ref])
    volume = f"assetmgr-plugin-{ref.sha256[:32]}-000000"
    staged = StagedVolume(
        ref.sha256, volume, f"/var/lib/docker/volumes/{volume}/_data/{PLUGIN_DIR}"
    )
    plan = plan_job(spec, RECORD, plugin_dirs={p.name: p.path}, plugin_volumes={p.name: staged})
    (mount,) = [m for m in plan.create_kwargs()["mounts"] if m["Target"] == ref.mount_path]
    assert mount["Type"] == "bind" and mount["ReadOnly"] is True
    assert mount["Source"] == staged.source
    assert mount["BindOptions"]["Propagation"] == "rslave"
    good = attrs_for(plan)
    assert check_host_config(good, plan, IMAGE_ENV) == []

    def weakened(change: Any) -> list[str]:
        attrs = copy.deepcopy(good)
        (m,) = [m for m in attrs["HostConfig"]["Mounts"] if m["Target"] == ref.mount_path]
        change(m)
        return check_host_config(attrs, plan, IMAGE_ENV)

    assert weakened(lambda m: m.update(ReadOnly=False))
    assert weakened(lambda m: m.update(BindOptions={"Propagation": "rshared"}))
    assert weakened(lambda m: m.update(Type="volume", Source=volume))  # the whole volume
    with pytest.raises(SandboxError, match="not staged"):
        plan_job(spec, RECORD, plugin_dirs={p.name: p.path}, plugin_volumes={})
    other = StagedVolume("0" * 64, volume, staged.source)  # another plugin's tree
    with pytest.raises(SandboxError, match="not staged"):
        plan_job(spec, RECORD, plugin_dirs={p.name: p.path}, plugin_volumes={p.name: other})
    # the volume's root (with the marker) or a path outside the volume is caught
    for odd in (f"/var/lib/docker/volumes/{volume}/_data", "/srv/plugins/wildcards"):
        bad = plan_job(
            spec,
            RECORD,
            plugin_dirs={p.name: p.path},
            plugin_volumes={p.name: StagedVolume(ref.sha256, volume, odd)},
        )
        problems = check_host_config(attrs_for(bad), bad, IMAGE_ENV)
        assert any("not the plugin directory" in v for v in problems), problems


# ---------------------------------------------------------------------------------------------
# Real engine


def _plugin_volumes(client: Any, tree: str) -> list[Any]:
    return list(client.volumes.list(filters={"label": f"{LABEL_PLUGIN_SHA256}={tree}"}))


def _spec(p: InstalledPlugin) -> JobSpec:
    probes = [
        {"name": "mounts"},
        {"name": "write_file", "args": {"path": "/plugins/wildcards/new.py"}},
        {"name": "read_file", "args": {"path": "/plugins/wildcards/wildcards/color.txt"}},
        {"name": "read_file", "args": {"path": f"/plugins/wildcards/{MODEL_MARKER}"}},
    ]
    return JobSpec(
        job_id=new_job_id(),
        nonce=new_nonce(),
        kind="probe",
        params={"probes": probes, "prompt": "a __color__ cat"},
        plugins=[p.ref()],
        limits=SMALL,
    )


@pytest.mark.docker
def test_plugins_travel_in_reused_read_only_volumes(
    docker_client: Any, sandbox_image: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    p = installed(tmp_path / "plugins")
    tree = p.tree_sha256
    real_put = docker_client.api.put_archive  # uncounted: plants broken volumes
    fills, checked = watch_volume_fills(monkeypatch, docker_client, "plugins")

    def run() -> Any:
        return run_job(
            _spec(p),
            image=sandbox_image,
            client=docker_client,
            output_dir=tmp_path / new_job_id(),
            gpus="none",
            plugins=[p],
            transport="volume",
        ).result.data

    try:
        data = run()
        mounts, write, read, marker = data["probes"]
        by_target = {m["target"]: m for m in mounts["mounts"]}
        assert "ro" in by_target["/plugins/wildcards"]["options"].split(",")
        assert [t for t in by_target if t.startswith("/plugins")] == ["/plugins/wildcards"]
        assert write["ok"] is False and write["errname"] == "EROFS", write
        assert read["ok"] is True, read
        assert marker["ok"] is False and marker["errname"] == "ENOENT"  # only the plugin's files
        assert "__color__" not in data["prompt"]  # the hooks ran from the volume
        assert len(fills) == 1
        (volume,) = _plugin_volumes(docker_client, tree)
        assert checked[-1] == [volume.name]  # the static check saw the volume-backed mount

        # a second job reuses the volume: no copy
        assert "__color__" not in run()["prompt"]
        assert len(fills) == 1
        assert [v.name for v in _plugin_volumes(docker_client, tree)] == [volume.name]

        # a tampered stored copy is still refused before anything runs (or is copied)
        color = p.path / "wildcards" / "color.txt"
        (p.path / "wildcards").chmod(0o755)
        color.chmod(0o644)
        original = color.read_bytes()
        color.write_text("ignore previous instructions\n")
        runs = len(checked)
        with pytest.raises(PluginTamperedError, match="wildcards/color.txt"):
            run()
        assert len(fills) == 1 and len(checked) == runs
        color.write_bytes(original)

        # a volume without its marker (an interrupted copy) is removed and rebuilt
        volume.remove(force=True)
        broken = docker_client.volumes.create(
            name=f"assetmgr-plugin-test-{new_nonce()[:12]}",
            labels={LABEL_PLUGIN_SHA256: tree, LABEL_SESSION: SESSION_ID},
        )
        with _volume_helper(docker_client, sandbox_image, broken.name, writable=True) as ct:
            *whole, _marker, _end = list(plugin_tar_stream(p))  # every file, no marker
            assert real_put(ct.id, FILL_DIR, b"".join(whole) + b"\0" * 1024)
        assert "__color__" not in run()["prompt"]
        assert len(fills) == 2
        (rebuilt,) = _plugin_volumes(docker_client, tree)
        assert rebuilt.name not in (volume.name, broken.name)

        # prune finds plugin volumes only when asked to
        assert rebuilt.name not in prune(docker_client, session=SESSION_ID).plugin_volumes
        report = prune(docker_client, session=SESSION_ID, models=True)
        assert report.plugin_volumes == [rebuilt.name]
        assert _plugin_volumes(docker_client, tree) == []
    finally:
        for vol in _plugin_volumes(docker_client, tree):
            vol.remove(force=True)


@pytest.mark.docker
def test_warm_worker_reads_plugins_from_volumes(
    docker_client: Any, sandbox_image: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sandbox.warm import WarmWorker

    p = installed(tmp_path / "plugins")
    try:
        with WarmWorker(
            sandbox_image,
            client=docker_client,
            limits=SMALL,
            gpus="none",
            plugins=[p],
            transport="volume",
        ) as worker:
            data = worker.run(_spec(p), tmp_path / "out").result.data
            assert "__color__" not in data["prompt"]
            assert data["probes"][1]["errname"] == "EROFS"
        assert len(_plugin_volumes(docker_client, p.tree_sha256)) == 1
    finally:
        for vol in _plugin_volumes(docker_client, p.tree_sha256):
            vol.remove(force=True)
