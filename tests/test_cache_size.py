"""Issue 14: [cache] size_limit bounds the whole cache directory, and the cache never fills the disk past
[cache] min_free_space."""

import os
import subprocess
from pathlib import Path

import pytest

from imgproxy.cache import ResultCache, ResultMeta, disk_usage, etag_of
from imgproxy.config import CacheConfig, load_config

from .conftest import CORPUS, copy_from_corpus, to_toml


def du(path) -> int:
    return int(
        subprocess.run(["du", "-s", "--block-size=1", str(path)], capture_output=True, text=True).stdout.split()[0]
    )


def test_disk_usage_counts_what_du_counts(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a" / "b" / "x").write_bytes(os.urandom(10_000))
    (tmp_path / "y").write_bytes(b"1")
    with open(tmp_path / "sparse", "wb") as f:
        f.truncate(10**6)  # no blocks
    assert disk_usage(tmp_path) == du(tmp_path) > 10_000
    assert disk_usage(tmp_path / "missing") == 0


@pytest.mark.timeout(180)
def test_the_whole_directory_stays_within_size_limit(live_server, writable_root):
    copy_from_corpus("photos/alpha_dice.png", writable_root, "dice.png")
    limit = 3 * 1024**2
    server = live_server({"sources": {"local": {"root": str(writable_root)}}, "cache": {"size_limit": limit}})
    peak = 0
    with server.client() as client:
        for i in range(3):  # pre-render jobs: their store lives in <cache.dir>/jobs
            upload = {"image": (f"u{i}.png", (CORPUS / "photos/alpha_dice.png").read_bytes(), "image/png")}
            assert client.post("/upload", files=upload).status_code == 201
        for width in range(700, 676, -1):  # ~190 KB PNGs (files), ~50 KB WebPs: 6 MB in all
            for fmt in ("png", "webp") if width % 3 == 0 else ("png",):
                url = f"/picture/dice.png?w={width}&enlarge=1&encoding={fmt}"
                assert client.get(url).status_code == 200
            peak = max(peak, du(server.cache_dir))
        assert client.get(url).headers["x-cache"] == "HIT"  # still caching
    assert (server.cache_dir / "jobs").is_dir()
    assert 0.5 * limit < peak <= limit, peak


@pytest.mark.timeout(120)
def test_no_result_is_stored_past_min_free_space(live_server):
    free = os.statvfs(CORPUS).f_bavail  # any path: only to pick a floor far above the free space
    server = live_server({"cache": {"min_free_space": f"{free * 8}TB"}})
    with server.client() as client:
        for expected in ("MISS", "MISS"):
            r = client.get("/picture/photos/tree.webp?w=64")
            assert r.status_code == 200 and r.headers["x-cache"] == expected
        health = client.get("/health").json()
        assert health["status"] == "degraded" and health["cache"]["entries"] == 0


def test_originals_kept_inside_the_cache_directory_get_half_its_limit(tmp_path):
    def originals_limit(settings: dict) -> int:
        (tmp_path / "config.toml").write_text(to_toml(settings))
        return load_config(tmp_path / "config.toml", environ={}).sources.remote.cache_size_limit

    inside = {"cache": {"dir": "cache", "size_limit": "30MB"}, "sources": {"remote": {"cache_dir": "cache/originals"}}}
    assert originals_limit(inside) == 15 * 1024**2
    beside = {"cache": {"dir": "cache/results", "size_limit": "30MB"}, "sources": {"remote": {"cache_dir": "cache/o"}}}
    assert originals_limit(beside) == 1024**3


def test_result_files_count_the_blocks_they_take_in_one_level_of_directories(tmp_path):
    cache = ResultCache(tmp_path / "results", CacheConfig())
    try:
        body = os.urandom(40 * 1024 + 1)
        assert cache.put("k", body, ResultMeta("image/png", etag_of(body), len(body), 1, 1))
        ((filename, size),) = cache._cache._sql("SELECT filename, size FROM Cache WHERE key = 'k'").fetchall()
        assert len(Path(filename).parts) == 2  # ab/<30 hex>.val
        assert size == (tmp_path / "results" / filename).stat().st_blocks * 512 > len(body)
        assert cache.get("k") == (ResultMeta("image/png", etag_of(body), len(body), 1, 1), body)
    finally:
        cache.close()
