"""One URL, one answer: a response's bytes depend only on the source version, the canonical options
and the config — not on the process that renders it, nor on what that process rendered before."""

import hashlib
import io

import httpx
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from PIL import Image

from imgproxy.budget import Deadline, MemoryBudget
from imgproxy.config import Config, LimitsConfig, RenderConfig, load_config
from imgproxy.errors import BadRequest
from imgproxy.loader import open_original
from imgproxy.options import parse_options
from imgproxy.pipeline import render_original
from imgproxy.render import render
from imgproxy.sources import LocalSource

from .conftest import CORPUS

MB = 1024**2
PHOTOS = [
    "photos/large_12mp_bus.jpg",
    "photos/large_9mp_harbour.jpg",
    "photos/orientation/Landscape_6.jpg",
    "photos/adobergb_locket.jpg",  # ICC profile
    "photos/cmyk_park.jpg",
    "photos/grayscale_portrait.jpg",
    "photos/alpha_dice.png",
    "photos/tree.webp",
]
MODES = {
    "fit": "w=240",
    "crop": "w=180&h=120&mode=crop&g=north",
    "pad": "w=200&h=200&mode=pad&bg=%23336699",
    "stretch": "w=220&h=90&mode=stretch",
    "smart": "w=150&h=150&mode=crop&g=smart",
}
FORMATS = ("jpeg", "png", "webp", "avif", "gif")
# other widths of the same source first, twice (a source's first decode is not kept): JPEG decodes
# at 1/1, 1/2 and 1/4 scale are then kept
WARM_UP = ("w=2000", "w=1000", "w=600&dpr=2", "w=700&h=700&mode=crop&g=smart") * 2


def _options(query: str):
    return parse_options([tuple(pair.split("=")) for pair in query.replace("%23", "#").split("&")], {})


def _budget() -> MemoryBudget:
    defaults = RenderConfig()
    return MemoryBudget(defaults.memory_budget, defaults.kept_decodes)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("photo", PHOTOS)
def test_a_url_renders_the_same_bytes_fresh_after_other_widths_and_after_eviction(photo):
    config = Config()
    original = LocalSource(CORPUS, 10**9).load(photo)
    warm = _budget()
    for query in WARM_UP:
        render_original(original, _options(query), "jpeg", config, warm)
    assert warm.kept_bytes > 0
    fresh = {}
    for mode, query in MODES.items():
        for fmt in FORMATS:
            options = _options(query)
            fresh[mode, fmt], meta = render_original(original, options, fmt, config, _budget())
            assert meta.content_type == f"image/{fmt}"
            after_others, _ = render_original(original, options, fmt, config, warm)
            again, _ = render_original(original, options, fmt, config, warm)  # from the decode it kept
            assert fresh[mode, fmt] == after_others == again, (photo, mode, fmt)
    warm.forget_kept()  # evicted: decoded afresh
    assert render_original(original, _options(MODES["smart"]), "webp", config, warm)[0] == fresh["smart", "webp"]


def _reused(photo: str, budget: MemoryBudget, query: str) -> tuple[bool, bytes]:
    original = LocalSource(CORPUS, 10**9).load(photo)
    opened = open_original(original, LimitsConfig(), ("JPEG", "PNG"))
    with opened.image:
        rendered = render(opened, _options(query), "png", RenderConfig(), Deadline(30), budget, original.key)
        return rendered.reused_decode, rendered.frames[0].tobytes()


def test_a_kept_decode_is_reused_only_at_the_scale_a_fresh_render_would_decode():
    photo = "photos/large_12mp_bus.jpg"  # 4032 wide: w=320..504 decode at 1/8, up to 1008 at 1/4
    budget = _budget()
    for _ in range(2):  # kept at 1/4 by the second render (the source's second request)
        assert _reused(photo, budget, "w=900") == (False, _reused(photo, _budget(), "w=900")[1])
    assert not _reused(photo, budget, "w=400")[0]  # 1/8 (kept now): the 1/4 decode would give other pixels
    for query in ("w=320", "w=480&h=300&mode=crop&g=smart", "w=640", "w=960&mode=pad&h=960"):
        reused, pixels = _reused(photo, budget, query)
        assert reused and pixels == _reused(photo, _budget(), query)[1], query
    assert not _reused(photo, budget, "w=1100")[0]  # 1/2


@pytest.mark.timeout(180)
def test_two_workers_answer_one_url_with_the_bytes_of_a_fresh_render(live_server):
    server = live_server({}, workers=2)
    photo = "photos/large_12mp_bus.jpg"
    with httpx.Client(timeout=60) as warm:  # larger decodes kept in either worker
        for n in range(6):
            assert warm.get(f"{server.url}/picture/{photo}?w=1900&v=warm{n}").status_code == 200
    config = load_config(server.config_path, {})
    expected = {}
    for query in ("w=300&fm=jpeg", "w=300&h=300&mode=crop&g=smart&fm=avif", "w=250&h=250&mode=pad&fm=webp"):
        options = _options(query)
        body, _ = render_original(LocalSource(CORPUS, 10**9).load(photo), options, options.encoding, config)
        expected[query] = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
    for n in range(8):  # `v` changes the cache key, not the pixels: each is a new render, fresh connections
        for query, etag in expected.items():
            response = httpx.get(f"{server.url}/picture/{photo}?{query}&v=t{n}", timeout=60)
            assert response.headers["x-cache"] == "MISS" and response.headers["etag"] == etag, (query, n)


# --- canonical numbers: one cache key, one set of render inputs ---


def test_numbers_that_share_a_cache_key_are_one_render_input():
    a = parse_options([("crop", "10.50001,20,300.4,200"), ("w", "100")], {})
    b = parse_options([("crop", "10.5,20,300,200"), ("w", "100")], {})
    assert a.cache_key() == b.cache_key() and a == b
    assert a.crop.to_pixels(1000, 1000) == b.crop.to_pixels(1000, 1000) == (11, 20, 300, 200)
    c = parse_options([("crop", "10.00004%,0,50%,50%"), ("g", "fp:0.12345,0.5"), ("mode", "crop")], {})
    d = parse_options([("crop", "10%,0,50%,50%"), ("g", "fp:0.1235,0.5"), ("mode", "crop")], {})
    assert c.cache_key() == d.cache_key() and c == d


def _number_text(draw, low: int, high: int) -> str:
    whole = draw(st.integers(low, high))
    digits = draw(st.text("0123456789", max_size=7))
    return f"{whole}.{digits}" if digits else str(whole)


GRAVITY_SPELLINGS = [["north", "fp:0.5,0", "fp:0.50000,0.00001"], ["center", "centre", "fp:0.5,0.5"], ["smart"]]


@st.composite
def _respelled(draw) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """A query whose numbers have up to 7 decimals (more than the key keeps), and the same query with
    every decimal past the 4th redrawn and gravity spelled another way (the same or another point)."""
    mode = draw(st.sampled_from(["fit", "crop", "pad", "stretch"]))
    query = [("mode", mode), ("w", "300"), ("h", "200")]
    if draw(st.booleans()):
        query.append(("g", draw(st.sampled_from([g for group in GRAVITY_SPELLINGS for g in group]))))
    if draw(st.booleans()):
        pct = "%" if draw(st.booleans()) else ""
        query.append(("crop", ",".join(_number_text(draw, 0, 20) + pct for _ in "xy")))
        query[-1] = ("crop", query[-1][1] + "," + ",".join(_number_text(draw, 30, 60) + pct for _ in "wh"))
    if draw(st.booleans()):
        query.append(("dpr", _number_text(draw, 1, 3)))
    if draw(st.booleans()):
        query.append(("sharpen", _number_text(draw, 1, 9) + draw(st.sampled_from(["", ",100,2", ",50,0"]))))
    if draw(st.booleans()):
        query.append(("blur", _number_text(draw, 0, 49)))

    def respell(item: str) -> str:
        whole, dot, digits = item.rstrip("%").partition(".")
        if not dot or not whole.isdigit():
            return item
        digits = digits[:4] + draw(st.text("0123456789", max_size=3))
        return whole + "." + digits + ("%" if item.endswith("%") else "")

    other = []
    for name, raw in query:
        if name == "g":
            group = next(group for group in GRAVITY_SPELLINGS if raw in group)
            raw = draw(st.sampled_from(group if draw(st.booleans()) else ["south", "fp:0.3,0.7", "smart"]))
        other.append((name, ",".join(respell(item) for item in raw.split(","))))
    return query, other


@settings(max_examples=500, deadline=None)
@given(_respelled())
def test_property_options_with_one_cache_key_are_the_same_render_inputs(pair):
    try:
        first, second = parse_options(pair[0], {}), parse_options(pair[1], {})
    except BadRequest:
        assume(False)
        return
    assert (first.cache_key() == second.cache_key()) == (first == second), pair
    if first == second and first.crop is not None:
        assert first.crop.to_pixels(1234, 987) == second.crop.to_pixels(1234, 987)


# --- encoding=auto keeps an animation animated ---


def _frames(body: bytes) -> int:
    with Image.open(io.BytesIO(body)) as image:
        return getattr(image, "n_frames", 1)


CHROME = "image/avif,image/webp,image/apng,image/svg+xml,image/*,*/*;q=0.8"


@pytest.mark.timeout(120)
@pytest.mark.parametrize("default_format", ["source", "auto"])
def test_encoding_auto_never_drops_an_animation(live_server, default_format):
    server = live_server({"render": {"default_format": default_format}})
    urls = ["/picture/photos/animated_earth.gif?w=80&encoding=auto"]
    if default_format == "auto":
        urls.append("/picture/photos/animated_earth.gif?w=80")
    asks = [  # Accept, the type answered; the avif-only class must not get the WebP cached for Chrome
        (CHROME, "image/webp"),
        ("image/avif,*/*", "image/gif"),
        ("image/webp,*/*", "image/webp"),
        ("*/*", "image/gif"),
    ]
    with server.client() as client:
        for url in urls:
            for accept, content_type in asks:
                for first in (True, False):
                    response = client.get(url, headers={"Accept": accept})
                    # without `encoding`, default_format = "auto" is the same request: one cache entry
                    cache = "MISS" if first and url == urls[0] else "HIT"
                    assert response.status_code == 200 and response.headers["x-cache"] == cache, (url, accept)
                    assert response.headers["content-type"] == content_type, (url, accept)
                    assert response.headers["vary"] == "Accept"
                    assert _frames(response.content) == 44, (url, accept)
        # a still source is unchanged: AVIF first
        still = client.get("/picture/photos/tree.webp?w=80&encoding=auto", headers={"Accept": CHROME})
        assert still.headers["content-type"] == "image/avif" and still.headers["vary"] == "Accept"
