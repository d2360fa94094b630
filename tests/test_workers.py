"""`--workers N`: worker processes share the cache and the metrics; SIGTERM lets renders finish."""

import io
import threading
import time
from pathlib import Path

import diskcache
import httpx
import pytest
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from imgproxy.cache import PROBE_KEY, ResultMeta
from imgproxy.pipeline import etag_of

SLOW = "/picture/photos/large_12mp_bus.jpg?w=4000&encoding=avif&q=90"  # 2-3 s of AVIF encoding at SLOW_AVIF
# timeout: the render budget, which also bounds the graceful shutdown; a busy machine needs more than 30 s
SLOW_AVIF = {"render": {"avif_speed": 8, "timeout": 120}}


def metric(server, name: str) -> float:
    text = httpx.get(server.url + "/metrics", timeout=60).text
    return sum(s.value for family in text_string_to_metric_families(text) for s in family.samples if s.name == name)


def wait_until(condition, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.05)


def worker_pids(server) -> list[int]:
    children = Path(f"/proc/{server.process.pid}/task/{server.process.pid}/children").read_text().split()
    return [int(pid) for pid in children if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()]


def assert_every_entry_whole(cache_dir: Path) -> int:
    """Every result in the cache reads back complete, matches its ETag and decodes. Returns how many."""
    checked = 0
    with diskcache.Cache(str(cache_dir)) as cache:
        for key in list(cache.iterkeys()):
            if key == PROBE_KEY:
                continue
            body, tag = cache.get(key, read=True, tag=True)
            with body:
                data = body.read()
            meta = ResultMeta.from_tag(tag)
            assert len(data) == meta.size and etag_of(data) == meta.etag, key
            with Image.open(io.BytesIO(data)) as image:
                image.load()
                assert image.size == (meta.width, meta.height)
            checked += 1
    return checked


@pytest.mark.timeout(60)
def test_workers_share_the_cache_and_sum_their_figures(live_server):
    server = live_server({}, workers=2)
    assert len(worker_pids(server)) == 2
    url = server.url + "/picture/photos/tree.webp?w=77"
    assert httpx.get(url, timeout=30).headers["x-cache"] == "MISS"
    # fresh connections: whichever worker accepts, the other's result is in the shared cache
    assert {httpx.get(url, timeout=30).headers["x-cache"] for _ in range(12)} == {"HIT"}
    assert metric(server, "imgproxy_cache_hits_total") == 12
    assert metric(server, "imgproxy_cache_misses_total") == 1


@pytest.mark.timeout(300)
@pytest.mark.parametrize("workers", [1, 2])
def test_sigterm_lets_the_render_in_flight_finish(live_server, workers):
    server = live_server(SLOW_AVIF, workers=workers)
    outcome = {}

    def fetch():
        try:
            outcome["response"] = httpx.get(server.url + SLOW, timeout=120)
        except httpx.TransportError as exc:
            outcome["error"] = exc

    client = threading.Thread(target=fetch)
    client.start()
    wait_until(lambda: metric(server, "imgproxy_renders_in_flight") >= 1, timeout=120)
    assert server.stop(timeout=120) == 0  # SIGTERM, then the exit code
    client.join(120)
    # uvicorn's graceful shutdown (bounded by [render] timeout) waits for the answer in flight
    assert "error" not in outcome, outcome
    r = outcome["response"]
    assert r.status_code == 200 and r.headers["x-cache"] == "MISS"
    assert int(r.headers["content-length"]) == len(r.content)
    assert Image.open(io.BytesIO(r.content)).size == (4000, 3000)
    assert assert_every_entry_whole(server.cache_dir) == 1
