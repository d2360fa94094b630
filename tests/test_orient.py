"""rotate, flip, trim and pixelate (SPEC §12): parsing and canonical keys, the orientation algebra
against Pillow's transposes, geometry, and pixels of real photos against plain Pillow doing the
same steps one by one."""

from __future__ import annotations

import io
import itertools
import random
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image, ImageOps, ImageStat

from imgproxy.budget import Deadline, MemoryBudget
from imgproxy.config import DEFAULT_PRESETS, Config, LimitsConfig, LocalSourceConfig, RenderConfig, SourcesConfig
from imgproxy.errors import BadRequest, PayloadTooLarge
from imgproxy.geometry import output_size
from imgproxy.html import img_attrs
from imgproxy.loader import open_original
from imgproxy.options import RenderOptions, parse_options
from imgproxy.orient import FLIPS, TURNS, border_table, canonical, compose, content_box, inverse, user_orientation
from imgproxy.pipeline import render_original
from imgproxy.render import TRANSPOSE, render
from imgproxy.sources import LocalSource, Original

from .conftest import CORPUS, copy_from_corpus

T = Image.Transpose
PHOTO = CORPUS / "photos/progressive_dalmatian.jpg"  # 960x640
FORMATS = ("JPEG", "PNG", "GIF", "WEBP")
MB = 1000**2


def parse(query: str) -> RenderOptions:
    return parse_options([tuple(p.split("=", 1)) for p in query.split("&") if p], DEFAULT_PRESETS)  # type: ignore[misc]


def _numbered(w: int = 3, h: int = 2) -> Image.Image:
    image = Image.new("L", (w, h))
    image.putdata(list(range(w * h)))
    return image


def _turn(image: Image.Image, orientation: int) -> Image.Image:
    return image.transpose(TRANSPOSE[orientation]) if orientation in TRANSPOSE else image


def _by_hand(image: Image.Image, rotate: int, flip: str) -> Image.Image:
    """The user's steps one at a time with Pillow: rotate clockwise, then flip."""
    image = image.rotate(-rotate, expand=True)
    if "h" in flip:
        image = image.transpose(T.FLIP_LEFT_RIGHT)
    if "v" in flip:
        image = image.transpose(T.FLIP_TOP_BOTTOM)
    return image


# --- the orientation algebra ------------------------------------------------------------------


@pytest.mark.parametrize("orientation", range(1, 9))
def test_each_orientation_is_a_mirror_then_clockwise_turns(orientation):
    mirror, turns = TURNS[orientation]
    image = _numbered()
    expected = (image.transpose(T.FLIP_LEFT_RIGHT) if mirror else image).rotate(-90 * turns, expand=True)
    assert _turn(image, orientation).tobytes() == expected.tobytes()


def test_composing_two_orientations_is_applying_one_after_the_other():
    image = _numbered()
    for first, then in itertools.product(range(1, 9), repeat=2):
        both = _turn(_turn(image, first), then)
        once = _turn(image, compose(first, then))
        assert (once.size, once.tobytes()) == (both.size, both.tobytes()), (first, then)
    assert all(compose(o, inverse(o)) == 1 == compose(inverse(o), o) for o in range(1, 9))


@pytest.mark.parametrize("rotate, flip", list(itertools.product((0, 90, 180, 270), FLIPS)))
def test_user_orientation_and_its_canonical_spelling_turn_like_pillow(rotate, flip):
    image = _numbered()
    expected = _by_hand(image, rotate, flip)
    assert _turn(image, user_orientation(rotate, flip)).tobytes() == expected.tobytes()
    assert _by_hand(image, *canonical(rotate, flip)).tobytes() == expected.tobytes()
    assert canonical(rotate, flip)[1] in ("", "h")


# --- parsing and cache keys -------------------------------------------------------------------


@pytest.mark.parametrize(
    "a, b",
    [
        ("rot=90", "rotate=90"),
        ("rotate=0", ""),
        ("w=300&rotate=0", "w=300"),
        ("fl=h", "flip=H"),
        ("flip=hv", "rotate=180"),
        ("flip=hv&rotate=180", ""),
        ("flip=v", "rotate=180&flip=h"),
        ("rotate=90&flip=v", "rotate=270&flip=h"),
        ("rotate=270&flip=hv", "rotate=90"),
        ("t=10", "trim=10"),
        ("trim=9.6", "trim=10"),
        ("pix=8", "pixelate=8"),
    ],
)
def test_spellings_share_a_cache_key(a, b):
    assert parse(a).cache_key() == parse(b).cache_key()
    assert parse(a) == parse(b)  # the render sees the same options too


def test_keys_equal_exactly_when_the_turned_images_are_equal():
    image = _numbered()
    pairs = list(itertools.product((0, 90, 180, 270), FLIPS))
    for (r1, f1), (r2, f2) in itertools.product(pairs, repeat=2):
        one, other = _by_hand(image, r1, f1), _by_hand(image, r2, f2)
        same = (one.size, one.tobytes()) == (other.size, other.tobytes())
        a, b = (
            parse(f"rotate={r1}&flip={f1}" if f1 else f"rotate={r1}"),
            parse(f"rotate={r2}" + (f"&flip={f2}" if f2 else "")),
        )
        assert (a.cache_key() == b.cache_key()) == same, (r1, f1, r2, f2)


@pytest.mark.parametrize(
    "a, b",
    [("trim=0", ""), ("trim=0", "trim=1"), ("pix=2", "pix=3"), ("pix=2", ""), ("fl=h", "fl=v"), ("rot=90", "rot=270")],
)
def test_different_requests_differ(a, b):
    assert parse(a).cache_key() != parse(b).cache_key()


def test_defaults_add_nothing_to_existing_keys():
    key = parse("w=300&h=200&mode=crop&rotate=0").cache_key()
    assert key == RenderOptions(width=300, height=200, mode="crop").cache_key()
    assert not any(part.split("=")[0] in ("rot", "fl", "trim", "pix") for part in key.split("&"))


@pytest.mark.parametrize(
    "query, names",
    [
        ("rotate=45", ["rotate", "0, 90, 180, 270"]),
        ("rot=360", ["rot", "0, 90, 180, 270"]),
        ("rotate=-90", ["rotate", "0, 90, 180, 270"]),
        ("rotate=90.0", ["rotate"]),
        ("rotate=", ["rotate"]),
        ("flip=x", ["flip", "h, v, hv"]),
        ("fl=", ["fl", "h, v, hv"]),
        ("flip=hh", ["flip"]),
        ("trim=256", ["trim", "0..255"]),
        ("t=-1", ["t", "not a number"]),
        ("trim=top-left", ["trim", "not a number"]),
        ("pixelate=1", ["pixelate", "2..100"]),
        ("pix=101", ["pix", "2..100"]),
        ("pix=0", ["pix", "2..100"]),
        ("rotate=90&rot=90", ["rot", "more than once"]),
        ("trim=" + "1" * 100, ["trim", "longer than"]),
    ],
)
def test_errors_name_the_parameter(query, names):
    with pytest.raises(BadRequest) as err:
        parse(query)
    for name in names:
        assert name in err.value.message


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from(["rotate", "rot", "flip", "fl", "trim", "t", "pixelate", "pix"]),
    st.one_of(st.text(max_size=20), st.sampled_from(["0", "90", "180", "270", "h", "v", "hv", "2", "100", "255"])),
)
def test_fuzz_accepted_values_are_in_range(name, raw):
    try:
        o = parse_options([(name, raw)], {})
    except BadRequest as exc:
        assert name in exc.message
        return
    assert o.rotate in (0, 90, 180, 270) and o.flip in ("", "h")
    assert o.trim is None or 0 <= o.trim <= 255
    assert o.pixelate is None or 2 <= o.pixelate <= 100


# --- geometry ---------------------------------------------------------------------------------


def test_width_and_height_apply_to_the_turned_image():
    assert output_size(400, 300, parse("w=300&rotate=90")) == (300, 400)  # 4:3 landscape -> portrait
    assert output_size(400, 300, parse("w=300&rotate=180&flip=h")) == (300, 225)
    assert output_size(400, 300, parse("w=300&flip=v&rotate=90")) == (300, 400)
    # crop first, on the upright image: 200x100 of it, then turned to 100x200
    assert output_size(400, 300, parse("crop=0,0,200,100&rotate=270&h=100")) == (50, 100)
    assert output_size(400, 300, parse("w=300&trim=5")) is None  # only the pixels tell


def _png(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


def _render(data: bytes, query: str, fmt: str = "png", budget: MemoryBudget | None = None, key: str | None = None):
    original = Original(id="test:x", version="1", size=len(data), data=data)
    opened = open_original(original, LimitsConfig(), FORMATS)
    with opened.image:
        return render(
            opened, parse(query), fmt, RenderConfig(), Deadline(60), budget or MemoryBudget(0), source_key=key
        )


@settings(max_examples=40, deadline=None)
@given(
    rotate=st.sampled_from((0, 90, 180, 270)),
    flip=st.sampled_from(tuple(FLIPS)),
    mode=st.sampled_from(("fit", "crop", "pad", "stretch")),
    width=st.one_of(st.none(), st.integers(1, 90)),
    height=st.one_of(st.none(), st.integers(1, 90)),
    crop=st.booleans(),
)
def test_output_size_is_what_a_render_answers(rotate, flip, mode, width, height, crop):
    source = _png(Image.new("RGB", (64, 40), "teal"))
    query = f"rotate={rotate}&mode={mode}" + (f"&flip={flip}" if flip else "")
    query += (
        (f"&w={width}" if width else "") + (f"&h={height}" if height else "") + ("&crop=5,3,50%,30" if crop else "")
    )
    assert _render(source, query).size == output_size(64, 40, parse(query))


def test_img_attrs_announce_turned_sizes_and_none_for_trim():
    config = Config(sources=SourcesConfig(local=LocalSourceConfig(root=str(CORPUS))))
    attrs = img_attrs("photos/progressive_dalmatian.jpg", width=300, config=config, rotate=90)
    assert (attrs["width"], attrs["height"]) == (300, 450)
    trimmed = img_attrs("photos/progressive_dalmatian.jpg", width=300, config=config, trim=10)
    assert "width" not in trimmed and "height" not in trimmed
    assert "300w" in str(trimmed["srcset"])  # srcset falls back to the requested widths


# --- pixels of real photos against plain Pillow ------------------------------------------------


def _corners(image: Image.Image, patch: int = 6) -> list[tuple[float, ...]]:
    """Mean colour of a patch in each corner."""
    image = image.convert("RGB")
    w, h = image.size
    out = []
    for x, y in ((0, 0), (w - patch, 0), (0, h - patch), (w - patch, h - patch)):
        out.append(tuple(ImageStat.Stat(image.crop((x, y, x + patch, y + patch))).mean))
    return out


def _close(a: Image.Image, b: Image.Image, tolerance: float = 10.0) -> None:
    assert a.size == b.size
    for ca, cb in zip(_corners(a), _corners(b)):
        assert max(abs(x - y) for x, y in zip(ca, cb)) <= tolerance, (_corners(a), _corners(b))


def _file_render(path: Path, query: str, fmt: str = "png"):
    return _render(path.read_bytes(), query, fmt)


def _reference(path: Path, rotate: int, flip: str, width: int) -> Image.Image:
    """Plain Pillow: EXIF orientation, rotate, flip, then resize to `width`."""
    image = _by_hand(ImageOps.exif_transpose(Image.open(path)).convert("RGB"), rotate, flip)
    return image.resize((width, round(image.height * width / image.width)), Image.Resampling.LANCZOS)


@pytest.mark.parametrize("rotate, flip", list(itertools.product((0, 90, 180, 270), FLIPS)))
def test_rotated_and_flipped_photo_matches_pillow(rotate, flip):
    query = f"w=240&rotate={rotate}" + (f"&flip={flip}" if flip else "")
    got = _file_render(PHOTO, query).frames[0]
    _close(got, _reference(PHOTO, rotate, flip, 240))


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_and_rotate_apply_exactly_once(orientation):
    """Every Landscape_N is the same upright picture; each stored its own way."""
    path = CORPUS / f"photos/orientation/Landscape_{orientation}.jpg"
    got = _file_render(path, "w=200&rotate=90&flip=v").frames[0]
    upright = CORPUS / "photos/orientation/Landscape_1.jpg"
    _close(got, _reference(upright, 90, "v", 200), tolerance=14)
    assert got.size == (200, 300)


def test_crop_applies_on_the_upright_image_before_rotate():
    path = CORPUS / "photos/orientation/Landscape_6.jpg"  # stored 1200x1800, shown 1800x1200
    got = _file_render(path, "crop=100,50,900,600&rotate=270&w=200").frames[0]
    upright = ImageOps.exif_transpose(Image.open(path)).convert("RGB").crop((100, 50, 1000, 650))
    expected = upright.rotate(90, expand=True).resize((200, 300), Image.Resampling.LANCZOS)
    _close(got, expected)


# --- trim -------------------------------------------------------------------------------------

BORDER = (255, 0, 255)


def _bordered(fmt: str, size=(304, 208), at=(48, 64), canvas=(416, 336)) -> tuple[bytes, Image.Image]:
    """A photo pasted onto a uniform magenta border (edges on JPEG's 16-pixel blocks)."""
    photo = Image.open(PHOTO).convert("RGB").resize(size, Image.Resampling.LANCZOS)
    image = Image.new("RGB", canvas, BORDER)
    image.paste(photo, at)
    out = io.BytesIO()
    image.save(out, fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    return out.getvalue(), photo


@pytest.mark.parametrize("fmt, slack", [("PNG", 0), ("JPEG", 2)])
def test_trim_cuts_the_border_of_a_pasted_photo(fmt, slack):
    data, photo = _bordered(fmt)
    got = _render(data, "trim=40").frames[0]
    assert abs(got.width - 304) <= slack and abs(got.height - 208) <= slack, got.size
    if not slack:
        assert got.tobytes() == photo.tobytes()
    assert _render(data, "trim=40&w=152").size == (152, round(152 * got.height / got.width))
    assert _render(data, "trim=40&rotate=90").size == got.size[::-1]
    assert _render(data, "w=152").size == (152, 123)  # without trim the border stays


def test_trim_rotate_and_errors_through_the_live_server(live_server, writable_root):
    data, photo = _bordered("PNG")
    (writable_root / "bordered.png").write_bytes(data)
    copy_from_corpus("photos/orientation/Landscape_6.jpg", writable_root, "six.jpg")
    server = live_server({"sources": {"local": {"root": str(writable_root)}}})
    with server.client() as client:
        first = client.get("/picture/bordered.png?t=40&encoding=png")
        assert first.status_code == 200, first.text
        assert Image.open(io.BytesIO(first.content)).size == (304, 208)
        assert client.get("/picture/bordered.png?trim=40.0&fm=png").content == first.content
        turned = client.get("/picture/six.jpg?w=300&rot=90&fl=v&fm=png")
        assert turned.status_code == 200 and Image.open(io.BytesIO(turned.content)).size == (300, 450)
        same = client.get("/picture/six.jpg?w=300&rotate=270&flip=h&fm=png")  # one entry: the same bytes
        assert same.headers["etag"] == turned.headers["etag"] and same.content == turned.content
        for query, name in (("trim=300", "trim"), ("rot=45", "rot"), ("flip=up", "flip"), ("pix=1", "pix")):
            bad = client.get(f"/picture/bordered.png?{query}")
            assert bad.status_code == 400 and name in bad.text, (query, bad.text)


def test_trim_refers_to_the_top_left_pixel_after_rotate_and_flip():
    """Magenta border with a green band down the right edge: upright, the band is content; turned
    so that the band is on the left, the band is the border and the magenta is content."""
    image = Image.new("RGB", (400, 300), BORDER)
    image.paste(Image.new("RGB", (300, 200), "navy"), (40, 50))
    image.paste(Image.new("RGB", (10, 300), "lime"), (390, 0))
    data = _png(image)
    assert _render(data, "trim=0").size == (360, 300)  # x 40..400, the band spans every row
    assert _render(data, "trim=0&rotate=180").size == (390, 300)  # band is the border now
    assert _render(data, "trim=0&flip=h").size == (390, 300)
    assert _render(data, "trim=0&rotate=90").size == (300, 360)  # band on the bottom: content


def test_trim_after_crop_and_of_a_uniform_image():
    image = Image.new("RGB", (400, 300), BORDER)
    image.paste(Image.new("RGB", (100, 80), "navy"), (250, 180))
    data = _png(image)
    assert _render(data, "trim=0&crop=200,100,200,200").size == (100, 80)
    assert _render(data, "trim=0&crop=0,0,200,150").size == (200, 150)  # all border: untrimmed
    assert _render(_png(Image.new("RGB", (50, 40), "navy")), "trim=255").size == (50, 40)


def test_a_trimmed_shape_past_the_output_limits_is_413_and_a_larger_one_is_budgeted():
    image = Image.new("RGB", (400, 300), BORDER)
    image.paste(Image.new("RGB", (4, 300), "navy"), (200, 0))  # content: a 4x300 line
    data = _png(image)
    assert _render(data, "w=2000&enlarge=1").size == (2000, 1500)  # untrimmed: within 4096x4096
    with pytest.raises(PayloadTooLarge, match="150000"):
        _render(data, "w=2000&enlarge=1&trim=0")  # trimmed: 2000x150000
    # the 4x300 line at width 40 is 40x3000, a larger output than the untrimmed 40x30: its growth is
    # held too, and a render alone runs even when that takes it past the whole budget
    assert _render(data, "w=40&enlarge=1").size == (40, 30)
    for limit in (64 * MB, 1 * MB):
        budget = MemoryBudget(limit)
        assert _render(data, "w=40&enlarge=1&trim=0", budget=budget).size == (40, 3000)
        assert budget.used == 0
    assert _render(data, "trim=0&w=4&h=4&mode=crop&gravity=smart").size == (4, 4)


def test_trim_tolerance_counts_every_channel():
    image = Image.new("RGBA", (60, 50), (100, 100, 100, 255))
    image.paste(Image.new("RGBA", (10, 10), (100, 100, 100, 200)), (20, 20))  # differs in alpha only
    image.paste(Image.new("RGBA", (5, 5), (100, 130, 100, 255)), (40, 5))  # differs by 30 in green
    data = _png(image)
    assert _render(data, "trim=29").size == (25, 25)  # x 20..45, y 5..30
    assert _render(data, "trim=30").size == (10, 10)
    assert _render(data, "trim=54").size == (10, 10)
    assert _render(data, "trim=55").size == (60, 50)  # everything within: untrimmed


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_content_box_is_the_box_of_pixels_off_the_reference(data):
    w, h = data.draw(st.integers(1, 40)), data.draw(st.integers(1, 40))
    rng = random.Random(data.draw(st.integers(0, 10**6)))
    pixels = [(50, 60, 70)] * (w * h)
    for _ in range(data.draw(st.integers(0, 4))):
        pixels[rng.randrange(w * h)] = (rng.randrange(256), rng.randrange(256), rng.randrange(256))
    image = Image.new("RGB", (w, h))
    image.putdata(pixels)
    tolerance = data.draw(st.integers(0, 255))
    xs = [
        (i % w, i // w)
        for i, pixel in enumerate(pixels)
        if max(abs(a - b) for a, b in zip(pixel, (50, 60, 70))) > tolerance
    ]
    expected = (
        (min(x for x, _ in xs), min(y for _, y in xs), max(x for x, _ in xs) + 1, max(y for _, y in xs) + 1)
        if xs
        else None
    )
    assert content_box(image, (0, 0, w, h), border_table((50, 60, 70), tolerance)) == expected


def test_trim_of_an_animation_keeps_what_any_frame_shows():
    frames = []
    for i in range(3):
        frame = Image.new("RGB", (80, 60), "white")
        frame.paste(Image.new("RGB", (10, 10), "black"), (10 + 20 * i, 10 + 5 * i))
        frames.append(frame)
    out = io.BytesIO()
    frames[0].save(out, "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    rendered = _render(out.getvalue(), "trim=10", fmt="gif")
    assert len(rendered.frames) == 3 and rendered.size == (50, 20)  # x 10..60, y 10..30


def test_trim_gives_the_same_bytes_whatever_was_decoded_before():
    data, _ = _bordered("JPEG", size=(1504, 1008), at=(48, 64), canvas=(1616, 1136))
    cold = _render(data, "trim=40&w=300").frames[0].tobytes()
    budget = MemoryBudget(200 * MB, 100 * MB)
    _render(data, "w=100", budget=budget, key="k")  # a 1/8 decode (not kept: the source's first request)
    first = _render(data, "trim=40&w=300", budget=budget, key="k")  # decodes in full and keeps that
    again = _render(data, "trim=40&w=300", budget=budget, key="k")
    assert not first.reused_decode and again.reused_decode
    assert first.frames[0].tobytes() == again.frames[0].tobytes() == cold
    other = MemoryBudget(200 * MB, 100 * MB)
    for _ in range(2):  # the second untrimmed full-size render keeps the full decode
        _render(data, "w=1616", budget=other, key="k")
    from_other = _render(data, "trim=40&w=300", budget=other, key="k")
    assert from_other.reused_decode and from_other.frames[0].tobytes() == cold
    assert all(entry.users == 0 for entry in [*budget.kept.values(), *other.kept.values()])


def test_rotate_gives_the_same_bytes_from_a_kept_decode():
    path = CORPUS / "photos/orientation/Landscape_6.jpg"
    data = path.read_bytes()
    budget = MemoryBudget(200 * MB, 100 * MB)
    cold = _render(data, "rotate=90&flip=h&w=250").frames[0].tobytes()
    for _ in range(2):  # the second keeps the decode
        _render(data, "w=250", budget=budget, key="k")
    again = _render(data, "rotate=90&flip=h&w=250", budget=budget, key="k")
    assert again.reused_decode and again.frames[0].tobytes() == cold


# --- pixelate ---------------------------------------------------------------------------------


def _blocks_uniform(image: Image.Image, block: int, offset=(0, 0), size=None) -> bool:
    w, h = size or image.size
    for by in range(0, h, block):
        for bx in range(0, w, block):
            box = (offset[0] + bx, offset[1] + by, offset[0] + min(w, bx + block), offset[1] + min(h, by + block))
            if len(image.crop(box).getcolors(maxcolors=block * block) or ()) != 1:
                return False
    return True


def test_pixelate_makes_uniform_blocks_in_png_output():
    got = Image.open(io.BytesIO(_png(_file_render(PHOTO, "w=203&pix=8&sharpen=1").frames[0])))
    assert got.size == (203, 135)
    assert _blocks_uniform(got, 8)
    assert not _blocks_uniform(got, 16)  # blocks are 8, not more
    assert not _blocks_uniform(_file_render(PHOTO, "w=203").frames[0], 8)


def test_pixelate_blocks_sit_on_the_image_not_the_padding():
    got = _file_render(PHOTO, "w=300&h=300&mode=pad&pix=7&bg=red").frames[0]
    assert got.size == (300, 300)
    assert _blocks_uniform(got, 7, offset=(0, 50), size=(300, 200))
    assert got.getpixel((5, 5)) == (255, 0, 0)


def test_pixelate_every_frame_of_an_animation():
    rendered = _file_render(CORPUS / "photos/animated_earth.gif", "w=150&pix=6", fmt="gif")
    assert len(rendered.frames) == 44
    assert all(_blocks_uniform(frame, 6) for frame in rendered.frames[::11])


# --- one URL, one answer ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "photo", ["photos/large_12mp_bus.jpg", "photos/orientation/Landscape_6.jpg", "photos/alpha_dice.png"]
)
def test_same_url_same_bytes_fresh_and_after_other_renders_of_the_source(photo):
    config = Config()
    original = LocalSource(CORPUS, 10**9).load(photo)
    defaults = RenderConfig()
    warm = MemoryBudget(defaults.memory_budget, defaults.kept_decodes)
    # decodes at 1/1, 1/2, 1/4 kept (from the source's second request on)
    for query in ("w=2000", "w=1000", "w=600&rotate=90", "w=300&trim=10") * 2:
        render_original(original, parse(query), "jpeg", config, warm)
    assert warm.kept_bytes > 0
    for query in ("w=240&rotate=270&flip=h", "w=200&h=200&mode=crop&g=smart&flip=v&trim=10", "w=210&pix=6&rot=90"):
        fresh, _ = render_original(original, parse(query), "jpeg", config, MemoryBudget(0))
        again, _ = render_original(original, parse(query), "jpeg", config, MemoryBudget(0))
        after_others, _ = render_original(original, parse(query), "jpeg", config, warm)
        assert fresh == again == after_others, (photo, query)
