"""`assetmgr import DIR`: bring an existing A1111 / ComfyUI models folder into the store.

Nothing in the folder is modified: files are hardlinked (same volume) or copied into the blob
store, and sidecars are only read. For each model file:

1. the safety policy: safetensors headers are validated; pickle formats are skipped unless
   allowed (and then stored, never unpickled);
2. the six hashes, cached by (device, inode, size, mtime) so a second import is quick;
3. identity: a ``.civitai.info`` sidecar (Civitai Helper; ``{}`` means "not on Civitai"), a
   LoRA Manager ``.metadata.json``, or else one bulk ``POST /model-versions/by-hash`` for all
   unidentified files;
4. files Civitai does not know become local models (negative ids, ``source='local'``) named
   after the file, with type and base model read from the safetensors header;
5. A1111 ``.json`` sidecars (activation text, preferred weight, notes) and LoRA Manager usage
   tips become `UserMeta`.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine, update
from sqlalchemy.orm import Session
from sqlmodel import col

from assetmgr.errors import AssetMgrError, CivitaiError
from assetmgr.store import records
from assetmgr.store.blobs import BlobStore, sanitize_filename, sanitize_relative_path
from assetmgr.store.detect import detect
from assetmgr.store.hashing import FileHashes, HashCache, cached_hashes
from assetmgr.store.safetensors_check import (
    PICKLE_SUFFIXES,
    InvalidSafetensorsError,
    detect_format,
    validate_safetensors,
)
from catalog import repo
from catalog.civitai import types as api
from catalog.db import session_scope
from catalog.models import Model, ModelFile
from catalog.usermeta import UserMeta

if TYPE_CHECKING:
    from catalog.civitai.client import CivitaiClient

log = logging.getLogger(__name__)

MODEL_SUFFIXES = frozenset({".safetensors", ".sft"}) | PICKLE_SUFFIXES
MAX_SIDECAR_BYTES = 4 * 1024 * 1024


@dataclass
class ImportedFile:
    path: str
    sha256: str
    file_id: int
    version_id: int
    model_id: int
    source: str
    """``civitai`` (identified by hash or sidecar) or ``local`` (unknown to Civitai)."""


@dataclass
class ImportReport:
    scanned: int = 0
    imported: list[ImportedFile] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return {
            "scanned": self.scanned,
            "imported": [f.__dict__ for f in self.imported],
            "skipped": self.skipped,
            "civitai": sum(1 for f in self.imported if f.source == "civitai"),
            "local": sum(1 for f in self.imported if f.source == "local"),
        }


def local_id(sha256: str) -> int:
    """A stable negative id for a local-only model/version/file (re-imports reuse it).

    It fits a 32-bit INTEGER column (PostgreSQL); `_add_local_model` probes downwards on the
    rare collision with another file's id.
    """
    return -(int(sha256[:8], 16) % (2**31 - 1) + 1)


def _walk(folder: Path) -> Iterator[Path]:
    for root, dirs, files in os.walk(folder, followlinks=False):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            path = Path(root) / name
            # Symlinked files are read through (a library of links is common); symlinked
            # folders are not walked, so a link loop or a link to / cannot run away.
            if path.suffix.lower() in MODEL_SUFFIXES and path.is_file():
                yield path


def _read_json(path: Path) -> Any:
    try:
        if not path.is_file() or path.stat().st_size > MAX_SIDECAR_BYTES:
            return None
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        log.info("ignoring unreadable sidecar %s", path)
        return None


def _stem(path: Path) -> Path:
    return path.with_suffix("")


@dataclass
class _Candidate:
    path: Path
    hashes: FileHashes
    kind: str
    detected: tuple[str, str]
    civitai_info: api.ModelVersion | None = None
    civitai_says_unknown: bool = False
    a1111: dict[str, Any] | None = None
    lora_manager: dict[str, Any] | None = None
    stat: os.stat_result | None = None
    """The file's stat from before it was hashed: the store refuses it if it changed since."""


def _read_sidecars(c: _Candidate) -> None:
    stem = _stem(c.path)
    info = _read_json(Path(f"{stem}.civitai.info"))
    if isinstance(info, dict):
        if not info:
            c.civitai_says_unknown = True
        else:
            try:
                c.civitai_info = api.ModelVersion.model_validate(info)
            except Exception:  # a damaged sidecar only loses its hint
                log.info("ignoring malformed %s.civitai.info", stem)
    meta = _read_json(Path(f"{stem}.json"))
    if isinstance(meta, dict):
        c.a1111 = meta
    lm = _read_json(Path(f"{stem}.metadata.json"))
    if isinstance(lm, dict):
        c.lora_manager = lm
        civ = lm.get("civitai")
        if (
            c.civitai_info is None
            and isinstance(civ, dict)
            and civ.get("id")
            and civ.get("modelId")
        ):
            try:
                c.civitai_info = api.ModelVersion.model_validate(civ)
            except Exception:
                log.info("ignoring malformed civitai block in %s.metadata.json", stem)


def _matching_file(version: api.ModelVersion, sha256: str) -> api.ModelFile | None:
    for f in version.files:
        if f.sha256 == sha256:
            return f
    return None


def _user_meta(c: _Candidate) -> dict[str, Any] | None:
    out: dict[str, Any] = {}
    if c.a1111:
        a = c.a1111
        if isinstance(a.get("activation text"), str) and a["activation text"].strip():
            out["activation_text"] = a["activation text"][:10_000]
        weight = a.get("preferred weight")
        if isinstance(weight, int | float) and not isinstance(weight, bool):
            out["preferred_weight"] = float(weight)
        for src, dst in (
            ("notes", "notes"),
            ("description", "description"),
            ("negative text", "negative_text"),
            ("sd version", "sd_version"),
        ):
            if isinstance(a.get(src), str) and a[src].strip():
                out[dst] = a[src][:100_000]
        out["source"] = "a1111-json"
    if c.lora_manager:
        lm = c.lora_manager
        tips = lm.get("usage_tips")
        if isinstance(tips, str):
            try:
                tips = json.loads(tips)
            except ValueError:
                tips = None
        if isinstance(tips, dict) and "preferred_weight" not in out:
            strength = tips.get("strength")
            if isinstance(strength, int | float) and not isinstance(strength, bool):
                out["preferred_weight"] = float(strength)
        if isinstance(lm.get("notes"), str) and lm["notes"].strip() and "notes" not in out:
            out["notes"] = lm["notes"][:100_000]
        out.setdefault("source", "lora-manager")
    return out if len(out) > 1 else None


def import_folder(
    engine: Engine,
    store: BlobStore,
    client: CivitaiClient | None,
    folder: Path,
    *,
    mode: str = "auto",
    allow_pickle: bool = False,
    progress: Callable[[int, int, str], None] | None = None,
    cancel: threading.Event | None = None,
) -> ImportReport:
    """Import every model file under `folder`; see the module docstring."""
    if not folder.is_dir():
        raise AssetMgrError(
            f"{folder} is not a folder", hint="Pass the models folder of A1111 or ComfyUI."
        )
    store.ensure()
    cache = HashCache(store.root / "hash-cache.sqlite3")
    report = ImportReport()
    paths = list(_walk(folder))
    candidates: list[_Candidate] = []
    for index, path in enumerate(paths):
        if cancel is not None and cancel.is_set():
            break
        report.scanned += 1
        if progress is not None:
            progress(index, len(paths), str(path))
        kind = detect_format(path)
        suffix = path.suffix.lower()
        detected = ("Other", "Other")
        if suffix in PICKLE_SUFFIXES or kind == "pickle":
            if not allow_pickle:
                report.skipped.append(
                    {"path": str(path), "reason": "pickle format refused (use --allow-pickle)"}
                )
                continue
            kind = "pickle"
        elif kind != "safetensors":
            report.skipped.append(
                {"path": str(path), "reason": f"not a valid safetensors file ({kind})"}
            )
            continue
        else:
            try:
                info = validate_safetensors(path)
            except InvalidSafetensorsError as exc:
                report.skipped.append({"path": str(path), "reason": exc.message})
                continue
            d = detect(info)
            detected = (d.model_type, d.base_model)
        before = os.stat(path)
        hashes = cached_hashes(path, cache, cancel=cancel)
        cand = _Candidate(path, hashes, kind, detected, stat=before)
        _read_sidecars(cand)
        candidates.append(cand)

    # Identify by hash in one bulk request, for files no sidecar identified.
    unidentified = [c for c in candidates if c.civitai_info is None and not c.civitai_says_unknown]
    by_sha: dict[str, api.ModelVersion] = {}
    if unidentified and client is not None:
        try:
            answers = client.get_versions_by_hashes([c.hashes.sha256 for c in unidentified])
            for answer in answers:
                for f in answer.files:
                    if f.sha256:
                        by_sha.setdefault(f.sha256, answer)
        except CivitaiError as exc:
            log.warning(
                "Civitai lookup failed (%s); importing unknown files as local models", exc.message
            )
    now = datetime.now(UTC)
    for c in candidates:
        sha = c.hashes.sha256.upper()
        version: api.ModelVersion | None = (
            c.civitai_info if c.civitai_info is not None else by_sha.get(sha)
        )
        matched = _matching_file(version, sha) if version is not None else None
        with session_scope(engine, write=True) as session:
            if version is not None and matched is not None and version.model_id is not None:
                repo.upsert_version(session, version, seen_at=now)
                file_id, version_id, model_id, source = (
                    matched.id,
                    version.id,
                    version.model_id,
                    "civitai",
                )
            else:
                file_id, version_id, model_id = _add_local_model(session, c, now)
                source = "local"
            placed = store.import_file(c.path, sha, mode=mode, expected_stat=c.stat)
            blob = placed.path
            model_type = session.get(Model, model_id)
            store.link_name(
                sha,
                sanitize_relative_path(
                    [
                        model_type.type if model_type else "Other",
                        c.detected[1]
                        if source == "local"
                        else (version.base_model if version else None) or "unknown",
                        f"{file_id}-{sanitize_filename(c.path.name)}",
                    ]
                ),
            )
            records.set_local_state(
                session,
                file_id=file_id,
                sha256=sha,
                state="verified",
                path=blob,
                hashes=c.hashes,
                fingerprint=placed.fingerprint,
            )
            meta = _user_meta(c)
            if meta is not None:
                row = session.get(UserMeta, version_id) or UserMeta(version_id=version_id)
                for key, value in meta.items():
                    setattr(row, key, value)
                row.updated_at = now
                session.add(row)
        store.record_provenance(
            {
                "event": "import",
                "source_path": str(c.path),
                "file_id": file_id,
                "version_id": version_id,
                "computed": c.hashes.as_civitai_dict(),
                "expected": {"SHA256": matched.sha256} if matched is not None else None,
                "result": "verified",
                "path": str(blob),
                "stored_as": placed.method,
                "identified_by": source,
            }
        )
        report.imported.append(
            ImportedFile(str(c.path), sha, file_id, version_id, model_id, source)
        )
    if progress is not None:
        progress(len(paths), len(paths), "")
    return report


def _add_local_model(session: Session, c: _Candidate, now: datetime) -> tuple[int, int, int]:
    """Catalog a file Civitai does not know, named after the file; ids are stable per hash."""
    sha = c.hashes.sha256.upper()
    new_id = local_id(sha)
    while True:
        existing = session.get(ModelFile, new_id)
        if existing is None:
            break
        if (existing.sha256 or "").upper() == sha:
            version = existing.version
            return existing.id, version.id, version.model_id
        new_id = new_id - 1 if new_id > -(2**31) else -1
    model_type, base_model = c.detected
    words: list[str] = []
    if c.a1111 and isinstance(c.a1111.get("activation text"), str):
        words = [w.strip() for w in c.a1111["activation text"].split(",") if w.strip()][:20]
    name = c.path.stem[:200] or f"local-{sha[:10]}"
    payload = api.Model.model_validate(
        {
            "id": new_id,
            "name": name,
            "type": model_type,
            "description": None,
            "tags": ["local"],
            "modelVersions": [
                {
                    "id": new_id,
                    "name": "local",
                    "baseModel": base_model,
                    "trainedWords": words,
                    "files": [
                        {
                            "id": new_id,
                            "name": sanitize_filename(c.path.name),
                            "sizeKB": c.hashes.size / 1024,
                            "type": "Model",
                            "primary": True,
                            "metadata": {
                                "format": "SafeTensor"
                                if c.kind == "safetensors"
                                else "PickleTensor"
                            },
                            "hashes": c.hashes.as_civitai_dict(),
                        }
                    ],
                }
            ],
        }
    )
    repo.upsert_models(session, [payload], seen_at=now)
    session.execute(update(Model).where(col(Model.id) == new_id).values(source="local"))
    return new_id, new_id, new_id


__all__ = ["ImportReport", "ImportedFile", "import_folder", "local_id"]
