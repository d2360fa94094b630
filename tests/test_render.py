"""Pure render steps, checked against Pillow doing the same work the slow way; kept decodes."""

import random
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest
from PIL import Image, ImageChops, ImageStat

from imgproxy.budget import Deadline, MemoryBudget
from imgproxy.config import LimitsConfig, RenderConfig
from imgproxy.loader import open_original
from imgproxy.options import parse_options
from imgproxy.render import TRANSPOSE, oriented_size, render, stored_box
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


def test_the_smallest_kept_decode_large_enough_is_found_and_pinned():
    budget = MemoryBudget(100 * MB, 40 * MB)
    big = budget.keep("a|1", _decode_of(2000, 1500), 6)  # 12 MB
    small = budget.keep("a|1", _decode_of(1000, 750), 6)  # 3 MB
    other = budget.keep("b|1", _decode_of(1000, 750), 1)
    for entry in (big, small, other):
        budget.release(entry)  # keep() pins for its caller
    assert budget.kept_bytes == 18 * MB
    assert budget.find("a|1", (900, 700)) is small
    assert budget.find("a|1", (1001, 700)) is big
    assert budget.find("a|1", (2001, 10)) is None
    assert budget.find("a|2", (10, 10)) is None  # another version of the source
    assert budget.find("b|1", (10, 10)).orientation == 1
    assert (small.users, big.users, other.users) == (1, 1, 1)


def test_one_decode_may_take_half_the_keep_limit_and_0_keeps_nothing():
    assert MemoryBudget(100 * MB, 24 * MB).keep("a|1", _decode_of(2000, 1500), 1) is not None  # 12 MB
    assert MemoryBudget(100 * MB, 23 * MB).keep("a|1", _decode_of(2000, 1500), 1) is None
    assert MemoryBudget(100 * MB, 0).keep("a|1", _decode_of(10, 10), 1) is None
    assert MemoryBudget(0, 48 * MB).keep("a|1", _decode_of(10, 10), 1) is None  # no budget, no keeping


def test_keeping_past_the_limit_drops_the_least_recently_used():
    budget = MemoryBudget(100 * MB, 30 * MB)
    for key in ("a|1", "b|1", "c|1"):
        budget.release(budget.keep(key, _decode_of(2000, 1250), 1))  # 10 MB each: full
    budget.release(budget.find("a|1", (1, 1)))  # a is now the most recently used
    budget.release(budget.keep("d|1", _decode_of(2000, 1250), 1))
    assert {e.key for e in budget.kept.values()} == {"a|1", "c|1", "d|1"}
    assert budget.kept_bytes == 30 * MB


def test_forgetting_drops_every_kept_decode_and_a_reader_keeps_its_own():
    budget = MemoryBudget(100 * MB, 30 * MB)
    reading = budget.keep("a|1", _decode_of(2000, 1250), 1)
    budget.release(budget.keep("b|1", _decode_of(1000, 1250), 1))
    budget.forget_kept()  # `imgproxy cache clear` from another process
    assert budget.kept_bytes == 0 and budget.find("a|1", (1, 1)) is None and budget.find("b|1", (1, 1)) is None
    assert reading.image.size == (2000, 1250)
    budget.release(reading)
    assert reading.users == 0


def test_a_render_needing_room_evicts_kept_decodes_but_never_one_in_use():
    budget = MemoryBudget(40 * MB, 40 * MB)
    in_use = budget.keep("a|1", _decode_of(2000, 1250), 1)  # pinned: a render reads it
    budget.release(budget.keep("b|1", _decode_of(2000, 1250), 1))
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


def _mean_difference(a: Image.Image, b: Image.Image) -> float:
    assert a.size == b.size and a.mode == b.mode
    return sum(ImageStat.Stat(ImageChops.difference(a, b)).mean) / len(a.getbands())


@pytest.mark.parametrize(
    "relative",
    [
        "photos/large_12mp_bus.jpg",
        "photos/orientation/Landscape_6.jpg",
        "photos/orientation/Landscape_8.jpg",
        "photos/orientation/exif_orientation3.png",
    ],
)
def test_a_kept_decode_gives_the_picture_a_new_decode_gives(relative):
    path = CORPUS / relative
    budget = MemoryBudget(96 * MB, 48 * MB)
    first = _render(path, budget, width=600)
    assert not first.reused_decode and budget.kept_bytes > 0
    finest = replace(RenderConfig(), reducing_gap=4.0)  # the reference: decoded at >= 4x the output
    for options in (
        dict(width=300),
        dict(width=200, height=200, mode="crop", gravity="smart"),
        dict(width=250, crop="10%,20%,50%,50%"),
    ):
        from_kept = _render(path, budget, **options)
        cold = _render(path, MemoryBudget(0), **options)
        reference = _render(path, MemoryBudget(0), settings=finest, **options)
        assert from_kept.reused_decode and not cold.reused_decode
        assert from_kept.size == cold.size == reference.size
        # the same picture up to resampling (a turned or shifted one differs by tens of levels),
        # and no further from the reference than a new decode is
        kept_error = _mean_difference(from_kept.frames[0], reference.frames[0])
        assert kept_error < 3 and kept_error <= _mean_difference(cold.frames[0], reference.frames[0]) + 0.5, options
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
    _render(path, budget, width=100)
    kept = next(iter(budget.kept.values()))
    before = kept.image.tobytes()
    settings = replace(RenderConfig(), keep_icc=False)
    same_size = _render(path, budget, settings=settings, width=300, mode="pad", height=300, background="red")
    assert same_size.reused_decode and same_size.size == (300, 300)
    assert kept.image.tobytes() == before
