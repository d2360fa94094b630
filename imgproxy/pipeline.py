"""From a source and RenderOptions to response bytes: resolve -> cache -> render pool -> cache.

Shared by `/picture`, the CLI and upload pre-rendering, so every path produces the same cache key.
Identical concurrent misses render once (coalescing); renders run in a bounded thread pool (Pillow
releases the GIL while decoding, resizing and encoding) with a bounded queue, past which callers
get 503.
"""

from __future__ import annotations

import asyncio
import functools
import os
import time
import traceback
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import BinaryIO, TypeVar

from . import metrics, svg
from .budget import UNLIMITED, Deadline, MemoryBudget
from .cache import ResultCache, ResultMeta, etag_of
from .config import Config
from .encode import CONTENT_TYPES, SOURCE_FORMATS, encode_within
from .errors import Forbidden, GatewayTimeout, Overloaded
from .info import INFO_KEY, source_info
from .loader import has_alpha, open_original
from .options import ENCODINGS, RenderOptions, with_encoding
from .render import Rendered, output_bytes, render
from .sources import Original, is_remote
from .storage import Storage, open_storage

T = TypeVar("T")


@dataclass
class Result:
    meta: ResultMeta
    body: bytes | BinaryIO
    cache_status: str  # HIT or MISS
    vary_accept: bool
    render_ms: float = 0.0
    max_bytes_unmet: bool = False  # the body is larger than the request's max_bytes (X-Max-Bytes: unmet)


def close_body(body: bytes | BinaryIO) -> None:
    """Result bodies are bytes or, for large cached entries, an open file."""
    if not isinstance(body, bytes):
        body.close()


# Formats the client offers, for the render to choose from once the source is known: whether it is
# animated decides. The cache key holds them, so each Accept class has its own entry (Vary: Accept).
AUTO = "auto:"
# The same with [render] auto_format = "smallest": each of them and the fallback (JPEG, or PNG with
# alpha) is encoded and the smallest output kept.
SMALLEST = "smallest:"


def negotiate(accept: str, every: bool = False) -> tuple[str, ...]:
    """Which of AVIF and WebP (in this order) the client's Accept lists with q > 0; JPEG XL only
    when it lists neither: JXL comes after both and never carries an animation, so it changes
    the answer only alone, and clients listing it besides AVIF or WebP keep their Accept class.
    `every` (auto_format = "smallest", where each is tried): JPEG XL too whenever listed."""
    offered = set()
    for item in accept.lower().split(",")[:32]:
        media, *params = item.split(";")
        quality = 1.0
        for param in params:
            name, _, value = param.strip().partition("=")
            if name == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        if quality > 0:
            offered.add(media.strip())
    found = tuple(fmt for fmt in ("avif", "webp") if f"image/{fmt}" in offered and fmt in ENCODINGS)
    if every:
        return found + (("jxl",) if "image/jxl" in offered else ())
    return found or (("jxl",) if "image/jxl" in offered else ())


def output_format(requested: str, source_format: str, has_alpha: bool, animated: bool) -> str:
    """`source` means: the source's own format when we can write it, else JPEG (PNG with alpha).
    `auto:avif,webp` (what negotiate() found) means the first, but an animation stays one: WebP
    when offered, else GIF (AVIF is first-frame only here)."""
    if requested.startswith((AUTO, SMALLEST)):
        offered = requested.partition(":")[2].split(",")
        if animated:
            return "webp" if "webp" in offered else "gif"
        return offered[0]
    if requested != "source":
        return requested
    return SOURCE_FORMATS.get(source_format) or ("png" if has_alpha else "jpeg")


def usable_cores() -> int:
    """Cores this process may run on (a cpuset or taskset may allow fewer than the machine has)."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


@functools.lru_cache(maxsize=4096)
def options_key(options: RenderOptions, fmt: str) -> str:
    """The options' part of a result key (options are immutable; a hit should not rebuild it)."""
    return with_encoding(options, fmt).cache_key()


def render_original(
    original: Original, options: RenderOptions, requested_format: str, config: Config, budget: MemoryBudget = UNLIMITED
) -> tuple[bytes, ResultMeta]:
    """Open, render and encode (blocking; runs in the pool)."""
    started = time.perf_counter()
    deadline = Deadline(config.render.timeout)
    if config.security.svg == "rasterize" and svg.is_svg(original):
        # a raster of an SVG is RGBA; it is drawn for this request's plan and format
        fmt = output_format(requested_format, svg.FORMAT, True, False)
        opened = svg.open_svg(original, options, fmt, config.limits, budget, deadline)
    else:
        opened = open_original(original, config.limits, config.security.allowed_source_formats)
    with opened.image:
        fmt = output_format(requested_format, opened.format, has_alpha(opened.image), opened.animated)
        overlay = config.watermarks[options.watermark] if options.watermark else None
        rendered = render(
            opened,
            options,
            fmt,
            config.render,
            deadline,
            budget,
            source_key=original.key,
            limits=config.limits,
            overlay=overlay,
        )
        # the output frames (all of an animation's) stay in the budget while they are encoded
        with budget.hold(len(rendered.frames) * output_bytes(rendered.size), deadline):
            if requested_format.startswith(SMALLEST) and len(rendered.frames) == 1:
                body, fmt = smallest_encode(rendered, requested_format, options, config, deadline)
            else:
                body, _ = encode_within(rendered, fmt, options.quality, config.render, options.max_bytes, deadline)
    width, height = rendered.size
    ms = (time.perf_counter() - started) * 1000
    meta = ResultMeta(CONTENT_TYPES[fmt], etag_of(body), len(body), width, height, original.last_modified, round(ms, 1))
    metrics.SOURCE_DECODES.labels("kept" if rendered.reused_decode else "decoded").inc()
    return body, meta


def smallest_encode(
    rendered: Rendered, requested: str, options: RenderOptions, config: Config, deadline: Deadline
) -> tuple[bytes, str]:
    """auto_format = "smallest": the smallest output (the first on a tie) among the offered formats
    and the fallback every client takes (JPEG, or PNG for pixels with alpha), each at the
    request's quality (auto: its perceptual target) or its own configured one. (body, format)"""
    alpha = rendered.frames[0].mode in ("RGBA", "LA")
    candidates = [*requested[len(SMALLEST) :].split(","), "png" if alpha else "jpeg"]
    best, chosen = b"", ""
    for fmt in candidates:
        deadline.check()
        body, _ = encode_within(rendered, fmt, options.quality, config.render, options.max_bytes, deadline)
        if not chosen or len(body) < len(best):
            best, chosen = body, fmt
    return best, chosen


def release_frames(exc: BaseException) -> None:
    """Drop the locals of the finished frames `exc` (and the errors it was raised from) passed
    through. A failed render's pixels are otherwise alive until the cyclic GC runs: the error is
    kept by the coalescing future, whose frame its traceback holds."""
    seen: set[int] = set()
    error: BaseException | None = exc
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        traceback.clear_frames(error.__traceback__)
        error = error.__context__ or error.__cause__


def _releasing(fn: Callable[..., T], *args: object) -> T:
    try:
        return fn(*args)
    except BaseException as exc:
        release_frames(exc)
        raise


def _unmet(options: RenderOptions, meta: ResultMeta) -> bool:
    """From the stored length, so a cache hit answers the same header as the render did."""
    return options.max_bytes is not None and meta.size > options.max_bytes


class Renderer:
    def __init__(self, config: Config, cache: ResultCache, remote=None, storage: Storage | None = None):
        self.config = config
        self.cache = cache
        self.storage = storage if storage is not None else open_storage(config)
        self.remote = remote
        self.workers = config.render.workers or usable_cores()
        self.pool = ThreadPoolExecutor(self.workers, thread_name_prefix="render")
        self.memory = MemoryBudget(config.render.memory_budget, config.render.kept_decodes)
        cache.cleared_listeners.append(self.memory.forget_kept)
        self.capacity = self.workers + config.render.queue_limit
        self.pending = 0  # renders running or waiting for a pool thread
        self.inflight: dict[str, asyncio.Future] = {}
        self.renders = 0  # completed renders, for tests and metrics

    @property
    def accepting(self) -> bool:
        """Whether a new render would be queued rather than refused with 503."""
        return self.pending < self.capacity

    def requested_format(self, options: RenderOptions, accept: str) -> tuple[str, bool]:
        """(format, "source" or "auto:" and the offered formats; whether it was chosen from Accept)."""
        default = self.config.render.default_format
        fmt = options.encoding or default
        if fmt != "auto":
            return fmt, False
        smallest = self.config.render.auto_format == "smallest"
        offered = negotiate(accept, every=smallest)
        if offered:
            return (SMALLEST if smallest else AUTO) + ",".join(offered), True
        return (default if default != "auto" else "source"), True

    async def load(self, source: str) -> Original:
        if is_remote(source):
            if self.remote is None:
                raise Forbidden("remote sources are off (no [sources.remote] allowed_hosts)")
            return await self.remote.load(source)
        return await self.storage.load(source)

    @staticmethod
    def cache_key(original: Original, options: RenderOptions, fmt: str) -> str:
        return f"{original.key}|{options_key(options, fmt)}"

    async def _lookup(self, key: str, if_none_match: str) -> tuple[ResultMeta, bytes | BinaryIO] | None:
        """A cache hit, or None; a body streamed from its file is hashed first (off the loop)."""
        hit = self.cache.get(key, if_none_match)
        if hit is not None and not isinstance(hit[1], bytes):
            file = await asyncio.to_thread(self.cache.verify_file, key, hit[0], hit[1])
            return None if file is None else (hit[0], file)
        return hit

    async def picture(self, source: str, options: RenderOptions, accept: str = "", if_none_match: str = "") -> Result:
        """A hit whose ETag matches `if_none_match` comes with an empty body (for a 304)."""
        fmt, vary = self.requested_format(options, accept)
        original = await self.load(source)
        key = self.cache_key(original, options, fmt)
        hit = await self._lookup(key, if_none_match)
        if hit is None and original.path is None and original.data is None:
            opened = await self.storage.open(original)  # the bytes, fetched only for a miss
            if opened.key != original.key:  # the object changed since its version was learnt
                key = self.cache_key(opened, options, fmt)
                hit = await self._lookup(key, if_none_match)
            original = opened
        if hit is not None:
            metrics.CACHE_HITS.inc()
            return Result(hit[0], hit[1], "HIT", vary, max_bytes_unmet=_unmet(options, hit[0]))
        metrics.CACHE_MISSES.inc()
        body, meta = await self._coalesced(key, original, options, fmt)
        return Result(meta, body, "MISS", vary, meta.render_ms, _unmet(options, meta))

    async def _coalesced(
        self, key: str, original: Original, options: RenderOptions, fmt: str
    ) -> tuple[bytes, ResultMeta]:
        waiting = self.inflight.get(key)
        if waiting is not None:
            return await asyncio.shield(waiting)
        future = asyncio.get_running_loop().create_future()
        self.inflight[key] = future
        try:
            with self.memory.expecting(original.key):
                body, meta = await asyncio.wait_for(
                    self.run(self._render_and_store, key, original, options, fmt),
                    timeout=self.config.render.timeout + 5,
                )
            future.set_result((body, meta))
            return body, meta
        except TimeoutError:
            error = GatewayTimeout if is_remote(original.id) else Overloaded
            exc = error(f"render took longer than {self.config.render.timeout:g} s")
            future.set_exception(exc)
            raise exc from None
        except BaseException as exc:
            future.set_exception(exc)
            raise
        finally:
            del self.inflight[key]
            if not future.cancelled() and future.exception() is not None:
                future.exception()  # mark retrieved: waiters got it, nobody else needs the warning

    async def run(self, fn: Callable[..., T], *args: object) -> T:
        """`fn(*args)` on a render thread, queued with the renders (503 when the queue is full).
        Pixel work outside `/picture` (upload checks) goes through here too, and holds `memory`."""
        if not self.accepting:
            metrics.SHED.inc()
            raise Overloaded(f"render queue full ({self.capacity} renders pending)", retry_after=2)
        self.pending += 1
        metrics.RENDER_QUEUE.set(max(0, self.pending - self.workers))
        try:
            return await asyncio.get_running_loop().run_in_executor(self.pool, _releasing, fn, *args)
        finally:
            self.pending -= 1
            metrics.RENDER_QUEUE.set(max(0, self.pending - self.workers))

    def _render_and_store(
        self, key: str, original: Original, options: RenderOptions, fmt: str
    ) -> tuple[bytes, ResultMeta]:
        with metrics.RENDERS_IN_FLIGHT.track_inprogress():
            body, meta = render_original(original, options, fmt, self.config, self.memory)
        metrics.observe_render(meta.content_type, meta.render_ms, original.kind, original.size)
        self.cache.put(key, body, meta)
        self.renders += 1
        return body, meta

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)
        self.cache.close()
        self.storage.close()

    async def info(self, source: str, if_none_match: str = "") -> Result:
        """`/info`'s answer, cached like a result under the source's version (SPEC §11)."""
        original = await self.load(source)
        key = f"{original.key}|{INFO_KEY}"
        hit = await self._lookup(key, if_none_match)
        if hit is None and original.path is None and original.data is None:
            original = await self.storage.open(original)  # the bytes, fetched only for a miss
            key = f"{original.key}|{INFO_KEY}"
            hit = await self._lookup(key, if_none_match)
        if hit is not None:
            return Result(hit[0], hit[1], "HIT", False)
        body, meta = await self.run(self._info_and_store, key, original)
        return Result(meta, body, "MISS", False, meta.render_ms)

    def _info_and_store(self, key: str, original: Original) -> tuple[bytes, ResultMeta]:
        body, meta = source_info(original, self.config, self.memory)
        self.cache.put(key, body, meta)
        return body, meta
