"""Pydantic types of Civitai API payloads (see shared docs, civitai-api.md section 2).

One set of types accepts all three version shapes: inside `/models` items, inside
`/models/{id}` (after ``removeEmpty``: null and empty keys are gone) and standalone
(`/model-versions/{id}` and by-hash). Rules that keep a sync alive on real-world data:

* identity fields (`id`, model `name`) are required: an item without them fails validation and
  is reported and skipped by the caller;
* every other field is lenient: a wrong type becomes its default instead of an error;
* enum values unknown to us are mapped (model types to ``Other``), never fatal; the raw value is
  kept beside the mapped one;
* strings are capped so a hostile payload cannot blow up the database or the terminal.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Generic, TypeVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidatorFunctionWrapHandler,
    WrapValidator,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel

MAX_NAME_CHARS = 1_000
MAX_TEXT_CHARS = 200_000
MAX_LIST_ITEMS = 1_000

MODEL_TYPES: tuple[str, ...] = (
    "Checkpoint", "TextualInversion", "Hypernetwork", "AestheticGradient", "LORA", "LoCon",
    "DoRA", "Controlnet", "Upscaler", "MotionModule", "VAE", "TextEncoder", "UNet",
    "CLIPVision", "Poses", "Wildcards", "Workflows", "ComfyWorkflows", "Detection",
    "VisionLanguage", "CLIP", "LLM", "Other",
)
_MODEL_TYPES_BY_LOWER = {t.lower(): t for t in MODEL_TYPES}
HASH_TYPES: tuple[str, ...] = ("SHA256", "AutoV1", "AutoV2", "AutoV3", "CRC32", "BLAKE3")
_HASH_TYPES_BY_LOWER = {t.lower(): t for t in HASH_TYPES}
_HEX_DIGITS = frozenset("0123456789ABCDEF")
SCAN_RESULTS: tuple[str, ...] = ("Pending", "Success", "Danger", "Error")
COMMERCIAL_USES: tuple[str, ...] = ("None", "Image", "RentCivit", "Rent", "Sell", "Video")


def normalize_model_type(raw: object) -> str:
    """Map a Civitai model type to its canonical spelling; unknown ones become ``Other``."""
    if not isinstance(raw, str):
        return "Other"
    return _MODEL_TYPES_BY_LOWER.get(raw.strip().lower(), "Other")


def _lenient(default: Any) -> WrapValidator:
    """On a validation error, use `default` instead of failing the whole item."""

    def validate(value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
        if value is None:
            return default() if callable(default) else default
        try:
            return handler(value)
        except ValidationError:
            return default() if callable(default) else default

    return WrapValidator(validate)


def _capped(limit: int) -> WrapValidator:
    def validate(value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
        if value is None:
            return None
        if isinstance(value, int | float) and not isinstance(value, bool):
            value = str(value)
        if not isinstance(value, str):
            return None
        # NUL bytes break PostgreSQL text columns and terminals; drop them.
        return handler(value[:limit].replace("\x00", ""))

    return WrapValidator(validate)


OptInt = Annotated[int | None, _lenient(None)]
OptFloat = Annotated[float | None, _lenient(None)]
OptBool = Annotated[bool | None, _lenient(None)]
Bool = Annotated[bool, _lenient(False)]
OptDateTime = Annotated[datetime | None, _lenient(None)]
Name = Annotated[str | None, _capped(MAX_NAME_CHARS)]
Text = Annotated[str | None, _capped(MAX_TEXT_CHARS)]


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
    return [p for p in parts if p][:16]


StrList = Annotated[list[str], WrapValidator(lambda v, _h: _string_list(v))]


class ApiObject(BaseModel):
    """Base for payload types: camelCase aliases, unknown keys ignored."""

    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="ignore", frozen=False
    )


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
    metadata: Annotated[FileMetadata, _lenient(FileMetadata)] = Field(default_factory=FileMetadata)
    hashes: Annotated[dict[str, str], _lenient(dict)] = Field(default_factory=dict)
    download_url: Name = None
    primary: OptBool = None

    @field_validator("hashes", mode="after")
    @classmethod
    def _normalize_hashes(cls, value: dict[str, str]) -> dict[str, str]:
        """Canonical key spelling, uppercase hex; drop unknown types and non-hex values."""
        out: dict[str, str] = {}
        for key, digest in value.items():
            canonical = _HASH_TYPES_BY_LOWER.get(str(key).lower())
            if canonical is None or not isinstance(digest, str):
                continue
            digest = digest.strip().upper()
            if 0 < len(digest) <= 128 and _HEX_DIGITS.issuperset(digest):
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

    id: OptInt = None
    url: Name = None
    nsfw_level: OptInt = None
    width: OptInt = None
    height: OptInt = None
    hash: Name = None  # BlurHash
    type: Name = None
    meta: Annotated[dict[str, Any] | None, _lenient(None)] = None

    @field_validator("nsfw_level", mode="before")
    @classmethod
    def _nsfw_string(cls, value: Any) -> Any:
        # /api/v1/images writes the deprecated string levels.
        return {"None": 1, "Soft": 3, "Mature": 7, "X": 31, "Blocked": 32}.get(value, value)


class ParentModel(ApiObject):
    """`model` inside a standalone version."""

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
    stats: Annotated[ModelStats, _lenient(ModelStats)] = Field(default_factory=ModelStats)
    model: Annotated[ParentModel | None, _lenient(None)] = None
    files: Annotated[list[ModelFile], _lenient(list)] = Field(default_factory=list)
    images: Annotated[list[ModelImage], _lenient(list)] = Field(default_factory=list)

    @field_validator("files", "images", mode="wrap")
    @classmethod
    def _skip_bad_entries(cls, value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
        """Drop individual files/images that fail validation instead of the whole version."""
        if not isinstance(value, list):
            return []
        good = []
        for entry in value[:MAX_LIST_ITEMS]:
            try:
                good.extend(handler([entry]))
            except ValidationError:
                continue
        return good

    @property
    def primary_file(self) -> ModelFile | None:
        for f in self.files:
            if f.primary:
                return f
        return self.files[0] if self.files else None


class Model(ApiObject):
    """A model (section 2.1), from `/models` or `/models/{id}`."""

    id: int
    name: Annotated[str, _capped(MAX_NAME_CHARS)]
    description: Text = None
    type: str = "Other"
    type_raw: Name = None
    nsfw: Bool = False
    nsfw_level: OptInt = None
    poi: Bool = False
    minor: Bool = False
    mode: Name = None
    availability: Name = None
    allow_no_credit: OptBool = None
    allow_derivatives: OptBool = None
    allow_different_license: OptBool = None
    allow_commercial_use: Annotated[list[str], WrapValidator(lambda v, _h: _commercial_uses(v))] = (
        Field(default_factory=list)
    )
    stats: Annotated[ModelStats, _lenient(ModelStats)] = Field(default_factory=ModelStats)
    creator: Annotated[Creator | None, _lenient(None)] = None
    tags: StrList = Field(default_factory=list)
    model_versions: Annotated[list[ModelVersion], _lenient(list)] = Field(default_factory=list)

    @model_validator(mode="before")
    @classmethod
    def _map_type(cls, data: Any) -> Any:
        if isinstance(data, dict):
            data = dict(data)
            raw = data.get("type")
            data["typeRaw"] = raw if isinstance(raw, str) else None
            data["type"] = normalize_model_type(raw)
            data.pop("type_raw", None)
        return data

    @field_validator("model_versions", mode="wrap")
    @classmethod
    def _skip_bad_versions(cls, value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
        if not isinstance(value, list):
            return []
        good = []
        for entry in value[:MAX_LIST_ITEMS]:
            try:
                good.extend(handler([entry]))
            except ValidationError:
                continue
        return good


class PageMetadata(ApiObject):
    """`metadata` of a list page; the last page has ``{}``."""

    next_cursor: Annotated[str | None, _lenient(None)] = None
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

    model_version_id: int
    model_id: OptInt = None
    hash: Name = None


__all__ = [
    "COMMERCIAL_USES",
    "HASH_TYPES",
    "MODEL_TYPES",
    "SCAN_RESULTS",
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
