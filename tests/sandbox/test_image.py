"""The image build: pure helpers (no engine), then the real pinned image (marker docker)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from sandbox.errors import ImageError, ImageMismatchError
from sandbox.image import render_dockerfile, verify_image
from sandbox.image.build import worker_sources
from sandbox.image.rootfs import RootfsInputs, find_debian_mirror
from sandbox.image.wheels import (
    LockedWheel,
    WheelhouseInputs,
    parse_lock,
    platform_tags,
    render_lock,
    split_torch,
)

MIRROR = "http://mirror.invalid/debian"


def test_mirror_from_deb822_and_one_line_sources(tmp_path: Path) -> None:
    d = tmp_path / "sources.list.d"
    d.mkdir()
    (d / "a.sources").write_text(
        "Types: deb\nURIs: http://security.invalid/debian-security\n"
        "Suites: bookworm-security\nComponents: main\n\n"
        "# comment\nTypes: deb deb-src\nURIs: " + MIRROR + "/\n"
        "Suites: bookworm bookworm-updates\nComponents: main\n"
    )
    assert find_debian_mirror("bookworm", [tmp_path / "missing", d]) == MIRROR
    one = tmp_path / "sources.list"
    one.write_text(
        "# deb http://old.invalid/debian bookworm main\n"
        "deb [arch=amd64 signed-by=/k.gpg] http://one.invalid/debian bookworm main\n"
    )
    assert find_debian_mirror("bookworm", [one]) == "http://one.invalid/debian"
    with pytest.raises(ImageError):
        find_debian_mirror("trixie", [one, d])


def test_rootfs_cache_key_depends_on_every_input() -> None:
    base = RootfsInputs(mirror=MIRROR, arch="amd64")
    assert base.key() == RootfsInputs(mirror=MIRROR, arch="amd64").key()
    for other in (
        RootfsInputs(mirror=MIRROR + "2", arch="amd64"),
        RootfsInputs(mirror=MIRROR, arch="arm64"),
        RootfsInputs(mirror=MIRROR, arch="amd64", include=("python3",)),
        RootfsInputs(mirror=MIRROR, arch="amd64", epoch=1),
    ):
        assert other.key() != base.key()


def test_torch_variant_selection() -> None:
    reqs = "# c\ntorch==2.13.0\ndiffusers==0.42.1  # x\n\n"
    assert split_torch(reqs, "cpu") == ("torch==2.13.0+cpu", ["diffusers==0.42.1"])
    assert split_torch(reqs, "cuda") == ("torch==2.13.0", ["diffusers==0.42.1"])
    with pytest.raises(ImageError):
        split_torch("torch>=2\n", "cpu")
    key_cpu = WheelhouseInputs(requirements=reqs, torch_variant="cpu").key()
    assert key_cpu != WheelhouseInputs(requirements=reqs, torch_variant="cuda").key()


def test_platform_tags_cover_older_manylinux() -> None:
    tags = platform_tags("x86_64", (2, 36))
    assert tags[0] == "manylinux_2_36_x86_64"
    assert "manylinux_2_17_x86_64" in tags and "manylinux2014_x86_64" in tags
    assert "manylinux_2_37_x86_64" not in tags
    assert "manylinux1_aarch64" not in platform_tags("aarch64", (2, 36))


def test_lock_round_trip() -> None:
    wheels = [
        LockedWheel("torch", "2.13.0+cpu", "torch-2.13.0+cpu-cp311-cp311-x.whl", "1" * 64),
        LockedWheel("annotated-types", "0.8.0", "annotated_types-0.8.0-py3-none-any.whl", "2" * 64),
    ]
    text = render_lock(wheels, WheelhouseInputs(requirements=""))
    lines = [line for line in text.splitlines() if not line.startswith("#")]
    assert lines == [
        "annotated-types==0.8.0 --hash=sha256:" + "2" * 64,
        "torch==2.13.0+cpu --hash=sha256:" + "1" * 64,
    ]
    assert parse_lock(text) == {
        "torch": ("2.13.0+cpu", "1" * 64),
        "annotated-types": ("0.8.0", "2" * 64),
    }
    with pytest.raises(ImageError):
        parse_lock("torch>=2\n")


def test_dockerfile_is_offline_hashed_and_non_root() -> None:
    text = render_dockerfile("sha256:" + "a" * 64)
    assert text.count("FROM sha256:" + "a" * 64) == 2
    assert "install_venv.py" in text and "COPY --from=install /opt/venv /opt/venv" in text
    assert text.strip().splitlines()[-2] == "USER 65534:65534"
    install = (Path(__file__).parents[2] / "sandbox/image/install_venv.py").read_text()
    for flag in ("--no-index", "--require-hashes", "--only-binary", "--no-deps"):
        assert flag in install


def test_worker_sources_exclude_host_modules() -> None:
    files = worker_sources()
    assert "sandbox/protocol/__init__.py" in files and "sandbox/worker/__main__.py" in files
    assert "sandbox/protocol/messages.py" in files
    assert "sandbox/protocol/jobspec.py" in files  # the generate contract the worker imports
    assert "sandbox/protocol/infotext.py" in files  # the parameters text its PNGs carry
    assert files["sandbox/__init__.py"].count(b"import") == 0
    assert not [f for f in files if f.startswith(("sandbox/runner", "sandbox/image"))]
    assert not [f for f in files if "__pycache__" in f]


def test_development_tools_stay_out_of_the_image_and_its_digest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The synthetic-model builder and the tokenizer tool live in tests/synth: editing them
    leaves the worker digest (and so the image) as it is; editing a worker file does not."""
    import shutil

    from sandbox.image import build

    repo = Path(__file__).resolve().parents[2]
    files = worker_sources()
    assert not [f for f in files if "synth" in f or "/tools/" in f or "build_tokenizer" in f]
    copy = tmp_path / "repo"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(repo / "sandbox", copy / "sandbox", ignore=ignore)
    shutil.copytree(repo / "tests" / "synth", copy / "tests" / "synth", ignore=ignore)
    monkeypatch.setattr(build, "_SANDBOX_SRC", copy / "sandbox")
    before = build.worker_digest()
    assert before == build.worker_digest() and set(worker_sources()) == set(files)

    helper = copy / "tests" / "synth" / "__init__.py"
    helper.write_text(helper.read_text() + "\n# a test helper changed\n")
    (copy / "tests" / "synth" / "build_tokenizer.py").write_text("# rewritten\n")
    assert build.worker_digest() == before

    worker = copy / "sandbox" / "worker" / "generate.py"
    worker.write_text(worker.read_text() + "\n# a worker change\n")
    assert build.worker_digest() != before
    contract = copy / "sandbox" / "protocol" / "jobspec.py"
    changed = build.worker_digest()
    contract.write_text(contract.read_text() + "\n# a contract change\n")
    assert build.worker_digest() != changed


# ---------------------------------------------------------------------------------------------
# The real image


@pytest.mark.docker
def test_image_matches_record_and_runs_as_nobody(docker_client: Any, sandbox_image: Any) -> None:
    verify_image(sandbox_image, docker_client)
    image = docker_client.images.get(sandbox_image.image_id)
    assert image.attrs["Config"]["User"] == "65534:65534"
    assert image.attrs["RootFS"]["Layers"][0] == "sha256:" + sandbox_image.rootfs_sha256
    labels = image.labels
    assert labels["io.assetmgr.lock.sha256"] == sandbox_image.lock_sha256
    assert labels["io.assetmgr.rootfs.sha256"] == sandbox_image.rootfs_sha256
    assert labels["io.assetmgr.version"] == sandbox_image.app_version


@pytest.mark.docker
def test_moved_tag_and_wrong_labels_are_detected(docker_client: Any, sandbox_image: Any) -> None:
    base = docker_client.images.get(sandbox_image.base_ref)
    base.tag("assetmgr-sandbox-test", "moved")
    try:
        moved = sandbox_image.model_copy(update={"tag": "assetmgr-sandbox-test:moved"})
        with pytest.raises(ImageMismatchError, match="tag"):
            verify_image(moved, docker_client)
    finally:
        docker_client.images.remove("assetmgr-sandbox-test:moved", noprune=True)
    relabelled = sandbox_image.model_copy(
        update={"labels": {**sandbox_image.labels, "io.assetmgr.lock.sha256": "0" * 64}}
    )
    with pytest.raises(ImageMismatchError, match="label"):
        verify_image(relabelled, docker_client)


@pytest.mark.docker
@pytest.mark.slow
def test_offline_rebuild_from_caches_is_repeatable(
    docker_client: Any, sandbox_image: Any, tmp_path: Path
) -> None:
    from assetmgr import __version__
    from sandbox.image import build_image
    from tests.sandbox.conftest import CACHE_DIR

    stages: list[str] = []
    again = build_image(
        client=docker_client,
        cache_dir=CACHE_DIR,
        record_path=tmp_path / "image.json",
        app_version=__version__,
        offline=True,
        progress=lambda stage, fraction: stages.append(stage),
    )
    assert stages[-1] == "done" and "verify" in stages
    assert again.image_id == sandbox_image.image_id
    assert again.lock_sha256 == sandbox_image.lock_sha256
    assert again.rootfs_sha256 == sandbox_image.rootfs_sha256
    assert again.layer_diff_ids == sandbox_image.layer_diff_ids
    assert (tmp_path / "image.json").is_file()


@pytest.mark.docker
def test_build_can_be_cancelled(docker_client: Any, sandbox_image: Any, tmp_path: Path) -> None:
    import threading

    from assetmgr import __version__
    from sandbox.errors import BuildCancelledError
    from sandbox.image import build_image
    from tests.sandbox.conftest import CACHE_DIR

    cancel = threading.Event()

    def progress(stage: str, fraction: float | None) -> None:
        if stage == "docker build":  # cancel mid-build: the stream is dropped
            cancel.set()

    with pytest.raises(BuildCancelledError, match="docker build"):
        build_image(
            client=docker_client,
            cache_dir=CACHE_DIR,
            record_path=tmp_path / "image.json",
            app_version=__version__,
            offline=True,
            force=True,
            cancel=cancel,
            progress=progress,
        )
    assert not (tmp_path / "image.json").exists()
    verify_image(sandbox_image, docker_client)  # the recorded image is untouched
