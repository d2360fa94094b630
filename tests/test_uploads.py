"""POST /upload and GET /jobs/<id>: real multipart uploads to the running server, jobs to the end."""

import io
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from PIL import Image

from imgproxy.uploads import safe_name

from .conftest import CORPUS, LiveServer, manifest_rows

ROWS = {r["file"]: r for r in manifest_rows()}
PHOTOS = [r for r in ROWS.values() if r["file"].startswith("photos/") and r["expect"] == "render"]


def smallest_per_format() -> list[str]:
    smallest: dict[str, dict] = {}
    for row in PHOTOS:
        if row["format"] not in smallest or int(row["bytes"]) < int(smallest[row["format"]]["bytes"]):
            smallest[row["format"]] = row
    return sorted(r["file"] for r in smallest.values())


# every distinct format, plus EXIF orientation, alpha and CMYK
HAPPY = smallest_per_format() + ["photos/orientation/Landscape_6.jpg", "photos/alpha_dice.png", "photos/cmyk_park.jpg"]
BOUNDARY = "imgproxy-test-boundary"
PATH_SHAPE = re.compile(r"uploads/[0-9a-f]{32}/[A-Za-z0-9_][A-Za-z0-9._-]*\.[a-z]+")
TOKEN = "s3cret-token"


def form(*parts: tuple[str, str | None, bytes]) -> tuple[bytes, dict[str, str]]:
    """A multipart body written by hand, so field names and file names go out byte for byte."""
    body = b""
    for name, filename, data in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename is not None else "")
        body += f"--{BOUNDARY}\r\nContent-Disposition: {disposition}\r\nContent-Type: application/octet-stream\r\n\r\n".encode()
        body += data + b"\r\n"
    body += f"--{BOUNDARY}--\r\n".encode()
    return body, {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}


def post_file(
    client: httpx.Client, data: bytes, filename: str | None = "a.jpg", headers: dict | None = None
) -> httpx.Response:
    body, form_headers = form(("image", filename, data))
    return client.post("/upload", content=body, headers={**form_headers, **(headers or {})})


def wait_for_job(client: httpx.Client, status_url: str, timeout: float = 240) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        job = client.get(status_url).json()
        if job["status"] in ("done", "failed"):
            return job
        assert time.monotonic() < deadline, f"job not finished within {timeout} s: {job}"
        time.sleep(0.05)


def stored_files(root: Path) -> list[Path]:
    return sorted(p.relative_to(root) for p in root.rglob("*") if p.is_file())


def oriented(row: dict) -> tuple[int, int]:
    w, h = int(row["width"]), int(row["height"])
    return (h, w) if "orientation/Landscape_" in row["file"] and row["file"][-5] in "5678" else (w, h)


def upload_server(directory: Path, uploads: dict | None = None, extra: dict | None = None) -> LiveServer:
    root = directory / "images"
    root.mkdir(parents=True, exist_ok=True)
    settings = {"sources": {"local": {"root": str(root)}}, "uploads": uploads or {}, **(extra or {})}
    return LiveServer(directory, settings)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    server = upload_server(tmp_path_factory.mktemp("uploads")).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def strict_server(tmp_path_factory):
    """A token and a 1 MB limit."""
    server = upload_server(tmp_path_factory.mktemp("strict"), {"token": TOKEN, "max_bytes": "1MB"}).start()
    yield server
    server.stop()


# --- happy path ------------------------------------------------------------------------------


@pytest.mark.timeout(300)  # ten renders of an animation take a minute on a busy machine
@pytest.mark.parametrize("name", HAPPY)
def test_upload_renders_every_preset_into_the_cache(server, name):
    row = ROWS[name]
    data = (CORPUS / name).read_bytes()
    with server.client() as client:
        # a standard client's multipart (httpx files=), not the hand-written one
        r = client.post("/upload", files={"image": (Path(name).name, data, "application/octet-stream")})
        assert r.status_code == 201, r.text
        assert r.headers["cache-control"] == "no-store"
        body = r.json()
        assert PATH_SHAPE.fullmatch(body["path"]), body["path"]
        assert body["path"].split("/")[1] == body["id"]
        assert (server.root / body["path"]).read_bytes() == data
        assert (body["width"], body["height"]) == oriented(row)
        assert body["format"] == row["format"].lower()
        assert body["bytes"] == len(data)
        assert set(body["urls"]) == {"thumbnail", "small", "medium", "large", "xl"}
        assert all(url.startswith(f"/picture/{body['path']}?") for url in body["urls"].values())
        assert body["srcset"].count(" ") >= 1 and body["srcset"].endswith("w")
        assert body["picture_html"].startswith("<picture>") and body["picture_html"].endswith("</picture>")
        assert r.headers["location"] == body["urls"]["xl"].split("?")[0]
        assert body["job"] == {"id": body["id"], "status_url": f"/jobs/{body['id']}", "status": "pending", "total": 10}

        job = wait_for_job(client, body["job"]["status_url"])
        assert job["status"] == "done" and job["error"] is None, job
        assert job["done"] == job["total"] == 10
        for url in body["urls"].values():
            for variant in (url, url + "&encoding=webp"):
                got = client.get(variant)
                assert got.status_code == 200 and got.headers["x-cache"] == "HIT", (variant, got.status_code)
        thumbnail = Image.open(io.BytesIO(client.get(body["urls"]["thumbnail"]).content))
        assert thumbnail.size == (150, 150) or max(thumbnail.size) < 150  # small sources are not enlarged


def test_same_bytes_get_different_ids(server):
    data = (CORPUS / "photos/rgb16_gradient.png").read_bytes()
    with server.client() as client:
        first, second = (post_file(client, data, "same.png").json() for _ in range(2))
    assert first["id"] != second["id"] and first["path"] != second["path"]
    assert (server.root / first["path"]).read_bytes() == (server.root / second["path"]).read_bytes() == data


# --- refused uploads -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, status",
    [
        ("bad/text_1024_ones.jpg", 415),
        ("bad/check.svg", 415),
        ("bad/zero_bb.eps", 415),
        ("bad/BlueSquare_truncated.jpg", 415),  # a valid header over truncated data
        ("bad/truncated_image.png", 415),
        ("bad/giant-image.jpg", 413),  # declares more pixels than max_source_pixels
        ("bad/decompression_bomb.gif", 413),
    ],
)
def test_bad_images_are_refused_and_not_stored(server, name, status):
    before = stored_files(server.root)
    with server.client() as client:
        r = post_file(client, (CORPUS / name).read_bytes(), Path(name).name, {"Accept": "application/json"})
    assert r.status_code == status, r.text
    assert r.headers["cache-control"] == "no-store"
    assert r.json()["error"] and "Traceback" not in r.text
    assert stored_files(server.root) == before


def test_form_shape_mistakes_are_400(server):
    data = (CORPUS / "photos/rgb16_gradient.png").read_bytes()
    before = stored_files(server.root)
    with server.client() as client:
        for parts in (
            [("image", "a.png", data), ("image", "b.png", data)],  # two files
            [("image", "a.png", data), ("title", None, b"hello")],  # an extra field
            [("title", None, b"hello")],  # no image
            [("picture", "a.png", data)],  # the wrong field name
        ):
            body, headers = form(*parts)
            r = client.post("/upload", content=body, headers=headers)
            assert r.status_code == 400, (parts[0][0], r.status_code, r.text)
        assert client.post("/upload", content=data, headers={"Content-Type": "image/png"}).status_code == 400
        assert client.post("/upload", json={"image": "x"}).status_code == 400
        body, headers = form(("image", "a.png", data))
        assert client.post("/upload", content=body[:-40], headers=headers).status_code == 400  # cut short
    assert stored_files(server.root) == before


def test_token_is_required_and_checked(strict_server):
    data = (CORPUS / "photos/rgb16_gradient.png").read_bytes()
    with strict_server.client() as client:
        missing = post_file(client, data)
        assert missing.status_code == 401 and missing.headers["www-authenticate"].startswith("Bearer")
        assert post_file(client, data, headers={"Authorization": f"Basic {TOKEN}"}).status_code == 401
        assert post_file(client, data, headers={"Authorization": "Bearer wrong"}).status_code == 403
        assert post_file(client, data, headers={"Authorization": f"Bearer {TOKEN}x"}).status_code == 403
        assert post_file(client, data, headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 201


def test_body_past_max_bytes_is_refused_without_reading_it(strict_server):
    """1 MB limit; a 64 MB chunked body (no Content-Length) must be answered long before its end."""
    total = 64 * 1024 * 1024
    sent = 0

    def body():
        nonlocal sent
        head, _ = form(("image", "big.jpg", b""))
        yield head[: head.index(b"\r\n\r\n") + 4]
        chunk = b"\xff" * 65536
        while sent < total:
            sent += len(chunk)
            yield chunk

    headers = {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}", "Authorization": f"Bearer {TOKEN}"}
    with strict_server.client() as client:
        r = client.post("/upload", content=body(), headers=headers)
    assert r.status_code == 413
    assert sent < total // 4, f"the client got to send {sent} bytes"
    assert not any(p.suffix == ".part" for p in strict_server.root.rglob("*"))


def test_huge_content_length_is_refused_before_any_body_is_sent(strict_server):
    request = (
        "POST /upload HTTP/1.1\r\nHost: test\r\n"
        f"Authorization: Bearer {TOKEN}\r\n"
        f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\n"
        "Content-Length: 50000000\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", strict_server.port), timeout=60) as sock:
        sock.sendall(request)  # and no body at all: a server waiting for it would time out here
        answer = sock.recv(4096).decode("latin-1")
    assert answer.startswith("HTTP/1.1 413"), answer[:200]


def _read_answer(sock: socket.socket) -> str:
    """The head of one HTTP/1.1 answer with a Content-Length, its body read past."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed after {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(re.search(rb"(?im)^content-length: *(\d+)", head)[1])
    while len(body) < length:
        chunk = sock.recv(65536)
        assert chunk, "connection closed inside the body"
        body += chunk
    return head.decode("latin-1")


@pytest.mark.parametrize(("token", "status"), [("wrong", 403), (TOKEN, 415)])
def test_a_refused_upload_is_read_to_its_end_and_the_connection_kept(strict_server, token, status):
    """Refused before its body (a bad token) or after it (not an image): the rest is read and
    dropped, not cut off with a reset that can destroy the answer (nginx turned 1 in 10 into 502)."""
    body, headers = form(("image", "a.jpg", b"\x00" * 600_000))
    request = (
        f"POST /upload HTTP/1.1\r\nHost: test\r\nAuthorization: Bearer {token}\r\n"
        f"Content-Type: {headers['Content-Type']}\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", strict_server.port), timeout=60) as sock:
        sock.sendall(request + body)
        head = _read_answer(sock)
        assert head.startswith(f"HTTP/1.1 {status}"), head
        assert "connection: close" not in head.lower(), head
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: test\r\n\r\n")  # the same connection
        head = _read_answer(sock)
        assert head.startswith("HTTP/1.1 200"), head


# --- hostile file names ----------------------------------------------------------------------

HOSTILE = {
    "../../etc/passwd": "passwd.png",
    "a/b\\c.jpg": "c.png",
    "..\\..\\windows\\win.ini": "win.png",
    "/absolute/path/x.png": "x.png",
    "x" * 300 + ".png": "x" * 80 + ".png",
    "café ünïcödé.PNG": "cafe-unicode.png",
    "日本語.png": "image.png",
    "...": "image.png",
    ".hidden.png": "hidden.png",
    "  spaced   name .png": "spaced-name.png",
    "a..b...c.png": "a.b.c.png",
    "": "image.png",
    None: "image.png",
    "photo.gif": "photo.png",  # the extension follows the bytes, not the name
    "x\x00y.png": "x-y.png",
}


def test_hostile_filenames_stay_in_the_upload_dir(server):
    data = (CORPUS / "photos/rgb16_gradient.png").read_bytes()
    with server.client() as client:
        for filename, expected in HOSTILE.items():
            r = post_file(client, data, filename)
            assert r.status_code == 201, (filename, r.text)
            path = r.json()["path"]
            assert PATH_SHAPE.fullmatch(path) and path.rsplit("/", 1)[1] == expected, (filename, path)
            stored = (server.root / path).resolve()
            assert stored.parent.parent == (server.root / "uploads").resolve() and stored.read_bytes() == data
            assert client.get(f"/picture/{path}?w=10").status_code == 200
    # nothing anywhere but uploads/<id>/<name> (and the empty temp dir)
    for relative in stored_files(server.workdir):
        assert relative.parts[0] != "images" or (relative.parts[1] == "uploads" and len(relative.parts) == 4), relative
    assert not any((server.root / "uploads" / ".tmp").iterdir())


@pytest.mark.parametrize(
    "filename, fmt, expected",
    [
        ("IMG_0001.JPEG", "JPEG", "IMG_0001.jpeg"),
        ("phone.jpg", "MPO", "phone.jpg"),
        ("scan.tiff", "TIFF", "scan.tiff"),
        ("noext", "WEBP", "noext.webp"),
        ("-rf .jpg", "JPEG", "rf.jpg"),
        ("évian.avif", "AVIF", "evian.avif"),
    ],
)
def test_safe_name(filename, fmt, expected):
    assert safe_name(filename, fmt) == expected


# --- jobs ------------------------------------------------------------------------------------


def test_unknown_jobs_are_404(server):
    with server.client() as client:
        assert client.get("/jobs/" + "0" * 32).status_code == 404
        assert client.get("/jobs/not-a-job").status_code == 404
        assert client.get("/jobs/..%2f..%2fetc").status_code == 404


def test_uploads_off_is_404(live_server, tmp_path):
    server = live_server({"uploads": {"enabled": False}})
    with server.client() as client:
        r = post_file(client, (CORPUS / "photos/rgb16_gradient.png").read_bytes())
        assert r.status_code == 404 and "off" in r.text


MANY_PRESETS = {f"w{w}": {"width": w} for w in (200, 300, 400, 500, 600, 700, 800, 900, 1000, 1100, 1200, 1300)}


@pytest.mark.timeout(240)
def test_restart_mid_job_resumes_it(tmp_path):
    """One job worker and 12 presets × 4 formats of a 12-MP photo; SIGTERM while it runs."""
    settings = {
        "uploads": {"pregenerate_formats": ["webp", "avif", "png", "source"]},
        "jobs": {"workers_in_server": 1},
        "presets": MANY_PRESETS,
    }
    first = upload_server(tmp_path / "srv", extra=settings)
    first.start()
    data = (CORPUS / "photos/large_12mp_bus.jpg").read_bytes()
    try:
        with first.client() as client:
            body = post_file(client, data, "bus.jpg").json()
            status_url = body["job"]["status_url"]
            deadline = time.monotonic() + 60
            while (job := client.get(status_url).json())["status"] == "pending":
                assert time.monotonic() < deadline, job
                time.sleep(0.05)
            assert job["status"] == "running" and job["done"] < job["total"] == 48, job
    finally:
        first.stop()  # SIGTERM: a clean shutdown hands the job back
    assert "Traceback" not in first.log_text()

    second = LiveServer(tmp_path / "srv", first.settings)  # same config, cache and root
    second.start()
    try:
        with second.client() as client:
            job = wait_for_job(client, status_url, timeout=180)
            assert job["status"] == "done" and job["done"] == job["total"] == 48, job
            assert job["runs"] == 2
            assert client.get("/health").json()["renders"] > 0  # the rest was rendered here
            for url in body["urls"].values():
                assert client.get(url + "&encoding=avif").headers["x-cache"] == "HIT", url
    finally:
        second.stop()


def test_cli_warm_fills_the_cache_the_server_reads(live_server):
    server = live_server()
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "imgproxy",
            "warm",
            "photos/tree.webp",
            "photos/alpha_dice.png",
            "--preset",
            "small",
            "--preset",
            "thumbnail",
            "--format",
            "webp",
            "--config",
            str(server.config_path),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "4 of 4" in result.stdout
    with server.client() as client:
        for source in ("photos/tree.webp", "photos/alpha_dice.png"):
            for preset in ("small", "thumbnail"):
                r = client.get(f"/picture/{source}?preset={preset}&encoding=webp")
                assert r.headers["x-cache"] == "HIT", (source, preset)
            assert client.get(f"/picture/{source}?preset=medium&encoding=webp").headers["x-cache"] == "MISS"
