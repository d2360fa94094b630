"""Remote originals through /picture: the real server fetching from a real origin on 127.0.0.1."""

import io
import threading

import httpx
import pytest
from PIL import Image

from tests.origin import Origin


@pytest.fixture(scope="module")
def origin():
    server = Origin().start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def proxy(tmp_path_factory):
    from .conftest import LiveServer

    server = LiveServer(
        tmp_path_factory.mktemp("remote"),
        {
            "sources": {
                "remote": {
                    "allowed_hosts": ["127.0.0.1"],
                    "allow_private_addresses": True,
                    "timeout": 3.0,
                    "read_timeout": 1.5,
                    "max_bytes": "4MB",
                    "freshness": 300,
                }
            }
        },
    )
    server.start()
    yield server
    server.stop()


def picture(origin_url: str) -> str:
    return "/picture/" + origin_url


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
    ],
)
def test_upstream_failures_map_to_clear_statuses(origin, proxy, path, status):
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
    server = live_server({"sources": {"remote": {"allowed_hosts": ["127.0.0.1", "localhost"]}}})
    before = origin.hits("/photos/tree.webp")
    with server.client() as client:
        for host in ("127.0.0.1", "localhost"):
            url = origin.url("/photos/tree.webp").replace("127.0.0.1", host)
            r = client.get(picture(url), params={"w": 50})
            assert r.status_code == 403, r.text
    assert origin.hits("/photos/tree.webp") == before  # nothing reached the origin


def test_remote_sources_off_by_default(corpus_server, origin):
    with corpus_server.client() as client:
        r = client.get(picture(origin.url("/photos/tree.webp")), params={"w": 50})
        assert r.status_code == 403 and "remote sources are off" in r.text
