"""RemoteSource against a real, misbehaving origin server on 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import itertools
import socket
import tracemalloc

import httpx
import pytest

from imgproxy.config import RemoteSourceConfig, SecurityConfig
from imgproxy.errors import (
    BadGateway,
    BadRequest,
    Forbidden,
    GatewayTimeout,
    ImageProxyError,
    NotFound,
    Overloaded,
    PayloadTooLarge,
    UnsupportedMedia,
)
from imgproxy.netguard import AddressNotAllowed
from imgproxy.remote import FetchSlots, RemoteSource, freshness
from tests.origin import PHOTOS

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(15)]
PNG = "/photos/alpha_dice.png"
PNG_BYTES = (PHOTOS / "alpha_dice.png").read_bytes()
GIF_BYTES = (PHOTOS / "animated_earth.gif").read_bytes()
unique = itertools.count()


@pytest.fixture
def anyio_backend():
    return "asyncio"


@pytest.fixture
def fresh(origin):
    """A path on the origin no other test has used, so its hit count starts at zero."""
    return lambda path=PNG: f"{path}{'&' if '?' in path else '?'}t={next(unique)}"


@contextlib.asynccontextmanager
async def remote(
    tmp_path, resolver=None, trusted_networks=(), formats=SecurityConfig.allowed_source_formats, **settings
):
    values = dict(
        allowed_hosts=("127.0.0.1",),
        allow_private_addresses=True,
        connect_timeout=2.0,
        read_timeout=3.0,
        timeout=5.0,
    )
    values.update(settings)
    source = RemoteSource(
        RemoteSourceConfig(**values),
        cache_dir=tmp_path / "originals",
        resolver=resolver,
        trusted_networks=trusted_networks,
        formats=formats,
    )
    try:
        yield source
    finally:
        await source.aclose()


async def test_loads_an_original(tmp_path, origin, fresh):
    path = fresh()
    async with remote(tmp_path) as source:
        original = await source.load(origin.url(path))
    assert original.data == PNG_BYTES
    assert original.size == len(PNG_BYTES)
    assert original.id == origin.url(path)
    assert original.path is None
    assert len(original.version) == 16
    assert original.last_modified == pytest.approx((PHOTOS / "alpha_dice.png").stat().st_mtime, abs=1)


async def test_collapsed_scheme_slashes_are_accepted(tmp_path, origin, fresh):
    path = fresh()
    async with remote(tmp_path) as source:
        collapsed = await source.load(f"http:/127.0.0.1:{origin.port}{path}")
        normal = await source.load(origin.url(path))
    assert collapsed.data == PNG_BYTES
    assert collapsed.id == normal.id
    assert origin.hits(path) == 1


@pytest.mark.parametrize(
    "url",
    [
        "ftp://127.0.0.1/a.jpg",
        "file:///etc/passwd",
        "javascript:alert(1)",
        "gopher://127.0.0.1:6379/_FLUSHALL",
        "http://",
        "http://user:hunter2@127.0.0.1/a.jpg",
        "http://allowed.com@evil.com/a.jpg",
        "http://evil.com\\@127.0.0.1/a.jpg",
        "http://0177.0.0.1/a.jpg",
        "http://127.0.0.1:99999/a.jpg",
        "http://" + "a" * 3000 + ".com/",
        "http://xn--/a.jpg",  # not valid punycode: httpx fails decoding it, not parsing it
        "http://xn--zz.example/a.jpg",
        "http://a..example/a.jpg",
        "http://" + "a" * 64 + ".example/a.jpg",
    ],
)
async def test_bad_urls_are_400(tmp_path, url):
    async with remote(tmp_path) as source:
        with pytest.raises(BadRequest) as info:
            await source.load(url)
    assert "hunter2" not in info.value.message


@pytest.mark.parametrize(
    "url, host",
    [
        ("http://evil.example/a.jpg", "evil.example"),
        ("http://127.0.0.1.evil.example/a.jpg", "127.0.0.1.evil.example"),
        ("http://127.0.0.2/a.jpg", "127.0.0.2"),
        ("http://localhost/a.jpg", "localhost"),
    ],
)
async def test_hosts_not_allowed_are_403_naming_the_host(tmp_path, url, host):
    async with remote(tmp_path) as source:
        with pytest.raises(Forbidden, match=f"not allowed: {host}$"):
            await source.load(url)


async def test_remote_is_off_without_allowed_hosts(tmp_path, origin, fresh):
    path = fresh()
    async with remote(tmp_path, allowed_hosts=()) as source:
        with pytest.raises(Forbidden, match="off"):
            await source.load(origin.url(path))
    assert origin.hits(path) == 0


@pytest.mark.parametrize(
    "host",
    [
        "127.0.0.1",
        "2130706433",
        "0x7f.1",
        "0x7f000001",
        "127.1",
        "[::ffff:127.0.0.1]",
        "[::1]",
        "[fe80::1%25lo]",
    ],
)
async def test_loopback_is_refused_unless_private_addresses_are_allowed(tmp_path, origin, fresh, host):
    path = fresh()
    async with remote(tmp_path, allowed_hosts=("*",), allow_private_addresses=False) as source:
        with pytest.raises(AddressNotAllowed) as info:
            await source.load(f"http://{host}:{origin.port}{path}")
    assert info.value.status == 403
    assert origin.hits(path) == 0


def resolver_for(answers):
    async def resolve(host, port):
        if host not in answers:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [ipaddress.ip_address(a) for a in answers[host]]

    return resolve


async def test_injected_resolver_is_used_and_checked(tmp_path, origin, fresh):
    resolver = resolver_for({"origin.test": ["127.0.0.1"], "internal.test": ["10.0.0.7"]})
    path = fresh()
    async with remote(
        tmp_path, resolver, ["127.0.0.1/32"], allowed_hosts=("*.test",), allow_private_addresses=False
    ) as source:
        original = await source.load(f"http://origin.test:{origin.port}{path}")
        with pytest.raises(BadGateway, match="cannot connect to upstream internal.test"):
            await source.load(f"http://internal.test:{origin.port}{path}")
        with pytest.raises(BadGateway, match="cannot connect to upstream unknown.test"):
            await source.load(f"http://unknown.test:{origin.port}{path}")
    assert original.data == PNG_BYTES
    assert origin.requests(path)[0].headers["host"] == f"origin.test:{origin.port}"


async def test_names_resolving_to_private_addresses_fail_like_names_that_do_not_resolve(
    tmp_path, origin, fresh, caplog
):
    """Status and message are those of a name without an address (or a port nobody listens on), so
    an outsider cannot map internal names; the log tells the operator."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = sock.getsockname()[1]
    resolver = resolver_for({"internal.test": ["10.0.0.7", "fd00::7"], "closed.test": ["127.0.0.1"]})
    answers = {}
    async with remote(
        tmp_path, resolver, ["127.0.0.1/32"], allowed_hosts=("*.test", "127.0.0.1"), allow_private_addresses=False
    ) as source:
        for name, port in (("internal", origin.port), ("unknown", origin.port), ("closed", closed)):
            for how, url in (
                ("direct", f"http://{name}.test:{port}/a.jpg"),
                ("redirect", origin.url("/location", to=f"http://{name}.test:{port}/a.jpg", t=next(unique))),
            ):
                with pytest.raises(ImageProxyError) as info:
                    await source.load(url)
                answers[name, how] = (info.value.status, info.value.message.replace(name, "NAME"))
    assert set(answers.values()) == {(502, "cannot connect to upstream NAME.test")}
    refused = [r.getMessage() for r in caplog.records if r.name == "imgproxy.netguard"]
    assert (
        refused == ["refused upstream internal.test: it resolves only to addresses not allowed (10.0.0.7, fd00::7)"] * 2
    )


@pytest.mark.parametrize(
    "code, error",
    [
        (404, NotFound),
        (410, NotFound),
        (500, BadGateway),
        (503, BadGateway),
        (403, BadGateway),
        (401, BadGateway),
        (400, BadGateway),
        (204, BadGateway),
    ],
)
async def test_upstream_status_mapping(tmp_path, origin, code, error):
    async with remote(tmp_path) as source:
        with pytest.raises(error, match=f"127.0.0.1 answered {code}") as info:
            await source.load(origin.url(f"/status/{code}", token="s3cret"))
    assert "s3cret" not in info.value.message and "/status" not in info.value.message


async def test_redirects_are_followed(tmp_path, origin, fresh):
    path = fresh()
    async with remote(tmp_path, max_redirects=3) as source:
        original = await source.load(origin.url("/redirect", to=path, n=3))
    assert original.data == PNG_BYTES
    assert origin.hits(path) == 1


async def test_too_many_redirects_are_502(tmp_path, origin, fresh):
    path = fresh()
    start = origin.url("/redirect", to=path, n=3)
    async with remote(tmp_path, max_redirects=2) as source:
        with pytest.raises(BadGateway, match="more than 2"):
            await source.load(start)
    assert origin.hits(start[len(origin.base) :]) == 1
    assert origin.hits(path) == 0


async def test_redirect_to_a_host_not_allowed_is_403(tmp_path, origin):
    async with remote(tmp_path) as source:
        with pytest.raises(Forbidden, match="redirect to a host not allowed: evil.example"):
            await source.load(origin.url("/redirect", to="http://evil.example/a.jpg"))


@pytest.mark.parametrize(
    "target",
    ["http://169.254.169.254/latest/meta-data/", "http://10.0.0.1/", "http://[::ffff:a9fe:a9fe]/", "http://127.0.0.2/"],
)
async def test_redirect_to_a_private_address_is_403(tmp_path, origin, target):
    # the origin itself (127.0.0.1) is trusted; nothing else private is
    async with remote(tmp_path, None, ["127.0.0.1/32"], allowed_hosts=("*",), allow_private_addresses=False) as source:
        with pytest.raises(AddressNotAllowed):
            await source.load(origin.url("/redirect", to=target))


@pytest.mark.parametrize("target", ["file:///etc/passwd", "gopher://127.0.0.1/", "http://user:pw@127.0.0.1/"])
async def test_redirect_to_a_bad_url_is_502(tmp_path, origin, target):
    async with remote(tmp_path) as source:
        with pytest.raises(BadGateway, match="invalid or non-http") as info:
            await source.load(origin.url("/redirect", to=target))
    assert "pw" not in info.value.message


@pytest.mark.parametrize(
    "location",
    [
        "http:127.0.0.1/x",  # scheme without `//`: httpx's own redirect handling fails on it
        "https:127.0.0.1/x",
        "http://xn--/",  # invalid IDNA
        "http://xn--zz.example/",
        "https://xn--/a.jpg",
        "http://" + "a" * 64 + ".example/",  # a label too long for DNS
        "http://a..example/",  # an empty label
        "http://127.0.0.1:abc/",  # bad ports
        "http://127.0.0.1:99999/",
        "http://127.0.0.1:-1/",
        "http://[::1/",
        "http://[127.0.0.1]/",
        "http://%zz/",
        "http://a\u200d.example/",
        "http:",
    ],
)
async def test_redirect_to_a_malformed_url_is_502(tmp_path, origin, location):
    async with remote(tmp_path, allowed_hosts=("*",)) as source:
        with pytest.raises(ImageProxyError) as info:
            await source.load(origin.url("/location", to=location, t=next(unique)))
    assert info.value.status == 502, info.value.message


async def test_a_last_modified_out_of_range_is_ignored(tmp_path, origin, fresh):
    path = fresh(PNG + "?last_modified=Mon, 01 Jan 99999999999 00:00:00 GMT")
    async with remote(tmp_path) as source:
        original = await source.load(origin.url(path))
    assert original.data == PNG_BYTES
    assert original.last_modified is None


async def test_a_non_ascii_validator_does_not_break_revalidation(tmp_path, origin, fresh):
    path = fresh(PNG + "?etag=%22caf%C3%A9%22")  # "café" as UTF-8 bytes
    async with remote(tmp_path, freshness=0) as source:
        first = await source.load(origin.url(path))
        second = await source.load(origin.url(path))
    assert first == second
    assert "if-none-match" not in origin.requests(path)[1].headers  # fetched again in full instead


@pytest.mark.parametrize(
    "body", [b"", b"GIF8", b'<svg xmlns="http://www.w3.org/2000/svg"/>', b"%PDF-1.7\n", b"just some text, long enough"]
)
async def test_non_images_are_415(tmp_path, origin, body):
    name = f"not-an-image-{next(unique)}.jpg"
    origin.put(name, body)
    async with remote(tmp_path) as source:
        with pytest.raises(UnsupportedMedia):
            await source.load(origin.url(f"/files/{name}"))


async def test_html_served_as_jpeg_is_415(tmp_path, origin):
    async with remote(tmp_path) as source:
        with pytest.raises(UnsupportedMedia):
            await source.load(origin.url("/html-as-jpeg"))


async def test_formats_not_allowed_are_415(tmp_path, origin, fresh):
    async with remote(tmp_path, formats=("JPEG", "MPO")) as source:
        with pytest.raises(UnsupportedMedia):
            await source.load(origin.url(fresh()))


async def test_endless_body_is_cut_off_at_max_bytes(tmp_path, origin):
    async with remote(tmp_path, max_bytes=256 * 1024) as source:
        with pytest.raises(PayloadTooLarge, match="262144"):
            await source.load(origin.url("/endless"))


@pytest.mark.parametrize("coding", ["gzip-gzip", "gzip", "deflate", "br", "zstd", "identity, gzip"])
async def test_compressed_bodies_are_refused_without_decoding(tmp_path, origin, coding):
    """/encoded bodies decode to 200 MB (gzip-gzip from 512 bytes); nothing near that is allocated."""
    origin.bomb(coding)  # built before measuring
    async with remote(tmp_path, max_bytes=1024**2) as source:
        tracemalloc.start()
        try:
            with pytest.raises(BadGateway, match="Content-Encoding") as info:
                await source.load(origin.url(f"/encoded/{coding}", t=next(unique)))
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    assert info.value.status == 502
    assert peak < 4 * 1024**2


async def test_identity_content_encoding_is_accepted(tmp_path, origin):
    async with remote(tmp_path) as source:
        original = await source.load(origin.url("/encoded/identity"))
    assert original.data == origin.bomb("identity")


async def test_declared_length_over_max_bytes_is_413(tmp_path, origin, fresh):
    async with remote(tmp_path, max_bytes=1000) as source:
        with pytest.raises(PayloadTooLarge):
            await source.load(origin.url(fresh()))


async def test_slow_headers_hit_the_read_timeout(tmp_path, origin):
    async with remote(tmp_path, read_timeout=0.3) as source:
        with pytest.raises(GatewayTimeout, match="127.0.0.1"):
            await source.load(origin.url("/slow", seconds=5))


async def test_trickling_body_hits_the_total_deadline(tmp_path, origin):
    async with remote(tmp_path, read_timeout=10, timeout=0.5) as source:
        with pytest.raises(GatewayTimeout, match="0.5 s"):
            await source.load(origin.url("/stall"))


async def test_connection_refused_is_502(tmp_path):
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    async with remote(tmp_path) as source:
        with pytest.raises(BadGateway, match="cannot connect to upstream 127.0.0.1"):
            await source.load(f"http://127.0.0.1:{port}/a.jpg")


async def test_fresh_originals_are_served_from_the_cache(tmp_path, origin, fresh):
    path = fresh()
    async with remote(tmp_path) as source:
        first = await source.load(origin.url(path))
        second = await source.load(origin.url(path))
    async with remote(tmp_path) as restarted:  # another worker, or after a restart
        third = await restarted.load(origin.url(path))
    assert origin.hits(path) == 1
    assert first == second == third


async def test_stale_originals_are_revalidated(tmp_path, origin, fresh):
    path = fresh()
    async with remote(tmp_path, freshness=0) as source:
        first = await source.load(origin.url(path))
        second = await source.load(origin.url(path))
    assert origin.statuses(path) == [200, 304]
    fetch, revalidation = origin.requests(path)
    assert "if-none-match" not in fetch.headers
    assert revalidation.headers["if-none-match"] == fetch.response_headers["etag"]
    assert revalidation.headers["if-modified-since"] == fetch.response_headers["last-modified"]
    assert second == first


async def test_a_changed_upstream_gives_a_new_version(tmp_path, origin):
    name = f"changing-{next(unique)}.img"
    origin.put(name, PNG_BYTES)
    async with remote(tmp_path, freshness=0) as source:
        before = await source.load(origin.url(f"/files/{name}"))
        origin.put(name, GIF_BYTES)
        after = await source.load(origin.url(f"/files/{name}"))
    assert origin.statuses(f"/files/{name}") == [200, 200]
    assert after.data == GIF_BYTES
    assert after.version != before.version


async def test_upstream_max_age_overrides_freshness(tmp_path, origin, fresh):
    cached = fresh(PNG + "?cache_control=max-age=3600")
    revalidated = fresh(PNG + "?cache_control=no-cache")
    async with remote(tmp_path, freshness=0) as source:
        for _ in range(2):
            await source.load(origin.url(cached))
    async with remote(tmp_path, freshness=3600) as source:
        for _ in range(2):
            await source.load(origin.url(revalidated))
    assert origin.statuses(cached) == [200]
    assert origin.statuses(revalidated) == [200, 304]


def test_freshness_directives():
    assert freshness(httpx.Headers({"cache-control": "public, max-age=60"}), 5) == 60
    assert freshness(httpx.Headers({"cache-control": "max-age=60, s-maxage=600"}), 5) == 600
    assert freshness(httpx.Headers({"cache-control": "no-store"}), 5) == 0
    assert freshness(httpx.Headers({"cache-control": "max-age=abc"}), 5) == 5
    assert freshness(httpx.Headers({}), 5) == 5
    assert freshness(httpx.Headers([(b"cache-control", "max-age=²".encode())]), 5) == 5  # a digit to isdigit() only


async def test_concurrent_loads_share_one_fetch(tmp_path, origin, fresh):
    path = fresh()
    async with remote(tmp_path) as source:
        originals = await asyncio.gather(*(source.load(origin.url(path)) for _ in range(10)))
    assert origin.hits(path) == 1
    assert all(o == originals[0] for o in originals)


async def test_a_cancelled_waiter_does_not_cancel_the_shared_fetch(tmp_path, origin):
    url = origin.url("/slow", seconds=0.3, t=next(unique))
    async with remote(tmp_path) as source:
        gone = asyncio.create_task(source.load(url))
        staying = asyncio.create_task(source.load(url))
        await asyncio.sleep(0)  # both have joined the same fetch
        gone.cancel()
        original = await staying
    assert gone.cancelled()
    assert origin.hits(url[len(origin.base) :]) == 1
    assert original.data == PNG_BYTES


async def test_fetches_past_max_fetches_and_queue_are_503(tmp_path, origin):
    gate = f"burst-{next(unique)}"
    paths = [f"/gated/{gate}?t={i}" for i in range(5)]
    async with remote(tmp_path, max_fetches=2, fetch_queue_limit=1, read_timeout=20, timeout=30) as source:
        loads = [asyncio.create_task(source.load(origin.url(path))) for path in paths]
        try:
            async with asyncio.timeout(10):  # two fetch, one waits, two are turned away at once
                while sum(map(origin.hits, paths)) < 2 or sum(t.done() for t in loads) < 2:
                    await asyncio.sleep(0.01)
            reached = sum(map(origin.hits, paths))
        finally:
            origin.open_gate(gate)
        results = await asyncio.gather(*loads, return_exceptions=True)
    assert reached == 2  # checked before the fetch: the shed ones never reached the origin
    shed = [r for r in results if isinstance(r, Overloaded)]
    assert len(shed) == 2 and all(r.status == 503 and r.headers["Retry-After"] == "2" for r in shed)
    assert sum(not isinstance(r, Exception) for r in results) == 3
    assert sum(map(origin.hits, paths)) == 3


async def test_waiting_for_a_fetch_slot_ends_at_the_deadline():
    slots = FetchSlots(1, 1)
    loop = asyncio.get_running_loop()
    async with slots.slot(loop.time() + 30):
        with pytest.raises(Overloaded, match="no upstream fetch slot"):
            async with slots.slot(loop.time() + 0.1):
                pass
        assert slots.waiting == 0
    async with slots.slot(loop.time() + 30):  # the slot came back
        assert slots.running == 1


async def test_no_cookies_go_upstream(tmp_path, origin, fresh):
    path = fresh(PNG + "?cookie=1")
    async with remote(tmp_path, freshness=0) as source:
        await source.load(origin.url(path))
        await source.load(origin.url(path))
    first, second = origin.requests(path)
    assert "set-cookie" in first.response_headers
    assert "cookie" not in second.headers
    assert "authorization" not in first.headers and "authorization" not in second.headers
