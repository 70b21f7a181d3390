"""`assetmgr export --layout a1111|comfyui DIR`: show the store to other UIs.

Every verified file gets a link in the folder the UI expects, named after the Civitai file
name, plus the sidecars those ecosystems read:

* A1111 (``models/Stable-diffusion``, ``models/Lora``, ``models/VAE``, ``embeddings``):
  ``<base>.civitai.info`` (the standalone version object, as Civitai Helper writes it) and the
  A1111 ``<base>.json`` user metadata (activation text, preferred weight, sd version, notes).
* ComfyUI (``models/checkpoints``, ``models/loras``, ``models/vae``, ``models/embeddings``):
  LoRA Manager's ``<base>.metadata.json``.

Links are relative symlinks into the store by default (the blobs stay read-only); `hardlink`
makes hard links instead, for tools that do not follow symlinks.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, select
from sqlalchemy.orm import Session
from sqlmodel import col

from assetmgr.errors import AssetMgrError
from assetmgr.store.blobs import BlobStore, sanitize_filename
from catalog.models import LocalFile, Model, ModelFile, ModelVersion
from catalog.usermeta import UserMeta

LAYOUTS: dict[str, dict[str, str]] = {
    "a1111": {
        "Checkpoint": "models/Stable-diffusion",
        "LORA": "models/Lora",
        "LoCon": "models/Lora",
        "DoRA": "models/Lora",
        "VAE": "models/VAE",
        "TextualInversion": "embeddings",
        "Hypernetwork": "models/hypernetworks",
        "Controlnet": "models/ControlNet",
        "Upscaler": "models/ESRGAN",
        "Other": "models/Other",
    },
    "comfyui": {
        "Checkpoint": "models/checkpoints",
        "LORA": "models/loras",
        "LoCon": "models/loras",
        "DoRA": "models/loras",
        "VAE": "models/vae",
        "TextualInversion": "models/embeddings",
        "Hypernetwork": "models/hypernetworks",
        "Controlnet": "models/controlnet",
        "Upscaler": "models/upscale_models",
        "Other": "models/other",
    },
}


@dataclass
class ExportReport:
    written: list[dict[str, str]] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)


def _sd_version(base_model: str | None) -> str:
    text = (base_model or "").lower()
    if text.startswith("sd 1"):
        return "SD1"
    if text.startswith("sd 2"):
        return "SD2"
    if text.startswith(("sdxl", "pony", "illustrious", "noobai")):
        return "SDXL"
    return "Unknown"


def _activation_text(words: list[str]) -> str:
    # Civitai Helper's rule: entries that contain commas are joined with " || ".
    if words and "," in words[0]:
        return " || ".join(words)
    return ", ".join(words)


def _version_object(model: Model, version: ModelVersion) -> dict[str, Any]:
    """A standalone-shaped version (shape c) rebuilt from the catalog."""
    files = []
    for f in version.files:
        hashes = {
            k: v
            for k, v in (
                ("AutoV1", f.autov1),
                ("AutoV2", f.autov2),
                ("SHA256", f.sha256),
                ("CRC32", f.crc32),
                ("BLAKE3", f.blake3),
                ("AutoV3", f.autov3),
            )
            if v
        }
        files.append(
            {
                "id": f.id,
                "sizeKB": f.size_kb,
                "name": f.name,
                "type": f.type,
                "metadata": {"format": f.format, "size": f.size_variant, "fp": f.fp},
                "hashes": hashes,
                "primary": f.is_primary,
                "downloadUrl": f.download_url,
            }
        )
    return {
        "id": version.id,
        "modelId": model.id,
        "name": version.name,
        "baseModel": version.base_model,
        "baseModelType": version.base_model_type,
        "publishedAt": version.published_at.isoformat() if version.published_at else None,
        "trainedWords": [w.word for w in version.trained_words],
        "description": version.description_html,
        "air": version.air,
        "model": {"name": model.name, "type": model.type, "nsfw": model.nsfw, "poi": model.poi},
        "files": files,
        "downloadUrl": version.download_url,
    }


def _link(target: Path, link: Path, *, hardlink: bool) -> None:
    link.parent.mkdir(parents=True, exist_ok=True)
    if link.is_symlink() or link.exists():
        link.unlink()
    if hardlink:
        os.link(target, link)
    else:
        os.symlink(os.path.relpath(target, link.parent), link)


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False), encoding="utf-8")
    os.replace(tmp, path)


def export_library(
    engine: Engine, store: BlobStore, dest: Path, *, layout: str, hardlink: bool = False
) -> ExportReport:
    if layout not in LAYOUTS:
        raise AssetMgrError(f"unknown layout {layout!r}", hint="Use --layout a1111 or comfyui.")
    folders = LAYOUTS[layout]
    report = ExportReport()
    dest.mkdir(parents=True, exist_ok=True)
    used: set[Path] = set()
    with Session(engine) as session:
        rows = session.execute(
            select(LocalFile, ModelFile, ModelVersion, Model)
            .join(ModelFile, col(ModelFile.id) == col(LocalFile.file_id))
            .join(ModelVersion, col(ModelVersion.id) == col(ModelFile.version_id))
            .join(Model, col(Model.id) == col(ModelVersion.model_id))
            .where(col(LocalFile.state) == "verified")
            .order_by(col(Model.id), col(ModelVersion.id), col(ModelFile.id))
        ).all()
        for local, file, version, model in rows:
            if not local.sha256 or not store.has(local.sha256):
                report.skipped.append({"file_id": str(file.id), "reason": "blob missing"})
                continue
            folder = dest / folders.get(model.type, folders["Other"])
            name = sanitize_filename(file.name, fallback=f"{file.id}.safetensors")
            link = folder / name
            if link in used:  # two versions ship files with the same name
                link = folder / f"{Path(name).stem}_{file.id}{Path(name).suffix}"
            used.add(link)
            _link(store.blob_path(local.sha256), link, hardlink=hardlink)
            base = link.with_suffix("")
            words = [w.word for w in version.trained_words]
            meta = session.get(UserMeta, version.id)
            if layout == "a1111":
                if model.source == "civitai":
                    _write_json(Path(f"{base}.civitai.info"), _version_object(model, version))
                a1111: dict[str, Any] = {
                    "description": (meta.description if meta and meta.description else None)
                    or (model.description_text or ""),
                    "sd version": _sd_version(version.base_model),
                    "activation text": (
                        meta.activation_text
                        if meta and meta.activation_text
                        else _activation_text(words)
                    ),
                    "preferred weight": meta.preferred_weight
                    if meta and meta.preferred_weight is not None
                    else 0,
                    "notes": meta.notes if meta and meta.notes else "",
                }
                _write_json(Path(f"{base}.json"), a1111)
            else:
                lm: dict[str, Any] = {
                    "file_name": base.name,
                    "model_name": model.name,
                    "file_path": str(link).replace(os.sep, "/"),
                    "size": local.size_bytes,
                    "sha256": local.sha256.lower(),
                    "base_model": version.base_model,
                    "from_civitai": model.source == "civitai",
                    "civitai": _version_object(model, version) if model.source == "civitai" else {},
                    "tags": [t.tag.name for t in model.tag_links],
                    "notes": meta.notes if meta and meta.notes else "",
                    "autov3": (local.autov3 or "").lower() or None,
                }
                if meta and meta.preferred_weight is not None:
                    lm["usage_tips"] = json.dumps({"strength": meta.preferred_weight})
                _write_json(Path(f"{base}.metadata.json"), lm)
            report.written.append({"file_id": str(file.id), "path": str(link)})
    return report
