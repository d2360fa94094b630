"""Prometheus metrics, summed over every worker process.

`imgproxy serve` points PROMETHEUS_MULTIPROC_DIR at a fresh directory before uvicorn starts its
workers (prometheus-client picks file-backed values at import, so the variable must come first);
each worker then keeps its figures in files there and a scrape of any worker reads them all.
Without the variable (tests, the CLI) the figures stay in the process.

The metric objects are created once, here; request handling only increments them. Cache size and
entry count are read from the shared diskcache at scrape time, so every worker reports the same.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import GaugeMetricFamily
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from .errors import BadGateway, Forbidden, GatewayTimeout, NotFound, PayloadTooLarge, UnsupportedMedia

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
REGISTRY = CollectorRegistry()  # this process's own figures, when not in multiprocess mode

REQUESTS = Counter(
    "imgproxy_requests", "HTTP requests answered, by route and status class", ["route", "status"], registry=REGISTRY
)
REQUEST_SECONDS = Histogram(
    "imgproxy_request_duration_seconds",
    "From request to last body byte, by route",
    ["route"],
    buckets=SECONDS,
    registry=REGISTRY,
)
RESPONSE_BYTES = Counter("imgproxy_response_bytes", "Response body bytes sent", registry=REGISTRY)
SOURCE_BYTES = Counter(
    "imgproxy_source_bytes", "Bytes of originals read by renders, by source kind", ["kind"], registry=REGISTRY
)
RENDER_SECONDS = Histogram(
    "imgproxy_render_duration_seconds",
    "Decode, resize and encode of one result, by output format",
    ["format"],
    buckets=SECONDS,
    registry=REGISTRY,
)
RENDERS_IN_FLIGHT = Gauge(
    "imgproxy_renders_in_flight", "Renders running on a render thread", multiprocess_mode="livesum", registry=REGISTRY
)
RENDER_QUEUE = Gauge(
    "imgproxy_render_queue_length",
    "Renders waiting for a render thread",
    multiprocess_mode="livesum",
    registry=REGISTRY,
)
SOURCE_DECODES = Counter(
    "imgproxy_source_decodes",
    "Renders by where their source pixels came from: decoded, "
    "or kept in memory by an earlier render of the same source",
    ["origin"],
    registry=REGISTRY,
)
KEPT_DECODES = Counter(
    "imgproxy_kept_decodes",
    "Decoded sources offered for keeping, by outcome: declined (not admitted), kept, then for each "
    "kept one hit (per reuse) and, when it goes, dropped_used or dropped_unused (never reused)",
    ["outcome"],
    registry=REGISTRY,
)
SHED = Counter("imgproxy_shed", "Requests answered 503 because the render queue was full", registry=REGISTRY)
CACHE_HITS = Counter("imgproxy_cache_hits", "Results answered from the result cache", registry=REGISTRY)
CACHE_MISSES = Counter(
    "imgproxy_cache_misses", "Results not in the result cache (rendered or joined a render)", registry=REGISTRY
)
CACHE_EVICTIONS = Counter(
    "imgproxy_cache_evictions", "Result cache entries removed to stay under size_limit", registry=REGISTRY
)
FETCH_SECONDS = Histogram(
    "imgproxy_upstream_fetch_duration_seconds",
    "Fetches of remote originals, errors included",
    buckets=SECONDS,
    registry=REGISTRY,
)
FETCH_ERRORS = Counter(
    "imgproxy_upstream_fetch_errors", "Failed fetches of remote originals, by kind", ["kind"], registry=REGISTRY
)
STORE_SECONDS = Histogram(
    "imgproxy_store_request_duration_seconds",
    "Requests to the object store ([storage] backend = s3), errors included, by operation",
    ["op"],
    buckets=SECONDS,
    registry=REGISTRY,
)
STORE_ERRORS = Counter(
    "imgproxy_store_errors",
    "Failed object store requests, by kind (not_found, timeout, unreachable, server_error, denied, other)",
    ["kind"],
    registry=REGISTRY,
)

FETCH_ERROR_KINDS = (
    (TimeoutError, "timeout"),
    (GatewayTimeout, "timeout"),
    (NotFound, "not_found"),
    (PayloadTooLarge, "too_large"),
    (UnsupportedMedia, "not_an_image"),
    (Forbidden, "forbidden"),  # a redirect to a host or address that is not allowed
    (BadGateway, "bad_gateway"),  # connection failed, error status, invalid response, too many redirects
)


@functools.lru_cache(maxsize=256)
def _request_metrics(route: str, status_class: str) -> tuple[Counter, Histogram]:
    """The labelled children for a route and status class (labels() takes a lock and builds keys)."""
    return REQUESTS.labels(route, status_class), REQUEST_SECONDS.labels(route)


def observe_request(route: str, status: int, seconds: float, size: int) -> None:
    requests, request_seconds = _request_metrics(route, f"{status // 100}xx")
    requests.inc()
    request_seconds.observe(seconds)
    RESPONSE_BYTES.inc(size)


def observe_render(content_type: str, render_ms: float, source_kind: str, source_size: int) -> None:
    RENDER_SECONDS.labels(content_type.removeprefix("image/")).observe(render_ms / 1000)
    SOURCE_BYTES.labels(source_kind).inc(source_size)


def fetch_error_kind(error: BaseException) -> str:
    for error_type, kind in FETCH_ERROR_KINDS:
        if isinstance(error, error_type):
            return kind
    return "other"


@contextlib.contextmanager
def upstream_fetch() -> Iterator[None]:
    """Wrap one fetch of a remote original: its duration, and its error kind when it fails."""
    started = time.perf_counter()
    try:
        yield
    except Exception as exc:
        FETCH_ERRORS.labels(fetch_error_kind(exc)).inc()
        raise
    finally:
        FETCH_SECONDS.observe(time.perf_counter() - started)


class CacheCollector:
    """imgproxy_cache_bytes and imgproxy_cache_entries, read from the shared cache at each scrape."""

    def __init__(self, cache):
        self.cache = cache

    def collect(self):
        stats = self.cache.stats()
        if not stats.get("usable"):
            return
        yield GaugeMetricFamily("imgproxy_cache_bytes", "Disk space used by the result cache", value=stats["bytes"])
        yield GaugeMetricFamily("imgproxy_cache_entries", "Results in the result cache", value=stats["entries"])


class JobsCollector:
    """imgproxy_jobs{state}: queued and running jobs of the (shared) job store at each scrape."""

    def __init__(self, jobs):
        self.jobs = jobs

    def collect(self):
        store = self.jobs.store
        try:
            stats = store.stats(time.time())
        except store.errors:  # the store is away: /health says so; no figures rather than wrong ones
            return
        family = GaugeMetricFamily("imgproxy_jobs", "Pre-render jobs by state (queue length: queued)", labels=["state"])
        for state in ("queued", "running"):
            family.add_metric([state], stats[state])
        yield family


_LIVE_GAUGE_FILE = re.compile(r"gauge_live\w+?_(\d+)\.db")


def _forget_dead_processes(directory: Path) -> None:
    """Drop the in-flight/queue gauges of workers that are gone (crashed or replaced)."""
    for path in directory.glob("gauge_live*.db"):
        match = _LIVE_GAUGE_FILE.fullmatch(path.name)
        if match is None:
            continue
        pid = int(match.group(1))
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            multiprocess.mark_process_dead(pid, str(directory))
        except PermissionError:
            pass  # alive, another user's


class MetricsEndpoint:
    """GET /metrics: every worker's figures plus the cache's, in the Prometheus text format."""

    def __init__(self, cache, jobs=None):
        self.cache_registry = CollectorRegistry(auto_describe=False)
        self.cache_registry.register(CacheCollector(cache))
        if jobs is not None:
            self.cache_registry.register(JobsCollector(jobs))

    def exposition(self) -> bytes:
        directory = os.environ.get(MULTIPROC_ENV)
        registry = REGISTRY
        if directory:
            _forget_dead_processes(Path(directory))
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry, directory)
        return generate_latest(registry) + generate_latest(self.cache_registry)

    async def handle(self, request: Request) -> Response:
        body = await run_in_threadpool(self.exposition)  # file and SQLite reads: off the event loop
        return Response(body, media_type=CONTENT_TYPE_LATEST, headers={"Cache-Control": "no-store"})
