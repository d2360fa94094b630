"""imgproxy.html helpers and the demo page: unit tests, plus checks against a real server that the
`width`/`height` attributes are what `/picture` answers and that the page is served as promised."""

from __future__ import annotations

import dataclasses
import io
from html.parser import HTMLParser
from urllib.parse import parse_qsl, urlsplit

import jinja2
import pytest
from PIL import Image

from imgproxy.config import Config, LocalSourceConfig, SecurityConfig, SourcesConfig, load_config
from imgproxy.errors import BadRequest
from imgproxy.html import img_attrs, img_size, img_tag, install_jinja, picture_tag, picture_url, srcset
from imgproxy.signing import check_request

from .conftest import CORPUS, LiveServer, copy_from_corpus
from .test_render import _png_with_late_orientation, _png_with_late_xmp

CONFIG = Config(sources=SourcesConfig(local=LocalSourceConfig(root=str(CORPUS))))
SIGNED = dataclasses.replace(CONFIG, security=SecurityConfig(keys=("new-key", "old-key"), allowed_widths=(320, 640)))
DICE = "photos/alpha_dice.png"  # 300x225
DALMATIAN = "photos/progressive_dalmatian.jpg"  # 960x640
ROTATED = "photos/orientation/Landscape_6.jpg"  # stored 1200x1800, EXIF 6: shown 1800x1200


class Tags(HTMLParser):
    """(tag, attrs) of every start tag, in order."""

    def __init__(self, markup: str):
        super().__init__()
        self.found: list[tuple[str, dict[str, str | None]]] = []
        self.feed(str(markup))

    def handle_starttag(self, tag, attrs):
        self.found.append((tag, dict(attrs)))


def query_of(url: str) -> list[tuple[str, str]]:
    return parse_qsl(urlsplit(url).query, keep_blank_values=True)


def verify_signed(url: str, config: Config) -> None:
    path, _, query = url.partition("?")
    check_request(path, query, config.security.signing_keys, config.security.allowed_widths)


def srcset_entries(value: str) -> list[tuple[str, int]]:
    return [(url, int(desc.removesuffix("w"))) for url, desc in (item.split(" ") for item in value.split(", "))]


# --- picture_url -----------------------------------------------------------------------------


def test_picture_url_writes_primary_query_names():
    url = picture_url(
        DICE,
        CONFIG,
        width=320,
        height=200.0,
        mode="crop",
        gravity="fp:0.3,0.7",
        background="#ff0000",
        enlarge=True,
        crop=(10, 10, 50, 50),
        version="2024-a",
    )
    assert url == (
        "/picture/photos/alpha_dice.png?scalex=320&scaley=200&mode=crop&gravity=fp:0.3,0.7"
        "&background=%23ff0000&enlarge=1&crop=10,10,50,50&v=2024-a"
    )


def test_picture_url_accepts_aliases_and_skips_none():
    assert (
        picture_url(DICE, CONFIG, w=100, fm="webp", height=None)
        == "/picture/photos/alpha_dice.png?scalex=100&encoding=webp"
    )
    assert picture_url(DICE, CONFIG) == "/picture/photos/alpha_dice.png"


def test_picture_url_quotes_the_source():
    assert picture_url("my photos/ä?.jpg", CONFIG) == "/picture/my%20photos/%C3%A4%3F.jpg"
    assert picture_url("https://img.example.com/a b.jpg?x=1", CONFIG, width=10) == (
        "/picture/https://img.example.com/a%20b.jpg%3Fx%3D1?scalex=10"
    )


def test_picture_url_rejects_typos_and_bad_values_when_the_page_is_built():
    with pytest.raises(ValueError, match="widht"):
        picture_url(DICE, CONFIG, widht=100)
    with pytest.raises(BadRequest, match="quality"):
        picture_url(DICE, CONFIG, quality=101)
    with pytest.raises(BadRequest, match="preset"):
        picture_url(DICE, CONFIG, preset="no-such-preset")


def test_signed_urls_verify_with_the_servers_check():
    url = picture_url(DICE, SIGNED, width=100, mode="crop")
    assert query_of(url)[-1][0] == "sig"
    verify_signed(url, SIGNED)
    # the first key signs; a server that only knows the old key refuses it
    old_only = dataclasses.replace(SIGNED, security=SecurityConfig(key="old-key", allowed_widths=(320, 640)))
    with pytest.raises(Exception, match="bad signature"):
        verify_signed(url, old_only)


def test_allowed_width_urls_stay_unsigned():
    for params in ({"width": 320}, {"width": 640, "encoding": "auto"}, {"width": 320, "dpr": 2}):
        url = picture_url(DICE, SIGNED, **params)
        assert "sig=" not in url
        verify_signed(url, SIGNED)
    assert "sig=" in picture_url(DICE, SIGNED, width=330)
    assert "sig=" in picture_url(DICE, SIGNED, width=320, encoding="webp")


# --- srcset, img_attrs, tags ----------------------------------------------------------------


def test_srcset_describes_real_widths_and_collapses_beyond_the_source():
    value = srcset(DICE, [100, 200, 320, 640], CONFIG)
    assert value == (
        "/picture/photos/alpha_dice.png?scalex=100 100w, /picture/photos/alpha_dice.png?scalex=200 200w, "
        "/picture/photos/alpha_dice.png?scalex=320 300w"
    )


def test_srcset_of_an_unknown_size_uses_the_requested_widths():
    value = srcset("https://img.example.com/a.jpg", [640, 320], CONFIG, encoding="webp")
    assert [w for _, w in srcset_entries(value)] == [320, 640]
    assert all(dict(query_of(url))["encoding"] == "webp" for url, _ in srcset_entries(value))


def test_img_attrs_reads_the_size_from_the_header_with_exif_orientation():
    attrs = img_attrs(ROTATED, width=600, config=CONFIG)
    assert (attrs["width"], attrs["height"]) == (600, 400)
    assert attrs["src"] == "/picture/photos/orientation/Landscape_6.jpg?scalex=600"
    assert attrs["sizes"] == "(max-width: 600px) 100vw, 600px"
    widths = [w for _, w in srcset_entries(attrs["srcset"])]
    assert widths == sorted(widths) and 600 in widths and max(widths) <= 1200


def test_img_attrs_without_a_known_size_leaves_width_and_height_out():
    attrs = img_attrs("photos/missing.jpg", width=300, config=CONFIG)
    assert "width" not in attrs and "height" not in attrs


def test_img_tag_escapes_everything():
    markup = img_tag(
        'x"><script>.jpg', width=100, alt='say "hi" <b>&', attrs={"class": 'a"b', "data-x": "<"}, config=CONFIG
    )
    assert "<script>" not in markup and "<b>" not in markup
    ((tag, attrs),) = Tags(markup).found
    assert tag == "img"
    assert attrs["alt"] == 'say "hi" <b>&'
    assert attrs["class"] == 'a"b' and attrs["data-x"] == "<"
    assert attrs["src"] == "/picture/x%22%3E%3Cscript%3E.jpg?scalex=100"
    assert attrs["loading"] == "lazy"


def test_img_tag_attrs_override_and_remove_defaults():
    ((_, attrs),) = Tags(
        img_tag(DICE, width=100, attrs={"loading": None, "fetchpriority": "high"}, config=CONFIG)
    ).found
    assert "loading" not in attrs and attrs["fetchpriority"] == "high"


def test_picture_tag_has_a_source_per_format_then_the_img():
    markup = picture_tag(DALMATIAN, widths=[320, 640, 1280], sizes="50vw", alt="dog", config=CONFIG)
    tags = Tags(markup).found
    assert [t for t, _ in tags] == ["picture", "source", "source", "img"]
    for (_, attrs), fmt in zip(tags[1:3], ("avif", "webp")):
        assert attrs["type"] == f"image/{fmt}" and attrs["sizes"] == "50vw"
        entries = srcset_entries(attrs["srcset"])
        assert [w for _, w in entries] == [320, 640, 960]
        assert all(dict(query_of(url))["encoding"] == fmt for url, _ in entries)
    img = tags[3][1]
    assert img["alt"] == "dog" and (img["width"], img["height"]) == ("960", "640")
    assert "encoding" not in dict(query_of(img["src"]))


def test_picture_tag_from_presets_signs_what_needs_it():
    markup = picture_tag(DALMATIAN, presets=["small", "medium", "thumbnail"], formats=("webp",), config=SIGNED)
    (_, source) = Tags(markup).found[1]
    entries = srcset_entries(source["srcset"])
    assert [w for _, w in entries] == [150, 540, 768]
    for url, _ in entries:
        verify_signed(url, SIGNED)


def test_picture_tag_rejects_an_unknown_format():
    with pytest.raises(ValueError, match="tiff"):
        picture_tag(DICE, widths=[100], formats=("tiff",), config=CONFIG)


def test_jinja_globals():
    env = jinja2.Environment(autoescape=True)
    install_jinja(env, SIGNED)
    html = env.from_string(
        "{{ picture_tag(src, widths=[320, 640]) }}|{{ img_tag(src, width=320) }}|"
        "<a href='{{ picture_url(src, width=330) }}'>|{{ srcset(src, [320]) }}|{{ img_attrs(src, width=320).height }}"
    ).render(src=DALMATIAN)
    picture, img, link, plain, height = html.split("|")
    assert picture.startswith('<picture><source type="image/avif"') and img.startswith("<img ")
    assert "&amp;sig=" in link  # URLs are escaped inside attributes by the template
    assert plain == "/picture/photos/progressive_dalmatian.jpg?scalex=320 320w"
    assert height == "213"


# --- against the real server -----------------------------------------------------------------

SIZE_CASES = [
    (DICE, {"width": 200}),
    (DICE, {"width": 3000}),
    (DALMATIAN, {"width": 300, "height": 300, "mode": "crop"}),
    (DALMATIAN, {"width": 2000, "height": 2000, "mode": "pad", "encoding": "webp"}),
    (DALMATIAN, {"height": 101}),
    (DALMATIAN, {"width": 150, "dpr": 2}),
    (DALMATIAN, {"crop": "25%,25%,50%,50%", "width": 400}),
    (DALMATIAN, {"width": 500, "height": 100, "mode": "stretch"}),
    (DALMATIAN, {"preset": "thumbnail"}),
    (ROTATED, {"width": 300}),
    ("photos/animated_earth.gif", {"width": 123}),
]


@pytest.mark.timeout(120)
def test_width_and_height_attributes_match_what_the_server_answers(corpus_server):
    config = load_config(corpus_server.config_path, environ={})
    with corpus_server.client() as client:
        for source, params in SIZE_CASES:
            attrs = img_attrs(source, config=config, **params)
            response = client.get(attrs["src"])
            assert response.status_code == 200, (source, params, response.text)
            with Image.open(io.BytesIO(response.content)) as image:
                assert image.size == (attrs["width"], attrs["height"]), (source, params)


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """A server whose demo folder holds an image whose name needs escaping, and a non-image."""
    workdir = tmp_path_factory.mktemp("site")
    root = workdir / "images"
    copy_from_corpus(DICE, root, 'demo/a "quoted" <name>.png')
    copy_from_corpus(DICE, root, "demo/notes.txt")
    server = LiveServer(workdir, {"sources": {"local": {"root": str(root)}}})
    server.start()
    yield server
    server.stop()


@pytest.mark.timeout(60)
def test_demo_page_is_served_with_its_own_policy(site):
    with site.client() as client:
        response = client.get("/")
        script = client.get("/static/lazyload.js")
        css = client.get("/static/demo.css")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    policy = response.headers["content-security-policy"]
    assert "script-src 'self'" in policy and "img-src 'self' data:" in policy and "style-src 'self'" in policy
    assert "unsafe-inline" not in policy
    assert script.status_code == 200 and "javascript" in script.headers["content-type"]
    assert css.status_code == 200 and css.headers["content-type"].startswith("text/css")

    tags = Tags(response.text).found
    forms = [a for t, a in tags if t == "form"]
    assert forms == [{"id": "upload-form", "method": "post", "action": "/upload", "enctype": "multipart/form-data"}]
    file_input = next(a for t, a in tags if t == "input")
    assert (file_input["type"], file_input["name"]) == ("file", "image")
    # no inline code or styles: everything the policy allows comes from this origin
    assert all("style" not in a and not any(k.startswith("on") for k in a) for _, a in tags)
    assert all(a.get("src") for t, a in tags if t == "script")


@pytest.mark.timeout(60)
def test_demo_page_lists_the_sample_images_escaped(site):
    with site.client() as client:
        page = client.get("/").text
        tags = Tags(page).found
        lazy = [a for t, a in tags if t == "img" and "data-src" in a]
        names = [a["alt"] for a in lazy]
        assert names == sorted(names) and 'demo/a "quoted" <name>.png' in names
        assert not any("notes.txt" in (a.get("data-src") or "") for a in lazy)
        # one <picture> per image in the <picture> section, and one for the photo the page leads with
        assert len([t for t, _ in tags if t == "picture"]) == len(lazy) + 1
        quoted = next(a for a in lazy if "quoted" in a["alt"])
        assert quoted["data-src"] == "/picture/demo/a%20%22quoted%22%20%3Cname%3E.png"
        assert (quoted["width"], quoted["height"]) == ("300", "225")
        assert client.get(quoted["data-src"] + "?scalex=100").status_code == 200


@pytest.mark.timeout(120)
def test_img_size_is_what_the_server_answers(corpus_server):
    config = load_config(corpus_server.config_path, environ={})
    assert img_size("photos/missing.jpg", config=config, width=10) is None
    assert img_size("https://example.com/a.jpg", config=config, width=10) is None
    with corpus_server.client() as client:
        for source, params in SIZE_CASES:
            response = client.get(picture_url(source, config=config, **params))
            assert response.status_code == 200, (source, params, response.text)
            with Image.open(io.BytesIO(response.content)) as image:
                assert img_size(source, config=config, **params) == image.size, (source, params)


def test_sizes_of_a_png_oriented_after_its_pixels_come_from_the_header(tmp_path):
    """The orientation of an eXIf or XMP chunk after the pixels turns the size, as the render
    does (tests/test_render.py checks the render), without decoding the pixels."""
    (tmp_path / "exif.png").write_bytes(_png_with_late_orientation((300, 200), 6))
    (tmp_path / "xmp.png").write_bytes(_png_with_late_xmp((300, 200), 8))
    config = Config(sources=SourcesConfig(local=LocalSourceConfig(root=str(tmp_path))))
    for source in ("exif.png", "xmp.png"):
        assert img_size(source, config=config) == (200, 300)
        assert img_size(source, config=config, width=100) == (100, 150)
        assert [w for _, w in srcset_entries(srcset(source, [100, 400], config))] == [100, 200]
