"""/metrics and /health: figures move exactly as requests are answered, summed over workers."""

import threading

import diskcache
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from imgproxy import metrics
from imgproxy.errors import BadGateway, GatewayTimeout, PayloadTooLarge

from .conftest import CORPUS, copy_from_corpus
from .origin import Origin

PICTURE = "/picture/{source:path}"


def scrape(client: httpx.Client) -> tuple[dict, int]:
    """Samples by (name, labels), and the body size (the next scrape counts it in bytes out)."""
    r = client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    samples = {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(r.text)
        for s in family.samples
    }
    return samples, len(r.content)


def value(samples: dict, name: str, **labels) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def delta(before: dict, after: dict, name: str, **labels) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


@pytest.mark.timeout(90)
@pytest.mark.parametrize("workers", [1, 2])
def test_figures_follow_requests(live_server, workers):
    server = live_server({}, workers=workers)
    with server.client() as client:
        before, scraped_bytes = scrape(client)
    # a fresh connection per request: with 2 workers, any of them may answer each
    paths = ["/picture/photos/tree.webp?w=120"] * 5 + [
        "/picture/photos/alpha_dice.png?w=50&encoding=avif",
        "/picture/nope.jpg?w=10",
    ]
    responses = [httpx.get(server.url + path, timeout=30) for path in paths]
    assert [r.headers.get("x-cache") for r in responses] == ["MISS"] + ["HIT"] * 4 + ["MISS", None]
    with server.client() as client:
        after, _ = scrape(client)

    assert delta(before, after, "imgproxy_cache_hits_total") == 4
    assert delta(before, after, "imgproxy_cache_misses_total") == 2
    assert delta(before, after, "imgproxy_requests_total", route=PICTURE, status="2xx") == 6
    assert delta(before, after, "imgproxy_requests_total", route=PICTURE, status="4xx") == 1
    assert delta(before, after, "imgproxy_requests_total", route="/metrics", status="2xx") == 1
    assert delta(before, after, "imgproxy_request_duration_seconds_count", route=PICTURE) == 7
    assert delta(before, after, "imgproxy_render_duration_seconds_count", format="webp") == 1
    assert delta(before, after, "imgproxy_render_duration_seconds_count", format="avif") == 1
    assert delta(before, after, "imgproxy_render_duration_seconds_sum", format="avif") > 0
    originals = sum((server.root / p).stat().st_size for p in ("photos/tree.webp", "photos/alpha_dice.png"))
    assert delta(before, after, "imgproxy_source_bytes_total", kind="local") == originals
    bodies = sum(len(r.content) for r in responses)
    assert delta(before, after, "imgproxy_response_bytes_total") == bodies + scraped_bytes
    assert value(after, "imgproxy_renders_in_flight") == 0
    assert value(after, "imgproxy_render_queue_length") == 0
    assert value(after, "imgproxy_cache_entries") == 2
    assert value(after, "imgproxy_cache_bytes") >= len(responses[0].content) + len(responses[5].content)


@pytest.mark.timeout(120)
def test_evictions_are_the_entries_set_lost(live_server, writable_root):
    copy_from_corpus("photos/large_9mp_harbour.jpg", writable_root, "a.jpg")
    # ~200 KB per PNG: the 0.4-1.4 MB a 2 MB directory leaves results holds a handful of the 16
    server = live_server(
        {
            "sources": {"local": {"root": str(writable_root)}},
            "cache": {"size_limit": "2MB"},
            "render": {"jpeg_quality": 95},
        }
    )
    cache = diskcache.Cache(str(server.cache_dir))
    entries_before = len(cache)
    with server.client() as client:
        before, _ = scrape(client)
        for width in range(600, 616):
            assert client.get(f"/picture/a.jpg?w={width}&encoding=png").headers["x-cache"] == "MISS"
        after, _ = scrape(client)
    evicted = delta(before, after, "imgproxy_cache_evictions_total")
    assert evicted > 0
    assert evicted == 16 + entries_before - len(cache)
    assert value(after, "imgproxy_cache_entries") < 16


@pytest.mark.timeout(60)
def test_renders_count_decodes_kept_for_the_next_width(live_server):
    server = live_server({})
    with server.client() as client:
        before, _ = scrape(client)
        # 1100..2016 px of a 4032-px JPEG decode at 1/2 scale: the first decode serves the others
        widths = (1920, 1600, 1280, 1100)
        for width in widths:
            r = client.get(f"/picture/photos/large_12mp_bus.jpg?w={width}")
            assert r.status_code == 200 and r.headers["x-cache"] == "MISS"
        # 320 px decodes at 1/8 (never resampled from the larger decode, which would give other
        # bytes), and another source: decoded once more each
        assert client.get("/picture/photos/large_12mp_bus.jpg?w=320").status_code == 200
        assert client.get("/picture/photos/large_9mp_harbour.jpg?w=500").status_code == 200
        after, _ = scrape(client)
    # the first width's decode is not kept (its source was not asked for before); the second's is,
    # and the 1/8 decode too (a second request of that source)
    assert delta(before, after, "imgproxy_source_decodes_total", origin="decoded") == 4
    assert delta(before, after, "imgproxy_source_decodes_total", origin="kept") == len(widths) - 2
    outcomes = {o: delta(before, after, "imgproxy_kept_decodes_total", outcome=o) for o in ("declined", "kept", "hit")}
    assert outcomes == {"declined": 2, "kept": 2, "hit": len(widths) - 2}


@pytest.mark.timeout(120)
def test_shed_requests_are_counted(live_server):
    server = live_server({"render": {"workers": 1, "queue_limit": 1}})
    with server.client() as client:
        before, _ = scrape(client)
    codes = []

    def fetch(width):
        url = f"{server.url}/picture/photos/large_12mp_bus.jpg?w={width}&encoding=avif"
        codes.append(httpx.get(url, timeout=60).status_code)

    threads = [threading.Thread(target=fetch, args=(w,)) for w in range(1500, 1506)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    with server.client() as client:
        after, _ = scrape(client)
    shed = codes.count(503)
    assert shed >= 4 and codes.count(200) == 6 - shed  # one rendering, one waiting, the rest refused
    assert delta(before, after, "imgproxy_shed_total") == shed
    assert delta(before, after, "imgproxy_requests_total", route=PICTURE, status="5xx") == shed
    assert delta(before, after, "imgproxy_render_duration_seconds_count", format="avif") == 6 - shed


@pytest.mark.timeout(60)
def test_an_operators_metrics_directory_is_emptied_at_start(live_server, tmp_path):
    directory = tmp_path / "prometheus"
    env = {"PROMETHEUS_MULTIPROC_DIR": str(directory)}
    first = live_server({}, env=env, name="first")
    for _ in range(2):
        httpx.get(first.url + "/picture/photos/tree.webp?w=64", timeout=30)
    first.stop()
    assert list(directory.glob("counter_*.db"))  # the first run kept its figures there
    second = live_server({}, env=env, name="second")
    with second.client() as client:
        samples, _ = scrape(client)
    assert value(samples, "imgproxy_cache_hits_total") == 0
    assert value(samples, "imgproxy_requests_total", route=PICTURE, status="2xx") == 0


def test_upstream_fetch_times_and_classifies_failures():
    """In this process (no PROMETHEUS_MULTIPROC_DIR) the figures live in metrics.REGISTRY."""

    def sample(name, **labels):
        return metrics.REGISTRY.get_sample_value(name, labels) or 0.0

    count = sample("imgproxy_upstream_fetch_duration_seconds_count")
    errors = {
        kind: sample("imgproxy_upstream_fetch_errors_total", kind=kind)
        for kind in ("timeout", "bad_gateway", "too_large", "other")
    }
    with metrics.upstream_fetch():
        pass
    for error in (GatewayTimeout("slow"), TimeoutError(), BadGateway("502"), PayloadTooLarge("big"), KeyError("x")):
        with pytest.raises(type(error)), metrics.upstream_fetch():
            raise error
    assert sample("imgproxy_upstream_fetch_duration_seconds_count") == count + 6
    assert sample("imgproxy_upstream_fetch_errors_total", kind="timeout") == errors["timeout"] + 2
    assert sample("imgproxy_upstream_fetch_errors_total", kind="bad_gateway") == errors["bad_gateway"] + 1
    assert sample("imgproxy_upstream_fetch_errors_total", kind="too_large") == errors["too_large"] + 1
    assert sample("imgproxy_upstream_fetch_errors_total", kind="other") == errors["other"] + 1


@pytest.mark.timeout(60)
def test_remote_fetches_are_timed_and_failures_counted(live_server):
    origin = Origin().start()
    try:
        server = live_server({"sources": {"remote": {"allowed_hosts": ["127.0.0.1"], "allow_private_addresses": True}}})
        with server.client() as client:
            before, _ = scrape(client)
            assert client.get("/picture/" + origin.url("/photos/tree.webp") + "?w=50").status_code == 200
            assert (
                client.get("/picture/" + origin.url("/photos/tree.webp") + "?w=60").status_code == 200
            )  # cached original
            assert client.get("/picture/" + origin.url("/status/500")).status_code == 502
            after, _ = scrape(client)
    finally:
        origin.stop()
    original = (CORPUS / "photos/tree.webp").stat().st_size
    assert delta(before, after, "imgproxy_source_bytes_total", kind="remote") == 2 * original
    assert delta(before, after, "imgproxy_upstream_fetch_duration_seconds_count") == 2
    assert delta(before, after, "imgproxy_upstream_fetch_errors_total", kind="bad_gateway") == 1


def test_health_reports_readiness(live_server, tmp_path):
    with live_server({}).client() as client:
        r = client.get("/health")
        body = r.json()
        assert r.status_code == 200 and body["status"] == "ok"
        assert body["checks"] == {"cache_writable": True, "storage": True, "render_pool": True, "jobs": True}
        assert {"renders", "pending", "capacity", "cache"} <= set(body)
    blocker = tmp_path / "a-file"
    blocker.write_text("where the cache directory should be")
    with live_server({"cache": {"dir": str(blocker / "cache")}}).client() as client:
        r = client.get("/health")
        # degraded but ready: it still serves (uncached), and a restart would not fix the disk
        assert r.status_code == 200
        assert r.json()["status"] == "degraded" and r.json()["checks"]["cache_writable"] is False
        assert client.get("/picture/photos/tree.webp?w=20").status_code == 200  # still serves, uncached
