"""The demo page (`GET /`) and its static files (`GET /static/...`), SPEC §8.

The page leads with one sample photo and what it costs: the original's bytes next to what a
phone and a desktop receive. Then it shows every sample image under `<root>/demo/` twice: in a
lazyloaded gallery (the `lazyload.js` way) and as a `<picture>` per image with a source per
format over the presets (the server-side helper way). It carries its own
Content-Security-Policy: only this origin's scripts, styles and images (plus data: images), no
inline code.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from .config import Config
from .demo import HERO
from .errors import ImageProxyError
from .geometry import output_size
from .hints import page_headers
from .html import candidates, install_jinja, width_steps
from .loader import open_original
from .options import parse_preset
from .render import header_orientation, oriented_size
from .sources import LocalSource

if TYPE_CHECKING:
    import jinja2

HERE = Path(__file__).parent
DEMO_DIR = "demo"
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".gif", ".webp", ".avif", ".tif", ".tiff", ".bmp"})
LAZY_ROOT_MARGIN = "200px"
PLAIN_KEYS = {"width", "encoding", "quality"}
PAGE_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)


def demo_images(config: Config) -> list[str]:
    """Sources (relative to the local root) of the sample images, sorted by name."""
    if config.storage.backend != "local":
        return []  # the samples are drawn into the local root, which /picture does not read then
    folder = config.path(config.sources.local.root) / DEMO_DIR
    try:
        names = sorted(p.name for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    except OSError:  # no demo folder: the page still renders, with the upload form only
        return []
    return [f"{DEMO_DIR}/{name}" for name in names]


def width_presets(config: Config) -> list[str]:
    """Presets that only set a width (aspect kept), smallest first: the `<picture>` candidates."""
    plain = [name for name, params in config.presets.items() if "width" in params and set(params) <= PLAIN_KEYS]
    return sorted(plain, key=lambda name: parse_preset(name, config.presets[name]).width or 0)


# The hero's layout, shared by its `sizes` attribute, demo.css and the device figures: one
# column below HERO_BREAK_REM, beside the figures at HERO_WIDE_REM from there on.
HERO_BREAK_REM = 64
HERO_WIDE_REM = 44
PAGE_PADDING_REM = 1
REM = 16
HERO_SIZES = f"(min-width: {HERO_BREAK_REM}rem) {HERO_WIDE_REM}rem, calc(100vw - {2 * PAGE_PADDING_REM}rem)"
DEVICES = (("Phone", 390, 3), ("Desktop", 1440, 1))  # (name, viewport CSS px, devicePixelRatio)
DEVICE_FORMAT = "avif"  # what today's phones and desktops take first
CARD_SIZES = "(min-width: 72rem) 11.2rem, (min-width: 40rem) 23vw, 45vw"  # the .cards grid in demo.css
ROW_MIN_WIDTH = 640  # narrower sources are shown at their own size, not stretched into gallery rows
ASPECT_STEPS = [r / 4 for r in range(2, 13)]  # 0.5 .. 3: the .ar-NNN classes in demo.css


@dataclass(frozen=True)
class SourceFacts:
    source: str
    width: int  # as shown (EXIF orientation applied)
    height: int
    format: str  # Pillow's name: JPEG, PNG, WEBP, GIF, ...
    bytes: int
    frames: int


@dataclass(frozen=True)
class DeviceFigure:
    """What `<picture>` hands one device: the candidate it picks and that answer's size."""

    name: str
    viewport: int
    dpr: int
    url: str
    width: int
    height: int
    format: str


def source_facts(source: str, config: Config) -> SourceFacts | None:
    """Size, format, bytes and frames of a local source from its header, or None when unreadable."""
    local = LocalSource(config.path(config.sources.local.root), config.limits.max_source_bytes)
    try:
        original = local.load(source)
        opened = open_original(original, config.limits, config.security.allowed_source_formats)
    except ImageProxyError:
        return None
    with opened.image as image:
        width, height = oriented_size(opened.width, opened.height, header_orientation(image))
    return SourceFacts(source, width, height, opened.format, original.size, opened.frames)


def hero_slot(viewport: int) -> int:
    """CSS px the hero image takes in a viewport this wide (what HERO_SIZES says)."""
    if viewport >= HERO_BREAK_REM * REM:
        return HERO_WIDE_REM * REM
    return viewport - 2 * PAGE_PADDING_REM * REM


def device_figures(hero: SourceFacts, presets: list[str], config: Config) -> list[DeviceFigure]:
    """Per device, the AVIF candidate its browser takes: the smallest that covers slot × dpr."""
    found = candidates(hero.source, config, [{"preset": name, "encoding": DEVICE_FORMAT} for name in presets])
    out = []
    for name, viewport, dpr in DEVICES:
        need = hero_slot(viewport) * dpr
        pick = next((c for c in found if c.width >= need), found[-1])
        size = output_size(hero.width, hero.height, pick.options)
        assert size is not None  # width presets have no trim, the one step whose size needs the pixels
        width, height = size
        out.append(DeviceFigure(name, viewport, dpr, pick.url, width, height, DEVICE_FORMAT.upper()))
    return out


def pick_hero(facts: list[SourceFacts]) -> SourceFacts | None:
    """The demo's lead photo: HERO when present, else the largest still image."""
    still = [f for f in facts if f.frames == 1]
    named = [f for f in still if f.source.endswith("/" + HERO)]
    ranked = named or sorted(still, key=lambda f: f.width * f.height, reverse=True)
    return ranked[0] if ranked else None


def aspect_class(width: int, height: int) -> str:
    """`ar-150` for 3:2: the nearest aspect step, so gallery rows keep every photo's shape."""
    ratio = min(ASPECT_STEPS, key=lambda step: abs(step - width / height))
    return f"ar-{round(ratio * 100)}"


def page_routes(config: Config) -> list[BaseRoute]:
    @functools.cache
    def index_template() -> jinja2.Template:
        """Made on the first visit: jinja2 and the compiled template (~1 MB) are not in every process."""
        import jinja2

        env = jinja2.Environment(
            loader=jinja2.FileSystemLoader(HERE / "templates"),
            autoescape=True,
            undefined=jinja2.StrictUndefined,
        )
        install_jinja(env, config)
        env.globals["aspect_class"] = aspect_class
        env.filters["bytes"] = human_bytes
        return env.get_template("index.html")

    def index(request: Request) -> Response:  # sync: starlette runs it in a thread (header reads)
        template = index_template()
        facts = [f for f in (source_facts(source, config) for source in demo_images(config)) if f]
        presets = width_presets(config)
        hero = pick_hero(facts) if presets else None
        html = template.render(
            images=[f.source for f in facts],
            facts=facts,
            hero=hero,
            devices=device_figures(hero, presets, config) if hero else [],
            hero_sizes=HERO_SIZES,
            card_sizes=CARD_SIZES,
            row_min_width=ROW_MIN_WIDTH,
            presets=presets,
            widths=width_steps(config),
            root_margin=LAZY_ROOT_MARGIN,
            uploads_enabled=config.uploads.enabled,
        )
        return HTMLResponse(
            html, headers={"Content-Security-Policy": PAGE_CSP, "Cache-Control": "no-cache", **page_headers(config)}
        )

    return [
        Route("/", index, methods=["GET", "HEAD"]),
        Mount("/static", app=StaticFiles(directory=HERE / "static"), name="static"),
    ]


def human_bytes(count: int) -> str:
    """1234567 -> '1.23 MB' (decimal units, as browsers' network panels show them)."""
    for unit, size in (("MB", 1_000_000), ("kB", 1_000)):
        if count >= size:
            return f"{count / size:.3g} {unit}" if count < 100 * size else f"{count / size:.0f} {unit}"
    return f"{count} B"
