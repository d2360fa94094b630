"""Pure render steps, checked against Pillow doing the same work the slow way; kept decodes."""

import io
import random
import struct
import threading
import time
import zlib
from dataclasses import replace
from pathlib import Path

import pytest
from PIL import Image, ImageMode

from imgproxy.budget import Deadline, MemoryBudget, decoded_bytes
from imgproxy.config import LimitsConfig, RenderConfig
from imgproxy.errors import Overloaded, PayloadTooLarge
from imgproxy.loader import open_original
from imgproxy.options import parse_options
from imgproxy.render import (
    TRANSPOSE,
    _normalise_mode,
    header_orientation,
    orientation_of,
    oriented_size,
    render,
    stored_box,
)
from imgproxy.sources import Original

from .conftest import CORPUS


def _random_image(w, h, seed):
    rng = random.Random(seed)
    image = Image.new("RGB", (w, h))
    image.putdata([(rng.randrange(256), rng.randrange(256), rng.randrange(256)) for _ in range(w * h)])
    return image


@pytest.mark.parametrize("orientation", range(1, 9))
def test_stored_box_selects_the_same_pixels(orientation):
    stored = _random_image(7, 5, orientation)
    upright = stored.transpose(TRANSPOSE[orientation]) if orientation in TRANSPOSE else stored
    assert upright.size == oriented_size(7, 5, orientation)
    rng = random.Random(orientation)
    for _ in range(40):
        l, r = sorted(rng.sample(range(upright.width + 1), 2))
        t, b = sorted(rng.sample(range(upright.height + 1), 2))
        expected = upright.crop((l, t, r, b))
        box = tuple(int(v) for v in stored_box((l, t, r, b), orientation, *stored.size))
        got = stored.crop(box)
        if orientation in TRANSPOSE:
            got = got.transpose(TRANSPOSE[orientation])
        assert got.tobytes() == expected.tobytes(), (orientation, (l, t, r, b), box)


# --- kept decodes: MemoryBudget's in-memory decodes shared by later renders of the same source ---

MB = 1000**2  # the decodes below are round numbers of bytes: width x height x 4


def _decode_of(width, height):
    """An RGB image of width x height: 4 bytes per pixel in Pillow."""
    return Image.new("RGB", (width, height))


def _keep(budget, key, image, orientation):
    """keep() of a decode whose source is wanted (two renders of it queued: the admission rule is
    tests/test_budget.py's); the source is the key's part before "|"."""
    source = key.partition("|")[0]
    with budget.expecting(source), budget.expecting(source):
        return budget.keep(key, source, image, orientation)


def _find(budget, key, size):
    return budget.find(key, key.partition("|")[0], size)


def test_a_kept_decode_is_found_only_at_its_exact_size_and_pinned():
    budget = MemoryBudget(100 * MB, 40 * MB)
    big = _keep(budget, "a|1", _decode_of(2000, 1500), 6)  # 12 MB
    small = _keep(budget, "a|1", _decode_of(1000, 750), 6)  # 3 MB
    other = _keep(budget, "b|1", _decode_of(1000, 750), 1)
    for entry in (big, small, other):
        budget.release(entry)  # keep() pins for its caller
    assert budget.kept_bytes == 18 * MB
    assert _find(budget, "a|1", (1000, 750)) is small
    assert _find(budget, "a|1", (2000, 1500)) is big
    assert _find(budget, "a|1", (900, 700)) is None  # a larger decode would resample to other pixels
    assert _find(budget, "a|2", (1000, 750)) is None  # another version of the source
    assert _find(budget, "b|1", (1000, 750)).orientation == 1
    assert (small.users, big.users, other.users) == (1, 1, 1)


def test_one_decode_may_take_half_the_keep_limit_and_0_keeps_nothing():
    assert _keep(MemoryBudget(100 * MB, 24 * MB), "a|1", _decode_of(2000, 1500), 1) is not None  # 12 MB
    assert _keep(MemoryBudget(100 * MB, 23 * MB), "a|1", _decode_of(2000, 1500), 1) is None
    assert _keep(MemoryBudget(100 * MB, 0), "a|1", _decode_of(10, 10), 1) is None
    assert _keep(MemoryBudget(0, 48 * MB), "a|1", _decode_of(10, 10), 1) is None  # no budget, no keeping


def test_keeping_past_the_limit_drops_the_least_recently_used():
    budget = MemoryBudget(100 * MB, 30 * MB)
    for key in ("a|1", "b|1", "c|1"):
        budget.release(_keep(budget, key, _decode_of(2000, 1250), 1))  # 10 MB each: full
    budget.release(_find(budget, "a|1", (2000, 1250)))  # a is now the most recently used
    budget.release(_keep(budget, "d|1", _decode_of(2000, 1250), 1))
    assert {e.key for e in budget.kept.values()} == {"a|1", "c|1", "d|1"}
    assert budget.kept_bytes == 30 * MB


def test_forgetting_drops_every_kept_decode_and_a_reader_keeps_its_own():
    budget = MemoryBudget(100 * MB, 30 * MB)
    reading = _keep(budget, "a|1", _decode_of(2000, 1250), 1)
    budget.release(_keep(budget, "b|1", _decode_of(1000, 1250), 1))
    budget.forget_kept()  # `imgproxy cache clear` from another process
    assert budget.kept_bytes == 0
    assert _find(budget, "a|1", (2000, 1250)) is None and _find(budget, "b|1", (1000, 1250)) is None
    assert reading.image.size == (2000, 1250)
    budget.release(reading)
    assert reading.users == 0


def test_a_render_needing_room_evicts_kept_decodes_but_never_one_in_use():
    budget = MemoryBudget(40 * MB, 40 * MB)
    in_use = _keep(budget, "a|1", _decode_of(2000, 1250), 1)  # pinned: a render reads it
    budget.release(_keep(budget, "b|1", _decode_of(2000, 1250), 1))
    with budget.hold(25 * MB, Deadline(5)):
        assert [e.key for e in budget.kept.values()] == ["a|1"]
        assert budget.used + budget.kept_bytes == 35 * MB
    # a second render that fits only once the pinned decode is released waits for that
    got_room = threading.Event()

    def second_render():
        with budget.hold(35 * MB, Deadline(60)):  # generous: it should get room as soon as the decode is released
            got_room.set()

    with budget.hold(1 * MB, Deadline(5)):
        thread = threading.Thread(target=second_render)
        thread.start()
        deadline = time.monotonic() + 60
        while not budget._changed._waiters:  # CPython's Condition: the second render now waits in hold()
            assert time.monotonic() < deadline and thread.is_alive(), "the second render never waited"
            time.sleep(0.01)
        assert not got_room.is_set() and budget.kept_bytes == 10 * MB
    budget.release(in_use)
    thread.join(60)
    assert got_room.is_set() and budget.kept_bytes == 0


def _original(path: Path, version: str = "1") -> Original:
    return Original(id=f"local:{path.name}", version=version, size=path.stat().st_size, path=str(path))


def _render(path, budget, version="1", settings=RenderConfig(), **options):
    original = _original(path, version)
    opened = open_original(original, LimitsConfig(), ("JPEG", "PNG"))
    with opened.image:
        query = [(name, str(value)) for name, value in options.items()]
        return render(opened, parse_options(query, {}), "png", settings, Deadline(30), budget, source_key=original.key)


@pytest.mark.parametrize(
    "relative",
    [
        "photos/large_12mp_bus.jpg",
        "photos/orientation/Landscape_6.jpg",
        "photos/orientation/Landscape_8.jpg",
        "photos/orientation/exif_orientation3.png",
    ],
)
def test_a_kept_decode_gives_the_very_pixels_a_new_decode_gives(relative):
    path = CORPUS / relative
    budget = MemoryBudget(96 * MB, 48 * MB)
    first = _render(path, budget, width=600)  # not kept: the source's first request
    second = _render(path, budget, width=600)
    assert not first.reused_decode and not second.reused_decode and budget.kept_bytes > 0
    for options in (
        dict(width=300),
        dict(width=200, height=200, mode="crop", gravity="smart"),
        dict(width=250, crop="10%,20%,50%,50%"),
    ):
        _render(path, budget, **options)  # decodes at its own scale, unless that decode is kept already
        from_kept = _render(path, budget, **options)
        cold = _render(path, MemoryBudget(0), **options)
        assert from_kept.reused_decode and not cold.reused_decode
        assert from_kept.frames[0].tobytes() == cold.frames[0].tobytes(), options
    assert all(entry.users == 0 for entry in budget.kept.values())


def test_a_kept_decode_is_not_used_for_another_version_or_a_larger_need():
    path = CORPUS / "photos/large_12mp_bus.jpg"
    budget = MemoryBudget(96 * MB, 48 * MB)
    _render(path, budget, width=400)  # decoded at 1/8 scale
    assert not _render(path, budget, version="2", width=400).reused_decode
    assert not _render(path, budget, width=1200).reused_decode  # 1/8 is too small for it
    assert _render(path, budget, width=1100).reused_decode  # the 1/2 decode kept just now serves it


def test_a_render_that_does_not_resize_leaves_the_kept_decode_untouched():
    path = CORPUS / "photos/alpha_dice.png"
    budget = MemoryBudget(96 * MB, 48 * MB)
    for _ in range(2):  # the second request of the source keeps its decode
        _render(path, budget, width=100)
    kept = next(iter(budget.kept.values()))
    before = kept.image.tobytes()
    settings = replace(RenderConfig(), keep_icc=False)
    same_size = _render(path, budget, settings=settings, width=300, mode="pad", height=300, background="red")
    assert same_size.reused_decode and same_size.size == (300, 300)
    assert kept.image.tobytes() == before


# --- bounds: output canvases checked before the decode, animation frames budgeted, honest modes ---

FORMATS = ("JPEG", "PNG", "GIF", "WEBP")


def _opened(data: bytes, name: str = "x"):
    return open_original(Original(id=f"test:{name}", version="1", size=len(data), data=data), LimitsConfig(), FORMATS)


def _encoded(image: Image.Image, fmt: str, **params) -> bytes:
    out = io.BytesIO()
    image.save(out, fmt, **params)
    return out.getvalue()


def _render_bytes(data: bytes, query: dict, fmt: str = "png", budget=None, deadline=30.0):
    opened = _opened(data)
    with opened.image:
        options = parse_options([(k, str(v)) for k, v in query.items()], {})
        return render(opened, options, fmt, RenderConfig(), Deadline(deadline), budget or MemoryBudget(0))


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "GIF"])
@pytest.mark.parametrize(
    "query",
    [
        dict(height=1000, enlarge=1),  # width from the aspect ratio: 20000x1000
        dict(dpr=4, enlarge=1, mode="pad", height=200),  # pad canvas 16000x800
        dict(width=5000, height=5, mode="crop", enlarge=1),
        dict(dpr=4, enlarge=1, crop="0,0,100%,50%"),  # no size: the source's crop x dpr, 800x20
    ],
)
def test_an_output_past_the_limits_is_refused_before_the_decode(fmt, query):
    """The source's pixel data is cut off: a decode would fail (415), so a 413 shows none happened."""
    exif = Image.Exif()
    exif[0x0112] = 1  # a PNG tells its orientation before its pixels only with an eXIf chunk
    whole = _encoded(_random_image(200, 10, 1), fmt, exif=exif)
    limits = LimitsConfig(max_output_width=700, max_output_height=700)
    opened = _opened(whole[: len(whole) // 2])
    options = parse_options([(k, str(v)) for k, v in query.items()], {})
    with opened.image, pytest.raises(PayloadTooLarge, match="the limit is 700x700"):
        render(opened, options, "png", RenderConfig(), Deadline(30), limits=limits)


def test_a_png_without_its_orientation_is_refused_before_the_decode_when_both_ways_are_over():
    whole = _encoded(_random_image(200, 150, 1), "PNG")
    opened = _opened(whole[: len(whole) // 2])
    options = parse_options([("dpr", "4"), ("enlarge", "1")], {})  # 800x600 or 600x800
    limits = LimitsConfig(max_output_width=700, max_output_height=700)
    with opened.image, pytest.raises(PayloadTooLarge, match="800x600"):
        render(opened, options, "png", RenderConfig(), Deadline(30), limits=limits)


def _png_with_late_chunk(size: tuple[int, int], cid: bytes, payload: bytes, length: int | None = None) -> bytes:
    """A PNG with chunk `cid` after its pixels; `length`: what its header declares instead of the truth."""
    data = _encoded(_random_image(*size, 2), "PNG")
    declared = len(payload) if length is None else length
    chunk = struct.pack(">I", declared) + cid + payload + struct.pack(">I", zlib.crc32(cid + payload))
    iend = data.rindex(b"IEND") - 4
    return data[:iend] + chunk + data[iend:]


def _png_with_late_orientation(size: tuple[int, int], orientation: int) -> bytes:
    """A PNG whose eXIf chunk follows its pixels (allowed by older PNG extensions; Pillow reads it)."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    return _png_with_late_chunk(size, b"eXIf", exif.tobytes().removeprefix(b"Exif\x00\x00"))


def _png_with_late_xmp(size: tuple[int, int], orientation: int) -> bytes:
    xmp = f'<x:xmpmeta><rdf:RDF><rdf:Description tiff:Orientation="{orientation}"/></rdf:RDF></x:xmpmeta>'
    return _png_with_late_chunk(size, b"iTXt", b"XML:com.adobe.xmp\0\0\0\0\0" + xmp.encode())


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (_png_with_late_orientation((30, 20), 6), 6),
        (_png_with_late_xmp((30, 20), 8), 8),
        (_encoded(_random_image(30, 20, 2), "PNG"), 1),
    ],
    ids=["exif", "xmp", "none"],
)
def test_header_orientation_reads_what_follows_a_pngs_pixels_without_decoding_them(data, expected):
    """What html's sizes and the demo page read from a header: the decode's orientation, where
    orientation_of() would decode the pixels to find it (a 7000x7000 PNG: 200 MB, outside the budget)."""
    with _opened(data).image as image:
        assert header_orientation(image) == expected
        assert image.tile, "the pixels were decoded"
    with _opened(data).image as image:
        image.load()
        assert orientation_of(image) == expected


@pytest.mark.parametrize(
    "data",
    [
        _png_with_late_chunk((30, 20), b"eXIf", b"II*\x00", length=1 << 30),  # declares 1 GB
        _png_with_late_chunk((30, 20), b"zTXt", b"k\0\0" + zlib.compress(b"x" * 2_000_000)),  # a text bomb
    ],
    ids=["cut", "ztxt-bomb"],
)
def test_header_orientation_of_a_png_with_a_broken_trailer_is_upright(data):
    """Pillow's limits hold for the chunks read after the pixels; what it refuses is no orientation."""
    with _opened(data).image as image:
        assert header_orientation(image) == 1
        assert image.tile


def test_a_png_orientation_after_its_pixels_is_checked_exactly():
    # stored 200x10, upright 10x200: h=1000 is 50x1000 upright, 20000x1000 the stored way round
    upright_small = _png_with_late_orientation((200, 10), 6)
    assert "exif" not in _opened(upright_small).image.info  # unknown until the decode
    assert _render_bytes(upright_small, dict(height=1000, enlarge=1)).size == (50, 1000)
    # stored 10x200, upright 200x10: refused once the decode tells the orientation
    upright_wide = _png_with_late_orientation((10, 200), 6)
    with pytest.raises(PayloadTooLarge, match="20000x1000"):
        _render_bytes(upright_wide, dict(height=1000, enlarge=1))


@pytest.mark.parametrize("fmt", ["webp", "jpeg", "gif", "avif"])
def test_encoder_limits_are_checked_with_the_plan(fmt):
    opened = _opened(_encoded(_random_image(200, 2, 3), "PNG"))
    limits = LimitsConfig(max_output_width=100_000, max_output_height=100_000)
    side = {"webp": 16383, "jpeg": 65500, "gif": 65535, "avif": 65536}[fmt]
    options = parse_options([("h", str(side // 100 + 1)), ("enlarge", "1")], {}, 100_000, 100_000)
    with opened.image, pytest.raises(PayloadTooLarge, match=f"{fmt.upper()} allows at most {side} px"):
        render(opened, options, fmt, RenderConfig(), Deadline(30), limits=limits)


def _gif(frames: int, size: tuple[int, int]) -> bytes:
    images = [Image.new("RGB", size, (i * 6, 255 - i * 6, 99)) for i in range(frames)]
    return _encoded(images[0], "GIF", save_all=True, append_images=images[1:], duration=20)


def test_animation_frames_are_checked_against_max_animation_pixels():
    with pytest.raises(PayloadTooLarge, match="40 frames of 2048x2048"):
        _render_bytes(_gif(40, (16, 16)), dict(width=2048, height=2048, enlarge=1), fmt="gif")
    # the same source as a still image is one frame of 2048x2048
    assert _render_bytes(_gif(40, (16, 16)), dict(width=2048, height=2048, enlarge=1)).size == (2048, 2048)


@pytest.mark.parametrize(
    "fmt, query, frames",
    [
        ("gif", dict(width=300, height=300, enlarge=1), 40),  # 40 frames of 300x300: 14.4 MB
        ("png", dict(width=2000, height=2000, mode="pad", enlarge=1), 1),  # one 2000x2000 canvas: 16 MB
    ],
)
def test_output_frames_take_room_in_the_memory_budget_before_rendering(fmt, query, frames):
    """With 10 MB of a 20 MB budget held, a render whose output takes more than the rest waits
    (here until its deadline) instead of allocating its output beside it."""
    budget = MemoryBudget(20 * MB)
    source = _gif(40, (16, 16))
    with budget.hold(10 * MB, Deadline(30)), pytest.raises(Overloaded):
        _render_bytes(source, query, fmt=fmt, budget=budget, deadline=0.5)
    rendered = _render_bytes(source, query, fmt=fmt, budget=budget)
    assert len(rendered.frames) == frames and rendered.size == (query["width"], query["height"])
    assert budget.used == 0


def _stored_bytes(mode: str) -> int:
    """Pillow's memory per pixel: 4 for every multi-band mode, else the band's item size."""
    if len(ImageMode.getmode(mode).bands) > 1:
        return 4
    return int(ImageMode.getmode(mode).typestr[-1])


@pytest.mark.parametrize("mode", ["1", "L", "P", "PA", "LA", "RGB", "RGBA", "CMYK", "I;16", "I", "F", "YCbCr", "LAB"])
def test_decoded_bytes_counts_the_mode_a_render_converts_to(mode):
    image = Image.new(mode, (100, 50))
    converted = _normalise_mode(image)
    held = _stored_bytes(mode) + (_stored_bytes(converted.mode) if converted is not image else 0)
    assert decoded_bytes(image, working_set=1.0) >= 100 * 50 * held
