"""Open an original with Pillow and enforce the input limits before any pixel is decoded.

Only formats on the allow-list are tried (Pillow never guesses SVG/EPS/PDF, which would need an
external program); the header's declared size and frame count are checked against the limits.
"""

from __future__ import annotations

import io
import struct
import warnings
from dataclasses import dataclass

from PIL import Image, ImageFile, PngImagePlugin

from . import avif  # noqa: F401  (AVIF reader where Pillow has none)
from .config import LimitsConfig
from .errors import PayloadTooLarge, UnsupportedMedia
from .heif import restore_exif_orientation, truncated
from .sources import Original

# Truncated files are errors (415), never silently grey-filled.
ImageFile.LOAD_TRUNCATED_IMAGES = False
# Our own limit is checked right after open; Pillow's check stays as a second line of defence for
# plugins that allocate while opening. Its warning is noise next to our explicit check.
warnings.simplefilter("ignore", Image.DecompressionBombWarning)

ANIMATED_FORMATS = ("GIF", "WEBP", "PNG")
# the chunks after a PNG's pixel data that Pillow's getexif() reads: EXIF, XMP, ImageMagick's raw profile
PNG_METADATA_CHUNKS = (b"eXIf", b"iTXt", b"tEXt", b"zTXt")


@dataclass
class Opened:
    image: Image.Image
    format: str  # Pillow's format name: JPEG, MPO, PNG, ...
    width: int  # as stored (before EXIF orientation)
    height: int
    frames: int
    animated: bool


def open_original(original: Original, limits: LimitsConfig, formats: tuple[str, ...]) -> Opened:
    """Read the header only. Raises 413 for pixel floods, 415 for anything not an allowed image."""
    Image.MAX_IMAGE_PIXELS = limits.max_source_pixels
    fp = open(original.path, "rb") if original.path is not None else io.BytesIO(original.data or b"")
    try:
        image = Image.open(fp, formats=_pillow_openers(formats))
    except Image.DecompressionBombError:
        fp.close()
        raise PayloadTooLarge(f"source has more than {limits.max_source_pixels} pixels") from None
    except (
        OSError,
        ValueError,
        SyntaxError,
        EOFError,
        TypeError,
        IndexError,
        KeyError,
        ZeroDivisionError,
        MemoryError,
    ):
        # Pillow plugins raise a zoo of types for bad headers; all mean "not an image we accept"
        fp.close()
        allowed = ", ".join(formats)
        raise UnsupportedMedia(f"source is not a supported image (allowed: {allowed})") from None
    try:
        if image.format == "HEIF" and truncated(fp):
            raise UnsupportedMedia("source image data is truncated")
        return _check(image, limits, formats)
    except Exception:
        image.close()
        raise


def _pillow_openers(formats: tuple[str, ...]) -> list[str]:
    """Pillow opens MPO through its JPEG opener; the format it reports is checked afterwards."""
    Image.init()
    if "JXL" in formats:  # off by default ([security] allowed_source_formats)
        import pillow_jxl  # noqa: F401 (registers its reader)
    wanted = {"JPEG" if f == "MPO" else f for f in formats}
    return sorted(f for f in wanted if f in Image.OPEN)


def _check(image: Image.Image, limits: LimitsConfig, formats: tuple[str, ...]) -> Opened:
    if image.format not in formats:
        raise UnsupportedMedia(f"source format {image.format} is not allowed (allowed: {', '.join(formats)})")
    width, height = image.size
    if width < 1 or height < 1:
        raise UnsupportedMedia("source declares an empty image")
    pixels = width * height
    if pixels > limits.max_source_pixels:
        raise PayloadTooLarge(f"source is {width}x{height} = {pixels} pixels; the limit is {limits.max_source_pixels}")
    fmt = image.format or ""
    if fmt == "HEIF":
        restore_exif_orientation(image)
    animated = fmt in ANIMATED_FORMATS and bool(getattr(image, "is_animated", False))
    frames = 1
    if animated:
        try:
            frames = int(getattr(image, "n_frames", 1))
        except (OSError, ValueError, EOFError, SyntaxError):
            raise UnsupportedMedia("source animation is corrupt") from None
        if frames > limits.max_frames:
            raise PayloadTooLarge(f"source has {frames} frames; the limit is {limits.max_frames}")
        if frames * pixels > limits.max_animation_pixels:
            raise PayloadTooLarge(
                f"source animation has {frames} frames of {width}x{height}; the limit is "
                f"{limits.max_animation_pixels} pixels over all frames"
            )
    return Opened(image, fmt, width, height, frames, animated)


def png_header_exif(image: PngImagePlugin.PngImageFile) -> Image.Exif:
    """The EXIF a decode would give, without decoding: the metadata chunks that follow the (first
    frame's) pixel data go into `image.info` as a decode would put them there, the pixel data
    skipped. Pillow's getexif() finds them only by decoding (200 MB for a 7000x7000 source).
    Raises DECODE_ERRORS' kinds for a broken chunk."""
    fp = image.fp
    assert fp is not None
    resume = fp.tell()
    stream = PngImagePlugin.PngStream(fp)  # Pillow's own chunk readers, so the info is the decode's
    pixels = False
    try:
        fp.seek(8)  # the signature
        while len(header := fp.read(8)) == 8:
            length, cid = struct.unpack(">I4s", header)
            start = fp.tell()
            if cid in (b"IDAT", b"fdAT"):
                pixels = True
            elif cid == b"IEND" or (pixels and cid == b"fcTL"):  # the end, or the next frame's
                break
            elif pixels and cid in PNG_METADATA_CHUNKS:
                stream.call(cid, start, length)
            fp.seek(start + length + 4)  # and the CRC
    finally:
        fp.seek(resume)
    image.info.update(stream.im_info)
    return Image.Image.getexif(image)  # from the info only: PngImageFile's getexif() would decode


def has_alpha(image: Image.Image) -> bool:
    """An alpha channel, or a palette with a transparent entry."""
    return image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info
