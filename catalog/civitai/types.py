"""Pydantic types of Civitai API payloads (the REST API v1's models, versions, files and images).

One set of types accepts all three version shapes: inside `/models` items, inside
`/models/{id}` (after ``removeEmpty``: null and empty keys are gone) and standalone
(`/model-versions/{id}` and by-hash). Rules that keep a sync alive on real-world data:

* identity fields (`id`, model `name`) are required: an item without them fails validation and
  is reported and skipped by the caller; a version or file without an id is dropped from its
  parent;
* every other field is lenient: a wrong type becomes its default instead of an error;
* enum values unknown to us are mapped (model types to ``Other``), never fatal; the raw value is
  kept beside the mapped one;
* strings are capped and NUL bytes removed, so a hostile payload cannot blow up the database or
  the terminal.

Speed matters (a sync validates thousands of models a minute), so the schema is plain pydantic
types checked in pydantic-core, with only a handful of Python validators. Leniency is applied
only to payloads that fail: `ApiObject.model_validate` repairs the reported locations (drops
the bad value, truncates the long string, drops the file without an id) and validates again.
"""

from __future__ import annotations

import copy
from datetime import datetime
from typing import Annotated, Any, ClassVar, Generic, TypeVar

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel

MAX_NAME_CHARS = 1_000
MAX_TEXT_CHARS = 200_000
MAX_LIST_ITEMS = 1_000
_MAX_REPAIR_ROUNDS = 12

MODEL_TYPES: tuple[str, ...] = (
    "Checkpoint",
    "TextualInversion",
    "Hypernetwork",
    "AestheticGradient",
    "LORA",
    "LoCon",
    "DoRA",
    "Controlnet",
    "Upscaler",
    "MotionModule",
    "VAE",
    "TextEncoder",
    "UNet",
    "CLIPVision",
    "Poses",
    "Wildcards",
    "Workflows",
    "ComfyWorkflows",
    "Detection",
    "VisionLanguage",
    "CLIP",
    "LLM",
    "Other",
)
_MODEL_TYPES_BY_LOWER = {t.lower(): t for t in MODEL_TYPES}
HASH_TYPES: tuple[str, ...] = ("SHA256", "AutoV1", "AutoV2", "AutoV3", "CRC32", "BLAKE3")
_HASH_TYPES_BY_LOWER = {t.lower(): t for t in HASH_TYPES}
_HASH_TYPE_SET = frozenset(HASH_TYPES)
SCAN_RESULTS: tuple[str, ...] = ("Pending", "Success", "Danger", "Error")
COMMERCIAL_USES: tuple[str, ...] = ("None", "Image", "RentCivit", "Rent", "Sell", "Video")
_IMAGE_NSFW_STRINGS = {"None": 1, "Soft": 3, "Mature": 7, "X": 31, "Blocked": 32}


def normalize_model_type(raw: object) -> str:
    """Map a Civitai model type to its canonical spelling; unknown ones become ``Other``."""
    if not isinstance(raw, str):
        return "Other"
    return _MODEL_TYPES_BY_LOWER.get(raw.strip().lower(), "Other")


# A NUL byte fails the pattern (checked in Rust); the repair step then strips it.
_NO_NUL = r"^[^\x00]*$"
Name = Annotated[str | None, StringConstraints(max_length=MAX_NAME_CHARS, pattern=_NO_NUL)]
Text = Annotated[str | None, StringConstraints(max_length=MAX_TEXT_CHARS, pattern=_NO_NUL)]
HexDigest = Annotated[
    str,
    StringConstraints(
        strip_whitespace=True,
        to_upper=True,
        min_length=1,
        max_length=128,
        pattern=r"^[0-9A-Fa-f]+$",
    ),
]
OptInt = int | None
OptFloat = float | None
OptBool = bool | None
OptDateTime = datetime | None


def _string_list(value: Any) -> list[str]:
    """A list of strings from whatever came: drop non-strings, cap sizes, keep order."""
    if value is None:
        return []
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list):
        return []
    out: list[str] = []
    for item in value[:MAX_LIST_ITEMS]:
        if isinstance(item, dict):  # 2022 tags were [{"name": ...}]
            item = item.get("name")
        if isinstance(item, str) and item.strip():
            out.append(item[:MAX_NAME_CHARS].replace("\x00", ""))
    return out


def _commercial_uses(value: Any) -> list[str]:
    """`allowCommercialUse` as ``"{Image,RentCivit}"``, ``["Image"]`` or ``"Sell"``."""
    if value is None:
        return []
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("{") and text.endswith("}"):
            text = text[1:-1]
        parts = [p.strip().strip('"') for p in text.split(",")] if text else []
    elif isinstance(value, list):
        parts = [p for p in value if isinstance(p, str)]
    else:
        return []
    return [p[:64] for p in parts if p][:16]


StrList = Annotated[list[str], BeforeValidator(_string_list)]


class ApiObject(BaseModel):
    """Base for payload types: camelCase aliases, unknown keys ignored, repaired on failure."""

    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="ignore", frozen=False
    )

    #: Fields whose failure rejects the whole object (a nested one is dropped from its list).
    identity_fields: ClassVar[frozenset[str]] = frozenset({"id"})

    @classmethod
    def model_validate(cls, obj: Any, *, strict: bool | None = None, **kwargs: Any) -> Any:
        """Validate natively; on errors, repair the reported spots and try again.

        Raises `ValidationError` only when an identity field of the object itself is bad.
        """
        try:
            return super().model_validate(obj, strict=strict, **kwargs)
        except ValidationError as first_error:
            if not isinstance(obj, dict):
                raise
            error = first_error
        data = copy.deepcopy(obj)
        for _ in range(_MAX_REPAIR_ROUNDS):
            if not _repair(cls, data, error):
                raise error
            try:
                return super().model_validate(data, strict=strict, **kwargs)
            except ValidationError as again:
                error = again
        raise error


_DROP = object()
_LIST_ENTRY_PARENTS = {"modelVersions", "model_versions", "files", "images"}


def _repair(cls: type[ApiObject], data: dict[str, Any], error: ValidationError) -> bool:
    """Fix `data` in place at every error location; False if nothing could be fixed."""
    changed = False
    for detail in error.errors(include_url=False, include_input=False):
        loc = list(detail["loc"])
        if not loc:
            continue
        fixable = detail["type"] in ("string_too_long", "string_pattern_mismatch")
        if len(loc) == 1 and loc[0] in cls.identity_fields and not fixable:
            return False
        limit = (detail.get("ctx") or {}).get("max_length")
        changed |= _repair_at(data, loc, detail["type"], limit)
    _drop_marked(data)
    return changed


def _repair_at(data: Any, loc: list[Any], kind: str, max_length: int | None = None) -> bool:
    # Walk as far as the data goes; pydantic may add union-member tags that are not keys.
    parents: list[tuple[Any, Any]] = []
    node = data
    for part in loc:
        if isinstance(node, dict) and part in node:
            parents.append((node, part))
            node = node[part]
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            parents.append((node, part))
            node = node[part]
        else:
            break
    if not parents:
        return False
    container, key = parents[-1]
    last = loc[-1]
    if kind == "missing" or (last == "id" and isinstance(key, str) and key == "id"):
        # An entry of a list without a usable id is dropped as a whole.
        for i in range(len(parents) - 1, -1, -1):
            holder, idx = parents[i]
            if isinstance(holder, list) and i > 0 and parents[i - 1][1] in _LIST_ENTRY_PARENTS:
                holder[idx] = _DROP
                return True
        if kind == "missing":
            return False
    value = container[key]
    in_hashes = len(parents) > 1 and parents[-2][1] == "hashes"
    if kind == "string_too_long" and isinstance(value, str) and not in_hashes:
        # Long text is cut to its cap; a too-long digest is wrong, so it is dropped below.
        container[key] = value[: max_length or MAX_NAME_CHARS].replace("\x00", "")
        return True
    if kind == "string_pattern_mismatch" and isinstance(value, str) and "\x00" in value:
        container[key] = value.replace("\x00", "")
        return True
    if isinstance(container, list):
        container[key] = _DROP
        return True
    del container[key]
    return True


def _drop_marked(node: Any) -> None:
    if isinstance(node, dict):
        for value in node.values():
            _drop_marked(value)
    elif isinstance(node, list):
        node[:] = [v for v in node if v is not _DROP]
        for value in node:
            _drop_marked(value)


class Creator(ApiObject):
    username: Name = None
    image: Name = None


class ModelStats(ApiObject):
    download_count: OptInt = None
    thumbs_up_count: OptInt = None
    thumbs_down_count: OptInt = None
    comment_count: OptInt = None
    tipped_amount_count: OptInt = None


class FileMetadata(ApiObject):
    format: Name = None
    size: Name = None
    fp: Name = None


class ModelFile(ApiObject):
    """A file of a version (section 2.3)."""

    id: int
    name: Name = None
    override_name: Name = None
    size_kb: OptFloat = Field(default=None, alias="sizeKB")
    type: Name = None
    pickle_scan_result: Name = None
    virus_scan_result: Name = None
    pickle_scan_message: Text = None
    scanned_at: OptDateTime = None
    metadata: FileMetadata = Field(default_factory=FileMetadata)
    # Values are checked and upper-cased in pydantic-core; a bad value fails only its own key,
    # which the repair step drops.
    hashes: dict[str, HexDigest] = Field(default_factory=dict)
    download_url: Name = None
    primary: OptBool = None

    @field_validator("hashes", mode="after")
    @classmethod
    def _canonical_hash_names(cls, value: dict[str, str]) -> dict[str, str]:
        """Canonical key spelling (``sha256`` -> ``SHA256``); unknown hash types dropped."""
        if value.keys() <= _HASH_TYPE_SET:  # the usual case: nothing to do
            return value
        out: dict[str, str] = {}
        for key, digest in value.items():
            canonical = _HASH_TYPES_BY_LOWER.get(key.lower())
            if canonical is not None:
                out[canonical] = digest
        return out

    @property
    def sha256(self) -> str | None:
        return self.hashes.get("SHA256")

    @property
    def is_flagged_dangerous(self) -> bool:
        return "Danger" in (self.pickle_scan_result, self.virus_scan_result)


class ModelImage(ApiObject):
    """A preview image (section 2.4); `id` is absent in two of the three shapes."""

    identity_fields: ClassVar[frozenset[str]] = frozenset()

    id: OptInt = None
    url: Name = None
    nsfw_level: OptInt = None
    width: OptInt = None
    height: OptInt = None
    hash: Name = None  # BlurHash
    type: Name = None
    meta: dict[str, Any] | None = None

    @model_validator(mode="before")
    @classmethod
    def _nsfw_string(cls, data: Any) -> Any:
        # /api/v1/images writes the deprecated string levels.
        if isinstance(data, dict) and isinstance(data.get("nsfwLevel"), str):
            data = dict(data)
            data["nsfwLevel"] = _IMAGE_NSFW_STRINGS.get(data["nsfwLevel"])
        return data


class ParentModel(ApiObject):
    """`model` inside a standalone version."""

    identity_fields: ClassVar[frozenset[str]] = frozenset()

    name: Name = None
    type: Name = None
    nsfw: OptBool = None
    poi: OptBool = None
    mode: Name = None


class ModelVersion(ApiObject):
    """A version in any of its three shapes."""

    id: int
    model_id: OptInt = None
    index: OptInt = None
    name: Name = None
    base_model: Name = None
    base_model_type: Name = None
    published_at: OptDateTime = None
    created_at: OptDateTime = None
    updated_at: OptDateTime = None
    status: Name = None
    availability: Name = None
    nsfw_level: OptInt = None
    description: Text = None
    trained_words: StrList = Field(default_factory=list)
    early_access_deadline: OptDateTime = None
    usage_control: Name = None
    air: Name = None
    download_url: Name = None
    stats: ModelStats = Field(default_factory=ModelStats)
    model: ParentModel | None = None
    files: list[ModelFile] = Field(default_factory=list, max_length=MAX_LIST_ITEMS)
    images: list[ModelImage] = Field(default_factory=list, max_length=MAX_LIST_ITEMS)

    @property
    def primary_file(self) -> ModelFile | None:
        for f in self.files:
            if f.primary:
                return f
        return self.files[0] if self.files else None


class Model(ApiObject):
    """A model (section 2.1), from `/models` or `/models/{id}`."""

    identity_fields: ClassVar[frozenset[str]] = frozenset({"id", "name"})

    id: int
    name: Annotated[str, StringConstraints(max_length=MAX_NAME_CHARS, pattern=_NO_NUL)]
    description: Text = None
    type: str = "Other"
    type_raw: Name = None
    nsfw: bool = False
    nsfw_level: OptInt = None
    poi: bool = False
    minor: bool = False
    mode: Name = None
    availability: Name = None
    allow_no_credit: OptBool = None
    allow_derivatives: OptBool = None
    allow_different_license: OptBool = None
    allow_commercial_use: Annotated[list[str], BeforeValidator(_commercial_uses)] = Field(
        default_factory=list
    )
    stats: ModelStats = Field(default_factory=ModelStats)
    creator: Creator | None = None
    tags: StrList = Field(default_factory=list)
    model_versions: list[ModelVersion] = Field(default_factory=list, max_length=MAX_LIST_ITEMS)

    @model_validator(mode="before")
    @classmethod
    def _map_type(cls, data: Any) -> Any:
        if isinstance(data, dict):
            data = dict(data)
            raw = data.get("type")
            data["typeRaw"] = raw[:MAX_NAME_CHARS] if isinstance(raw, str) else None
            data["type"] = normalize_model_type(raw)
            data.pop("type_raw", None)
        return data


class PageMetadata(ApiObject):
    """`metadata` of a list page; the last page has ``{}``."""

    identity_fields: ClassVar[frozenset[str]] = frozenset()

    next_cursor: str | None = None
    next_page: Name = None
    current_page: OptInt = None
    page_size: OptInt = None

    @field_validator("next_cursor", mode="before")
    @classmethod
    def _cursor_text(cls, value: Any) -> Any:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return str(value)
        return value


T = TypeVar("T")


class Page(BaseModel, Generic[T]):
    """One page of a cursor-paginated listing.

    `items` holds what validated; `rejected` holds (index, id or None, reason) for items that
    did not, so a sync can report them and go on.
    """

    items: list[T]
    next_cursor: str | None = None
    rejected: list[tuple[int, int | None, str]] = Field(default_factory=list)


class HashIdMatch(ApiObject):
    """One answer of `POST /model-versions/by-hash/ids`."""

    identity_fields: ClassVar[frozenset[str]] = frozenset({"model_version_id", "modelVersionId"})

    model_version_id: int
    model_id: OptInt = None
    hash: Name = None


__all__ = [
    "COMMERCIAL_USES",
    "HASH_TYPES",
    "MODEL_TYPES",
    "SCAN_RESULTS",
    "ApiObject",
    "Creator",
    "FileMetadata",
    "HashIdMatch",
    "Model",
    "ModelFile",
    "ModelImage",
    "ModelStats",
    "ModelVersion",
    "Page",
    "PageMetadata",
    "ParentModel",
    "normalize_model_type",
]
