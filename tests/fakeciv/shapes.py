"""JSON shapes of Civitai's API answers, rendered from `tests.fakeciv.data` records.

Three version shapes (doc 2.2):

* (a) `list_model()` / `list_version()`: items of ``GET /api/v1/models``;
* (b) `detail_model()`: ``GET /api/v1/models/{id}`` with ``removeEmpty`` on versions
  (null/empty-array keys deleted, file metadata without nulls, images without ``id``);
* (c) `standalone_version()`: ``GET /api/v1/model-versions/{id}`` and by-hash
  (``primary`` true/false on every file, ``model{...}``, ``air``).

Hostile payloads: `HOSTILE_KINDS` names the corruptions `FakeCatalog.set_hostile()` accepts.
Two of them (``very_deep``, ``bad_utf8``) cannot be built as Python objects; they leave a marker
string that `encode_json()` swaps for raw bytes.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from tests.fakeciv.data import FakeCatalog, FakeFile, FakeImage, FakeModel, FakeVersion, air

CIVITAI_IMAGE_PREFIX = "https://image.civitai.com/"


@dataclass(slots=True)
class RenderContext:
    """Per-request rendering options."""

    base_url: str
    """Origin used in ``downloadUrl`` (the fake's own API origin)."""
    image_prefix: str | None = None
    """When set, replaces ``https://image.civitai.com/`` in image URLs (fake serves them)."""
    nsfw: bool = True
    """False: `/models` keeps only images with the PG bit."""
    primary_only: bool = False
    max_images: int = 20


def image_url(url: str, ctx: RenderContext) -> str:
    if ctx.image_prefix and url.startswith(CIVITAI_IMAGE_PREFIX):
        return ctx.image_prefix + url[len(CIVITAI_IMAGE_PREFIX) :]
    return url


def download_url(ctx: RenderContext, v: FakeVersion, f: FakeFile, ftype: str, primary: bool) -> str:
    """Per-file URL (doc 2.6): bare for the primary, ``?type=&format=&size=&fp=`` otherwise."""
    url = f"{ctx.base_url}/api/download/models/{v.id}"
    if primary:
        return url
    params = [("type", ftype)]
    for key in ("format", "size", "fp", "quantType"):
        value = f.metadata.get(key)
        if value is not None and not (key == "format" and ftype == "Training Data"):
            params.append((key, str(value)))
    return url + "?" + "&".join(f"{k}={quote(val, safe='')}" for k, val in params)


def _files(
    cat: FakeCatalog, m: FakeModel, v: FakeVersion, ctx: RenderContext
) -> list[tuple[FakeFile, str, bool]]:
    if m.mode in ("Archived", "TakenDown"):
        return []
    primary = v.primary_file()
    out = []
    for f in cat.version_files(v):
        is_primary = primary is not None and f.id == primary.id
        if ctx.primary_only and not is_primary:
            continue
        out.append((f, cat.file_type_in(v, f), is_primary))
    return out


def _list_file(
    f: FakeFile, ftype: str, primary: bool, v: FakeVersion, ctx: RenderContext
) -> dict[str, Any]:
    d: dict[str, Any] = {
        "id": f.id,
        "sizeKB": f.size_kb,
        "name": f.display_name,
        "overrideName": f.override_name,
        "type": ftype,
        "pickleScanResult": f.pickle_scan_result,
        "pickleScanMessage": f.pickle_scan_message,
        "virusScanResult": f.virus_scan_result,
        "virusScanMessage": f.virus_scan_message,
        "scannedAt": f.scanned_at,
        "metadata": dict(f.metadata),
        "hashes": dict(f.hashes),
        "downloadUrl": download_url(ctx, v, f, ftype, primary),
    }
    if primary:
        d["primary"] = True
    return d


def _standalone_file(
    f: FakeFile, ftype: str, primary: bool, v: FakeVersion, ctx: RenderContext, with_override: bool
) -> dict[str, Any]:
    d: dict[str, Any] = {"id": f.id, "sizeKB": f.size_kb, "name": f.display_name}
    if with_override:
        d["overrideName"] = f.override_name
    d.update(
        {
            "type": ftype,
            "pickleScanResult": f.pickle_scan_result,
            "pickleScanMessage": f.pickle_scan_message,
            "virusScanResult": f.virus_scan_result,
            "virusScanMessage": f.virus_scan_message,
            "scannedAt": f.scanned_at,
            "metadata": {
                "format": f.metadata.get("format"),
                "size": f.metadata.get("size"),
                "fp": f.metadata.get("fp"),
            },
            "hashes": dict(f.hashes),
            "primary": primary,
            "downloadUrl": download_url(ctx, v, f, ftype, primary),
        }
    )
    return d


def _list_image(i: FakeImage, ctx: RenderContext, with_id: bool) -> dict[str, Any]:
    d: dict[str, Any] = {"id": i.id} if with_id else {}
    d.update(
        {
            "url": image_url(i.url, ctx),
            "nsfwLevel": i.nsfw_level,
            "width": i.width,
            "height": i.height,
            "hash": i.hash,
            "type": i.type,
            "minor": i.minor,
            "poi": i.poi,
            "hasMeta": i.has_meta,
            "hasPositivePrompt": i.has_positive_prompt,
            "onSite": i.on_site,
            "remixOfId": i.remix_of_id,
        }
    )
    if i.overrides and "list" in i.overrides:
        d.update(i.overrides["list"])
    return d


def _standalone_image(i: FakeImage, ctx: RenderContext) -> dict[str, Any]:
    d = {
        "url": image_url(i.url, ctx),
        "nsfwLevel": i.nsfw_level,
        "width": i.width,
        "height": i.height,
        "hash": i.hash,
        "type": i.type,
        "metadata": {"hash": i.hash, "size": i.size, "width": i.width, "height": i.height},
        "minor": i.minor,
        "poi": i.poi,
        "meta": i.meta,
        "availability": i.availability,
        "hasMeta": i.has_meta,
        "hasPositivePrompt": i.has_positive_prompt,
        "onSite": i.on_site,
        "remixOfId": i.remix_of_id,
    }
    if i.overrides and "standalone" in i.overrides:
        d.update(i.overrides["standalone"])
    return d


def _images(m: FakeModel, v: FakeVersion, ctx: RenderContext, limit: int) -> list[FakeImage]:
    if m.mode == "TakenDown":
        return []
    images = v.images if ctx.nsfw else [i for i in v.images if i.nsfw_level & 1]
    return images[:limit]


def version_index(m: FakeModel, v: FakeVersion) -> int:
    return m.versions.index(v)


def list_version(
    cat: FakeCatalog, m: FakeModel, v: FakeVersion, ctx: RenderContext
) -> dict[str, Any]:
    """Shape (a)."""
    d: dict[str, Any] = {
        "id": v.id,
        "index": version_index(m, v),
        "name": v.name,
        "baseModel": v.base_model,
        "baseModelType": v.base_model_type,
        "publishedAt": v.published_at,
        "flags": v.flags,
        "availability": v.availability,
        "nsfwLevel": v.nsfw_level,
        "description": v.description,
        "trainedWords": list(v.trained_words),
        "vaeId": v.vae_id,
    }
    if v.early_access_deadline:
        d["earlyAccessDeadline"] = v.early_access_deadline
    d["paidAccess"] = v.paid_access
    d["stats"] = {
        "downloadCount": v.stats.get("downloadCount"),
        "thumbsUpCount": v.stats.get("thumbsUpCount"),
        "thumbsDownCount": v.stats.get("thumbsDownCount"),
    }
    d["supportsGeneration"] = v.supports_generation
    d["files"] = [_list_file(f, t, p, v, ctx) for f, t, p in _files(cat, m, v, ctx)]
    d["images"] = [_list_image(i, ctx, True) for i in _images(m, v, ctx, ctx.max_images)]
    if m.mode is None:
        d["downloadUrl"] = f"{ctx.base_url}/api/download/models/{v.id}"
    return _hostile(cat.hostile_versions.get(v.id), d, "version")


def _model_head(m: FakeModel, versions: list[FakeVersion]) -> dict[str, Any]:
    d: dict[str, Any] = {
        "id": m.id,
        "name": m.name,
        "description": m.description,
        "allowNoCredit": m.allow_no_credit,
        "allowCommercialUse": "{" + ",".join(m.allow_commercial_use) + "}",
        "allowDerivatives": m.allow_derivatives,
        "allowDifferentLicense": m.allow_different_license,
        "type": m.type,
        "minor": m.minor,
        "sfwOnly": m.sfw_only,
        "poi": m.poi,
        "nsfw": m.nsfw,
        "nsfwLevel": m.nsfw_level,
    }
    if m.mode is not None:
        d["mode"] = m.mode
    bases: list[str] = []
    for v in versions:
        if v.base_model not in bases:
            bases.append(v.base_model)
    d.update(
        {
            "availability": m.availability,
            "userId": m.user_id,
            "baseModels": bases,
            "cosmetic": m.cosmetic,
            "supportsGeneration": any(v.supports_generation for v in versions),
            "stats": dict(m.stats),
        }
    )
    if m.creator is not None:
        d["creator"] = dict(m.creator)
    d["tags"] = list(m.tags)
    return d


def list_model(
    cat: FakeCatalog, m: FakeModel, versions: list[FakeVersion], ctx: RenderContext
) -> dict[str, Any]:
    """A `/models` item (shape a) showing `versions`."""
    d = _model_head(m, versions)
    d["modelVersions"] = [list_version(cat, m, v, ctx) for v in versions]
    return _hostile(cat.hostile.get(m.id), d, "model")


def _remove_empty(d: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if v is not None and v != []}


def detail_model(cat: FakeCatalog, m: FakeModel, ctx: RenderContext) -> dict[str, Any]:
    """`/models/{id}` body (shape b)."""
    versions = [v for v in m.versions if v.status == "Published"]
    d = _model_head(m, versions)
    out_versions = []
    for v in versions:
        vd: dict[str, Any] = {
            "id": v.id,
            "index": version_index(m, v),
            "name": v.name,
            "baseModel": v.base_model,
            "baseModelType": v.base_model_type,
            "createdAt": v.created_at,
            "publishedAt": v.published_at,
            "status": v.status,
            "flags": v.flags,
            "availability": v.availability,
            "nsfwLevel": v.nsfw_level,
            "description": v.description,
            "trainedWords": list(v.trained_words),
            "vaeId": v.vae_id,
            "earlyAccessDeadline": v.early_access_deadline,
            "paidAccess": v.paid_access,
            "covered": v.supports_generation,
            "stats": {
                "downloadCount": v.stats.get("downloadCount"),
                "thumbsUpCount": v.stats.get("thumbsUpCount"),
                "thumbsDownCount": v.stats.get("thumbsDownCount"),
            },
        }
        files = []
        for f, t, p in _files(cat, m, v, ctx):
            fd = _list_file(f, t, p, v, ctx)
            fd["metadata"] = {k: x for k, x in fd["metadata"].items() if x is not None}
            files.append(fd)
        vd["files"] = files
        vd["images"] = [_list_image(i, ctx, False) for i in _images(m, v, ctx, ctx.max_images)]
        vd["downloadUrl"] = f"{ctx.base_url}/api/download/models/{v.id}" if m.mode is None else None
        out_versions.append(_hostile(cat.hostile_versions.get(v.id), _remove_empty(vd), "version"))
    d["modelVersions"] = out_versions
    return _hostile(cat.hostile.get(m.id), d, "model")


def standalone_version(
    cat: FakeCatalog, v: FakeVersion, ctx: RenderContext, *, with_override_name: bool = False
) -> dict[str, Any]:
    """`/model-versions/{id}` (and, with `with_override_name`, by-hash) body (shape c)."""
    m = cat.models[v.model_id]
    parent: dict[str, Any] = {"name": m.name, "type": m.type, "nsfw": m.nsfw, "poi": m.poi}
    if m.mode is not None:
        parent["mode"] = m.mode
    d: dict[str, Any] = {
        "id": v.id,
        "modelId": m.id,
        "name": v.name,
        "nsfwLevel": v.nsfw_level,
        "createdAt": v.created_at,
        "updatedAt": v.updated_at,
        "status": v.status,
        "publishedAt": v.published_at,
        "trainedWords": list(v.trained_words),
        "trainingStatus": v.training_status,
        "trainingDetails": v.training_details,
        "baseModel": v.base_model,
        "baseModelType": v.base_model_type,
        "description": v.description,
        "uploadType": v.upload_type,
        "usageControl": v.usage_control,
        "licensingFee": v.licensing_fee,
        "paidAccess": v.paid_access,
        "air": air(m, v),
        "stats": {
            "downloadCount": v.stats.get("downloadCount"),
            "thumbsUpCount": v.stats.get("thumbsUpCount"),
        },
        "model": parent,
        "files": [
            _standalone_file(f, t, p, v, ctx, with_override_name)
            for f, t, p in _files(cat, m, v, ctx)
        ],
        "images": [_standalone_image(i, ctx) for i in _images(m, v, ctx, 10)],
    }
    if m.mode is None:
        d["downloadUrl"] = f"{ctx.base_url}/api/download/models/{v.id}"
    kinds = (cat.hostile.get(m.id) or []) + (cat.hostile_versions.get(v.id) or [])
    return _hostile(kinds, d, "version")


# --------------------------------------------------------------------------- hostile payloads

HUGE_TEXT_BYTES = 10 * 1024 * 1024
DEEP_LEVELS = 400
"""Nesting of ``deep`` (parsable by Python's json); ``very_deep`` uses 100 000 (it is not)."""
_RAW_MARKERS: dict[str, bytes] = {
    '"@@fakeciv:very_deep@@"': b"[" * 100_000 + b"]" * 100_000,
    '"@@fakeciv:bad_utf8@@"': b'"bad \xff\xfe utf-8 \xc3"',
}
_SCRIPT = (
    '<script>alert(1)</script><img src=x onerror="alert(2)"><a href="javascript:alert(3)">x</a>'
)


def _versions_of(obj: dict[str, Any], level: str) -> list[dict[str, Any]]:
    if level == "version":
        return [obj]
    vs = obj.get("modelVersions")
    return [v for v in vs if isinstance(v, dict)] if isinstance(vs, list) else []


def _files_of(obj: dict[str, Any], level: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for v in _versions_of(obj, level):
        fs = v.get("files")
        if isinstance(fs, list):
            out.extend(f for f in fs if isinstance(f, dict))
    return out


def _h_missing_id(o: dict[str, Any], level: str) -> None:
    o.pop("id", None)


def _h_id_string(o: dict[str, Any], level: str) -> None:
    o["id"] = "abc"


def _h_missing_name(o: dict[str, Any], level: str) -> None:
    o.pop("name", None)


def _h_stats_string(o: dict[str, Any], level: str) -> None:
    o["stats"] = "lots"


def _h_files_dict(o: dict[str, Any], level: str) -> None:
    for v in _versions_of(o, level):
        fs = v.get("files")
        v["files"] = {str(i): f for i, f in enumerate(fs)} if isinstance(fs, list) else {"0": fs}


def _h_unknown_type(o: dict[str, Any], level: str) -> None:
    if level == "model":
        o["type"] = "SuperLoRA"
    elif isinstance(o.get("model"), dict):
        o["model"]["type"] = "SuperLoRA"
    for f in _files_of(o, level):
        f["type"] = "Quantum Tensor"
        f["pickleScanResult"] = "Maybe"


def _h_huge_description(o: dict[str, Any], level: str) -> None:
    o["description"] = "<p>" + "A" * HUGE_TEXT_BYTES + "</p>"


def _h_script(o: dict[str, Any], level: str) -> None:
    o["description"] = f"<p>hello</p>{_SCRIPT}"
    if isinstance(o.get("name"), str):
        o["name"] = o["name"] + " <script>alert('name')</script>"
    if isinstance(o.get("tags"), list):
        o["tags"] = [*o["tags"], '<img src=x onerror="alert(1)">']
    for v in _versions_of(o, level):
        v["description"] = _SCRIPT
        v["trainedWords"] = ["<script>alert('tw')</script>", "\x1b[31mred\x1b[0m"]


def _h_nul(o: dict[str, Any], level: str) -> None:
    if isinstance(o.get("name"), str):
        o["name"] = o["name"][:3] + "\x00" + o["name"][3:]
    o["description"] = "<p>nul\x00byte</p>"
    if isinstance(o.get("tags"), list):
        o["tags"] = [*o["tags"], "tag\x00with\x00nul"]
    for v in _versions_of(o, level):
        v["trainedWords"] = ["trigger\x00word"]
    for f in _files_of(o, level):
        f["name"] = "model\x00.safetensors"


def _nested(depth: int) -> Any:
    node: Any = "bottom"
    for i in range(depth):
        node = [node] if i % 2 else {"x": node}
    return node


def _h_deep(o: dict[str, Any], level: str) -> None:
    o["junk"] = _nested(DEEP_LEVELS)
    for v in _versions_of(o, level):
        v["stats"] = _nested(DEEP_LEVELS // 2)


def _h_very_deep(o: dict[str, Any], level: str) -> None:
    o["junk"] = "@@fakeciv:very_deep@@"


def _h_bad_utf8(o: dict[str, Any], level: str) -> None:
    o["description"] = "@@fakeciv:bad_utf8@@"


def _h_wrong_types(o: dict[str, Any], level: str) -> None:
    o.update({"nsfw": "yes", "nsfwLevel": "X", "tags": "a,b,c", "poi": 1, "stats": [1, 2]})
    if level == "model":
        o["creator"] = "someone"
        o["allowCommercialUse"] = 5
    for v in _versions_of(o, level):
        v.update(
            {
                "publishedAt": 12345,
                "trainedWords": "one, two",
                "images": "none",
                "baseModel": ["SD 1.5"],
            }
        )
    for f in _files_of(o, level):
        f.update({"sizeKB": "big", "hashes": ["SHA256"], "metadata": "fp16", "primary": "yes"})


def _h_extra_keys(o: dict[str, Any], level: str) -> None:
    o["fakecivExtra"] = {"nested": [1, 2, {"x": None}]}
    o["__proto__"] = {"polluted": True}
    for v in _versions_of(o, level):
        v["someFutureField"] = "value"
    for f in _files_of(o, level):
        f["checksumAlgo"] = "md5"


def _h_bad_hashes(o: dict[str, Any], level: str) -> None:
    for f in _files_of(o, level):
        f["hashes"] = {
            "SHA256": "not-a-hash",
            "AutoV2": "zzzzzzzzzz",
            "crc32": "deadbeef",
            "BLAKE3": "F" * 5000,
            "MD5": "D41D8CD98F00B204E9800998ECF8427E",
            "AutoV3": None,
        }


def _h_nulls(o: dict[str, Any], level: str) -> None:
    for key in list(o):
        if key != "id":
            o[key] = None


def _h_huge_lists(o: dict[str, Any], level: str) -> None:
    o["tags"] = [f"tag{i}" for i in range(100_000)]
    for v in _versions_of(o, level):
        v["trainedWords"] = [f"w{i}" for i in range(50_000)]


def _h_path_traversal(o: dict[str, Any], level: str) -> None:
    names = (
        "../../etc/passwd",
        "..\\..\\Windows\\evil.dll",
        "/abs/root.safetensors",
        "CON.safetensors",
        ".hidden",
        "a/b/../../../c.safetensors",
    )
    for i, f in enumerate(_files_of(o, level)):
        f["name"] = names[i % len(names)]
    if level == "model" and isinstance(o.get("creator"), dict):
        o["creator"]["username"] = "../../root"


def _h_version_missing_id(o: dict[str, Any], level: str) -> None:
    vs = _versions_of(o, level)
    if vs:
        vs[0].pop("id", None)


def _h_file_missing_id(o: dict[str, Any], level: str) -> None:
    for v in _versions_of(o, level):
        fs = v.get("files")
        if isinstance(fs, list) and fs and isinstance(fs[0], dict):
            fs[0].pop("id", None)


def _h_images_junk(o: dict[str, Any], level: str) -> None:
    for i, v in enumerate(_versions_of(o, level)):
        v["images"] = "none" if i % 2 else [1, None, "x", {"url": 5}]


HOSTILE_KINDS: dict[str, Callable[[dict[str, Any], str], None]] = {
    "missing_id": _h_missing_id,
    "id_string": _h_id_string,
    "missing_name": _h_missing_name,
    "stats_string": _h_stats_string,
    "files_dict": _h_files_dict,
    "unknown_type": _h_unknown_type,
    "huge_description": _h_huge_description,
    "script": _h_script,
    "nul": _h_nul,
    "deep": _h_deep,
    "very_deep": _h_very_deep,
    "bad_utf8": _h_bad_utf8,
    "wrong_types": _h_wrong_types,
    "extra_keys": _h_extra_keys,
    "bad_hashes": _h_bad_hashes,
    "nulls": _h_nulls,
    "huge_lists": _h_huge_lists,
    "path_traversal": _h_path_traversal,
    "version_missing_id": _h_version_missing_id,
    "file_missing_id": _h_file_missing_id,
    "images_junk": _h_images_junk,
}
"""Hostile kind -> transform of a rendered model (or version) dict.

missing_id, id_string, missing_name: identity fields broken. stats_string, wrong_types: wrong JSON
types (``stats: "lots"``, ``sizeKB: "big"``...). files_dict: ``files`` is an object. unknown_type:
``type: "SuperLoRA"`` and unknown file/scan enums. huge_description: 10 MB. script: HTML/JS and an
ANSI escape. nul: NUL bytes. deep: 400-level nesting; very_deep: 100 000 levels (breaks
recursive parsers); bad_utf8: invalid UTF-8 in the body. extra_keys, bad_hashes, nulls,
huge_lists (100k tags), path_traversal (file names like ``../../etc/passwd``),
version_missing_id, file_missing_id, images_junk.
"""


def _hostile(kinds: list[Any] | None, obj: dict[str, Any], level: str) -> dict[str, Any]:
    if not kinds:
        return obj
    for kind in kinds:
        if callable(kind):
            result = kind(obj)
            if result is not None:
                obj = result
        else:
            HOSTILE_KINDS[kind](obj, level)
    return obj


def encode_json(obj: Any) -> bytes:
    """Compact UTF-8 JSON, with hostile raw markers replaced by their raw bytes."""
    text = json.dumps(obj, ensure_ascii=False, separators=(",", ":"))
    body = text.encode("utf-8")
    if "@@fakeciv:" in text:
        for marker, raw in _RAW_MARKERS.items():
            body = body.replace(marker.encode(), raw)
    return body
