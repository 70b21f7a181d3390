"""What a build produced, persisted as JSON, and the check every run makes against the engine."""

from __future__ import annotations

import os
import tempfile
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, JsonValue, ValidationError

from sandbox.errors import ImageError, ImageMismatchError

LABEL_PREFIX = "io.assetmgr."
RECORD_FILENAME = "image.json"


class ImageRecord(BaseModel):
    """The pinned sandbox image: run by `image_id`, trusted only while `verify_image` passes."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    image_id: str = Field(pattern=r"^sha256:[0-9a-f]{64}$")
    """The image config digest on this engine (imported/built images have no RepoDigests)."""
    tag: str
    """Human-facing tag; `verify_image` checks it still points at `image_id`."""
    layer_diff_ids: list[str]
    """``RootFS.Layers``: the first is the rootfs tarball's sha256 on the debootstrap route."""
    lock_sha256: str
    rootfs_sha256: str | None
    """sha256 of the base rootfs tarball; None on the digest-pinned Dockerfile route."""
    base_ref: str
    """What the Dockerfile's FROM named: the imported base's id, or ``name@sha256:...``."""
    torch_variant: Literal["cpu", "cuda"]
    app_version: str
    worker_sha256: str
    inputs_sha256: str
    labels: dict[str, str]
    created_at: datetime
    size_bytes: int = 0
    build_inputs: dict[str, JsonValue] = Field(default_factory=dict)
    timings_s: dict[str, float] = Field(default_factory=dict)
    plugin_requirements: list[str] = Field(default_factory=list)
    """Every pinned requirement of the plugin sets below (for display)."""
    plugin_requirements_sha256: str | None = None
    plugin_dep_sets: dict[str, list[str]] = Field(default_factory=dict)
    """Each plugin requirement set the image holds, by key (its ``/opt/plugin-deps/<key>``
    directory, `sandbox.plugins.requirements_key`): the pins it was resolved from."""


def save_record(record: ImageRecord, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".image-", suffix=".json", dir=path.parent)
    with os.fdopen(fd, "w") as f:
        f.write(record.model_dump_json(indent=2))
    os.replace(tmp, path)
    return path


def load_record(path: Path) -> ImageRecord:
    try:
        return ImageRecord.model_validate_json(path.read_bytes())
    except FileNotFoundError as exc:
        raise ImageError(f"no sandbox image has been built yet ({path} is missing)") from exc
    except (OSError, ValidationError) as exc:
        raise ImageError(f"unreadable sandbox image record {path}: {exc}") from exc


def verify_image(record: ImageRecord, client: Any = None) -> None:
    """Raise `ImageMismatchError` unless the engine still holds exactly the recorded image.

    Checks the image id, every layer DiffID, the rootfs layer against the tarball hash, every
    recorded label, and that the tag was not moved to another image (rebuilt or re-tagged).
    Runs before every job (warm ones too), so the usual case costs one engine call: the tag is
    inspected first, and when it resolves to the recorded id that inspection *is* the image's;
    otherwise the id is inspected too, for the error.
    """
    import docker.errors

    from sandbox.engine import engine_client

    client = client or engine_client()
    tagged: Any = None
    try:
        tagged = client.images.get(record.tag)
    except docker.errors.ImageNotFound:
        pass
    except docker.errors.DockerException as exc:
        raise ImageError(f"cannot inspect the sandbox image: {exc}") from exc
    if tagged is not None and tagged.id == record.image_id:
        image = tagged
    else:
        try:
            image = client.images.get(record.image_id)
        except docker.errors.ImageNotFound as exc:
            raise ImageMismatchError(
                f"the sandbox image {record.image_id[:19]} is not on this Docker engine"
            ) from exc
        except docker.errors.DockerException as exc:
            raise ImageError(f"cannot inspect the sandbox image: {exc}") from exc
    problems = []
    if image.id != record.image_id:
        problems.append(f"id {image.id} != {record.image_id}")
    layers = list(image.attrs.get("RootFS", {}).get("Layers") or [])
    if layers != record.layer_diff_ids:
        problems.append("layer DiffIDs differ")
    if record.rootfs_sha256 and (not layers or layers[0] != "sha256:" + record.rootfs_sha256):
        problems.append("base layer is not the recorded rootfs tarball")
    labels = image.labels or {}
    for key, value in record.labels.items():
        if labels.get(key) != value:
            problems.append(f"label {key}={labels.get(key)!r}, recorded {value!r}")
    if tagged is None:
        problems.append(f"tag {record.tag} was removed")
    elif tagged.id != record.image_id:
        problems.append(f"tag {record.tag} now points at {tagged.id[:19]}")
    if problems:
        raise ImageMismatchError("sandbox image does not match its record: " + "; ".join(problems))
