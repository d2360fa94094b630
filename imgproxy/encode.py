"""Encode a rendered image to bytes (pure Pillow work, no I/O). Settings come from `[render]`."""

from __future__ import annotations

import dataclasses
import io
import struct

# registers Pillow's JXL writer (and a JXL reader, which the loader's allow-list keeps off by default)
import pillow_jxl  # noqa: F401
import pyjpegli
from PIL import Image, ImageCms

from .budget import Deadline
from .config import RenderConfig
from .render import Rendered, _to_srgb

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
        params.update(
            quality=quality,
            progressive=settings.jpeg_progressive,
            optimize=False,
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


LOSSLESS = ("png", "gif")
MIN_QUALITY = 10  # max_bytes never goes below it: past that the picture is not worth the bytes
MAX_EXTRA_ENCODES = 6  # the floor, then a bisection between it and the requested quality


def encode_within(
    rendered: Rendered, fmt: str, quality: int | None, settings: RenderConfig, max_bytes: int | None, deadline: Deadline
) -> tuple[bytes, int]:
    """`encode`, and past `max_bytes` (the `max_bytes` parameter) the highest quality that fits among
    a bounded search, or, when nothing fits, the smallest output tried; lossless formats are only
    recompressed at maximum effort. (body, encodes made). Each extra encode checks the deadline."""
    body = encode(rendered, fmt, quality, settings)
    start = quality or default_quality(fmt, settings)
    if max_bytes is None or len(body) <= max_bytes:
        return body, 1
    if fmt in LOSSLESS:
        deadline.check()
        hardest = dataclasses.replace(settings, png_compress_level=9, gif_optimize=True)
        return min(body, encode(rendered, fmt, quality, hardest), key=len), 2
    if start is None or start <= MIN_QUALITY:
        return body, 1
    deadline.check()
    best, encodes = encode(rendered, fmt, MIN_QUALITY, settings), 2
    low, high = MIN_QUALITY + 1, start - 1
    while len(best) <= max_bytes and low <= high and encodes <= MAX_EXTRA_ENCODES:
        deadline.check()
        middle = (low + high) // 2
        candidate = encode(rendered, fmt, middle, settings)
        encodes += 1
        if len(candidate) <= max_bytes:
            best, low = candidate, middle + 1
        else:
            high = middle - 1
    return best, encodes


ICC_CHUNK = 65519  # an APP2 payload (65533 at most) less the 12-byte ICC_PROFILE tag and 2 sequence bytes
MAX_SEGMENT = 65533


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
