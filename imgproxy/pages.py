"""The demo page (`GET /`) and its static files (`GET /static/...`), SPEC §8.

The page shows every sample image under `<root>/demo/` twice: in a lazyloaded gallery (the
`lazyload.js` way) and as a `<picture>` per image with a source per format over the presets
(the server-side helper way). It carries its own Content-Security-Policy: only this origin's
scripts, styles and images (plus data: images), no inline code.
"""

from __future__ import annotations

from pathlib import Path

import jinja2
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from .config import Config
from .hints import page_headers
from .html import install_jinja, source_size, width_steps
from .options import parse_preset

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


def page_routes(config: Config) -> list[BaseRoute]:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(HERE / "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
    )
    install_jinja(env, config)
    env.globals["source_size"] = lambda source: source_size(source, config)
    template = env.get_template("index.html")

    def index(request: Request) -> Response:  # sync: starlette runs it in a thread (header reads)
        html = template.render(
            images=demo_images(config),
            presets=width_presets(config),
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
