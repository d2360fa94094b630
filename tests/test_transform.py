"""`transform` (SPEC §12, as Flask-Images): strict parsing, one key per request, the output checked
against plain Pillow's Image.transform on the upright, cropped source, limits before allocation."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from PIL import Image, ImageChops, ImageOps, ImageStat

from imgproxy.budget import UNLIMITED, Deadline, MemoryBudget, decoded_bytes
from imgproxy.config import LimitsConfig, RenderConfig
from imgproxy.errors import BadRequest, PayloadTooLarge
from imgproxy.geometry import output_size
from imgproxy.loader import open_original
from imgproxy.options import parse_options
from imgproxy.render import render
from imgproxy.sources import Original

from .conftest import CORPUS

DALMATIAN = CORPUS / "photos/progressive_dalmatian.jpg"  # 960x640
DICE = CORPUS / "photos/alpha_dice.png"  # 300x225 RGBA
BILINEAR = Image.Resampling.BILINEAR  # Flask-Images' resampling


def options(**query: str):
    return parse_options(list(query.items()), {})


def key(**query: str) -> str:
    return options(**query).cache_key()


# --- parsing ---


@pytest.mark.parametrize(
    "raw, canonical",
    [
        ("EXTENT,0,0,25%,25%,75%,75%", "EXTENT,0,0,25%,25%,75%,75%"),
        ("extent,100,50,0,0,10,5", "EXTENT,100,50,0,0,10,5"),
        ("AFFINE,0,0,1,0,-10.5,0,1,20", "AFFINE,0,0,1,0,-10.5,0,1,20"),
        ("AFFINE,0,0,0.5,0.1,10%,-0.1,0.5,5%", "AFFINE,0,0,0.5,0.1,10%,-0.1,0.5,5%"),
        ("PERSPECTIVE,0,0,1,0.1,0,0,1,0,0.00012,0", "PERSPECTIVE,0,0,1,0.1,0,0,1,0,0.00012,0"),
        ("QUAD,0,0,0,0,0,100%,100%,100%,100%,0", "QUAD,0,0,0,0,0,100%,100%,100%,100%,0"),
        ("QUAD,50%,40,-5,-5,0,10,10,10,10,0", "QUAD,50%,40,-5,-5,0,10,10,10,10,0"),
    ],
)
def test_each_method_parses_to_its_canonical_text(raw, canonical):
    assert key(transform=raw).endswith(f"&tf={canonical}")


@pytest.mark.parametrize(
    "a, b",
    [
        # Flask-Images' URL form: "_" between values, "p" for percent; its other separators too
        ("EXTENT,0,0,25%,25%,75%,75%", "EXTENT_0_0_25p_25p_75p_75p"),
        ("EXTENT,0,0,25%,25%,75%,75%", "extent;0/0 25%,25.00001%,75.0%,75%"),
        ("AFFINE,0,0,1,0,-0,0,1,0", "AFFINE,0,0,1.0,0,0,0,1,0.000000001"),  # -0 and 1e-9 are 0 (8 places)
        ("EXTENT,100.9,50.2,0,0,10,5", "EXTENT,100,50,0,0,10,5"),  # whole pixels, as Flask-Images' int()
    ],
)
def test_spellings_share_one_key(a, b):
    assert key(transform=a) == key(transform=b)


def test_transform_is_in_the_key_only_when_given():
    assert "tf=" not in key(w="100")
    assert key(w="100", transform="EXTENT,0,0,0,0,10,10") != key(w="100", transform="EXTENT,0,0,0,0,10,11")
    assert key(transform="PERSPECTIVE,0,0,1,0,0,0,1,0,0.00012,0") != key(
        transform="PERSPECTIVE,0,0,1,0,0,0,1,0,0.00013,0"
    )


@pytest.mark.parametrize(
    "raw, says",
    [
        ("EXTENT,0,0,1,2,3", "EXTENT takes width,height and 4 values (6 in all), got 5"),
        ("EXTENT,0,0,1,2,3,4,5", "got 7"),
        ("AFFINE,0,0,1,0,0,0,1", "AFFINE takes width,height and 6 values (8 in all), got 7"),
        ("PERSPECTIVE,0,0,1,0,0,0,1,0,0", "8 values (10 in all), got 9"),
        ("QUAD,0,0,1,2,3,4,5,6,7,8,9", "got 11"),
        ("MESH,0,0,1,2,3,4", "'MESH' is not a transform (allowed: EXTENT, AFFINE, PERSPECTIVE, QUAD)"),
        ("", "'' is not a transform"),
        ("AFFINE,0,0,1%,0,0,0,1,0", "value 3 of AFFINE is a coefficient and cannot be a percent"),
        ("PERSPECTIVE,0,0,1,0,5%,0,1,0,0,0", "value 5 of PERSPECTIVE is a coefficient"),
        ("EXTENT,-10,0,0,0,1,1", "'-10' is not a number (allowed: 0..100000)"),
        ("EXTENT,0,0,0,0,1,100001", "100001 is out of range (allowed: -100000..100000)"),
        ("EXTENT,0,0,0,0,1001%,1", "1001 is out of range (allowed: -1000..1000%)"),
        ("EXTENT,0,0,0,0,1e3,1", "'1e3' is not a number"),
        ("EXTENT,0,0,0,0,nan,1", "'nan' is not a number"),
        ("EXTENT,0,0,0,0,--1,1", "'-1' is not a number"),
        ("EXTENT,0,0,0,,1,1", "'' is not a number"),
        ("EXTENT,0,0,0,0,1,1" + "0" * 300, "value longer than 256 characters"),
    ],
)
def test_bad_transforms_are_400_naming_the_parameter(raw, says):
    with pytest.raises(BadRequest) as caught:
        options(transform=raw)
    assert caught.value.message.startswith("transform: ") and says in caught.value.message


def test_percent_is_of_the_cropped_source_and_zero_size_is_its_size():
    t = options(transform="EXTENT,50%,0,10%,25%,110%,100%").transform
    assert t is not None
    assert t.output_size(400, 300) == (200, 300)
    assert t.data(400, 300) == (40.0, 75.0, 440.0, 300.0)
    assert options(transform="EXTENT,33.3%,1%,0,0,1,1").transform.output_size(100, 50) == (33, 1)  # truncated, >= 1
    # the helpers' announced size: crop, then the transform's canvas, then the resize
    o = options(crop="0,0,600,400", transform="EXTENT,50%,50%,0,0,100%,100%", w="150")
    assert output_size(960, 640, o) == (150, 100)


# --- pixels, against plain Pillow on the upright, cropped source ---


def _render(path: Path, fmt: str = "png", budget: MemoryBudget = UNLIMITED, limits=LimitsConfig(), **query):
    original = Original(id=f"local:{path.name}", version="1", size=path.stat().st_size, path=str(path))
    opened = open_original(original, limits, ("JPEG", "PNG", "GIF"))
    with opened.image:
        return render(
            opened, options(**query), fmt, RenderConfig(), Deadline(30), budget, source_key=original.key, limits=limits
        )


def _difference(a: Image.Image, b: Image.Image) -> tuple[float, int]:
    """Mean and largest channel difference."""
    assert a.size == b.size and a.mode == b.mode
    diff = ImageChops.difference(a, b)
    return sum(ImageStat.Stat(diff).mean) / len(diff.getbands()), max(high for _, high in diff.getextrema())


def _upright(path: Path) -> Image.Image:
    with Image.open(path) as image:
        return ImageOps.exif_transpose(image).convert("RGB")


@pytest.mark.parametrize("orientation", [1, 3, 6, 8])
def test_extent_of_a_region_equals_pillow_on_the_upright_source(orientation):
    path = CORPUS / f"photos/orientation/Landscape_{orientation}.jpg"  # shown 1800x1200 whatever is stored
    got = _render(path, transform="EXTENT,300,200,450,300,1350,900").frames[0]
    expected = _upright(path).transform((300, 200), Image.Transform.EXTENT, (450, 300, 1350, 900), BILINEAR)
    assert _difference(got.convert("RGB"), expected) == (0.0, 0)


def test_extent_at_the_regions_own_size_is_pillows_crop():
    got = _render(DALMATIAN, transform="EXTENT,480,320,240,160,720,480").frames[0]
    assert _difference(got.convert("RGB"), _upright(DALMATIAN).crop((240, 160, 720, 480))) == (0.0, 0)


def test_affine_identity_is_the_source_and_a_shift_fills_with_background():
    source = _upright(DALMATIAN)
    same = _render(DALMATIAN, transform="AFFINE,0,0,1,0,0,0,1,0").frames[0]
    assert same.size == (960, 640) and _difference(same.convert("RGB"), source) == (0.0, 0)
    shifted = _render(DALMATIAN, transform="AFFINE,0,0,1,0,-100,0,1,10%", bg="#ff0000").frames[0]
    expected = source.transform((960, 640), Image.Transform.AFFINE, (1, 0, -100, 0, 1, 64), BILINEAR, fillcolor="red")
    assert _difference(shifted.convert("RGB"), expected) == (0.0, 0)
    assert shifted.getpixel((50, 300)) == (255, 0, 0)  # left of the source: the background


def test_crop_then_quad_and_perspective_equal_pillow():
    """Up to float rounding: the crop's offset is folded into the transform's coefficients."""
    region = _upright(DALMATIAN).crop((100, 50, 700, 450))
    quad = (0, 0, 60, 400, 600, 300, 500, 20)
    got = _render(DALMATIAN, crop="100,50,600,400", transform="QUAD,300,200," + ",".join(map(str, quad)))
    expected = region.transform((300, 200), Image.Transform.QUAD, quad, BILINEAR, fillcolor="white")
    mean, largest = _difference(got.frames[0].convert("RGB"), expected)
    assert mean < 0.01 and largest <= 1
    persp = (1.1, 0.2, 10, 0.05, 0.9, 5, 0.0004, 0.0002)
    got = _render(DALMATIAN, crop="100,50,600,400", transform="PERSPECTIVE,0,0," + ",".join(map(str, persp)))
    expected = region.transform((600, 400), Image.Transform.PERSPECTIVE, persp, BILINEAR, fillcolor="white")
    mean, largest = _difference(got.frames[0].convert("RGB"), expected)
    assert mean < 0.01 and largest <= 1


def test_the_transform_output_is_the_source_of_the_resize():
    got = _render(DALMATIAN, transform="EXTENT,400,100,0,0,960,240", w="200", h="100", mode="crop")
    assert got.size == (200, 100)
    small = _render(DALMATIAN, transform="EXTENT,400,100,0,0,960,240", w="1000")  # no enlarging past it
    assert small.size == (400, 100)


def test_an_animation_is_transformed_frame_by_frame():
    earth = CORPUS / "photos/animated_earth.gif"  # 400x400, 44 frames
    got = _render(earth, "gif", transform="EXTENT,100,100,0,0,50%,50%")
    assert len(got.frames) == 44 and got.size == (100, 100)
    with Image.open(earth) as first:
        expected = first.convert("RGBA").transform((100, 100), Image.Transform.EXTENT, (0, 0, 200, 200), BILINEAR)
    assert _difference(got.frames[0].convert("RGBA"), expected) == (0.0, 0)


def test_outside_is_see_through_where_the_output_keeps_alpha():
    got = _render(DICE, transform="AFFINE,0,0,1,0,-50,0,1,0", bg="transparent").frames[0]
    assert got.mode == "RGBA" and got.getpixel((10, 100))[3] == 0
    opaque = _render(DALMATIAN, transform="AFFINE,0,0,1,0,-50,0,1,0", bg="#00000000").frames[0]
    assert opaque.mode == "RGBA" and opaque.getpixel((10, 100))[3] == 0 and opaque.getpixel((500, 100))[3] == 255


def test_a_reused_decode_gives_the_same_pixels():
    """One URL, one answer: cold, or from a decode kept by an earlier request of another size."""
    query = {"transform": "PERSPECTIVE,500,300,1.1,0.2,10,0.05,0.9,5,0.0004,0.0002", "w": "320"}
    cold = _render(DALMATIAN, **query)
    budget = MemoryBudget(200 * 1000**2, 100 * 1000**2)
    for _ in range(2):  # the source's second request keeps the full decode
        _render(DALMATIAN, budget=budget, w="960")
    warm = _render(DALMATIAN, budget=budget, **query)
    assert warm.reused_decode and not cold.reused_decode
    assert warm.frames[0].tobytes() == cold.frames[0].tobytes()


# --- limits: checked before any pixel is allocated ---


def test_a_huge_canvas_is_413_before_decoding():
    original = Original(id="local:d", version="1", size=DALMATIAN.stat().st_size, path=str(DALMATIAN))
    opened = open_original(original, LimitsConfig(), ("JPEG",))
    with opened.image, pytest.raises(PayloadTooLarge, match="transform: would make a 100000x100000 image"):
        query = options(transform="EXTENT,100000,100000,0,0,1,1", w="10")
        render(opened, query, "png", RenderConfig(), Deadline(30), UNLIMITED, limits=LimitsConfig())
    assert opened.image._im is None  # nothing decoded
    with pytest.raises(PayloadTooLarge, match="transform"):
        _render(DALMATIAN, transform="EXTENT,1000%,0,0,0,1,1")  # 9600 wide: past the default 4096


class RecordingBudget(MemoryBudget):
    """A real budget that notes what each render asks it to hold."""

    def __init__(self):
        super().__init__(500 * 1000**2)
        self.amounts: list[int] = []

    def hold(self, amount, deadline):
        self.amounts.append(amount)
        return super().hold(amount, deadline)


def test_the_memory_budget_holds_the_transforms_canvas():
    budget = RecordingBudget()
    _render(DALMATIAN, budget=budget, w="100", transform="EXTENT,2000,1500,0,0,960,640")
    with Image.open(DALMATIAN) as full:  # decoded in full: a transform gets no shrink-on-load
        assert budget.amounts == [decoded_bytes(full) + 2000 * 1500 * 4 + 100 * 75 * 4]


def test_a_perspective_through_the_horizon_is_400():
    with pytest.raises(BadRequest, match="transform: PERSPECTIVE maps output pixels to infinity"):
        _render(DALMATIAN, transform="PERSPECTIVE,0,0,1,0,0,0,1,0,-0.002,0")  # 1 - 0.002 x = 0 at x = 500
    with pytest.raises(BadRequest, match="too far from the source"):
        _render(DALMATIAN, transform="AFFINE,0,0,100000,0,0,0,1,0")


def test_the_server_answers_transform_errors_and_is_deterministic(live_server):
    server = live_server({"limits": {"max_output_width": 2000, "max_output_height": 2000}})
    path = "/picture/photos/progressive_dalmatian.jpg"
    with server.client() as client:
        r = client.get(path, params={"transform": "EXTENT,50000,50000,0,0,1,1", "w": "100"})
        assert r.status_code == 413 and "transform" in r.text and r.headers["cache-control"] == "no-store"
        r = client.get(path, params={"transform": "EXTENT,0,0,1,1"})
        assert r.status_code == 400 and r.text.startswith("transform:")
        r = client.get(path, params={"transform": "EXTENT,480,320,240,160,720,480", "fm": "jpeg", "q": "90"})
        region, encoded = Image.open(DALMATIAN).convert("RGB").crop((240, 160, 720, 480)), io.BytesIO()
        region.save(encoded, "JPEG", quality=90, subsampling="4:2:0", progressive=True)
        got = Image.open(io.BytesIO(r.content)).convert("RGB")
        assert r.status_code == 200 and _difference(got, region)[0] < 3  # the region, within JPEG's loss:
        assert _difference(got, Image.open(encoded).convert("RGB")) == (0.0, 0)  # the very loss Pillow's has
        query = {"transform": "QUAD,300,200,0,0,60,400,600,300,500,20", "fm": "webp"}
        first = client.get(path, params=query)
        assert first.status_code == 200 and first.headers["x-cache"] == "MISS"
        assert Image.open(io.BytesIO(first.content)).size == (300, 200)
        same = client.get(path, params={"transform": "quad_300_200_0_0_60_400_600_300_500_20", "format": "webp"})
        assert same.headers["x-cache"] == "HIT" and same.content == first.content
        # the JPEG shrink-on-load of a plain request at this size does not change a transform's bytes
        client.get(path, params={"w": "120"})
        again = client.get(path, params={**query, "v": "2"})
        assert again.headers["x-cache"] == "MISS" and again.content == first.content


@pytest.mark.parametrize(
    ("rotate", "flip", "turn"), [(90, "", Image.Transpose.ROTATE_270), (180, "h", Image.Transpose.FLIP_TOP_BOTTOM)]
)
def test_rotate_and_flip_turn_the_transforms_output(rotate, flip, turn):
    """SPEC §12's order: transform, then rotate and flip, on an EXIF-rotated source; then the size
    the helpers announce is the turned transform output's."""
    path = CORPUS / "photos/orientation/Landscape_6.jpg"
    query = {"transform": "EXTENT,300,200,450,300,1350,900", "rotate": str(rotate)} | ({"flip": flip} if flip else {})
    got = _render(path, **query).frames[0]
    upright = _upright(path).transform((300, 200), Image.Transform.EXTENT, (450, 300, 1350, 900), BILINEAR)
    assert _difference(got.convert("RGB"), upright.transpose(turn)) == (0.0, 0)
    assert output_size(1800, 1200, options(**query)) == got.size


def test_trim_applies_to_the_transforms_output():
    """A transform whose output reaches past the source gets a `background` border; trim cuts it."""
    path = CORPUS / "photos/orientation/Landscape_1.jpg"
    got = _render(path, transform="AFFINE,400,300,1,0,-100,0,1,0", bg="magenta", trim="40").frames[0]
    assert got.size == (300, 300)
