"""Named overlays (`[watermarks.NAME]`): loaded and checked once at start-up, drawn on the output.

The step runs after sharpen/blur/pixelate and before the encode (SPEC §12), on every frame of an
animation, on the whole output canvas (with `pad`, the padding too: the mark sits where the viewer
sees the corner). Clients only pick a configured name; they never supply an image.
"""

from __future__ import annotations

import hashlib
import io
import math
import threading
import typing
from collections import OrderedDict

from PIL import Image

from .errors import ConfigError
from .options import GRAVITIES, VERSION_CHARS

if typing.TYPE_CHECKING:
    from .config import WatermarkConfig

MAX_FILE_BYTES = 10 * 1024**2
MAX_SIDE = 4096  # of the overlay file, checked from its header before decoding
FORMATS = ("PNG", "WEBP", "JPEG", "GIF", "AVIF", "BMP", "TIFF")
RESIZED_KEPT = 8  # overlays kept resized, per watermark (one per output size in use)


class Overlay:
    """One configured watermark: its settings, its decoded RGBA image and a digest of both
    (part of every result key that uses it, so a new file or setting gives new URLs' answers)."""

    def __init__(self, name: str, settings: WatermarkConfig, image: Image.Image, digest: str):
        self.name = name
        self.settings = settings
        self.image = image
        self.digest = digest
        self._lock = threading.Lock()  # render threads share the resized copies
        self._resized: OrderedDict[tuple[int, int], Image.Image] = OrderedDict()

    def size_on(self, width: int, height: int) -> tuple[int, int]:
        """The overlay's size on a `width` x `height` output: `scale` x the output width (else its
        own size), shrunk to fit inside the margins."""
        ow, oh = self.image.size
        margin = self.settings.margin
        w = self.settings.scale * width if self.settings.scale else float(ow)
        h = w * oh / ow
        fit = min(1.0, max(1, width - 2 * margin) / w, max(1, height - 2 * margin) / h)
        return max(1, round(w * fit)), max(1, round(h * fit))

    def resized(self, size: tuple[int, int]) -> Image.Image:
        """The overlay at `size` with the opacity in its alpha; always made from the original, so
        the kept copies change only the time, never the bytes."""
        with self._lock:
            kept = self._resized.get(size)
            if kept is not None:
                self._resized.move_to_end(size)
                return kept
        image = self.image if size == self.image.size else self.image.resize(size, Image.Resampling.LANCZOS)
        opacity = self.settings.opacity
        if opacity < 1:
            image = image.copy()
            image.putalpha(image.getchannel("A").point(lambda a: round(a * opacity)))
        with self._lock:
            self._resized[size] = image
            while len(self._resized) > RESIZED_KEPT:
                self._resized.popitem(last=False)
        return image

    def positions(self, width: int, height: int, size: tuple[int, int]) -> tuple[list[int], list[int]]:
        """Left edges and top edges of the overlay: one place at `position` inside the margins, or,
        with `repeat`, a grid through that place with `margin` between tiles, covering the output."""
        w, h = size
        margin = self.settings.margin
        gx, gy = GRAVITIES[self.settings.position]
        x = margin + round(gx * max(0, width - 2 * margin - w))
        y = margin + round(gy * max(0, height - 2 * margin - h))
        if not self.settings.repeat:
            return [x], [y]
        return _grid(x, w + margin, width), _grid(y, h + margin, height)

    def apply(self, image: Image.Image) -> Image.Image:
        """The output frame with the mark drawn on it, in place when its mode allows: the frame
        belongs to this render (a kept decode is copied before it gets here)."""
        width, height = image.size
        size = self.size_on(width, height)
        tile = self.resized(size)
        xs, ys = self.positions(width, height, size)
        if image.mode in ("L", "LA"):  # a coloured mark stays coloured
            image = image.convert("RGBA" if image.mode == "LA" else "RGB")
        if len(xs) > 1:  # one strip with every tile of a row, drawn once per row
            strip = Image.new("RGBA", (width, size[1]), (0, 0, 0, 0))
            for x in xs:
                strip.paste(tile, (x, 0))
            tile, xs = strip, [0]
        if image.mode == "RGBA":  # composited: the output's own transparency stays right under the mark
            paint, mask = tile, None
        else:
            paint, mask = tile.convert(image.mode), tile.getchannel("A")
        for y in ys:
            for x in xs:
                _draw(image, paint, mask, x, y)
        return image


def _grid(anchor: int, step: int, length: int) -> list[int]:
    """Positions every `step` through `anchor` that show at least one pixel of a `step`-long span."""
    first = anchor - math.ceil(anchor / step) * step
    return list(range(first, length, step))


def _draw(image: Image.Image, paint: Image.Image, mask: Image.Image | None, x: int, y: int) -> None:
    """Blend `paint` (through `mask`, else its own alpha) over `image` at (x, y) in place; the part
    outside the image is cut off."""
    left, top = max(0, -x), max(0, -y)
    if left or top:
        box = (left, top, paint.width, paint.height)
        paint, mask = paint.crop(box), mask.crop(box) if mask is not None else None
        x, y = x + left, y + top
    if paint.width <= 0 or paint.height <= 0 or x >= image.width or y >= image.height:
        return
    if mask is None:
        image.alpha_composite(paint, (x, y))
    else:
        image.paste(paint, (x, y), mask)


def load_overlay(name: str, settings: WatermarkConfig, path: str, key: str) -> Overlay:
    """Read and decode the overlay file once; ConfigError (naming `key`) when it cannot be used."""
    if not name or len(name) > 64 or not set(name) <= VERSION_CHARS:
        raise ConfigError(f"watermarks.{name}: a name is up to 64 URL-safe characters (A-Z a-z 0-9 - _ . ~)")
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"{key}: cannot read {path} ({exc.strerror or exc})") from None
    if len(data) > MAX_FILE_BYTES:
        raise ConfigError(f"{key}: {path} is larger than {MAX_FILE_BYTES // 1024**2} MB")
    try:
        with Image.open(io.BytesIO(data), formats=FORMATS) as opened:
            if opened.width > MAX_SIDE or opened.height > MAX_SIDE:
                raise ConfigError(f"{key}: {path} is {opened.width}x{opened.height}, above {MAX_SIDE}x{MAX_SIDE}")
            image = opened.convert("RGBA")
    except ConfigError:
        raise
    except Exception as exc:  # any decoder failure: the file is not a usable image
        raise ConfigError(f"{key}: {path} is not an image ({', '.join(FORMATS)}): {exc}") from None
    image.load()
    described = repr((settings.position, settings.margin, settings.opacity, settings.scale, settings.repeat)).encode()
    digest = hashlib.sha256(hashlib.sha256(data).digest() + described).hexdigest()[:16]
    return Overlay(name, settings, image, digest)
