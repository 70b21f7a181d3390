"""Use this prompt: an image's generation data (`assetmgr.app.genparams`) as a Generate
request, its models resolved by hash to verified local files, and what is missing with the
command that pulls it.

The image's hashes decide: the checkpoint by its ``Model hash`` (AutoV2, A1111's short
SHA-256) or a full SHA-256, LoRAs by ``Lora hashes`` (AutoV3) or Civitai's resource version
ids; a name is used only when the image gives no hash. A hash that matches no local file is
looked up in the catalog for the version to pull. Every LoRA ends up a ``<lora:NAME:W>`` tag
of the prompt pinned to its version (`GenerateRequest.tag_versions`), so the Generate screen
and the CLI build the same request; a LoRA the image lists without a tag gets one appended.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from sqlalchemy import or_, select
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import ColumnElement
from sqlmodel import col

from assetmgr.app.generation import (
    CHECKPOINT_TYPES,
    LORA_TYPES,
    GenerateRequest,
    LocalAsset,
    resolve_asset,
)
from assetmgr.app.genparams import GenerationData, ResourceRef
from assetmgr.errors import EXPECTED_ERRORS, AssetMgrError
from catalog.models import LocalFile, ModelFile
from sandbox.protocol import infotext, jobspec

if TYPE_CHECKING:
    from assetmgr.app.context import AppContext
    from assetmgr.store.blobs import BlobStore

#: GenerationData field -> the GenerateRequest field it fills.
FILLED_FIELDS = (
    "steps", "cfg", "seed", "width", "height", "clip_skip",
    "hires_scale", "hires_steps", "hires_denoise",
)  # fmt: skip


@dataclass(frozen=True)
class Resolved:
    """A model of the image found in the store."""

    ref: ResourceRef
    version_id: int
    alias: str
    """The local file's name without extension."""
    model_name: str
    matched_by: str
    """The hash type that matched, ``version id``, or ``name`` (the image gave no hash)."""
    tag: str | None = None
    """The prompt tag this LoRA fills."""


@dataclass(frozen=True)
class Missing:
    """A model of the image that is not a verified local file."""

    ref: ResourceRef
    version_id: int | None = None
    """The catalog version to pull, when the catalog or the image knows it."""
    file_id: int | None = None
    """Set when the file with the image's hash is not the version's primary file."""
    model_name: str | None = None
    tag: str | None = None

    @property
    def label(self) -> str:
        what = "checkpoint" if self.ref.kind == "checkpoint" else "LoRA"
        name = self.ref.name or self.model_name
        known = f" {name!r}" if name else ""
        if self.ref.hash:
            known += f" ({self.ref.hash_type} {self.ref.hash})"
        where = f"version {self.version_id}" if self.version_id else "not in the catalog"
        return f"{what}{known}: {where}"


@dataclass(frozen=True)
class Reuse:
    """The request an image's data makes, with what resolved and what is missing."""

    data: GenerationData
    request: GenerateRequest
    checkpoint: Resolved | None
    loras: tuple[Resolved, ...] = ()
    missing: tuple[Missing, ...] = ()
    notes: tuple[str, ...] = field(default=())

    def missing_for(self, request: GenerateRequest) -> list[Missing]:
        """What `request` (this one, after the user's overrides) still lacks: the checkpoint
        unless another was given, and the LoRAs whose tags it still holds."""
        tags = {t.name for t in jobspec.scan_tags(request.prompt)[0] if t.is_lora}
        return [
            m
            for m in self.missing
            if (m.ref.kind == "checkpoint" and not request.model)
            or (m.ref.kind == "lora" and (m.tag is None or m.tag in tags))
        ]

    @property
    def pull_version_ids(self) -> list[int]:
        return list(dict.fromkeys(m.version_id for m in self.missing if m.version_id))


def pull_commands(missing: Sequence[Missing]) -> list[str]:
    """The `assetmgr pull` lines that fetch what is missing (one line for primary files)."""
    primary = list(dict.fromkeys(m.version_id for m in missing if m.version_id and not m.file_id))
    lines = [f"assetmgr pull {' '.join(map(str, primary))}"] if primary else []
    lines += [
        f"assetmgr pull {m.version_id} --file-id {m.file_id}"
        for m in missing
        if m.version_id and m.file_id
    ]
    return lines


def lookup_commands(missing: Sequence[Missing]) -> list[str]:
    """`assetmgr lookup HASH` for what the catalog does not know (Civitai may)."""
    return [f"assetmgr lookup {m.ref.hash}" for m in missing if not m.version_id and m.ref.hash]


class MissingModelsError(AssetMgrError):
    """Models of an image that are not local; `missing` says which and where to get them."""

    exit_code = 3

    def __init__(self, missing: Sequence[Missing]) -> None:
        self.missing = list(missing)
        shown = ", ".join(m.label for m in self.missing[:3])
        more = f" and {len(self.missing) - 3} more" if len(self.missing) > 3 else ""
        super().__init__(f"{len(self.missing)} model(s) of this image are not local: {shown}{more}")


def checked_request(reuse: Reuse, overrides: Mapping[str, Any]) -> GenerateRequest:
    """The image's request with the user's `overrides` (GenerateRequest fields); raises
    `MissingModelsError` for what it still needs and the store does not hold."""
    request = replace(reuse.request, **overrides)
    missing = reuse.missing_for(request)
    if missing:
        raise MissingModelsError(missing)
    return request


# --- lookups ----------------------------------------------------------------------------------


def _hash_condition(digest: str) -> ColumnElement[bool]:
    if len(digest) == 64:
        return col(LocalFile.sha256) == digest
    if len(digest) == 12:
        return col(LocalFile.autov3) == digest
    if len(digest) == 10:
        return or_(col(LocalFile.autov2) == digest, col(LocalFile.sha256).startswith(digest))
    return col(LocalFile.autov1) == digest


def _matches(asset: LocalAsset, digest: str) -> bool:
    """Whether the file generation would mount for the version is the one with this hash."""
    if len(digest) == 12:
        return (asset.autov3 or "").upper() == digest
    return len(digest) == 8 or asset.sha256.upper().startswith(digest)


def local_by_hash(
    session: Session, store: BlobStore, digest: str, kinds: Sequence[str]
) -> LocalAsset | None:
    """The verified local file of one of `kinds` with this hash (upper-case hex, any of
    `genparams.HASH_TYPES`), as generation would resolve its version."""
    version_ids = (
        session.execute(
            select(col(ModelFile.version_id))
            .join(LocalFile, col(LocalFile.file_id) == col(ModelFile.id))
            .where(col(LocalFile.state) == "verified", _hash_condition(digest))
        )
        .scalars()
        .all()
    )
    for version_id in dict.fromkeys(version_ids):
        asset = _local_version(session, store, version_id, kinds)
        if asset is not None and _matches(asset, digest):
            return asset
    return None


def _local_version(
    session: Session, store: BlobStore, version_id: int, kinds: Sequence[str]
) -> LocalAsset | None:
    try:
        return resolve_asset(session, store, str(version_id), kinds=kinds)
    except EXPECTED_ERRORS:
        return None


def _missing(session: Session, ref: ResourceRef, tag: str | None = None) -> Missing:
    """A model that is not local, with the catalog version (and file) that has its hash."""
    from catalog import repo

    if ref.hash:
        for match in repo.find_files_by_hash(session, ref.hash):
            file = session.get(ModelFile, match["file_id"])
            return Missing(
                ref,
                version_id=match["version_id"] if match["version_id"] > 0 else None,
                file_id=None if file is None or file.is_primary else file.id,
                model_name=match["model_name"],
                tag=tag,
            )
    vid = ref.version_id if ref.version_id and ref.version_id > 0 else None
    return Missing(ref, version_id=vid, tag=tag)


# --- resolution -------------------------------------------------------------------------------


@dataclass
class _Resolution:
    session: Session
    store: BlobStore
    prompt: str
    tag_versions: dict[str, int] = field(default_factory=dict)
    resolved: list[Resolved] = field(default_factory=list)
    missing: list[Missing] = field(default_factory=list)
    appended: list[str] = field(default_factory=list)

    def find(self, ref: ResourceRef, kinds: Sequence[str]) -> tuple[LocalAsset, str] | None:
        if ref.hash:
            asset = local_by_hash(self.session, self.store, ref.hash, kinds)
            return (asset, ref.hash_type or "hash") if asset is not None else None
        if ref.version_id is not None:
            asset = _local_version(self.session, self.store, ref.version_id, kinds)
            return (asset, "version id") if asset is not None else None
        if ref.name:
            try:
                return resolve_asset(self.session, self.store, ref.name, kinds=kinds), "name"
            except EXPECTED_ERRORS:
                return None
        return None

    def checkpoint(self, ref: ResourceRef | None) -> Resolved | None:
        if ref is None:
            return None
        found = self.find(ref, CHECKPOINT_TYPES)
        if found is None:
            self.missing.append(_missing(self.session, ref))
            return None
        asset, how = found
        return Resolved(ref, asset.version_id, asset.alias, asset.model_name, how)

    def loras(self, refs: Sequence[ResourceRef]) -> None:
        tags = [t for t in jobspec.scan_tags(self.prompt)[0] if t.is_lora]
        by_hash_name = {infotext.lora_hash_name(t.name).casefold(): t.name for t in tags}
        claimed: set[str] = set()
        for ref in refs:
            tag = (
                by_hash_name.get(infotext.lora_hash_name(ref.name).casefold()) if ref.name else None
            )
            found = self.find(ref, LORA_TYPES)
            if found is None:
                missing = _missing(self.session, ref, tag)
                if any(m.version_id and m.version_id == missing.version_id for m in self.missing):
                    continue  # the same model named twice (by hash and by Civitai's id)
                if tag is not None and missing.version_id is not None:
                    # The run then asks for this version and says to pull it, instead of
                    # taking another local file that happens to have the tag's name.
                    self.tag_versions[tag] = missing.version_id
                self.missing.append(missing)
                if tag is not None:
                    claimed.add(tag)
                continue
            asset, how = found
            if any(r.version_id == asset.version_id for r in self.resolved):
                continue
            if tag is None:
                tag = next(
                    (t.name for t in tags if t.name not in claimed and _names(t.name, asset)),
                    None,
                )
            if tag is None:
                tag = jobspec.lora_tag_name(asset.alias)
                weight = 1.0 if ref.weight is None else ref.weight
                self.appended.append(f"<lora:{tag}:{infotext.fmt_number(weight)}>")
            claimed.add(tag)
            self.tag_versions[tag] = asset.version_id
            self.resolved.append(
                Resolved(ref, asset.version_id, asset.alias, asset.model_name, how, tag)
            )


def _names(tag_name: str, asset: LocalAsset) -> bool:
    return jobspec.lora_tag_matches(tag_name, asset.alias) or jobspec.lora_tag_matches(
        tag_name, asset.model_name
    )


def _request(
    data: GenerationData, base: GenerateRequest, checkpoint: Resolved | None, res: _Resolution
) -> GenerateRequest:
    prompt = data.prompt
    if res.appended:
        prompt = " ".join([prompt, *res.appended]) if prompt.strip() else " ".join(res.appended)
    filled = {name: getattr(data, name) for name in FILLED_FIELDS}
    filled = {name: value for name, value in filled.items() if value is not None}
    if data.sampler is not None:
        filled.update(sampler=data.sampler, schedule_type=data.schedule_type)
    if data.hires_scale is None:
        filled["hires_scale"] = None
    return replace(
        base,
        model=str(checkpoint.version_id) if checkpoint is not None else base.model,
        prompt=prompt,
        negative=data.negative,
        loras=[],
        tag_versions=dict(res.tag_versions),
        **filled,
    )


def reuse_generation(
    ctx: AppContext, data: GenerationData, base: GenerateRequest | None = None
) -> Reuse:
    """The request `data` makes over `base` (the defaults of what the image leaves out), its
    models resolved in the store; nothing runs and the network is not used."""
    from catalog.db import session_scope

    base = base or GenerateRequest(model="", prompt="")
    with session_scope(ctx.engine) as session:
        res = _Resolution(session, ctx.store, data.prompt)
        checkpoint = res.checkpoint(data.checkpoint)
        res.loras(data.loras)
        request = _request(data, base, checkpoint, res)
    return Reuse(
        data,
        request,
        checkpoint,
        tuple(res.resolved),
        tuple(res.missing),
        notes=data.notes,
    )


__all__ = [
    "FILLED_FIELDS",
    "Missing",
    "MissingModelsError",
    "Resolved",
    "Reuse",
    "checked_request",
    "local_by_hash",
    "lookup_commands",
    "pull_commands",
    "reuse_generation",
]
