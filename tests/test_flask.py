"""imgproxy.flask: a real Flask app whose templates are written the Flask-Images way renders URLs
of a real running service; every URL is fetched and answers the size its tag announced."""

from __future__ import annotations

import io
import subprocess
import sys
from html.parser import HTMLParser
from urllib.parse import parse_qsl, urlsplit

import flask
import httpx
import pytest
from PIL import Image

from imgproxy.flask import Images, Size, picture_params

from .conftest import CORPUS, LiveServer

KEY = "flask-secret"
DALMATIAN = "photos/progressive_dalmatian.jpg"  # 960x640
DICE = "photos/alpha_dice.png"  # 300x225, alpha
ROTATED = "photos/orientation/Landscape_6.jpg"  # stored 1200x1800, EXIF 6: 1800x1200

# A dozen typical Flask-Images calls, unchanged from a Flask-Images template.
TEMPLATE = """
{{ resized_img_tag(dalmatian, width=300) }}
{{ resized_img_tag(dalmatian, width=400, height=100) }}
{{ resized_img_tag(dalmatian, width=300, height=300, mode='fit') }}
{{ resized_img_tag(dalmatian, width=200, height=200, mode='crop', class_='thumb') }}
{{ resized_img_tag(dice, width=500, height=500, mode='pad') }}
{{ resized_img_tag(dice, width=200, format='webp') }}
{{ resized_img_tag(dalmatian, width=250, quality=40) }}
{{ resized_img_tag(dice, width=120, height=120, mode='pad', background='#ff0000', format='jpeg') }}
{{ resized_img_tag(dice, width=600, enlarge=True) }}
{{ resized_img_tag(dalmatian, width=320, sharpen='0.5+80+2') }}
{{ resized_img_tag(rotated, width=360, alt='harbour') }}
{{ resized_img_tag(dice, width=2000) }}
{{ resized_img_tag(dice, width=200, hidpi=2) }}
{% set size = resized_img_size(dalmatian, width=640, height=300, mode='crop') %}
<img src="{{ resized_img_src(dalmatian, width=640, height=300, mode='crop') }}"
     width="{{ size.width }}" height="{{ size.height }}" alt="">
"""
# hidpi on a source that can fill it, and transform: these URLs carry `hidpi_quality` and
# `transform`, which the service learns in the `transform` branch (they pass once it is merged).
HIDPI_TEMPLATE = """
{{ resized_img_tag(dalmatian, width=300, hidpi=2) }}
{{ resized_img_tag(dalmatian, width=200, height=200, mode='crop', hidpi=2, hidpi_quality=50) }}
{{ resized_img_src(dalmatian, width=300, hidpi=2) }}
"""
TRANSFORM_TEMPLATE = """
{{ resized_img_tag(dalmatian, width=200, transform='EXTENT,480,480,0,0,480,480') }}
"""


class Imgs(HTMLParser):
    def __init__(self, markup: str):
        super().__init__()
        self.found: list[dict[str, str | None]] = []
        self.feed(markup)

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.found.append(dict(attrs))


def render(images: Images, template: str) -> str:
    app = flask.Flask(__name__)
    images.init_app(app)
    with app.test_request_context():
        return flask.render_template_string(template, dalmatian=DALMATIAN, dice=DICE, rotated=ROTATED)


def fetch(url: str) -> httpx.Response:
    return httpx.get(url, timeout=60)


def check_every_url(imgs: list[dict[str, str | None]], scale: int = 1) -> list[Image.Image]:
    """Each src answers 200 with the announced size (times the hidpi scale)."""
    out = []
    for attrs in imgs:
        response = fetch(str(attrs["src"]))
        assert response.status_code == 200, (attrs, response.text)
        image = Image.open(io.BytesIO(response.content))
        announced = (int(attrs["width"] or 0), int(attrs["height"] or 0))
        assert image.size == (announced[0] * scale, announced[1] * scale), attrs
        out.append(image)
    return out


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    server = LiveServer(tmp_path_factory.mktemp("flask"), {"security": {"key": KEY}})
    server.start()
    yield server
    server.stop()


@pytest.fixture(params=["root", "info"])
def images(request, server):
    """The extension reading sizes from the shared folder, or from the service's /info."""
    images = Images(base_url=server.url, key=KEY, root=CORPUS if request.param == "root" else None)
    yield images
    images.close()


def test_a_flask_images_template_renders_urls_the_service_answers_at_the_announced_size(images, server):
    imgs = Imgs(render(images, TEMPLATE)).found
    assert len(imgs) == 14
    for attrs in imgs:
        assert attrs["src"].startswith(server.url + "/picture/") and "&sig=" in attrs["src"]
    rendered = check_every_url(imgs)
    queries = [dict(parse_qsl(urlsplit(str(a["src"])).query)) for a in imgs]
    sizes = [(int(a["width"] or 0), int(a["height"] or 0)) for a in imgs]
    assert sizes[0] == (300, 200)
    assert sizes[1] == (400, 100) and queries[1]["mode"] == "stretch"  # no mode, both sides: stretch
    assert sizes[2] == (300, 200)
    assert sizes[3] == (200, 200) and imgs[3]["class"] == "thumb"
    # pad: black by default (the service's own default is white), the dice centred on it
    assert queries[4]["mode"] == "pad" and rendered[4].convert("RGBA").getpixel((sizes[4][0] // 2, 1)) == (0, 0, 0, 255)
    assert rendered[5].format == "WEBP"
    assert queries[6]["quality"] == "40"
    assert rendered[7].format == "JPEG" and rendered[7].convert("RGB").getpixel((60, 2))[0] > 200  # red padding
    assert sizes[8] == (600, 450)  # enlarge
    assert queries[9]["sharpen"] == "0.5,80,2"
    assert sizes[10] == (360, 240) and imgs[10]["alt"] == "harbour"  # after EXIF orientation
    assert sizes[11] == (300, 225)  # never enlarged unless asked
    # hidpi that would need enlarging: Flask-Images keeps the 1x image
    assert "dpr" not in queries[12] and "data-hidpi-scale" not in imgs[12] and sizes[12] == (200, 150)
    assert sizes[13] == (640, 300)
    assert imgs[0]["data-original-width"] == "960" and imgs[10]["data-original-height"] == "1200"


def test_root_and_info_give_the_same_sizes(server):
    by_root = Images(base_url=server.url, key=KEY, root=CORPUS)
    by_info = Images(base_url=server.url, key=KEY)
    cases = [
        (DALMATIAN, {"width": 300}),
        (DALMATIAN, {"width": 400, "height": 100}),
        (DALMATIAN, {"width": 300, "height": 300, "mode": "fit"}),
        (DALMATIAN, {"width": 2000, "height": 2000, "mode": "pad"}),
        (DICE, {"height": 100, "mode": "crop"}),
        (ROTATED, {"width": 360}),
        (DICE, {"width": 600, "enlarge": True}),
    ]
    try:
        for source, kw in cases:
            size = by_root.resized_img_size(source, **kw)
            assert isinstance(size, Size) and size == by_info.resized_img_size(source, **kw), (source, kw)
        assert by_root.resized_img_size("photos/missing.jpg", width=10) is None
        assert by_info.resized_img_size("photos/missing.jpg", width=10) is None
    finally:
        by_root.close()
        by_info.close()


def test_info_sizes_are_remembered_in_a_bounded_cache(server):
    images = Images(base_url=server.url, key=KEY, cache_entries=2)
    try:
        assert images.resized_img_size(DALMATIAN, width=100) == (100, 67)
        assert images.resized_img_size(DALMATIAN, width=200) == (200, 133)
        assert len(images._sizes) == 1
        images.resized_img_size(DICE, width=10)
        images.resized_img_size(ROTATED, width=10)
        assert list(images._sizes) == [DICE, ROTATED]
    finally:
        images.close()


def test_a_wrong_key_gives_403_and_no_size(server):
    images = Images(base_url=server.url, key="not-the-key")
    try:
        attrs = images.resized_img_attrs(DALMATIAN, width=300)
        assert fetch(str(attrs["src"])).status_code == 403
        assert "width" not in attrs  # /info refused too: the size is unknown
        unsigned = Images(base_url=server.url)
        assert fetch(unsigned.resized_img_src(DALMATIAN, width=300)).status_code == 403
    finally:
        images.close()


def test_flask_images_arguments_map_to_picture_parameters():
    assert picture_params({"width": 10, "height": 20}) == {"width": 10, "height": 20, "mode": "stretch"}
    assert picture_params({"width": 10, "height": 20, "mode": "pad"})["background"] == "black"
    assert picture_params({"width": 10, "mode": "fit", "format": "png", "quality": 50, "enlarge": False}) == {
        "width": 10,
        "mode": "fit",
        "encoding": "png",
        "quality": 50,
    }
    assert picture_params({"sharpen": "1;100;3", "transform": ["EXTENT", 10, 10, 0, 0, "50%", "50%"]}) == {
        "sharpen": "1,100,3",
        "transform": "EXTENT,10,10,0,0,50%,50%",
    }
    with pytest.raises(ValueError, match="mode"):
        picture_params({"mode": "zoom"})
    images = Images(base_url="http://img.test")
    with pytest.raises(ValueError, match="unknown picture parameter"):
        images.resized_img_src(DALMATIAN, widht=10)


def test_the_service_does_not_need_flask():
    code = "import sys, imgproxy.app, imgproxy.cli, imgproxy.html; sys.exit('flask' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], timeout=120).returncode == 0


# --- these need the service's `hidpi_quality` and `transform` (the `transform` branch) ---------


def test_hidpi_gives_the_2x_url_at_hidpi_quality(images):
    imgs = Imgs(render(images, HIDPI_TEMPLATE)).found
    assert [a["data-hidpi-scale"] for a in imgs] == ["2", "2"]
    queries = [dict(parse_qsl(urlsplit(str(a["src"])).query)) for a in imgs]
    assert queries[0]["dpr"] == "2" and queries[0]["hidpi_quality"] == "60"  # Flask-Images' default
    assert queries[1]["hidpi_quality"] == "50"
    assert [(a["width"], a["height"]) for a in imgs] == [("300", "200"), ("200", "200")]
    check_every_url(imgs, scale=2)
    src = render(images, HIDPI_TEMPLATE).strip().splitlines()[-1]
    assert src.replace("&amp;", "&") == imgs[0]["src"]


def test_transform_passes_through(images):
    imgs = Imgs(render(images, TRANSFORM_TEMPLATE)).found
    assert dict(parse_qsl(urlsplit(str(imgs[0]["src"])).query))["transform"] == "EXTENT,480,480,0,0,480,480"
    # a square extent of a 3:2 source: the announced size must follow the transform (Flask-Images'
    # sizes did), which holds once the service's geometry.output_size knows `transform`
    assert (imgs[0]["width"], imgs[0]["height"]) == ("200", "200")
    check_every_url(imgs)
