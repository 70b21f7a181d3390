"""Catalog reads shaped for the TUI: pages of light rows, facets, one model's detail, completions.

Headless (no Textual): the TUI's thread workers call these with their own session, and the
tests call them directly. A page of the browser never loads ORM objects: one Core query returns
the visible columns (the latest version's base model and the best local state come from
correlated subqueries over indexed columns), so a page costs the same at 100 or 100,000 models.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from sqlalchemy import Table, case, exists, func, select
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import ColumnElement
from sqlmodel import SQLModel

import catalog.models  # noqa: F401  (registers the tables)
from assetmgr import paths
from catalog.access import AccessRule, version_access
from catalog.models import HASH_COLUMNS
from catalog.search import match_clause, model_filters, search_models
from catalog.text import html_to_text

SortKey = Literal["relevance", "downloads", "name", "newest", "updated", "type", "creator"]
SORT_KEYS: tuple[SortKey, ...] = (
    "relevance",
    "downloads",
    "name",
    "newest",
    "updated",
    "type",
    "creator",
)
LORA_TYPES = ("LORA", "LoCon", "DoRA")
CHECKPOINT_TYPES = ("Checkpoint",)
# Civitai's image nsfwLevel: 1 = PG; anything above is hidden until the user asks.
SAFE_NSFW_LEVEL = 1
_LOCAL_RANK = {"verified": 0, "downloading": 1, "quarantined": 2, "missing": 3}
_HASH_NAMES = dict(
    zip(HASH_COLUMNS, ("SHA256", "AutoV1", "AutoV2", "AutoV3", "CRC32", "BLAKE3"), strict=True)
)


def _t(name: str) -> Table:
    return SQLModel.metadata.tables[name]


# --- the browser's listing -------------------------------------------------------------------


@dataclass(frozen=True)
class BrowseQuery:
    """Everything that selects and orders the browser's rows; equal queries give equal pages."""

    search: str = ""
    types: tuple[str, ...] = ()
    base_models: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    local_only: bool = False
    nsfw: bool = False
    sort: SortKey = "downloads"
    descending: bool = True

    @property
    def effective_sort(self) -> SortKey:
        """Relevance needs search text; without it the listing is by downloads."""
        if self.sort == "relevance" and not self.search.strip():
            return "downloads"
        return self.sort


@dataclass(frozen=True)
class ModelRow:
    """One line of the browser table."""

    id: int
    name: str
    type: str
    base_model: str | None
    creator: str | None
    downloads: int | None
    nsfw: bool
    local_state: str | None
    has_update: bool = False


def _filters(query: BrowseQuery) -> list[ColumnElement[bool]]:
    clauses = model_filters(
        types=list(query.types) or None,
        base_models=list(query.base_models) or None,
        nsfw=query.nsfw,
        local_only=query.local_only,
    )
    if query.tags:
        model, link, tag = _t("model"), _t("model_tag"), _t("tag")
        for name in query.tags:
            # Every tag must be present (AND), matched case-insensitively.
            clauses.append(
                exists()
                .where(link.c.model_id == model.c.id)
                .where(link.c.tag_id == tag.c.id)
                .where(func.lower(tag.c.name) == name.lower())
            )
    return clauses


def _row_columns() -> list[Any]:
    model, version, creator = _t("model"), _t("model_version"), _t("creator")
    local, file = _t("local_file"), _t("model_file")
    v2 = version.alias("v2")
    base = (
        select(version.c.base_model)
        .where(version.c.model_id == model.c.id, version.c.state != "gone")
        .order_by(version.c.position, version.c.id.desc())
        .limit(1)
        .scalar_subquery()
    )
    rank = case(*((local.c.state == state, order) for state, order in _LOCAL_RANK.items()), else_=9)
    local_state = (
        select(local.c.state)
        .select_from(
            local.join(file, file.c.id == local.c.file_id).join(v2, v2.c.id == file.c.version_id)
        )
        .where(v2.c.model_id == model.c.id)
        .order_by(rank)
        .limit(1)
        .scalar_subquery()
    )
    return [
        model.c.id,
        model.c.name,
        model.c.type,
        base.label("base_model"),
        select(creator.c.username)
        .where(creator.c.id == model.c.creator_id)
        .scalar_subquery()
        .label("creator"),
        model.c.download_count,
        model.c.nsfw,
        local_state.label("local_state"),
    ]


def _order(query: BrowseQuery) -> list[Any]:
    model, version, creator = _t("model"), _t("model_version"), _t("creator")
    sort = query.effective_sort
    desc = query.descending
    key: Any
    if sort in ("downloads", "relevance"):
        key = model.c.download_count
    elif sort == "name":
        key = func.lower(model.c.name)
    elif sort == "type":
        key = model.c.type
    elif sort == "creator":
        key = (
            select(func.lower(creator.c.username))
            .where(creator.c.id == model.c.creator_id)
            .scalar_subquery()
        )
    elif sort == "newest":
        key = (
            select(func.max(version.c.published_at))
            .where(version.c.model_id == model.c.id, version.c.state != "gone")
            .scalar_subquery()
        )
    elif sort == "updated":
        key = model.c.changed_at
    else:
        raise ValueError(f"unknown sort {sort!r}")
    first = key.desc().nulls_last() if desc else key.asc().nulls_last()
    return [first, model.c.id.desc() if desc else model.c.id]


def _rows(result: Any) -> list[ModelRow]:
    return [
        ModelRow(
            id=int(r.id),
            name=str(r.name),
            type=str(r.type),
            base_model=r.base_model,
            creator=r.creator,
            downloads=None if r.download_count is None else int(r.download_count),
            nsfw=bool(r.nsfw),
            local_state=r.local_state,
        )
        for r in result
    ]


def fetch_page(session: Session, query: BrowseQuery, *, offset: int, limit: int) -> list[ModelRow]:
    """One page of rows (LIMIT/OFFSET in SQL; never the whole listing)."""
    model = _t("model")
    filters = _filters(query)
    text = query.search.strip()
    if text and query.effective_sort == "relevance" and not query.tags:
        ids = search_models(
            session,
            text,
            limit=limit,
            offset=offset,
            types=list(query.types) or None,
            base_models=list(query.base_models) or None,
            nsfw=query.nsfw,
            local_only=query.local_only,
        )
        if not ids:
            return []
        found = _rows(session.execute(select(*_row_columns()).where(model.c.id.in_(ids))))
        by_id = {row.id: row for row in found}
        return [by_id[i] for i in ids if i in by_id]
    if text:
        matching = match_clause(session, text)
        if matching is None:
            return []
        filters.append(matching)
    statement = (
        select(*_row_columns()).where(*filters).order_by(*_order(query)).limit(limit).offset(offset)
    )
    return _rows(session.execute(statement))


def find_update_pairs(session: Session) -> list[tuple[int, int]]:
    """(model id, newest version id) of every local model with an update (`catalog.updates`)."""
    from catalog.updates import find_updates

    pairs = []
    for update in find_updates(session):
        newest = getattr(update, "newest_version_id", None)
        if newest is None:
            newest = getattr(update, "latest_version_id")  # noqa: B009  (older field name)
        pairs.append((int(update.model_id), int(newest)))
    return pairs


def update_model_ids(session: Session) -> set[int]:
    """Models with a newer version in a base-model family the user has."""
    return {model_id for model_id, _ in find_update_pairs(session)}


def count_models(session: Session, query: BrowseQuery) -> int:
    """How many models match (for "n of N"; run apart from the page so it never delays it)."""
    model = _t("model")
    filters = _filters(query)
    if query.search.strip():
        matching = match_clause(session, query.search)
        if matching is None:
            return 0
        filters.append(matching)
    return int(
        session.execute(select(func.count()).select_from(model).where(*filters)).scalar_one()
    )


@dataclass(frozen=True)
class Facets:
    """Values the filter bar offers, most used first."""

    types: list[tuple[str, int]]
    base_models: list[tuple[str, int]]
    tags: list[tuple[str, int]]


def load_facets(session: Session, *, tag_limit: int = 400) -> Facets:
    model, version, link, tag = _t("model"), _t("model_version"), _t("model_tag"), _t("tag")
    n = func.count().label("n")
    types = session.execute(
        select(model.c.type, n)
        .where(model.c.state != "gone")
        .group_by(model.c.type)
        .order_by(n.desc())
    ).all()
    bases = session.execute(
        select(version.c.base_model, n)
        .where(version.c.state != "gone", version.c.base_model.is_not(None))
        .group_by(version.c.base_model)
        .order_by(n.desc())
    ).all()
    tags = session.execute(
        select(tag.c.name, n)
        .select_from(link.join(tag, tag.c.id == link.c.tag_id))
        .group_by(tag.c.id)
        .order_by(n.desc())
        .limit(tag_limit)
    ).all()
    return Facets(
        types=[(str(t), int(c)) for t, c in types],
        base_models=[(str(b), int(c)) for b, c in bases],
        tags=[(str(t), int(c)) for t, c in tags],
    )


# --- one model in detail ---------------------------------------------------------------------


@dataclass(frozen=True)
class HashCheck:
    """One hash of a file: what Civitai published, what the local copy has, and if they agree."""

    name: str
    expected: str | None
    local: str | None

    @property
    def state(self) -> str:
        if not self.expected or not self.local:
            return "unchecked"
        return "match" if self.expected.upper() == self.local.upper() else "mismatch"


@dataclass(frozen=True)
class FileDetail:
    id: int
    name: str
    size_kb: float | None
    format: str | None
    primary: bool
    hashes: list[HashCheck]
    local_state: str | None
    """`LocalFile.state`, or None when the file is not in the store."""
    local_path: str | None
    verified_at: datetime | None
    pickle_scan: str | None
    virus_scan: str | None


@dataclass(frozen=True)
class PreviewImage:
    url: str | None
    nsfw_level: int | None
    width: int | None
    height: int | None
    local_path: Path | None

    @property
    def is_nsfw(self) -> bool:
        return (self.nsfw_level or 0) > SAFE_NSFW_LEVEL


@dataclass(frozen=True)
class Weight:
    """A LoRA weight to suggest, and where the number came from."""

    value: float
    low: float | None = None
    high: float | None = None
    source: str = "default"

    def label(self) -> str:
        if self.low is not None and self.high is not None and self.low != self.high:
            return f"{self.value:g} ({self.low:g}–{self.high:g}, {self.source})"
        return f"{self.value:g} ({self.source})"


@dataclass(frozen=True)
class VersionDetail:
    id: int
    name: str | None
    base_model: str | None
    published_at: datetime | None
    state: str
    description: str | None
    trained_words: list[str]
    weight: Weight
    files: list[FileDetail]
    images: list[PreviewImage]
    preview_path: Path | None
    access: tuple[AccessRule, ...] = ()
    """What Civitai will refuse a download for (`catalog.access`)."""

    @property
    def is_local(self) -> bool:
        return any(f.local_state == "verified" for f in self.files)


@dataclass(frozen=True)
class ModelDetail:
    id: int
    name: str
    type: str
    creator: str | None
    nsfw: bool
    tags: list[str]
    description: str
    downloads: int | None
    versions: list[VersionDetail]
    update_version_ids: list[int] = field(default_factory=list)
    """Versions newer than the local ones in the same base-model family (`catalog.updates`)."""


_WEIGHT_RE = re.compile(
    r"(?:weight|strength)s?\D{0,24}?(-?\d+(?:\.\d+)?)(?:\s*(?:-|–|~|to)\s*(-?\d+(?:\.\d+)?))?",
    re.IGNORECASE,
)


def suggest_weight(descriptions: Sequence[str | None], prompts: Sequence[str]) -> Weight:
    """The weight a creator recommends: "weight 0.6-0.9" in a description, else the most
    common ``<lora:…:w>`` in the preview prompts, else 1."""
    for text in descriptions:
        if not text:
            continue
        match = _WEIGHT_RE.search(text)
        if match is None:
            continue
        low = float(match.group(1))
        high = float(match.group(2)) if match.group(2) else low
        if not -5 <= low <= 5 or not -5 <= high <= 5:
            continue
        low, high = min(low, high), max(low, high)
        middle = round((low + high) / 2 * 20) / 20  # to 0.05
        return Weight(middle, low, high, "description")
    from sandbox.protocol.jobspec import scan_tags

    seen: dict[float, int] = {}
    for prompt in prompts:
        for tag in scan_tags(prompt)[0]:
            if tag.is_lora:
                seen[tag.te] = seen.get(tag.te, 0) + 1
    if seen:
        best = max(seen.items(), key=lambda kv: (kv[1], -abs(kv[0] - 1)))[0]
        return Weight(best, min(seen), max(seen), "preview prompts")
    return Weight(1.0)


def preview_path(version_id: int, images: Sequence[PreviewImage] = ()) -> Path | None:
    """A picture on disk for a version: an image already local, a user preview under
    ``$ASSETMGR_HOME/previews/<version_id>.*``, else the demo catalog's bundled PNG."""
    for image in images:
        if image.local_path is not None:
            return image.local_path
    folder = paths.home() / "previews"
    for suffix in (".png", ".jpg", ".jpeg", ".webp"):
        candidate = folder / f"{version_id}{suffix}"
        if candidate.is_file():
            return candidate
    from catalog.demo import demo_preview_path

    return demo_preview_path(version_id)


def _user_meta(session: Session, version_ids: Sequence[int]) -> dict[int, dict[str, Any]]:
    """What the user (or an imported sidecar) set per version: activation text, weight."""
    try:
        import catalog.usermeta  # noqa: F401  (registers the table)
    except ImportError:
        return {}
    table = SQLModel.metadata.tables.get("user_meta")
    if table is None or not version_ids:
        return {}
    rows = session.execute(
        select(table.c.version_id, table.c.activation_text, table.c.preferred_weight).where(
            table.c.version_id.in_(list(version_ids))
        )
    ).all()
    return {int(r[0]): {"activation_text": r[1], "preferred_weight": r[2]} for r in rows}


def _image_local_path(url: str | None) -> Path | None:
    if not url:
        return None
    if url.startswith("file://"):
        candidate = Path(url[len("file://") :])
    elif url.startswith("/"):
        candidate = Path(url)
    else:
        return None
    return candidate if candidate.is_file() else None


def load_detail(session: Session, model_id: int) -> ModelDetail:
    """Everything the detail pane shows about one model, newest version first."""
    from catalog import repo

    row = repo.get_model(session, model_id)
    image_table = _t("image")
    images_by_version: dict[int, list[PreviewImage]] = {}
    prompts_by_version: dict[int, list[str]] = {}
    version_ids = [v.id for v in row.versions]
    if version_ids:
        for r in session.execute(
            select(
                image_table.c.version_id,
                image_table.c.url,
                image_table.c.nsfw_level,
                image_table.c.width,
                image_table.c.height,
                image_table.c.meta,
            )
            .where(image_table.c.version_id.in_(version_ids))
            .order_by(image_table.c.version_id, image_table.c.position)
        ):
            images_by_version.setdefault(int(r.version_id), []).append(
                PreviewImage(r.url, r.nsfw_level, r.width, r.height, _image_local_path(r.url))
            )
            meta = r.meta if isinstance(r.meta, dict) else {}
            prompt = meta.get("prompt")
            if isinstance(prompt, str):
                prompts_by_version.setdefault(int(r.version_id), []).append(prompt)
    model_text = html_to_text(row.description_html) or ""
    user_meta = _user_meta(session, version_ids)
    versions: list[VersionDetail] = []
    ordered = sorted(
        (v for v in row.versions if v.state != "gone" or any(f.local is not None for f in v.files)),
        key=lambda v: (v.position, -v.id),
    )
    for v in ordered:
        files: list[FileDetail] = []
        for f in sorted(v.files, key=lambda f: (not f.is_primary, f.id)):
            local = f.local
            files.append(
                FileDetail(
                    id=f.id,
                    name=f.name or f"file-{f.id}",
                    size_kb=f.size_kb,
                    format=f.format,
                    primary=f.is_primary,
                    hashes=[
                        HashCheck(
                            _HASH_NAMES[column],
                            getattr(f, column),
                            getattr(local, column) if local is not None else None,
                        )
                        for column in HASH_COLUMNS
                    ],
                    local_state=local.state if local is not None else None,
                    local_path=local.path if local is not None else None,
                    verified_at=local.verified_at if local is not None else None,
                    pickle_scan=f.pickle_scan_result,
                    virus_scan=f.virus_scan_result,
                )
            )
        images = images_by_version.get(v.id, [])
        version_text = html_to_text(v.description_html)
        meta = user_meta.get(v.id, {})
        weight = suggest_weight([version_text, model_text], prompts_by_version.get(v.id, []))
        if meta.get("preferred_weight"):
            weight = Weight(float(meta["preferred_weight"]), source="your setting")
        words = v.trained_word_list
        activation = meta.get("activation_text")
        if activation and activation not in words:
            words = [activation, *words]
        versions.append(
            VersionDetail(
                id=v.id,
                name=v.name,
                base_model=v.base_model,
                published_at=v.published_at,
                state=v.state,
                description=version_text,
                trained_words=words,
                weight=weight,
                files=files,
                images=images,
                preview_path=preview_path(v.id, images),
                access=tuple(version_access(v, row)),
            )
        )
    updates = [vid for mid, vid in find_update_pairs(session) if mid == model_id]
    return ModelDetail(
        id=row.id,
        name=row.name,
        type=row.type,
        creator=row.creator.username if row.creator else None,
        nsfw=row.nsfw,
        tags=row.tag_names,
        description=model_text,
        downloads=row.download_count,
        versions=versions,
        update_version_ids=updates,
    )


# --- local models for the Generate screen, and prompt completion ------------------------------


@dataclass(frozen=True)
class LocalModel:
    """A verified file in the store that generation can mount."""

    model_id: int
    version_id: int
    file_id: int
    model_name: str
    version_name: str | None
    type: str
    base_model: str | None
    file_name: str
    sha256: str
    path: str | None
    trained_words: tuple[str, ...] = ()
    weight: float = 1.0

    @property
    def lora_name(self) -> str:
        """The name used in ``<lora:name:w>``: the job contract's alias rule for the file."""
        from sandbox.protocol.jobspec import lora_tag_name

        return lora_tag_name(self.file_name)

    @property
    def label(self) -> str:
        version = f" {self.version_name}" if self.version_name else ""
        return f"{self.model_name}{version} [{self.base_model or '?'}]"


def local_models(session: Session, types: Sequence[str]) -> list[LocalModel]:
    model, version, file, local = (
        _t("model"),
        _t("model_version"),
        _t("model_file"),
        _t("local_file"),
    )
    words_table = _t("trained_word")
    rows = session.execute(
        select(
            model.c.id,
            version.c.id,
            file.c.id,
            model.c.name,
            version.c.name,
            model.c.type,
            version.c.base_model,
            file.c.name,
            local.c.sha256,
            local.c.path,
        )
        .select_from(
            local.join(file, file.c.id == local.c.file_id)
            .join(version, version.c.id == file.c.version_id)
            .join(model, model.c.id == version.c.model_id)
        )
        .where(local.c.state == "verified", model.c.type.in_(list(types)))
        .order_by(func.lower(model.c.name), version.c.position)
    ).all()
    words: dict[int, list[str]] = {}
    ids = [int(r[1]) for r in rows]
    if ids:
        for vid, word in session.execute(
            select(words_table.c.version_id, words_table.c.word)
            .where(words_table.c.version_id.in_(ids))
            .order_by(words_table.c.version_id, words_table.c.position)
        ):
            words.setdefault(int(vid), []).append(str(word))
    return [
        LocalModel(
            model_id=int(r[0]),
            version_id=int(r[1]),
            file_id=int(r[2]),
            model_name=str(r[3]),
            version_name=r[4],
            type=str(r[5]),
            base_model=r[6],
            file_name=str(r[7] or f"file-{r[2]}"),
            sha256=str(r[8] or ""),
            path=r[9],
            trained_words=tuple(words.get(int(r[1]), [])),
        )
        for r in rows
    ]


@dataclass(frozen=True)
class Completion:
    """One suggestion for the prompt editor: the text to insert and what it is."""

    text: str
    kind: Literal["lora", "trigger"]
    detail: str = ""


def complete(session: Session, prefix: str, *, limit: int = 12) -> list[Completion]:
    """Suggestions for the word being typed: ``<lora:`` names, else trigger words.

    Local LoRAs come first (only they can be used); catalog names follow. Trigger words match
    by prefix, case-insensitively.
    """
    model, version, file, local = (
        _t("model"),
        _t("model_version"),
        _t("model_file"),
        _t("local_file"),
    )
    out: list[Completion] = []
    if prefix.lower().startswith("<lora:"):
        wanted = prefix[len("<lora:") :].lower()
        for lm in local_models(session, LORA_TYPES):
            if lm.lora_name.lower().startswith(wanted) or lm.model_name.lower().startswith(wanted):
                out.append(Completion(f"<lora:{lm.lora_name}:{lm.weight:g}>", "lora", lm.label))
        if len(out) < limit:
            has_local = exists().where(local.c.file_id == file.c.id, local.c.state == "verified")
            rows = session.execute(
                select(file.c.name, model.c.name, version.c.base_model)
                .select_from(
                    file.join(version, version.c.id == file.c.version_id).join(
                        model, model.c.id == version.c.model_id
                    )
                )
                .where(
                    model.c.type.in_(list(LORA_TYPES)),
                    file.c.is_primary.is_(True),
                    func.lower(file.c.name).like(f"{_escape(wanted)}%", escape="\\"),
                    ~has_local,
                )
                .limit(limit - len(out))
            ).all()
            for file_name, model_name, base in rows:
                stem = str(file_name).rsplit(".", 1)[0]
                out.append(
                    Completion(
                        f"<lora:{stem}:1>", "lora", f"{model_name} [{base or '?'}] not local"
                    )
                )
        return out[:limit]
    wanted = prefix.lower().strip()
    if len(wanted) < 2:
        return []
    words = _t("trained_word")
    word_rows = session.execute(
        select(words.c.word, model.c.name)
        .select_from(
            words.join(version, version.c.id == words.c.version_id).join(
                model, model.c.id == version.c.model_id
            )
        )
        .where(func.lower(words.c.word).like(f"{_escape(wanted)}%", escape="\\"))
        .limit(limit * 3)
    ).all()
    seen: set[str] = set()
    for word, model_name in word_rows:
        if word in seen:
            continue
        seen.add(word)
        out.append(Completion(str(word), "trigger", str(model_name)))
    return out[:limit]


def _escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


__all__ = [
    "CHECKPOINT_TYPES",
    "LORA_TYPES",
    "SORT_KEYS",
    "BrowseQuery",
    "Completion",
    "Facets",
    "FileDetail",
    "HashCheck",
    "LocalModel",
    "ModelDetail",
    "ModelRow",
    "PreviewImage",
    "SortKey",
    "VersionDetail",
    "Weight",
    "complete",
    "count_models",
    "fetch_page",
    "find_update_pairs",
    "load_detail",
    "load_facets",
    "update_model_ids",
    "local_models",
    "preview_path",
    "suggest_weight",
]
