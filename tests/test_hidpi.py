"""`hidpi_quality` (SPEC §12, as Flask-Images): the quality used at dpr >= 2, resolved at parse time
so the cache key holds the quality the encoder uses; the HTML helpers' density srcset."""

from __future__ import annotations

import dataclasses
import io
from urllib.parse import parse_qsl, urlsplit

import pytest
from PIL import Image

from imgproxy.config import Config, LocalSourceConfig, RenderConfig, SecurityConfig, SourcesConfig
from imgproxy.errors import BadRequest
from imgproxy.html import img_attrs, img_tag
from imgproxy.options import parse_options

from .conftest import CORPUS

CONFIG = Config(sources=SourcesConfig(local=LocalSourceConfig(root=str(CORPUS))))
DALMATIAN = "photos/progressive_dalmatian.jpg"  # 960x640
PICTURE = f"/picture/{DALMATIAN}"


def key(query: str, hidpi: int | None = None) -> str:
    pairs = [tuple(item.split("=")) for item in query.split("&")]
    return parse_options(pairs, {"retina": {"dpr": 2, "hidpi_quality": 55}}, hidpi_quality=hidpi).cache_key()


@pytest.mark.parametrize(
    "a, b, hidpi",
    [
        ("dpr=2&hidpi_quality=60", "dpr=2&quality=60", None),
        ("dpr=2&hidpi_quality=60&quality=90", "dpr=2&q=60", None),  # at 2x the hidpi one is used
        ("dpr=1.5&hidpi_quality=60", "dpr=1.5", None),  # below 2 it is dropped
        ("dpr=1.99&hidpi_quality=60&q=70", "dpr=1.99&q=70", 50),
        ("dpr=2&quality=70", "dpr=2", 50),  # the config's applies at 2x: the request's quality is unused
        ("dpr=2", "dpr=2&hidpi_quality=50", 50),
        ("dpr=4&hidpi_quality=30", "dpr=4&hidpi_quality=30&q=99", 50),  # the request's beats the config's
        ("preset=retina", "dpr=2&q=55", None),
        ("dpr=2", "dpr=2.0", None),  # nothing given: the format's default
    ],
)
def test_the_key_holds_the_quality_used(a, b, hidpi):
    assert key(a, hidpi) == key(b, hidpi)


def test_different_qualities_differ():
    assert key("dpr=2&hidpi_quality=60") != key("dpr=2&hidpi_quality=61")
    assert key("dpr=1.5&q=60", 50) != key("dpr=1.5", 50)  # the config's is for 2x only
    assert "q=&" in key("dpr=2") and "q=50&" in key("dpr=2", 50) and "q=&" in key("dpr=1", 50)
    assert "q=30&" in key("dpr=4&hidpi_quality=30", 50)


@pytest.mark.parametrize("raw", ["0", "101", "high", "-5", ""])
def test_bad_hidpi_quality_is_400_naming_it(raw):
    with pytest.raises(BadRequest, match="^hidpi_quality: "):
        parse_options([("hidpi_quality", raw), ("dpr", "2")], {})


def _get(client, **params):
    r = client.get(PICTURE, params=params)
    assert r.status_code == 200, r.text
    return r


def test_hidpi_quality_is_the_encoders_at_2x_and_quality_below(live_server):
    """Bytes compared with requests of the same pixels under another key (rendered anew), so the
    equality shows the quality the encoder used, not a shared cache entry."""
    plain = live_server(name="plain")
    with plain.client() as client:
        hidpi = _get(client, w="200", dpr="2", hidpi_quality="40", fm="jpeg")
        same_key = _get(client, w="200", dpr="2", quality="40", fm="jpeg")
        assert same_key.headers["x-cache"] == "HIT" and same_key.content == hidpi.content
        fresh = _get(client, w="400", quality="40", fm="jpeg")  # 400 px as well: another key, rendered anew
        assert fresh.headers["x-cache"] == "MISS" and fresh.content == hidpi.content
        default = _get(client, w="200", dpr="2", fm="jpeg")
        assert len(default.content) > len(hidpi.content) * 1.3  # jpeg_quality 80 vs 40
        below = _get(client, w="200", dpr="1.5", hidpi_quality="40", quality="70", fm="jpeg")
        assert below.content == _get(client, w="300", quality="70", fm="jpeg").content
    configured = live_server({"render": {"hidpi_quality": 40}}, name="configured")
    with configured.client() as client:
        assert _get(client, w="200", dpr="2", fm="jpeg").content == hidpi.content
        assert _get(client, w="200", dpr="2", quality="90", fm="jpeg").content == hidpi.content
        assert _get(client, w="200", dpr="1.5", fm="jpeg").content == _get(client, w="300", fm="jpeg").content
        assert _get(client, w="200", dpr="2", hidpi_quality="70", fm="jpeg").content == (
            _get(client, w="400", quality="70", fm="jpeg").content
        )


# --- helpers: a fixed-size image with a density srcset ---


def _srcset(attrs) -> list[tuple[dict[str, str], str]]:
    entries = []
    for entry in str(attrs["srcset"]).split(", "):
        url, descriptor = entry.rsplit(" ", 1)
        entries.append((dict(parse_qsl(urlsplit(url).query)), descriptor))
    return entries


def test_img_attrs_hidpi_gives_1x_and_2x():
    attrs = img_attrs(DALMATIAN, width=300, hidpi=True, hidpi_quality=45, fm="webp", config=CONFIG)
    (one, d1), (two, d2) = _srcset(attrs)
    assert (d1, d2) == ("1x", "2x") and "sizes" not in attrs
    assert one == {"scalex": "300", "encoding": "webp"}  # hidpi_quality is unused at 1x: not written
    assert two == {"hidpi_quality": "45", "encoding": "webp", "scalex": "300", "dpr": "2"}
    assert attrs["src"].endswith("?encoding=webp&scalex=300") and (attrs["width"], attrs["height"]) == (300, 200)


def test_the_2x_descriptor_is_the_real_density_and_left_out_when_no_larger():
    (_, d1), (_, d2) = _srcset(img_attrs(DALMATIAN, width=600, hidpi=True, config=CONFIG))
    assert (d1, d2) == ("1x", "1.6x")  # 960 px is all the source has
    assert "srcset" not in img_attrs(DALMATIAN, width=960, hidpi=True, config=CONFIG)
    (_, d1), (three, d3) = _srcset(img_attrs(DALMATIAN, width=200, hidpi=3, config=CONFIG))
    assert three["dpr"] == "3" and d3 == "3x"
    remote = img_attrs("https://img.example.com/a.jpg", width=200, hidpi=True, config=CONFIG)
    assert _srcset(remote)[1][1] == "2x"  # size unknown: the nominal density


def test_img_tag_hidpi_signs_both_entries():
    signed = dataclasses.replace(CONFIG, security=SecurityConfig(key="k"))
    html = str(img_tag(DALMATIAN, width=300, hidpi=True, config=signed))
    assert html.count("sig=") == 3  # src, and both srcset entries
    assert 'srcset="' in html and "dpr=2" in html


def test_the_helpers_2x_url_is_answered_at_2x_with_the_hidpi_quality(live_server):
    server = live_server({"render": {"hidpi_quality": 40}})
    config = dataclasses.replace(CONFIG, render=RenderConfig(hidpi_quality=40))
    attrs = img_attrs(DALMATIAN, width=300, hidpi=True, fm="jpeg", config=config)
    url_2x = str(attrs["srcset"]).split(", ")[1].rsplit(" ", 1)[0]
    with server.client() as client:
        two = client.get(url_2x)
        assert Image.open(io.BytesIO(two.content)).size == (600, 400)
        assert two.content == client.get(PICTURE, params={"w": "600", "q": "40", "fm": "jpeg"}).content
