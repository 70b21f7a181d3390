"""`assetmgr export` into a hostile target folder: planted links, the user's own files, re-runs.

Each test builds a real store (an offline import of synthetic safetensors files), plants real
symlinks and files in the target, runs the export (the library call and the CLI) and checks
that nothing outside the target changed and that the user sees a one-line error with a hint.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine
from sqlmodel import Session

from assetmgr.store.blobs import BlobStore
from assetmgr.store.exporter import MANIFEST_NAME, ExportConflictError, export_library
from assetmgr.store.importer import import_folder
from assetmgr.store.safedir import LinkInTargetError
from assetmgr.store.service import plan_delete
from catalog.usermeta import UserMeta
from tests.integration.test_import_export import sd15_lora, st_bytes

REPO_ROOT = Path(__file__).resolve().parents[2]
ASSETMGR = Path(sys.executable).parent / "assetmgr"


def sd15_checkpoint(fill: int = 3) -> bytes:
    """A tiny file with an SD1.5 UNet key layout: detected as a Checkpoint, SD 1.5."""
    return st_bytes(
        {
            "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": (
                320,
                768,
            ),
            "model.diffusion_model.out.2.weight": (4, 320),
        },
        fill=fill,
    )


@pytest.fixture
def store() -> BlobStore:
    return BlobStore(Path(os.environ["ASSETMGR_HOME"]) / "store")


@pytest.fixture
def library(engine: Engine, store: BlobStore, tmp_path: Path) -> dict[str, Any]:
    """A store holding a local LoRA ``inkwash`` and a local checkpoint ``base15``."""
    src = tmp_path / "library"
    src.mkdir()
    (src / "inkwash.safetensors").write_bytes(sd15_lora(fill=5))
    (src / "base15.safetensors").write_bytes(sd15_checkpoint())
    report = import_folder(engine, store, None, src)
    assert len(report.imported) == 2
    by_name = {Path(i.path).name: i for i in report.imported}
    return {"src": src, "lora": by_name["inkwash.safetensors"]}


def cli(engine: Engine, *args: str) -> subprocess.CompletedProcess[str]:
    """Run the installed ``assetmgr`` console script against the test's catalog."""
    env = {**os.environ, "ASSETMGR_DB_URL": engine.url.render_as_string(hide_password=False)}
    return subprocess.run(
        [str(ASSETMGR), *args],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def snapshot(folder: Path) -> dict[str, tuple[str, bytes | str]]:
    """Every entry under `folder` without following links: (kind, bytes or link text)."""
    out: dict[str, tuple[str, bytes | str]] = {}
    for path in sorted(folder.rglob("*")):
        rel = str(path.relative_to(folder))
        if path.is_symlink():
            out[rel] = ("link", os.readlink(path))
        elif path.is_file():
            out[rel] = ("file", path.read_bytes())
        else:
            out[rel] = ("dir", "")
    return out


@pytest.mark.parametrize(("layout", "planted"), [("a1111", "models/Lora"), ("comfyui", "models")])
def test_symlinked_folder_inside_the_target_is_refused(
    engine: Engine,
    store: BlobStore,
    library: dict[str, Any],
    tmp_path: Path,
    layout: str,
    planted: str,
) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "inkwash.json").write_text("victim's own file")
    before = snapshot(elsewhere)
    out = tmp_path / "out"
    (out / planted).parent.mkdir(parents=True, exist_ok=True)
    (out / planted).symlink_to(elsewhere)

    with pytest.raises(LinkInTargetError) as caught:
        export_library(engine, store, out, layout=layout)
    assert caught.value.path == out.resolve() / planted
    assert caught.value.link_target == str(elsewhere)
    assert snapshot(elsewhere) == before

    result = cli(engine, "export", str(out), "--layout", layout)
    assert result.returncode == 1
    assert (
        f"error: {out.resolve() / planted} is a symbolic link to {elsewhere}; "
        "refusing to write through it\n"
    ) in result.stderr
    assert "hint: Replace it with a real folder, or choose another target folder." in (
        result.stderr
    )
    assert snapshot(elsewhere) == before
    assert not (out / MANIFEST_NAME).exists()


def test_planted_temp_links_cannot_redirect_a_write(
    engine: Engine, store: BlobStore, library: dict[str, Any], tmp_path: Path
) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    out = tmp_path / "out"
    lora_dir = out / "models" / "Lora"
    lora_dir.mkdir(parents=True)
    # The temp names the export used to write through, one per sidecar and for the manifest.
    planted = [
        lora_dir / ".inkwash.json.tmp",
        lora_dir / ".inkwash.civitai.info.tmp",
        lora_dir / ".inkwash.safetensors.tmp",
        out / f".{MANIFEST_NAME}.tmp",
    ]
    for link in planted:
        link.symlink_to(victim)

    report = export_library(engine, store, out, layout="a1111")

    assert victim.read_text() == "precious"
    for link in planted:
        assert link.is_symlink() and os.readlink(link) == str(victim)
    sidecar = lora_dir / "inkwash.json"
    assert not sidecar.is_symlink() and json.loads(sidecar.read_text())["sd version"] == "SD1"
    assert (lora_dir / "inkwash.safetensors").resolve() == store.blob_path(library["lora"].sha256)
    assert len(report.written) == 2
    leftovers = [p.name for p in lora_dir.iterdir() if p.name.endswith(".tmp")]
    assert sorted(leftovers) == sorted(p.name for p in planted if p.parent == lora_dir)


def test_a_manifest_planted_as_a_link_is_neither_read_nor_written_through(
    engine: Engine, store: BlobStore, library: dict[str, Any], tmp_path: Path
) -> None:
    victim = tmp_path / "victim.json"
    victim.write_text('{"assetmgr_export": 1, "files": {}}')
    out = tmp_path / "out"
    out.mkdir()
    (out / MANIFEST_NAME).symlink_to(victim)

    with pytest.raises(ExportConflictError) as caught:
        export_library(engine, store, out, layout="comfyui")
    assert caught.value.conflicts[0][0] == out.resolve() / MANIFEST_NAME
    assert not (out / "models").exists()  # refused before anything was written

    report = export_library(engine, store, out, layout="comfyui", move_aside=True)
    assert victim.read_text() == '{"assetmgr_export": 1, "files": {}}'
    (moved,) = report.moved_aside
    assert moved["path"] == str(out.resolve() / MANIFEST_NAME)
    assert os.readlink(moved["moved_to"]) == str(victim)
    manifest = json.loads((out / MANIFEST_NAME).read_text())
    assert "models/loras/inkwash.safetensors" in manifest["files"]


def test_the_users_own_file_with_the_exports_name_is_never_replaced(
    engine: Engine, store: BlobStore, library: dict[str, Any], tmp_path: Path
) -> None:
    out = tmp_path / "out"
    lora_dir = out / "models" / "Lora"
    lora_dir.mkdir(parents=True)
    mine = lora_dir / "inkwash.safetensors"
    mine.write_bytes(b"the user's own model")
    mine_meta = lora_dir / "inkwash.json"
    mine_meta.write_text('{"activation text": "my words"}')
    mine_path, meta_path = lora_dir.resolve() / mine.name, lora_dir.resolve() / mine_meta.name
    before = snapshot(out)

    with pytest.raises(ExportConflictError) as caught:
        export_library(engine, store, out, layout="a1111")
    assert {p for p, _ in caught.value.conflicts} == {mine_path, meta_path}
    assert snapshot(out) == before  # nothing written, not even the other folder

    result = cli(engine, "export", str(out), "--layout", "a1111")
    assert result.returncode == 1
    first = caught.value.conflicts[0][0]
    assert (
        f"error: {first} exists and was not written by assetmgr export (and 1 more)\n"
        in result.stderr
    )
    assert "hint: Move or delete it, or rerun with --move-aside" in result.stderr
    assert snapshot(out) == before

    result = cli(engine, "export", str(out), "--layout", "a1111", "--move-aside", "--json")
    assert result.returncode == 0, result.stderr
    moved = {m["path"]: Path(m["moved_to"]) for m in json.loads(result.stdout)["moved_aside"]}
    assert set(moved) == {str(mine_path), str(meta_path)}
    assert moved[str(mine_path)].read_bytes() == b"the user's own model"
    assert moved[str(mine_path)].name.startswith("inkwash.safetensors.user-")
    assert moved[str(meta_path)].read_text() == '{"activation text": "my words"}'
    assert mine.resolve() == store.blob_path(library["lora"].sha256)
    assert json.loads(mine_meta.read_text())["sd version"] == "SD1"


def test_reexport_updates_its_own_files_and_leaves_edited_ones_to_the_user(
    engine: Engine, store: BlobStore, library: dict[str, Any], tmp_path: Path
) -> None:
    out = tmp_path / "out"
    export_library(engine, store, out, layout="a1111")
    sidecar = out / "models" / "Lora" / "inkwash.json"
    ckpt_link = out / "models" / "Stable-diffusion" / "base15.safetensors"
    assert json.loads(sidecar.read_text())["preferred weight"] == 0

    # The catalog changes: a re-export rewrites the sidecar it wrote.
    version_id = library["lora"].version_id
    with Session(engine) as session:
        session.add(UserMeta(version_id=version_id, preferred_weight=0.7))
        session.commit()
    again = export_library(engine, store, out, layout="a1111")
    assert json.loads(sidecar.read_text())["preferred weight"] == 0.7
    assert not again.moved_aside and not again.removed

    # The user edits the sidecar: it is theirs now.
    sidecar.write_text('{"notes": "mine now"}')
    with pytest.raises(ExportConflictError) as caught:
        export_library(engine, store, out, layout="a1111")
    assert caught.value.conflicts == [(sidecar.resolve(), "was changed since the last export")]
    assert sidecar.read_text() == '{"notes": "mine now"}'
    result = cli(engine, "export", str(out), "--layout", "a1111")
    assert result.returncode == 1
    assert f"error: {sidecar.resolve()} was changed since the last export\n" in result.stderr

    moved = export_library(engine, store, out, layout="a1111", move_aside=True)
    (entry,) = moved.moved_aside
    assert Path(entry["moved_to"]).read_text() == '{"notes": "mine now"}'
    assert json.loads(sidecar.read_text())["preferred weight"] == 0.7

    # The checkpoint leaves the store: its link and sidecar go, the rest stays.
    with Session(engine) as session:
        from sqlalchemy import select

        from catalog.models import LocalFile

        ckpt_sha = next(
            row.sha256
            for row in session.execute(select(LocalFile)).scalars()
            if row.sha256 != library["lora"].sha256
        )
        ckpt_file = next(
            row.file_id
            for row in session.execute(select(LocalFile)).scalars()
            if row.sha256 == ckpt_sha
        )
    plan_delete(engine, store, file_id=ckpt_file).execute(engine, store)
    pruned = export_library(engine, store, out, layout="a1111")
    assert sorted(pruned.removed) == sorted(
        [str(ckpt_link.resolve().parent / n) for n in ("base15.safetensors", "base15.json")]
    )
    assert not ckpt_link.is_symlink() and not ckpt_link.exists()
    assert sidecar.exists() and (out / "models" / "Lora" / "inkwash.safetensors").exists()
    manifest = json.loads((out / MANIFEST_NAME).read_text())
    assert sorted(manifest["files"]) == [
        "models/Lora/inkwash.json",
        "models/Lora/inkwash.safetensors",
    ]
