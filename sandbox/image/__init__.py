"""The pinned sandbox image: build it from cached inputs, record it, verify it before each run.

Build from scratch with one command: ``scripts/build-sandbox-image`` (or
``python -m sandbox.image build``); see `build_image` for the options.
"""

from __future__ import annotations

from sandbox.image.build import (
    IMAGE_REPOSITORY,
    build_image,
    prune_images,
    render_dockerfile,
    worker_digest,
)
from sandbox.image.record import (
    ImageRecord,
    load_record,
    save_record,
    verify_image,
)

__all__ = [
    "IMAGE_REPOSITORY",
    "ImageRecord",
    "build_image",
    "load_record",
    "prune_images",
    "render_dockerfile",
    "save_record",
    "verify_image",
    "worker_digest",
]
