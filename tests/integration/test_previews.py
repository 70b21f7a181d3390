"""Preview images against the fake Civitai serving real and hostile images: the console
script fetches, refuses each attack with its one-line error and caches nothing of it, holds
NSFW images back, stays within a small cap, prunes, and `models show --json` lists images."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from assetmgr.store.image_cache import INDEX_NAME
from tests import hostile as h
from tests.fakeciv import FakeCatalog, FakeCivitai
from tests.fakeciv.images import SECRET_TEXT, FakeImages, image_of

REPO_ROOT = Path(__file__).resolve().parents[2]
CONSOLE_SCRIPT = Path(sys.executable).parent / "assetmgr"
API_KEY = "test-api-key-0123456789"


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(CONSOLE_SCRIPT), *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "COLUMNS": "400", **(env or {})},
    )


def ok(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    result = run_cli(*args, env=env)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    return result


def cache_dir() -> Path:
    return Path(os.environ["ASSETMGR_HOME"]) / "cache" / "images"


def cached_files() -> list[Path]:
    """Every file under the cache but its index and tag: thumbnails and any leftover temp."""
    root = cache_dir()
    if not root.exists():
        return []
    return [p for p in root.rglob("*") if p.is_file() and p.parent != root]


def index_entries() -> list[tuple[str, int]]:
    index = cache_dir() / INDEX_NAME
    if not index.exists():
        return []
    with sqlite3.connect(index) as db:
        return [(str(k), int(s)) for k, s in db.execute("SELECT key, size FROM entry")]


def write_config(**values: str) -> None:
    home = Path(os.environ["ASSETMGR_HOME"])
    home.mkdir(parents=True, exist_ok=True)
    (home / "config.toml").write_text("".join(f'{k} = "{v}"\n' for k, v in values.items()))


def image_id(url: str) -> int:
    return int(url.rsplit("/", 1)[1].split(".", 1)[0])


@pytest.fixture
def images() -> FakeImages:
    return FakeImages()


@pytest.fixture
def catalog() -> FakeCatalog:
    return FakeCatalog.generate(10, seed=3, images_per_version=(2, 3))


@pytest.fixture
def gallery(catalog: FakeCatalog, images: FakeImages) -> Iterator[FakeCivitai]:
    with FakeCivitai(catalog, images=images, api_keys={API_KEY}) as fake:
        ok("sync", "--api-base", fake.base_url, "--nsfw", "--json")
        yield fake


def shown(model_id: int) -> dict[str, Any]:
    """`models show --json`'s object, from the same use case, in this process (the command
    itself is run in `test_fetch_caches_clean_thumbnails_without_credentials`)."""
    from assetmgr.app.context import AppContext
    from assetmgr.app.models import show_model
    from assetmgr.config import Settings

    with AppContext(Settings.load()) as ctx:
        return show_model(ctx, model_id)


def models_with(predicate: Any) -> list[tuple[int, list[dict[str, Any]]]]:
    """(model id, its still images as `models show` lists them) for models matching."""
    from assetmgr.app.context import AppContext
    from assetmgr.app.models import list_models
    from assetmgr.config import Settings

    with AppContext(Settings.load()) as ctx:
        listed = list_models(ctx).objects
    out = []
    for m in listed:
        stills = [
            i for v in shown(m["id"])["versions"] for i in v["images"] if i["type"] == "image"
        ]
        if stills and predicate(stills):
            out.append((m["id"], stills))
    return out


def pg_model() -> tuple[int, list[dict[str, Any]]]:
    return models_with(lambda s: all(i["nsfw_level"] == 1 for i in s))[0]


# --- fetching ---------------------------------------------------------------------------------


def test_fetch_caches_clean_thumbnails_without_credentials(
    gallery: FakeCivitai, catalog: FakeCatalog
) -> None:
    model_id, stills = pg_model()
    before = shown(model_id)
    assert all(i["local_path"] is None for v in before["versions"] for i in v["images"])
    gallery.reset_log()
    result = ok(
        "previews",
        "fetch",
        "--model-id",
        str(model_id),
        "--api-base",
        gallery.base_url,
        env={"CIVITAI_API_KEY": API_KEY, "ASSETMGR_FORCE_PROGRESS": "1"},
    )
    assert "previews ━" in result.stderr and f" {len(stills)}/{len(stills)}\n" in result.stderr
    paths = result.stdout.split()
    assert len(paths) == len(stills)
    assert f"previews of {len(stills)} images: {len(stills)} fetched" in result.stderr
    image_requests = [r for r in gallery.api_requests if r.path.startswith("/img/")]
    assert len(image_requests) == len(stills)
    for request in image_requests:
        assert "/width=512/" in request.path  # the edge's resize, not the original
        assert "authorization" not in request.headers and "cookie" not in request.headers
        assert request.query == ""
    for path in map(Path, paths):
        assert path.parent.parent == cache_dir() and path.stat().st_size < 64 << 10
        data = path.read_bytes()
        assert SECRET_TEXT.encode() not in data  # the served pictures carry it in EXIF/text
        with Image.open(path) as thumb:
            assert max(thumb.size) <= 512
    after = json.loads(ok("models", "show", str(model_id), "--json").stdout)
    for version in after["versions"]:
        for image in version["images"]:
            fake_image = image_of(catalog, image_id(image["url"]))
            assert image["blurhash"] == fake_image.hash
            assert image["meta"] is None  # listings carry no generation data (doc 2.4)
            assert (image["width"], image["height"]) == (fake_image.width, fake_image.height)
            assert image["nsfw_level"] == fake_image.nsfw_level and image["nsfw"] == "PG"
            assert image["source"] == "civitai" and not image["above_threshold"]
            if image["type"] == "image":
                assert image["local_path"] in paths
    # A second run finds them all cached and asks the host for nothing.
    gallery.reset_log()
    again = ok("previews", "fetch", "--model-id", str(model_id), "--api-base", gallery.base_url)
    assert f"0 fetched, {len(stills)} already cached" in again.stderr
    assert gallery.count_prefix("/img/") == 0


def test_plain_models_show_counts_images() -> None:
    with FakeCivitai(FakeCatalog.generate(4, seed=5, images_per_version=(2, 2))) as fake:
        ok("sync", "--api-base", fake.base_url, "--nsfw")
        model = json.loads(ok("models", "list", "--json").stdout)[0]
        assert "    images: 2 (0 cached" in ok("models", "show", str(model["id"])).stdout


# --- attacks ----------------------------------------------------------------------------------

ATTACKS = {
    "bomb": (
        "declares 400000000 pixels, over the 36000000-pixel limit (a decompression bomb?); "
        "refused, nothing was kept",
        "decompression bomb",
    ),
    "truncated": ("is truncated; refused, nothing was kept", "ends early"),
    "svg": (
        "is image/svg+xml, not a JPEG, PNG or WebP image; nothing was kept",
        "Only JPEG, PNG and WebP",
    ),
    "mislabelled": (
        "is not a JPEG, PNG or WebP image; refused, nothing was kept",
        "Only JPEG, PNG and WebP",
    ),
    "redirect": (
        "redirected to another host ({storage}/img/",
        "follow redirects only within image.civitai.com and the API's own origin",
    ),
    "huge-declared": (
        "declares 2147483648 bytes, over the 16777216-byte (16 MiB) limit; nothing was kept",
        "oversized or endless body",
    ),
    "huge-streamed": (
        "grew past the 16777216-byte (16 MiB) limit; stopped reading; nothing was kept",
        "oversized or endless body",
    ),
}


@pytest.mark.parametrize("kind", list(ATTACKS))
def test_hostile_images_are_refused_with_one_line_and_nothing_cached(
    kind: str, gallery: FakeCivitai, images: FakeImages
) -> None:
    model_id, stills = pg_model()
    for still in stills:
        images.make_hostile(image_id(still["url"]), kind)
    gallery.reset_log()
    result = run_cli(
        "previews", "fetch", "--model-id", str(model_id), "--api-base", gallery.base_url
    )
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""
    phrase, hint = ATTACKS[kind]
    phrase = phrase.format(storage=gallery.storage_url)
    lines = result.stderr.splitlines()
    errors = [line for line in lines if line.startswith("error: ")]
    hints = [line for line in lines if line.startswith("hint: ")]
    assert len(errors) == len(stills) and len(hints) == len(stills)
    for line in errors:
        assert line.startswith("error: version ") and f"image {gallery.base_url}/img/" in line
        assert phrase in line, line
    assert all(hint in line for line in hints)
    assert f"{len(stills)} failed" in lines[-1]
    # Nothing of any of them was kept: no thumbnail, no temporary file, no index entry.
    assert cached_files() == [] and index_entries() == []
    assert all(i["local_path"] is None for v in shown(model_id)["versions"] for i in v["images"])
    if kind == "redirect":
        assert gallery.count_prefix("/img/", server="storage") == 0  # never followed
    if kind.startswith("huge"):
        assert images.wait_idle()
        # Streamed until the client hung up: the cap plus what the sockets buffered.
        assert images.streamed_bytes < len(stills) * (16 << 20) + (64 << 20)


def test_a_redirect_within_the_origin_is_followed(gallery: FakeCivitai, images: FakeImages) -> None:
    model_id, stills = pg_model()
    images.make_hostile(image_id(stills[0]["url"]), "redirect-same")
    result = ok("previews", "fetch", "--model-id", str(model_id), "--api-base", gallery.base_url)
    assert f"{len(stills)} fetched" in result.stderr
    assert len(index_entries()) == len(stills)


def test_catalog_urls_on_other_hosts_are_never_fetched(tmp_path: Path) -> None:
    catalog = FakeCatalog.generate(3, seed=9, images_per_version=(2, 2))
    images = FakeImages()
    with FakeCivitai(catalog, images=images) as fake:
        version = next(
            v for v in catalog.versions.values() if v.images and v.images[0].type == "image"
        )
        first, *rest = version.images
        # Another origin (the storage server serves images too) and a URL full of controls.
        first.url = f"{fake.storage_url}/img/a/b/width=450/{first.id}.jpeg"
        for image in rest:
            image.url = f"http://evil.example/{h.OSC52}{h.C1_CSI}x.png"
        ok("sync", "--api-base", fake.base_url, "--nsfw")
        fake.reset_log()
        result = subprocess.run(
            [
                str(CONSOLE_SCRIPT),
                "previews",
                "fetch",
                "--api-base",
                fake.base_url,
                "--model-id",
                str(version.model_id),
            ],
            cwd=REPO_ROOT,
            capture_output=True,
            timeout=300,
            env={**os.environ, "COLUMNS": "400", "FORCE_COLOR": "1"},
        )
        assert result.returncode == 1
        assert h.find_forbidden(result.stdout + result.stderr) == []
        stderr = result.stderr.decode()
        assert (
            f"image {fake.storage_url}/img/a/b/width=512/{first.id}.jpeg is not on an image host"
            " assetmgr fetches from, not fetched; nothing was kept"
        ) in stderr
        assert "Previews are fetched only from image.civitai.com" in stderr
        assert fake.count_prefix("/img/", server="storage") == 0
        assert not any(r.path.endswith(f"/{first.id}.jpeg") for r in fake.requests)
        assert all(not key.startswith(fake.storage_url) for key, _ in index_entries())


# --- NSFW, --local, the cap, prune ------------------------------------------------------------


def test_images_above_the_threshold_are_fetched_in_bulk_only_when_asked(
    gallery: FakeCivitai,
) -> None:
    model_id, stills = models_with(lambda s: any(i["nsfw_level"] > 1 for i in s))[0]
    above = [i for i in stills if i["nsfw_level"] > 1]
    assert all(i["above_threshold"] for i in above)
    gallery.reset_log()
    result = ok(
        "previews",
        "fetch",
        "--model-id",
        str(model_id),
        "--api-base",
        gallery.base_url,
        "--json",
    )
    report = json.loads(result.stdout)
    assert report["threshold"] == "PG"
    skipped = {i["url"] for i in report["images"] if i["reason"] == "nsfw"}
    assert skipped == {i["url"] for i in above}
    asked = {r.path.rsplit("/", 1)[1] for r in gallery.api_requests if r.path.startswith("/img/")}
    assert not asked & {i["url"].rsplit("/", 1)[1] for i in above}  # never even requested
    nsfw = json.loads(
        ok(
            "previews",
            "fetch",
            "--model-id",
            str(model_id),
            "--api-base",
            gallery.base_url,
            "--nsfw",
            "--json",
        ).stdout
    )
    assert {i["url"] for i in nsfw["images"] if i["state"] == "fetched"} == {
        i["url"] for i in above
    }
    # A higher threshold shows them without --nsfw (they are cached now, so: "cached").
    write_config(nsfw_threshold="XXX")
    relaxed = json.loads(ok("previews", "fetch", "--model-id", str(model_id), "--json").stdout)
    assert relaxed["threshold"] == "XXX"
    assert all(i["reason"] != "nsfw" for i in relaxed["images"])


def test_local_limits_the_bulk_fetch_to_models_with_files(gallery: FakeCivitai) -> None:
    from sqlmodel import col, select

    from catalog.db import open_catalog, session_scope
    from catalog.models import LocalFile, ModelFile, ModelVersion

    model_id, stills = pg_model()
    nothing = json.loads(ok("previews", "fetch", "--local", "--json").stdout)
    assert nothing["images"] == []
    engine = open_catalog(f"sqlite:///{Path(os.environ['ASSETMGR_HOME']) / 'catalog.sqlite3'}")
    try:
        with session_scope(engine, write=True) as session:
            f = session.exec(
                select(ModelFile)
                .join(ModelVersion, col(ModelVersion.id) == col(ModelFile.version_id))
                .where(col(ModelVersion.model_id) == model_id)
            ).first()
            assert f is not None
            session.add(LocalFile(file_id=f.id, state="verified", sha256=f.sha256))
    finally:
        engine.dispose()
    report = json.loads(
        ok("previews", "fetch", "--local", "--api-base", gallery.base_url, "--json").stdout
    )
    assert {i["model_id"] for i in report["images"]} == {model_id}
    assert sum(i["state"] == "fetched" for i in report["images"]) == len(stills)


def test_the_cache_never_exceeds_a_small_cap(gallery: FakeCivitai) -> None:
    from assetmgr.app.context import AppContext
    from assetmgr.app.previews import FetchItem, fetch_previews
    from assetmgr.config import Settings

    cap = 12_000  # a few thumbnails
    write_config(preview_cache_size=str(cap), nsfw_threshold="XXX")
    on_disk: list[int] = []

    def watch(done: int, total: int, item: FetchItem) -> None:
        on_disk.append(sum(p.stat().st_size for p in cached_files()))

    with AppContext(Settings.load(api_base=gallery.base_url)) as ctx:
        report = fetch_previews(ctx, progress=watch, workers=2)
    assert report.count("fetched") >= 2 and report.cache_full
    assert report.count("skipped", "cache-full") > 0
    assert on_disk and max(on_disk) <= cap
    assert report.usage is not None and report.usage.bytes <= cap
    assert sum(size for _, size in index_entries()) <= cap
    # The command line says so, stays within the cap, and exits 0 (nothing failed).
    result = ok("previews", "fetch", "--api-base", gallery.base_url)
    assert "not fetched: the cache is full (raise preview_cache_size)" in result.stderr
    assert sum(p.stat().st_size for p in cached_files()) <= cap


def test_prune_brings_the_cache_within_a_lowered_cap(gallery: FakeCivitai) -> None:
    ok("previews", "fetch", "--api-base", gallery.base_url, "--nsfw")
    before = index_entries()
    assert len(before) > 4
    cap = sum(size for _, size in before) // 3
    write_config(preview_cache_size=str(cap))
    report = json.loads(ok("previews", "prune", "--json").stdout)
    assert report["removed"] and report["freed_bytes"] > 0
    assert report["cache"]["bytes"] <= cap and report["cache"]["max_bytes"] == cap
    assert sum(p.stat().st_size for p in cached_files()) <= cap
    removed = {r["key"] for r in report["removed"]}
    assert removed.isdisjoint(key for key, _ in index_entries())
    plain = ok("previews", "prune")
    assert plain.stderr.startswith("pruned 0 previews, 0 bytes freed; cache ")


def test_bad_cache_settings_are_one_line_errors() -> None:
    write_config(preview_cache_size="lots")
    result = run_cli("previews", "prune")
    assert result.returncode == 2
    assert result.stderr.splitlines()[0] == "error: bad preview cache size 'lots' in " + str(
        Path(os.environ["ASSETMGR_HOME"]) / "config.toml"
    )
    write_config(nsfw_threshold="NC-17")
    result = run_cli("previews", "prune")
    assert result.returncode == 2
    assert "hint: Set nsfw_threshold to one of PG, PG-13, R, X, XXX." in result.stderr


def test_an_unknown_model_id_says_how_to_get_it(gallery: FakeCivitai) -> None:
    result = run_cli("previews", "fetch", "--model-id", "424242")
    assert result.returncode == 3
    assert result.stderr.splitlines() == [
        "error: model 424242 is not in the catalog",
        "hint: Run `assetmgr sync --model-id 424242` to fetch it.",
    ]


def test_an_unreachable_image_host_ends_the_bulk_fetch_early() -> None:
    from assetmgr.app.previews import FETCH_WORKERS, UNREACHABLE_AFTER

    catalog = FakeCatalog.generate(10, seed=3, images_per_version=(2, 3))
    with FakeCivitai(catalog, images=FakeImages()) as fake:
        ok("sync", "--api-base", fake.base_url, "--nsfw")
        base = fake.base_url
    # The server is gone: nothing listens on its port any more.
    result = run_cli("previews", "fetch", "--api-base", base, "--json")
    assert result.returncode == 1
    report = json.loads(result.stdout)
    failed = [i for i in report["images"] if i["state"] == "failed"]
    assert UNREACHABLE_AFTER <= len(failed) < UNREACHABLE_AFTER + FETCH_WORKERS
    assert all("could not be fetched (ConnectError)" in i["error"] for i in failed)
    skipped = [i for i in report["images"] if i["reason"] == "unreachable"]
    assert len(skipped) > 10 and index_entries() == []
