"""The user's `rotate`/`flip` as one of the 8 EXIF orientations, composed with the source's own,
and `trim`'s border search (pure Pillow, no I/O).

An orientation is an element of the square's symmetry group, written as (mirror, turns): mirror
left-right first (when `mirror`), then turn `turns` quarter turns clockwise. Composing the EXIF
orientation with the user's gives one orientation, so render.py still resizes in the stored
orientation and transposes only the small result: a rotation costs no full-size copy.
"""

from __future__ import annotations

from PIL import Image

# EXIF orientation -> (mirror, clockwise quarter turns) that turn the stored pixels upright
TURNS = {
    1: (False, 0),
    2: (True, 0),
    3: (False, 2),
    4: (True, 2),
    5: (True, 3),
    6: (False, 1),
    7: (True, 1),
    8: (False, 3),
}
ORIENTATION = {turns: orientation for orientation, turns in TURNS.items()}
FLIPS = {"": 1, "h": 2, "v": 4, "hv": 3}  # flip hv is rotate 180
# the border search reads the image in strips of at most this many pixels and an eighth of the
# image, so its two strip copies stay within a quarter of the decode (inside budget.WORKING_SET)
STRIP_PIXELS = 1 << 20
STRIP_SHARE = 8


def compose(first: int, then: int) -> int:
    """The orientation that applies `first`, then `then`. A mirror reverses the turns before it."""
    m1, k1 = TURNS[first]
    m2, k2 = TURNS[then]
    return ORIENTATION[(m1 != m2, (k2 + (-k1 if m2 else k1)) % 4)]


def inverse(orientation: int) -> int:
    mirror, turns = TURNS[orientation]
    return orientation if mirror else ORIENTATION[(False, -turns % 4)]


def user_orientation(rotate: int, flip: str) -> int:
    """`rotate` (clockwise degrees), then `flip`, as one orientation."""
    return compose(ORIENTATION[(False, rotate // 90 % 4)], FLIPS[flip])


def canonical(rotate: int, flip: str) -> tuple[int, str]:
    """One spelling per orientation: a rotation, then at most a horizontal flip (`flip=v` is
    `rotate=180&flip=h`, `flip=hv` is `rotate=180`, `rotate=0` is no rotation)."""
    mirror, turns = TURNS[user_orientation(rotate, flip)]
    # flip h after rotate r mirrors first, then turns -r: (True, -r)
    return (-turns % 4 * 90, "h") if mirror else (turns * 90, "")


def border_table(reference: tuple[int, ...], tolerance: int) -> list[int]:
    """A `point` table per band: 0 where a value is within `tolerance` of the reference's, else 255."""
    return [0 if abs(value - ref) <= tolerance else 255 for ref in reference for value in range(256)]


def content_box(
    image: Image.Image, box: tuple[int, int, int, int], table: list[int]
) -> tuple[int, int, int, int] | None:
    """The bounding box (image pixels, inside `box`) of the pixels some channel of which is off the
    border by more than the tolerance; None when every pixel is border.

    Reads `box` in strips, so the search holds at most two strips beside the image.
    """
    left, top, right, bottom = box
    rows = max(1, min(STRIP_PIXELS, image.width * image.height // STRIP_SHARE) // max(1, right - left))
    found: tuple[int, int, int, int] | None = None
    for y in range(top, bottom, rows):
        strip = image.crop((left, y, right, min(bottom, y + rows))).point(table)
        hit = strip.getbbox(alpha_only=False)
        if hit is None:
            continue
        found = union(found, (hit[0] + left, hit[1] + y, hit[2] + left, hit[3] + y))
    return found


def union(a: tuple[int, int, int, int] | None, b: tuple[int, int, int, int] | None) -> tuple[int, int, int, int] | None:
    if a is None or b is None:
        return a or b
    return min(a[0], b[0]), min(a[1], b[1]), max(a[2], b[2]), max(a[3], b[3])


def reference_pixel(image: Image.Image, xy: tuple[int, int]) -> tuple[int, ...]:
    value = image.getpixel(xy)
    return value if isinstance(value, tuple) else (int(value or 0),)  # None only off the image
