"""Render an opened original (pure Pillow work, no I/O): an ordered list of steps.

decode (shrink-on-load for JPEG) -> orient (EXIF, composed with rotate/flip) -> normalise mode ->
[crop + transform, whose output is then the upright image rotate/flip turn] -> trim -> choose focal
point -> crop and resize in one LANCZOS pass -> colour (CMYK/ICC) -> sharpen -> blur -> pixelate ->
pad -> watermark -> flatten alpha.
"""

from __future__ import annotations

import contextlib
import functools
import io
import math
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from PIL import Image, ImageCms, ImageFilter, ImageSequence, PngImagePlugin

from . import transform as warp
from .budget import UNLIMITED, Deadline, KeptDecode, MemoryBudget, decoded_bytes
from .config import LimitsConfig, RenderConfig
from .errors import ImageProxyError, UnsupportedMedia
from .geometry import Plan, check_output, plan
from .loader import Opened, png_header_exif
from .options import AUTO_QUALITY, RenderOptions
from .orient import (
    STRIP_SHARE,
    border_table,
    compose,
    content_box,
    inverse,
    reference_pixel,
    union,
    user_orientation,
)
from .watermark import Overlay

DECODE_ERRORS = (
    OSError,
    ValueError,
    SyntaxError,
    EOFError,
    IndexError,
    TypeError,
    KeyError,
    ZeroDivisionError,
    zlib.error,
)
ALPHA_FORMATS = ("png", "webp", "avif", "gif", "jxl")
ANIMATION_FORMATS = ("gif", "webp")
# orientation tag -> transpose to apply (EXIF 2..8); 5..8 swap width and height
TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
SHRINK_ON_LOAD_FORMATS = ("JPEG", "MPO")
# Pillow's reduce() before the LANCZOS pass stops at this many times the output: it then looks
# like plain LANCZOS (bench/quality.py) at a fraction of the time for large ratios.
RESIZE_GAP = 2.0


@dataclass
class Rendered:
    frames: list[Image.Image]
    durations: list[int] | None = None
    loop: int | None = None
    icc_profile: bytes | None = None
    exif: bytes | None = None  # only when [render] strip_metadata = false
    reused_decode: bool = False  # pixels came from a decode kept by an earlier render
    # quality=auto's reference and probe score, per frame (the key: converted to sRGB or not), made
    # once for every format one request encodes (auto_format "smallest"); encode.encode_auto fills it
    auto_looks: dict[bool, tuple[Any, float]] = field(default_factory=dict, repr=False, compare=False)

    @property
    def size(self) -> tuple[int, int]:
        return self.frames[0].size


def orientation_of(image: Image.Image) -> int:
    """EXIF orientation 1..8. Decodes a PNG that has no eXIf chunk before its pixels (one may
    follow them): where only the header is read, use header_orientation."""
    return _orientation(image.getexif)


def header_orientation(image: Image.Image) -> int:
    """EXIF orientation 1..8 of an image not decoded, without decoding it."""
    if isinstance(image, PngImagePlugin.PngImageFile) and "exif" not in image.info:
        return _orientation(functools.partial(png_header_exif, image))
    return orientation_of(image)


def _orientation(exif: Callable[[], Image.Exif]) -> int:
    try:
        value = exif().get(0x0112, 1)
    except DECODE_ERRORS:  # broken EXIF must not break rendering
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def oriented_size(width: int, height: int, orientation: int) -> tuple[int, int]:
    return (height, width) if orientation >= 5 else (width, height)


def stored_box(
    box: tuple[float, float, float, float], orientation: int, width: int, height: int
) -> tuple[float, float, float, float]:
    """Map a box on the upright image to the same pixels of the stored one (`width` x `height`).

    Resizing in stored orientation and turning only the small result upright saves a full-size
    copy of the decoded source.
    """
    l, t, r, b = box
    w, h = width, height
    return {
        1: (l, t, r, b),
        2: (w - r, t, w - l, b),
        3: (w - r, h - b, w - l, h - t),
        4: (l, h - b, r, h - t),
        5: (t, l, b, r),
        6: (t, h - r, b, h - l),
        7: (w - b, h - r, w - t, h - l),
        8: (w - b, l, w - t, r),
    }[orientation]


def turned_box(
    box: tuple[float, float, float, float], orientation: int, width: int, height: int
) -> tuple[float, float, float, float]:
    """stored_box's inverse: a box on the image before `orientation` (`width` x `height`) -> the
    same pixels after it."""
    return stored_box(box, inverse(orientation), *oriented_size(width, height, orientation))


def source_region(options: RenderOptions, width: int, height: int) -> tuple[int, int, int, int]:
    """The user's `crop` in oriented pixels (x, y, w, h), or the whole image."""
    return options.crop.to_pixels(width, height) if options.crop else (0, 0, width, height)


def placed(options: RenderOptions, orientation: int, width: int, height: int) -> tuple[int, tuple[int, int, int, int]]:
    """The orientation from the stored pixels (`width` x `height`) to the image the user's
    rotate/flip gives, and the `crop` region (x, y, w, h) on that image.

    Crop comes before rotate (SPEC §12), so the region is cut on the EXIF-upright image and then
    turned with it; rendering cuts the turned region from the stored pixels in one step. A
    transform comes between them: its output is then an upright image that only the user turns.
    """
    upright = oriented_size(width, height, orientation)
    x, y, w, h = source_region(options, *upright)
    user = user_orientation(options.rotate, options.flip)
    if options.transform is not None:
        upright = options.transform.output_size(w, h)
        x, y, w, h, orientation = 0, 0, *upright, 1
    l, t, r, b = turned_box((x, y, x + w, y + h), user, *upright)
    return compose(orientation, user), (int(l), int(t), int(r - l), int(b - t))


def trimmed(
    frames: Iterable[Image.Image], region: tuple[int, int, int, int], turn: int, tolerance: int
) -> tuple[int, int, int, int]:
    """`region` (on the turned image; the frames are stored pixels at full scale) without its
    uniform border, found over every frame: the reference colour is the first frame's pixel at
    the region's top-left as the user sees it. When everything is border, the region as it is."""
    x, y, w, h = region
    table, found, size = None, None, (0, 0)
    for image in frames:
        size = image.size
        l, t, r, b = (int(v) for v in stored_box((x, y, x + w, y + h), turn, *size))
        if table is None:
            corner = stored_box((x, y, x + 1, y + 1), turn, *size)  # the turned region's top-left pixel
            table = border_table(reference_pixel(image, (int(corner[0]), int(corner[1]))), tolerance)
        found = union(found, content_box(image, (l, t, r, b), table))
    if found is None:
        return region
    l, t, r, b = (int(v) for v in turned_box(found, turn, *size))
    return l, t, r - l, b - t


def crop_region(options: RenderOptions, orientation: int, width: int, height: int) -> tuple[int, int, int, int]:
    """The `crop` region on the EXIF-upright image: what a transform samples."""
    return source_region(options, *oriented_size(width, height, orientation))


def make_plan(options: RenderOptions, region: tuple[int, int, int, int], focal: tuple[float, float]) -> Plan:
    return plan(region[2], region[3], options.width, options.height, options.mode, options.dpr, options.enlarge, focal)


def _decode_size(opened: Opened, target: Plan, gap: float) -> tuple[int, int]:
    """The smallest decode (stored orientation) that keeps >= `gap` x the output, so the final
    LANCZOS pass still has pixels to work with. JPEG can decode at 1/2, 1/4 or 1/8 scale
    (shrink-on-load); other formats decode in full."""
    full = (opened.width, opened.height)
    if opened.format not in SHRINK_ON_LOAD_FORMATS:
        return full
    ww = target.window[2] - target.window[0]
    wh = target.window[3] - target.window[1]
    ratio = max(target.size[0] * gap / ww, target.size[1] * gap / wh)
    if ratio >= 1:
        return full
    return max(1, math.ceil(opened.width * ratio)), max(1, math.ceil(opened.height * ratio))


def _draft(image: Image.Image, need: tuple[int, int]) -> int:
    """Set up JPEG shrink-on-load to at least `need` (nothing is decoded yet); the scale's divisor."""
    if need == image.size:
        return 1
    full_width = image.width
    drafted = image.draft(image.mode, need)  # (mode, the full image's box in drafted pixels)
    return 1 if drafted is None else round(full_width / drafted[1][2])


def _normalise_mode(image: Image.Image) -> Image.Image:
    """Bring every mode to L, LA, RGB, RGBA or CMYK, which resize well and encode everywhere."""
    mode = image.mode
    if mode in ("L", "LA", "RGB", "RGBA", "CMYK"):
        return image
    if mode in ("P", "PA"):
        return image.convert("RGBA" if image.has_transparency_data else "RGB")
    if mode == "1":
        return image.convert("L")
    if mode.startswith("I") or mode == "F":
        # 16/32-bit greyscale: scale into 8 bits rather than clip
        return (
            image.convert("I").point(lambda v: v * (1 / 256)).convert("L")
            if mode.startswith("I;16")
            else image.convert("L")
        )
    return image.convert("RGBA" if "A" in mode else "RGB")


def smart_focal(
    image: Image.Image, box: tuple[float, float, float, float], orientation: int, aspect: float
) -> tuple[float, float]:
    """Entropy-based focal point: slide the crop window over a small copy, keep the busiest spot.

    `box` is the region on the upright image; `image` is still in stored orientation.
    """
    bw, bh = box[2] - box[0], box[3] - box[1]
    small_w, small_h = max(1, round(bw * 64 / max(bw, bh))), max(1, round(bh * 64 / max(bw, bh)))
    raw_size = oriented_size(small_w, small_h, orientation)
    small = _upright(
        image.resize(raw_size, Image.Resampling.BILINEAR, box=stored_box(box, orientation, *image.size)), orientation
    )
    small = small.convert("L")
    sw, sh = small.size
    ww, wh = (sh * aspect, sh) if sw / sh > aspect else (sw, sw / aspect)
    best, best_xy = -1.0, (0.5, 0.5)
    steps = 12
    for i in range(steps + 1):
        left = (sw - ww) * i / steps
        top = (sh - wh) * i / steps
        crop = small.crop((round(left), round(top), round(left + ww), round(top + wh)))
        score = crop.entropy()
        if score > best:
            best, best_xy = score, ((left + ww / 2) / sw, (top + wh / 2) / sh)
    return best_xy


def _upright(image: Image.Image, orientation: int) -> Image.Image:
    return image.transpose(TRANSPOSE[orientation]) if orientation in TRANSPOSE else image


@functools.lru_cache(maxsize=32)
def _to_srgb(icc: bytes, mode: str) -> ImageCms.ImageCmsTransform:
    source = ImageCms.ImageCmsProfile(io.BytesIO(icc))
    out_mode = "RGBA" if mode == "RGBA" else "RGB"
    return ImageCms.buildTransform(source, ImageCms.createProfile("sRGB"), mode, out_mode)


def _colour(image: Image.Image, icc: bytes | None, settings: RenderConfig) -> tuple[Image.Image, bytes | None]:
    """CMYK always becomes RGB through its profile; others are converted only when configured."""
    must_convert = image.mode == "CMYK" or (settings.convert_to_srgb and image.mode in ("RGB", "RGBA"))
    if not must_convert:
        return image, icc if settings.keep_icc else None
    if icc:
        try:
            converted = ImageCms.applyTransform(image, _to_srgb(icc, image.mode))
            if converted is not None:  # None only for an in-place transform
                return converted, None
        except (ImageCms.PyCMSError, OSError, ValueError):
            pass  # unusable profile: fall back to Pillow's plain conversion
    return (image.convert("RGB") if image.mode == "CMYK" else image), None


def _flatten(image: Image.Image, background: tuple[int, int, int, int]) -> Image.Image:
    if image.mode not in ("RGBA", "LA"):
        return image
    base = Image.new("RGBA", image.size, background[:3] + (255,))
    base.alpha_composite(image.convert("RGBA"))
    return base.convert("RGB" if image.mode == "RGBA" else "L")


def _finish(image: Image.Image, p: Plan, options: RenderOptions, fmt: str, overlay: Overlay | None) -> Image.Image:
    """Steps after the resize that apply to every frame."""
    if options.sharpen:
        radius, percent, threshold = options.sharpen
        image = image.filter(ImageFilter.UnsharpMask(radius, percent, threshold))
    if options.blur:
        image = image.filter(ImageFilter.GaussianBlur(options.blur))
    if options.pixelate:
        image = pixelated(image, options.pixelate)
    if p.canvas != p.size:
        keep_alpha = fmt in ALPHA_FORMATS and options.background[3] < 255
        mode = "RGBA" if keep_alpha or image.mode in ("RGBA", "LA") else "RGB"
        canvas = Image.new(mode, p.canvas, options.background if mode == "RGBA" else options.background[:3])
        src = image.convert(mode) if image.mode != mode else image
        canvas.paste(src, p.offset, src if mode == "RGBA" else None)
        image = canvas
    if overlay is not None:  # on the canvas: with `pad` the mark sits in the output's corner, not the image's
        image = overlay.apply(image)
    if fmt not in ALPHA_FORMATS:
        image = _flatten(image, options.background)
    return image


def pixelated(image: Image.Image, block: int) -> Image.Image:
    """Blocks of `block` x `block` pixels from the top-left, each the mean of its pixels (alpha
    premultiplied by reduce()); edge blocks are cut to the image."""
    small = image.reduce(block)
    return small.resize(image.size, Image.Resampling.NEAREST, box=(0, 0, image.width / block, image.height / block))


def _resize(
    image: Image.Image, p: Plan, scale: float, region: tuple[int, int, int, int], orientation: int
) -> Image.Image:
    """Crop (user region + plan window) and resize in one LANCZOS pass, then turn upright.

    `scale` maps upright source pixels to decoded ones (JPEG draft); `image` is in stored
    orientation, so the resize reads the stored pixels and only the small result is transposed.
    """
    x0, y0 = region[0], region[1]
    upright_w, upright_h = oriented_size(image.width, image.height, orientation)
    l, t, r, b = (v * scale for v in (x0 + p.window[0], y0 + p.window[1], x0 + p.window[2], y0 + p.window[3]))
    box = stored_box(
        (max(0.0, l), max(0.0, t), min(float(upright_w), r), min(float(upright_h), b)),
        orientation,
        image.width,
        image.height,
    )
    size = oriented_size(*p.size, orientation)
    if size != image.size or box != (0.0, 0.0, float(image.width), float(image.height)):
        image = image.resize(size, Image.Resampling.LANCZOS, box=box, reducing_gap=RESIZE_GAP)
    return _upright(image, orientation)


def _decode(image: Image.Image) -> None:
    try:
        image.load()
    except DECODE_ERRORS:
        raise UnsupportedMedia("source image data is truncated or corrupt") from None


def render(
    opened: Opened,
    options: RenderOptions,
    fmt: str,
    settings: RenderConfig,
    deadline: Deadline,
    budget: MemoryBudget = UNLIMITED,
    source_key: str | None = None,
    limits: LimitsConfig = LimitsConfig(),
    overlay: Overlay | None = None,
) -> Rendered:
    """`source_key` (the source's id and version) lets the decode be kept in `budget` for the next
    request of the same source, and reuses one kept by an earlier request. The output canvas is
    checked against `limits` before anything is decoded (413). `overlay`: the watermark options name."""
    image = opened.image
    orientation: int | None
    turn: int | None
    region: tuple[int, int, int, int] | None
    first: Plan | None
    if opened.animated and fmt in ANIMATION_FORMATS:
        plans = _plans_before_decode(opened, options, fmt, limits, opened.frames)
        trim = _trimmed_animation(opened, options, fmt, budget, deadline) if options.trim is not None else None
        if trim is not None:
            plans = [make_plan(options, trim, options.focal)]
            _check(plans[0], fmt, limits, opened.frames)
        # every output frame stays until the encode: room for all of them is taken before the first
        frames = opened.frames * max(output_bytes(p.canvas) for p in plans)
        with budget.hold(decoded_bytes(image) + frames + _warp_bytes(opened, options, fmt), deadline):
            stored = orientation_of(image)
            turn, region = placed(options, stored, opened.width, opened.height)
            region = trim or region
            frames_plan = make_plan(options, region, options.focal)
            warp.check(options.transform, crop_region(options, stored, opened.width, opened.height), limits)
            _check(frames_plan, fmt, limits, opened.frames)
            return _render_animation(opened, frames_plan, options, fmt, region, turn, deadline, overlay)
    plans = _plans_before_decode(opened, options, fmt, limits, 1)
    orientation = turn = region = first = None
    if opened.format in SHRINK_ON_LOAD_FORMATS:
        # JPEG's EXIF is read with the header: plan first, then decode at 1/2..1/8 scale
        orientation, turn, region, first = _geometry(opened, options)
    # trim finds its border on a full decode: a scale picked from the untrimmed plan could leave the
    # trimmed part too few pixels, and one picked after the trim would need a decode first; a
    # transform samples the source at its own points: a full decode too, one answer per URL
    shrink = first if options.trim is None and options.transform is None else None
    # quality=auto is bytes at a look: a finer decode keeps detail no encoder quality buys back
    gap = settings.auto_reducing_gap if options.quality == AUTO_QUALITY else settings.reducing_gap
    need = _decode_size(opened, shrink, gap) if shrink else (opened.width, opened.height)
    divisor = _draft(image, need)
    # Reuse only the very decode this render would make itself (same source version and draft
    # scale): a larger one resamples from another intermediate and gives other bytes, so a URL's
    # answer would depend on what its worker rendered before. A first frame is not the source's decode.
    keep_key = None if opened.animated or source_key is None else f"{source_key}|1/{divisor}"
    kept = budget.find(keep_key, source_key, image.size) if keep_key and source_key else None
    reused = kept is not None
    try:
        if kept is not None:
            image, orientation = kept.image, kept.orientation
            if first is None:
                turn, region = placed(options, orientation, opened.width, opened.height)
                first = make_plan(options, region, options.focal)
            amount = _beside(first.canvas, kept) + (kept.nbytes * 2 // STRIP_SHARE if options.trim is not None else 0)
        else:
            amount = decoded_bytes(image) + max(output_bytes(p.canvas) for p in plans)  # the decode and the output
        amount += _warp_bytes(opened, options, fmt)  # and the transform's canvas
        with budget.hold(amount, deadline), contextlib.ExitStack() as more:
            if not reused:
                # getexif() of PNG and others decodes the image; decode first so errors are not
                # mistaken for a missing orientation (and the image then served half-decoded)
                _decode(image)
                orientation, turn, region, first = _geometry(opened, options)
            icc = opened.image.info.get("icc_profile") or None
            exif = None if settings.strip_metadata else _exif_upright(opened.image)
            # planned before the decode, after it or for the kept one
            assert first is not None and region is not None and orientation is not None and turn is not None
            if not reused:
                image = _normalised(opened)
                kept = budget.keep(keep_key, source_key, image, orientation) if keep_key and source_key else None
                if kept is not None:
                    image = kept.image
            crop = crop_region(options, orientation, opened.width, opened.height)
            warp.check(options.transform, crop, limits)  # its canvas comes first
            _check(first, fmt, limits, 1)  # exact now that the orientation is known
            scale = image.width / opened.width
            if options.transform is not None:  # its output is the upright image `turn` and `region` are on
                deadline.check()
                image = warp.apply(image, options.transform, crop, orientation, scale, options.background, fmt)
                scale = 1.0
            if options.trim is not None:
                deadline.check()
                held = _beside(first.canvas, kept if reused else None)
                region = trimmed([image], region, turn, options.trim)  # full scale: see `need`
                first = make_plan(options, region, options.focal)
                _check(first, fmt, limits, 1)
                grown = _beside(first.canvas, kept if reused else None) - held
                if grown > 0:  # a trimmed shape can give a larger output (enlarge, pad, one side given)
                    more.enter_context(budget.hold(grown, deadline, beside=amount))
            deadline.check()
            p = first
            if options.gravity == "smart" and options.mode == "crop":
                x, y, w, h = (v * scale for v in region)
                box = (x, y, x + w, y + h)
                p = make_plan(options, region, smart_focal(image, box, turn, first.canvas[0] / first.canvas[1]))
            deadline.check()
            resized = _resize(image, p, scale, region, turn)
            if kept is not None and resized is kept.image:
                resized = resized.copy()  # later steps may change it; the kept one stays as it is
            if resized is not opened.image and (kept is None or kept.image is not opened.image):
                opened.image.close()  # free the decoded source before encoding (unless kept)
    finally:
        budget.release(kept)
    image, icc = _colour(resized, icc, settings)
    deadline.check()
    return Rendered([_finish(image, p, options, fmt, overlay)], icc_profile=icc, exif=exif, reused_decode=reused)


def _beside(canvas: tuple[int, int], kept: KeptDecode | None) -> int:
    """Bytes a render holds beside a decode it made (whose working set covers the resize): the
    output; reading a kept decode, also the resize's intermediate (the reduced image or the
    horizontal pass), at most (2 x RESIZE_GAP)^2 times the output and never the source's size."""
    output = output_bytes(canvas)
    return output if kept is None else output + min(kept.nbytes, int(output * (2 * RESIZE_GAP) ** 2))


def _trimmed_animation(
    opened: Opened, options: RenderOptions, fmt: str, budget: MemoryBudget, deadline: Deadline
) -> tuple[int, int, int, int]:
    """The trimmed region of an animation: one pass over its frames (one decoded at a time)
    before the render's own pass, so the frames' plan and budget are known first."""
    assert options.trim is not None
    with budget.hold(decoded_bytes(opened.image) + _warp_bytes(opened, options, fmt), deadline):
        turn, region = placed(options, orientation_of(opened.image), opened.width, opened.height)
        try:
            region = trimmed(
                (image for image, _ in _frames(opened, options, fmt, deadline)), region, turn, options.trim
            )
        except DECODE_ERRORS:
            raise UnsupportedMedia("source animation data is truncated or corrupt") from None
    return region


def _frames(opened: Opened, options: RenderOptions, fmt: str, deadline: Deadline) -> Iterator[tuple[Image.Image, int]]:
    """Each frame of an animation in RGBA (transformed when asked: the image `turn` then applies
    to), with its duration in ms; one decoded at a time."""
    exif = orientation_of(opened.image)
    crop = crop_region(options, exif, opened.width, opened.height)
    for frame in ImageSequence.Iterator(opened.image):
        deadline.check()
        image = frame.convert("RGBA")
        if options.transform is not None:
            image = warp.apply(image, options.transform, crop, exif, 1.0, options.background, fmt)
        yield image, int(frame.info.get("duration", 100) or 100)


def _normalised(opened: Opened) -> Image.Image:
    try:
        return _normalise_mode(opened.image)
    except DECODE_ERRORS:
        raise UnsupportedMedia("source image data is truncated or corrupt") from None


def output_bytes(canvas: tuple[int, int]) -> int:
    """Memory of one output frame (Pillow keeps RGB in 4 bytes a pixel too)."""
    return canvas[0] * canvas[1] * 4


def _check(p: Plan, fmt: str, limits: LimitsConfig, frames: int) -> None:
    check_output(p.canvas, fmt, limits.max_output_width, limits.max_output_height, frames, limits.max_animation_pixels)


def _plans_before_decode(
    opened: Opened, options: RenderOptions, fmt: str, limits: LimitsConfig, frames: int
) -> list[Plan]:
    """The plans the header allows, each within `limits`; 413 (or 400 for a bad crop) when none is.

    One plan, or two for a PNG without an eXIf chunk before its pixels (one may follow them: the
    orientation is then known after the decode, where the exact plan is checked again).
    """
    known = opened.format != "PNG" or "exif" in opened.image.info  # PNG's getexif() would decode
    plans, refused = [], None
    for orientation in (orientation_of(opened.image),) if known else (1, 6):
        try:
            _, region = placed(options, orientation, opened.width, opened.height)
            p = make_plan(options, region, options.focal)
            warp.check(options.transform, crop_region(options, orientation, opened.width, opened.height), limits)
            _check(p, fmt, limits, frames)
        except ImageProxyError as exc:
            refused = refused or exc
            continue
        plans.append(p)
    if refused is not None and not plans:
        raise refused
    return plans


def _warp_bytes(opened: Opened, options: RenderOptions, fmt: str) -> int:
    """The transform's canvas, for either orientation the source may turn out to have, and a
    converted copy of the decode when a see-through background needs alpha (assumed needed)."""
    if options.transform is None:
        return 0
    regions = []
    for orientation in (1, 6):
        try:
            regions.append(crop_region(options, orientation, opened.width, opened.height)[2:])
        except ImageProxyError:
            continue  # a crop outside the source: refused when planned
    copy = decoded_bytes(opened.image) if warp.needs_alpha("RGB", options.background, fmt) else 0
    return warp.canvas_bytes(options.transform, regions) + copy if regions else 0


def _geometry(opened: Opened, options: RenderOptions) -> tuple[int, int, tuple[int, int, int, int], Plan]:
    """EXIF orientation, the stored pixels' turn to the user's image, the crop region on it, and the plan."""
    orientation = orientation_of(opened.image)
    turn, region = placed(options, orientation, opened.width, opened.height)
    return orientation, turn, region, make_plan(options, region, options.focal)


def _exif_upright(image: Image.Image) -> bytes | None:
    """The source's EXIF with orientation reset, since the pixels are already upright."""
    try:
        exif = image.getexif()
        if not exif:
            return None
        exif[0x0112] = 1
        return exif.tobytes()
    except DECODE_ERRORS:
        return None


def _render_animation(
    opened: Opened,
    p: Plan,
    options: RenderOptions,
    fmt: str,
    region: tuple[int, int, int, int],
    orientation: int,
    deadline: Deadline,
    overlay: Overlay | None,
) -> Rendered:
    frames, durations = [], []
    try:
        for image, duration in _frames(opened, options, fmt, deadline):
            durations.append(duration)
            frames.append(_finish(_resize(image, p, 1.0, region, orientation), p, options, fmt, overlay))
    except DECODE_ERRORS:
        raise UnsupportedMedia("source animation data is truncated or corrupt") from None
    loop = opened.image.info.get("loop", 0)
    return Rendered(frames, durations=durations, loop=loop if isinstance(loop, int) else 0)
