"""`/info/<source>` (SPEC §11): what a page needs to know about a source before showing it.

Size after EXIF orientation, Pillow's format name, bytes, alpha, animation, and a placeholder
(ThumbHash and the average colour) computed on a <= 100 px downscale of the first frame. The
source is opened with the same limits as a render (checked on the header, before any pixel is
decoded) and decoded within the same memory budget, so a file /picture refuses is refused here
with the same status.
"""

from __future__ import annotations

import base64
import json
import time

from PIL import Image, ImageStat

from . import thumbhash
from .budget import UNLIMITED, Deadline, MemoryBudget, decoded_bytes
from .cache import ResultMeta, etag_of
from .config import Config
from .loader import has_alpha, open_original
from .render import _colour, _decode, _normalised, _upright, orientation_of, oriented_size
from .sources import Original

INFO_KEY = "info"  # the options part of an /info answer's cache key (a /picture key never ends so)
CONTENT_TYPE = "application/json"


def placeholder(image: Image.Image) -> tuple[str, str]:
    """(ThumbHash in standard base64, `#rrggbb` average colour) of an upright RGB(A) image <= 100 px."""
    rgba = image.convert("RGBA")
    th = thumbhash.encode(rgba.width, rgba.height, rgba.tobytes())
    red, green, blue = (round(v) for v in ImageStat.Stat(rgba.convert("RGB")).mean)  # alpha ignored
    return base64.b64encode(th).decode("ascii"), f"#{red:02x}{green:02x}{blue:02x}"


def source_info(original: Original, config: Config, budget: MemoryBudget = UNLIMITED) -> tuple[bytes, ResultMeta]:
    """The JSON answer and its cache entry's meta (blocking; runs in the render pool)."""
    started = time.perf_counter()
    opened = open_original(original, config.limits, config.security.allowed_source_formats)
    deadline = Deadline(config.render.timeout)
    with opened.image as image:
        # JPEG decodes at 1/2..1/8 scale (shrink-on-load) when that still leaves >= 100 px
        image.draft(image.mode, (thumbhash.MAX_SIDE, thumbhash.MAX_SIDE))
        with budget.hold(decoded_bytes(image), deadline):
            _decode(image)  # before getexif(), which decodes PNG itself and would hide its errors
            orientation = orientation_of(image)
            small = _normalised(opened)
            small.thumbnail((thumbhash.MAX_SIDE, thumbhash.MAX_SIDE), Image.Resampling.LANCZOS)
        small, _ = _colour(_upright(small, orientation), image.info.get("icc_profile") or None, config.render)
        width, height = oriented_size(opened.width, opened.height, orientation)
        thumb, colour = placeholder(small)
        info = {
            "width": width,
            "height": height,
            "format": opened.format,
            "bytes": original.size,
            "has_alpha": has_alpha(image),
            "animated": opened.animated,
            "frames": opened.frames,
            "thumbhash": thumb,
            "dominant_color": colour,
        }
    body = json.dumps(info, separators=(",", ":")).encode()
    ms = round((time.perf_counter() - started) * 1000, 1)
    return body, ResultMeta(CONTENT_TYPE, etag_of(body), len(body), width, height, original.last_modified, ms)
