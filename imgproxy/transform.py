"""The `transform` step (SPEC §12, as Flask-Images): Pillow's Image.transform of the upright,
cropped source, whose output then stands in for the source in the steps after it.

The user's coordinates are on the upright crop; the decode is in stored orientation. Rather than
copy the crop upright first, the coordinates are mapped onto the stored pixels (orientation and
crop are affine, and each method stays itself under an affine map), so Pillow samples the decode
directly and the only new pixels are the transform's own canvas.
"""

from __future__ import annotations

from PIL import Image

from .config import LimitsConfig
from .errors import BadRequest, PayloadTooLarge
from .options import Transform

RESAMPLE = Image.Resampling.BILINEAR  # Flask-Images' choice
METHODS = {"AFFINE": Image.Transform.AFFINE, "PERSPECTIVE": Image.Transform.PERSPECTIVE, "QUAD": Image.Transform.QUAD}
# Farthest a sampled point may lie from the source (px): Pillow casts coordinates to int.
MAX_REACH = 10_000_000
# EXIF orientation -> (matrix, offset in units of the stored width/height): stored = M @ upright + t
ORIENT = {
    1: ((1, 0, 0, 1), (0, 0)),
    2: ((-1, 0, 0, 1), (1, 0)),
    3: ((-1, 0, 0, -1), (1, 1)),
    4: ((1, 0, 0, -1), (0, 1)),
    5: ((0, 1, 1, 0), (0, 0)),
    6: ((0, 1, -1, 0), (0, 1)),
    7: ((0, -1, -1, 0), (1, 1)),
    8: ((0, -1, 1, 0), (1, 0)),
}
ALPHA_FORMATS = ("png", "webp", "avif", "gif")


def check(transform: Transform | None, region: tuple[int, int, int, int], limits: LimitsConfig) -> None:
    """Before any pixel is allocated: the canvas within `[limits]` (413), and every output pixel
    sampling a finite point near the source (400: a PERSPECTIVE whose horizon crosses the output)."""
    if transform is None:
        return
    size = transform.output_size(region[2], region[3])
    if size[0] > limits.max_output_width or size[1] > limits.max_output_height:
        raise PayloadTooLarge(
            f"transform: would make a {size[0]}x{size[1]} image; the limit is "
            f"{limits.max_output_width}x{limits.max_output_height} px (give it a smaller width,height)"
        )
    method, data = _upright_data(transform, region[2], region[3])
    if method == "QUAD":  # bilinear between its corners, which are bounded by parsing
        return
    g, h = (data[6], data[7]) if method == "PERSPECTIVE" else (0.0, 0.0)
    for x in (0, size[0]):
        for y in (0, size[1]):
            # linear numerators over a linear denominator: the extremes are at the corners
            den = g * x + h * y + 1
            if den <= 0 or max(abs(data[0] * x + data[1] * y + data[2]), abs(data[3] * x + data[4] * y + data[5])) > (
                MAX_REACH * den
            ):
                raise BadRequest(f"transform: {method} maps output pixels to infinity or too far from the source")


def canvas_bytes(transform: Transform | None, region_sizes: list[tuple[int, int]]) -> int:
    """Memory of the transform's canvas (the largest of the region sizes the source may have)."""
    if transform is None:
        return 0
    return max(w * h * 4 for w, h in (transform.output_size(*size) for size in region_sizes))


def needs_alpha(mode: str, background: tuple[int, int, int, int], fmt: str) -> bool:
    """A see-through `background` around an opaque source, for a format that keeps it."""
    return mode in ("L", "RGB") and background[3] < 255 and fmt in ALPHA_FORMATS


def apply(
    image: Image.Image,
    transform: Transform,
    region: tuple[int, int, int, int],
    orientation: int,
    scale: float,
    background: tuple[int, int, int, int],
    fmt: str,
) -> Image.Image:
    """The transform's output, upright. `image` is the decode in stored orientation, `scale` its
    size over the source's; `region` the crop on the upright source. Outside the source is
    `background` (see-through where the output keeps alpha)."""
    size = transform.output_size(region[2], region[3])
    method, data = _upright_data(transform, region[2], region[3])
    (a, b, c, d), (tx, ty) = ORIENT[orientation]
    stored_w, stored_h = image.width / scale, image.height / scale
    # stored pixel = scale * (M @ (upright point + region offset) + t)
    ox = a * region[0] + b * region[1] + tx * stored_w
    oy = c * region[0] + d * region[1] + ty * stored_h
    if method == "QUAD":
        points = [(data[i], data[i + 1]) for i in range(0, 8, 2)]
        data = tuple(v for x, y in points for v in (scale * (a * x + b * y + ox), scale * (c * x + d * y + oy)))
    else:
        row_x, row_y = data[0:3], data[3:6]
        last = (data[6], data[7], 1.0) if method == "PERSPECTIVE" else (0.0, 0.0, 1.0)
        new_x = [scale * (a * u + b * v + ox * w) for u, v, w in zip(row_x, row_y, last)]
        new_y = [scale * (c * u + d * v + oy * w) for u, v, w in zip(row_x, row_y, last)]
        data = tuple(new_x + new_y + list(data[6:8]))
    if needs_alpha(image.mode, background, fmt):
        image = image.convert(image.mode + "A")
    fill = Image.new("RGBA", (1, 1), background).convert(image.mode).getpixel((0, 0))
    return image.transform(size, METHODS[method], data, RESAMPLE, fillcolor=fill)


def _upright_data(transform: Transform, width: int, height: int) -> tuple[str, tuple[float, ...]]:
    """(method, Pillow data) on the upright region's pixels; EXTENT as the AFFINE Pillow makes of it."""
    data = transform.data(width, height)
    if transform.method != "EXTENT":
        return transform.method, data
    out_w, out_h = transform.output_size(width, height)
    x0, y0, x1, y1 = data
    return "AFFINE", ((x1 - x0) / out_w, 0.0, x0, 0.0, (y1 - y0) / out_h, y0)
