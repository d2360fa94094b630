"""Encode a rendered image to bytes (pure Pillow work, no I/O). Settings come from `[render]`."""

from __future__ import annotations

import dataclasses
import io
import math
import struct
from collections.abc import Callable
from typing import TYPE_CHECKING

import pyjpegli
from PIL import Image, ImageCms

from . import avif  # noqa: F401  (AVIF writer where Pillow has none)
from .budget import Deadline
from .config import RenderConfig
from .options import AUTO_QUALITY
from .render import Rendered, _to_srgb

if TYPE_CHECKING:
    from . import perceptual

CONTENT_TYPES = {
    "jpeg": "image/jpeg",
    "png": "image/png",
    "webp": "image/webp",
    "avif": "image/avif",
    "gif": "image/gif",
    "jxl": "image/jxl",
}
# Pillow format name of a source -> our output format, for sources we can write back as they are
SOURCE_FORMATS = {
    "JPEG": "jpeg",
    "MPO": "jpeg",
    "PNG": "png",
    "WEBP": "webp",
    "AVIF": "avif",
    "GIF": "gif",
    "HEIF": "jpeg",
}


def default_quality(fmt: str, settings: RenderConfig) -> int | None:
    return {
        "jpeg": settings.jpeg_quality,
        "webp": settings.webp_quality,
        "avif": settings.avif_quality,
        "jxl": settings.jxl_quality,
    }.get(fmt)


def _mode_for(fmt: str, image: Image.Image) -> Image.Image:
    alpha = image.mode in ("RGBA", "LA")
    if fmt == "jpeg":
        return image if image.mode in ("RGB", "L") else image.convert("RGB")
    if fmt in ("webp", "avif", "jxl"):
        wanted = "RGBA" if alpha else "RGB"
        return image if image.mode == wanted else image.convert(wanted)
    return image  # png and gif take L, LA, RGB and RGBA as they are


def encode(rendered: Rendered, fmt: str, quality: int | None, settings: RenderConfig) -> bytes:
    frames = [_mode_for(fmt, f) for f in rendered.frames]
    icc_profile = rendered.icc_profile
    if fmt == "jxl" and icc_profile:
        frames, icc_profile = _in_srgb(frames, icc_profile), None
    for frame in frames:
        # Pillow's PNG and AVIF writers fall back to image.info for the ICC profile, and resize
        # copies info from the source: only what is passed below may reach the output
        frame.info = {}
    quality = quality or default_quality(fmt, settings)
    if fmt == "jpeg" and settings.jpeg_encoder == "jpegli" and len(frames) == 1 and frames[0].mode == "RGB":
        return _jpegli(frames[0], quality or settings.jpeg_quality, icc_profile, rendered.exif)
    params: dict = {}
    if icc_profile and fmt != "gif":
        params["icc_profile"] = icc_profile
    if rendered.exif and fmt != "gif":
        params["exif"] = rendered.exif
    if fmt == "jpeg":
        progressive = progressive_jpeg(frames[0].size, settings)
        params.update(
            quality=quality,
            progressive=progressive,
            optimize=not progressive,  # progressive has optimized Huffman tables of its own
            subsampling=settings.jpeg_subsampling,
        )
    elif fmt == "webp":
        params.update(quality=quality, method=settings.webp_method)
    elif fmt == "avif":
        params.update(quality=quality, speed=settings.avif_speed)
    elif fmt == "png":
        params.update(compress_level=settings.png_compress_level)
    elif fmt == "gif":
        params.update(optimize=settings.gif_optimize)
    elif fmt == "jxl":
        import pillow_jxl  # noqa: F401 (registers Pillow's JXL writer: ~1 MB a process that writes none)

        # exif: the plugin falls back to the image's own; lossless_jpeg: it would recompress the
        # source file instead of these pixels when a frame is the opened JPEG itself
        params.update(quality=quality, effort=settings.jxl_effort, exif=params.get("exif", b""), lossless_jpeg=False)
    if len(frames) > 1:
        params.update(save_all=True, append_images=frames[1:], duration=rendered.durations, loop=rendered.loop or 0)
        if fmt == "gif":
            params["disposal"] = 2
    out = io.BytesIO()
    frames[0].save(out, format=fmt.upper(), **params)
    return out.getvalue()


def progressive_jpeg(size: tuple[int, int], settings: RenderConfig) -> bool:
    """Progressive only from `jpeg_progressive_min_pixels` up: it costs 2.5x the encode time of an
    optimized baseline for ~2 % fewer bytes (bench/progressive.py), which pays where its early
    preview is seen (a long transfer), not for thumbnails. The same pixels either way."""
    return settings.jpeg_progressive and size[0] * size[1] >= settings.jpeg_progressive_min_pixels


LOSSLESS = ("png", "gif")
MIN_QUALITY = 10  # max_bytes never goes below it: past that the picture is not worth the bytes
MAX_EXTRA_ENCODES = 6  # the floor, then a bisection between it and the requested quality
# quality=auto: a search over [render] auto_quality_min..max. It starts at AUTO_FIRST, steps by
# the score's usual rise per quality (AUTO_SLOPE, doubling while every try is on one side), then
# aims where the scores of the closest failing and passing tries cross the target. It stops when a
# passing try is within AUTO_MARGIN slopes of the target or fewer than AUTO_PRECISION qualities are
# left between a failing and a passing try (a step of 1-3 changes the bytes by a few %), and after
# AUTO_MAX_ENCODES tries (a last encode at the maximum when no try met the target and the maximum
# was not tried). AUTO_FIRST and AUTO_SLOPE: the median quality kept at the configured targets and
# the score's rise per quality there (bench/autotarget.py's grid, corpus photos at 480-1920 px).
AUTO_PRECISION = 4
AUTO_MAX_ENCODES = 5
AUTO_FIRST = {"jpeg": 78, "webp": 79, "avif": 59, "jxl": 82}
AUTO_SLOPE = {"jpeg": 0.0005, "webp": 0.0006, "avif": 0.0007, "jxl": 0.0006}
AUTO_MARGIN = 6  # in slopes of the format
# The look each image is held to: its own jpegli encode at this quality (a few ms: the probe)
AUTO_PROBE_QUALITY = 80
AUTO_MIN_DISTANCE = 0.002  # the probe's distance counts as at least this (a flat image's is ~0: any quality looks it)


def _bisect(
    low: int,
    high: int,
    attempt: Callable[[int], bytes | None],
    upward: bool,
    tries: int,
    deadline: Deadline,
    precision: int = 1,
    guess: Callable[[int, int], int | None] | None = None,
) -> tuple[bytes | None, int, int]:
    """The boundary of a monotone test over the qualities low..high: `attempt(q)` encodes at q and
    gives the body when it passes, else None. `upward`: passing at q means every lower quality
    passes too (a byte cap): the highest passing one is kept; otherwise (a look target) the lowest.
    `guess(low, high)` picks each try in low..high (default: the middle), or None to stop. At most `tries` attempts,
    until fewer than `precision` qualities are left; each checks the deadline first.
    (the kept body or None, its quality or 0, attempts made)"""
    best, kept, made = None, 0, 0
    while high - low + 1 >= precision and low <= high and made < tries:
        deadline.check()
        middle = guess(low, high) if guess else (low + high) // 2
        if middle is None:
            break
        body = attempt(middle)
        made += 1
        if body is None:
            low, high = (low, middle - 1) if upward else (middle + 1, high)
        else:
            best, kept = body, middle
            low, high = (middle + 1, high) if upward else (low, middle - 1)
    return best, kept, made


def auto_target(
    reference: perceptual.Reference, frame: Image.Image, fmt: str, settings: RenderConfig, probe: bytes = b""
) -> tuple[float, float]:
    """quality=auto's score target for one image: a distance from perfect (1 - score) of at most
    the format's ratio (`auto_quality_target`, `_webp`, `_avif`) times the distance of the image's
    own jpegli encode at AUTO_PROBE_QUALITY (`probe`, when already made). A fixed score cannot be
    the target: the same look scores 0.96-0.99 depending on the photo (a smooth sky high, foliage
    low). (the target, the probe's score)"""
    probe = probe or encode(Rendered([frame.convert("RGB")]), "jpeg", AUTO_PROBE_QUALITY, _JPEGLI)
    with Image.open(io.BytesIO(probe)) as decoded:
        score = reference.score(decoded)
    return _ratio_target(score, fmt, settings), score


def _ratio_target(probe_score: float, fmt: str, settings: RenderConfig) -> float:
    ratios = {"webp": settings.auto_quality_target_webp, "avif": settings.auto_quality_target_avif}
    return 1 - ratios.get(fmt, settings.auto_quality_target) * max(1 - probe_score, AUTO_MIN_DISTANCE)


_JPEGLI = RenderConfig(jpeg_encoder="jpegli", jpeg_progressive=False)


def encode_auto(rendered: Rendered, fmt: str, settings: RenderConfig, deadline: Deadline) -> tuple[bytes, int, int]:
    """quality=auto: the lowest quality in auto_quality_min..max (a bounded search) whose output,
    decoded, scores at least `auto_target` against the pixels encoded (imgproxy.perceptual);
    the maximum when none tried does. (body, quality, encodes made, the probe's included)"""
    from . import perceptual  # numpy: ~14 MB a worker, paid only once a request asks for auto

    frame = rendered.frames[0]
    icc = rendered.icc_profile if fmt == "jxl" else None
    if icc:  # its writer converts to sRGB: compare with what it sees
        frame = _in_srgb([frame], icc)[0]
    srgb = bool(icc)
    # a jpegli JPEG's probe is a try of the search itself: it is made with the output's metadata
    # (the same pixels as the plain probe of auto_target, so the same score)
    own = fmt == "jpeg" and settings.jpeg_encoder == "jpegli" and frame.mode == "RGB"
    look = rendered.auto_looks.get(srgb)
    reference = look[0] if look else perceptual.Reference(frame)
    deadline.check()
    probe = encode(rendered, fmt, AUTO_PROBE_QUALITY, settings) if own else b""
    if look is None:  # the first format of this request to search: later ones reuse its look
        look = rendered.auto_looks[srgb] = (reference, auto_target(reference, frame, fmt, settings, probe)[1])
    probe_score = look[1]
    target = _ratio_target(probe_score, fmt, settings)
    slope = AUTO_SLOPE.get(fmt, AUTO_SLOPE["jpeg"])
    scores: dict[int, float] = {}
    failed: dict[int, bytes] = {}
    first = AUTO_FIRST.get(fmt, (settings.auto_quality_min + settings.auto_quality_max) // 2)
    low, top = settings.auto_quality_min, max(settings.auto_quality_min, settings.auto_quality_max)
    high = top
    met = b""  # the probe when it met the target: the answer unless a lower quality does
    if probe and low <= AUTO_PROBE_QUALITY <= high:
        scores[AUTO_PROBE_QUALITY] = probe_score
        if probe_score >= target:
            met, high = probe, AUTO_PROBE_QUALITY - 1
        else:
            failed[AUTO_PROBE_QUALITY], low = probe, AUTO_PROBE_QUALITY + 1

    def attempt(quality: int) -> bytes | None:
        body = encode(rendered, fmt, quality, settings)
        with Image.open(io.BytesIO(body)) as decoded:
            scores[quality] = reference.score(decoded)
        if scores[quality] >= target:
            return body
        failed[quality] = body
        return None

    def guess(low: int, high: int) -> int | None:
        below = [q for q in scores if scores[q] < target]
        above = [q for q in scores if scores[q] >= target]
        if above and scores[min(above)] - target < min(AUTO_MARGIN * slope, (1 - target) / 4):
            return None  # a few qualities lower would miss it (a flat image's scores barely move: go on)
        if not scores:
            q = first
        elif not below or not above:
            nearest = min(above) if above else max(below)
            steps = (target - scores[nearest]) / slope * 2 ** (len(scores) - 1)
            q = nearest + (math.ceil(steps) if steps > 0 else math.floor(steps))
        else:
            fail, passed = max(below), min(above)
            rise = scores[passed] - scores[fail]
            share = (target - scores[fail]) / rise if rise > 0 else 0.5
            q = fail + math.ceil(share * (passed - fail))
        return min(max(q, low), high)

    body, quality, encodes = _bisect(low, high, attempt, False, AUTO_MAX_ENCODES, deadline, AUTO_PRECISION, guess)
    if body is not None:
        return body, quality, encodes + 1
    if met:
        return met, AUTO_PROBE_QUALITY, encodes + 1
    if top in failed:  # the maximum was tried: it is the answer
        return failed[top], top, encodes + 1
    deadline.check()
    return encode(rendered, fmt, top, settings), top, encodes + 2


def encode_within(
    rendered: Rendered,
    fmt: str,
    quality: int | str | None,
    settings: RenderConfig,
    max_bytes: int | None,
    deadline: Deadline,
) -> tuple[bytes, int]:
    """`encode` (quality=auto: `encode_auto`; a lossless format or an animation takes its default),
    and past `max_bytes` (the `max_bytes` parameter, which wins over auto's target) the highest
    quality below that fits among a bounded search, or, when nothing fits, the smallest output
    tried; lossless formats are only recompressed at maximum effort. (body, encodes made). Each
    extra encode checks the deadline."""
    encodes, level = 1, quality if isinstance(quality, int) else None
    if quality == AUTO_QUALITY and fmt not in LOSSLESS and len(rendered.frames) == 1:
        # its own JPEG encoder and AVIF speed, for the search and for a max_bytes cap after it
        settings = dataclasses.replace(
            settings, jpeg_encoder=settings.auto_jpeg_encoder, avif_speed=settings.auto_avif_speed
        )
        body, level, encodes = encode_auto(rendered, fmt, settings, deadline)
        if fmt == "jpeg" and settings.auto_jpeg_lossless_pass:
            deadline.check()
            body = lossless_pass(body)
    else:
        body = encode(rendered, fmt, level, settings)
    start = level or default_quality(fmt, settings)
    if max_bytes is None or len(body) <= max_bytes:
        return body, encodes
    if fmt in LOSSLESS:
        deadline.check()
        hardest = dataclasses.replace(settings, png_compress_level=9, gif_optimize=True)
        return min(body, encode(rendered, fmt, level, hardest), key=len), encodes + 1
    if start is None or start <= MIN_QUALITY:
        return body, encodes
    deadline.check()
    floor, encodes = encode(rendered, fmt, MIN_QUALITY, settings), encodes + 1
    if len(floor) > max_bytes:
        return floor, encodes

    def attempt(middle: int) -> bytes | None:
        candidate = encode(rendered, fmt, middle, settings)
        return candidate if len(candidate) <= max_bytes else None

    best, _, made = _bisect(MIN_QUALITY + 1, start - 1, attempt, True, MAX_EXTRA_ENCODES - 1, deadline)
    return best or floor, encodes + made


ICC_CHUNK = 65519  # an APP2 payload (65533 at most) less the 12-byte ICC_PROFILE tag and 2 sequence bytes
MAX_SEGMENT = 65533


def lossless_pass(jpeg: bytes) -> bytes:
    """mozjpeg's lossless pass (jpegtran's): progressive scans and optimal Huffman tables for the
    same coefficients, so the same pixels; every marker (EXIF, ICC) is copied."""
    import mozjpeg_lossless_optimization as mozjpeg  # ~0.4 MB, paid only once a request asks for auto

    return mozjpeg.optimize(jpeg, copy=mozjpeg.COPY_MARKERS.ALL)


def _jpegli(frame: Image.Image, quality: int, icc_profile: bytes | None, exif: bytes | None) -> bytes:
    """jpegli through pyjpegli (baseline 4:2:0; grey frames stay with libjpeg, which writes one
    channel). Its API takes pixels only, so the EXIF (APP1) and the ICC profile (APP2 chunks, as
    libjpeg writes them) go in right after SOI."""
    body = pyjpegli.encode(frame.tobytes(), frame.width, frame.height, quality=quality)
    segments = b""
    if exif and len(exif) <= MAX_SEGMENT:  # Exif.tobytes() starts with "Exif\0\0"; Pillow refuses longer
        segments += _segment(0xE1, exif)
    if icc_profile:
        chunks = [icc_profile[i : i + ICC_CHUNK] for i in range(0, len(icc_profile), ICC_CHUNK)]
        for number, chunk in enumerate(chunks[:255], 1):
            segments += _segment(0xE2, b"ICC_PROFILE\0" + bytes((number, min(len(chunks), 255))) + chunk)
    return body[:2] + segments + body[2:]


def _segment(marker: int, payload: bytes) -> bytes:
    return bytes((0xFF, marker)) + struct.pack(">H", len(payload) + 2) + payload


def _in_srgb(frames: list[Image.Image], icc: bytes) -> list[Image.Image]:
    """The JXL plugin cannot embed an ICC profile (its output is sRGB): convert the pixels instead."""
    try:
        return [ImageCms.applyTransform(f, _to_srgb(icc, f.mode)) or f for f in frames]
    except (ImageCms.PyCMSError, OSError, ValueError):
        return frames  # unusable profile: the pixels as they are, like render's fall-back
