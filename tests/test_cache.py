"""ResultCache and its in-memory tier, and LocalSource's remembered resolutions (no server)."""

import os
from dataclasses import replace

import pytest

from imgproxy.cache import TOUCH_SECONDS, HotResults, ResultCache, ResultMeta, etag_of, mark_cleared, read_lookups
from imgproxy.config import CacheConfig
from imgproxy.errors import NotFound
from imgproxy.sources import LocalSource


def meta(size: int) -> ResultMeta:
    return ResultMeta("image/jpeg", f'"{size}"', size, 1, 1)


def checked_meta(body: bytes) -> ResultMeta:
    """What a render stores: the ETag is the body's hash, checked when read back from disk."""
    return ResultMeta("image/png", etag_of(body), len(body), 1, 1)


def test_hot_results_drop_least_recently_used_past_their_bytes():
    hot = HotResults(max_bytes=300, max_entry=200)
    for key in "abc":
        hot.put(key, meta(100), b"x" * 100, now=0)
    assert hot.get("a", now=1) is not None  # a is now the most recently used
    hot.put("d", meta(100), b"x" * 100, now=1)
    assert hot.get("b", now=1) is None
    assert {k for k in "acd" if hot.get(k, now=1)} == set("acd")
    assert hot.bytes == 300


def test_hot_results_refuse_bodies_over_the_entry_limit_and_replace_in_place():
    hot = HotResults(max_bytes=1000, max_entry=200)
    hot.put("big", meta(201), b"x" * 201, now=0)
    assert hot.get("big", now=0) is None and hot.bytes == 0
    hot.put("a", meta(50), b"x" * 50, now=0)
    hot.put("a", meta(80), b"y" * 80, now=0)
    assert hot.get("a", now=0) == (meta(80), b"y" * 80) and hot.bytes == 80


def test_hot_results_send_a_lookup_to_disk_once_the_touch_interval_passed():
    hot = HotResults(max_bytes=1000, max_entry=1000)
    hot.put("a", meta(10), b"x" * 10, now=100)
    assert hot.get("a", now=100 + TOUCH_SECONDS) is not None
    assert hot.get("a", now=100 + TOUCH_SECONDS + 1) is None


@pytest.fixture
def cache(tmp_path):
    config = replace(CacheConfig(), size_limit=10 * 1024**2, memory_body_limit=64 * 1024, memory_size=1024**2)
    cache = ResultCache(tmp_path / "results", config)
    yield cache
    cache.close()


def test_second_use_comes_from_memory_and_every_lookup_is_counted(cache, tmp_path):
    cache.put("k", b"small body", checked_meta(b"small body"))
    assert cache.hot.bytes == 0  # a fresh render does not enter memory
    assert cache.get("k") == (checked_meta(b"small body"), b"small body")
    assert cache.hot.bytes == 10
    cache._cache.delete("k")  # gone from disk: a lookup that still finds it was answered from memory
    assert cache.get("k") == (checked_meta(b"small body"), b"small body")
    assert cache.get("missing") is None
    assert read_lookups(tmp_path / "results") == (2, 1)


def test_clearing_from_another_process_empties_memory(cache, tmp_path):
    cache.put("k", b"body", checked_meta(b"body"))
    cache.get("k")
    cache._cache.delete("k")
    mark_cleared(tmp_path / "results")  # what `imgproxy cache clear` does after deleting
    assert cache.get("k") is None and cache.hot.bytes == 0


def test_a_matching_if_none_match_is_answered_without_reading_the_body(cache):
    body = os.urandom(40 * 1024)  # stored as a file by diskcache, read on a plain hit
    cache.put("k", body, checked_meta(body))
    etag = checked_meta(body).etag
    for header in (etag, f"W/{etag}", f'"other", {etag}', "*"):
        assert cache.get("k", if_none_match=header) == (checked_meta(body), b"")
    assert cache.hot.bytes == 0  # revalidations are no second use of the bytes
    assert cache.get("k", if_none_match='"other"') == (checked_meta(body), body)
    assert cache.get("k") == (checked_meta(body), body) and cache.hot.bytes == len(body)


def test_bodies_over_the_memory_limit_are_open_files_and_stay_on_disk(cache):
    body = os.urandom(100 * 1024)
    cache.put("big", body, checked_meta(body))
    found_meta, found = cache.get("big")
    with found:
        assert found.read() == body
    assert cache.hot.bytes == 0


def test_a_remembered_resolution_is_not_followed_once_the_path_points_elsewhere(tmp_path):
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (root / "a.jpg").write_bytes(b"inside a")
    (root / "b.jpg").write_bytes(b"inside bb")
    (outside / "secret.jpg").write_bytes(b"secret")
    os.symlink(root / "a.jpg", root / "link.jpg")
    source = LocalSource(root, max_bytes=1024)
    first = source.load("link.jpg")
    assert first.path == str(root / "a.jpg") and first.id == "local:a.jpg"
    assert source.load("link.jpg") == first  # remembered

    os.unlink(root / "link.jpg")
    os.symlink(root / "b.jpg", root / "link.jpg")
    moved = source.load("link.jpg")
    assert moved.path == str(root / "b.jpg") and moved.size == len(b"inside bb")

    os.unlink(root / "link.jpg")
    os.symlink(outside / "secret.jpg", root / "link.jpg")
    with pytest.raises(NotFound):
        source.load("link.jpg")

    # the real file itself swapped for a symlink out of the root
    source.load("a.jpg")
    os.unlink(root / "a.jpg")
    os.symlink(outside / "secret.jpg", root / "a.jpg")
    with pytest.raises(NotFound):
        source.load("a.jpg")


def test_a_replaced_file_gets_a_new_version(tmp_path):
    (tmp_path / "a.jpg").write_bytes(b"one")
    source = LocalSource(tmp_path, max_bytes=1024)
    before = source.load("a.jpg")
    (tmp_path / "a.jpg.new").write_bytes(b"two!")
    os.replace(tmp_path / "a.jpg.new", tmp_path / "a.jpg")
    after = source.load("a.jpg")
    assert after.version != before.version and after.size == 4


def test_remembered_resolutions_stay_bounded(tmp_path, monkeypatch):
    monkeypatch.setattr(LocalSource, "MAX_REMEMBERED", 8)
    for i in range(20):
        (tmp_path / f"{i}.jpg").write_bytes(b"x")
    source = LocalSource(tmp_path, max_bytes=1024)
    for i in range(20):
        assert source.load(f"{i}.jpg").id == f"local:{i}.jpg"
        assert len(source._resolved) <= 8


def test_a_damaged_entry_is_a_miss_that_removes_it(cache, tmp_path, caplog):
    inline, small_file, large_file = os.urandom(1000), os.urandom(40 * 1024), os.urandom(100 * 1024)
    for key, body in (("inline", inline), ("small", small_file), ("large", large_file)):
        cache.put(key, body, checked_meta(body))
    with cache._cache.transact():  # a flipped byte in the SQLite row of a small result
        cache._cache._sql("UPDATE Cache SET value = ? WHERE key = 'inline'", (bytes([inline[0] ^ 1]) + inline[1:],))
    files = dict(cache._cache._sql("SELECT key, filename FROM Cache WHERE filename IS NOT NULL"))
    (tmp_path / "results" / files["small"]).write_bytes(small_file[:-1] + bytes([small_file[-1] ^ 1]))
    (tmp_path / "results" / files["large"]).write_bytes(large_file[: len(large_file) // 2])

    caplog.set_level("WARNING", logger="imgproxy.cache")
    assert cache.get("inline") is None and cache.get("small") is None
    # a cut file is caught by its length, before a 304 or a streamed answer
    assert cache.get("large", if_none_match=checked_meta(large_file).etag) is None
    assert [key for key in ("inline", "small", "large") if key in cache._cache] == []
    assert len(caplog.records) == 3 and all("is damaged" in r.message for r in caplog.records)
    assert read_lookups(tmp_path / "results") == (0, 3)


def test_a_streamed_body_is_hashed_before_it_is_answered(cache, tmp_path):
    body = os.urandom(100 * 1024)
    cache.put("k", body, checked_meta(body))
    meta_found, file = cache.get("k")
    assert cache.verify_file("k", meta_found, file) is file and file.read() == body  # read from its start
    file.close()
    (filename,) = [name for (name,) in cache._cache._sql("SELECT filename FROM Cache WHERE key = 'k'")]
    (tmp_path / "results" / filename).write_bytes(body[:-1] + bytes([body[-1] ^ 1]))
    meta_found, file = cache.get("k")  # the length is right: only the hash can tell
    assert cache.verify_file("k", meta_found, file) is None and file.closed
    assert "k" not in cache._cache
    assert read_lookups(tmp_path / "results") == (1, 1)  # the damaged hit counts as a miss
