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

from .errors import BadRequest, ConfigError, PayloadTooLarge

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
    quality: int | None = None  # None: per-format default from config
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

    def cache_key(self) -> str:
        """Canonical text: every spelling of the same request gives the same key, and since parsing
        already canonicalised every number (PLACES), two options with one key render the same."""
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
        return "&".join(parts)


def _num(value: float) -> str:
    """Shortest stable text for a number: 800.0 -> "800", 0.25 -> "0.25"."""
    text = f"{value:.{PLACES}f}".rstrip("0").rstrip(".")
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
        return tuple(named[:3]) + (255,)  # type: ignore[return-value]
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


def _set_encoding(values: dict, name: str, param: str, raw: str) -> None:
    enc = ENCODINGS.get(raw.strip().lower())
    if enc is None:
        allowed = ", ".join(dict.fromkeys(ENCODINGS.values()))
        raise BadRequest(f"{param}: {raw[:MAX_VALUE_LENGTH]!r} is not a format (allowed: {allowed})")
    values[name] = enc


def _set_quality(values: dict, name: str, param: str, raw: str) -> None:
    values[name] = _integer(param, raw, 1, 100)


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


def _set_preset(values: dict, name: str, param: str, raw: str) -> None:
    raise AssertionError("presets are expanded by parse_options before the other parameters")


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


PARAMETERS: tuple[Parameter, ...] = (
    Parameter(
        "width",
        ("scalex", "w"),
        _set_size,
        "int",
        "target box width in CSS pixels",
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
        "int",
        "encoder quality (default per format from `[render]`)",
        low=1,
        high=100,
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
)
BY_NAME = {p.name: p for p in PARAMETERS}
ALIASES = {spelling: p.name for p in PARAMETERS for spelling in (p.name, *p.aliases)}


def _apply(values: dict, name: str, raw: str, param: str) -> None:
    """Parse one canonical parameter into `values` (RenderOptions field names)."""
    BY_NAME[name].parse(values, name, param, raw)


def _canonical(values: dict) -> RenderOptions:
    """Reset what the mode ignores, so options that render alike are equal (and share one key)."""
    mode = values.get("mode", "fit")
    if mode in ("fit", "stretch"):  # nothing to place
        values.pop("gravity", None)
        values.pop("focal", None)
    elif mode == "pad" and values.get("gravity") == "smart":  # content-aware is for crop; pad centres
        values["gravity"], values["focal"] = "fp", GRAVITIES["center"]
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
    return _canonical(values)


def parse_options(
    query: Iterable[tuple[str, str]],
    presets: Mapping[str, Mapping[str, object]],
    max_width: int = MAX_DIMENSION,
    max_height: int = MAX_DIMENSION,
) -> RenderOptions:
    """Query pairs (already percent-decoded) -> RenderOptions; `sig` is skipped (checked elsewhere)."""
    explicit: dict[str, tuple[str, str]] = {}
    for param, raw in query:
        if param == SIGNATURE_PARAM:
            continue
        name = ALIASES.get(param)
        if name is None:
            raise BadRequest(f"unknown parameter {param[:MAX_VALUE_LENGTH]!r}")
        if name in explicit:
            raise BadRequest(f"{param}: given more than once")
        if len(raw) > MAX_VALUE_LENGTH:
            raise BadRequest(f"{param}: value longer than {MAX_VALUE_LENGTH} characters")
        explicit[name] = (param, raw)

    values: dict = {}
    if "preset" in explicit:
        param, raw = explicit.pop("preset")
        preset = presets.get(raw.strip())
        if preset is None:
            known = ", ".join(sorted(presets)) or "none configured"
            raise BadRequest(f"{param}: unknown preset {raw[:MAX_VALUE_LENGTH]!r} (allowed: {known})")
        for key, value in preset.items():
            _apply(values, key, str(value).lower() if isinstance(value, bool) else str(value), f"preset {raw}")
    for name, (param, raw) in explicit.items():
        _apply(values, name, raw, param)
    options = _canonical(values)

    for size, limit, param in ((options.width, max_width, "width"), (options.height, max_height, "height")):
        if size is not None and size * options.dpr > limit:
            raise PayloadTooLarge(f"{param}: {size} x dpr {_num(options.dpr)} is above the limit of {limit} px")
    return options


def with_encoding(options: RenderOptions, encoding: str) -> RenderOptions:
    return dataclasses.replace(options, encoding=encoding)
