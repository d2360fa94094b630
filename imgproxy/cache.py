"""Result cache: rendered bytes in a diskcache.Cache shared by every worker process.

The body is the value (diskcache keeps large ones as files and commits the SQLite row only after
the file is written, so a crash mid-write never leaves an entry that is served); the response
metadata rides in the entry's `tag`. Any storage failure degrades to serving uncached, logged
once, and the cache is reopened (rebuilt) when its directory went away or its database is
corrupt (the corrupt directory is set aside, never deleted: the path may be misconfigured).
"""
from __future__ import annotations

import json
import logging
import os
import sqlite3
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import BinaryIO

import diskcache

from . import metrics

log = logging.getLogger("imgproxy.cache")
STORAGE_ERRORS = (OSError, sqlite3.Error, diskcache.Timeout, ValueError, TypeError)
RETRY_SECONDS = 5.0
PROBE_SECONDS = 2.0  # /health's write probe is reused this long


@dataclass(frozen=True)
class ResultMeta:
    content_type: str
    etag: str
    size: int
    width: int
    height: int
    last_modified: float | None = None
    render_ms: float = 0.0

    def to_tag(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_tag(cls, tag: str) -> "ResultMeta":
        return cls(**json.loads(tag))


PROBE_KEY = "imgproxy:health-probe"  # never a result key: those start with the source id
PROBE_META = ResultMeta("application/octet-stream", '""', 0, 0, 0)


def _is_corrupt(exc: sqlite3.DatabaseError) -> bool:
    """Not a database or a malformed one (OperationalError, e.g. "locked", is a passing state)."""
    return not isinstance(exc, sqlite3.OperationalError)


class ResultCache:
    def __init__(self, directory: Path, size_limit: int, eviction_policy: str, enabled: bool = True):
        self.directory = directory
        # statistics: diskcache counts hits and misses in the shared database (one more UPDATE in
        # the transaction a least-recently-used lookup opens anyway), for `imgproxy cache stats`
        self.settings = {"size_limit": size_limit, "eviction_policy": eviction_policy, "statistics": True}
        self.enabled = enabled
        self._cache: diskcache.Cache | None = None
        self._failed_at = 0.0
        self._warned = False
        self._probed: tuple[float, bool] = (0.0, False)
        if enabled:
            self._open()

    def _open(self) -> diskcache.Cache | None:
        for attempt in range(2):
            try:
                self._cache = diskcache.Cache(str(self.directory), **self.settings)
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

    def get(self, key: str) -> tuple[ResultMeta, bytes | BinaryIO] | None:
        """(meta, body) where body is bytes (small entries) or an open file (caller closes it)."""
        cache = self._usable()
        if cache is None:
            return None
        try:
            body, tag = cache.get(key, default=None, read=True, tag=True)
        except STORAGE_ERRORS as exc:
            self._fail(exc)
            return None
        if body is None or tag is None:
            return None
        return ResultMeta.from_tag(tag), body

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
            return {"enabled": True, "usable": True, "entries": len(cache) - (PROBE_KEY in cache), "bytes": cache.volume()}
        except STORAGE_ERRORS as exc:
            self._fail(exc)
            return {"enabled": True, "usable": False}

    def close(self) -> None:
        if self._cache is not None:
            self._cache.close()
