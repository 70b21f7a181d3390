"""The image cache on a real folder: content-addressed files, LRU within the cap, a planted
link or foreign file never written through or over, and prune cleaning what a crash left."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from assetmgr.store.image_cache import (
    INDEX_NAME,
    ImageCache,
    ImageCacheConflictError,
    ImageCacheFullError,
    sidecar_key,
)
from assetmgr.store.thumbnails import Thumbnail, make_thumbnail
from assetmgr.wording import describe
from tests.fakeciv.images import encode, picture


def thumb(seed: int, side: int = 64) -> Thumbnail:
    return make_thumbnail(encode(picture(seed, side, side), "PNG"), source=f"seed {seed}")


def stored_bytes(root: Path) -> int:
    """What the thumbnails take on disk (the index aside)."""
    return sum(
        p.stat().st_size
        for p in root.rglob("*")
        if p.is_file() and p.parent != root and not p.is_symlink()
    )


def test_put_get_and_share_identical_bytes(tmp_path: Path) -> None:
    cache = ImageCache(tmp_path / "c", max_bytes=1 << 20)
    t = thumb(1)
    a = cache.put("https://image.civitai.com/a.jpeg", t, origin="civitai", version_id=5)
    b = cache.put("https://image.civitai.com/b.jpeg", t, origin="civitai", version_id=6)
    assert a.path == b.path and a.path.read_bytes() == t.data
    assert a.path.name == f"{a.sha256}{a.path.suffix}"
    assert stat.S_IMODE(a.path.stat().st_mode) == 0o600
    assert stat.S_IMODE(a.path.parent.stat().st_mode) == 0o700
    usage = cache.usage()
    assert (usage.entries, usage.files, usage.bytes) == (2, 1, len(t.data))
    got = cache.get("https://image.civitai.com/a.jpeg")
    assert got is not None and got.version_id == 5 and got.last_used >= a.last_used
    assert cache.get("https://image.civitai.com/missing.jpeg") is None
    assert cache.remove("https://image.civitai.com/a.jpeg")
    assert a.path.exists()  # still named by b
    assert cache.remove("https://image.civitai.com/b.jpeg")
    assert not a.path.exists()


def test_never_exceeds_the_cap_and_evicts_least_recently_used(tmp_path: Path) -> None:
    thumbs = [thumb(seed) for seed in range(12)]
    size = max(len(t.data) for t in thumbs)
    cap = 4 * size
    cache = ImageCache(tmp_path / "c", max_bytes=cap)
    for i, t in enumerate(thumbs):
        cache.put(f"k{i}", t, origin="civitai")
        if i == 3:
            assert cache.get("k0") is not None  # k0 used again: k1 goes first
        assert cache.usage().bytes <= cap
        assert stored_bytes(tmp_path / "c") <= cap
    kept = set(cache.peek(f"k{i}" for i in range(12)))
    assert "k11" in kept and "k1" not in kept and "k2" not in kept
    assert len(kept) <= 4


def test_own_sidecar_previews_go_last_and_protected_keys_never(tmp_path: Path) -> None:
    thumbs = [thumb(seed) for seed in range(6)]
    cap = 3 * max(len(t.data) for t in thumbs)
    cache = ImageCache(tmp_path / "c", max_bytes=cap)
    cache.put(sidecar_key(7), thumbs[0], origin="sidecar", version_id=7)
    cache.put("a", thumbs[1], origin="civitai")
    cache.put("b", thumbs[2], origin="civitai")
    cache.put("c", thumbs[3], origin="civitai", protect={"a", "b"})  # the sidecar must go
    assert set(cache.peek([sidecar_key(7), "a", "b", "c"])) == {"a", "b", "c"}
    with pytest.raises(ImageCacheFullError) as caught:
        cache.put("d", thumbs[4], origin="civitai", protect={"a", "b", "c"})
    assert set(cache.peek(["a", "b", "c", "d"])) == {"a", "b", "c"}  # nothing changed
    words = describe(caught.value)
    assert words is not None and "preview_cache_size" in words.hint
    tiny = ImageCache(tmp_path / "tiny", max_bytes=10)
    with pytest.raises(ImageCacheFullError):
        tiny.put("x", thumbs[5], origin="civitai")
    assert stored_bytes(tmp_path / "tiny") == 0


def test_a_planted_link_in_the_cache_is_never_written_through(tmp_path: Path) -> None:
    root = tmp_path / "c"
    cache = ImageCache(root, max_bytes=1 << 20)
    t = thumb(3)
    probe = cache.put("probe", t, origin="civitai")
    cache.remove("probe")
    victim = tmp_path / "victim.txt"
    victim.write_text("the user's file")
    probe.path.symlink_to(victim)  # where the next write of these bytes would go
    with pytest.raises(ImageCacheConflictError) as caught:
        cache.put("k", t, origin="civitai")
    assert "is a symbolic link" in caught.value.message
    assert victim.read_text() == "the user's file"
    assert cache.get("k") is None
    words = describe(caught.value)
    assert words is not None and words.title == "Image cache conflict"


def test_a_linked_shard_folder_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "c"
    cache = ImageCache(root, max_bytes=1 << 20)
    t = thumb(4)
    probe = cache.put("probe", t, origin="civitai")
    cache.remove("probe")
    shard = probe.path.parent
    shard.rmdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shard.symlink_to(elsewhere)
    with pytest.raises(Exception, match="symbolic link"):
        cache.put("k", t, origin="civitai")
    assert list(elsewhere.iterdir()) == []


def test_a_foreign_file_in_place_is_not_replaced(tmp_path: Path) -> None:
    cache = ImageCache(tmp_path / "c", max_bytes=1 << 20)
    t = thumb(5)
    probe = cache.put("probe", t, origin="civitai")
    cache.remove("probe")
    probe.path.write_bytes(b"someone else's bytes")
    with pytest.raises(ImageCacheConflictError, match="did not write"):
        cache.put("k", t, origin="civitai")
    assert probe.path.read_bytes() == b"someone else's bytes"


def test_get_forgets_an_entry_whose_file_went(tmp_path: Path) -> None:
    cache = ImageCache(tmp_path / "c", max_bytes=1 << 20)
    entry = cache.put("k", thumb(6), origin="civitai")
    entry.path.unlink()
    assert cache.get("k") is None
    assert cache.usage().entries == 0


def test_prune_removes_orphans_temps_and_evicts_to_the_cap(tmp_path: Path) -> None:
    root = tmp_path / "c"
    thumbs = [thumb(seed) for seed in range(4)]
    cache = ImageCache(root, max_bytes=1 << 20)
    for i, t in enumerate(thumbs):
        cache.put(f"k{i}", t, origin="civitai")
    gone = cache.put("gone", thumb(9), origin="civitai")
    gone.path.unlink()
    shard = root / "ab"
    shard.mkdir(mode=0o700)
    orphan = shard / ("ab" + "0" * 62 + ".webp")
    orphan.write_bytes(b"left by a crash")
    temp = shard / ".x.webp.0123456789abcdef.tmp"
    temp.write_bytes(b"half")
    stranger = shard / "notes.txt"
    stranger.write_text("not the cache's")
    smaller = ImageCache(root, max_bytes=2 * max(len(t.data) for t in thumbs))
    report = smaller.prune()
    assert report.stale == ["gone"]
    assert [e.key for e in report.removed] == ["k0", "k1"]
    assert sorted(report.orphans) == sorted([str(orphan), str(temp)])
    assert not orphan.exists() and not temp.exists() and stranger.exists()
    assert smaller.usage().bytes <= smaller.max_bytes
    assert set(smaller.peek(["k0", "k1", "k2", "k3"])) == {"k2", "k3"}


def test_the_index_must_be_a_plain_file(tmp_path: Path) -> None:
    root = tmp_path / "c"
    root.mkdir()
    victim = tmp_path / "victim.sqlite3"
    victim.write_bytes(b"")
    os.symlink(victim, root / INDEX_NAME)
    with pytest.raises(ImageCacheConflictError, match="not a regular file"):
        ImageCache(root, max_bytes=1 << 20).put("k", thumb(1), origin="civitai")
    assert victim.read_bytes() == b""
