"""Geometry rules of SPEC §2, exhaustively per mode and as hypothesis invariants."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from imgproxy.errors import PayloadTooLarge
from imgproxy.geometry import ENCODER_MAX_SIDE, check_output, plan

MODES = ("fit", "crop", "pad", "stretch")


@pytest.mark.parametrize(
    "args, canvas, size",
    [
        # the SPEC's own examples on a 1200x800 source
        (dict(width=600), (600, 400), (600, 400)),
        (dict(width=2000), (1200, 800), (1200, 800)),
        (dict(width=2000, height=2000, mode="crop"), (800, 800), (800, 800)),
        (dict(width=2000, height=2000, mode="pad"), (1200, 1200), (1200, 800)),
        (dict(width=2000, height=1000, mode="stretch"), (1200, 600), (1200, 600)),
    ],
)
def test_spec_examples(args, canvas, size):
    p = plan(1200, 800, **args)
    assert p.canvas == canvas
    assert p.size == size


@pytest.mark.parametrize("mode", MODES)
def test_source_larger_than_box(mode):
    p = plan(4000, 3000, 400, 400, mode)
    expected = {"fit": (400, 300), "crop": (400, 400), "pad": (400, 400), "stretch": (400, 400)}[mode]
    assert p.canvas == expected


@pytest.mark.parametrize("mode", MODES)
def test_source_smaller_than_box_is_not_enlarged(mode):
    p = plan(300, 200, 900, 900, mode)
    # stretch: the box is 3x and 4.5x the source; shrinking it 4.5x makes neither axis grow
    expected = {"fit": (300, 200), "crop": (200, 200), "pad": (300, 300), "stretch": (200, 200)}[mode]
    assert p.canvas == expected
    assert p.size[0] <= 300 and p.size[1] <= 200


@pytest.mark.parametrize("mode", MODES)
def test_source_smaller_with_enlarge(mode):
    p = plan(300, 200, 900, 900, mode, enlarge=True)
    expected = {"fit": (900, 600), "crop": (900, 900), "pad": (900, 900), "stretch": (900, 900)}[mode]
    assert p.canvas == expected


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("width, height, expected", [(500, None, (500, 250)), (None, 100, (200, 100))])
def test_one_dimension_follows_source_aspect(mode, width, height, expected):
    assert plan(1000, 500, width, height, mode).canvas == expected


@pytest.mark.parametrize("mode", MODES)
def test_dpr_multiplies_box_before_clamp(mode):
    assert plan(2000, 2000, 300, 300, mode, dpr=2).canvas == (600, 600)
    # dpr pushes past the source: clamped to what the source supports
    assert plan(500, 500, 300, 300, mode, dpr=2).canvas == (500, 500)
    assert plan(500, 500, 300, 300, mode, dpr=2, enlarge=True).canvas == (600, 600)


def test_no_size_is_source_size():
    assert plan(640, 480).canvas == (640, 480)


def test_crop_window_follows_gravity():
    left = plan(1200, 800, 400, 400, "crop", focal=(0.0, 0.5)).window
    right = plan(1200, 800, 400, 400, "crop", focal=(1.0, 0.5)).window
    centre = plan(1200, 800, 400, 400, "crop").window
    assert left == (0.0, 0.0, 800.0, 800.0)
    assert right == (400.0, 0.0, 1200.0, 800.0)
    assert centre == (200.0, 0.0, 1000.0, 800.0)


def test_pad_centres_the_image():
    p = plan(1200, 800, 2000, 2000, "pad")
    assert p.offset == (0, 200)


def test_extreme_aspect_never_zero():
    assert plan(940, 2, 100).canvas == (100, 1)
    assert plan(2, 940, None, 50, "fit").canvas == (1, 50)


dims = st.integers(1, 6000)
box = st.one_of(st.none(), st.integers(1, 8000))


@settings(max_examples=400, deadline=None)
@given(
    sw=dims,
    sh=dims,
    w=box,
    h=box,
    mode=st.sampled_from(MODES),
    dpr=st.sampled_from([1.0, 1.5, 2.0, 3.0, 4.0]),
    enlarge=st.booleans(),
    fx=st.floats(0, 1),
    fy=st.floats(0, 1),
)
def test_invariants(sw, sh, w, h, mode, dpr, enlarge, fx, fy):
    p = plan(sw, sh, w, h, mode, dpr, enlarge, (fx, fy))
    cw, ch = p.canvas
    assert cw >= 1 and ch >= 1 and p.size[0] >= 1 and p.size[1] >= 1
    # the resized image fits on the canvas and the window lies inside the source
    assert p.size[0] <= cw and p.size[1] <= ch
    left, top, right, bottom = p.window
    assert -1e-6 <= left < right <= sw + 1e-6 and -1e-6 <= top < bottom <= sh + 1e-6
    if not enlarge:
        # the content is never scaled up: resized size <= the source window on both axes
        assert p.size[0] <= right - left + 0.5 and p.size[1] <= bottom - top + 0.5
        if mode == "fit":
            assert cw <= sw and ch <= sh
        if mode == "crop":
            assert cw <= sw and ch <= sh
    if w and h and mode != "fit":
        # the box's aspect ratio is kept (within rounding) even when clamped
        assert abs(cw / ch - w / h) <= (1 / min(cw, ch)) * max(cw / ch, w / h) + 1e-9
    if mode == "fit" and (w or h):
        # fit keeps the source's aspect ratio within rounding
        assert abs(cw / ch - sw / sh) <= (1 / min(cw, ch)) * max(cw / ch, sw / sh) + 1e-9


# --- check_output: every output canvas against [limits] and the encoder's own limits ---------


@pytest.mark.parametrize(
    "canvas, fmt, frames, refused",
    [
        ((4096, 4096), "png", 1, None),
        ((4097, 10), "png", 1, "4097x10; the limit is 4096x4096"),
        ((10, 4097), "jpeg", 1, "10x4097; the limit is 4096x4096"),
        ((4096, 4096), "gif", 5, None),  # 84 MP over all frames
        ((4096, 4096), "gif", 6, "6 frames of 4096x4096"),  # 101 MP
        ((2048, 2048), "webp", 40, "40 frames of 2048x2048"),
        ((2048, 2048), "webp", 23, None),
        ((1, 1), "gif", 100_000_000, None),  # exactly the limit
        ((1, 1), "gif", 100_000_001, "100000001 frames"),
    ],
)
def test_check_output_against_the_configured_limits(canvas, fmt, frames, refused):
    if refused is None:
        check_output(canvas, fmt, 4096, 4096, frames, 100_000_000)
        return
    with pytest.raises(PayloadTooLarge) as info:
        check_output(canvas, fmt, 4096, 4096, frames, 100_000_000)
    assert info.value.status == 413 and refused in info.value.message


@pytest.mark.parametrize("fmt, side", sorted(ENCODER_MAX_SIDE.items()))
@pytest.mark.parametrize("tall", [False, True])
def test_check_output_against_each_encoder(fmt, side, tall):
    big = 1_000_000  # configured limits above every encoder's
    fits, over = ((8, side), (8, side + 1)) if tall else ((side, 8), (side + 1, 8))
    check_output(fits, fmt, big, big)
    with pytest.raises(PayloadTooLarge, match=f"{fmt.upper()} allows at most {side} px"):
        check_output(over, fmt, big, big)
    check_output(over, "png", big, big)  # PNG has no such limit


def test_check_output_frames_only_count_for_animations_and_a_set_limit():
    check_output((4096, 4096), "gif", 4096, 4096, frames=1, max_frames_pixels=1000)
    check_output((4096, 4096), "gif", 4096, 4096, frames=50, max_frames_pixels=0)


@settings(max_examples=300, deadline=None)
@given(
    sw=dims,
    sh=dims,
    w=box,
    h=box,
    mode=st.sampled_from(MODES),
    dpr=st.sampled_from([1.0, 2.0, 4.0]),
    enlarge=st.booleans(),
    limit=st.integers(1, 9000),
)
def test_check_output_refuses_exactly_the_plans_past_the_limit(sw, sh, w, h, mode, dpr, enlarge, limit):
    canvas = plan(sw, sh, w, h, mode, dpr, enlarge).canvas
    over = canvas[0] > limit or canvas[1] > limit
    try:
        check_output(canvas, "png", limit, limit)
    except PayloadTooLarge:
        assert over
    else:
        assert not over
