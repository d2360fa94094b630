"""Parse `/picture` query parameters into a frozen `RenderOptions` (pure, no I/O).

Parsing is strict: unknown or repeated parameters and out-of-range values are errors naming the
parameter and what is allowed. No regular expressions touch client input, and every value is
length-checked first, so malformed input fails fast.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from PIL import ImageColor

from . import avif
from .errors import BadRequest, ConfigError, PayloadTooLarge
from .orient import FLIPS, canonical

SIGNATURE_PARAM = "sig"
ENCODINGS = {
    "jpeg": "jpeg",
    "jpg": "jpeg",
    "png": "png",
    "webp": "webp",
    "avif": "avif",
    "gif": "gif",
    "jxl": "jxl",
    "auto": "auto",
}
if not avif.AVAILABLE:  # a Pillow without an AVIF codec (imgproxy/avif.py): neither asked for nor negotiated
    del ENCODINGS["avif"]
LOSSLESS_ENCODINGS = ("png", "gif")
MODES = ("fit", "crop", "pad", "stretch")
GRAVITIES = {
    "center": (0.5, 0.5),
    "centre": (0.5, 0.5),
    "north": (0.5, 0.0),
    "south": (0.5, 1.0),
    "east": (1.0, 0.5),
    "west": (0.0, 0.5),
    "northeast": (1.0, 0.0),
    "northwest": (0.0, 0.0),
    "southeast": (1.0, 1.0),
    "southwest": (0.0, 1.0),
}
MAX_VALUE_LENGTH = 64
MAX_DIMENSION = 100_000  # beyond any limit; the configured max_output_* decide the 413
TRUE_WORDS = ("1", "true", "yes", "on")
FALSE_WORDS = ("0", "false", "no", "off")
VERSION_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.~")
NUMBER_CHARS = frozenset("0123456789.")
WHITE = (255, 255, 255, 255)
ROTATIONS = ("0", "90", "180", "270")
PLACES = 4  # decimals kept of a fractional parameter, once at parse time: the key and the render see one value


@dataclass(frozen=True)
class CropRegion:
    """x, y, w, h each in whole pixels or, where the flag is set, percent of the source (4 decimals)."""

    values: tuple[float, float, float, float]
    percent: tuple[bool, bool, bool, bool]

    def to_pixels(self, sw: int, sh: int) -> tuple[int, int, int, int]:
        scales = (sw, sh, sw, sh)
        x, y, w, h = (round(v * s / 100) if pct else round(v) for v, pct, s in zip(self.values, self.percent, scales))
        if w < 1 or h < 1 or x + w > sw or y + h > sh:
            raise BadRequest(f"crop: region {x},{y},{w},{h} is not inside the {sw}x{sh} source")
        return x, y, w, h

    def canonical(self) -> str:
        return ",".join(f"{_num(v)}%" if pct else _num(v) for v, pct in zip(self.values, self.percent))


@dataclass(frozen=True)
class RenderOptions:
    width: int | None = None
    height: int | None = None
    encoding: str | None = None  # None: the configured default; "auto": from Accept
    quality: int | str | None = None  # None: per-format default from config; AUTO_QUALITY: searched
    mode: str = "fit"
    gravity: str = "fp"  # "fp": around `focal` (crop and pad); "smart": content-aware (crop only)
    focal: tuple[float, float] = (0.5, 0.5)
    enlarge: bool = False
    background: tuple[int, int, int, int] = WHITE
    dpr: float = 1.0
    crop: CropRegion | None = None
    sharpen: tuple[float, int, int] | None = None  # radius, percent, threshold
    blur: float | None = None
    version: str | None = None
    watermark: str | None = None  # a [watermarks.NAME]
    watermark_digest: str = ""  # of that watermark's image and settings (from the config)
    max_bytes: int | None = None
    rotate: int = 0  # clockwise degrees; with `flip` canonical (orient.canonical): flip is "" or "h"
    flip: str = ""
    trim: int | None = None  # border tolerance 0..255; None: no trim
    pixelate: int | None = None  # block size in output pixels
    transform: Transform | None = None
    # width=auto (SPEC §11): "" none; AUTO_DEVICE: the width and dpr come from client hints; AUTO_URL: the
    # width does, `dpr` was given. hints.resolve_width replaces it with a width before any cache key.
    auto_width: str = ""

    def cache_key(self) -> str:
        """Canonical text: every spelling of the same request gives the same key, and since parsing
        already canonicalised every number (PLACES), two options with one key render the same."""
        assert not self.auto_width, "width=auto is resolved from the request's hints before the key is made"
        parts = [
            f"w={self.width or ''}",
            f"h={self.height or ''}",
            f"fm={self.encoding or ''}",
            f"q={self.quality or ''}",
            f"m={self.mode}",
            f"dpr={_num(self.dpr)}",
            f"en={int(self.enlarge)}",
            "bg=%02x%02x%02x%02x" % self.background,
        ]
        if self.mode == "crop" or self.mode == "pad":
            g = f"fp:{_num(self.focal[0])},{_num(self.focal[1])}" if self.gravity != "smart" else "smart"
            parts.append(f"g={g}")
        if self.crop:
            parts.append(f"crop={self.crop.canonical()}")
        if self.sharpen:
            parts.append("sh=%s,%d,%d" % (_num(self.sharpen[0]), self.sharpen[1], self.sharpen[2]))
        if self.blur:
            parts.append(f"blur={_num(self.blur)}")
        if self.version:
            parts.append(f"v={self.version}")
        if self.watermark:
            parts.append(f"wm={self.watermark}:{self.watermark_digest}")
        if self.max_bytes:
            parts.append(f"mb={self.max_bytes}")
        if self.rotate:
            parts.append(f"rot={self.rotate}")
        if self.flip:
            parts.append(f"fl={self.flip}")
        if self.trim is not None:
            parts.append(f"trim={self.trim}")
        if self.pixelate:
            parts.append(f"pix={self.pixelate}")
        if self.transform:
            parts.append(f"tf={self.transform.canonical()}")
        return "&".join(parts)


def _num(value: float, places: int = PLACES) -> str:
    """Shortest stable text for a number: 800.0 -> "800", 0.25 -> "0.25"."""
    text = f"{value:.{places}f}".rstrip("0").rstrip(".")
    return text or "0"


def _decimal(param: str, raw: str, low: float, high: float, allowed: str, places: int = PLACES) -> float:
    """A fractional parameter, rounded once here to what the cache key can tell apart."""
    return round(_number(param, raw, low, high, allowed), places)


def _number(param: str, raw: str, low: float, high: float, allowed: str) -> float:
    """Strict decimal: digits with at most one dot. No signs, exponents, nan or inf."""
    text = raw.strip()
    if not text or len(text) > 16 or not set(text) <= NUMBER_CHARS or text.count(".") > 1 or text == ".":
        raise BadRequest(f"{param}: {raw[:MAX_VALUE_LENGTH]!r} is not a number (allowed: {allowed})")
    value = float(text)
    if not (low <= value <= high) or math.isnan(value):
        raise BadRequest(f"{param}: {text} is out of range (allowed: {allowed})")
    return value


def _integer(param: str, raw: str, low: int, high: int) -> int:
    allowed = f"{low}..{high}"
    value = _number(param, raw, low - 0.5, high + 0.5, allowed)
    rounded = math.floor(value + 0.5)
    if not low <= rounded <= high:
        raise BadRequest(f"{param}: {raw.strip()} is out of range (allowed: {allowed})")
    return rounded


def _boolean(param: str, raw: str) -> bool:
    word = raw.strip().lower()
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False
    raise BadRequest(f"{param}: expected 1/true or 0/false")


def parse_color(param: str, raw: str) -> tuple[int, int, int, int]:
    """CSS colour names and #rgb, #rrggbb, #rrggbbaa (the '#' may be omitted)."""
    text = raw.strip().lower()
    hex_digits = text[1:] if text.startswith("#") else text
    if len(hex_digits) in (3, 6, 8) and all(c in "0123456789abcdef" for c in hex_digits):
        if len(hex_digits) == 3:
            hex_digits = "".join(c * 2 for c in hex_digits)
        rgba = [int(hex_digits[i : i + 2], 16) for i in range(0, len(hex_digits), 2)]
        return tuple(rgba + [255] * (4 - len(rgba)))  # type: ignore[return-value]
    named = ImageColor.colormap.get(text) if text.isalpha() else None
    if isinstance(named, str):  # Pillow caches some names as tuples once looked up
        return parse_color(param, named)
    if isinstance(named, tuple):
        r, g, b = named[:3]  # unpacked: Pillow's stubs type colormap differently across versions
        return (r, g, b, 255)
    if text == "transparent":
        return (0, 0, 0, 0)
    raise BadRequest(
        f"{param}: {raw[:MAX_VALUE_LENGTH]!r} is not a colour (allowed: a CSS name, #rgb, #rrggbb, #rrggbbaa)"
    )


def _gravity(param: str, raw: str) -> tuple[str, tuple[float, float]]:
    text = raw.strip().lower()
    if text in GRAVITIES:
        return "fp", GRAVITIES[text]  # a name is its focal point: `north` and `fp:0.5,0` are one request
    if text == "smart":
        return "smart", (0.5, 0.5)
    if text.startswith("fp:"):
        xy = text[3:].split(",")
        if len(xy) == 2:
            fx = _decimal(param, xy[0], 0, 1, "fp:X,Y with X and Y in 0..1")
            fy = _decimal(param, xy[1], 0, 1, "fp:X,Y with X and Y in 0..1")
            return "fp", (fx, fy)
    raise BadRequest(
        f"{param}: {raw[:MAX_VALUE_LENGTH]!r} is not a gravity (allowed: center, north, south, east, west, "
        "northeast, northwest, southeast, southwest, smart, fp:X,Y)"
    )


def _crop(param: str, raw: str) -> CropRegion:
    items = raw.split(",")
    if len(items) != 4:
        raise BadRequest(f"{param}: expected x,y,w,h in pixels or percent")
    values, percent = [], []
    allowed = "x,y,w,h in pixels or 0..100%"
    for item in items:
        item = item.strip()
        pct = item.endswith("%")
        if pct:
            values.append(_decimal(param, item[:-1], 0, 100, allowed))
        else:  # whole pixels, rounded like width and height
            values.append(float(math.floor(_number(param, item, 0, MAX_DIMENSION, allowed) + 0.5)))
        percent.append(pct)
    return CropRegion(tuple(values), tuple(percent))  # type: ignore[arg-type]


def _sharpen(param: str, raw: str) -> tuple[float, int, int] | None:
    items = raw.split(",")
    if len(items) == 1:
        radius = _decimal(param, items[0], 0, 10, "an amount 0..10 or radius,percent,threshold")
        return (radius, 100, 2) if radius else None
    if len(items) != 3:
        raise BadRequest(f"{param}: expected an amount or radius,percent,threshold")
    radius = _decimal(param, items[0], 0.1, 10, "radius 0.1..10")
    percent = _integer(param, items[1], 1, 500)
    threshold = _integer(param, items[2], 0, 255)
    return (radius, percent, threshold)


def _version(param: str, raw: str) -> str:
    if not raw or len(raw) > 64 or not set(raw) <= VERSION_CHARS:
        raise BadRequest(f"{param}: expected up to 64 URL-safe characters (A-Z a-z 0-9 - _ . ~)")
    return raw


def _set_size(values: dict, name: str, param: str, raw: str) -> None:
    values[name] = _integer(param, raw, 1, MAX_DIMENSION)


AUTO_DEVICE = "device"  # width=auto without `dpr`: the device's (Sec-CH-DPR)
AUTO_URL = "url"  # width=auto with `dpr` given


def _set_width(values: dict, name: str, param: str, raw: str) -> None:
    """A width, or `auto`: a marker here (parsing stays pure); _canonical records whether `dpr` was given."""
    if raw.strip().lower() == "auto":
        values["auto_width"] = AUTO_DEVICE
    else:
        _set_size(values, name, param, raw)


def _set_encoding(values: dict, name: str, param: str, raw: str) -> None:
    enc = ENCODINGS.get(raw.strip().lower())
    if enc is None:
        allowed = ", ".join(dict.fromkeys(ENCODINGS.values()))
        raise BadRequest(f"{param}: {raw[:MAX_VALUE_LENGTH]!r} is not a format (allowed: {allowed})")
    values[name] = enc


AUTO_QUALITY = "auto"


def _set_quality(values: dict, name: str, param: str, raw: str) -> None:
    """1..100, or `auto`: the smallest output within `[render] auto_quality_target` (encode.encode_auto)."""
    if raw.strip().lower() == AUTO_QUALITY:
        values[name] = AUTO_QUALITY
        return
    try:
        values[name] = _integer(param, raw, 1, 100)
    except BadRequest as exc:
        raise BadRequest(exc.message.removesuffix(")") + " or auto)") from None


def _set_mode(values: dict, name: str, param: str, raw: str) -> None:
    mode = raw.strip().lower()
    if mode not in MODES:
        raise BadRequest(f"{param}: {raw[:MAX_VALUE_LENGTH]!r} is not a mode (allowed: {', '.join(MODES)})")
    values[name] = mode


def _set_gravity(values: dict, name: str, param: str, raw: str) -> None:
    values["gravity"], values["focal"] = _gravity(param, raw)


def _set_enlarge(values: dict, name: str, param: str, raw: str) -> None:
    values[name] = _boolean(param, raw)


def _set_background(values: dict, name: str, param: str, raw: str) -> None:
    values[name] = parse_color(param, raw)


def _set_dpr(values: dict, name: str, param: str, raw: str) -> None:
    values[name] = _decimal(param, raw, 1, 4, "1..4", places=2)


def _set_crop(values: dict, name: str, param: str, raw: str) -> None:
    values[name] = _crop(param, raw)


def _set_sharpen(values: dict, name: str, param: str, raw: str) -> None:
    values[name] = _sharpen(param, raw)


def _set_blur(values: dict, name: str, param: str, raw: str) -> None:
    values[name] = _decimal(param, raw, 0, 50, "0..50", places=2) or None


def _set_version(values: dict, name: str, param: str, raw: str) -> None:
    values[name] = _version(param, raw)


def _set_watermark(values: dict, name: str, param: str, raw: str) -> None:
    """The name only; parse_options checks it against the config's watermarks."""
    values[name] = _version(param, raw.strip())


MAX_BYTES_RANGE = (100, 50_000_000)


def _set_max_bytes(values: dict, name: str, param: str, raw: str) -> None:
    low, high = MAX_BYTES_RANGE
    text = raw.strip()
    if not text.isdigit() or not text.isascii() or len(text) > 9 or not low <= int(text) <= high:
        raise BadRequest(f"{param}: {raw[:MAX_VALUE_LENGTH]!r} is not allowed (allowed: a byte count {low}..{high})")
    values[name] = int(text)


def _set_rotate(values: dict, name: str, param: str, raw: str) -> None:
    if raw.strip() not in ROTATIONS:
        raise BadRequest(f"{param}: {raw[:MAX_VALUE_LENGTH]!r} is not a rotation (allowed: {', '.join(ROTATIONS)})")
    values[name] = int(raw)


def _set_flip(values: dict, name: str, param: str, raw: str) -> None:
    flip = raw.strip().lower()
    if not flip or flip not in FLIPS:
        raise BadRequest(f"{param}: {raw[:MAX_VALUE_LENGTH]!r} is not a flip (allowed: h, v, hv)")
    values[name] = flip


def _set_trim(values: dict, name: str, param: str, raw: str) -> None:
    values[name] = _integer(param, raw, 0, 255)


def _set_pixelate(values: dict, name: str, param: str, raw: str) -> None:
    values[name] = _integer(param, raw, 2, 100)


def _set_preset(values: dict, name: str, param: str, raw: str) -> None:
    raise AssertionError("presets are expanded by parse_options before the other parameters")


# `transform` as Flask-Images has it: `NAME,width,height,v0,…` (Pillow's Image.transform data).
# Per value: the source axis a percent refers to (0 width, 1 height); None is a matrix coefficient,
# which has no percent form (Flask-Images refuses one too).
TRANSFORM_AXES: dict[str, tuple[int | None, ...]] = {
    "EXTENT": (0, 1, 0, 1),
    "AFFINE": (None, None, 0, None, None, 1),
    "PERSPECTIVE": (None,) * 8,
    "QUAD": (0, 1, 0, 1, 0, 1, 0, 1),
}
TRANSFORM_SEPARATORS = ";_/ "  # Flask-Images' URLs join with "_" (and write % as "p"); "," is ours
TRANSFORM_MAX_LENGTH = 256  # eight coefficients do not fit the other parameters' 64 characters
MAX_PERCENT = 1000.0
COEFFICIENT_PLACES = 8  # PERSPECTIVE's g, h are ~1/width: 4 decimals would flatten them


@dataclass(frozen=True)
class Transform:
    """`method`, then width, height and the method's values: pixels of the (upright, cropped) source
    or, where the flag is set, percent of its width or height. Width/height 0: the source's."""

    method: str
    values: tuple[float, ...]
    percent: tuple[bool, ...]

    def output_size(self, sw: int, sh: int) -> tuple[int, int]:
        """Whole pixels, truncated like Flask-Images' int(), never 0 unless asked for (the source's)."""
        sizes = []
        for value, pct, full in zip(self.values[:2], self.percent[:2], (sw, sh)):
            pixels = value * full / 100 if pct else value
            sizes.append(full if value == 0 else max(1, math.floor(pixels)))
        return sizes[0], sizes[1]

    def data(self, sw: int, sh: int) -> tuple[float, ...]:
        """The method's values in source pixels (Pillow's `data`)."""
        axes = TRANSFORM_AXES[self.method]
        return tuple(
            v * (sw, sh)[axis] / 100 if pct and axis is not None else v
            for v, pct, axis in zip(self.values[2:], self.percent[2:], axes)
        )

    def canonical(self) -> str:
        axes = (0, 1) + TRANSFORM_AXES[self.method]
        return ",".join(
            [self.method]
            + [
                _num(v, PLACES if axis is not None else COEFFICIENT_PLACES) + ("%" if pct else "")
                for v, pct, axis in zip(self.values, self.percent, axes)
            ]
        )


def _transform(param: str, raw: str) -> Transform:
    text = raw.strip()
    for separator in TRANSFORM_SEPARATORS:
        text = text.replace(separator, ",")
    name, *items = text.split(",")
    method = name.upper()
    axes = TRANSFORM_AXES.get(method)
    if axes is None:
        raise BadRequest(
            f"{param}: {name[:MAX_VALUE_LENGTH]!r} is not a transform (allowed: {', '.join(TRANSFORM_AXES)})"
        )
    if len(items) != 2 + len(axes):
        raise BadRequest(
            f"{param}: {method} takes width,height and {len(axes)} values ({len(axes) + 2} in all), got {len(items)}"
        )
    values, percent = [], []
    for index, (item, axis) in enumerate(zip(items, (0, 1) + axes)):
        pct = item.endswith(("%", "p"))
        if pct and axis is None:
            raise BadRequest(f"{param}: value {index + 1} of {method} is a coefficient and cannot be a percent")
        body = item[:-1] if pct else item
        negative = index >= 2 and body.startswith("-")  # width and height are never negative
        limit = MAX_PERCENT if pct else MAX_DIMENSION
        allowed = f"{0 if index < 2 else -limit:g}..{limit:g}{'%' if pct else ''}"
        places = PLACES if axis is not None else COEFFICIENT_PLACES
        value = _decimal(param, body[1:] if negative else body, 0, limit, allowed, places)
        if index < 2 and not pct:
            value = float(math.floor(value))  # whole pixels as Flask-Images' int(): one key per size
        values.append(-value if negative and value else value)  # never -0: one spelling, one key
        percent.append(pct)
    return Transform(method, tuple(values), tuple(percent))


def _set_transform(values: dict, name: str, param: str, raw: str) -> None:
    values[name] = _transform(param, raw)


def _set_hidpi_quality(values: dict, name: str, param: str, raw: str) -> None:
    values[name] = _integer(param, raw, 1, 100)  # resolved into `quality` by _canonical


@dataclass(frozen=True)
class Parameter:
    """One `/picture` query parameter: its spellings, its parser, and how pages and docs show it.

    The README's parameter table and the playground's controls are generated from PARAMETERS, so
    a parameter added here appears in both.
    """

    name: str  # canonical name (presets use it; the RenderOptions field it fills, mostly)
    aliases: tuple[str, ...]  # other spellings accepted in a query
    parse: Callable[[dict, str, str, str], None]  # (values, name, param as written, raw) -> sets values
    kind: str  # control on the playground: "int", "number", "choice", "bool", "color", "text"
    help: str  # one line of Markdown for the README table
    choices: tuple[str, ...] = ()  # for "choice" (and suggestions for "text")
    low: float | None = None  # range of "int" and "number"
    high: float | None = None
    example: str = ""  # a value that renders, for docs and the playground's hints
    max_length: int = MAX_VALUE_LENGTH  # longest value accepted


PARAMETERS: tuple[Parameter, ...] = (
    Parameter(
        "width",
        ("scalex", "w"),
        _set_width,
        "int",
        "target box width in CSS pixels, or `auto` (client hints)",
        low=1,
        high=MAX_DIMENSION,
        example="640",
    ),
    Parameter(
        "height",
        ("scaley", "h"),
        _set_size,
        "int",
        "target box height in CSS pixels",
        low=1,
        high=MAX_DIMENSION,
        example="480",
    ),
    Parameter(
        "encoding",
        ("format", "fm"),
        _set_encoding,
        "choice",
        "output format; `auto` picks AVIF, then WebP, then JPEG XL, from `Accept` (an animation stays animated: WebP, else GIF)",
        choices=tuple(dict.fromkeys(ENCODINGS.values())),
        example="webp",
    ),
    Parameter(
        "quality",
        ("q",),
        _set_quality,
        "text",  # a number 1..100 or `auto`: a text field with `auto` suggested
        "encoder quality 1–100 (default per format from `[render]`), or `auto`: the smallest output that looks like "
        "the resized image within `[render] auto_quality_target` (lossless PNG and GIF ignore it)",
        choices=(AUTO_QUALITY,),
        example="80",
    ),
    Parameter(
        "mode", (), _set_mode, "choice", "`fit` (default), `crop`, `pad`, `stretch`", choices=MODES, example="crop"
    ),
    Parameter(
        "gravity",
        ("g",),
        _set_gravity,
        "text",
        "where `crop` cuts and `pad` places: `center`, `north`, …, `smart`, `fp:X,Y` (focal point, 0–1)",
        choices=(*GRAVITIES, "smart"),
        example="fp:0.3,0.4",
    ),
    Parameter("enlarge", (), _set_enlarge, "bool", "allow results larger than the source", example="1"),
    Parameter(
        "background", ("bg",), _set_background, "color", "colour for `pad` and for flattening alpha", example="#20252b"
    ),
    Parameter(
        "dpr", (), _set_dpr, "number", "device pixel ratio, multiplies the box (1–4)", low=1, high=4, example="2"
    ),
    Parameter(
        "crop",
        (),
        _set_crop,
        "text",
        "`x,y,w,h` in whole pixels (rounded) or percent, applied first",
        example="10%,10%,80%,80%",
    ),
    Parameter(
        "sharpen", (), _set_sharpen, "text", "unsharp mask: an amount 0–10, or `radius,percent,threshold`", example="1"
    ),
    Parameter("blur", (), _set_blur, "number", "Gaussian blur radius (0–50)", low=0, high=50, example="3"),
    Parameter("preset", ("p",), _set_preset, "text", "a `[presets.NAME]` from the config", example="thumbnail"),
    Parameter("version", ("v", "cachebuster"), _set_version, "text", "part of the cache key only", example="2"),
    Parameter(
        "watermark",
        ("wm",),
        _set_watermark,
        "text",
        "a `[watermarks.NAME]` overlay from the config, drawn after sharpen/blur on the whole output",
        example="logo",
    ),
    Parameter(
        "max_bytes",
        ("mb",),
        _set_max_bytes,
        "int",
        "largest answer in bytes (100–50000000): the quality is lowered in steps, not below 10 (PNG and GIF "
        "only recompress); still 200 with `X-Max-Bytes: unmet` when it cannot fit",
        low=MAX_BYTES_RANGE[0],
        high=MAX_BYTES_RANGE[1],
        example="20000",
    ),
    Parameter(
        "rotate",
        ("rot",),
        _set_rotate,
        "choice",
        "turn clockwise by `90`, `180` or `270` degrees (`0`: none) after `crop`; `width`/`height` apply to the turned image",
        choices=ROTATIONS,
        example="90",
    ),
    Parameter(
        "flip",
        ("fl",),
        _set_flip,
        "choice",
        "mirror after `rotate`: `h` (left-right), `v` (top-bottom) or `hv`",
        choices=("h", "v", "hv"),
        example="h",
    ),
    Parameter(
        "trim",
        ("t",),
        _set_trim,
        "int",
        "cut a uniform border: pixels within this tolerance (0–255, every channel) of the top-left one (after `flip`)",
        low=0,
        high=255,
        example="10",
    ),
    Parameter(
        "pixelate",
        ("pix",),
        _set_pixelate,
        "int",
        "blocks of this many output pixels a side (2–100), after `sharpen`/`blur`",
        low=2,
        high=100,
        example="8",
    ),
    Parameter(
        "transform",
        (),
        _set_transform,
        "text",
        "as Flask-Images: `NAME,width,height,v0,…` with `EXTENT` (4 values), `AFFINE` (6), `PERSPECTIVE` (8) or "
        "`QUAD` (8), Pillow's Image.transform data; pixels of the cropped source or `%` of it (coordinates only); "
        "width/height 0 = the source's; outside the source is `background`",
        example="EXTENT,0,0,25%,25%,75%,75%",
        max_length=TRANSFORM_MAX_LENGTH,
    ),
    Parameter(
        "hidpi_quality",
        (),
        _set_hidpi_quality,
        "int",
        "quality used when `dpr` ≥ 2 (default `[render] hidpi_quality`, else `quality`); below 2, `quality` applies",
        low=1,
        high=100,
        example="60",
    ),
)
BY_NAME = {p.name: p for p in PARAMETERS}
ALIASES = {spelling: p.name for p in PARAMETERS for spelling in (p.name, *p.aliases)}


def _apply(values: dict, name: str, raw: str, param: str) -> None:
    """Parse one canonical parameter into `values` (RenderOptions field names)."""
    BY_NAME[name].parse(values, name, param, raw)


def _canonical(values: dict, hidpi_quality: int | None = None) -> RenderOptions:
    """Reset what the mode ignores, so options that render alike are equal (and share one key).

    The quality is the one the encoder will use: at `dpr` >= 2, `hidpi_quality` (the request's,
    else `hidpi_quality`, the config's) when there is one, so the key never holds an unused quality."""
    hidpi = values.pop("hidpi_quality", None) or hidpi_quality
    if hidpi and values.get("dpr", 1.0) >= 2:
        values["quality"] = hidpi
    if values.get("quality") == AUTO_QUALITY and values.get("encoding") in LOSSLESS_ENCODINGS:
        del values["quality"]  # nothing to search: one key for what renders alike
    mode = values.get("mode", "fit")
    if mode in ("fit", "stretch"):  # nothing to place
        values.pop("gravity", None)
        values.pop("focal", None)
    elif mode == "pad" and values.get("gravity") == "smart":  # content-aware is for crop; pad centres
        values["gravity"], values["focal"] = "fp", GRAVITIES["center"]
    values["rotate"], values["flip"] = canonical(values.get("rotate", 0), values.get("flip", ""))
    if values.get("auto_width") and "dpr" in values:
        values["auto_width"] = AUTO_URL
    return RenderOptions(**values)


def parse_preset(name: str, params: Mapping[str, object]) -> RenderOptions:
    """Check a `[presets.NAME]` table (canonical names only). Raises ConfigError naming the key."""
    values: dict = {}
    for key, value in params.items():
        if ALIASES.get(key) != key or key == "preset":
            raise ConfigError(f"presets.{name}.{key}: unknown parameter (use canonical names: width, height, mode, …)")
        raw = str(value).lower() if isinstance(value, bool) else str(value)
        try:
            _apply(values, key, raw, f"presets.{name}.{key}")
        except BadRequest as exc:
            raise ConfigError(exc.message) from None
        if values.get("auto_width"):  # a preset is the fallback of width=auto, never auto itself
            raise ConfigError(f"presets.{name}.{key}: auto is for URLs (width=auto), not presets")
    return _canonical(values)


def parse_options(
    query: Iterable[tuple[str, str]],
    presets: Mapping[str, Mapping[str, object]],
    max_width: int = MAX_DIMENSION,
    max_height: int = MAX_DIMENSION,
    watermarks: Mapping[str, str] | None = None,
    hidpi_quality: int | None = None,
    client_hints: bool = False,
) -> RenderOptions:
    """Query pairs (already percent-decoded) -> RenderOptions; `sig` is skipped (checked elsewhere).
    `watermarks`: the configured watermark names, each with its digest (Config.watermark_digests).
    `hidpi_quality`: `[render] hidpi_quality`, the quality at `dpr` >= 2 when the query names none.
    `client_hints`: `[render] client_hints`; off, `width=auto` is a 400."""
    explicit: dict[str, tuple[str, str]] = {}
    for param, raw in query:
        if param == SIGNATURE_PARAM:
            continue
        name = ALIASES.get(param)
        if name is None:
            raise BadRequest(f"unknown parameter {param[:MAX_VALUE_LENGTH]!r}")
        if name in explicit:
            raise BadRequest(f"{param}: given more than once")
        if len(raw) > BY_NAME[name].max_length:
            raise BadRequest(f"{param}: value longer than {BY_NAME[name].max_length} characters")
        explicit[name] = (param, raw)

    values: dict = {}
    watermark_param = explicit["watermark"][0] if "watermark" in explicit else None
    if "preset" in explicit:
        param, raw = explicit.pop("preset")
        watermark_param = watermark_param or f"preset {raw}"
        preset = presets.get(raw.strip())
        if preset is None:
            known = ", ".join(sorted(presets)) or "none configured"
            raise BadRequest(f"{param}: unknown preset {raw[:MAX_VALUE_LENGTH]!r} (allowed: {known})")
        for key, value in preset.items():
            _apply(values, key, str(value).lower() if isinstance(value, bool) else str(value), f"preset {raw}")
    for name, (param, raw) in explicit.items():
        _apply(values, name, raw, param)
    if values.get("auto_width") and not client_hints:
        raise BadRequest(f"{explicit['width'][0]}: auto needs [render] client_hints = true (or give a number)")
    if "watermark" in values:
        values["watermark_digest"] = _watermark_digest(watermark_param or "watermark", values["watermark"], watermarks)
    options = _canonical(values, hidpi_quality)

    for size, limit, param in ((options.width, max_width, "width"), (options.height, max_height, "height")):
        if size is not None and size * options.dpr > limit:
            raise PayloadTooLarge(f"{param}: {size} x dpr {_num(options.dpr)} is above the limit of {limit} px")
    return options


def _watermark_digest(param: str, name: str, watermarks: Mapping[str, str] | None) -> str:
    if not watermarks or name not in watermarks:
        allowed = ", ".join(sorted(watermarks or ())) or "none configured"
        raise BadRequest(f"{param}: unknown watermark {name[:MAX_VALUE_LENGTH]!r} (allowed: {allowed})")
    return watermarks[name]


def with_encoding(options: RenderOptions, encoding: str) -> RenderOptions:
    return dataclasses.replace(options, encoding=encoding)
