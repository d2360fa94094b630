"""[storage] backend = "s3" against a real SeaweedFS: reads, versions, faults, uploads (SPEC §10).

The store's own request counter (SeaweedFS metrics) proves what made no store request.
"""

from __future__ import annotations

import io
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import diskcache
import pytest
from PIL import Image

from imgproxy.config import ConfigError, load_config

from .conftest import CORPUS, to_toml
from .s3_server import SeaweedFS, seaweed  # noqa: F401 (the fixture)
from .test_uploads import post_file, wait_for_job

PREFIX = "media/"
PHOTO = "photos/grayscale_portrait.jpg"  # 800x533
OTHER = "photos/progressive_dalmatian.jpg"  # 960x640: a different aspect, so every answer says which one it is
WIDTHS = (40, 150, 333, 540, 800, 2000)  # 2000: larger than the source, answered at 800


def s3_settings(store: SeaweedFS, freshness: float = 3600, **extra) -> dict:
    storage = store.settings
    storage["s3"] |= {"prefix": PREFIX, "freshness": freshness, "timeout": 5, "connect_timeout": 1}
    return {"storage": storage, **extra}


def size_of(body: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(body)) as image:
        image.load()  # every byte decodes
        return image.size


def wait_for(condition, timeout: float = 60, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, f"{what} not reached within {timeout} s"
        time.sleep(0.05)


@pytest.fixture
def photo_key(seaweed, request) -> str:  # noqa: F811
    """A fresh object per test (its own key), holding PHOTO."""
    key = f"t/{request.node.name.split('[')[0]}-{time.monotonic_ns()}.jpg"
    seaweed.put(PREFIX + key, (CORPUS / PHOTO).read_bytes())
    return key


def test_s3_originals_render_like_local_ones_at_every_size(seaweed, photo_key, live_server):  # noqa: F811
    s3 = live_server(s3_settings(seaweed), name="s3")
    local = live_server({}, name="local")
    with s3.client() as c3, local.client() as cl:
        for width in WIDTHS:
            from_s3 = c3.get(f"/picture/{photo_key}?width={width}")
            from_disk = cl.get(f"/picture/{PHOTO}?width={width}")
            assert from_s3.status_code == 200, from_s3.text
            assert size_of(from_s3.content) == (min(width, 800), round(533 * min(width, 800) / 800))
            assert from_s3.content == from_disk.content  # same bytes, same options: the same answer
            assert from_s3.headers["x-cache"] == "MISS"
            assert c3.get(f"/picture/{photo_key}?width={width}").headers["x-cache"] == "HIT"


def test_hits_and_new_sizes_inside_freshness_make_no_store_request(seaweed, photo_key, live_server):  # noqa: F811
    server = live_server(s3_settings(seaweed, freshness=3600))
    with server.client() as client:
        before = seaweed.requests()
        assert client.get(f"/picture/{photo_key}?width=300").status_code == 200
        first = seaweed.requests() - before
        assert first == 1  # one GET: version and bytes together
        before = seaweed.requests()
        for _ in range(20):
            hit = client.get(f"/picture/{photo_key}?width=300")
            assert hit.status_code == 200 and hit.headers["x-cache"] == "HIT"
        for width in (301, 302, 640):  # misses: rendered from the kept original
            assert client.get(f"/picture/{photo_key}?width={width}").headers["x-cache"] == "MISS"
        assert seaweed.requests() - before == 0


def test_overwritten_object_is_served_new_after_freshness_never_a_mix(seaweed, photo_key, live_server):  # noqa: F811
    server = live_server(s3_settings(seaweed, freshness=1))
    url = f"/picture/{photo_key}?width=480"
    with server.client() as client:
        old = client.get(url)
        assert size_of(old.content) == (480, 320)
        seaweed.put(PREFIX + photo_key, (CORPUS / OTHER).read_bytes())
        answers = []

        def new_one_served() -> bool:
            response = client.get(url)
            assert response.status_code == 200
            answers.append(response)
            return size_of(response.content) == (480, 320) and response.content != old.content

        wait_for(new_one_served, timeout=30, what="the overwritten object")
        new = answers[-1]
        assert new.headers["etag"] != old.headers["etag"]
        for response in answers:  # before the switch exactly the old answer, then the new one
            assert response.content in (old.content, new.content)
            assert response.headers["etag"] == (old if response.content == old.content else new).headers["etag"]
        assert [r.content == new.content for r in answers] == sorted(r.content == new.content for r in answers)
        for _ in range(5):  # and it stays new
            assert client.get(url).content == new.content


def test_missing_object_is_404(seaweed, live_server):  # noqa: F811
    server = live_server(s3_settings(seaweed))
    with server.client() as client:
        response = client.get("/picture/no/such/object.jpg?width=100")
        assert response.status_code == 404
        assert "not found" in response.text


BAD_KEYS = [
    "a/../b.jpg",
    "%2e%2e/b.jpg",
    "./b.jpg",
    "a//b.jpg",
    "a%5Cb.jpg",  # backslash
    "a%00b.jpg",  # NUL
    "a%01b.jpg",  # a control character: no valid object key
    "%2Fetc/passwd",  # absolute once decoded
    "k" * 1025 + ".jpg",
]


def raw_status(port: int, target: str) -> int:
    """The status of a GET sent byte for byte (an HTTP client would resolve `..` itself)."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
        head = sock.makefile("rb").readline()
    return int(head.split()[1])


def test_bad_keys_are_400_before_any_store_request(seaweed, live_server):  # noqa: F811
    server = live_server(s3_settings(seaweed))
    before = seaweed.requests()
    for key in BAD_KEYS:
        assert raw_status(server.port, f"/picture/{key}?width=100") == 400, key
    assert seaweed.requests() - before == 0


def test_upload_goes_to_the_bucket_and_renders_from_it(seaweed, live_server):  # noqa: F811
    server = live_server(s3_settings(seaweed))
    with server.client() as client:
        response = post_file(client, (CORPUS / PHOTO).read_bytes(), filename="My Photo.jpg")
        assert response.status_code == 201, response.text
        body = response.json()
        assert body["path"].startswith("uploads/") and body["path"].endswith("/My-Photo.jpg")
        assert PREFIX + body["path"] in seaweed.keys(PREFIX + "uploads/")
        before = seaweed.requests()
        assert wait_for_job(client, body["job"]["status_url"])["status"] == "done"
        for url in body["urls"].values():  # pre-rendered from the original kept at upload
            assert client.get(url).headers["x-cache"] == "HIT"
        assert seaweed.requests() - before == 0
        picture = client.get(f"/picture/{body['path']}?width=200")
        assert picture.status_code == 200 and size_of(picture.content) == (200, 133)


def test_fetched_originals_stay_within_the_originals_cache_limit(seaweed, live_server, tmp_path):  # noqa: F811
    limit = 400_000  # two or three of the photo
    originals = tmp_path / "originals"
    server = live_server(
        s3_settings(seaweed, sources={"remote": {"cache_dir": str(originals), "cache_size_limit": limit}})
    )
    data = (CORPUS / PHOTO).read_bytes()
    with server.client() as client:
        for i in range(8):
            seaweed.put(f"{PREFIX}limit/{i}.jpg", data)
            assert client.get(f"/picture/limit/{i}.jpg?width=64").status_code == 200
    with diskcache.Cache(str(originals)) as cache:
        assert 0 < cache.volume() <= limit + len(data) + 100_000  # culled as it goes: at most one over


def test_refused_or_cut_off_uploads_leave_no_object(seaweed, live_server):  # noqa: F811
    server = live_server(s3_settings(seaweed))
    before = seaweed.keys(PREFIX + "uploads/")
    photo = (CORPUS / PHOTO).read_bytes()
    with server.client() as client:
        assert post_file(client, b"not an image at all").status_code == 415
        assert post_file(client, photo[: len(photo) // 2]).status_code == 415  # truncated JPEG
        body = b'--b\r\nContent-Disposition: form-data; name="image"; filename="a.jpg"\r\n\r\n' + photo
        headers = {"Content-Type": "multipart/form-data; boundary=b"}
        assert client.post("/upload", content=body, headers=headers).status_code == 400  # no closing boundary
        with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:  # the client goes away
            head = "POST /upload HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
            sock.sendall(f"{head}Content-Length: {len(body) + 20}\r\n\r\n".encode() + body[: len(body) // 2])
        wait_for(
            lambda: "client disconnected during the upload" in server.log_text(), what="the cut-off upload handled"
        )
    assert seaweed.keys(PREFIX + "uploads/") == before


def test_cli_warm_cache_clear_and_render_use_the_bucket(seaweed, photo_key, live_server):  # noqa: F811
    server = live_server(s3_settings(seaweed))
    cli = [sys.executable, "-m", "imgproxy"]
    config = ["--config", str(server.config_path)]
    warm = subprocess.run([*cli, "warm", photo_key, "--preset", "small", *config], capture_output=True, timeout=120)
    assert warm.returncode == 0, warm.stderr.decode()
    with server.client() as client:
        assert client.get(f"/picture/{photo_key}?preset=small").headers["x-cache"] == "HIT"
        cleared = subprocess.run(
            [*cli, "cache", "clear", "--source", photo_key, *config], capture_output=True, timeout=60
        )
        assert cleared.returncode == 0, cleared.stderr.decode()
        assert client.get(f"/picture/{photo_key}?preset=small").headers["x-cache"] == "MISS"
    bad = subprocess.run([*cli, "cache", "clear", "--source", "../x.jpg", *config], capture_output=True, timeout=60)
    assert bad.returncode != 0 and b"bad source path" in bad.stderr
    out = server.workdir / "out.webp"
    render = [*cli, "render", photo_key, "--width", "100", "-o", str(out), *config]
    rendered = subprocess.run(render, capture_output=True, timeout=60)
    assert rendered.returncode == 0, rendered.stderr.decode()
    assert size_of(out.read_bytes()) == (100, 67)


def test_store_away_misses_503_hits_200_then_back_without_restart(seaweed, photo_key, live_server):  # noqa: F811
    server = live_server(s3_settings(seaweed, freshness=0.5))
    cached = f"/picture/{photo_key}?width=256"
    with server.client(timeout=60) as client:
        assert client.get(cached).status_code == 200
        assert client.get("/health").json()["checks"]["storage"] is True
        uploads = seaweed.keys(PREFIX + "uploads/")
        stopped_at = time.monotonic()
        seaweed.stop()
        try:
            wait_for(lambda: time.monotonic() > stopped_at + 1, what="freshness passing")  # the version is stale now
            hit = client.get(cached)
            assert hit.status_code == 200 and hit.headers["x-cache"] == "HIT"
            for width in (257, 258):
                miss = client.get(f"/picture/{photo_key}?width={width}")
                assert miss.status_code == 503, miss.text
                assert int(miss.headers["retry-after"]) > 0
            unknown = client.get("/picture/never/seen.jpg?width=100")
            assert unknown.status_code == 503 and "retry-after" in unknown.headers
            upload = post_file(client, (CORPUS / PHOTO).read_bytes())
            assert upload.status_code == 503 and "retry-after" in upload.headers
            health = client.get("/health")
            assert health.status_code == 200 and health.json()["checks"]["storage"] is False
            assert health.json()["status"] == "degraded"
            metrics = client.get("/metrics").text
            assert 'imgproxy_store_errors_total{kind="unreachable"}' in metrics
            assert 'imgproxy_store_request_duration_seconds_count{op="head"}' in metrics
            assert 'imgproxy_source_bytes_total{kind="s3"}' in metrics
        finally:
            seaweed.start()
        back = wait_for(lambda: client.get(f"/picture/{photo_key}?width=257").status_code == 200, what="200 again")
        assert back
        assert client.get("/health").json()["checks"]["storage"] is True
        assert seaweed.keys(PREFIX + "uploads/") == uploads  # the refused upload left nothing


def all_threads_stopped(pid: int) -> bool:
    tasks = Path(f"/proc/{pid}/task")
    return all((task / "stat").read_text().rpartition(")")[2].split()[0] == "T" for task in tasks.iterdir())


def test_store_that_does_not_answer_is_503_within_the_timeout(seaweed, photo_key, live_server):  # noqa: F811
    settings = s3_settings(seaweed, freshness=0)
    settings["storage"]["s3"]["timeout"] = 1
    server = live_server(settings)
    with server.client(timeout=30) as client:
        assert client.get(f"/picture/{photo_key}?width=90").status_code == 200
        os.kill(seaweed.process.pid, signal.SIGSTOP)  # connections are accepted, nothing answers
        try:
            wait_for(lambda: all_threads_stopped(seaweed.process.pid), what="SeaweedFS stopped")
            hit = client.get(f"/picture/{photo_key}?width=90")  # its revalidation times out: served as known
            assert hit.status_code == 200 and hit.headers["x-cache"] == "HIT"
            miss = client.get(f"/picture/{photo_key}?width=91")
            assert miss.status_code == 503 and int(miss.headers["retry-after"]) > 0
        finally:
            os.kill(seaweed.process.pid, signal.SIGCONT)
        assert 'imgproxy_store_errors_total{kind="timeout"}' in client.get("/metrics").text


def test_s3_backend_needs_a_bucket(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('[storage]\nbackend = "s3"\n')
    with pytest.raises(ConfigError, match="storage.s3.bucket"):
        load_config(path, environ={})
    with pytest.raises(ConfigError, match="storage.backend"):
        load_config(None, environ={"IMGPROXY_STORAGE__BACKEND": "ftp"})
    with pytest.raises(ConfigError, match="storage.s3.prefix"):
        load_config(None, environ={"IMGPROXY_STORAGE__S3__PREFIX": "../up"})


def test_check_config_with_s3_needs_no_local_root(tmp_path):
    settings: dict[str, Any] = {
        "sources": {"local": {"root": str(tmp_path / "missing"), "generate_demo": False}},
        "cache": {"dir": str(tmp_path / "cache")},
        "storage": {"backend": "s3", "s3": {"bucket": "b", "endpoint": "http://127.0.0.1:9"}},
    }
    for backend, code in (("s3", 0), ("local", 2)):
        settings["storage"]["backend"] = backend
        path = tmp_path / f"{backend}.toml"
        path.write_text(to_toml(settings))
        run = [sys.executable, "-m", "imgproxy", "check-config", "--config", str(path)]
        checked = subprocess.run(run, capture_output=True, text=True, timeout=60)
        assert checked.returncode == code, checked.stderr
        assert ("sources.local.root" in checked.stderr) == (backend == "local")
