"""The fake Civitai's catalog: deterministic, in memory, mutable by tests.

Records are plain dataclasses (`FakeModel` -> `FakeVersion` -> `FakeFile`, `FakeImage`); the
JSON shapes of Civitai's API answers are rendered from them by `tests.fakeciv.shapes`.

Building a catalog::

    cat = FakeCatalog.generate(4000, seed=1)          # 1-2 s; every ModelType, many base models
    cat = FakeCatalog.from_fixtures()                 # the shared fixture models (700101, 700102)
    cat = FakeCatalog.generate(200, include_fixtures=True, materialize_bytes=2048)

``materialize_bytes=N`` gives every generated file real bytes (about N each, safetensors when the
name says so) and real hashes, so any version can be downloaded and verified end to end.
Without it, generated files have invented (well-formed) hashes and no bytes: downloading them
answers 404 "File not found" like a storage-resolver failure (doc section 5, step 9).

Attaching real bytes (hashes computed per doc section 7)::

    f = cat.add_file_bytes(version_id, b"...", name="x.safetensors")        # new primary file
    f = cat.add_file_bytes(version_id, Path("/tmp/1gib.bin"), name="big.safetensors")
    cat.attach_bytes(file_id, b"...")            # replace an existing file's bytes and hashes
    cat.add_file_bytes(vid, data, hashes={"SHA256": "00" * 32})   # advertise wrong hashes

Mutations (all bump `generation`; use them, or call `touch()` after editing records directly,
because `/models` sort orders and the hash index are cached per generation)::

    cat.archive_model(mid); cat.take_down_model(mid); cat.restore_model(mid)
    cat.delete_model(mid); cat.delete_version(vid)       # gone: 404 everywhere
    cat.add_version(mid, name="v9", base_model="Pony")   # new newest version (index 0)
    cat.add_model(type="LORA", name="New thing")
    cat.update_model(mid, name="Renamed", tags=[...]); cat.update_version(vid, require_auth=True)
    cat.set_hostile(mid, "missing_id", "huge_description")   # see shapes.HOSTILE_KINDS
    cat.set_hostile_version(vid, "files_dict")

Expectations for tests, computed straight from the records (not through the paging code):
`cat.expected_listing_ids(nsfw=False)` is the set a full `/models` cursor walk must return.

Ids: generated models start above 100000, versions above 200000, files above 300000 (with
gaps); the fixture models keep theirs (700101/700102, versions 8002xx, files 9003xx).
"""

from __future__ import annotations

import functools
import json
import os
import random
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from tests.fakeciv.hashes import HASH_ORDER, ByteSource, civitai_hashes, make_safetensors

FIXTURES_DIR = Path(__file__).resolve().parent.parent / "fixtures" / "civitai"
"""Copies of the shared Civitai fixture payloads."""

MODEL_TYPES: tuple[str, ...] = (
    "Checkpoint", "TextualInversion", "Hypernetwork", "AestheticGradient", "LORA", "LoCon",
    "DoRA", "Controlnet", "Upscaler", "MotionModule", "VAE", "TextEncoder", "UNet",
    "CLIPVision", "Poses", "Wildcards", "Workflows", "ComfyWorkflows", "Detection",
    "VisionLanguage", "CLIP", "LLM", "Other",
)  # fmt: skip
FILE_TYPES: tuple[str, ...] = (
    "Model", "Text Encoder", "Vision Encoder", "Pruned Model", "Negative", "Training Data",
    "VAE", "Config", "Archive", "UNet", "Diffusion Model", "CLIPVision", "ControlNet",
    "Workflow", "Upscaler", "Enhancement LoRA", "Other",
)  # fmt: skip
FILE_FORMATS: tuple[str, ...] = (
    "SafeTensor", "PickleTensor", "GGUF", "Diffusers", "Core ML", "ONNX", "Other",
)  # fmt: skip
PRIMARY_ELIGIBLE = frozenset({"Model", "Pruned Model", "Diffusion Model", "UNet"})
COMMERCIAL_USES: tuple[str, ...] = ("None", "Image", "RentCivit", "Rent", "Sell")
NSFW_PG, NSFW_PG13, NSFW_R, NSFW_X, NSFW_XXX, NSFW_BLOCKED = 1, 2, 4, 8, 16, 32

# baseModel -> AIR ecosystem (doc 2.2: root of the base model, lowercased).
BASE_MODELS: dict[str, str] = {
    "SD 1.5": "sd1", "SD 1.4": "sd1", "SD 1.5 LCM": "sd1", "SD 1.5 Hyper": "sd1",
    "SD 2.1": "sd2", "SD 2.0": "sd2", "SDXL 1.0": "sdxl", "SDXL Lightning": "sdxl",
    "SDXL Turbo": "sdxl", "Pony": "sdxl", "Illustrious": "sdxl", "NoobAI": "sdxl",
    "Flux.1 D": "flux1", "Flux.1 S": "flux1", "Flux.1 Krea": "flux1", "SD 3.5": "sd3",
    "SD 3.5 Large": "sd3", "Stable Cascade": "scascade", "Hunyuan Video": "hyv1",
    "Wan Video 2.2 T2V-A14B": "wanvideo", "Qwen": "qwen", "Chroma": "chroma", "Kolors": "kolors",
    "AuraFlow": "auraflow", "Other": "other",
}  # fmt: skip
_EXTRA_FILES = {
    "Checkpoint": ("full", "vae", "train", "config"), "TextualInversion": ("neg",),
    "LORA": ("train",), "LoCon": ("train",), "DoRA": ("train",),
}  # fmt: skip
_COMMON_BASES = ("SD 1.5", "SDXL 1.0", "Pony", "Illustrious", "Flux.1 D")
_AIR_TYPES = {
    "Checkpoint": "checkpoint", "LORA": "lora", "LoCon": "lycoris", "DoRA": "dora",
    "TextualInversion": "embedding", "VAE": "vae", "Hypernetwork": "hypernet",
    "Controlnet": "controlnet", "Upscaler": "upscaler", "MotionModule": "motion",
    "TextEncoder": "textencoder", "UNet": "unet", "CLIPVision": "clipvision",
    "AestheticGradient": "ag", "Poses": "poses", "Wildcards": "wildcards",
    "Workflows": "workflows", "ComfyWorkflows": "workflows", "Detection": "detection",
}  # fmt: skip

_TYPE_WEIGHTS = {
    "LORA": 40, "Checkpoint": 16, "TextualInversion": 8, "LoCon": 8, "VAE": 3, "DoRA": 2,
    "Controlnet": 2, "Upscaler": 2, "Hypernetwork": 1, "MotionModule": 1, "Poses": 1,
    "Wildcards": 1, "Workflows": 1, "ComfyWorkflows": 1, "Detection": 1, "TextEncoder": 1,
    "UNet": 1, "CLIPVision": 1, "VisionLanguage": 1, "CLIP": 1, "LLM": 1,
    "AestheticGradient": 1, "Other": 1,
}  # fmt: skip
_BASE_WEIGHTS = {
    "SD 1.5": 22, "SDXL 1.0": 18, "Pony": 16, "Illustrious": 14, "Flux.1 D": 10, "NoobAI": 4,
    "SD 1.4": 1, "SD 2.1": 1, "SDXL Lightning": 1, "SDXL Turbo": 1, "Flux.1 S": 2,
    "Flux.1 Krea": 1, "SD 3.5": 1, "SD 3.5 Large": 1, "Stable Cascade": 1, "Hunyuan Video": 1,
    "Wan Video 2.2 T2V-A14B": 2, "Qwen": 1, "Chroma": 1, "Kolors": 1, "AuraFlow": 1, "Other": 1,
}  # fmt: skip
_ADJ = (
    "amber silent crimson velvet hollow lunar misty golden iron paper neon quiet rusty frozen "
    "gentle wild painted copper hidden coastal electric dusty ivory pale ember"
).split()
_NOUN = (
    "harbor ink fox lantern meadow ember river glass bloom atlas raven garden tide spire "
    "willow comet canyon orchid cinder hollow ridge prism marble falcon"
).split()
_TAGS = (
    "anime",
    "style",
    "character",
    "concept",
    "photorealistic",
    "landscapes",
    "portraits",
    "base model",
    "clothing",
    "background",
    "fantasy",
    "sci-fi",
    "ink",
    "traditional art",
    "woman",
    "man",
    "architecture",
    "cars",
    "animals",
    "pixel art",
    "3d",
    "realistic",
    "cartoon",
    "horror",
    "cyberpunk",
    "steampunk",
    "watercolor",
    "sketch",
    "poses",
    "tool",
    "lighting",
    "armor",
    "food",
    "anime girl",
    "slider",
)
_CREATOR_PARTS = ("pixel foundry quiet brush neon owl latent smith noise wizard merge lab").split()
_SAMPLERS = ("DPM++ 2M", "Euler a", "DPM++ SDE", "Euler", "DDIM", "UniPC")
_SIZES = ((512, 768), (768, 512), (832, 1216), (1216, 832), (1024, 1024), (896, 1152))
_B83 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz#$%*+,-.:;=?@[]^_{|}~"
_B83_TABLE = bytes(ord(_B83[i % 83]) for i in range(256))  # random byte -> BlurHash-like char
_PICKLE_MESSAGE = (
    "**Detected Pickle imports (3)**\n```\ncollections.OrderedDict\n"
    "torch._utils._rebuild_tensor_v2\ntorch.FloatStorage\n```"
)
_DANGER_MESSAGE = "**Dangerous Pickle imports (2)**\n```\nos.system\nbuiltins.exec\n```"
_EPOCH_START_MS = 1_672_531_200_000  # 2023-01-01
_EPOCH_END_MS = 1_780_272_000_000  # 2026-06-01
_EA_DEADLINE_BASE_MS = 1_893_456_000_000  # 2030-01-01: always in the future for tests
_AUTOV3_SINCE_MS = 1_698_796_800_000  # 2023-11-01, when Civitai started storing AutoV3


def _rr(rng: random.Random, a: int, b: int | None = None) -> int:
    """`rng.randrange` for the generator's hot paths (several times faster)."""
    if b is None:
        a, b = 0, a
    return a + int(rng.random() * (b - a))


def _pick(rng: random.Random, seq: Any) -> Any:
    """`rng.choice` without its rejection sampling (hot path)."""
    return seq[int(rng.random() * len(seq))]


_NON_ALNUM = re.compile(r"[^a-z0-9]+")


def iso(ms: int) -> str:
    """Epoch milliseconds as Civitai writes dates: ``2025-11-05T09:12:44.201Z``."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms // 1000)) + f".{ms % 1000:03d}Z"


def parse_iso_ms(text: str | None) -> int:
    """Inverse of `iso` (0 for None)."""
    if not text:
        return 0
    return int(datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() * 1000)


@dataclass(eq=False, slots=True)
class FakeFile:
    """A model file (doc 2.3) plus what the fake's storage serves for it."""

    id: int
    name: str
    """The download filename (doc 2.6), as the API shows it."""
    type: str = "Model"
    size_kb: float = 0.0
    metadata: dict[str, Any] = field(default_factory=dict)
    """``format``/``size``/``fp`` (nulls kept) and optionally ``quantType``/``isRequired``."""
    hashes: dict[str, str] = field(default_factory=dict)
    pickle_scan_result: str = "Success"
    pickle_scan_message: str | None = "No Pickle imports"
    virus_scan_result: str = "Success"
    virus_scan_message: str | None = None
    scanned_at: str | None = None
    override_name: str | None = None
    visibility: str = "Public"
    version_id: int = 0
    content: bytes | None = None
    """Bytes served by storage (small files)."""
    path: Path | None = None
    """File on disk served by storage with sendfile (big files)."""
    disposition_name: str | None = None
    """Filename for the storage's Content-Disposition when it must differ from `name`."""
    content_disposition: str | bytes | None = None
    """Raw Content-Disposition header value, sent as is (str is UTF-8 encoded)."""

    @property
    def display_name(self) -> str:
        return self.override_name or self.name

    @property
    def size_bytes(self) -> int:
        if self.content is not None:
            return len(self.content)
        if self.path is not None:
            return os.stat(self.path).st_size
        return round(self.size_kb * 1024)

    @property
    def has_bytes(self) -> bool:
        return self.content is not None or self.path is not None

    @property
    def etag(self) -> str:
        """Strong ETag derived from the advertised SHA256 (or the id when unhashed)."""
        return '"' + (self.hashes.get("SHA256") or f"file{self.id:016d}")[:32].lower() + '"'


@dataclass(eq=False, slots=True)
class FakeImage:
    """A preview image (doc 2.4)."""

    id: int
    url: str
    nsfw_level: int = NSFW_PG
    width: int = 832
    height: int = 1216
    hash: str = ""
    type: str = "image"
    size: int = 0
    """Bytes of the image file (``metadata.size`` in the standalone shape)."""
    meta: dict[str, Any] | None = None
    minor: bool = False
    poi: bool = False
    on_site: bool = False
    remix_of_id: int | None = None
    availability: str = "Public"
    overrides: dict[str, dict[str, Any]] | None = None
    """Per-shape field overrides (``"list"``, ``"standalone"``), for verbatim fixtures."""

    @property
    def has_meta(self) -> bool:
        return self.meta is not None

    @property
    def has_positive_prompt(self) -> bool:
        return bool(self.meta and self.meta.get("prompt"))


@dataclass(eq=False, slots=True)
class FakeVersion:
    """A model version (doc 2.2); `index` comes from its position in `FakeModel.versions`."""

    id: int
    model_id: int
    name: str
    base_model: str
    published_at: str | None
    created_at: str
    updated_at: str
    base_model_type: str | None = "Standard"
    status: str = "Published"
    availability: str = "Public"
    nsfw_level: int = NSFW_PG
    description: str | None = None
    trained_words: list[str] = field(default_factory=list)
    vae_id: int | None = None
    early_access_deadline: str | None = None
    paid_access: dict[str, Any] | None = None
    flags: int = 0
    stats: dict[str, int | None] = field(default_factory=dict)
    supports_generation: bool = False
    upload_type: str = "Created"
    usage_control: str = "Download"
    require_auth: bool = False
    """Creator's "login required" download option (doc 5, step 6)."""
    training_status: str | None = None
    training_details: Any = None
    licensing_fee: float | None = None
    files: list[FakeFile] = field(default_factory=list)
    images: list[FakeImage] = field(default_factory=list)
    primary_file_id: int | None = None
    """Explicit primary; None means chosen by the doc's getPrimaryFile scoring."""

    @property
    def published_ms(self) -> int:
        return parse_iso_ms(self.published_at)

    @property
    def public_files(self) -> list[FakeFile]:
        return [f for f in self.files if f.visibility == "Public"]

    def primary_file(self) -> FakeFile | None:
        files = self.public_files
        if self.primary_file_id is not None:
            for f in files:
                if f.id == self.primary_file_id:
                    return f
        return pick_primary(files)


@dataclass(eq=False, slots=True)
class FakeModel:
    """A model (doc 2.1); `versions` are newest first (index 0)."""

    id: int
    name: str
    type: str
    description: str | None = None
    allow_no_credit: bool = True
    allow_commercial_use: list[str] = field(default_factory=lambda: ["Image", "RentCivit"])
    """Rendered as the Postgres array string ``"{Image,RentCivit}"``."""
    allow_derivatives: bool = True
    allow_different_license: bool = True
    minor: bool = False
    sfw_only: bool = False
    poi: bool = False
    nsfw: bool = False
    mode: str | None = None
    """None, ``"Archived"`` or ``"TakenDown"``."""
    availability: str = "Public"
    status: str = "Published"
    user_id: int = 1
    cosmetic: Any = None
    stats: dict[str, int | None] = field(default_factory=dict)
    creator: dict[str, Any] | None = None
    """``{"username", "image"}``; None for the system user (key omitted)."""
    tags: list[str] = field(default_factory=list)
    versions: list[FakeVersion] = field(default_factory=list)
    checkpoint_type: str | None = None
    collected_count: int = 0

    @property
    def published_versions(self) -> list[FakeVersion]:
        return [v for v in self.versions if v.status == "Published"]

    @property
    def nsfw_level(self) -> int:
        level = 0
        for v in self.published_versions:
            level |= v.nsfw_level
        return level

    @property
    def last_published_ms(self) -> int:
        return max((v.published_ms for v in self.published_versions), default=0)


def _file_score(f: FakeFile, prefs: dict[str, Any]) -> float:
    """getPrimaryFile scoring (doc section 3)."""
    score = 1000.0 + (1000.0 if f.type in PRIMARY_ELIGIBLE else 0.0)
    for key, weight in (("format", 100.0), ("size", 10.0), ("fp", 1.0), ("quantType", 0.5)):
        score += weight if f.metadata.get(key) == prefs.get(key) else -weight
    return score


DEFAULT_FILE_PREFS: dict[str, Any] = {
    "format": "SafeTensor", "size": "pruned", "fp": "fp16", "quantType": "Q4_K_M",
}  # fmt: skip


def pick_primary(files: list[FakeFile], prefs: dict[str, Any] | None = None) -> FakeFile | None:
    """Highest score wins, ties go to the first file (DB order)."""
    best, best_score = None, float("-inf")
    for f in files:
        s = _file_score(f, prefs or DEFAULT_FILE_PREFS)
        if s > best_score:
            best, best_score = f, s
    return best


@functools.lru_cache(maxsize=65536)
def filenamize(text: str) -> str:
    """lodash ``camelCase(truncate(...))`` of doc 2.6, close enough for ASCII names."""
    s = re.sub(r"[^a-z0-9]", "_", text.replace("'", ""), flags=re.IGNORECASE)
    limit = 20 + s.count("_")
    if len(s) > limit:
        s = s[: limit - 3]  # truncate() appends "...", which camelCase then drops
    words: list[str] = re.findall(r"[A-Z]?[a-z]+|[A-Z]+(?![a-z])|\d+", s)
    if not words:
        return ""
    return words[0].lower() + "".join(w[:1].upper() + w[1:].lower() for w in words[1:])


def download_filename(model: FakeModel, version: FakeVersion, file_type: str, uploaded: str) -> str:
    """`files[].name` per getDownloadFilename (doc 2.6, rules 2-6)."""
    model_part = filenamize(model.name)
    ext = uploaded.rsplit(".", 1)[-1] if "." in uploaded else ""
    if model.type in ("LORA", "LoCon") or not model_part or file_type not in FILE_TYPES:
        return uploaded
    if file_type == "Training Data":
        return f"{model_part}_{filenamize(version.name)}_trainingData.zip"
    if model.type == "TextualInversion" and version.trained_words:
        return f"{version.trained_words[0]}{'-neg' if file_type == 'Negative' else ''}.{ext}"
    if file_type == "VAE":
        return uploaded
    version_part = filenamize(_remove_casefree(version.name, model.name))
    suffix = ""
    if version.base_model_type == "Inpainting":
        suffix = "-inpainting"
    elif version.base_model_type == "Pix2Pix":
        suffix = ".instruct-pix2pix"
    elif file_type == "Text Encoder":
        suffix = "_txt"
    return f"{model_part}_{version_part}{suffix}.{ext}"


def _remove_casefree(text: str, part: str) -> str:
    """`text` without any case-insensitive occurrence of `part`."""
    if not part:
        return text
    low, needle = text.lower(), part.lower()
    out, i = [], 0
    while (j := low.find(needle, i)) != -1:
        out.append(text[i:j])
        i = j + len(needle)
    out.append(text[i:])
    return "".join(out)


def air(model: FakeModel, version: FakeVersion) -> str:
    """``urn:air:{ecosystem}:{type}:civitai:{modelId}@{versionId}`` (doc 2.2)."""
    eco = BASE_MODELS.get(version.base_model)
    if eco is None:
        eco = re.sub(r"[^a-z0-9]", "", version.base_model.split(" ")[0].lower()) or "other"
    kind = _AIR_TYPES.get(model.type, model.type.lower())
    if model.type == "Checkpoint":
        primary = version.primary_file()
        if primary is not None and primary.type == "Diffusion Model":
            kind = "diffusionmodel"
        elif primary is not None and primary.type == "UNet":
            kind = "unet"
    return f"urn:air:{eco}:{kind}:civitai:{model.id}@{version.id}"


class FakeCatalog:
    """All models, versions and files the fake serves; thread-safe through `lock`."""

    def __init__(self) -> None:
        self.models: dict[int, FakeModel] = {}
        self.versions: dict[int, FakeVersion] = {}
        self.files: dict[int, FakeFile] = {}
        self.lock = threading.RLock()
        """Held by the server while it renders; hold it when editing records directly."""
        self.generation = 0
        """Bumped by every mutation; caches key on it."""
        self.hostile: dict[int, list[str | Callable[[dict[str, Any]], Any]]] = {}
        """model id -> hostile kinds applied to that model's JSON (see `set_hostile`)."""
        self.hostile_versions: dict[int, list[str | Callable[[dict[str, Any]], Any]]] = {}
        self.favorites: set[int] = set()
        """Model ids returned for ``favorites=true`` (with a valid key)."""
        self._rng = random.Random(0)
        self._next_ids = {
            "model": 100_000,
            "version": 200_000,
            "file": 300_000,
            "image": 30_000_000,
        }
        self._sort_cache: dict[str, tuple[int, list[FakeModel], list[tuple[int, ...]]]] = {}
        self._hash_index: tuple[int, dict[str, list[FakeFile]]] | None = None
        self._creators: list[tuple[str, int, str | None]] = []
        self._materialize: int | None = None
        self._issued_hashes: list[dict[str, str]] = []

    # ----------------------------------------------------------------- construction

    @classmethod
    def generate(
        cls,
        n_models: int,
        *,
        seed: int = 0,
        versions_per_model: tuple[int, int] = (1, 4),
        files_per_version: tuple[int, int] = (1, 3),
        images_per_version: tuple[int, int] = (0, 5),
        include_fixtures: bool = False,
        materialize_bytes: int | None = None,
    ) -> FakeCatalog:
        """A catalog of `n_models` invented models; same arguments, same catalog.

        The first models cycle through every ModelType and the common base models so even a
        small catalog covers them. About 2 % archived, 1 % taken down, 8 % of versions need
        login, 3 % have downloads disabled, 3 % are in early access, a few are unpublished or
        fileless (hidden), some are NSFW-only (no PG bit) and a few files share a hash.
        """
        cat = cls()
        cat._rng = random.Random(seed)
        cat._materialize = materialize_bytes
        n_creators = max(3, n_models // 6)
        rng = cat._rng
        for i in range(n_creators):
            name = f"{_pick(rng, _CREATOR_PARTS)}_{_pick(rng, _CREATOR_PARTS)}{i}"
            roll = rng.random()
            if roll < 0.7:
                image = (
                    f"https://image.civitai.com/xG1nkqKTMzGDvpLrqFT7WA/{cat._uuid()}"
                    f"/width=96/{name}.jpeg"
                )
            elif roll < 0.85:
                image = f"https://lh3.googleusercontent.com/a/{cat._uuid()}=s96-c"
            else:
                image = None
            cat._creators.append((name, 400_000 + i * 7, image))
        with cat.lock:
            for i in range(n_models):
                mtype = MODEL_TYPES[i] if i < len(MODEL_TYPES) else None
                cat._generate_model(
                    mtype=mtype,
                    base=_COMMON_BASES[i % len(_COMMON_BASES)]
                    if i < 2 * len(MODEL_TYPES)
                    else None,
                    versions_per_model=versions_per_model,
                    files_per_version=files_per_version,
                    images_per_version=images_per_version,
                )
            cat._link_vaes()
            if include_fixtures:
                cat.load_fixtures()
            cat.touch()
        return cat

    @classmethod
    def from_fixtures(cls, directory: str | os.PathLike[str] | None = None) -> FakeCatalog:
        """Only the fixture models (700101 Harborlight Mix, 700102 Ink Wash Style)."""
        return cls().load_fixtures(directory)

    def load_fixtures(self, directory: str | os.PathLike[str] | None = None) -> FakeCatalog:
        """Add the fixture models so the fake serves the fixture payloads verbatim."""
        d = Path(directory) if directory is not None else FIXTURES_DIR

        def load(name: str) -> Any:
            return json.loads((d / name).read_text(encoding="utf-8"))

        items = load("models-list.json")["items"]
        detail = {m["id"]: m for m in [load("model.json")]}
        standalone = {
            v["id"]: v for v in (load("model-version.json"), load("model-version-by-hash.json"))
        }
        with self.lock:
            for item in items:
                self._add_fixture_model(item, detail.get(item["id"]), standalone)
            self.touch()
        return self

    def _add_fixture_model(
        self, item: dict[str, Any], detail: dict[str, Any] | None, standalone: dict[int, Any]
    ) -> None:
        m = FakeModel(
            id=item["id"],
            name=item["name"],
            type=item["type"],
            description=item["description"],
            allow_no_credit=item["allowNoCredit"],
            allow_commercial_use=[
                p for p in item["allowCommercialUse"].strip("{}").split(",") if p
            ],
            allow_derivatives=item["allowDerivatives"],
            allow_different_license=item["allowDifferentLicense"],
            minor=item["minor"],
            sfw_only=item["sfwOnly"],
            poi=item["poi"],
            nsfw=item["nsfw"],
            availability=item["availability"],
            user_id=item["userId"],
            cosmetic=item["cosmetic"],
            stats=dict(item["stats"]),
            creator=item.get("creator"),
            tags=list(item["tags"]),
        )
        detail_versions = {v["id"]: v for v in (detail or {}).get("modelVersions", [])}
        for vi in item["modelVersions"]:
            full = standalone.get(vi["id"], {})
            dv = detail_versions.get(vi["id"], {})
            pub_ms = parse_iso_ms(vi["publishedAt"])
            created = full.get("createdAt") or dv.get("createdAt") or iso(pub_ms - 1_300_000)
            v = FakeVersion(
                id=vi["id"],
                model_id=m.id,
                name=vi["name"],
                base_model=vi["baseModel"],
                base_model_type=vi["baseModelType"],
                published_at=vi["publishedAt"],
                created_at=created,
                updated_at=full.get("updatedAt") or iso(pub_ms + 59),
                availability=vi["availability"],
                nsfw_level=vi["nsfwLevel"],
                description=vi["description"],
                trained_words=list(vi["trainedWords"]),
                vae_id=vi["vaeId"],
                paid_access=vi["paidAccess"],
                flags=vi["flags"],
                stats=dict(vi["stats"]),
                supports_generation=vi["supportsGeneration"],
                upload_type=full.get("uploadType", "Created"),
                usage_control=full.get("usageControl", "Download"),
            )
            for fi in vi["files"]:
                f = FakeFile(
                    id=fi["id"],
                    name=fi["name"],
                    type=fi["type"],
                    size_kb=fi["sizeKB"],
                    metadata=dict(fi["metadata"]),
                    hashes=dict(fi["hashes"]),
                    pickle_scan_result=fi["pickleScanResult"],
                    pickle_scan_message=fi["pickleScanMessage"],
                    virus_scan_result=fi["virusScanResult"],
                    virus_scan_message=fi["virusScanMessage"],
                    scanned_at=fi["scannedAt"],
                    override_name=fi["overrideName"],
                    version_id=v.id,
                )
                if fi.get("primary"):
                    v.primary_file_id = f.id
                v.files.append(f)
                self.files[f.id] = f
            full_images = {_image_id_from_url(i["url"]): i for i in full.get("images", [])}
            for ii in vi["images"]:
                fx = full_images.get(ii["id"], {})
                meta = (
                    fx.get("meta")
                    if fx
                    else (_fixture_placeholder_meta() if ii["hasMeta"] else None)
                )
                img = FakeImage(
                    id=ii["id"],
                    url=ii["url"],
                    nsfw_level=ii["nsfwLevel"],
                    width=ii["width"],
                    height=ii["height"],
                    hash=ii["hash"],
                    type=ii["type"],
                    size=(fx.get("metadata") or {}).get("size", 1_200_000 + ii["id"] % 997),
                    meta=meta,
                    minor=ii["minor"],
                    poi=ii["poi"],
                    on_site=ii["onSite"],
                    remix_of_id=ii["remixOfId"],
                )
                # The fixtures disagree with themselves on two flags; keep both verbatim.
                derived = {"hasMeta": img.has_meta, "hasPositivePrompt": img.has_positive_prompt}
                for shape, src in (("list", ii), ("standalone", fx)):
                    diff = {k: src[k] for k in derived if k in src and src[k] != derived[k]}
                    if diff:
                        img.overrides = {**(img.overrides or {}), shape: diff}
                v.images.append(img)
            m.versions.append(v)
            self.versions[v.id] = v
        self.models[m.id] = m

    # ----------------------------------------------------------------- generation internals

    def _uuid(self) -> str:
        h = f"{self._rng.getrandbits(128):032x}"
        return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-a{h[17:20]}-{h[20:]}"

    def _new_id(self, kind: str) -> int:
        step = {"model": 3, "version": 2, "file": 2, "image": 5}[kind]
        self._next_ids[kind] += 1 + _rr(self._rng, step)
        return self._next_ids[kind]

    def _generate_model(
        self,
        *,
        mtype: str | None = None,
        base: str | None = None,
        name: str | None = None,
        versions_per_model: tuple[int, int] = (1, 4),
        files_per_version: tuple[int, int] = (1, 3),
        images_per_version: tuple[int, int] = (0, 5),
    ) -> FakeModel:
        rng = self._rng
        mtype = mtype or rng.choices(list(_TYPE_WEIGHTS), weights=list(_TYPE_WEIGHTS.values()))[0]
        base = base or rng.choices(list(_BASE_WEIGHTS), weights=list(_BASE_WEIGHTS.values()))[0]
        if not self._creators:
            self._creators.append(("pixel_foundry", 412_345, None))
        creator_name, user_id, creator_image = _pick(rng, self._creators)
        if rng.random() < 0.01:
            creator_name, user_id, creator_image = "civitai", -1, None
        if name is None:
            title = f"{_pick(rng, _ADJ).title()} {_pick(rng, _NOUN).title()}"
            suffix = {
                "Checkpoint": _pick(rng, ("Mix", "XL", "Realistic", "Anime Merge", "Diffusion")),
                "LORA": _pick(rng, ("Style", "Concept", "Character", "Slider", "Detailer")),
                "LoCon": "LyCORIS",
                "TextualInversion": "Embedding",
                "VAE": "VAE",
            }.get(mtype, mtype)
            name = f"{title} {suffix}"
            if rng.random() < 0.03:
                name += (
                    " ("
                    + _pick(rng, ("ポニー", "Ünïcode", "it's, great", "100% <b>bold</b>"))
                    + ")"
                )
        downloads = int(rng.lognormvariate(7, 2)) % 5_000_000
        hidden_metrics = rng.random() < 0.02
        stats: dict[str, int | None] = {
            "downloadCount": None if hidden_metrics else downloads,
            "thumbsUpCount": int(downloads * rng.uniform(0.01, 0.15)),
            "thumbsDownCount": int(downloads * rng.uniform(0, 0.002)),
            "commentCount": _rr(rng, 0, 1 + downloads // 100),
            "tippedAmountCount": None if hidden_metrics else _rr(rng, 0, 1 + downloads),
        }
        m = FakeModel(
            id=self._new_id("model"),
            name=name,
            type=mtype,
            description=None if rng.random() < 0.05 else self._html(name),
            allow_no_credit=rng.random() < 0.8,
            allow_commercial_use=_pick(
                rng,
                (
                    ["Image", "RentCivit"],
                    ["Image"],
                    ["None"],
                    ["Image", "RentCivit", "Rent", "Sell"],
                    ["Sell"],
                    [],
                ),
            ),
            allow_derivatives=rng.random() < 0.85,
            allow_different_license=rng.random() < 0.5,
            poi=rng.random() < 0.005,
            user_id=user_id,
            stats=stats,
            creator=None
            if creator_name == "civitai"
            else {"username": creator_name, "image": creator_image},
            tags=rng.sample(_TAGS, rng.randint(1, 6)),
            checkpoint_type=_pick(rng, ("Trained", "Merge")) if mtype == "Checkpoint" else None,
            collected_count=_rr(rng, 0, 1 + downloads // 20),
        )
        m.minor = rng.random() < 0.005
        m.sfw_only = m.minor
        roll = rng.random()
        m.mode = "Archived" if roll < 0.02 else "TakenDown" if roll < 0.03 else None
        if rng.random() < 0.005:
            m.status = "Unpublished"
        n_versions = rng.randint(*versions_per_model)
        latest_ms = _rr(rng, _EPOCH_START_MS + 86_400_000 * 60, _EPOCH_END_MS)
        nsfw_choice = rng.random()
        if nsfw_choice < 0.08:
            model_level_bits = _pick(rng, (NSFW_R, NSFW_X, NSFW_R | NSFW_X, NSFW_X | NSFW_XXX))
        elif nsfw_choice < 0.3:
            model_level_bits = _pick(rng, (3, 7, 15, 31))
        else:
            model_level_bits = NSFW_PG
        mixed_bases = rng.random() < 0.25
        pub_ms = latest_ms
        for vi in range(n_versions):
            vbase = base
            if mixed_bases and vi > 0:
                vbase = _pick(rng, _COMMON_BASES)
            version = self._generate_version(
                m, vi, pub_ms, vbase, model_level_bits, files_per_version, images_per_version
            )
            m.versions.append(version)
            pub_ms -= _rr(rng, 86_400_000 * 5, 86_400_000 * 120)
        m.nsfw = bool(m.nsfw_level & (NSFW_R | NSFW_X | NSFW_XXX))
        self.models[m.id] = m
        return m

    def _generate_version(
        self,
        m: FakeModel,
        position: int,
        pub_ms: int,
        base: str,
        level_bits: int,
        files_per_version: tuple[int, int],
        images_per_version: tuple[int, int],
    ) -> FakeVersion:
        rng = self._rng
        major = max(1, 4 - position)
        vname = _pick(
            rng,
            (
                f"v{major}.0",
                f"v{major}.{_rr(rng, 10)}",
                f"V{major}",
                f"{base} v{major}",
                f"v{major}.0 {_pick(rng, ('beta', 'final', 'fp8'))}",
            ),
        )
        if position == 0 and rng.random() < 0.1:
            vname = m.name + " " + vname  # the model name is removed from file names (doc 2.6)
        created_ms = pub_ms - _rr(rng, 60_000, 3_600_000)
        words: list[str] = []
        if m.type in ("LORA", "LoCon", "DoRA", "TextualInversion", "Hypernetwork"):
            stem = _NON_ALNUM.sub("_", m.name.lower()).strip("_")
            words = (
                [stem.replace("_", " ")]
                if m.type != "TextualInversion"
                else [stem.replace("_", "")]
            )
            for _ in range(_rr(rng, 0, 3)):
                words.append(f"{_pick(rng, _ADJ)} {_pick(rng, _NOUN)}")
            if rng.random() < 0.15 and m.type != "TextualInversion":
                words.append(f"masterpiece, best quality, {_pick(rng, _NOUN)}, 1girl")
        level = level_bits
        if level_bits & NSFW_PG and rng.random() < 0.3:
            level = NSFW_PG
        v = FakeVersion(
            id=self._new_id("version"),
            model_id=m.id,
            name=vname,
            base_model=base,
            base_model_type=rng.choices(
                ("Standard", None, "Inpainting", "Refiner", "Pix2Pix"), weights=(90, 6, 2, 1, 1)
            )[0]
            if m.type == "Checkpoint"
            else ("Standard" if rng.random() < 0.9 else None),
            published_at=iso(pub_ms),
            created_at=iso(created_ms),
            updated_at=iso(pub_ms + _rr(rng, 10, 400)),
            nsfw_level=level,
            description=None
            if rng.random() < 0.3
            else f"<p>Changes in {vname}: {_pick(rng, _ADJ)} tweaks.</p>",
            trained_words=words,
            stats={
                "downloadCount": _rr(rng, 0, 50_000),
                "thumbsUpCount": _rr(rng, 0, 4_000),
                "thumbsDownCount": _rr(rng, 0, 30),
            },
            supports_generation=m.type in ("Checkpoint", "LORA") and rng.random() < 0.4,
            flags=_pick(rng, (0, 0, 0, 2, 4)),
        )
        roll = rng.random()
        if roll < 0.03:
            v.usage_control = _pick(rng, ("Generation", "InternalGeneration"))
        v.require_auth = rng.random() < 0.08
        if position == 0 and rng.random() < 0.03:
            deadline = iso(_EA_DEADLINE_BASE_MS + _rr(rng, 0, 86_400_000 * 365))
            v.availability = "EarlyAccess"
            v.early_access_deadline = deadline
            v.paid_access = {"permanent": False, "endsAt": deadline}
        if rng.random() < 0.02:
            v.status = _pick(rng, ("Draft", "Scheduled", "Unpublished"))
        if rng.random() < 0.01:
            v.upload_type = "Trained"
            v.training_status = "Approved"
            v.training_details = {"type": "Character", "baseModel": "sdxl"}
        n_files = 0 if rng.random() < 0.005 else rng.randint(*files_per_version)
        for fi in range(n_files):
            f = self._generate_file(m, v, fi, created_ms)
            if f is not None:
                v.files.append(f)
                self.files[f.id] = f
        n_images = rng.randint(*images_per_version)
        bits = [b for b in (1, 2, 4, 8, 16) if level & b] or [NSFW_PG]
        for _ in range(n_images):
            v.images.append(self._generate_image(m, v, _pick(rng, bits)))
        self.versions[v.id] = v
        return v

    def _generate_file(
        self, m: FakeModel, v: FakeVersion, position: int, created_ms: int
    ) -> FakeFile | None:
        rng = self._rng
        stem = _NON_ALNUM.sub("_", m.name.lower()).strip("_")[:40] or "model"
        vtag = _NON_ALNUM.sub("", v.name.lower())[:12]
        fmt, size, fp, quant = "SafeTensor", None, None, None
        ftype, ext = "Model", "safetensors"
        if position == 0:
            if m.type == "Checkpoint":
                size, fp = "pruned", "fp16"
                nbytes = _rr(rng, 1_900_000_000, 7_000_000_000)
                if v.base_model.startswith("Flux") and rng.random() < 0.3:
                    fmt, ext, quant, fp, size = (
                        "GGUF",
                        "gguf",
                        _pick(rng, ("Q8_0", "Q4_K_M")),
                        None,
                        None,
                    )
                elif v.base_model.startswith("Flux") and rng.random() < 0.3:
                    ftype = "Diffusion Model"
                elif rng.random() < 0.08:
                    fmt, ext = "PickleTensor", "ckpt"
            elif m.type in ("LORA", "LoCon", "DoRA"):
                nbytes = _rr(rng, 9_000_000, 230_000_000)
                fp = _pick(rng, (None, "fp16", "bf16"))
                if rng.random() < 0.05:
                    fmt, ext = "PickleTensor", "pt"
            elif m.type == "TextualInversion":
                nbytes = _rr(rng, 3_000, 300_000)  # below 2 MiB: no AutoV1
                if rng.random() < 0.3:
                    fmt, ext = "PickleTensor", "pt"
            elif m.type == "VAE":
                nbytes, fp = _rr(rng, 80_000_000, 340_000_000), "fp16"
                ftype = "Model"
            elif m.type in ("Upscaler", "Detection"):
                nbytes, fmt, ext = _rr(rng, 1_000_000, 70_000_000), "PickleTensor", "pth"
            elif m.type in ("Workflows", "ComfyWorkflows", "Wildcards", "Poses", "Other"):
                nbytes, fmt, ext, ftype = _rr(rng, 2_000, 5_000_000), "Other", "zip", "Archive"
            elif m.type in ("LLM", "VisionLanguage"):
                nbytes, fmt, ext, quant = (
                    _rr(rng, 2_000_000_000, 9_000_000_000),
                    "GGUF",
                    "gguf",
                    "Q8_0",
                )
            else:
                nbytes = _rr(rng, 50_000_000, 3_000_000_000)
                ftype = {
                    "TextEncoder": "Text Encoder",
                    "UNet": "UNet",
                    "CLIPVision": "CLIPVision",
                    "Controlnet": "ControlNet",
                }.get(m.type, "Model")
            uploaded = f"{stem}_{vtag}.{ext}"
        else:
            pick = _pick(rng, _EXTRA_FILES.get(m.type, ("config",)))
            if pick == "full":
                size, fp = "full", "fp32"
                nbytes = _rr(rng, 4_000_000_000, 13_000_000_000)
                uploaded = f"{stem}_{vtag}_full.safetensors"
            elif pick == "vae":
                ftype, fp = "VAE", "fp16"
                nbytes = _rr(rng, 80_000_000, 340_000_000)
                uploaded = f"{stem}_vae.safetensors"
            elif pick == "train":
                ftype, fmt = "Training Data", "Other"
                nbytes = _rr(rng, 1_000_000, 900_000_000)
                uploaded = f"{stem}_dataset.zip"
            elif pick == "neg":
                ftype, nbytes = "Negative", _rr(rng, 3_000, 300_000)
                uploaded = f"{stem}_neg.safetensors"
            else:
                ftype, fmt, ext = "Config", "Other", "yaml"
                nbytes = _rr(rng, 800, 4_000)
                uploaded = f"{stem}_{vtag}.yaml"
            if any(f.type == ftype and f.metadata.get("size") == size for f in v.files):
                return None  # one file per kind and version
        if ftype == "Training Data":
            metadata: dict[str, Any] = {"format": "Other"}
        else:
            metadata = {"format": fmt, "size": size, "fp": fp}
            if quant is not None:
                metadata["quantType"] = quant
        scanned_ms = created_ms + _rr(rng, 60_000, 900_000)
        f = FakeFile(
            id=self._new_id("file"),
            name=download_filename(m, v, ftype, uploaded),
            type=ftype,
            size_kb=nbytes / 1024,
            metadata=metadata,
            scanned_at=iso(scanned_ms),
            version_id=v.id,
        )
        if fmt == "PickleTensor":
            f.pickle_scan_message = _PICKLE_MESSAGE
            if rng.random() < 0.03:
                f.pickle_scan_result, f.pickle_scan_message = "Danger", _DANGER_MESSAGE
        scan_roll = rng.random()
        if scan_roll < 0.005:
            f.pickle_scan_result = f.virus_scan_result = "Pending"
            f.pickle_scan_message = f.scanned_at = None
        elif scan_roll < 0.01:
            f.virus_scan_result, f.virus_scan_message = "Error", "Scan timed out"
        if rng.random() < 0.01:
            f.override_name = f"{stem}_{vtag}_override.{uploaded.rsplit('.', 1)[-1]}"
        if self._materialize is not None:
            self._set_bytes(f, _materialized_bytes(f, self._materialize, m, v), None)
        elif f.pickle_scan_result != "Pending":
            f.hashes = self._fake_hashes(nbytes, scanned_ms)
        return f

    def _fake_hashes(self, nbytes: int, scanned_ms: int) -> dict[str, str]:
        rng = self._rng
        if self._issued_hashes and rng.random() < 0.005:
            # A re-upload of bytes that already exist elsewhere: by-hash picks the oldest.
            return dict(_pick(rng, self._issued_hashes))
        sha = f"{rng.getrandbits(256):064X}"
        out = {
            "AutoV1": f"{rng.getrandbits(32):08X}" if nbytes >= 2 * 0x100000 else None,
            "AutoV2": sha[:10],
            "SHA256": sha,
            "CRC32": f"{rng.getrandbits(32):08X}",
            "BLAKE3": f"{rng.getrandbits(256):064X}",
            "AutoV3": f"{rng.getrandbits(48):012X}"
            if scanned_ms >= _AUTOV3_SINCE_MS or rng.random() < 0.5
            else None,
        }
        hashes = {k: v for k in HASH_ORDER if (v := out[k]) is not None}
        self._issued_hashes.append(hashes)
        return hashes

    def _generate_image(self, m: FakeModel, v: FakeVersion, level: int) -> FakeImage:
        rng = self._rng
        image_id = self._new_id("image")
        width, height = _pick(rng, _SIZES)
        video = rng.random() < 0.05
        meta = None
        if not video and rng.random() < 0.6:
            trigger = ", ".join(v.trained_words[:2]) + ", " if v.trained_words else ""
            lora = f" <lora:{filenamize(m.name)}:0.8>" if m.type in ("LORA", "LoCon") else ""
            subject = f"a {_pick(rng, _ADJ)} {_pick(rng, _NOUN)}"
            meta = {
                "Size": f"{width}x{height}",
                "seed": _rr(rng, 0, 2**32),
                "steps": _pick(rng, (20, 25, 28, 30, 40)),
                "prompt": f"{trigger}{subject}{lora}",
                "sampler": _pick(rng, _SAMPLERS),
                "cfgScale": _pick(rng, (4.5, 5, 6, 7, 7.5)),
                "negativePrompt": "lowres, blurry",
            }
        return FakeImage(
            id=image_id,
            url=(
                f"https://image.civitai.com/xG1nkqKTMzGDvpLrqFT7WA/{self._uuid()}"
                f"/original=true/{image_id}.{'mp4' if video else 'jpeg'}"
            ),
            nsfw_level=level,
            width=width,
            height=height,
            hash=rng.randbytes(36).translate(_B83_TABLE).decode(),
            type="video" if video else "image",
            size=_rr(rng, 200_000, 3_000_000),
            meta=meta,
        )

    def _html(self, name: str) -> str:
        rng = self._rng
        return (
            f"<p>{name}: a {_pick(rng, _ADJ)} take on {_pick(rng, _NOUN)}s.</p>"
            f"<p>Suggested: {_pick(rng, (20, 28, 30))} steps, CFG {_pick(rng, (5, 6, 7))}.</p>"
        )

    def _link_vaes(self) -> None:
        vaes = [
            m.versions[0]
            for m in self.models.values()
            if m.type == "VAE" and m.versions and m.versions[0].files
        ]
        if not vaes:
            return
        for m in self.models.values():
            if m.type != "Checkpoint":
                continue
            for v in m.versions:
                if self._rng.random() < 0.05:
                    v.vae_id = _pick(self._rng, vaes).id

    # ----------------------------------------------------------------- bytes

    def _set_bytes(self, f: FakeFile, data: ByteSource, hashes: dict[str, str] | None) -> None:
        if isinstance(data, bytes | bytearray | memoryview):
            f.content, f.path = bytes(data), None
        else:
            f.content, f.path = None, Path(data)
        f.size_kb = f.size_bytes / 1024
        f.hashes = dict(hashes) if hashes is not None else civitai_hashes(data)

    def add_file_bytes(
        self,
        version_id: int,
        data: ByteSource,
        *,
        name: str | None = None,
        type: str = "Model",
        format: str | None = "SafeTensor",
        size: str | None = "pruned",
        fp: str | None = "fp16",
        primary: bool = True,
        hashes: dict[str, str] | None = None,
        disposition_name: str | None = None,
        content_disposition: str | bytes | None = None,
        file_id: int | None = None,
    ) -> FakeFile:
        """Add a file with real bytes (or a path, served with sendfile) to a version.

        Hashes are computed per doc section 7 unless `hashes` is given (to advertise wrong
        ones). With `primary` (default) the file becomes the version's primary, so a plain
        ``/api/download/models/{version_id}`` serves it. `disposition_name` /
        `content_disposition` make storage send a different (hostile) filename.
        """
        if hashes is None:
            hashes = civitai_hashes(data)  # before taking the lock: 1 GiB takes seconds
        with self.lock:
            v = self.versions[version_id]
            m = self.models[v.model_id]
            fid = file_id if file_id is not None else self._new_id("file")
            metadata: dict[str, Any] = (
                {"format": format}
                if type == "Training Data"
                else {"format": format, "size": size, "fp": fp}
            )
            f = FakeFile(
                id=fid,
                name=name or download_filename(m, v, type, f"file_{fid}.safetensors"),
                type=type,
                metadata=metadata,
                scanned_at=v.created_at,
                version_id=v.id,
                disposition_name=disposition_name,
                content_disposition=content_disposition,
            )
            self._set_bytes(f, data, hashes)
            v.files.append(f)
            self.files[f.id] = f
            if primary:
                v.primary_file_id = f.id
            self.touch()
            return f

    def attach_bytes(
        self, file_id: int, data: ByteSource, *, hashes: dict[str, str] | None = None
    ) -> FakeFile:
        """Give an existing file real bytes; its size and hashes follow them (unless `hashes`)."""
        if hashes is None:
            hashes = civitai_hashes(data)
        with self.lock:
            f = self.files[file_id]
            self._set_bytes(f, data, hashes)
            self.touch()
            return f

    # ----------------------------------------------------------------- mutations

    def touch(self) -> None:
        """Invalidate caches after editing records directly."""
        with self.lock:
            self.generation += 1

    def model(self, model_id: int) -> FakeModel:
        return self.models[model_id]

    def version(self, version_id: int) -> FakeVersion:
        return self.versions[version_id]

    def file(self, file_id: int) -> FakeFile:
        return self.files[file_id]

    def archive_model(self, model_id: int) -> None:
        """``mode: Archived``: gone from /models, files emptied, download 410."""
        self.update_model(model_id, mode="Archived")

    def take_down_model(self, model_id: int) -> None:
        """``mode: TakenDown``: like archived, and images emptied too."""
        self.update_model(model_id, mode="TakenDown")

    def restore_model(self, model_id: int) -> None:
        self.update_model(model_id, mode=None)

    def delete_model(self, model_id: int) -> None:
        """Remove a model and everything under it (404 everywhere afterwards)."""
        with self.lock:
            m = self.models.pop(model_id)
            for v in m.versions:
                self._forget_version(v)
            self.favorites.discard(model_id)
            self.touch()

    def delete_version(self, version_id: int) -> None:
        """Remove one version (and its files)."""
        with self.lock:
            v = self.versions[version_id]
            m = self.models[v.model_id]
            m.versions.remove(v)
            self._forget_version(v)
            self.touch()

    def _forget_version(self, v: FakeVersion) -> None:
        self.versions.pop(v.id, None)
        for f in v.files:
            self.files.pop(f.id, None)

    def update_model(self, model_id: int, **fields: Any) -> FakeModel:
        """Set `FakeModel` attributes (snake_case names), e.g. ``name=``, ``stats=``."""
        with self.lock:
            m = self.models[model_id]
            for key, value in fields.items():
                if not hasattr(m, key):
                    raise AttributeError(f"FakeModel has no field {key!r}")
                setattr(m, key, value)
            self.touch()
            return m

    def set_file_size_kb(self, file_id: int, size_kb: float | None) -> FakeFile:
        """Advertise another ``sizeKB`` (None: none at all) without changing the bytes served."""
        with self.lock:
            f = self.files[file_id]
            f.size_kb = size_kb  # type: ignore[assignment]
            self.touch()
            return f

    def update_version(self, version_id: int, **fields: Any) -> FakeVersion:
        """Set `FakeVersion` attributes, e.g. ``require_auth=True``, ``usage_control=``."""
        with self.lock:
            v = self.versions[version_id]
            for key, value in fields.items():
                if not hasattr(v, key):
                    raise AttributeError(f"FakeVersion has no field {key!r}")
                setattr(v, key, value)
            self.touch()
            return v

    def add_version(
        self,
        model_id: int,
        *,
        name: str | None = None,
        base_model: str | None = None,
        published_at: str | None = None,
        n_files: int = 1,
        n_images: int = 2,
        nsfw_level: int = NSFW_PG,
    ) -> FakeVersion:
        """Add a new newest version (index 0), published after every other version by default."""
        with self.lock:
            m = self.models[model_id]
            base = base_model or (m.versions[0].base_model if m.versions else "SD 1.5")
            if published_at:
                pub_ms = parse_iso_ms(published_at)
            else:  # newer than anything in the catalog, like a fresh upload
                newest = max((x.published_ms for x in self.versions.values()), default=0)
                pub_ms = newest + 3_600_000
            v = self._generate_version(
                m, 0, pub_ms, base, nsfw_level, (n_files, n_files), (n_images, n_images)
            )
            v.status, v.usage_control, v.require_auth = "Published", "Download", False
            v.availability, v.early_access_deadline, v.paid_access = "Public", None, None
            v.nsfw_level = nsfw_level
            if name is not None:
                v.name = name
            m.versions.insert(0, v)
            self.touch()
            return v

    def add_model(
        self,
        *,
        type: str | None = None,
        name: str | None = None,
        base_model: str | None = None,
        n_versions: int = 1,
        n_files: int = 1,
        nsfw_level: int = NSFW_PG,
    ) -> FakeModel:
        """Add a plain, public, downloadable model (fresh ids)."""
        with self.lock:
            m = self._generate_model(
                mtype=type,
                base=base_model,
                name=name,
                versions_per_model=(n_versions, n_versions),
                files_per_version=(n_files, n_files),
                images_per_version=(1, 2),
            )
            m.mode, m.status, m.poi = None, "Published", False
            for v in m.versions:
                v.status, v.usage_control, v.require_auth = "Published", "Download", False
                v.availability, v.early_access_deadline, v.paid_access = "Public", None, None
                v.nsfw_level = nsfw_level
                if not v.files:
                    f = self._generate_file(m, v, 0, parse_iso_ms(v.created_at))
                    assert f is not None  # the first file is never a duplicate
                    v.files.append(f)
                    self.files[f.id] = f
            m.nsfw = bool(nsfw_level & (NSFW_R | NSFW_X | NSFW_XXX))
            self.touch()
            return m

    def set_hostile(self, model_id: int, *kinds: str | Callable[[dict[str, Any]], Any]) -> None:
        """Corrupt this model's JSON in every response (kinds: `shapes.HOSTILE_KINDS`).

        A callable gets the rendered dict and may edit it in place or return a replacement.
        Model endpoints corrupt the model object; version endpoints corrupt the version object.
        With no kinds, the model is made benign again.
        """
        with self.lock:
            _check_kinds(kinds)
            if kinds:
                self.hostile[model_id] = list(kinds)
            else:
                self.hostile.pop(model_id, None)

    def set_hostile_version(
        self, version_id: int, *kinds: str | Callable[[dict[str, Any]], Any]
    ) -> None:
        """Corrupt one version object wherever it appears."""
        with self.lock:
            _check_kinds(kinds)
            if kinds:
                self.hostile_versions[version_id] = list(kinds)
            else:
                self.hostile_versions.pop(version_id, None)

    # ----------------------------------------------------------------- queries

    def version_files(self, v: FakeVersion) -> list[FakeFile]:
        """Public files of `v`, plus the linked VAE's file when `vae_id` is set (doc 2.2)."""
        files = v.public_files
        if v.vae_id is not None:
            vae = self.versions.get(v.vae_id)
            linked = vae.primary_file() if vae is not None else None
            if linked is not None and linked not in files:
                files.append(linked)
        return files

    def file_type_in(self, v: FakeVersion, f: FakeFile) -> str:
        """A linked VAE's file shows as type ``VAE`` in the version that links it."""
        return "VAE" if f.version_id != v.id else f.type

    def listable_versions(self, m: FakeModel) -> list[FakeVersion]:
        """Versions `/models` may show: published and with at least one public file."""
        return [v for v in m.versions if v.status == "Published" and v.public_files]

    def expected_listing_ids(self, *, nsfw: bool = False) -> set[int]:
        """Model ids a full unfiltered `/models` walk returns (independent of the paging code)."""
        with self.lock:
            return {
                m.id
                for m in self.models.values()
                if m.status == "Published"
                and m.mode != "Archived"
                and self.listable_versions(m)
                and (nsfw or m.nsfw_level & NSFW_PG)
            }

    def sorted_models(self, sort: str) -> tuple[list[FakeModel], list[tuple[int, ...]]]:
        """All models in `/models` order for `sort`, with their ascending bisect keys."""
        with self.lock:
            cached = self._sort_cache.get(sort)
            if cached is not None and cached[0] == self.generation:
                return cached[1], cached[2]
            key_fn, descending = SORTS[sort]
            rows = [(key_fn(m), m) for m in self.models.values()]
            rows.sort(key=lambda r: r[0], reverse=descending)
            models = [m for _, m in rows]
            keys = [tuple(-x for x in k) if descending else k for k, _ in rows]
            self._sort_cache[sort] = (self.generation, models, keys)
            return models, keys

    def files_by_hash(self, digest: str) -> list[FakeFile]:
        """Files having `digest` (any of the six types; case-insensitive)."""
        with self.lock:
            if self._hash_index is None or self._hash_index[0] != self.generation:
                index: dict[str, list[FakeFile]] = {}
                for f in self.files.values():
                    for value in set(f.hashes.values()):
                        index.setdefault(value.upper(), []).append(f)
                self._hash_index = (self.generation, index)
            return list(self._hash_index[1].get(digest.strip().upper(), ()))

    def iter_models(self) -> Iterator[FakeModel]:
        return iter(list(self.models.values()))


def _stat(m: FakeModel, key: str) -> int:
    value = m.stats.get(key)
    return value if isinstance(value, int) else 0


SORTS: dict[str, tuple[Callable[[FakeModel], tuple[int, ...]], bool]] = {
    "Highest Rated": (lambda m: (_stat(m, "thumbsUpCount"), _stat(m, "downloadCount"), m.id), True),
    "Most Downloaded": (
        lambda m: (_stat(m, "downloadCount"), _stat(m, "thumbsUpCount"), m.id),
        True,
    ),
    "Most Liked": (lambda m: (_stat(m, "thumbsUpCount"), _stat(m, "downloadCount"), m.id), True),
    "Most Discussed": (lambda m: (_stat(m, "commentCount"), _stat(m, "thumbsUpCount"), m.id), True),
    "Most Collected": (lambda m: (m.collected_count, _stat(m, "thumbsUpCount"), m.id), True),
    "Most Images": (lambda m: (sum(len(v.images) for v in m.versions), m.id), True),
    "Newest": (lambda m: (m.last_published_ms, m.id), True),
    "Oldest": (lambda m: (m.last_published_ms, m.id), False),
}
"""`/models` sort name -> (sort key, descending); the cursor is the key joined with ``|``."""


def _check_kinds(kinds: Iterable[object]) -> None:
    from tests.fakeciv.shapes import HOSTILE_KINDS

    for kind in kinds:
        if not callable(kind) and kind not in HOSTILE_KINDS:
            raise ValueError(f"unknown hostile kind {kind!r}; known: {sorted(HOSTILE_KINDS)}")


def _image_id_from_url(url: str) -> int:
    tail = url.rsplit("/", 1)[-1].split(".", 1)[0]
    return int(tail) if tail.isdigit() else -1


def _fixture_placeholder_meta() -> dict[str, Any]:
    return {"prompt": "fixture image", "steps": 28, "sampler": "DPM++ 2M", "cfgScale": 6}


def _materialized_bytes(f: FakeFile, size: int, m: FakeModel, v: FakeVersion) -> bytes:
    if f.name.endswith(".safetensors"):
        meta = {
            "ss_output_name": f.name.rsplit(".", 1)[0],
            "ss_base_model_version": v.base_model,
            "fakeciv_file_id": str(f.id),
            "modelspec.title": m.name,
        }
        return make_safetensors(
            {"w": [float(f.id % 97), 1.0]}, metadata=meta, filler_bytes=max(0, size - 300)
        )
    seed = f"fakeciv:{f.id}:".encode()
    return (seed * (size // len(seed) + 1))[:size]
