"""Option parsing: aliases, canonical cache keys, errors naming the parameter, fuzzing."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from imgproxy.config import DEFAULT_PRESETS, ConfigError
from imgproxy.errors import BadRequest, PayloadTooLarge
from imgproxy.options import ALIASES, RenderOptions, parse_options, parse_preset


def parse(query: str, **kw) -> RenderOptions:
    pairs = [tuple(p.split("=", 1)) for p in query.split("&") if p]
    return parse_options(pairs, DEFAULT_PRESETS, **kw)


def test_seed_url_parameters():
    o = parse("scalex=800&scaley=600&encoding=webp")
    assert (o.width, o.height, o.encoding) == (800, 600, "webp")


@pytest.mark.parametrize(
    "a, b",
    [
        ("w=800", "scalex=800.0"),
        ("width=800&h=600", "scaley=600&scalex=800"),
        ("fm=jpg", "encoding=jpeg"),
        ("format=webp&q=70", "encoding=webp&quality=70"),
        ("preset=thumbnail", "width=150&height=150&mode=crop"),
        ("p=small", "w=540"),
        ("scalex=799.6", "scalex=800"),
        ("g=fp:0.5,0.25&mode=crop", "gravity=fp:0.50,0.250&mode=crop"),
        ("bg=fff", "background=%23ffffff".replace("%23", "#")),
        ("bg=white", "background=#ffffffff"),
        ("dpr=2.0", "dpr=2"),
        ("enlarge=true", "enlarge=1"),
        ("v=abc", "cachebuster=abc"),
        ("mode=fit&gravity=north", "mode=fit"),  # gravity does not matter for fit
    ],
)
def test_spellings_share_a_cache_key(a, b):
    assert parse(a).cache_key() == parse(b).cache_key()


@pytest.mark.parametrize(
    "a, b",
    [
        ("w=800", "w=801"),
        ("w=800", "h=800"),
        ("fm=webp", "fm=avif"),
        ("v=1", "v=2"),
        ("mode=crop&g=north", "mode=crop&g=south"),
        ("crop=0,0,10,10", "crop=0,0,10%,10%"),
        ("blur=1", "sharpen=1"),
        ("q=80", "q=81"),
    ],
)
def test_different_requests_differ(a, b):
    assert parse(a).cache_key() != parse(b).cache_key()


def test_explicit_parameters_override_preset():
    o = parse("preset=thumbnail&w=300")
    assert (o.width, o.height, o.mode) == (300, 150, "crop")


@pytest.mark.parametrize(
    "query, names",
    [
        ("scalex=0", ["scalex", "1..100000"]),
        ("w=-5", ["w", "not a number"]),
        ("w=1e3", ["w", "not a number"]),
        ("w=nan", ["w", "not a number"]),
        ("w=inf", ["w"]),
        ("quality=101", ["quality", "1..100"]),
        ("q=0", ["q", "1..100"]),
        ("dpr=5", ["dpr", "1..4"]),
        ("dpr=0.5", ["dpr", "1..4"]),
        ("mode=zoom", ["mode", "fit, crop, pad, stretch"]),
        ("gravity=up", ["gravity", "smart"]),
        ("gravity=fp:2,0", ["gravity", "0..1"]),
        ("encoding=bmp", ["encoding", "jpeg, png"]),
        ("bg=notacolour", ["bg", "colour"]),
        ("crop=1,2,3", ["crop", "x,y,w,h"]),
        ("crop=0,0,150%,10", ["crop", "0..100%"]),
        ("sharpen=1,2", ["sharpen"]),
        ("blur=51", ["blur", "0..50"]),
        ("enlarge=maybe", ["enlarge"]),
        ("preset=huge", ["preset", "thumbnail"]),
        ("v=a/b", ["v", "URL-safe"]),
        ("w=1&w=2", ["w", "more than once"]),
        ("w=1&scalex=2", ["scalex", "more than once"]),
        ("colour=red", ["unknown parameter", "colour"]),
        ("w=" + "9" * 200, ["w", "longer than"]),
    ],
)
def test_errors_name_the_parameter(query, names):
    with pytest.raises(BadRequest) as err:
        parse(query)
    for name in names:
        assert name in err.value.message


def test_output_size_limits_are_413():
    with pytest.raises(PayloadTooLarge, match="width"):
        parse("w=3000&dpr=2", max_width=4096)
    assert parse("w=2048&dpr=2", max_width=4096).width == 2048


def test_sig_is_not_an_option():
    assert parse("w=10&sig=abc").width == 10


def test_colours():
    assert parse("bg=%23000".replace("%23", "#")).background == (0, 0, 0, 255)
    assert parse("bg=ff000080").background == (255, 0, 0, 128)
    assert parse("bg=rebeccapurple").background == (102, 51, 153, 255)


def test_crop_region_to_pixels():
    assert parse("crop=25%,25%,50%,50%").crop.to_pixels(400, 200) == (100, 50, 200, 100)
    with pytest.raises(BadRequest, match="not inside"):
        parse("crop=300,0,200,100").crop.to_pixels(400, 200)


def test_presets_are_checked_like_queries():
    with pytest.raises(ConfigError, match="presets.bad.width"):
        parse_preset("bad", {"width": 0})
    with pytest.raises(ConfigError, match="presets.bad.w"):
        parse_preset("bad", {"w": 10})
    assert parse_preset("ok", {"width": 10, "enlarge": True}).enlarge is True


names = st.sampled_from(sorted(ALIASES) + ["sig", "x", "W", ""])
values = st.one_of(
    st.text(max_size=80),
    st.sampled_from(["1", "0", "800", "2.5", "fp:0.1,0.9", "smart", "25%,25%,50%,50%", "1,100,2", "#fff", "auto"]),
)


@settings(max_examples=600, deadline=None)
@given(st.lists(st.tuples(names, values), max_size=8))
def test_fuzz_parser_only_raises_its_own_errors(pairs):
    try:
        o = parse_options(pairs, DEFAULT_PRESETS, 4096, 4096)
    except (BadRequest, PayloadTooLarge):
        return
    # whatever was accepted lies within bounds
    assert o.width is None or 1 <= o.width * o.dpr <= 4096
    assert o.height is None or 1 <= o.height * o.dpr <= 4096
    assert o.quality is None or 1 <= o.quality <= 100
    assert 1 <= o.dpr <= 4
    assert o.mode in ("fit", "crop", "pad", "stretch")
    assert 0 <= o.focal[0] <= 1 and 0 <= o.focal[1] <= 1
    assert o.blur is None or 0 < o.blur <= 50
    assert all(0 <= c <= 255 for c in o.background)
    assert isinstance(o.cache_key(), str)
