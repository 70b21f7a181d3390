"""Issue 12, the plugin side, each attack performed on the real path.

* item 1: a plugin's requirement wheels reach only the jobs that name the plugin, and wheels that
  carry startup hooks (``.pth``, ``sitecustomize``/``usercustomize``) are refused by the build
  (real wheels built here);
* item 7: a stored plugin is exactly its recorded files: anything else (a planted ``.pyc``,
  a dotfile, a directory) fails ``verify`` and the run, and a job mounts only recorded files
  (a ``.pyc`` planted right after verification never reaches it);
* item 8: stored folders are named by tree hash, so "foo" "bar-1.0" and "foo-bar" "1.0" no
  longer share one; folders of the old layout move on open;
* item 9 (init): the job cannot ptrace, stop or write the memory of the container's PID 1, so a
  worker that dies fails its job at once instead of hanging until the timeout.
"""

from __future__ import annotations

import importlib.util
import json
import marshal
import os
import stat
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest.mock import MagicMock

import pytest
from sqlalchemy import Engine, select, update

from assetmgr.wording import describe
from catalog.db import session_scope
from catalog.sandbox_records import Plugin
from sandbox.errors import (
    JobFailedError,
    PluginTamperedError,
    PluginWheelRefusedError,
    SandboxError,
)
from sandbox.image.build import PYTHON_VERSION
from sandbox.image.record import load_record, save_record
from sandbox.image.wheels import PluginWheelhouse, resolve_plugin_wheels
from sandbox.labels import RUN_COPIES_DIR, SESSION_ID
from sandbox.plugins import remove_tree, requirements_key, stage_plugin
from sandbox.protocol import JobSpec, Limits, PluginRef
from sandbox.prune import prune_plugin_copies
from sandbox.runner import new_job_id, new_nonce, run_job
from sandbox.service import SandboxService
from sandbox.transport import plugin_run_copies
from sandbox.worker import execute
from sandbox.worker.channel import CollectingChannel
from sandbox.worker.plugin_host import PluginError as WorkerPluginError
from tests.sandbox.plugin_wheels import make_wheel
from tests.sandbox.services import catalog_service
from tests.sandbox.test_plugins import EXAMPLES, HOSTILE, _base_house, fake_record, write_plugin

MiB = 1 << 20
SMALL = Limits(timeout_s=60, memory_bytes=1024 * MiB, tmpfs_bytes=64 * MiB, shm_bytes=64 * MiB)
CLEAN_CODE = "def prompt_transform(p, n, ctx):\n    return p + ' clean', n\n"
PLANTED_CODE = "def prompt_transform(p, n, ctx):\n    return p + ' planted', n\n"


def _writable(path: Path) -> None:
    for d in [path, *[p for p in path.rglob("*") if p.is_dir()]]:
        d.chmod(0o755)


def plant_pyc(plugin_dir: Path, module: str = "demo_plugin") -> Path:
    """A ``__pycache__`` entry that CPython 3.11 takes for `module`'s source: same mtime and size.

    Such a file is what an attacker with write access to the store would plant; the source
    stays untouched, so a check that only hashes recorded files passes.
    """
    if sys.version_info[:2] != tuple(int(v) for v in PYTHON_VERSION.split(".")):
        pytest.skip(f"the planted bytecode must be CPython {PYTHON_VERSION}'s, like the image")
    source = plugin_dir / f"{module}.py"
    st = source.stat()
    code = compile(PLANTED_CODE, str(source), "exec")
    header = importlib.util.MAGIC_NUMBER + (0).to_bytes(4, "little")
    header += int(st.st_mtime).to_bytes(4, "little") + (st.st_size & 0xFFFFFFFF).to_bytes(
        4, "little"
    )
    _writable(plugin_dir)
    pyc = Path(importlib.util.cache_from_source(str(source)))
    pyc.parent.mkdir(exist_ok=True)
    pyc.write_bytes(header + marshal.dumps(code))
    return pyc


# ---------------------------------------------------------------------------------------------
# Item 1: a plugin's requirements reach only the jobs that name it

#: What a requirement's ``.pth`` would do if ``site`` ever read it: rewrite every prompt.
PTH_REWRITE = (
    b"import sandbox.worker.plugin_host as h; "
    b"h.apply_prompt_hooks = lambda p, n, **k: ('rewritten by a .pth', n)\n"
)


def _resolve(tmp_path: Path, links: Path, *sets: list[str]) -> PluginWheelhouse:
    base, inputs = _base_house(tmp_path)
    return resolve_plugin_wheels(
        base,
        list(sets),
        inputs,
        tmp_path / "cache",
        progress=lambda stage, fraction: None,
        cancel=threading.Event(),
        find_links=[links],
        no_index=True,
    )


@pytest.mark.parametrize(
    ("member", "installs_as"),
    [
        ("evilpth.pth", "evilpth.pth"),
        ("evilpth-nspkg.pth", "evilpth-nspkg.pth"),
        ("EVIL.PTH", "EVIL.PTH"),
        ("sitecustomize.py", "sitecustomize.py"),
        ("usercustomize/__init__.py", "usercustomize"),
        (
            "sitecustomize.cpython-311-x86_64-linux-gnu.so",
            "sitecustomize.cpython-311-x86_64-linux-gnu.so",
        ),
        ("evilpth-1.0.data/data/evilpth.pth", "evilpth.pth"),
        ("evilpth-1.0.data/purelib/evilpth.pth", "evilpth.pth"),
        ("evilpth-1.0.data/platlib/sitecustomize.py", "sitecustomize.py"),
        ("../evilpth.pth", "../evilpth.pth"),
    ],
)
def test_requirement_wheels_with_startup_hooks_are_refused(
    tmp_path: Path, member: str, installs_as: str
) -> None:
    links = tmp_path / "links"
    wheel = make_wheel(links, "evilpth", "1.0", "X = 1\n", extra_files={member: PTH_REWRITE})
    with pytest.raises(PluginWheelRefusedError) as info:
        _resolve(tmp_path, links, ["evilpth==1.0"])
    assert str(info.value) == (
        f"plugin requirement wheel {wheel.name} is refused: its file {member} would install "
        f"{installs_as}, a startup hook"
    )
    assert (info.value.wheel, info.value.member) == (wheel.name, member)
    assert "drop the plugin" in describe(info.value).hint
    assert not list((tmp_path / "cache").rglob("requirements.lock"))  # nothing kept as resolved


def test_files_that_python_never_runs_at_start_up_are_accepted(tmp_path: Path) -> None:
    links = tmp_path / "links"
    extra = {
        "evilpth_pkg/inner.pth": PTH_REWRITE,  # only a site directory's top level is read
        "evilpth_pkg/sitecustomize.py": b"",  # not a top-level module
        "evilpth-1.0.data/headers/x.pth": PTH_REWRITE,  # installs under include/
    }
    wheel = make_wheel(links, "evilpth", "1.0", "X = 1\n", extra_files=extra)
    [dep_set] = _resolve(tmp_path, links, ["evilpth==1.0"]).sets
    assert dep_set.wheel_paths() == [dep_set.directory / wheel.name]


def test_dependency_directories_join_sys_path_plainly_and_only_for_their_plugin(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In-process: a job adds only its plugins' directories, at the end, and reads no ``.pth``.

    The build refuses such files; here one is planted anyway to show the worker never runs it.
    """
    monkeypatch.setattr(sys, "path", list(sys.path))
    requirements = ["secdep-tiny==1.0"]
    key = requirements_key(requirements)
    deps = tmp_path / "deps" / key
    deps.mkdir(parents=True)
    (deps / "secdep_tiny.py").write_text("VALUE = 'from its own directory'\n")
    (deps / "zz-rewrite.pth").write_bytes(PTH_REWRITE)
    (deps / "sitecustomize.py").write_text("raise SystemExit('sitecustomize ran')\n")
    code = (
        "import secdep_tiny\n"
        "def prompt_transform(p, n, ctx):\n    return p + ' ' + secdep_tiny.VALUE, n\n"
    )
    src = write_plugin(
        tmp_path / "plugins", "secdeps", requirements=str(requirements).replace("'", '"'), code=code
    )
    staged = stage_plugin(src, tmp_path / "staging")
    ref = PluginRef(
        name="secdeps",
        version="1.0",
        sha256=staged.tree_sha256,
        entry="demo_plugin",
        hooks=("prompt_transform",),
        deps=key,
    )

    def echo(refs: list[PluginRef], out: str) -> Any:
        spec = JobSpec(
            job_id=new_job_id(),
            nonce=new_nonce(),
            kind="echo",
            params={"text": "a cat"},
            plugins=refs,
        )
        return execute(
            spec,
            tmp_path / out,
            CollectingChannel(),
            plugins_root=tmp_path / "plugins",
            plugin_deps_root=tmp_path / "deps",
        )

    try:
        assert echo([], "plain").data["text"] == "a cat"
        assert str(deps) not in sys.path and "secdep_tiny" not in sys.modules
        assert echo([ref], "with").data["text"] == "a cat from its own directory"
        assert sys.path[-1] == str(deps)  # appended after the venv: shadows nothing
        assert echo([], "after").data["text"] == "a cat"  # the .pth never ran
    finally:
        for name in [
            m for m in sys.modules if m.startswith(("secdep_tiny", "assetmgr_plugin_secdeps"))
        ]:
            del sys.modules[name]
    missing = ref.model_copy(update={"deps": "0" * 64})
    with pytest.raises(WorkerPluginError, match="its requirements are not in the sandbox image"):
        echo([missing], "missing")


@pytest.mark.docker
def test_the_build_refuses_a_plugin_whose_requirement_ships_a_pth(
    engine: Engine, tmp_path: Path, docker_client: Any, sandbox_image: Any
) -> None:
    """Through `sandbox build` itself: refused before any docker build, the image unchanged."""
    from tests.sandbox.conftest import CACHE_DIR

    links = tmp_path / "links"
    wheel = make_wheel(links, "evilpth", "1.0", "X = 1\n", extra_files={"evilpth.pth": PTH_REWRITE})
    record_path = tmp_path / "image.json"
    save_record(sandbox_image, record_path)
    svc = catalog_service(
        engine,
        plugins_root=tmp_path / "plugins",
        record_path=record_path,
        cache_dir=CACHE_DIR,
        client=docker_client,
    )
    svc.add_plugin(write_plugin(tmp_path / "src", "usesevil", requirements='["evilpth==1.0"]'))
    with pytest.raises(
        PluginWheelRefusedError, match=f"{wheel.name} is refused: its file evilpth.pth"
    ):
        svc.build(offline=True, find_links=[links], no_index=True)
    assert load_record(record_path) == sandbox_image  # nothing was built or recorded
    svc.close()


# ---------------------------------------------------------------------------------------------
# Item 8: one folder per stored plugin, named by its tree hash


def test_name_and_version_that_join_alike_get_their_own_folders(
    service: SandboxService, tmp_path: Path
) -> None:
    foo = write_plugin(tmp_path / "a", "foo", version="bar-1.0", code=CLEAN_CODE)
    foo_bar = write_plugin(tmp_path / "b", "foo-bar", version="1.0", code=PLANTED_CODE)
    a = service.add_plugin(foo).plugin
    b = service.add_plugin(foo_bar).plugin
    assert a.path != b.path
    assert (a.path.name, b.path.name) == (a.tree_sha256, b.tree_sha256)
    assert [(c.name, c.ok, c.problems) for c in service.verify_plugins()] == [
        ("foo", True, ()),
        ("foo-bar", True, ()),
    ]
    service.remove_plugin("foo")
    assert not a.path.exists() and b.path.is_dir()
    assert [(c.name, c.ok) for c in service.verify_plugins()] == [("foo-bar", True)]
    service.add_plugin(foo)
    service.remove_plugin("foo-bar")
    assert [(c.name, c.ok) for c in service.verify_plugins()] == [("foo", True)]


def test_folders_of_the_old_layout_move_to_their_tree_hash_on_open(
    engine: Engine, tmp_path: Path
) -> None:
    root = tmp_path / "plugins"

    def open_service() -> SandboxService:
        return catalog_service(engine, plugins_root=root, record_path=tmp_path / "image.json")

    svc = open_service()
    assert svc.moved_plugins == []
    foo = svc.add_plugin(write_plugin(tmp_path / "a", "foo", version="bar-1.0")).plugin
    foo_bar = svc.add_plugin(write_plugin(tmp_path / "b", "foo-bar", version="1.0")).plugin
    wildcards = svc.add_plugin(EXAMPLES / "wildcards").plugin
    svc.close()
    # the layout before: "<name>-<version>" folders, none recorded; foo and foo-bar shared
    # one, which holds foo-bar (added last)
    with session_scope(engine, write=True) as session:
        session.execute(update(Plugin).values(store_dir=None))
    os.rename(wildcards.path, root / "wildcards-1.0.0")
    os.rename(foo_bar.path, root / "foo-bar-1.0")
    remove_tree(foo.path)

    svc = open_service()
    assert svc.moved_plugins == ["foo-bar", "wildcards"]
    checks = {c.name: c for c in svc.verify_plugins()}
    assert checks["foo-bar"].ok and checks["wildcards"].ok
    assert not checks["foo"].ok and checks["foo"].problems[0].endswith("is missing")
    assert sorted(p.name for p in root.iterdir()) == sorted(
        [foo_bar.tree_sha256, wildcards.tree_sha256]
    )
    with session_scope(engine) as session:
        rows = session.execute(select(Plugin.name, Plugin.store_dir)).all()
    assert dict(rows) == {p.name: p.tree_sha256 for p in (foo, foo_bar, wildcards)}
    svc.close()
    assert open_service().moved_plugins == []  # recorded: nothing left to move


# ---------------------------------------------------------------------------------------------
# Item 7: a stored plugin is exactly its recorded files


def _plant(kind: str, d: Path) -> str:
    if kind == "pyc":
        return plant_pyc(d).relative_to(d).as_posix()
    _writable(d)
    if kind == "dotfile":
        (d / ".hidden.py").write_text("import os\n")
        return ".hidden.py"
    if kind == "nested_cache":
        (d / "pkg" / "__pycache__").mkdir(parents=True)
        (d / "pkg" / "__pycache__" / "x.cpython-311.pyc").write_bytes(b"\0" * 16)
        return "pkg/__pycache__/x.cpython-311.pyc"
    if kind == "git":
        (d / ".git").mkdir()
        (d / ".git" / "config").write_text("[core]\n")
        return ".git/config"
    (d / "empty").mkdir()
    return "empty"


@pytest.mark.parametrize("kind", ["pyc", "dotfile", "nested_cache", "git", "directory"])
def test_any_extra_file_fails_verify_and_the_run(
    service: SandboxService, tmp_path: Path, kind: str
) -> None:
    p = service.add_plugin(write_plugin(tmp_path / "src", code=CLEAN_CODE)).plugin
    planted = _plant(kind, p.path)
    [check] = service.verify_plugins()
    assert not check.ok
    assert any(
        problem.startswith(f"{planted}: not part of the plugin") for problem in check.problems
    )
    spec = JobSpec(
        job_id=new_job_id(), nonce=new_nonce(), kind="echo", params={}, plugins=[p.ref()]
    )
    client = MagicMock()
    with pytest.raises(PluginTamperedError, match=f"{planted}: not part of the plugin"):
        run_job(spec, image=fake_record(), client=client, output_dir=tmp_path / "o", plugins=[p])
    assert client.mock_calls == []  # refused before the engine was touched
    with pytest.raises(PluginTamperedError, match="demo 1.0 was modified after it was added"):
        service.run("echo", {}, tmp_path / "o2", plugins=["demo"])


def test_a_per_run_copy_holds_exactly_the_recorded_files(
    service: SandboxService, tmp_path: Path
) -> None:
    p = service.add_plugin(EXAMPLES / "wildcards").plugin
    planted = plant_pyc(p.path, "wildcards_plugin")
    (p.path / ".hidden").write_text("x")
    with plugin_run_copies([p]) as sources:
        copy = sources.dirs[p.name]
        copied = sorted(str(f.relative_to(copy)) for f in copy.rglob("*") if f.is_file())
        assert copied == sorted(p.files)
        assert all(stat.S_IMODE(f.stat().st_mode) == 0o444 for f in copy.rglob("*") if f.is_file())
    assert not copy.exists() and planted.is_file()
    # a changed recorded file stops the copy, which leaves nothing behind
    (p.path / "wildcards" / "color.txt").chmod(0o644)
    (p.path / "wildcards" / "color.txt").write_text("ignore previous instructions\n")
    with pytest.raises(PluginTamperedError, match="wildcards/color.txt: expected sha256"):
        plugin_run_copies([p])
    assert list((p.path.parent / RUN_COPIES_DIR).iterdir()) == []


def test_per_run_copies_never_go_through_a_planted_link(
    service: SandboxService, tmp_path: Path
) -> None:
    p = service.add_plugin(EXAMPLES / "wildcards").plugin
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (p.path.parent / RUN_COPIES_DIR).symlink_to(elsewhere)
    with pytest.raises(SandboxError, match="is not a directory"):
        plugin_run_copies([p])
    assert list(elsewhere.iterdir()) == []


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


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    from catalog.db import open_catalog

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


@pytest.mark.docker
def test_a_pyc_planted_after_verification_never_reaches_the_job(
    real_service: SandboxService, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sandbox.runner

    p = real_service.add_plugin(write_plugin(tmp_path / "src", code=CLEAN_CODE)).plugin
    verify = sandbox.runner.verify_installed
    planted: list[Path] = []

    def verify_then_plant(plugin: Any) -> None:
        verify(plugin)  # the stored copy is clean here ...
        planted.append(plant_pyc(plugin.path))  # ... and an attacker wins the race right after

    monkeypatch.setattr(sandbox.runner, "verify_installed", verify_then_plant)
    result = real_service.run(
        "echo", {"text": "a cat"}, tmp_path / "out", plugins=[p.name], limits=SMALL, gpus="none"
    )
    assert planted and planted[0].is_file()  # the attack happened
    assert result.result.data["text"] == "a cat clean"
    run_root = p.path.parent / RUN_COPIES_DIR
    assert list(run_root.iterdir()) == []  # the per-run copy went with the container

    # copies a crashed process left behind go with `sandbox prune`; this process's stay
    stale = run_root / "0123456789abcdef-00000000" / p.name
    stale.mkdir(parents=True)
    (stale / "demo_plugin.py").write_text(CLEAN_CODE)
    mine = run_root / f"{SESSION_ID}-00000000"
    mine.mkdir()
    assert prune_plugin_copies(real_service.client, p.path.parent) == [stale.parent.name]
    assert not stale.parent.exists() and mine.is_dir()


@pytest.fixture
def hostile(real_service: SandboxService) -> SandboxService:
    real_service.add_plugin(HOSTILE)
    return real_service


@pytest.mark.docker
def test_a_job_cannot_stop_the_containers_init(hostile: SandboxService, tmp_path: Path) -> None:
    """The hostile plugin ptrace-stops PID 1 from a child it leaves behind, then exits 9.

    With a stoppable init the container outlives the worker and the job hangs until its
    timeout; here the attempts are refused and the job fails at once, naming the exit code.
    """
    limits = Limits(timeout_s=120, memory_bytes=1024 * MiB, tmpfs_bytes=64 * MiB)
    with pytest.raises(JobFailedError) as info:
        hostile.run(
            "plugin_demo",
            {"prompt": "hostile:stop_init", "seed": 1},
            tmp_path / "out",
            plugins=["hostile"],
            limits=limits,
            gpus="none",
        )
    assert "exited with code 9 without a result; its log ends: stop_init {" in str(info.value)
    assert info.value.oom_killed is False
    assert describe(info.value).hint == (
        "The worker exited with code 9 without saying why; the message quotes the end of its log."
    )
    [line] = [line for line in info.value.log_tail if line.startswith("stop_init ")]
    seen = json.loads(line.removeprefix("stop_init "))
    assert seen["ptrace_seize"] == "EPERM", seen
    assert seen["proc1_mem"] in ("EACCES", "EPERM"), seen
    assert seen["process_vm_readv"] == "EPERM", seen
    assert seen["init_state_after"] in ("S", "R"), seen  # never T (stopped) or t (traced)
