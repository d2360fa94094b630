"""Where originals live and uploads go: the local root or an S3 bucket, behind one interface.

`open_storage(config)` picks the backend from `[storage] backend`; `/picture` (through the
Renderer), uploads, `warm` and `cache clear --source` use only the `Storage` methods, so none of
them knows which backend it has:

- `source_id(source)`: the id a source's result keys start with (400 for a bad path; no I/O);
- `load(source)`: the source's `Original` with its version, possibly without its bytes yet;
- `open(original)`: the same original with its bytes, asked for only on a result-cache miss;
- `save_upload(temp, upload_id, name)`: keep a checked upload; its `/picture` path and size.

S3 (obstore): the object's ETag is the version. A version learnt from the store is trusted for
`freshness` seconds (in memory, and in the originals cache for other processes and restarts), so
hits inside that window make no store request; past it a HEAD revalidates it. When that HEAD
fails, the stale version still finds results already cached (SPEC §10), while a miss needs the
bytes and so the store: 503. Bytes are kept in the local originals cache (`originals.py`) under the
ETag they had, so a miss re-renders without a GET while the version holds. Every store request
is bounded by `timeout` (obstore's own timeouts and retries, and an asyncio deadline around them).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import os
import shutil
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import timedelta
from pathlib import Path, PurePosixPath
from typing import Any, Protocol, TypeVar

from . import metrics
from .config import Config, ConfigError, S3StorageConfig
from .errors import BadRequest, NotFound, PayloadTooLarge, StorageUnavailable
from .originals import OriginalsCache
from .shared import SharedTasks
from .sources import LocalSource, Original, path_parts

log = logging.getLogger("imgproxy.storage")
T = TypeVar("T")
TEMP_DIR = ".tmp"
HEALTH_KEY = ".imgproxy-health"  # HEADed by /health: a 404 proves the store answers and lets us in
PUT_CHUNK = 5 * 1024 * 1024  # obstore's multipart part size: each part gets its own deadline
MAX_KNOWN = 65536  # versions remembered per process; forgotten all at once past it
PAUSE_SECONDS = 2.0  # after the store failed, requests fail fast (503) this long instead of each waiting
RETRY_AFTER = 5


class Storage(Protocol):
    temp_dir: Path  # where uploads are received and checked before save_upload

    def source_id(self, source: str) -> str: ...

    async def load(self, source: str) -> Original: ...

    async def open(self, original: Original) -> Original: ...

    async def save_upload(self, temp: Path, upload_id: str, name: str) -> tuple[str, int]: ...

    async def remove_upload(self, path: str) -> None: ...

    async def check(self) -> bool: ...

    def kept_keys(self, source_id: str) -> list[str]: ...

    def close(self) -> None: ...


def uploads_prefix(config: Config) -> str:
    parts = PurePosixPath(config.uploads.dir).parts
    if not parts or config.uploads.dir.startswith("/") or any(p in (".", "..") or "\\" in p for p in parts):
        raise ConfigError("uploads.dir: expected a relative path inside [sources.local] root, without '..'")
    return "/".join(parts)


def open_storage(config: Config) -> Storage:
    if config.storage.backend == "s3":
        remote = config.sources.remote
        originals = OriginalsCache(config.path(remote.cache_dir), remote.cache_size_limit)
        return S3Storage(config.storage.s3, config.limits.max_source_bytes, originals, uploads_prefix(config))
    return LocalStorage(config)


class LocalStorage:
    """Files under `[sources.local] root`; uploads go to `<root>/<uploads.dir>/<id>/<name>`."""

    def __init__(self, config: Config):
        self.source = LocalSource(config.path(config.sources.local.root), config.limits.max_source_bytes)
        self.prefix = uploads_prefix(config)
        self.directory = self.source.root / self.prefix
        # on the uploads' filesystem, so moving a checked upload into place is an atomic rename
        self.temp_dir = self.directory / TEMP_DIR

    def source_id(self, source: str) -> str:
        return "local:" + self.source.resolve(source).relative_to(self.source.root).as_posix()

    async def load(self, source: str) -> Original:
        return self.source.load(source)  # one stat(): cheaper than a thread hop

    async def open(self, original: Original) -> Original:
        return original

    async def save_upload(self, temp: Path, upload_id: str, name: str) -> tuple[str, int]:
        return await asyncio.to_thread(self._move, temp, upload_id, name)

    def _move(self, temp: Path, upload_id: str, name: str) -> tuple[str, int]:
        folder = self.directory / upload_id
        try:
            fd = os.open(temp, os.O_RDONLY)
            try:
                os.fsync(fd)  # the bytes are on disk before the name appears
            finally:
                os.close(fd)
            folder.mkdir(parents=True)
            os.replace(temp, folder / name)
            size = (folder / name).stat().st_size
        except OSError as exc:
            log.warning("cannot store upload in %s: %s", folder, exc)
            raise StorageUnavailable("upload storage is unavailable") from None
        return f"{self.prefix}/{upload_id}/{name}", size

    async def remove_upload(self, path: str) -> None:
        """Take back a stored upload (its job could not be queued): its whole folder."""
        folder = self.source.root / PurePosixPath(path).parent
        await asyncio.to_thread(shutil.rmtree, folder, True)

    async def check(self) -> bool:
        root = self.source.root
        return await asyncio.to_thread(lambda: root.is_dir() and os.access(root, os.R_OK | os.X_OK))

    def kept_keys(self, source_id: str) -> list[str]:
        return []  # read from disk, never copied

    def close(self) -> None:
        pass


@dataclasses.dataclass(frozen=True)
class Version:
    etag: str
    size: int
    last_modified: float | None
    checked_at: float  # when the store last confirmed it (time.time())


def _meta_key(source_id: str) -> str:
    return source_id + "|meta"


def _data_key(source_id: str) -> str:
    return source_id + "|data"


def version_of(meta: Any, size: int) -> Version:
    """The version of an object from its metadata (obstore's ObjectMeta)."""
    modified = meta["last_modified"].timestamp()
    etag = meta["e_tag"] or f"m{modified:.6f}-{size}"  # a store without ETags: time and size
    return Version(etag, size, modified, time.time())


def error_kind(exc: BaseException) -> str:
    """What went wrong with a store request, for metrics and the log (obstore says it in text)."""
    if isinstance(exc, TimeoutError):
        return "timeout"
    if isinstance(exc, FileNotFoundError):
        return "not_found"
    if isinstance(exc, PermissionError) or type(exc).__name__ in ("PermissionDeniedError", "UnauthenticatedError"):
        return "denied"
    text = str(exc).lower()  # e.g. "... after 2 retries, retry_timeout: 5s - HTTP error: error sending request"
    if "non-2xx status code: 5" in text:
        return "server_error"
    if "timed out" in text:
        return "timeout"
    if "error sending request" in text or "connection" in text or "dns error" in text:
        return "unreachable"
    return "other"


class S3Storage:
    """Objects `<prefix><source>` in one bucket; uploads `<prefix><uploads.dir>/<id>/<name>`."""

    def __init__(self, cfg: S3StorageConfig, max_bytes: int, originals: OriginalsCache, uploads_dir: str):
        import obstore
        from obstore.store import S3Store

        self.obstore = obstore
        self.cfg = cfg
        self.max_bytes = max_bytes
        self.originals = originals
        self.uploads_dir = uploads_dir
        self.temp_dir = Path(tempfile.gettempdir()) / f"imgproxy-uploads-{os.getuid()}"
        settings: dict[str, Any] = {"region": cfg.region}
        if cfg.endpoint:
            settings["endpoint"] = cfg.endpoint
        if cfg.access_key_id:  # else obstore reads AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY
            settings["access_key_id"] = cfg.access_key_id
            settings["secret_access_key"] = cfg.secret_access_key
        self.store = S3Store(
            cfg.bucket,
            client_options={
                "allow_http": cfg.endpoint.startswith("http://"),
                "connect_timeout": timedelta(seconds=cfg.connect_timeout),
                "timeout": timedelta(seconds=cfg.timeout),
            },
            # a store that is down answers within the timeout, not after obstore's default 3 minutes
            retry_config={
                "max_retries": 2,
                "retry_timeout": timedelta(seconds=cfg.timeout),
                "backoff": {"init_backoff": timedelta(milliseconds=100), "max_backoff": timedelta(seconds=1)},
            },
            **settings,
        )
        self.known: dict[str, Version] = {}  # source id -> version, this process's memory
        self.paused_until = 0.0  # monotonic time; see _request
        self.inflight: SharedTasks[Any] = SharedTasks()  # one request per object for concurrent callers

    # --- keys and versions -------------------------------------------------------------------

    def key(self, source: str) -> str:
        """The object key of a source, or 400 before any store request."""
        path_parts(source)
        if any(ord(c) < 0x20 or ord(c) == 0x7F for c in source):
            raise BadRequest("bad source path: control characters are not allowed in object keys")
        key = self.cfg.prefix + source
        if len(key.encode("utf-8")) > 1024:
            raise NotFound("source not found")  # no S3 key is that long
        return key

    def source_id(self, source: str) -> str:
        self.key(source)
        return "s3:" + source

    def kept_keys(self, source_id: str) -> list[str]:
        return [_meta_key(source_id), _data_key(source_id)]

    def _fresh(self, version: Version) -> bool:
        return time.time() < version.checked_at + self.cfg.freshness

    def _remember(self, source_id: str, version: Version) -> None:
        if len(self.known) >= MAX_KNOWN:
            self.known.clear()
        self.known[source_id] = version
        self.originals.set(_meta_key(source_id), dataclasses.asdict(version))

    def _kept_version(self, source_id: str) -> Version | None:
        kept = self.originals.get(_meta_key(source_id))
        try:
            version = Version(**kept) if kept is not None else None
        except TypeError:  # written by another version of this code
            return None
        if version is not None:
            self.known[source_id] = version
        return version

    def _forget(self, source_id: str) -> None:
        self.known.pop(source_id, None)
        self.originals.delete(*self.kept_keys(source_id))

    def _original(self, source_id: str, version: Version, data: bytes | None = None) -> Original:
        if version.size > self.max_bytes:
            raise PayloadTooLarge(f"source is {version.size} bytes; the limit is {self.max_bytes}")
        return Original(
            id=source_id,
            version=version.etag,
            size=version.size,
            last_modified=version.last_modified,
            data=data,
        )

    # --- reading -----------------------------------------------------------------------------

    async def load(self, source: str) -> Original:
        key = self.key(source)
        source_id = "s3:" + source
        version = self.known.get(source_id)
        if version is None:  # another process, or before a restart, may have learnt it
            version = await asyncio.to_thread(self._kept_version, source_id)
        if version is not None and self._fresh(version):
            return self._original(source_id, version)
        if version is None:  # never seen: fetch it whole, a miss is likely
            fetched, data = await self.inflight.run("get:" + source_id, lambda: self._get(source_id, key))
            return self._original(source_id, fetched, data)
        try:
            version = await self.inflight.run("head:" + source_id, lambda: self._head(source_id, key))
        except StorageUnavailable:
            # results of the version we know are still served; a miss needs the store (open)
            return self._original(source_id, version)
        return self._original(source_id, version)

    async def open(self, original: Original) -> Original:
        if original.data is not None:
            return original
        source_id = original.id
        version = self.known.get(source_id)
        if version is not None and self._fresh(version) and version.etag == original.version:
            kept = await asyncio.to_thread(self.originals.get, _data_key(source_id))
            if kept is not None and kept["etag"] == original.version:
                return self._original(source_id, version, kept["data"])
        key = self.key(source_id.removeprefix("s3:"))
        fetched, data = await self.inflight.run("get:" + source_id, lambda: self._get(source_id, key))
        return self._original(source_id, fetched, data)  # its version may be newer: the caller checks

    async def _head(self, source_id: str, key: str) -> Version:
        try:
            meta = await self._request("head", lambda: self.obstore.head_async(self.store, key))
        except NotFound:
            self._forget(source_id)
            raise
        version = version_of(meta, meta["size"])
        await asyncio.to_thread(self._remember, source_id, version)
        return version

    async def _get(self, source_id: str, key: str) -> tuple[Version, bytes]:
        async def fetch() -> tuple[dict, bytes]:
            result = await self.obstore.get_async(self.store, key)
            meta = result.meta
            if meta["size"] > self.max_bytes:  # refused before the body is read
                raise PayloadTooLarge(f"source is {meta['size']} bytes; the limit is {self.max_bytes}")
            return meta, bytes(await result.bytes_async())

        try:
            meta, data = await self._request("get", fetch)
        except NotFound:
            self._forget(source_id)
            raise
        version = version_of(meta, len(data))
        await asyncio.to_thread(self._keep, source_id, version, data)
        return version, data

    def _keep(self, source_id: str, version: Version, data: bytes) -> None:
        self._remember(source_id, version)
        self.originals.set(_data_key(source_id), {"etag": version.etag, "data": data})

    async def _request(self, op: str, make: Callable[[], Awaitable[T]], timeout: float | None = None) -> T:
        """One store request, timed and bounded; obstore's errors become 404 or 503.

        Once the store has failed, requests fail fast for PAUSE_SECONDS: during an outage, hits of
        known versions and 503s come at once instead of each waiting for a timeout. /health
        still asks, and its success ends the pause."""
        if op != "health" and time.monotonic() < self.paused_until:
            raise StorageUnavailable("object store unavailable (it failed moments ago)", RETRY_AFTER)
        started = time.perf_counter()
        try:
            async with asyncio.timeout(timeout or self.cfg.timeout):
                return await make()
        except PayloadTooLarge:
            raise
        except Exception as exc:
            kind = error_kind(exc)
            if op != "health":  # its 404 is the answer hoped for
                metrics.STORE_ERRORS.labels(kind).inc()
            if kind == "not_found":
                raise NotFound("source not found") from None
            log.warning("object store %s failed (%s): %s", op, kind, str(exc).split("\n", 1)[0][:300])
            self.paused_until = time.monotonic() + PAUSE_SECONDS
            raise StorageUnavailable(f"object store unavailable ({kind})", RETRY_AFTER) from None
        finally:
            metrics.STORE_SECONDS.labels(op).observe(time.perf_counter() - started)

    # --- writing -----------------------------------------------------------------------------

    async def save_upload(self, temp: Path, upload_id: str, name: str) -> tuple[str, int]:
        """Put a checked upload; a failed put leaves no object (S3 puts are all or nothing, and an
        unfinished multipart upload is never listed)."""
        source = f"{self.uploads_dir}/{upload_id}/{name}"
        key = self.key(source)
        data = await asyncio.to_thread(temp.read_bytes)  # at most max_bytes; kept for the pre-renders
        timeout = self.cfg.timeout * max(1, math.ceil(len(data) / PUT_CHUNK))
        await self._request("put", lambda: self.obstore.put_async(self.store, key, data), timeout)
        # the store's own ETag and Last-Modified, as every replica will see them (one URL, one answer)
        meta = await self._request("head", lambda: self.obstore.head_async(self.store, key))
        await asyncio.to_thread(self._keep, "s3:" + source, version_of(meta, len(data)), data)
        return source, len(data)

    async def remove_upload(self, path: str) -> None:
        """Take back a stored upload (its job could not be queued)."""
        source_id = "s3:" + path
        await self._request("delete", lambda: self.obstore.delete_async(self.store, self.key(path)))
        self.known.pop(source_id, None)
        await asyncio.to_thread(self.originals.delete, *self.kept_keys(source_id))

    async def check(self) -> bool:
        try:
            await self._request(
                "health",
                lambda: self.obstore.head_async(self.store, self.cfg.prefix + HEALTH_KEY),
                timeout=min(self.cfg.timeout, self.cfg.connect_timeout + 1),
            )
        except NotFound:
            pass
        except StorageUnavailable:
            return False
        self.paused_until = 0.0
        return True

    def close(self) -> None:
        self.inflight.cancel()
        self.originals.close()
