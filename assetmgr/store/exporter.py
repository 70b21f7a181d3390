"""`assetmgr export --layout a1111|comfyui DIR`: show the store to other UIs.

Every verified file gets a link in the folder the UI expects, named after the Civitai file
name, plus the sidecars those ecosystems read:

* A1111 (``models/Stable-diffusion``, ``models/Lora``, ``models/VAE``, ``embeddings``):
  ``<base>.civitai.info`` (the standalone version object, as Civitai Helper writes it) and the
  A1111 ``<base>.json`` user metadata (activation text, preferred weight, sd version, notes).
* ComfyUI (``models/checkpoints``, ``models/loras``, ``models/vae``, ``models/embeddings``):
  LoRA Manager's ``<base>.metadata.json``.
* Both: ``<base>.preview.png``, when the caller has a picture for the version (the image
  cache's, re-encoded as PNG), which A1111, Civitai Helper and LoRA Manager all show.

Links are relative symlinks into the store by default (the blobs stay read-only); `hardlink`
makes hard links instead, for tools that do not follow symlinks (or run as another user: the
store itself is private).

The target folder is the user's, so the export never follows what it did not create and never
replaces what it did not write (`SafeDir` does the file system part): a link anywhere inside
the target is refused, and a file in the way is an `ExportConflictError` unless `move_aside`
renames it to ``NAME.user-<time>``. ``.assetmgr-export.json`` in the target lists what the
export wrote (a link's text, a hard link's inode, a sidecar's SHA256); a re-run replaces only
entries that still match it, removes its own entries the store no longer has, and treats an
entry that changed since as the user's.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath
from typing import Any, Literal

from sqlalchemy import Engine, select
from sqlalchemy.orm import Session
from sqlmodel import col

from assetmgr.errors import AssetMgrError, StoreError
from assetmgr.store.blobs import BlobStore, sanitize_filename
from assetmgr.store.safedir import LinkInTargetError, SafeDir
from catalog.models import LocalFile, Model, ModelFile, ModelVersion
from catalog.usermeta import UserMeta

MANIFEST_NAME = ".assetmgr-export.json"
MANIFEST_FORMAT = 1
#: Sidecars and manifests bigger than this are not ours (we never write such sizes).
MAX_OWN_FILE_BYTES = 64 * 1024 * 1024

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


class ExportConflictError(StoreError):
    """Entries in the target that the export did not write (or that changed since)."""

    title = "File in the way"
    hint = (
        "Move or delete it, or rerun with --move-aside to rename such files to "
        "NAME.user-<time>; nothing was replaced."
    )

    def __init__(self, conflicts: list[tuple[Path, str]]) -> None:
        self.conflicts = conflicts
        path, reason = conflicts[0]
        more = f" (and {len(conflicts) - 1} more)" if len(conflicts) > 1 else ""
        super().__init__(f"{path} {reason}{more}")


class ExportLinkError(StoreError):
    """A hard-linked export across file systems."""

    title = "Cannot hard-link"
    hint = "Export onto the store's file system, or drop --hardlink to make symbolic links."


_NOT_OURS = "exists and was not written by assetmgr export"
_CHANGED = "was changed since the last export"


@dataclass
class ExportReport:
    written: list[dict[str, str]] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)
    moved_aside: list[dict[str, str]] = field(default_factory=list)
    """The user's entries renamed out of the way (``path`` -> ``moved_to``)."""
    removed: list[str] = field(default_factory=list)
    """Entries an earlier export wrote that the store no longer has."""

    def as_json(self) -> dict[str, Any]:
        return {
            "written": self.written,
            "skipped": self.skipped,
            "moved_aside": self.moved_aside,
            "removed": self.removed,
        }


@dataclass(frozen=True)
class _Entry:
    """One thing the export puts in the target, and what its manifest line says."""

    relative: PurePosixPath
    kind: Literal["symlink", "hardlink", "file"]
    record: dict[str, Any]
    source: Path | None = None
    data: bytes | None = None
    yields_to: int | None = None
    """For a preview: the catalog file it belongs to; a file of the user's in its place is
    kept and this entry dropped, instead of a conflict."""


def _file_entry(relative: PurePosixPath, data: Any) -> _Entry:
    return _bytes_entry(relative, json.dumps(data, indent=2, ensure_ascii=False).encode("utf-8"))


def _bytes_entry(relative: PurePosixPath, raw: bytes) -> _Entry:
    return _Entry(
        relative, "file", {"kind": "file", "sha256": hashlib.sha256(raw).hexdigest()}, data=raw
    )


def _link_entry(relative: PurePosixPath, blob: Path, root: Path, *, hardlink: bool) -> _Entry:
    real_blob = Path(os.path.realpath(blob))
    if hardlink:
        st = os.stat(real_blob)
        record = {"kind": "hardlink", "dev": st.st_dev, "ino": st.st_ino}
        return _Entry(relative, "hardlink", record, source=real_blob)
    target = os.path.relpath(real_blob, root / relative.parent)
    return _Entry(relative, "symlink", {"kind": "symlink", "target": target})


@dataclass(frozen=True)
class ExportPreview:
    """The picture a version's ``X.preview.png`` shows (PNG bytes) and its NSFW level."""

    png: bytes
    nsfw_level: int | None = None


PreviewSource = Callable[[int], ExportPreview | None]
"""A version id -> its preview, or None (`assetmgr.app.preview_files.export_previews`)."""


def _plan(
    engine: Engine,
    store: BlobStore,
    root: Path,
    *,
    layout: str,
    hardlink: bool,
    previews: PreviewSource | None = None,
) -> tuple[list[_Entry], ExportReport]:
    """Everything the export writes, computed from the catalog before anything is touched."""
    folders = LAYOUTS[layout]
    report = ExportReport()
    entries: list[_Entry] = []
    used: set[PurePosixPath] = {PurePosixPath(MANIFEST_NAME)}
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
            folder = PurePosixPath(folders.get(model.type, folders["Other"]))
            name = sanitize_filename(file.name, fallback=f"{file.id}.safetensors")
            stem, suffix = PurePosixPath(name).stem, PurePosixPath(name).suffix
            sidecars: tuple[str, ...] = (
                (".civitai.info", ".json") if layout == "a1111" else (".metadata.json",)
            )
            preview = previews(version.id) if previews is not None else None
            if preview is not None:
                sidecars += (".preview.png",)
            chosen: list[PurePosixPath] | None = None
            for candidate_stem in (stem, f"{stem}_{file.id}"):
                paths = [folder / f"{candidate_stem}{suffix}"]
                paths += [folder / f"{candidate_stem}{ext}" for ext in sidecars]
                if len(set(paths)) == len(paths) and not used.intersection(paths):
                    chosen = paths
                    break
            if chosen is None:
                report.skipped.append({"file_id": str(file.id), "reason": "name collision"})
                continue
            used.update(chosen)
            link = chosen[0]
            entries.append(
                _link_entry(link, store.blob_path(local.sha256), root, hardlink=hardlink)
            )
            meta = session.get(UserMeta, version.id)
            if layout == "a1111":
                if model.source == "civitai":
                    entries.append(_file_entry(chosen[1], _version_object(model, version)))
                entries.append(_file_entry(chosen[2], _a1111_meta(model, version, meta)))
            else:
                lm = _lora_manager_meta(model, version, local, meta, root / link)
                if preview is not None:
                    lm["preview_url"] = str(root / chosen[-1]).replace(os.sep, "/")
                    lm["preview_nsfw_level"] = preview.nsfw_level or 0
                entries.append(_file_entry(chosen[1], lm))
            if preview is not None:
                entries.append(replace(_bytes_entry(chosen[-1], preview.png), yields_to=file.id))
            report.written.append({"file_id": str(file.id), "path": str(root / link)})
    return entries, report


def _a1111_meta(model: Model, version: ModelVersion, meta: UserMeta | None) -> dict[str, Any]:
    words = [w.word for w in version.trained_words]
    return {
        "description": (meta.description if meta and meta.description else None)
        or (model.description_text or ""),
        "sd version": _sd_version(version.base_model),
        "activation text": (
            meta.activation_text if meta and meta.activation_text else _activation_text(words)
        ),
        "preferred weight": meta.preferred_weight
        if meta and meta.preferred_weight is not None
        else 0,
        "notes": meta.notes if meta and meta.notes else "",
    }


def _lora_manager_meta(
    model: Model, version: ModelVersion, local: LocalFile, meta: UserMeta | None, link: Path
) -> dict[str, Any]:
    lm: dict[str, Any] = {
        "file_name": link.stem,
        "model_name": model.name,
        "file_path": str(link).replace(os.sep, "/"),
        "size": local.size_bytes,
        "sha256": (local.sha256 or "").lower(),
        "base_model": version.base_model,
        "from_civitai": model.source == "civitai",
        "civitai": _version_object(model, version) if model.source == "civitai" else {},
        "tags": [t.tag.name for t in model.tag_links],
        "notes": meta.notes if meta and meta.notes else "",
        "autov3": (local.autov3 or "").lower() or None,
    }
    if meta and meta.preferred_weight is not None:
        lm["usage_tips"] = json.dumps({"strength": meta.preferred_weight})
    return lm


# --- the target folder ----------------------------------------------------------------------


def _state(
    folder: SafeDir | None, name: str, recorded: dict[str, Any] | None
) -> Literal["absent", "ours", "theirs", "changed"]:
    """Whether `name` is missing, still what the manifest says we wrote, or the user's."""
    st = folder.lstat(name) if folder is not None else None
    if st is None or folder is None:
        return "absent"
    if recorded is None:
        return "theirs"
    kind = recorded.get("kind")
    if kind == "symlink":
        ours = stat.S_ISLNK(st.st_mode) and folder.readlink(name) == recorded.get("target")
    elif kind == "hardlink":
        ours = stat.S_ISREG(st.st_mode) and (st.st_dev, st.st_ino) == (
            recorded.get("dev"),
            recorded.get("ino"),
        )
    elif kind == "file" and stat.S_ISREG(st.st_mode) and st.st_nlink == 1:
        data = folder.read_regular(name, limit=MAX_OWN_FILE_BYTES)
        ours = data is not None and hashlib.sha256(data).hexdigest() == recorded.get("sha256")
    else:
        ours = False
    return "ours" if ours else "changed"


def _valid_relative(text: str) -> PurePosixPath | None:
    path = PurePosixPath(text)
    if path.is_absolute() or not path.parts or any(p in ("", ".", "..") for p in path.parts):
        return None
    return path


def _read_manifest(root: SafeDir) -> tuple[dict[str, dict[str, Any]], dict[str, Any] | None, bool]:
    """(what an earlier export wrote, the manifest's own record, whether it is someone else's).

    The manifest is ours when it parses as one; its record (the SHA256 of its bytes now) lets
    it be replaced like any other entry of ours.
    """
    if root.lstat(MANIFEST_NAME) is None:
        return {}, None, False
    raw = root.read_regular(MANIFEST_NAME, limit=MAX_OWN_FILE_BYTES)
    try:
        data = json.loads(raw) if raw is not None else None
    except ValueError:
        data = None
    if raw is None or not isinstance(data, dict) or data.get("assetmgr_export") != MANIFEST_FORMAT:
        return {}, None, True
    files = data.get("files")
    out: dict[str, dict[str, Any]] = {}
    if isinstance(files, dict):
        for key, record in files.items():
            if isinstance(key, str) and isinstance(record, dict) and _valid_relative(key):
                out[key] = record
    return out, {"kind": "file", "sha256": hashlib.sha256(raw).hexdigest()}, False


class _Writer:
    """Puts entries into the target; one open directory per folder."""

    def __init__(self, root: SafeDir, *, move_aside: bool, report: ExportReport) -> None:
        self.root = root
        self.move_aside = move_aside
        self.report = report
        self.folders: dict[PurePosixPath, SafeDir | None] = {}

    def folder(self, relative: PurePosixPath, *, create: bool) -> SafeDir | None:
        if relative == PurePosixPath("."):
            return self.root
        known = self.folders.get(relative)
        if known is None and (create or relative not in self.folders):
            known = self.root.subdir(relative, create=create)
            self.folders[relative] = known
        return known

    def close(self) -> None:
        for folder in self.folders.values():
            if folder is not None:
                folder.close()

    def put(self, entry: _Entry, recorded: dict[str, Any] | None) -> None:
        folder = self.folder(entry.relative.parent, create=True)
        if folder is None:  # created above, so never reached
            raise FileNotFoundError(f"export folder {entry.relative.parent} was not created")
        name = entry.relative.name
        state = _state(folder, name, recorded)
        if state == "ours" and recorded == entry.record:
            return  # already exactly this
        if state in ("theirs", "changed") and not self.move_aside:
            reason = _NOT_OURS if state == "theirs" else _CHANGED
            raise ExportConflictError([(folder.path / name, reason)])
        temp = self._make_temp(folder, entry)
        try:
            if state == "ours":
                folder.replace(temp, name)
                return
            if state != "absent":
                aside = folder.move_aside(name)
                self.report.moved_aside.append(
                    {"path": str(folder.path / name), "moved_to": str(folder.path / aside)}
                )
            try:
                folder.place_new(temp, name)
            except FileExistsError:
                raise ExportConflictError([(folder.path / name, _NOT_OURS)]) from None
        finally:
            folder.discard(temp)

    @staticmethod
    def _make_temp(folder: SafeDir, entry: _Entry) -> str:
        name = entry.relative.name
        if entry.kind == "symlink":
            return folder.symlink_temp(name, str(entry.record["target"]))
        if entry.kind == "file" and entry.data is not None:
            return folder.write_temp(name, entry.data)
        if entry.source is None:  # every entry is made with what its kind needs: never reached
            raise ValueError(f"export entry {entry.relative} ({entry.kind}) has nothing to write")
        try:
            return folder.hardlink_temp(name, entry.source)
        except OSError as exc:
            if exc.errno == errno.EXDEV:
                raise ExportLinkError(
                    f"{folder.path} is on another file system than the store"
                ) from None
            raise

    def remove_stale(self, relative: PurePosixPath, recorded: dict[str, Any]) -> None:
        try:
            folder = self.folder(relative.parent, create=False)
        except LinkInTargetError:
            return  # never reach through a link, not even to clean up
        if folder is not None and _state(folder, relative.name, recorded) == "ours":
            folder.unlink(relative.name)
            self.report.removed.append(str(folder.path / relative.name))


def _manifest_entry(files: dict[str, dict[str, Any]], layout: str) -> _Entry:
    data = {"assetmgr_export": MANIFEST_FORMAT, "layout": layout, "files": files}
    return _file_entry(PurePosixPath(MANIFEST_NAME), data)


def export_library(
    engine: Engine,
    store: BlobStore,
    dest: Path,
    *,
    layout: str,
    hardlink: bool = False,
    move_aside: bool = False,
    previews: PreviewSource | None = None,
) -> ExportReport:
    """Write the store into `dest` in `layout`; see the module docstring for the rules.

    `previews` gives a version's picture, written as ``X.preview.png`` beside its file.

    Raises:
        ExportConflictError: an entry in the way that the export did not write (checked for
            every entry before anything is written), unless `move_aside`.
        LinkInTargetError: a symbolic link inside `dest` where the export would go through it.
    """
    if layout not in LAYOUTS:
        raise AssetMgrError(f"unknown layout {layout!r}", hint="Use --layout a1111 or comfyui.")
    with SafeDir.open_root(dest, create=True) as root:
        entries, report = _plan(
            engine, store, root.path, layout=layout, hardlink=hardlink, previews=previews
        )
        earlier, manifest_record, foreign_manifest = _read_manifest(root)
        writer = _Writer(root, move_aside=move_aside, report=report)
        try:
            conflicts: list[tuple[Path, str]] = []
            if foreign_manifest:
                conflicts.append((root.path / MANIFEST_NAME, _NOT_OURS))
            for entry in list(entries):
                folder = writer.folder(entry.relative.parent, create=False)
                state = _state(folder, entry.relative.name, earlier.get(str(entry.relative)))
                if state in ("theirs", "changed") and entry.yields_to is not None:
                    entries.remove(entry)  # the user's own preview stays, and is theirs
                    report.skipped.append(
                        {
                            "file_id": str(entry.yields_to),
                            "path": str(root.path / entry.relative),
                            "reason": "a preview the export did not write is there; kept",
                        }
                    )
                elif state in ("theirs", "changed"):
                    reason = _NOT_OURS if state == "theirs" else _CHANGED
                    conflicts.append((root.path / entry.relative, reason))
            if conflicts and not move_aside:
                raise ExportConflictError(conflicts)
            # The manifest goes first and names old and new entries, so an interrupted export
            # still recognises everything it may have written.
            planned = {str(e.relative): e.record for e in entries}
            pending = _manifest_entry({**earlier, **planned}, layout)
            writer.put(pending, manifest_record)
            for entry in entries:
                writer.put(entry, earlier.get(str(entry.relative)))
            for key, recorded in earlier.items():
                relative = _valid_relative(key)
                if key not in planned and relative is not None:
                    writer.remove_stale(relative, recorded)
            writer.put(_manifest_entry(planned, layout), pending.record)
        finally:
            writer.close()
    return report
