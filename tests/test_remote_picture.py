"""Remote originals through /picture: the real server fetching from a real origin on 127.0.0.1."""

import io
import threading
import time

import httpx
import pytest
from PIL import Image

REMOTE = {
    "allowed_hosts": ["127.0.0.1"],
    "allow_private_addresses": True,
    "timeout": 3.0,
    "read_timeout": 1.5,
    "max_bytes": "4MB",
    "freshness": 300,
}


@pytest.fixture(scope="module")
def proxy(tmp_path_factory):
    from .conftest import LiveServer

    server = LiveServer(
        tmp_path_factory.mktemp("remote"),
        {"log": {"level": "info"}, "sources": {"remote": REMOTE}},
    )
    server.start()
    yield server
    server.stop()


def picture(origin_url: str) -> str:
    """The remote URL's own query goes into the path escaped, as the README says."""
    return "/picture/" + origin_url.replace("?", "%3F").replace("&", "%26")


def test_ten_widths_fetch_the_original_once(origin, proxy):
    url = origin.url("/photos/tree.webp")
    with proxy.client() as client:
        for width in range(100, 110):
            r = client.get(picture(url), params={"scalex": width, "encoding": "jpeg"})
            assert r.status_code == 200, r.text
            assert Image.open(io.BytesIO(r.content)).size[0] == width
    assert origin.hits("/photos/tree.webp") == 1


def test_concurrent_requests_share_one_fetch(origin, proxy):
    url = origin.url("/photos/progressive_dalmatian.jpg")
    codes = []

    def fetch(width):
        codes.append(httpx.get(proxy.url + picture(url), params={"w": width}, timeout=30).status_code)

    threads = [threading.Thread(target=fetch, args=(w,)) for w in range(200, 208)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert codes == [200] * 8
    assert origin.hits("/photos/progressive_dalmatian.jpg") == 1


def test_collapsed_scheme_slash_is_accepted(origin, proxy):
    url = origin.url("/photos/alpha_dice.png").replace("http://", "http:/")
    with proxy.client() as client:
        assert client.get(picture(url), params={"w": 50}).status_code == 200


def test_client_credentials_are_not_forwarded(origin, proxy):
    url = origin.url("/photos/grayscale_portrait.jpg")
    with proxy.client() as client:
        r = client.get(
            picture(url), params={"w": 60}, headers={"Cookie": "session=secret", "Authorization": "Bearer secret"}
        )
        assert r.status_code == 200
    for hit in origin.requests("/photos/grayscale_portrait.jpg"):
        assert "cookie" not in {k.lower() for k in hit.headers}
        assert "authorization" not in {k.lower() for k in hit.headers}


@pytest.mark.parametrize(
    "path, status",
    [
        ("/status/404", 404),
        ("/status/500", 502),
        ("/status/403", 502),
        ("/html-as-jpeg", 415),
        ("/endless", 413),
        ("/slow?seconds=5", 504),
        ("/encoded/gzip-gzip", 502),
        ("/location?to=http:127.0.0.1/x", 502),
        ("/location?to=http://xn--/", 502),
    ],
)
def test_upstream_failures_map_to_clear_statuses(origin, proxy, path, status):
    if path.startswith("/encoded/"):
        origin.bomb(path.removeprefix("/encoded/"))  # built here: it takes longer than read_timeout
    with proxy.client() as client:
        r = client.get(picture(origin.url(path)), params={"w": 50})
        assert r.status_code == status, r.text
        assert r.headers["cache-control"] in ("no-store", "public, max-age=60")
        assert "Traceback" not in r.text


def test_hosts_off_the_list_are_403(proxy):
    with proxy.client() as client:
        for url in (
            "http://example.com/a.jpg",
            "http://127.0.0.1.example.com/a.jpg",
            "http://127.0.0.1@example.com/a.jpg",
        ):
            r = client.get(picture(url), params={"w": 50})
            assert r.status_code in (400, 403), (url, r.status_code)


def test_private_addresses_refused_unless_allowed(origin, live_server):
    server = live_server({"sources": {"remote": {"allowed_hosts": ["127.0.0.1", "localhost", "*.invalid"]}}})
    before = origin.hits("/photos/tree.webp")
    with server.client() as client:
        literal = client.get(picture(origin.url("/photos/tree.webp")), params={"w": 50})
        name = client.get(picture(origin.url("/photos/tree.webp").replace("127.0.0.1", "localhost")), params={"w": 50})
    assert origin.hits("/photos/tree.webp") == before  # nothing reached the origin
    # the client wrote the address: saying it is not allowed tells nothing new
    assert (literal.status_code, literal.text) == (
        403,
        "address not allowed: 127.0.0.1 is a private or reserved address\n",
    )
    # a name's DNS answer must not show: the same answer as for a name that does not resolve
    assert (name.status_code, name.text) == (502, "cannot connect to upstream localhost\n")
    assert "refused upstream localhost: it resolves only to addresses not allowed" in server.log_path.read_text()


def test_fetches_past_the_limit_are_503_before_reaching_upstream(origin, live_server):
    limits = {"max_fetches": 1, "fetch_queue_limit": 0, "read_timeout": 20.0, "timeout": 30.0}  # the gate holds reads
    server = live_server({"sources": {"remote": {**REMOTE, **limits}}})
    first, second = origin.url("/gated/limit", size=2048, t=1), origin.url("/gated/limit", size=2048, t=2)
    answers = []
    holder = threading.Thread(
        target=lambda: answers.append(httpx.get(server.url + picture(first), params={"w": 50}, timeout=30))
    )
    holder.start()
    try:
        deadline = time.monotonic() + 20
        while origin.hits(first[len(origin.base) :]) == 0 and time.monotonic() < deadline:
            time.sleep(0.01)  # the first fetch has reached the origin and holds the only slot
        with server.client() as client:
            shed = client.get(picture(second), params={"w": 50})
    finally:
        origin.open_gate("limit")
        holder.join(30)
    assert (shed.status_code, shed.headers.get("retry-after")) == (503, "2"), shed.text
    assert "too many upstream fetches" in shed.text
    assert origin.hits(second[len(origin.base) :]) == 0
    assert answers[0].status_code == 415  # the held fetch went on (zeros after a JPEG head)


def test_upstream_requests_add_no_log_lines(origin, proxy):
    with proxy.client() as client:
        assert client.get(picture(origin.url("/photos/tree.webp", t="log")), params={"w": 40}).status_code == 200
    lines = proxy.log_path.read_text().splitlines()
    assert any("/photos/tree.webp%3Ft=log" in line for line in lines)  # the access line
    assert [line for line in lines if "httpx" in line or "httpcore" in line] == []


def test_remote_sources_off_by_default(corpus_server, origin):
    with corpus_server.client() as client:
        r = client.get(picture(origin.url("/photos/tree.webp")), params={"w": 50})
        assert r.status_code == 403 and "remote sources are off" in r.text
