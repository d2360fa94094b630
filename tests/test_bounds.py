"""Issue 14: memory and CPU per request are bounded before allocation (live server, real renders).

Every figure read here is the server's peak RSS (VmHWM) or its current RSS from /proc; the
sources are drawn by the tests (gradients: small files, large decodes).
"""

import io
import threading

import httpx
import pytest
from PIL import Image

from .test_uploads import form

MB = 1024  # /proc/<pid>/status reports kB


def _status_kb(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise AssertionError(f"no {field}")


def _gradient(size: tuple[int, int]) -> Image.Image:
    return Image.linear_gradient("L").resize(size).convert("RGB")


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("bounds-images")
    _gradient((200, 10)).save(root / "wide.png")
    _gradient((10, 200)).save(root / "tall.png")
    _gradient((2400, 1600)).save(root / "photo.jpg", quality=85)
    _gradient((6000, 4000)).save(root / "big.png", compress_level=1)  # 24 MP: ~96 MB decoded
    frames = [Image.new("RGB", (16, 16), (i * 6, 255 - i * 6, 99)) for i in range(40)]
    frames[0].save(root / "anim.gif", save_all=True, append_images=frames[1:], duration=20, loop=0)
    return root


@pytest.fixture(scope="module")
def server(root, tmp_path_factory):
    from .conftest import LiveServer

    presets = {"thumbnail": {"width": 150}, "banner": {"height": 1000, "enlarge": True}}
    server = LiveServer(
        tmp_path_factory.mktemp("bounds"), {"sources": {"local": {"root": str(root)}}, "presets": presets}
    )
    server.start()
    yield server
    server.stop()


@pytest.mark.parametrize(
    "url, canvas",
    [
        ("/picture/wide.png?h=1000&enlarge=1", "20000x1000"),  # width from the aspect ratio
        ("/picture/photo.jpg?dpr=4&enlarge=1", "9600x6400"),  # dpr without a size
        ("/picture/tall.png?w=1000&mode=pad&enlarge=1", "1000x20000"),  # pad canvas
        ("/picture/tall.png?w=1000&mode=crop&enlarge=1", "1000x20000"),  # crop canvas
        ("/picture/wide.png?preset=banner", "20000x1000"),  # a preset
        ("/picture/wide.png?crop=0,0,100,10&h=500&enlarge=1", "5000x500"),  # after the source crop
    ],
)
def test_every_output_canvas_is_checked(server, url, canvas):
    with server.client() as client:
        r = client.get(url)
    assert r.status_code == 413, (r.status_code, r.headers.get("content-type"))
    assert canvas in r.text and "4096" in r.text


def test_outputs_inside_the_limits_still_render(server):
    with server.client() as client:
        for url, size in (
            ("/picture/wide.png?h=100&enlarge=1", (2000, 100)),
            ("/picture/photo.jpg?w=1000&dpr=4&enlarge=1", (4000, 2667)),
            ("/picture/tall.png?w=100&mode=pad&enlarge=1", (100, 2000)),
            ("/picture/anim.gif?w=500&h=500&enlarge=1", (500, 500)),
        ):
            r = client.get(url)
            assert r.status_code == 200, (url, r.text)
            assert Image.open(io.BytesIO(r.content)).size == size, url


def test_an_oversized_canvas_is_refused_before_the_decode(server):
    """dpr=2 on a 24-MP PNG asks for 12000x8000: 413 without decoding the ~96 MB source."""
    pid = server.process.pid
    with server.client() as client:
        assert client.get("/picture/wide.png?w=50").status_code == 200  # warm up imports
        before = _status_kb(pid, "VmHWM")
        r = client.get("/picture/big.png?dpr=2&enlarge=1")
        after = _status_kb(pid, "VmHWM")
    assert r.status_code == 413 and "12000x8000" in r.text
    assert (after - before) / MB < 40, f"peak RSS grew {(after - before) / MB:.0f} MB"


def test_animation_output_frames_are_capped(server):
    """40 frames of 2048x2048 are 168 MP of output: over [limits] max_animation_pixels (100 MP)."""
    pid = server.process.pid
    with server.client() as client:
        before = _status_kb(pid, "VmHWM")
        r = client.get("/picture/anim.gif?w=2048&h=2048&enlarge=1")
        after = _status_kb(pid, "VmHWM")
    assert r.status_code == 413 and "40 frames" in r.text
    assert (after - before) / MB < 40, f"peak RSS grew {(after - before) / MB:.0f} MB"


@pytest.mark.parametrize(
    "fmt, status",
    [("webp", 413), ("jpeg", 200)],
)
def test_encoder_limits_are_413_not_500(live_server, root, fmt, status):
    """With max_output_* above WebP's 16383 px, WebP refuses cleanly and JPEG still renders."""
    server = live_server(
        {
            "sources": {"local": {"root": str(root)}},
            "limits": {"max_output_width": 20000, "max_output_height": 20000},
        }
    )
    with server.client() as client:
        r = client.get(f"/picture/wide.png?h=900&enlarge=1&fm={fmt}")
    assert r.status_code == status, r.text
    if status == 413:
        assert "WEBP" in r.text.upper() and "16383" in r.text
    else:
        assert Image.open(io.BytesIO(r.content)).size == (18000, 900)


def test_failed_renders_free_their_pixels_at_once(live_server, tmp_path):
    """A truncated 25-MP PNG fails its decode after allocating ~100 MB; 12 failures in a row must
    not keep 12 of them alive until the cyclic GC runs."""
    root = tmp_path / "images"
    root.mkdir()
    whole = io.BytesIO()
    _gradient((5000, 5000)).save(whole, "PNG", compress_level=1)
    (root / "cut.png").write_bytes(whole.getvalue()[: len(whole.getvalue()) * 3 // 4])
    server = live_server({"sources": {"local": {"root": str(root)}}, "cache": {"enabled": False}})
    pid = server.process.pid
    with server.client() as client:
        for i in range(12):
            r = client.get(f"/picture/cut.png?w={100 + i}")
            assert r.status_code == 415, r.text
            if i == 1:
                after_two = _status_kb(pid, "VmHWM")
        after_twelve = _status_kb(pid, "VmHWM")
    grown = (after_twelve - after_two) / MB
    print(f"peak RSS after 2 failed renders {after_two / MB:.0f} MB, after 12 {after_twelve / MB:.0f} MB")
    assert grown < 120, f"peak RSS grew {grown:.0f} MB over 10 failed renders"


def test_upload_checks_run_inside_the_render_budget(live_server, tmp_path):
    """8 parallel uploads of a 7000x7000 PNG (~200 MB decoded each) take turns in the 96 MB
    budget instead of decoding side by side (1.4 GB before); nothing after the check decodes
    them again outside it (the 201's srcset read the size with a full decode: 760 MB on CI)."""
    root = tmp_path / "images"
    root.mkdir()
    data = io.BytesIO()
    _gradient((7000, 7000)).save(data, "PNG", compress_level=1)
    body, headers = form(("image", "big.png", data.getvalue()))
    server = live_server({"sources": {"local": {"root": str(root)}}, "uploads": {"pregenerate_formats": []}})
    before = _status_kb(server.process.pid, "VmHWM") / MB
    statuses: list[int | str] = []

    def upload():
        try:
            statuses.append(httpx.post(f"{server.url}/upload", content=body, headers=headers, timeout=120).status_code)
        except httpx.HTTPError as exc:
            statuses.append(repr(exc))

    threads = [threading.Thread(target=upload) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    peak = _status_kb(server.process.pid, "VmHWM") / MB
    print(f"peak RSS with 8 parallel 49-MP uploads: {peak:.0f} MB, {before:.0f} MB before them")
    assert statuses == [201] * 8
    assert peak - before < 300, f"peak RSS grew {peak - before:.0f} MB: more than one 196 MB decode at a time"
