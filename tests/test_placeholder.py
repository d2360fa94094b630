"""Inline placeholders (SPEC §8, §11): the ThumbHash decoder against the reference decoder and the
encoder, and the HTML helpers' `placeholder=` markup against a real server's /info."""

from __future__ import annotations

import base64
import io
import json
import shutil
import time
import zlib
from html.parser import HTMLParser
from pathlib import Path

import jinja2
import pytest
from PIL import Image, ImageChops, ImageStat

from imgproxy import html, thumbhash
from imgproxy.config import load_config
from imgproxy.html import PLACEHOLDER_SIDE, img_attrs, img_size, img_tag, install_jinja, picture_tag

from .conftest import CORPUS, copy_from_corpus
from .origin import Origin

REFERENCE = Path(__file__).with_name("thumbhash_reference.json")
# opaque JPEG, WebP, a PNG with alpha, a portrait, and a JPEG turned by EXIF orientation 6
SOURCES = [
    "photos/large_9mp_harbour.jpg",
    "photos/tree.webp",
    "photos/alpha_dice.png",
    "photos/grayscale_portrait.jpg",
    "photos/orientation/Landscape_6.jpg",
]


def rgb(colour: str) -> tuple[int, ...]:
    return tuple(int(colour[i : i + 2], 16) for i in (1, 3, 5))


def image_of(hash_: bytes, side: int = 32) -> Image.Image:
    w, h, rgba = thumbhash.decode(hash_, side)
    return Image.frombytes("RGBA", (w, h), rgba)


def test_decoder_matches_the_reference_decoder():
    vectors = json.loads(REFERENCE.read_text())["vectors"]
    for vector in vectors:
        w, h, rgba = thumbhash.decode(base64.b64decode(vector["hash"]))
        expected = zlib.decompress(base64.b64decode(vector["rgba"]))
        assert (w, h) == (vector["w"], vector["h"])
        # the same float steps in another order: at most one level where a value sits on a boundary
        assert max(abs(a - b) for a, b in zip(rgba, expected)) <= 1, vector["hash"]
        assert len(rgba) == len(expected) == w * h * 4
    print(f"\n{len(vectors)} reference vectors: {[(v['w'], v['h']) for v in vectors]}")


@pytest.mark.parametrize("name", SOURCES[:4])
def test_decoder_against_the_encoder(name):
    with Image.open(CORPUS / name) as source:
        source.thumbnail((thumbhash.MAX_SIDE, thumbhash.MAX_SIDE))
        small = source.convert("RGBA")
    started = time.process_time()
    hash_ = thumbhash.encode(small.width, small.height, small.tobytes())
    encoded = time.process_time()
    decoded = image_of(hash_)
    decode_seconds = time.process_time() - encoded
    # the aspect ratio survives (to the hash's 1/7 or 1/5 steps) and so does the orientation
    ratio = small.width / small.height
    steps = 5 if hash_[2] & 0x80 else 7
    assert abs(thumbhash.aspect_ratio(hash_) - ratio) <= max(ratio, 1) / steps / 2 + 0.01
    assert (decoded.width >= decoded.height) == (small.width >= small.height)
    assert max(decoded.size) == 32
    # the decoded image averages to the hash's DC colour: its AC terms sum to zero over the pixels
    mean = ImageStat.Stat(decoded.convert("RGB")).mean
    assert max(abs(a - b) for a, b in zip(mean, thumbhash.average_rgb(hash_))) <= 2, (mean, hash_.hex())
    # and encoding what was decoded gives back about the same picture (a fixed point up to rounding)
    again = image_of(thumbhash.encode(decoded.width, decoded.height, decoded.tobytes()))
    assert again.size == decoded.size
    assert max(ImageStat.Stat(ImageChops.difference(again, decoded)).mean) < 10
    # alpha is kept where the source has it
    assert bool(hash_[2] & 0x80) == (ImageStat.Stat(small.getchannel("A")).extrema[0][0] < 255)
    print(f"\n{name}: encode {1000 * (encoded - started):.1f} ms, decode {1000 * decode_seconds:.1f} ms CPU")


def test_decoder_refuses_what_is_not_a_thumbhash():
    good = base64.b64decode(json.loads(REFERENCE.read_text())["vectors"][1]["hash"])
    for bad in (b"", good[:4], good[:-3], bytes([0, 0, 0, 0x80, 0x80]) + bytes(20)):
        with pytest.raises(ValueError):
            thumbhash.decode(bad)


class Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))


def parsed(markup: str) -> tuple[str, dict[str, str | None]]:
    parser = Tags()
    parser.feed(markup)
    assert len(parser.tags) == 1
    return parser.tags[0]


def data_image(uri: str) -> Image.Image:
    prefix = "data:image/png;base64,"
    assert uri.startswith(prefix)
    image = Image.open(io.BytesIO(base64.b64decode(uri[len(prefix) :], validate=True)))
    assert image.format == "PNG"
    return image


def test_img_tag_carries_the_placeholder_of_the_info_answer(corpus_server):
    config = load_config(corpus_server.config_path, environ={})
    figures = []
    with corpus_server.client() as client:
        for source in SOURCES:
            info = client.get(f"/info/{source}").json()
            started = time.process_time()
            markup = img_tag(source, width=320, alt="a photo", placeholder=True, config=config)
            first = time.process_time() - started
            name, attrs = parsed(markup)
            assert name == "img"
            # the srcset the helper writes without a placeholder, parked in data-srcset for the lazyloader
            plain = parsed(img_tag(source, width=320, alt="a photo", config=config))[1]
            assert attrs["data-srcset"] == plain["srcset"] and attrs["sizes"] == plain["sizes"]
            assert "srcset" not in attrs and "data-src" not in attrs
            assert "data-placeholder" in attrs and attrs["alt"] == "a photo"
            # the box is reserved at the size the 320-px request will have
            assert (int(attrs["width"]), int(attrs["height"])) == img_size(source, config, width=320)
            placeholder = data_image(attrs["src"])
            assert max(placeholder.size) == PLACEHOLDER_SIDE
            assert placeholder.mode == ("RGBA" if info["has_alpha"] else "RGB")
            # the placeholder is the source's shape (to ThumbHash's steps of a 7th, a 5th with alpha) ...
            steps = 5 if info["has_alpha"] else 7
            want = min(info["width"], info["height"]) / max(info["width"], info["height"])
            got = min(placeholder.size) / max(placeholder.size)
            assert (placeholder.width >= placeholder.height) == (info["width"] >= info["height"])
            assert abs(got - max(want, 1 / steps)) <= 0.5 / steps + 1 / PLACEHOLDER_SIDE, (placeholder.size, info)
            # ... and the same picture as /info's hash, whose average colour it keeps
            assert (
                placeholder.tobytes()
                == image_of(base64.b64decode(info["thumbhash"]), PLACEHOLDER_SIDE).convert(placeholder.mode).tobytes()
            )
            if not info["has_alpha"]:
                mean = ImageStat.Stat(placeholder).mean
                assert max(abs(a - b) for a, b in zip(mean, rgb(info["dominant_color"]))) <= 12, (mean, info)
            figures.append(f"{source}: {len(markup)} B tag, {len(attrs['src'])} B src, {1000 * first:.0f} ms CPU")
    print("\n" + "\n".join(figures))


def test_jinja_global_and_img_attrs_give_the_same_placeholder(corpus_server):
    config = load_config(corpus_server.config_path, environ={})
    env = jinja2.Environment(autoescape=True)
    install_jinja(env, config)
    rendered = env.from_string("{{ img_tag('photos/tree.webp', width=320, placeholder=True) }}").render()
    assert rendered == img_tag("photos/tree.webp", width=320, placeholder=True, config=config)
    attrs = img_attrs("photos/tree.webp", width=320, placeholder=True, config=config)
    assert parsed(rendered)[1]["src"] == attrs["src"] and attrs["data-placeholder"] is True
    dense = img_attrs("photos/tree.webp", width=320, placeholder=True, hidpi=True, config=config)
    assert dense["data-srcset"] == img_attrs("photos/tree.webp", width=320, hidpi=True, config=config)["srcset"]
    assert dense["src"] == attrs["src"] and str(dense["data-srcset"]).endswith(" 2x")


def test_picture_tag_parks_every_srcset(corpus_server):
    config = load_config(corpus_server.config_path, environ={})
    parser, plain = Tags(), Tags()
    parser.feed(picture_tag("photos/tree.webp", width=320, alt="a tree", placeholder=True, config=config))
    plain.feed(picture_tag("photos/tree.webp", width=320, alt="a tree", config=config))
    assert [tag for tag, _ in parser.tags] == ["picture", "source", "source", "img"]
    for (tag, attrs), (_, without) in zip(parser.tags[1:], plain.tags[1:]):
        assert attrs["data-srcset"] == without["srcset"] and "srcset" not in attrs, tag
    img = parser.tags[-1][1]
    assert img["src"] == img_attrs("photos/tree.webp", width=320, placeholder=True, config=config)["src"]
    assert "data-placeholder" in img and (img["width"], img["height"]) == (
        plain.tags[-1][1]["width"],
        plain.tags[-1][1]["height"],
    )


def test_the_placeholder_follows_the_source_version(live_server, writable_root, monkeypatch):
    copy_from_corpus("photos/tree.webp", writable_root, "a.img")
    copy_from_corpus("photos/grayscale_portrait.jpg", writable_root, "b.jpg")
    server = live_server({"sources": {"local": {"root": str(writable_root)}}})
    config = load_config(server.config_path, environ={})
    monkeypatch.setattr(html, "PLACEHOLDERS_KEPT", 2)
    monkeypatch.setattr(html, "_placeholders", type(html._placeholders)())
    with server.client() as client:
        before = img_attrs("a.img", width=320, placeholder=True, config=config)["src"]
        [first_version] = [key[0] for key in html._placeholders]
        shutil.copyfile(CORPUS / "photos/alpha_dice.png", writable_root / "a.img")
        after = img_attrs("a.img", width=320, placeholder=True, config=config)["src"]
        info = client.get("/info/a.img").json()
        img_attrs("b.jpg", width=320, placeholder=True, config=config)
    assert before != after and info["has_alpha"] and data_image(after).mode == "RGBA"
    assert after == html.placeholder_uri(base64.b64decode(info["thumbhash"]))
    # bounded: with room for two, the replaced version went first
    kept = [key[0] for key in html._placeholders]
    assert len(kept) == 2 and first_version not in kept and kept[-1].startswith("local:") and "b.jpg" in kept[-1]


def test_remote_sources_take_a_thumbhash_or_go_without(live_server):
    origin = Origin().start()
    try:
        server = live_server({"sources": {"remote": {"allowed_hosts": ["127.0.0.1"], "allow_private_addresses": True}}})
        config = load_config(server.config_path, environ={})
        url = origin.url("/photos/alpha_dice.png")
        with server.client() as client:
            info = client.get(f"/info/{url}").json()
        hits = origin.hits("/photos/alpha_dice.png")
        # True: no fetch while the page renders; the ordinary markup, without a placeholder
        assert img_tag(url, width=300, placeholder=True, config=config) == img_tag(url, width=300, config=config)
        assert origin.hits("/photos/alpha_dice.png") == hits
        # a hash the app kept from /info (or from the upload's answer) gives the placeholder
        given = parsed(img_tag(url, width=300, placeholder=info["thumbhash"], config=config))[1]
        assert data_image(given["src"]).size[0] == PLACEHOLDER_SIDE and "data-placeholder" in given
        for bad in ("not base64!", "AAAA", base64.b64encode(b"\x00" * 5).decode()):
            with pytest.raises(ValueError, match="ThumbHash"):
                img_tag(url, width=300, placeholder=bad, config=config)
    finally:
        origin.stop()


@pytest.mark.parametrize("name", ["bad/truncated_image.png", "bad/decompression_bomb.gif", "bad/giant-image.jpg"])
def test_sources_info_refuses_get_the_ordinary_markup_quickly(corpus_server, name):
    config = load_config(corpus_server.config_path, environ={})
    with corpus_server.client() as client:
        assert 400 <= client.get(f"/info/{name}").status_code < 500
    started = time.process_time()
    markup = img_tag(name, width=320, alt="", placeholder=True, config=config)
    assert markup == img_tag(name, width=320, alt="", config=config)
    assert time.process_time() - started < 5  # refused on the header, not decoded (CPU time: a bound, not a goal)
