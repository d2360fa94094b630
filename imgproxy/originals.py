"""The local originals cache: fetched originals (remote URLs, objects from S3) kept on disk.

One diskcache directory (`[sources.remote] cache_dir`) bounded by `cache_size_limit`, least
recently used first; remote sources and the S3 storage share it (their keys differ: URLs vs
`s3:` ids), so one size limit bounds both. A cache that cannot be written (full disk, broken
directory) degrades to fetching every time: reads then find nothing and writes are dropped.
"""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path
from typing import Any

import diskcache

log = logging.getLogger("imgproxy.originals")
ERRORS = (OSError, sqlite3.Error, diskcache.Timeout)


class OriginalsCache:
    def __init__(self, directory: Path, size_limit: int):
        self.directory = directory
        self.cache = diskcache.Cache(str(directory), size_limit=size_limit, eviction_policy="least-recently-used")

    def get(self, key: str) -> Any:
        try:
            return self.cache.get(key)
        except ERRORS as exc:
            log.warning("cannot read the originals cache: %s", exc)
            return None

    def set(self, key: str, value: Any) -> None:
        try:
            self.cache.set(key, value)
        except ERRORS as exc:  # a full disk degrades to fetching every time
            log.warning("cannot keep an original: %s", exc)

    def delete(self, *keys: str) -> None:
        for key in keys:
            try:
                self.cache.delete(key)
            except ERRORS as exc:
                log.warning("cannot drop an original: %s", exc)

    def close(self) -> None:
        self.cache.close()
