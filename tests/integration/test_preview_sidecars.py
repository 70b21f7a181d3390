"""Preview pictures beside imported models (A1111 / Civitai Helper / LoRA Manager) go through
the hostile-image path into the cache; export writes ``X.preview.png`` and keeps the user's."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from assetmgr.store.thumbnails import make_thumbnail, to_png
from tests.fakeciv.hashes import make_safetensors
from tests.fakeciv.images import SECRET_TEXT, bomb_png, encode, gif_bytes, picture, truncated

REPO_ROOT = Path(__file__).resolve().parents[2]
CONSOLE_SCRIPT = Path(sys.executable).parent / "assetmgr"


def ok(*args: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [str(CONSOLE_SCRIPT), *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "COLUMNS": "400"},
    )
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    return result


def model_file(folder: Path, stem: str, seed: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{stem}.safetensors"
    path.write_bytes(
        make_safetensors(
            {f"lora_unet_block_{seed}.lora_down.weight": [float(seed)] * 16},
            metadata={"ss_network_module": "networks.lora"},
        )
    )
    return path


def import_json(folder: Path) -> dict[str, Any]:
    return json.loads(ok("import", str(folder), "--offline", "--json").stdout)


def images_of(imported: dict[str, Any]) -> list[dict[str, Any]]:
    """The images `models show --json` lists for an imported file's version."""
    model = json.loads(ok("models", "show", "--json", "--", str(imported["model_id"])).stdout)
    return next(v for v in model["versions"] if v["id"] == imported["version_id"])["images"]


def cached_files() -> list[Path]:
    root = Path(os.environ["ASSETMGR_HOME"]) / "cache" / "images"
    return [p for p in root.rglob("*") if p.is_file() and p.parent != root] if root.exists() else []


def snapshot(folder: Path) -> dict[str, tuple[int, bytes]]:
    return {
        str(p): (p.lstat().st_mtime_ns, p.read_bytes() if not p.is_symlink() else b"link")
        for p in sorted(folder.rglob("*"))
        if p.is_file() or p.is_symlink()
    }


def test_import_caches_the_preview_beside_a_model(tmp_path: Path) -> None:
    folder = tmp_path / "webui" / "models" / "Lora"
    model = model_file(folder, "inkwash", 1)
    preview = folder / "inkwash.preview.png"
    preview.write_bytes(encode(picture(7, 600, 900), "PNG"))
    before = snapshot(folder)
    report = import_json(tmp_path / "webui")
    (imported,) = report["imported"]
    assert imported["path"] == str(model) and str(preview) in imported["sidecars"]
    assert report["ignored_sidecars"] == []
    assert snapshot(folder) == before  # the user's folder is only read
    (image,) = images_of(imported)
    assert image["source"] == "sidecar" and image["url"] is None
    assert image["nsfw_level"] is None and not image["above_threshold"]
    stored = Path(image["local_path"])
    assert stored.exists() and SECRET_TEXT.encode() not in stored.read_bytes()
    with Image.open(stored) as thumb:
        assert thumb.size == (image["width"], image["height"]) and max(thumb.size) == 512


def test_hostile_previews_are_refused_and_a_later_good_one_used(tmp_path: Path) -> None:
    folder = tmp_path / "models" / "Lora"
    model_file(folder, "x", 2)
    outside = tmp_path / "outside.png"
    outside.write_bytes(encode(picture(1, 64, 64), "PNG"))
    (folder / "x.preview.png").write_bytes(bomb_png())
    (folder / "x.png").write_bytes(truncated(encode(picture(3, 256, 256), "JPEG")))
    (folder / "x.preview.jpg").symlink_to(outside)  # a real image, elsewhere: never followed
    os.mkfifo(folder / "x.jpg")  # never opened for reading as a file
    (folder / "x.preview.webp").write_bytes(gif_bytes())
    good = encode(picture(9, 300, 200), "WEBP")
    (folder / "x.webp").write_bytes(good)
    report = import_json(folder.parent)
    issues = {(Path(i["path"]).name, i["code"], i["reason"]) for i in report["ignored_sidecars"]}
    assert issues == {
        (
            "x.preview.png",
            "preview-refused",
            "declares 400000000 pixels, over the 36000000-pixel limit (a decompression bomb?)"
            "; not used",
        ),
        ("x.png", "preview-refused", "is truncated; not used"),
        ("x.preview.jpg", "sidecar-link", "a symlink; previews are read only as plain files"),
        ("x.jpg", "sidecar-unreadable", "not a regular file; not read"),
        ("x.preview.webp", "preview-refused", "is not a JPEG, PNG or WebP image; not used"),
    }
    assert all(i["file"].endswith("x.safetensors") for i in report["ignored_sidecars"])
    (imported,) = report["imported"]
    assert str(folder / "x.webp") in imported["sidecars"]
    (image,) = images_of(imported)
    expected = make_thumbnail(good, source="x").data
    assert Path(image["local_path"]).read_bytes() == expected
    assert len(cached_files()) == 1  # nothing of the refused ones


def test_all_hostile_previews_leave_nothing_cached(tmp_path: Path) -> None:
    folder = tmp_path / "loras"
    model_file(folder, "y", 3)
    (folder / "y.preview.png").write_bytes(bomb_png())
    (folder / "y.png").write_bytes(b"<svg xmlns='http://www.w3.org/2000/svg'/>")
    report = import_json(folder)
    assert {i["code"] for i in report["ignored_sidecars"]} == {"preview-refused"}
    assert images_of(report["imported"][0]) == []
    assert cached_files() == []


def test_lora_manager_preview_fields(tmp_path: Path) -> None:
    folder = tmp_path / "ComfyUI" / "models" / "loras"
    model_file(folder, "away", 4)
    (folder / "away.metadata.json").write_text(
        json.dumps({"file_name": "away", "preview_url": "/etc/passwd", "preview_nsfw_level": 1})
    )
    model_file(folder, "own", 5)
    (folder / "own_card.jpeg").write_bytes(encode(picture(4, 200, 300), "JPEG"))
    (folder / "own.metadata.json").write_text(
        json.dumps(
            {
                "file_name": "own",
                "preview_url": str(folder / "own_card.jpeg").replace(os.sep, "/"),
                "preview_nsfw_level": 4,
            }
        )
    )
    report = import_json(folder)
    assert [(Path(i["path"]).name, i["code"]) for i in report["ignored_sidecars"]] == [
        ("away.metadata.json", "preview-outside")
    ]
    by_name = {Path(i["path"]).stem: i for i in report["imported"]}
    assert images_of(by_name["away"]) == []
    assert str(folder / "own_card.jpeg") in by_name["own"]["sidecars"]
    (image,) = images_of(by_name["own"])
    assert image["nsfw_level"] == 4 and image["nsfw"] == "R" and image["above_threshold"]


@pytest.mark.parametrize("layout", ["a1111", "comfyui"])
def test_export_writes_previews_and_keeps_the_users(tmp_path: Path, layout: str) -> None:
    folder = tmp_path / "src"
    model_file(folder, "shown", 6)
    (folder / "shown.preview.png").write_bytes(encode(picture(5, 400, 400), "PNG"))
    model_file(folder, "held", 7)
    (folder / "held.png").write_bytes(encode(picture(6, 400, 400), "PNG"))
    (folder / "held.metadata.json").write_text(json.dumps({"preview_nsfw_level": 8}))
    model_file(folder, "mine", 8)
    (folder / "mine.png").write_bytes(encode(picture(8, 400, 400), "PNG"))
    report = import_json(folder)
    by_stem = {Path(i["path"]).stem: i for i in report["imported"]}
    assert set(by_stem) == {"shown", "held", "mine"}
    # The user already has a preview of their own where the export would put "mine"'s.
    first = json.loads(ok("export", "--layout", layout, str(tmp_path / "probe"), "--json").stdout)
    written = {Path(w["path"]).stem: Path(w["path"]) for w in first["written"]}
    target = tmp_path / "out"
    users = target / written["mine"].relative_to(tmp_path / "probe").with_suffix(".preview.png")
    users.parent.mkdir(parents=True)
    users.write_bytes(b"the user's own preview")
    out = json.loads(ok("export", "--layout", layout, str(target), "--json").stdout)
    paths = {Path(w["path"]).stem: Path(w["path"]) for w in out["written"]}
    shown_preview = paths["shown"].with_suffix(".preview.png")
    assert shown_preview.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    (cached,) = images_of(by_stem["shown"])
    assert shown_preview.read_bytes() == to_png(Path(cached["local_path"]).read_bytes(), source="x")
    assert not paths["held"].with_suffix(".preview.png").exists()  # above the threshold
    assert users.read_bytes() == b"the user's own preview"
    assert {
        "file_id": str(by_stem["mine"]["file_id"]),
        "path": str(users),
        "reason": "a preview the export did not write is there; kept",
    } in out["skipped"]
    if layout == "comfyui":
        lm = json.loads(paths["shown"].with_suffix(".metadata.json").read_text())
        assert lm["preview_url"] == str(shown_preview).replace(os.sep, "/")
    # A second export recognises its own preview and leaves it as it is.
    mtime = shown_preview.stat().st_mtime_ns
    again = json.loads(ok("export", "--layout", layout, str(target), "--json").stdout)
    assert shown_preview.stat().st_mtime_ns == mtime and again["moved_aside"] == []
    digest = hashlib.sha256(shown_preview.read_bytes()).hexdigest()
    manifest = json.loads((target / ".assetmgr-export.json").read_text())
    recorded = manifest["files"][str(shown_preview.relative_to(target))]
    assert recorded == {"kind": "file", "sha256": digest}
