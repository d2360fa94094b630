"""/info (SPEC §11) end to end against the corpus, and the ThumbHash encoder against the reference."""

from __future__ import annotations

import base64
import io
import shutil

import pytest
from PIL import Image

from imgproxy import thumbhash
from imgproxy.signing import sign
from imgproxy.thumbhash import average_rgb, decode

from .conftest import CORPUS, LiveServer, copy_from_corpus, manifest_rows
from .origin import Origin

ROWS = manifest_rows()
RENDER = [r for r in ROWS if r["expect"] == "render"]
REJECT = [r for r in ROWS if r["expect"] == "reject"]
KEY = "info-secret"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    # outputs up to 8192 px, so /picture without parameters renders every render row at full size
    server = LiveServer(tmp_path_factory.mktemp("info"), {"limits": {"max_output_width": 8192}})
    server.start()
    yield server
    server.stop()


def synthetic(w: int, h: int, with_alpha: bool) -> bytes:
    """A gradient, with graded alpha when `with_alpha` (the pixels the reference run was given)."""
    out = bytearray()
    for y in range(h):
        for x in range(w):
            alpha = (x * 37 + y * y * 11) % 256 if with_alpha else 255
            out += bytes((x * 255 // (w - 1), y * 255 // (h - 1), (x + y) * 7 % 256, alpha))
    return bytes(out)


def test_thumbhash_matches_the_reference_encoder():
    # Expected values from the reference implementation (npm thumbhash 0.1.1, rgbaToThumbHash) run
    # under node on the same synthetic pixels.
    # (Symmetric pixels are avoided: their zero terms land on 7.5 and round by float noise.)
    assert base64.b64encode(thumbhash.encode(60, 40, synthetic(60, 40, True))) == b"3/eFG44HcIdwaHeBgAn4d3YlB0qmCYE="
    assert base64.b64encode(thumbhash.encode(30, 90, synthetic(30, 90, False))) == b"4AcKMhpwcYd3h2h2gYAH+Hg="
    assert base64.b64encode(thumbhash.encode(100, 7, synthetic(100, 7, True))) == b"H/iFGY4HcXaAh4iSgBf3eIWIhGBnhZU="
    with pytest.raises(ValueError):
        thumbhash.encode(101, 10, bytes(101 * 10 * 4))


def assert_placeholder_fits(info: dict) -> None:
    """The ThumbHash decodes to the source's aspect ratio (as closely as its 3 bits allow) and, for an
    opaque image, holds about its average colour."""
    th = base64.b64decode(info["thumbhash"], validate=True)
    side_x, side_y, rgba = decode(th)
    placeholder = Image.frombytes("RGBA", (side_x, side_y), rgba)
    long_terms = 5 if th[2] & 0x80 else 7  # ThumbHash keeps the short side in 1/5 or 1/7 of the long
    w, h = info["width"], info["height"]
    short = min(w, h) / max(w, h)
    got = min(placeholder.size) / max(placeholder.size)
    assert (placeholder.width >= placeholder.height) == (w >= h) or w == h
    assert abs(got - max(short, 1 / long_terms)) <= 0.5 / long_terms + 1 / 32, (placeholder.size, w, h)
    colour = info["dominant_color"]
    assert len(colour) == 7 and colour[0] == "#"
    if not info["has_alpha"]:
        expected = [int(colour[i : i + 2], 16) for i in (1, 3, 5)]
        # the hash holds L in 6 bits and P, Q in 6 bits over -1..1: a few levels of rounding
        assert max(abs(a - b) for a, b in zip(average_rgb(th), expected)) <= 12, (average_rgb(th), expected)


@pytest.mark.parametrize("row", RENDER, ids=lambda r: r["file"])
def test_info_of_every_render_row_matches_the_picture(server, row):
    with server.client() as client:
        r = client.get(f"/info/{row['file']}")
        assert r.status_code == 200, r.text
        assert r.headers["content-type"] == "application/json"
        info = r.json()
        picture = client.get(f"/picture/{row['file']}")
        assert picture.status_code == 200
        assert (info["width"], info["height"]) == Image.open(io.BytesIO(picture.content)).size
    assert info["format"] == row["format"]
    assert info["bytes"] == int(row["bytes"]) == (CORPUS / row["file"]).stat().st_size
    if info["animated"]:
        assert info["frames"] == int(row["frames"]) > 1
    assert info["has_alpha"] == (
        row["mode"] in ("RGBA", "LA") or Image.open(CORPUS / row["file"]).has_transparency_data
    )
    assert_placeholder_fits(info)


@pytest.mark.parametrize("row", REJECT, ids=lambda r: r["file"])
def test_info_refuses_every_reject_row_as_the_picture_does(server, row):
    with server.client(timeout=60) as client:
        started = server.cpu_seconds()
        info = client.get(f"/info/{row['file']}")
        picture = client.get(f"/picture/{row['file']}")
        assert 400 <= info.status_code < 500
        assert info.status_code == picture.status_code, info.text
        assert server.cpu_seconds() - started < 5
        assert info.headers["cache-control"] == "no-store"
        assert "Traceback" not in info.text and len(info.text) < 300


def test_info_fields_of_known_images(server):
    with server.client() as client:
        dice = client.get("/info/photos/alpha_dice.png").json()
        earth = client.get("/info/photos/animated_earth.gif").json()
        turned = client.get("/info/photos/orientation/Landscape_6.jpg").json()
        upright = client.get("/info/photos/orientation/Landscape_1.jpg").json()
    assert dice["has_alpha"] is True and dice["animated"] is False and dice["frames"] == 1
    assert earth["animated"] is True and earth["frames"] == 44 and earth["format"] == "GIF"
    assert (turned["width"], turned["height"]) == (1800, 1200)  # stored 1200x1800, EXIF 6
    assert turned["thumbhash"] == upright["thumbhash"]  # the same picture once turned upright


def test_info_is_cached_with_the_picture_headers_and_answers_304(server):
    with server.client() as client:
        first = client.get("/info/photos/tree.webp")
        second = client.get("/info/photos/tree.webp")
        assert second.headers["x-cache"] == "HIT" and second.content == first.content
        assert first.headers["etag"] == second.headers["etag"]
        picture = client.get("/picture/photos/tree.webp?w=10")
        assert first.headers["cache-control"] == picture.headers["cache-control"]
        assert "last-modified" in first.headers
        assert client.get("/info/photos/tree.webp", headers={"if-none-match": first.headers["etag"]}).status_code == 304
        head = client.head("/info/photos/tree.webp")
        assert head.status_code == 200 and head.content == b""
        assert client.get("/info/photos/tree.webp?v=2").status_code == 200
        for query in ("w=100", "mode=fit", "v=a/b", "bogus=1"):
            r = client.get(f"/info/photos/tree.webp?{query}")
            assert r.status_code == 400, query
        for path in ("../etc/passwd", "photos/%2e%2e/%2e%2e/x", "photos/missing.jpg"):
            assert client.get(f"/info/{path}").status_code in (400, 404), path


def test_a_replaced_file_gets_a_new_answer(live_server, writable_root):
    copy_from_corpus("photos/tree.webp", writable_root, "a.img")
    server = live_server({"sources": {"local": {"root": str(writable_root)}}})
    with server.client() as client:
        before = client.get("/info/a.img").json()
        shutil.copyfile(CORPUS / "photos/alpha_dice.png", writable_root / "a.img")
        after = client.get("/info/a.img").json()
    assert (before["format"], after["format"]) == ("WEBP", "PNG")
    assert (after["width"], after["height"]) == (300, 225)


def test_info_is_signed_like_the_picture(live_server):
    server = live_server({"security": {"key": KEY, "allowed_widths": [320]}})
    path = "/info/photos/alpha_dice.png"
    with server.client() as client:
        assert client.get(path).status_code == 403
        assert client.get(f"{path}?w=320").status_code == 403  # allowed widths do not open /info
        assert client.get(f"{path}?sig={sign(path, '', 'wrong')}").status_code == 403
        assert client.get(f"{path}?sig={sign(path, '', KEY)}").status_code == 200
        assert client.get(f"{path}?v=3&sig={sign(path, 'v=3', KEY)}").status_code == 200
        assert client.get(f"{path}?v=4&sig={sign(path, 'v=3', KEY)}").status_code == 403


def test_remote_sources_follow_the_same_rules(live_server):
    origin = Origin().start()
    try:
        open_ = live_server({"sources": {"remote": {"allowed_hosts": ["127.0.0.1"], "allow_private_addresses": True}}})
        closed = live_server(name="closed")
        url = origin.url("/photos/alpha_dice.png")
        with open_.client() as client:
            info = client.get(f"/info/{url}")
            assert info.status_code == 200 and (info.json()["width"], info.json()["height"]) == (300, 225)
            assert client.get(f"/info/{url}").headers["x-cache"] == "HIT"
            assert client.get(f"/info/{origin.url('/status/404')}").status_code == 404
            assert client.get(f"/info/{origin.url('/html-as-jpeg')}").status_code == 415
        with closed.client() as client:
            assert client.get(f"/info/{url}").status_code == 403  # no allowed_hosts: remote is off
        assert origin.hits("/photos/alpha_dice.png") == 1
    finally:
        origin.stop()
