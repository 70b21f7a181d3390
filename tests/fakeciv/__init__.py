"""A fake civitai.com for integration tests and benchmarks.

Quick start::

    from tests.fakeciv import FakeCatalog, FakeCivitai

    catalog = FakeCatalog.generate(500, seed=1, include_fixtures=True)
    with FakeCivitai(catalog, api_keys={"secret-key"}) as fake:
        fake.base_url        # http://127.0.0.1:PORT   (the API; use as the client's base URL)
        fake.storage_url     # http://127.0.0.1:PORT2  (download redirects point here)

Recipes:

* end-to-end download: ``f = catalog.add_file_bytes(version_id, data_or_path)`` then
  ``GET {base_url}/api/download/models/{version_id}`` -> 307 -> bytes whose hashes are
  ``f.hashes`` (computed per doc section 7);
* resume: ``fake.storage_faults.cut_body_after(n)``; retries: ``fake.faults.schedule(["503",
  "drop", "ok"])``; expiry: ``fake.advance_clock(fake.url_ttl + 1)``;
* incremental sync: ``catalog.archive_model(id)``, ``delete_model``, ``delete_version``,
  ``add_version``, ``update_model`` between two syncs; expected ids of a full walk:
  ``catalog.expected_listing_ids(nsfw=False)``; pages fetched: ``fake.count("/api/v1/models")``;
* robustness: ``catalog.set_hostile(model_id, "missing_id", "huge_description", ...)``
  (kinds in `HOSTILE_KINDS`);
* a hostile server: ``fake.faults.schedule(["gzipbomb"], path="/api/v1/models")``, or
  ``"endless"``, ``"length:<n>"``, ``"redirect:<url>"``, also on ``fake.storage_faults``;
  ``catalog.set_file_size_kb(file_id, None)`` hides a file's size;
* secrets: ``fake.storage_requests`` holds every storage request's headers and query, to prove
  the API key never left the API origin.

Modules:

* `data` - `FakeCatalog` and its records; generation, fixtures, real bytes, mutations;
* `hashes` - `civitai_hashes()` (the six hashes of doc section 7), `make_safetensors()`,
  `write_big_file()`;
* `shapes` - the JSON shapes of doc section 2 and the hostile payload kinds;
* `faults` - `FaultInjector` (503/429/drop/... schedules, body cuts, throttling);
* `hostile` - the bodies of the hostile kinds: a gzip bomb, endless and mislabelled streams;
* `images` - `FakeImages` (``FakeCivitai(images=FakeImages())``): real JPEG/PNG/WebP previews
  with real BlurHashes, the ``width=`` transform, and hostile images (bomb, truncated, SVG,
  mislabelled, cross-host redirect, 2 GiB bodies) via ``make_hostile(image_id, kind)``;
* `server` - `FakeCivitai`, the two HTTP servers, and their request log.

Standalone (from the repository root): ``python -m tests.fakeciv --port 8765 --models 2000``
(``--big-file 1GiB`` adds a path-backed file for downloader benchmarks; ``--help`` for more).
"""

from tests.fakeciv.data import (
    FakeCatalog,
    FakeFile,
    FakeImage,
    FakeModel,
    FakeVersion,
)
from tests.fakeciv.faults import FaultInjector
from tests.fakeciv.hashes import civitai_hashes, make_safetensors, write_big_file
from tests.fakeciv.server import FakeCivitai, RecordedRequest
from tests.fakeciv.shapes import HOSTILE_KINDS

__all__ = [
    "HOSTILE_KINDS",
    "FakeCatalog",
    "FakeCivitai",
    "FakeFile",
    "FakeImage",
    "FakeModel",
    "FakeVersion",
    "FaultInjector",
    "RecordedRequest",
    "civitai_hashes",
    "make_safetensors",
    "write_big_file",
]
