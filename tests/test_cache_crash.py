"""SPEC §6: kill -9 mid-write never leaves an entry that is served; a corrupt cache is rebuilt."""

import hashlib
import io
import threading
import time

import diskcache
import httpx
import pytest
from PIL import Image

from imgproxy.cache import PROBE_KEY, ResultMeta

from .conftest import LiveServer


def _hammer(server: LiveServer, first_width: int, stop: threading.Event) -> None:
    width = first_width
    while not stop.is_set():
        try:
            # a slow render (a busy machine) is waited for; only the kill ends the connection
            httpx.get(f"{server.url}/picture/photos/large_9mp_harbour.jpg?w={width}&encoding=png", timeout=120)
        except httpx.TransportError:
            return  # the server was killed
        width += 7


@pytest.mark.timeout(600)  # four rounds of big renders; on a busy machine each takes a while
def test_kill_9_under_load_leaves_only_whole_entries(tmp_path):
    settings = {"render": {"workers": 2}}
    for round_ in range(4):
        server = LiveServer(tmp_path / "server", settings)
        server.start()
        stop = threading.Event()
        threads = [
            threading.Thread(target=_hammer, args=(server, 300 + 1000 * round_ + 100 * i, stop)) for i in range(4)
        ]
        try:
            for t in threads:
                t.start()
            deadline = time.monotonic() + 120
            while httpx.get(server.url + "/health", timeout=30).json()["renders"] < 3 + round_:
                assert time.monotonic() < deadline, "renders did not progress"
                assert any(t.is_alive() for t in threads), "every client gave up"
                time.sleep(0.02)
            server.process.kill()  # SIGKILL while renders are being written
        finally:
            stop.set()
            server.stop()  # ends the clients' connections too
            for t in threads:
                t.join(30)

    cache = diskcache.Cache(str(tmp_path / "server" / "cache"))
    keys = [k for k in cache.iterkeys() if k != PROBE_KEY]
    assert len(keys) >= 4
    for key in keys:
        body, tag = cache.get(key, tag=True)
        meta = ResultMeta.from_tag(tag)
        assert len(body) == meta.size
        assert '"' + hashlib.sha256(body).hexdigest()[:32] + '"' == meta.etag
        assert Image.open(io.BytesIO(body)).size == (meta.width, meta.height)
    cache.close()


def test_corrupt_cache_database_is_set_aside_and_rebuilt(live_server, tmp_path):
    cache_dir = tmp_path / "cache"
    cache_dir.mkdir()
    (cache_dir / "cache.db").write_bytes(b"this is not a database" * 1000)
    server = live_server({"cache": {"dir": str(cache_dir)}})
    with server.client() as client:
        assert client.get("/picture/photos/tree.webp?w=64").headers["x-cache"] == "MISS"
        assert client.get("/picture/photos/tree.webp?w=64").headers["x-cache"] == "HIT"
        assert client.get("/health").json()["status"] == "ok"
    aside = [p for p in tmp_path.iterdir() if p.name.startswith("cache.corrupt-")]
    assert len(aside) == 1 and (aside[0] / "cache.db").read_bytes().startswith(b"this is not")
