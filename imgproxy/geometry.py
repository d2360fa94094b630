"""Output geometry (pure): from a source size and the requested box to what to cut, scale and pad.

SPEC §2: one of width/height given -> the other follows the source's aspect ratio; `dpr`
multiplies the box; without `enlarge`, when the source cannot fill the box without being scaled
up, the whole output shrinks uniformly (keeping the box's aspect ratio) until it can. Sizes are
never 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .errors import PayloadTooLarge

# Largest side each encoder can write (libwebp; libjpeg; GIF's 16-bit header fields; libavif;
# libjxl at codestream level 5, which every JPEG XL decoder must read).
# PNG's limit (2^31 - 1) is far past any max_output_* that fits in memory.
ENCODER_MAX_SIDE = {"webp": 16383, "jpeg": 65500, "gif": 65535, "avif": 65536, "jxl": 262144}


@dataclass(frozen=True)
class Plan:
    window: tuple[float, float, float, float]  # region of the source to use: left, top, right, bottom
    size: tuple[int, int]  # what the window is resized to
    canvas: tuple[int, int]  # output size (== size except for pad)
    offset: tuple[int, int]  # where the resized image sits on the canvas


def _round(value: float) -> int:
    return max(1, math.floor(value + 0.5))


def _box(sw: int, sh: int, width: int | None, height: int | None, dpr: float) -> tuple[float, float]:
    if width is None and height is None:
        return sw * dpr, sh * dpr
    if height is None:
        assert width is not None
        return width * dpr, width * dpr * sh / sw
    if width is None:
        return height * dpr * sw / sh, height * dpr
    return width * dpr, height * dpr


def plan(
    sw: int,
    sh: int,
    width: int | None = None,
    height: int | None = None,
    mode: str = "fit",
    dpr: float = 1.0,
    enlarge: bool = False,
    focal: tuple[float, float] = (0.5, 0.5),
) -> Plan:
    bw, bh = _box(sw, sh, width, height, dpr)
    sx, sy = bw / sw, bh / sh
    # the scale the source needs to satisfy the box in this mode
    needed = min(sx, sy) if mode in ("fit", "pad") else max(sx, sy)
    if not enlarge and needed > 1:
        bw, bh = bw / needed, bh / needed
        sx, sy = bw / sw, bh / sh
    full = (0.0, 0.0, float(sw), float(sh))

    if mode == "stretch":
        size = (_round(bw), _round(bh))
        return Plan(full, size, size, (0, 0))
    if mode == "crop":
        canvas = (_round(bw), _round(bh))
        # largest window of the canvas's aspect ratio inside the source, centred on the focal point
        aspect = canvas[0] / canvas[1]
        ww, wh = (sh * aspect, float(sh)) if sw / sh > aspect else (float(sw), sw / aspect)
        left = min(max(focal[0] * sw - ww / 2, 0.0), sw - ww)
        top = min(max(focal[1] * sh - wh / 2, 0.0), sh - wh)
        return Plan((left, top, left + ww, top + wh), canvas, canvas, (0, 0))
    scale = min(sx, sy)
    size = (min(_round(sw * scale), _round(bw)), min(_round(sh * scale), _round(bh)))
    if mode == "pad":
        canvas = (_round(bw), _round(bh))
        offset = (round((canvas[0] - size[0]) * focal[0]), round((canvas[1] - size[1]) * focal[1]))
        return Plan(full, size, canvas, offset)
    return Plan(full, size, size, (0, 0))


def output_size(sw: int, sh: int, options) -> tuple[int, int] | None:
    """The size `/picture` answers for a source of sw x sh (after EXIF orientation) and RenderOptions;
    None with `trim`, whose size depends on the pixels (helpers then announce no size)."""
    if options.trim is not None:
        return None
    if options.crop is not None:
        _, _, sw, sh = options.crop.to_pixels(sw, sh)
    if options.transform is not None:  # its output is the source of the steps after it
        sw, sh = options.transform.output_size(sw, sh)
    if options.rotate in (90, 270):  # width and height apply to the turned image (a flip keeps the sides)
        sw, sh = sh, sw
    return plan(sw, sh, options.width, options.height, options.mode, options.dpr, options.enlarge, options.focal).canvas


def check_output(
    canvas: tuple[int, int],
    fmt: str,
    max_width: int,
    max_height: int,
    frames: int = 1,
    max_frames_pixels: int = 0,
) -> None:
    """413 when an output canvas (every frame of it) is past `[limits]` or what `fmt` can encode.

    Called with the plan, before any pixel of the render is allocated. `max_frames_pixels` bounds
    frames x canvas pixels of an animated output (0: no limit).
    """
    width, height = canvas
    if width > max_width or height > max_height:
        raise PayloadTooLarge(
            f"output would be {width}x{height}; the limit is {max_width}x{max_height} px (ask for a smaller size)"
        )
    side = ENCODER_MAX_SIDE.get(fmt)
    if side is not None and max(width, height) > side:
        raise PayloadTooLarge(f"output would be {width}x{height}; {fmt.upper()} allows at most {side} px a side")
    if frames > 1 and max_frames_pixels and frames * width * height > max_frames_pixels:
        raise PayloadTooLarge(
            f"output would be {frames} frames of {width}x{height}; the limit is {max_frames_pixels} pixels "
            "over all frames (ask for a smaller size)"
        )
