"""`imgproxy cache stats` and `imgproxy cache clear`: the result cache seen from outside the server.

Safe while servers run: diskcache is shared between processes. Entries are picked by reading
diskcache's SQLite index (its `Cache` table: `key`, `store_time`) read-only, and removed through
diskcache's own `delete`, so files and the size accounting stay right. Result keys start with the
source's id (`local:<path>|…`, `s3:<key>|…`, or the remote URL followed by `|`), so a source's variants share
a prefix. Hits and misses are the servers' own counters (one small file per process under
`lookups/`); a clear rewrites the `generation` file so servers drop the results they keep in memory.
"""

from __future__ import annotations

import re
import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import diskcache

from .cache import PROBE_KEY, disk_usage, mark_cleared, read_lookups, reset_lookups
from .config import Config
from .sources import is_remote
from .storage import Storage, open_storage

DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration(text: str) -> float:
    """Seconds from `90`, `90s`, `15m`, `12h`, `7d` or `2w`."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([smhdw]?)", text.strip().lower())
    if match is None or float(match[1]) <= 0:
        raise ValueError(f"expected a duration like 7d, 12h, 30m or 90s, got {text!r}")
    return float(match[1]) * DURATION_UNITS[match[2] or "s"]


def source_id(source: str, storage: Storage) -> str:
    """The id a source's cache keys start with, as the server computes it."""
    if is_remote(source):
        from .remote import parse_remote_url

        return str(parse_remote_url(source))
    return storage.source_id(source)


@dataclass
class CacheStats:
    directory: Path
    entries: int
    bytes: int
    size_limit: int
    disk: int  # the whole directory as `du` counts it (index, WAL, job store, originals kept there)
    hits: int  # since the last `imgproxy serve` start (its processes' counters, reset then)
    misses: int
    oldest: float | None  # store time (epoch seconds) of the oldest entry

    @property
    def hit_ratio(self) -> float | None:
        looked_up = self.hits + self.misses
        return self.hits / looked_up if looked_up else None


def _index(directory: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{directory / 'cache.db'}?mode=ro", uri=True)


def _exists(directory: Path) -> bool:
    return (directory / "cache.db").is_file()


def stats(config: Config) -> CacheStats:
    directory = config.path(config.cache.dir)
    if not _exists(directory):  # nothing cached yet; opening it would create it
        return CacheStats(directory, 0, 0, config.cache.size_limit, 0, 0, 0, None)
    with diskcache.Cache(str(directory)) as cache:
        entries, volume = len(cache) - (PROBE_KEY in cache), cache.volume()
    hits, misses = read_lookups(directory)
    with _index(directory) as index:
        (oldest,) = index.execute("SELECT MIN(store_time) FROM Cache WHERE key != ?", (PROBE_KEY,)).fetchone()
    disk = disk_usage(directory)
    return CacheStats(directory, entries, volume, config.cache.size_limit, disk, hits, misses, oldest)


def reset_statistics(config: Config) -> None:
    """Start the hit and miss counts afresh (called when the server starts)."""
    directory = config.path(config.cache.dir)
    if config.cache.enabled:
        try:
            reset_lookups(directory)
        except OSError:
            pass  # an unusable cache is the server's to report (it serves uncached)


def clear(config: Config, older_than: float | None = None, sources: Sequence[str] = ()) -> int:
    """Remove results (all of them, or those stored longer ago than `older_than` seconds and/or of
    `sources`); returns how many."""
    directory = config.path(config.cache.dir)
    storage = open_storage(config)
    try:
        ids = [source_id(s, storage) for s in sources]
        # a fetched original goes too, so it is fetched again: a remote one by URL, a stored one by its keys
        kept = [
            key for i, s in zip(ids, sources, strict=True) for key in ([i] if is_remote(s) else storage.kept_keys(i))
        ]
    finally:
        storage.close()
    if not _exists(directory):
        return 0
    try:
        return _clear(directory, older_than, [i + "|" for i in ids], kept, config)
    finally:
        mark_cleared(directory)


def _clear(directory: Path, older_than: float | None, prefixes: list[str], kept: list[str], config: Config) -> int:
    if older_than is None and not prefixes:
        with diskcache.Cache(str(directory)) as cache:
            return cache.clear()
    conditions: list[str] = []
    params: list[object] = []
    if older_than is not None:
        conditions.append("store_time < ?")
        params.append(time.time() - older_than)
    if prefixes:
        conditions.append("(" + " OR ".join("substr(key, 1, ?) = ?" for _ in prefixes) + ")")
        for prefix in prefixes:
            params += [len(prefix), prefix]
    with _index(directory) as index:
        keys = [key for (key,) in index.execute(f"SELECT key FROM Cache WHERE {' AND '.join(conditions)}", params)]
    with diskcache.Cache(str(directory)) as cache:
        removed = sum(cache.delete(key) for key in keys)
    originals_dir = config.path(config.sources.remote.cache_dir)
    if kept and _exists(originals_dir):
        with diskcache.Cache(str(originals_dir)) as originals:
            for key in kept:
                originals.delete(key)
    return removed


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"


def _age(seconds: float) -> str:
    for unit, length in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= length:
            return f"{seconds / length:.1f} {unit}"
    return f"{seconds:.0f} s"


def describe(s: CacheStats) -> str:
    ratio = "unknown (no lookups since the server started)" if s.hit_ratio is None else f"{s.hit_ratio:.1%}"
    oldest = "-"
    if s.oldest is not None:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(s.oldest))
        oldest = f"{stamp} ({_age(time.time() - s.oldest)} ago)"
    return "\n".join(
        [
            f"directory:  {s.directory}",
            f"entries:    {s.entries}",
            f"bytes:      {s.bytes} ({_size(s.bytes)})",
            f"on disk:    {s.disk} ({_size(s.disk)} of {_size(s.size_limit)}, whole directory)",
            f"hits:       {s.hits}",
            f"misses:     {s.misses}",
            f"hit ratio:  {ratio}",
            f"oldest:     {oldest}",
        ]
    )
