"""`imgproxy cache stats|clear` and `imgproxy check-config`, run as commands next to a live server."""

import calendar
import io
import os
import sqlite3
import subprocess
import sys
import time

import pytest
from PIL import Image

from imgproxy.cachetool import parse_duration

from .conftest import to_toml

A = "/picture/photos/tree.webp"
B = "/picture/photos/alpha_dice.png"


def imgproxy(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "imgproxy", *args], capture_output=True, text=True, timeout=60, cwd=cwd
    )


def cache_status(client, path: str) -> str:
    r = client.get(path)
    assert r.status_code == 200, r.text
    return r.headers["x-cache"]


@pytest.mark.timeout(120)
def test_clear_source_makes_only_that_source_miss(live_server):
    server = live_server({})
    urls = [A + "?w=100", A + "?w=200&encoding=webp", B + "?w=100"]
    with server.client() as client:
        assert [cache_status(client, u) for u in urls] == ["MISS"] * 3
        assert [cache_status(client, u) for u in urls] == ["HIT"] * 3
        done = imgproxy("cache", "clear", "--config", str(server.config_path), "--source", "photos/tree.webp")
        assert done.returncode == 0 and done.stdout.strip() == "removed 2 cached results", done
        assert [cache_status(client, u) for u in urls] == ["MISS", "MISS", "HIT"]


@pytest.mark.timeout(120)
def test_clear_older_than_and_clear_all(live_server):
    server = live_server({})
    with server.client() as client:
        assert cache_status(client, f"{A}?w=100") == "MISS"
        # as if stored ten days ago
        with sqlite3.connect(server.cache_dir / "cache.db") as index:
            index.execute("UPDATE Cache SET store_time = store_time - 864000 WHERE key LIKE 'local:%'")
        assert [cache_status(client, f"{A}?w={w}") for w in (101, 102)] == ["MISS", "MISS"]
        done = imgproxy("cache", "clear", "--config", str(server.config_path), "--older-than", "7d")
        assert done.stdout.strip() == "removed 1 cached results"
        assert [cache_status(client, f"{A}?w={w}") for w in (100, 101, 102)] == ["MISS", "HIT", "HIT"]
        done = imgproxy("cache", "clear", "--config", str(server.config_path))
        assert done.returncode == 0
        assert [cache_status(client, f"{A}?w={w}") for w in (100, 101)] == ["MISS", "MISS"]
    bad = imgproxy("cache", "clear", "--config", str(server.config_path), "--older-than", "soon")
    assert bad.returncode == 2 and "expected a duration like 7d" in bad.stderr


@pytest.mark.timeout(120)
def test_clear_source_after_a_replacement_that_kept_size_and_mtime(live_server, writable_root):
    """What `--source` is for: the file's version (mtime, size) did not change, its pixels did."""
    original = writable_root / "a.bmp"
    Image.new("RGB", (40, 40), "red").save(original)  # uncompressed: any colour, same size
    stat = original.stat()
    server = live_server({"sources": {"local": {"root": str(writable_root)}}})
    url = "/picture/a.bmp?w=20&encoding=png"

    def colour(r):
        return Image.open(io.BytesIO(r.content)).convert("RGB").getpixel((10, 10))

    with server.client() as client:
        assert colour(client.get(url)) == (255, 0, 0)
        Image.new("RGB", (40, 40), "blue").save(original)
        os.utime(original, ns=(stat.st_atime_ns, stat.st_mtime_ns))
        assert original.stat().st_size == stat.st_size
        stale = client.get(url)
        assert stale.headers["x-cache"] == "HIT" and colour(stale) == (255, 0, 0)
        imgproxy("cache", "clear", "--config", str(server.config_path), "--source", "a.bmp")
        fresh = client.get(url)
        assert fresh.headers["x-cache"] == "MISS" and colour(fresh) == (0, 0, 255)


@pytest.mark.timeout(120)
def test_stats_counts_entries_lookups_and_age(live_server):
    server = live_server({})
    started = time.time()
    with server.client() as client:
        for _ in range(3):
            cache_status(client, A + "?w=64")
        cache_status(client, B + "?w=64")
    done = imgproxy("cache", "stats", "--config", str(server.config_path))
    assert done.returncode == 0, done.stderr
    fields = dict(line.split(":", 1) for line in done.stdout.splitlines())
    fields = {k: v.strip() for k, v in fields.items()}
    assert fields["entries"] == "2"
    assert int(fields["bytes"].split()[0]) > 0
    assert (fields["hits"], fields["misses"], fields["hit ratio"]) == ("2", "2", "50.0%")
    oldest = calendar.timegm(time.strptime(fields["oldest"][:19], "%Y-%m-%d %H:%M:%S"))
    assert started - 2 <= oldest <= time.time()


def test_stats_of_an_empty_cache_says_so(tmp_path):
    (tmp_path / "config.toml").write_text(to_toml({"cache": {"dir": str(tmp_path / "none")}}))
    done = imgproxy("cache", "stats", "--config", str(tmp_path / "config.toml"))
    assert done.returncode == 0 and "entries:    0" in done.stdout and "unknown" in done.stdout
    assert not (tmp_path / "none").exists()  # looking does not create it


def test_check_config_prints_every_problem_and_exits_2(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    config = tmp_path / "config.toml"
    config.write_text(
        to_toml(
            {
                "sources": {
                    "local": {"root": str(tmp_path / "missing"), "generate_demo": False},
                    "remote": {"allowed_hosts": ["ok.example.com", "bad host/"], "cache_dir": str(blocker / "o")},
                },
                "cache": {"dir": str(blocker / "results")},
                "uploads": {"enabled": False},
                "security": {"key": "s3cret-value"},
            }
        )
    )
    done = imgproxy("check-config", "--config", str(config))
    assert done.returncode == 2
    problems = [line for line in done.stderr.splitlines() if line.startswith("problem: ")]
    assert len(problems) == 4, done.stderr
    assert any("sources.local.root" in p and "does not exist" in p for p in problems)
    assert any(p.startswith("problem: cache.dir:") and "not a directory" in p for p in problems)
    assert any(p.startswith("problem: sources.remote.cache_dir:") for p in problems)
    assert any("allowed_hosts" in p and "bad host/" in p for p in problems)
    assert "s3cret-value" not in done.stdout + done.stderr and '"key": "***"' in done.stdout


def test_check_config_of_a_good_config_exits_0(tmp_path):
    (tmp_path / "images").mkdir()
    config = tmp_path / "config.toml"
    config.write_text(to_toml({"sources": {"local": {"root": "images"}}, "cache": {"dir": "cache"}}))
    done = imgproxy("check-config", "--config", str(config))
    assert done.returncode == 0 and done.stderr == "", done.stderr


@pytest.mark.parametrize(
    "text, seconds", [("90", 90), ("90s", 90), ("15m", 900), ("1.5h", 5400), ("7d", 604800), ("2w", 1209600)]
)
def test_parse_duration(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "0", "-1d", "7y", "d", "1 day"])
def test_parse_duration_refuses(text):
    with pytest.raises(ValueError):
        parse_duration(text)
