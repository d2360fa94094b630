"""Result cache: rendered bytes in a diskcache.Cache shared by every worker process, and the most
used of them in each process's memory.

The body is the value (diskcache keeps large ones as files and commits the SQLite row only after
the file is written, so a crash mid-write never leaves an entry that is served); the response
metadata rides in the entry's `tag`. A body read back is checked against its length and its
ETag (its hash): a damaged one is a miss, removed and rendered again, never served. Any storage
failure degrades to serving uncached, logged once, and the cache is reopened (rebuilt) when its
directory went away or its database is corrupt (the corrupt directory is set aside, never
deleted: the path may be misconfigured).

A hit answered from memory skips SQLite and the file read, the two biggest costs of a hit.
Memory entries are only ever copies of disk entries under the same key (the key holds the
source's version), so they are never stale; `imgproxy cache clear` rewrites the directory's
`generation` file, which makes every process drop its memory entries on its next lookup.
"""

from __future__ import annotations

import email.utils
import fcntl
import functools
import hashlib
import json
import logging
import mmap
import os
import sqlite3
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import BinaryIO

import diskcache

from . import metrics
from .config import CacheConfig

log = logging.getLogger("imgproxy.cache")
STORAGE_ERRORS = (OSError, sqlite3.Error, diskcache.Timeout, ValueError, TypeError)
RETRY_SECONDS = 5.0
PROBE_SECONDS = 2.0  # /health's write probe is reused this long
# A result answered from memory goes to disk again (refreshing its least-recently-used access
# time) at most this often: memcached bumps an item in its LRU at most once a minute too.
TOUCH_SECONDS = 60.0
GENERATION_FILE = "generation"  # rewritten by `imgproxy cache clear`
LOOKUPS_DIR = "lookups"  # one file of hit and miss counters per server process
# A body read from disk is checked against its ETag (a SHA-256 prefix) before it is answered: a
# damaged file (cut short, bytes flipped) is dropped and rendered again, never served. Bodies
# streamed from their file are hashed too up to this size (in a thread, before the headers go
# out); above it only their length is checked: hashing costs ~1.4 ms per MB.
HASH_LIMIT = 32 * 1024**2
# [cache] size_limit bounds the whole directory, as `du` counts it: SQLite's index and WAL, the job
# store and originals kept there too. The results' files are counted by diskcache (ResultDisk:
# the blocks each takes); the rest is measured now and then, taking at most this share of the
# time puts take, however many files it holds. The results get what is left less a margin (1 %,
# at least 512 KB) for what is written between two measurements (WAL growth, job updates), so
# they shrink when the rest grows.
MEASURE_SHARE = 0.02
MARGIN = (0.01, 512 * 1024)
# SQLite checkpoints its WAL into the index every 256 pages (1 MB) and truncates it back to 1 MB
# (its default lets it reach 4 MB and keeps it at its largest size forever).
SQLITE_SETTINGS = {"sqlite_wal_autocheckpoint": 256, "sqlite_journal_size_limit": 1024**2}


@dataclass(frozen=True)
class ResultMeta:
    content_type: str
    etag: str
    size: int
    width: int
    height: int
    last_modified: float | None = None
    render_ms: float = 0.0

    @functools.cached_property
    def header_lines(self) -> tuple[tuple[bytes, bytes], ...]:
        """Content-Type, Content-Length, ETag and Last-Modified as ASGI header lines (computed
        once per entry kept in memory)."""
        lines = [
            (b"content-type", self.content_type.encode()),
            (b"content-length", b"%d" % self.size),
            (b"etag", self.etag.encode()),
        ]
        if self.last_modified is not None:
            lines.append((b"last-modified", email.utils.formatdate(self.last_modified, usegmt=True).encode()))
        return tuple(lines)

    def to_tag(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_tag(cls, tag: str) -> ResultMeta:
        return cls(**json.loads(tag))


PROBE_KEY = "imgproxy:health-probe"  # never a result key: those start with the source id
PROBE_META = ResultMeta("application/octet-stream", '""', 0, 0, 0)


def _is_corrupt(exc: sqlite3.DatabaseError) -> bool:
    """Not a database or a malformed one (OperationalError, e.g. "locked", is a passing state)."""
    return not isinstance(exc, sqlite3.OperationalError)


def etag_of(body: bytes) -> str:
    return '"' + hashlib.sha256(body).hexdigest()[:32] + '"'


def file_etag(file: BinaryIO) -> str:
    """etag_of a file's bytes, read from its start; leaves the file at its start."""
    digest = hashlib.sha256()
    file.seek(0)
    while chunk := file.read(1024**2):
        digest.update(chunk)
    file.seek(0)
    return '"' + digest.hexdigest()[:32] + '"'


def etag_matches(header: str, etag: str) -> bool:
    """If-None-Match uses weak comparison: W/"x" matches "x"."""
    candidates = [c.strip().removeprefix("W/") for c in header.split(",")]
    return "*" in candidates or etag in candidates


class ResultDisk(diskcache.Disk):
    """diskcache's Disk with one level of subdirectories, so at most 256 (two levels make one
    per file, 4 KB each), and each file's size counted as the blocks it takes."""

    def filename(self, key: object = diskcache.core.UNKNOWN, value: object = diskcache.core.UNKNOWN):
        name = os.urandom(16).hex()
        filename = os.path.join(name[:2], name[2:] + ".val")
        return filename, os.path.join(self._directory, filename)

    def store(self, value: object, read: bool, key: object = diskcache.core.UNKNOWN):
        size, mode, filename, db_value = super().store(value, read, key)
        if filename is not None:
            size = max(size, os.stat(os.path.join(self._directory, filename)).st_blocks * 512)
        return size, mode, filename, db_value


def _is_results_subdirectory(name: str) -> bool:
    return len(name) == 2 and all(c in "0123456789abcdef" for c in name)


def others_usage(directory: Path) -> int:
    """Bytes `directory` takes on disk besides what diskcache counts (the index and the results'
    files): the WAL, the job store, originals kept there, the subdirectories themselves."""
    total = os.stat(directory).st_blocks * 512
    with os.scandir(directory) as entries:
        for entry in entries:
            if entry.name == "cache.db":
                continue
            try:
                if entry.is_dir(follow_symlinks=False) and not _is_results_subdirectory(entry.name):
                    total += disk_usage(Path(entry.path))  # lookups, jobs, originals
                else:
                    total += entry.stat(follow_symlinks=False).st_blocks * 512
            except OSError:
                continue  # removed meanwhile
    return total


def disk_usage(directory: Path) -> int:
    """Bytes allocated to `directory` and everything in it, as `du` counts them (0 if it is gone)."""
    total, pending = 0, [str(directory)]
    try:
        total = os.stat(directory).st_blocks * 512
    except OSError:
        return 0
    while pending:
        try:
            with os.scandir(pending.pop()) as entries:
                for entry in entries:
                    try:
                        total += entry.stat(follow_symlinks=False).st_blocks * 512
                        if entry.is_dir(follow_symlinks=False):
                            pending.append(entry.path)
                    except OSError:
                        continue  # removed meanwhile
        except OSError:
            continue
    return total


def generation(path: str) -> tuple[int, int] | None:
    """Identity of a cache's generation file: changes when the cache is cleared or replaced."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_ino, st.st_mtime_ns


def mark_cleared(directory: Path) -> None:
    (directory / GENERATION_FILE).write_text(f"{time.time_ns()}\n")


class LookupCounters:
    """This process's hits and misses: two 64-bit counters in a memory-mapped file of the cache
    directory, so `imgproxy cache stats` adds up every worker's without a database write per hit.
    The file stays open with a shared lock while the process lives: that is how reset_lookups
    tells a running server's counters from those a finished one left behind."""

    def __init__(self, directory: Path):
        directory.mkdir(exist_ok=True)
        path = directory / str(os.getpid())
        while True:
            self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            fcntl.flock(self._fd, fcntl.LOCK_SH)
            try:
                if os.stat(path).st_ino == os.fstat(self._fd).st_ino:
                    break  # not removed by a reset between our open and our lock
            except FileNotFoundError:
                pass
            os.close(self._fd)
        if os.fstat(self._fd).st_size < 16:
            os.ftruncate(self._fd, 16)
        self._map = mmap.mmap(self._fd, 16)
        self.values = memoryview(self._map).cast("Q")  # [hits, misses]

    def close(self) -> None:
        self.values.release()
        self._map.close()
        os.close(self._fd)  # and with it the lock: a reset may now remove the file

    def count(self, hit: bool, undo_hit: bool = False) -> None:
        """`undo_hit`: the last hit turned out damaged, so it was a miss."""
        if undo_hit:
            self.values[0] -= 1
        self.values[0 if hit else 1] += 1


def read_lookups(directory: Path) -> tuple[int, int]:
    """(hits, misses) summed over every process's counter file."""
    hits = misses = 0
    for path in (directory / LOOKUPS_DIR).glob("[0-9]*"):
        try:
            data = path.read_bytes()[:16]
        except OSError:
            continue
        if len(data) == 16:
            h, m = memoryview(data).cast("Q")
            hits, misses = hits + h, misses + m
    return hits, misses


def reset_lookups(directory: Path) -> None:
    """Remove the counters of processes that ended; a running server's stay (it holds a lock on them)."""
    for path in (directory / LOOKUPS_DIR).glob("[0-9]*"):
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            path.unlink(missing_ok=True)  # still locked by us: no process can take it up meanwhile
        except BlockingIOError:
            pass  # a live process's counters
        finally:
            os.close(fd)


class HotResults:
    """The most used results in this process's memory, least recently used dropped first.

    An entry comes in on its second use (a disk hit), not when rendered, so a stream of distinct
    cold requests does not churn it. After TOUCH_SECONDS an entry is not answered from here once,
    so the lookup goes to disk and refreshes the access time there.
    """

    def __init__(self, max_bytes: int, max_entry: int):
        self.max_bytes = max_bytes
        self.max_entry = max_entry
        self.bytes = 0
        self._entries: OrderedDict[str, tuple[ResultMeta, bytes, float]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: str, now: float) -> tuple[ResultMeta, bytes] | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None or now - entry[2] > TOUCH_SECONDS:
                return None
            self._entries.move_to_end(key)
            return entry[0], entry[1]

    def put(self, key: str, meta: ResultMeta, body: bytes, now: float) -> None:
        if len(body) > min(self.max_entry, self.max_bytes):
            return
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self.bytes -= len(old[1])
            self._entries[key] = (meta, body, now)
            self.bytes += len(body)
            while self.bytes > self.max_bytes:
                _, (_, dropped, _) = self._entries.popitem(last=False)
                self.bytes -= len(dropped)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self.bytes = 0


class ResultCache:
    def __init__(self, directory: Path, config: CacheConfig):
        self.directory = directory
        self.generation_file = str(directory / GENERATION_FILE)
        self.settings = {"size_limit": config.size_limit, "eviction_policy": config.eviction_policy, **SQLITE_SETTINGS}
        self.size_limit = config.size_limit
        self.min_free_space = config.min_free_space
        self._share = 0  # bytes the results may take (diskcache's own size_limit), set by _measure
        self._measure_at = 0.0
        self.enabled = config.enabled
        self.memory_body_limit = config.memory_body_limit
        self.hot = HotResults(config.memory_size, config.memory_body_limit)
        # called when another process cleared the cache (a source may have changed in place)
        self.cleared_listeners: list[Callable[[], None]] = []
        self._generation: tuple[int, int] | None = None
        self._counters: LookupCounters | None = None
        self._cache: diskcache.Cache | None = None
        self._failed_at = 0.0
        self._warned = False
        self._probed: tuple[float, bool] = (0.0, False)
        if self.enabled:
            self._open()

    def _open(self) -> diskcache.Cache | None:
        for attempt in range(2):
            try:
                self._cache = diskcache.Cache(str(self.directory), disk=ResultDisk, **self.settings)
                if generation(self.generation_file) is None:
                    mark_cleared(self.directory)
                self._generation = generation(self.generation_file)
                if self._counters is not None:  # reopened (rebuilt): a new directory, a new file
                    self._counters.close()
                self._counters = LookupCounters(self.directory / LOOKUPS_DIR)
                self._warned = False
                break
            except sqlite3.DatabaseError as exc:
                if attempt or not _is_corrupt(exc) or not self._set_aside(exc):
                    self._fail(exc)
                    break
            except STORAGE_ERRORS as exc:
                self._fail(exc)
                break
        return self._cache

    def _set_aside(self, exc: sqlite3.DatabaseError) -> bool:
        aside = self.directory.with_name(f"{self.directory.name}.corrupt-{int(time.time())}-{os.getpid()}")
        try:
            os.rename(self.directory, aside)
        except FileNotFoundError:
            return True  # another worker moved it already
        except OSError:
            return False
        log.warning("result cache at %s is corrupt (%s); moved to %s and starting empty", self.directory, exc, aside)
        return True

    def _fail(self, exc: BaseException) -> None:
        if not self._warned:
            log.warning("result cache at %s unusable, serving uncached: %s", self.directory, exc)
            self._warned = True
        self._failed_at = time.monotonic()
        if self._cache is not None:
            try:
                self._cache.close()
            except STORAGE_ERRORS:
                pass
        self._cache = None

    def _usable(self) -> diskcache.Cache | None:
        if not self.enabled:
            return None
        if self._cache is None and time.monotonic() - self._failed_at > RETRY_SECONDS:
            self._open()
        return self._cache

    def get(self, key: str, if_none_match: str = "") -> tuple[ResultMeta, bytes | BinaryIO] | None:
        """(meta, body): body is bytes up to memory_body_limit, else an open file (caller closes it).
        When the stored ETag matches `if_none_match`, the body is not read: it is b"" (a 304)."""
        cache = self._usable()
        if cache is None:
            return None
        current = generation(self.generation_file)
        if current != self._generation:  # cleared or replaced by another process
            self.hot.clear()
            for listener in self.cleared_listeners:
                listener()
            self._generation = current
        now = time.monotonic()
        found: tuple[ResultMeta, bytes | BinaryIO] | None = self.hot.get(key, now)
        if found is None:
            found = self._get_from_disk(cache, key, now, if_none_match)
        if self._counters is not None:
            self._counters.count(found is not None)
        return found

    def _get_from_disk(
        self, cache: diskcache.Cache, key: str, now: float, if_none_match: str
    ) -> tuple[ResultMeta, bytes | BinaryIO] | None:
        body = None
        try:
            body, tag = cache.get(key, default=None, read=True, tag=True)
            if body is None or tag is None:
                return None
            meta = ResultMeta.from_tag(tag)
            # the length is checked on every answer (a 200's Content-Length comes from meta)
            length = len(body) if isinstance(body, bytes) else os.fstat(body.fileno()).st_size
            if length != meta.size:
                if not isinstance(body, bytes):
                    body.close()
                self._discard(cache, key, f"{length} bytes stored, {meta.size} expected")
                return None
            if if_none_match and etag_matches(if_none_match, meta.etag):
                if not isinstance(body, bytes):
                    body.close()
                return meta, b""  # the client has these bytes: a 304 never reads them
            if not isinstance(body, bytes) and meta.size <= self.memory_body_limit:
                with body:
                    body = body.read()
        except STORAGE_ERRORS as exc:
            if body is not None and not isinstance(body, bytes):
                body.close()
            self._fail(exc)
            return None
        if isinstance(body, bytes):
            if etag_of(body) != meta.etag:
                self._discard(cache, key, "its bytes do not match its ETag")
                return None
            self.hot.put(key, meta, body, now)  # checked: memory only ever holds verified bytes
        return meta, body

    def verify_file(self, key: str, meta: ResultMeta, file: BinaryIO) -> BinaryIO | None:
        """A body streamed from its file, hashed before its headers are sent (up to HASH_LIMIT; its
        length was checked already). None: damaged, so removed and counted as a miss."""
        try:
            if meta.size > HASH_LIMIT or file_etag(file) == meta.etag:
                return file
            why = "its bytes do not match its ETag"
        except OSError as exc:
            why = f"unreadable: {exc}"
        file.close()
        if self._counters is not None:
            self._counters.count(hit=False, undo_hit=True)
        cache = self._usable()
        if cache is not None:
            self._discard(cache, key, why)
        return None

    def _discard(self, cache: diskcache.Cache, key: str, why: str) -> None:
        """A damaged entry is a miss: removed (so it is rendered and stored again) and logged once."""
        log.warning("result cache entry %s is damaged (%s); removed, it will be rendered again", key, why)
        try:
            cache.delete(key)
        except STORAGE_ERRORS as exc:
            self._fail(exc)

    def put(self, key: str, body: bytes, meta: ResultMeta) -> bool:
        cache = self._usable()
        if cache is None:
            return False
        if not (self.directory / "cache.db").exists():  # directory deleted under us: rebuild it
            self._fail(FileNotFoundError(f"{self.directory} disappeared"))
            cache = self._open()
            if cache is None:
                return False
        try:
            if time.monotonic() >= self._measure_at:
                self._measure(cache)
            if len(body) >= self._share:
                return False  # no room within size_limit and min_free_space
            # diskcache does not count evictions; inside one transaction no other worker writes,
            # so the entry count before and after set() tells how many entries it culled
            with cache.transact():
                expected = len(cache) + (key not in cache)
                stored = cache.set(key, body, tag=meta.to_tag())
                evicted = expected - len(cache)
        except STORAGE_ERRORS as exc:
            self._fail(exc)
            return False
        if evicted > 0:
            metrics.CACHE_EVICTIONS.inc(evicted)
        return bool(stored)

    def _measure(self, cache: diskcache.Cache) -> None:
        """The results' share: size_limit less everything else the directory holds, and no more than
        leaves min_free_space free on its filesystem (the results give space back when it gets short)."""
        started = time.thread_time()  # CPU time: a busy machine does not stretch the interval
        volume = cache.volume()  # the index and the results' files
        others = others_usage(self.directory)
        stat = os.statvfs(self.directory)
        self._measure_at = time.monotonic() + (time.thread_time() - started) / MEASURE_SHARE
        free = stat.f_bavail * stat.f_frsize
        margin = max(int(self.size_limit * MARGIN[0]), MARGIN[1])
        self._share = max(0, min(self.size_limit - others, volume + free - self.min_free_space) - margin)
        cache.reset("size_limit", self._share, update=False)  # this process's culling limit
        if volume > self._share:
            before = len(cache)
            cache.cull()
            metrics.CACHE_EVICTIONS.inc(max(0, before - len(cache)))

    def probe(self) -> bool:
        """Whether a tiny entry can be committed (remembered for PROBE_SECONDS)."""
        checked_at, writable = self._probed
        if time.monotonic() - checked_at < PROBE_SECONDS:
            return writable
        writable = self.put(PROBE_KEY, b"", PROBE_META)
        self._probed = (time.monotonic(), writable)
        return writable

    def stats(self) -> dict:
        cache = self._usable()
        if cache is None:
            return {"enabled": self.enabled, "usable": False}
        try:
            return {
                "enabled": True,
                "usable": True,
                "entries": len(cache) - (PROBE_KEY in cache),
                "bytes": cache.volume(),
            }
        except STORAGE_ERRORS as exc:
            self._fail(exc)
            return {"enabled": True, "usable": False}

    def close(self) -> None:
        self.hot.clear()
        if self._counters is not None:
            self._counters.close()
            self._counters = None
        if self._cache is not None:
            self._cache.close()
