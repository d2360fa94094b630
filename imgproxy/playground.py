"""`GET /playground` (SPEC §8): try every `/picture` parameter on a sample or an uploaded image.

The controls are generated from `options.PARAMETERS`, so a parameter added there appears on the
page without touching it. The page builds no URL itself: `POST /playground/sign` answers the URL
of the request, of the same request in every format the service writes, and of a preview of the
source, signed when `[security]` has a key. An endpoint that signs anything for anyone would make
the key pointless, so with a key it needs the `[uploads]` token (unless `[playground]
open_signing`). The page carries the answer for its first image, which the server chose, so an
image shows on load without a token too.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote

from markupsafe import Markup, escape
from PIL import Image
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import BaseRoute, Route

from .config import Config
from .encode import CONTENT_TYPES, encode
from .errors import BadRequest, Forbidden, ImageProxyError, PayloadTooLarge
from .hints import page_headers
from .html import PATH_SAFE, PREFIX, header_size, query_pairs
from .options import ALIASES, BY_NAME, PARAMETERS, Parameter
from .pages import DEMO_DIR, demo_images
from .render import Rendered
from .signing import signed_url
from .sources import LocalSource, is_remote
from .uploads import check_bearer

if TYPE_CHECKING:
    import jinja2

HERE = Path(__file__).parent
# Like pages.PAGE_CSP, plus blob: images: the page shows the very bytes it fetched and measured
PLAYGROUND_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
    "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
START_SAMPLE = f"{DEMO_DIR}/valley.jpg"  # the landscape photo demo.py draws
START_PARAMS = {"width": "640"}  # the request shown on load
PREVIEW_WIDTH = 480  # the source as shown for picking a focal point
MAX_BODY = 8 * 1024
MAX_SOURCE = 1024
MAX_VALUE = 256  # /picture checks the real limits and names the parameter; this only bounds the signer
SIGN_ACTION = "signing"


@dataclass(frozen=True)
class Control:
    """One parameter's form control: the input's type and attributes follow `Parameter.kind`."""

    parameter: Parameter
    suggestions: tuple[str, ...]  # choices of a "choice", datalist entries of a "text"
    value: str

    @property
    def name(self) -> str:
        return self.parameter.name

    @property
    def spellings(self) -> str:
        return " ".join((self.name, *self.parameter.aliases))

    @property
    def step(self) -> str:
        return "1" if self.parameter.kind == "int" else "any"

    def bound(self, value: float | None) -> str:
        return "" if value is None else f"{value:g}"

    @property
    def help(self) -> Markup:
        """The README's one line of Markdown with its `code` spans kept, everything escaped."""
        parts = self.parameter.help.split("`")
        return Markup("").join(escape(p) if i % 2 == 0 else Markup("<code>%s</code>") % p for i, p in enumerate(parts))


def controls(config: Config, values: dict[str, str]) -> list[Control]:
    extra = {"preset": tuple(config.presets), "watermark": tuple(config.watermarks)}  # configured names, as suggestions
    return [Control(p, p.choices or extra.get(p.name, ()), values.get(p.name, "")) for p in PARAMETERS]


def output_formats() -> list[str]:
    """Every format the `encoding` parameter names except `auto`: the comparison's columns."""
    return [f for f in BY_NAME["encoding"].choices if f != "auto"]


def probes(config: Config) -> list[dict[str, str]]:
    """A 2x2 image in each output format, made by the service's own encoder: the page shows the
    formats whose probe the browser decodes."""
    out = []
    pixels = Image.new("RGB", (2, 2), (200, 80, 40))
    for fmt in output_formats():
        data = encode(Rendered([pixels.copy()]), fmt, None, config.render)
        mime = CONTENT_TYPES.get(fmt, f"image/{fmt}")
        out.append({"format": fmt, "type": mime, "probe": f"data:{mime};base64,{base64.b64encode(data).decode()}"})
    return out


def first_sample(samples: list[str]) -> str | None:
    """The sample shown on load: the landscape photo when it is there."""
    return START_SAMPLE if START_SAMPLE in samples else (samples[0] if samples else None)


def original_info(source: str, config: Config) -> dict[str, int] | None:
    """Bytes and oriented size of a local original, for the savings; None when not known here."""
    if config.storage.backend != "local" or is_remote(source):
        return None
    local = LocalSource(config.path(config.sources.local.root), config.limits.max_source_bytes)
    try:
        original = local.load(source)
        width, height = header_size(original, config.limits, config.security.allowed_source_formats)
    except ImageProxyError:
        return None  # /picture answers the reason when the page asks for the image
    return {"bytes": original.size, "width": width, "height": height}


def describe(source: str, params: dict[str, str], config: Config) -> dict:
    """The URLs the page fetches for one state of its controls (signed when a key is set)."""
    keys = config.security.signing_keys
    path = PREFIX + quote(source, safe=PATH_SAFE)

    def url(extra: dict[str, str]) -> str:
        return signed_url(path, query_pairs({**params, **extra}), keys)

    preview = {"width": str(PREVIEW_WIDTH)}
    if "crop" in params:  # the focal point is relative to the cropped region
        preview["crop"] = params["crop"]
    return {
        "url": url({}),
        "formats": {fmt: url({"encoding": fmt}) for fmt in output_formats()},
        "preview": signed_url(path, query_pairs(preview), keys),
        "original": original_info(source, config),
    }


def parse_request(body: bytes) -> tuple[str, dict[str, str]]:
    """`{"source": "...", "params": [["width", "640"], ...]}` with canonical names, each once."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise BadRequest("expected a JSON object") from None
    source = data.get("source") if isinstance(data, dict) else None
    pairs = data.get("params") if isinstance(data, dict) else None
    if not isinstance(source, str) or not 0 < len(source) <= MAX_SOURCE:
        raise BadRequest(f"source: expected a path of 1..{MAX_SOURCE} characters")
    if not isinstance(pairs, list) or len(pairs) > len(PARAMETERS):
        raise BadRequest(f"params: expected a list of at most {len(PARAMETERS)} [name, value] pairs")
    params: dict[str, str] = {}
    for pair in pairs:
        if not (isinstance(pair, list) and len(pair) == 2 and all(isinstance(v, str) for v in pair)):
            raise BadRequest("params: expected [name, value] pairs of strings")
        name, value = pair
        if ALIASES.get(name) != name:
            raise BadRequest(f"unknown parameter {name[:64]!r} (use canonical names: width, height, mode, …)")
        if name in params:
            raise BadRequest(f"{name}: given more than once")
        if len(value) > MAX_VALUE:
            raise BadRequest(f"{name}: value longer than {MAX_VALUE} characters")
        params[name] = value
    return source, params


async def read_body(request: Request) -> bytes:
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY:
        raise PayloadTooLarge(f"request body is larger than {MAX_BODY} bytes")
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY:
            raise PayloadTooLarge(f"request body is larger than {MAX_BODY} bytes")
    return body


def page_html(config: Config, template: jinja2.Template, formats: list[dict[str, str]]) -> str:
    samples = demo_images(config)
    first = first_sample(samples)
    start = None
    if first:
        request = {"source": first, "params": list(START_PARAMS.items())}
        start = {"request": request, "answer": describe(first, dict(START_PARAMS), config)}
    signing = bool(config.security.signing_keys)
    return template.render(
        samples=samples,
        first=first,
        controls=controls(config, START_PARAMS),
        start=start,
        formats=formats,
        uploads_enabled=config.uploads.enabled,
        # one token field serves uploads and signing: shown when either asks for it
        needs_token=bool(config.uploads.token) or (signing and not config.playground.open_signing),
        signing=signing,
    )


def load_template() -> jinja2.Template:
    import jinja2  # only here: ~1 MB a process that never shows a page

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(HERE / "templates"), autoescape=True, undefined=jinja2.StrictUndefined
    )
    return env.get_template("playground.html")


def playground_routes(config: Config) -> list[BaseRoute]:
    if not config.playground.enabled:
        return []
    must_sign = bool(config.security.signing_keys) and not config.playground.open_signing
    token = config.uploads.token
    made: tuple[jinja2.Template, list[dict[str, str]]] | None = None

    def page(request: Request) -> Response:  # sync: starlette runs it in a thread (header reads)
        nonlocal made
        if made is None:  # on the first visit: jinja2 and the AVIF and JPEG XL encoders (~11 MB) load then
            made = load_template(), probes(config)
        html = page_html(config, *made)
        return HTMLResponse(
            html,
            headers={"Content-Security-Policy": PLAYGROUND_CSP, "Cache-Control": "no-cache", **page_headers(config)},
        )

    async def sign(request: Request) -> Response:
        if must_sign:
            if not token:
                raise Forbidden("signing is off: set an [uploads] token (or [playground] open_signing = true)")
            check_bearer(request, token, SIGN_ACTION)
        source, params = parse_request(await read_body(request))
        answer = await run_in_threadpool(describe, source, params, config)
        return JSONResponse(answer, headers={"Cache-Control": "no-store"})

    return [
        Route("/playground", page, methods=["GET", "HEAD"]),
        Route("/playground/sign", sign, methods=["POST"]),
    ]
