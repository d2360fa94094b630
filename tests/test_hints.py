"""Client hints (SPEC §11): width=auto resolved from Sec-CH-* headers; unit tests of the resolution
and the hint parsing, then real servers answering with the right size, Vary and signing rule."""

from __future__ import annotations

import dataclasses
import io

import pytest
from PIL import Image

from imgproxy.config import Config, RenderConfig, SecurityConfig
from imgproxy.errors import BadRequest, ConfigError, Forbidden
from imgproxy.hints import (
    ACCEPT_CH,
    DPR,
    VIEWPORT_WIDTH,
    WIDTH,
    ClientHints,
    client_hints,
    hint_dpr,
    hint_width,
    resolve_width,
    round_up,
)
from imgproxy.html import WIDTH_STEPS, img_attrs, img_tag
from imgproxy.options import AUTO_DEVICE, AUTO_URL, parse_preset
from imgproxy.signing import check_request, signed_url

from .conftest import LiveServer

ON = dataclasses.replace(Config(), render=RenderConfig(client_hints=True))
KEY = "hints-key"


def auto(*pairs: tuple[str, str], config: Config = ON):
    return config.parse_query([("scalex", "auto"), *pairs])


def resolved(hints: ClientHints, *pairs: tuple[str, str], config: Config = ON):
    options, used = resolve_width(auto(*pairs, config=config), hints, config)
    return options.width, options.dpr, used


# --- parsing: a marker, pure ---------------------------------------------------------------------


def test_width_auto_parses_to_a_marker_that_records_a_given_dpr():
    assert auto().auto_width == AUTO_DEVICE and auto().width is None
    assert auto(("dpr", "2")).auto_width == AUTO_URL
    assert ON.parse_query([("w", " AUTO ")]).auto_width == AUTO_DEVICE
    assert auto(("preset", "small")).width == 540  # the preset's width stays, as the fallback
    with pytest.raises(AssertionError):  # never a key before the hints resolved it
        auto().cache_key()


def test_width_auto_without_client_hints_is_a_400_naming_the_parameter():
    with pytest.raises(BadRequest, match=r"^scalex: auto needs \[render\] client_hints"):
        Config().parse_query([("scalex", "auto")])
    with pytest.raises(BadRequest, match="^w: "):
        Config().parse_query([("w", "auto")])
    with pytest.raises(BadRequest, match="^width: .* is not a number"):
        ON.parse_query([("width", "autox")])


def test_presets_cannot_be_auto():
    with pytest.raises(ConfigError, match=r"presets\.wide\.width: auto is for URLs"):
        parse_preset("wide", {"width": "auto"})


# --- the hint values: strict, bounded, a bad one is absent ---------------------------------------


@pytest.mark.parametrize(
    "raw,expected",
    [("600", 600), (" 600\t", 600), ("1", 1), ("100000", 100_000), ("007", 7)]
    + [(bad, None) for bad in ("", "0", "-600", "+600", "600px", "600.5", "6e2", "100001", "9" * 17, "٦٠٠", "600,700")]
    + [(None, None)],
)
def test_hint_width(raw, expected):
    assert hint_width(raw) == expected


@pytest.mark.parametrize(
    "raw,expected",
    [("2", 2.0), ("2.625", 2.625), ("0.5", 0.5), ("10", 10.0), (" 1.5 ", 1.5)]
    + [(bad, None) for bad in ("", ".5", "2.", "1.2.3", "-2", "1e1", "inf", "nan", "0", "0.05", "10.5", "2x", "1" * 17)]
    + [(None, None)],
)
def test_hint_dpr(raw, expected):
    assert hint_dpr(raw) == expected


def test_hints_from_header_lines():
    lines = [(b"sec-ch-width", b"600"), (b"Sec-CH-DPR", b"2"), (b"sec-ch-viewport-width", b"wide"), (b"accept", b"*/*")]
    assert client_hints(lines) == ClientHints(width=600, viewport_width=None, dpr=2.0)
    # sent twice: ambiguous, so ignored like a bad value
    assert client_hints([(b"sec-ch-width", b"600"), (b"sec-ch-width", b"600")]).width is None
    assert client_hints([]) == ClientHints()


# --- resolution: every branch ----------------------------------------------------------------------


def test_sec_ch_width_is_physical_pixels_rounded_up_to_a_step():
    assert resolved(ClientHints(width=600, viewport_width=800, dpr=2.0)) == (640, 1.0, (WIDTH,))
    assert resolved(ClientHints(width=640)) == (640, 1.0, (WIDTH,))  # a step itself stays
    assert resolved(ClientHints(width=641)) == (768, 1.0, (WIDTH,))
    assert resolved(ClientHints(width=1)) == (WIDTH_STEPS[0], 1.0, (WIDTH,))


def test_viewport_width_times_dpr_when_no_width():
    used = (WIDTH, VIEWPORT_WIDTH, DPR)
    assert resolved(ClientHints(viewport_width=375, dpr=3.0)) == (1280, 1.0, used)  # 1125 -> 1280
    assert resolved(ClientHints(viewport_width=800)) == (960, 1.0, used)  # no DPR hint: x1
    assert resolved(ClientHints(viewport_width=800, dpr=0.5)) == (480, 1.0, used)  # zoomed out


def test_neither_hint_keeps_the_urls_own_width():
    used = (WIDTH, VIEWPORT_WIDTH)
    assert resolved(ClientHints(dpr=2.0)) == (None, 1.0, used)  # the source's size, as without width
    assert resolved(ClientHints(), ("preset", "small")) == (540, 1.0, used)  # the preset's, unrounded
    options, _ = resolve_width(auto(), ClientHints(), ON)
    assert options.cache_key() == ON.parse_query([]).cache_key()


def test_a_given_dpr_replaces_the_devices():
    # Sec-CH-Width over Sec-CH-DPR is the CSS width: 600 / 2 = 300 -> 320, then x the URL's 3
    assert resolved(ClientHints(width=600, dpr=2.0), ("dpr", "3")) == (320, 3.0, (WIDTH, DPR))
    assert resolved(ClientHints(width=300), ("dpr", "2")) == (320, 2.0, (WIDTH, DPR))  # no DPR hint: 1
    # the viewport is CSS pixels already: the device's DPR is not asked
    assert resolved(ClientHints(viewport_width=800, dpr=3.0), ("dpr", "2")) == (960, 2.0, (WIDTH, VIEWPORT_WIDTH))


def test_rounding_to_allowed_widths_and_above_the_largest():
    listed = dataclasses.replace(ON, security=SecurityConfig(allowed_widths=(700, 300)))
    assert resolved(ClientHints(width=300), config=listed)[0] == 300
    assert resolved(ClientHints(width=301), config=listed)[0] == 700
    assert resolved(ClientHints(width=5000), config=listed)[0] == 700  # above the largest: the largest
    assert resolved(ClientHints(width=100_000))[0] == WIDTH_STEPS[-1]
    # 1440 CSS px at the URL's dpr 3: 1600 x 3 would pass max_output_width 4096, so 1280 (3840 px)
    assert resolved(ClientHints(viewport_width=1440), ("dpr", "3"))[:2] == (1280, 3.0)
    assert round_up(3 * 0.1 * 1000, (300, 320)) == 300  # float noise (300.00000000000006) is not a pixel


def test_a_bad_hint_is_ignored_as_if_absent():
    hints = client_hints([(b"sec-ch-width", b"600px"), (b"sec-ch-viewport-width", b"800"), (b"sec-ch-dpr", b"1e9")])
    assert resolved(hints) == (960, 1.0, (WIDTH, VIEWPORT_WIDTH, DPR))


def test_a_resolved_width_shares_the_key_of_the_explicit_width():
    options, _ = resolve_width(auto(("encoding", "webp")), ClientHints(width=600), ON)
    assert options.cache_key() == ON.parse_query([("scalex", "640"), ("encoding", "webp")]).cache_key()
    options, _ = resolve_width(auto(("dpr", "2")), ClientHints(viewport_width=300), ON)
    assert options.cache_key() == ON.parse_query([("scalex", "320"), ("dpr", "2")]).cache_key()


def test_other_options_pass_through_untouched():
    options = ON.parse_query([("scalex", "640"), ("mode", "crop")])
    assert resolve_width(options, ClientHints(width=100), ON) == (options, ())


# --- signing ------------------------------------------------------------------------------------


def test_width_auto_passes_unsigned_exactly_when_allowed_widths_is_set():
    path = "/picture/a.jpg"
    for query in ("scalex=auto", "w=auto&encoding=auto", "width=auto&dpr=2&encoding=auto"):
        check_request(path, query, (KEY,), (320, 640))
        with pytest.raises(Forbidden, match="missing signature"):
            check_request(path, query, (KEY,), ())
    for query in ("scalex=auto&mode=crop", "scalex=auto&scalex=320", "scalex=AUTO", "scalex=auto&dpr=2.5"):
        with pytest.raises(Forbidden):
            check_request(path, query, (KEY,), (320, 640))


# --- HTML helpers ---------------------------------------------------------------------------------


def test_helpers_write_width_auto_with_sizes():
    assert img_attrs("a.jpg", width="auto", sizes="50vw", config=ON) == {
        "src": "/picture/a.jpg?scalex=auto",
        "sizes": "50vw",
    }
    markup = str(img_tag("a.jpg", width="auto", alt="A", config=ON))
    assert markup.startswith('<img src="/picture/a.jpg?scalex=auto" sizes="100vw" alt="A"')
    keyed = dataclasses.replace(ON, security=SecurityConfig(key=KEY, allowed_widths=(320,)))
    assert img_attrs("a.jpg", width="auto", config=keyed)["src"] == "/picture/a.jpg?scalex=auto"  # unsigned
    signed = dataclasses.replace(ON, security=SecurityConfig(key=KEY))
    assert img_attrs("a.jpg", width="auto", config=signed)["src"].startswith("/picture/a.jpg?scalex=auto&sig=")
    with pytest.raises(BadRequest, match="client_hints"):
        img_attrs("a.jpg", width="auto")
    with pytest.raises(ValueError, match="not a number or 'auto'"):
        img_attrs("a.jpg", width="wide", config=ON)
    with pytest.raises(ValueError, match="no widths or hidpi"):
        img_attrs("a.jpg", width="auto", hidpi=True, config=ON)


# --- real servers --------------------------------------------------------------------------------

SOURCE_WIDTH = 2700  # wider than every step, so the answer's width is the resolved one


def make_root(workdir) -> str:
    root = workdir / "images"
    root.mkdir(parents=True)
    Image.linear_gradient("L").resize((SOURCE_WIDTH, 300)).convert("RGB").save(root / "wide.jpg", quality=85)
    return str(root)


def start(tmp_path_factory, name: str, settings: dict):
    workdir = tmp_path_factory.mktemp(name)
    server = LiveServer(workdir, {"sources": {"local": {"root": make_root(workdir)}}, **settings})
    server.start()
    return server


@pytest.fixture(scope="module")
def hints_server(tmp_path_factory):
    server = start(tmp_path_factory, "hints-on", {"render": {"client_hints": True}})
    yield server
    server.stop()


@pytest.fixture(scope="module")
def keyed_server(tmp_path_factory):
    settings = {"render": {"client_hints": True}, "security": {"key": KEY, "allowed_widths": [200, 500, 1000]}}
    server = start(tmp_path_factory, "hints-keyed", settings)
    yield server
    server.stop()


def answered_width(body: bytes) -> int:
    with Image.open(io.BytesIO(body)) as image:
        return image.width


def test_server_sizes_width_auto_by_the_hints_with_vary(hints_server):
    cases = [
        ({"Sec-CH-Width": "600", "Sec-CH-DPR": "2"}, "", 640, "Sec-CH-Width"),
        (
            {"Sec-CH-Viewport-Width": "375", "Sec-CH-DPR": "3"},
            "",
            1280,
            "Sec-CH-Width, Sec-CH-Viewport-Width, Sec-CH-DPR",
        ),
        ({}, "", SOURCE_WIDTH, "Sec-CH-Width, Sec-CH-Viewport-Width"),
        (
            {"Sec-CH-Width": "600px", "Sec-CH-Viewport-Width": "700"},
            "",
            768,
            "Sec-CH-Width, Sec-CH-Viewport-Width, Sec-CH-DPR",
        ),
        ({"Sec-CH-Width": "600", "Sec-CH-DPR": "2"}, "&dpr=2", 640, "Sec-CH-Width, Sec-CH-DPR"),  # 320 x 2
        ({"Sec-CH-Width": "600", "Accept": "image/webp"}, "&encoding=auto", 640, "Accept, Sec-CH-Width"),
    ]
    with hints_server.client() as client:
        for headers, extra, width, vary in cases:
            response = client.get(f"/picture/wide.jpg?scalex=auto{extra}", headers=headers)
            assert response.status_code == 200, response.text
            print(headers, extra, "->", answered_width(response.content), response.headers["vary"])
            assert (answered_width(response.content), response.headers["vary"]) == (width, vary), headers
        head = client.head("/picture/wide.jpg?scalex=auto", headers={"Sec-CH-Width": "600"})
        assert head.status_code == 200 and head.content == b"" and head.headers["vary"] == "Sec-CH-Width"
        assert head.headers["x-cache"] == "HIT"  # the GET above stored it


def test_resolved_answer_shares_the_explicit_widths_entry(hints_server):
    with hints_server.client() as client:
        first = client.get("/picture/wide.jpg?w=auto&q=70", headers={"Sec-CH-Width": "900"})
        explicit = client.get("/picture/wide.jpg?w=960&q=70")
    assert (first.headers["x-cache"], explicit.headers["x-cache"]) == ("MISS", "HIT")
    assert explicit.headers["etag"] == first.headers["etag"] and explicit.content == first.content
    assert "vary" not in explicit.headers  # the explicit URL does not depend on hints
    assert answered_width(first.content) == 960


def test_pages_send_accept_ch(hints_server):
    with hints_server.client() as client:
        for path in ("/", "/playground"):
            assert client.get(path).headers["accept-ch"] == ACCEPT_CH
        assert "accept-ch" not in client.get("/picture/wide.jpg?scalex=100").headers


def test_signing_and_allowed_widths(keyed_server):
    with keyed_server.client() as client:
        unsigned = client.get("/picture/wide.jpg?scalex=auto", headers={"Sec-CH-Width": "600"})
        assert unsigned.status_code == 200 and answered_width(unsigned.content) == 1000  # rounded to the list
        huge = client.get("/picture/wide.jpg?scalex=auto", headers={"Sec-CH-Width": "99999999999999999"})
        huge_width = answered_width(huge.content)
        assert huge.status_code == 200 and huge_width == 1000 < SOURCE_WIDTH  # ignored: the largest listed width
        assert client.get("/picture/wide.jpg?scalex=640").status_code == 403  # not a listed width


def test_without_client_hints(tmp_path_factory):
    server = start(tmp_path_factory, "hints-off", {"security": {"key": KEY}})
    try:
        with server.client() as client:
            assert client.get("/picture/wide.jpg?scalex=auto").status_code == 403  # unsigned: no list
            url = signed_url("/picture/wide.jpg", [("scalex", "auto")], (KEY,))
            response = client.get(url, headers={"Sec-CH-Width": "600"})
            assert response.status_code == 400 and response.text.startswith("scalex: auto needs"), response.text
            assert "accept-ch" not in client.get("/").headers
    finally:
        server.stop()
