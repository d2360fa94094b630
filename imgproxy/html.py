"""Helpers that write `/picture` URLs and responsive `<img>`/`<picture>` markup (SPEC §8).

Parameters use the canonical names of presets (`width`, `height`, `encoding`, …; aliases work
too) and are checked by the same parser as the server, so a typo fails when the page is built.
URLs are signed when the config has keys, except the allowed-width ones the server accepts
unsigned. `width`/`height` attributes are the size the server will answer, computed from the
source's header (EXIF orientation included) without rendering, so pages reserve the space.
`placeholder=True` puts the source's ThumbHash inline as a tiny PNG `src` (SPEC §11), so the page
shows it without another request, and leaves the srcset for lazyload.js to put in place.
"""

from __future__ import annotations

import base64
import binascii
import functools
import io
import json
import threading
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from urllib.parse import quote

from markupsafe import Markup, escape
from PIL import Image

from . import thumbhash
from .config import Config, LimitsConfig
from .encode import CONTENT_TYPES
from .errors import ImageProxyError
from .geometry import output_size
from .info import source_info
from .loader import open_original
from .options import ALIASES, RenderOptions
from .render import header_orientation, oriented_size
from .signing import is_allowed_width_request, signed_url
from .sources import LocalSource, Original, is_remote

PREFIX = "/picture/"
# canonical name -> the query parameter written into URLs (SPEC §2's primary names)
QUERY_NAMES = {"width": "scalex", "height": "scaley", "version": "v"}
PATH_SAFE = "/:"
DEFAULT_CONFIG = Config()
# srcset and lazyloader width steps when [security] allowed_widths names none
WIDTH_STEPS = (160, 320, 480, 640, 768, 960, 1080, 1280, 1600, 1920, 2560)
AUTO = "auto"  # img_attrs(width="auto"): sized by client hints
# The inline placeholder's long side. A ThumbHash has at most 7 terms a side, so 16 samples hold it:
# on the corpus 360-470 B of PNG against 760-1200 B at the reference decoder's 32 px, and the
# browser's smooth upscaling of it differs from the 32-px decode by 1-2.5 levels on average.
PLACEHOLDER_SIDE = 16
PLACEHOLDERS_KEPT = 1024  # data URIs remembered, by source version (~0.6 KB each)


@dataclass(frozen=True)
class Candidate:
    url: str
    width: int  # the srcset descriptor: the real output width when the source's size is known
    options: RenderOptions


def query_pairs(params: Mapping[str, object]) -> list[tuple[str, str]]:
    pairs = []
    for name, value in params.items():
        if value is None:
            continue
        canonical = ALIASES.get(name)
        if canonical is None:
            raise ValueError(f"unknown picture parameter {name!r}")
        pairs.append((QUERY_NAMES.get(canonical, canonical), format_value(value)))
    return pairs


def format_value(value: object) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, (tuple, list)):
        return ",".join(format_value(v) for v in value)
    return str(value)


def build(source: str, config: Config, params: Mapping[str, object]) -> tuple[str, RenderOptions]:
    """The URL for `source` with `params`, and the options the server will parse from it."""
    pairs = query_pairs(params)
    options = config.parse_query(pairs)
    keys = config.security.signing_keys
    if keys and is_allowed_width_request(pairs, config.security.allowed_widths):
        keys = ()  # the server takes these unsigned; the plain URL is the one the lazyloader shares
    return signed_url(PREFIX + quote(source, safe=PATH_SAFE), pairs, keys), options


def picture_url(source: str, config: Config | None = None, **params: object) -> str:
    return build(source, config or DEFAULT_CONFIG, params)[0]


@functools.lru_cache(maxsize=1024)
def header_size(original: Original, limits: LimitsConfig, formats: tuple[str, ...]) -> tuple[int, int]:
    """Oriented size from the header only; cached per file version (Original carries it)."""
    opened = open_original(original, limits, formats)
    with opened.image as image:
        return oriented_size(opened.width, opened.height, header_orientation(image))


def local_original(source: str, config: Config) -> Original | None:
    """The local source's current version, or None (remote, missing or refused)."""
    if is_remote(source):
        return None
    local = LocalSource(config.path(config.sources.local.root), config.limits.max_source_bytes)
    try:
        return local.load(source)
    except ImageProxyError:
        return None


def source_size(source: str, config: Config) -> tuple[int, int] | None:
    """The local source's size, or None when unknown (remote, missing or unreadable)."""
    original = local_original(source, config)
    if original is None:
        return None
    try:
        return header_size(original, config.limits, config.security.allowed_source_formats)
    except ImageProxyError:
        return None


def placeholder_uri(hash_: bytes) -> str:
    """A ThumbHash decoded to a PNG data URI PLACEHOLDER_SIDE px on its long side (RGB when the
    hash has no alpha: a quarter fewer bytes)."""
    w, h, rgba = thumbhash.decode(hash_, PLACEHOLDER_SIDE)
    image = Image.frombytes("RGBA", (w, h), rgba)
    if not hash_[2] & 0x80:
        image = image.convert("RGB")
    buffer = io.BytesIO()
    image.save(buffer, "PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


_placeholders: OrderedDict[tuple[object, ...], str | None] = OrderedDict()
_placeholders_lock = threading.Lock()  # pages render in starlette's threads


def source_placeholder(source: str, config: Config) -> str | None:
    """The placeholder data URI of a local source, from the ThumbHash /info answers (the same code, no
    request), kept per source version; None for remote sources (a page would wait on another host)
    and for sources /info refuses."""
    original = local_original(source, config)
    if original is None:
        return None
    key = (original.key, config.render, config.limits, config.security.allowed_source_formats)
    with _placeholders_lock:
        if key in _placeholders:
            _placeholders.move_to_end(key)
            return _placeholders[key]
    try:
        body, _ = source_info(original, config)
        found: str | None = placeholder_uri(base64.b64decode(json.loads(body)["thumbhash"]))
    except ImageProxyError:
        found = None
    with _placeholders_lock:
        _placeholders[key] = found
        while len(_placeholders) > PLACEHOLDERS_KEPT:
            _placeholders.popitem(last=False)
    return found


def placeholder_for(source: str, config: Config, placeholder: bool | str) -> str | None:
    """`placeholder=True`: the local source's; a string: a ThumbHash in base64 (e.g. /info's for a
    remote or S3 source, kept by the page's app)."""
    if placeholder is True:
        return source_placeholder(source, config)
    try:
        return placeholder_uri(base64.b64decode(str(placeholder), validate=True))
    except (binascii.Error, ValueError, IndexError) as exc:
        raise ValueError(f"placeholder={placeholder!r} is not a ThumbHash in base64") from exc


def result_size(size: tuple[int, int] | None, options: RenderOptions) -> tuple[int, int] | None:
    return output_size(*size, options) if size else None


def candidates(source: str, config: Config, variants: Iterable[Mapping[str, object]]) -> list[Candidate]:
    """One srcset entry per variant, described by its real output width; duplicates (widths
    beyond what the source can give) collapse into the first, smallest request."""
    size = source_size(source, config)
    found: dict[int, Candidate] = {}
    for params in variants:
        url, options = build(source, config, params)
        out = result_size(size, options)
        if out:
            width = out[0]
        elif options.width:
            width = round(options.width * options.dpr)
        else:
            raise ValueError(f"{source}: a srcset entry needs a width ({dict(params)})")
        found.setdefault(width, Candidate(url, width, options))
    return sorted(found.values(), key=lambda c: c.width)


def join_srcset(found: list[Candidate]) -> str:
    return ", ".join(f"{c.url} {c.width}w" for c in found)


def width_variants(widths: Iterable[int], params: Mapping[str, object]) -> list[dict[str, object]]:
    return [{**params, "width": w} for w in sorted(set(widths))]


def srcset(source: str, widths: Iterable[int], config: Config | None = None, **params: object) -> str:
    """`url 320w, url 640w`: the descriptors are the widths the server really answers."""
    return join_srcset(candidates(source, config or DEFAULT_CONFIG, width_variants(widths, params)))


def width_steps(config: Config) -> tuple[int, ...]:
    """The widths unsigned requests may ask for, else WIDTH_STEPS (with a key those get signed)."""
    return config.security.allowed_widths or WIDTH_STEPS


def default_widths(width: int, config: Config) -> list[int]:
    """The width steps from half to twice the display width, plus that width."""
    return [w for w in width_steps(config) if width / 2 <= w <= width * 2] + [width]


def default_sizes(width: int | None) -> str:
    return f"(max-width: {width}px) 100vw, {width}px" if width else "100vw"


def img_attrs(
    source: str,
    width: int | str | None = None,
    sizes: str | None = None,
    widths: Iterable[int] | None = None,
    config: Config | None = None,
    hidpi: bool | float = False,
    placeholder: bool | str = False,
    **params: object,
) -> dict[str, object]:
    """`src`, `srcset`, `sizes`, `width`, `height` for an `<img>` shown `width` CSS pixels wide.

    `hidpi` (True: 2, or a density up to 4) makes it a fixed-size image with a density srcset
    instead (`src 1x, src-at-dpr-2 2x`), as Flask-Images' `hidpi`; the 2x request is encoded at
    the hidpi quality (`hidpi_quality=` here, else `[render] hidpi_quality`).
    `width="auto"`: one URL sized by client hints instead (see auto_attrs).

    `placeholder` (True: the local source's; or a ThumbHash in base64, e.g. from /info) puts the
    placeholder inline and the srcset in `data-srcset` (see lazy_attrs); unchanged when the source
    has none to give (a remote source with True)."""
    config = config or DEFAULT_CONFIG
    if isinstance(width, str):
        return auto_attrs(source, width, sizes, config, bool(hidpi or widths), params)
    if hidpi:
        attrs = density_attrs(source, width, config, 2.0 if hidpi is True else float(hidpi), params)
    else:
        if widths is None and width:
            widths = default_widths(width, config)
        found = candidates(source, config, width_variants(widths or (), params))
        src, options = build(source, config, {**params, "width": width})
        attrs = size_attrs(source, config, src, options, found, sizes or default_sizes(width))
    uri = placeholder_for(source, config, placeholder) if placeholder else None
    return lazy_attrs(attrs, uri) if uri else attrs


def lazy_attrs(attrs: Mapping[str, object], placeholder: str) -> dict[str, object]:
    """An `<img>`'s attributes with the placeholder data URI as `src` (the pages' CSP allows `img-src
    data:`; a CSS background would need an inline style) and the real candidates in `data-srcset`,
    which lazyload.js moves to `srcset` near the viewport (the browser then picks, as without it;
    the URLs stay signed). `width`/`height` stay, so the box is reserved; the bare `data-placeholder`
    makes the lazyloader fade the image in over the placeholder."""
    lazy: dict[str, object] = {"src": placeholder, "data-srcset": attrs.get("srcset") or attrs["src"]}
    lazy.update((name, attrs[name]) for name in ("sizes", "width", "height") if name in attrs)
    lazy["data-placeholder"] = True
    return lazy


def auto_attrs(
    source: str, width: str, sizes: str | None, config: Config, other_sizing: bool, params: Mapping[str, object]
) -> dict[str, object]:
    """`src` with `width=auto` (SPEC §11, needs `[render] client_hints`) and `sizes` (default 100vw):
    Chromium sends Sec-CH-Width for an <img> with `sizes`, and the server sizes the answer by it. No
    srcset (the server picks) and no width/height (the size is the browser's)."""
    if width != AUTO:
        raise ValueError(f"width: {width!r} is not a number or 'auto'")
    if other_sizing:
        raise ValueError("width='auto' sizes the image from client hints: it takes no widths or hidpi")
    return {"src": build(source, config, {**params, "width": AUTO})[0], "sizes": sizes or default_sizes(None)}


def density_attrs(
    source: str, width: int | None, config: Config, density: float, params: Mapping[str, object]
) -> dict[str, object]:
    """A fixed-size `<img>`'s attributes with `srcset="… 1x, … Nx"`. The Nx descriptor is the real
    ratio of the two outputs when the source's size is known; an Nx entry the source cannot make
    larger than the 1x one is left out (as Flask-Images drops hidpi when it would enlarge)."""
    one_x = {k: v for k, v in params.items() if ALIASES.get(k) != "hidpi_quality"}  # unused below dpr 2
    src, options = build(source, config, {**one_x, "width": width})
    attrs = size_attrs(source, config, src, options, [], "")
    url, dense = build(source, config, {**params, "width": width, "dpr": density})
    size = source_size(source, config)
    low, high = result_size(size, options), result_size(size, dense)
    ratio = round(high[0] / low[0], 2) if low and high else density
    if ratio > 1:
        attrs["srcset"] = f"{src} 1x, {url} {ratio:g}x"
    return attrs


def size_attrs(
    source: str, config: Config, src: str, options: RenderOptions, found: list[Candidate], sizes: str
) -> dict[str, object]:
    """An `<img>`'s src, srcset, sizes and the real width and height of `src`."""
    attrs: dict[str, object] = {"src": src}
    if found:
        attrs["srcset"] = join_srcset(found)
        attrs["sizes"] = sizes
    size = result_size(source_size(source, config), options)
    if size:
        attrs["width"], attrs["height"] = size
    return attrs


def tag(name: str, attrs: Mapping[str, object]) -> Markup:
    """`<name a="v" …>` with every value escaped; None drops an attribute, True writes it bare."""
    parts = [name]
    for key, value in attrs.items():
        if value is None or value is False:
            continue
        parts.append(str(escape(key)) if value is True else f'{escape(key)}="{escape(value)}"')
    return Markup(f"<{' '.join(parts)}>")


def html_attrs(attrs: dict[str, object], alt: str, extra: Mapping[str, object] | None) -> dict[str, object]:
    # alt is always written: alt="" marks a decorative image, a missing alt is an accessibility bug
    return {**attrs, "alt": alt, "loading": "lazy", "decoding": "async", **(extra or {})}


def img_tag(
    source: str,
    width: int | str | None = None,
    alt: str = "",
    sizes: str | None = None,
    widths: Iterable[int] | None = None,
    attrs: Mapping[str, object] | None = None,
    config: Config | None = None,
    hidpi: bool | float = False,
    placeholder: bool | str = False,
    **params: object,
) -> Markup:
    """`<img>` with srcset/sizes and the real width/height; `attrs` adds or overrides HTML attributes.
    `hidpi`: a fixed-size image with a density srcset; `placeholder`: the ThumbHash inline until the
    lazyloader loads the image (see img_attrs)."""
    found = img_attrs(
        source, width=width, sizes=sizes, widths=widths, config=config, hidpi=hidpi, placeholder=placeholder, **params
    )
    return tag("img", html_attrs(found, alt, attrs))


def picture_tag(
    source: str,
    presets: Iterable[str] | None = None,
    widths: Iterable[int] | None = None,
    formats: Iterable[str] = ("avif", "webp"),
    sizes: str | None = None,
    width: int | None = None,
    alt: str = "",
    attrs: Mapping[str, object] | None = None,
    config: Config | None = None,
    placeholder: bool | str = False,
    **params: object,
) -> Markup:
    """`<picture>`: a `<source type srcset sizes>` per format, then an `<img>` fallback.

    The candidates are `presets` by name, else `widths`, else the width steps around `width`
    (all configured steps without it). The fallback's `src` is the `width` request when given,
    else the largest candidate. `placeholder` as in img_attrs: every srcset waits in `data-srcset`.
    """
    config = config or DEFAULT_CONFIG
    uri = placeholder_for(source, config, placeholder) if placeholder else None
    if presets is not None:
        variants = [{**params, "preset": name} for name in presets]
    else:
        variants = width_variants(widths or (default_widths(width, config) if width else width_steps(config)), params)
    sizes = sizes or default_sizes(width)
    lines = []
    for fmt in formats:
        if fmt not in CONTENT_TYPES:
            raise ValueError(f"unknown format {fmt!r} (allowed: {', '.join(CONTENT_TYPES)})")
        found = candidates(source, config, [{**v, "encoding": fmt} for v in variants])
        srcset_name = "data-srcset" if uri else "srcset"
        lines.append(tag("source", {"type": CONTENT_TYPES[fmt], srcset_name: join_srcset(found), "sizes": sizes}))
    found = candidates(source, config, variants)
    src, options = build(source, config, {**params, "width": width}) if width else (found[-1].url, found[-1].options)
    img = size_attrs(source, config, src, options, found, sizes)
    lines.append(tag("img", html_attrs(lazy_attrs(img, uri) if uri else img, alt, attrs)))
    return Markup("<picture>") + Markup("").join(lines) + Markup("</picture>")


def img_size(source: str, config: Config | None = None, **params: object) -> tuple[int, int] | None:
    """(width, height) the server answers for `source` with `params` (Flask-Images'
    `resized_img_size`), from the local source's header; None when the size is unknown."""
    config = config or DEFAULT_CONFIG
    return result_size(source_size(source, config), build(source, config, params)[1])


def install_jinja(env, config: Config) -> None:
    """Jinja2 globals of the same names, bound to `config`: `{{ picture_tag('a.jpg', widths=[320, 640]) }}`."""
    for helper in (picture_url, srcset, img_attrs, img_tag, picture_tag, img_size):
        env.globals[helper.__name__] = functools.partial(helper, config=config)
