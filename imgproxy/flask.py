"""Flask-Images' template functions, answered by this service (SPEC §8): a Flask app swaps
`Images(app)` for `Images(app, base_url=..., key=...)` and keeps its templates.

    {{ resized_img_src('photos/a.jpg', width=300, mode='crop', height=200) }}
    {{ resized_img_tag('photos/a.jpg', width=300, hidpi=2, class_='thumb') }}

Flask-Images' arguments map onto `/picture` parameters with its defaults: both sides without a
`mode` stretch, `pad` pads with black, `enlarge` is off, `hidpi` asks for the larger image only
when the source can give it (at `hidpi_quality`, default 60), `sharpen` and `transform` take its
delimiters. URLs are absolute and signed with `key` as imgproxy.signing signs.

Sizes (`resized_img_size`, the `width`/`height` attributes) are what the service answers: the
source's size comes from `root` when given (as Flask-Images reads its own folder), else from the
service's `/info`, remembered in a small in-process cache. Importing this module needs Flask.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import NamedTuple
from urllib.parse import quote

import httpx
from flask import Flask
from markupsafe import Markup

from .config import Config, LocalSourceConfig, SecurityConfig, SourcesConfig
from .html import PATH_SAFE, build, result_size, source_size, tag
from .options import RenderOptions
from .signing import signed_url
from .sources import is_remote

log = logging.getLogger(__name__)

MODES = {"fit": "fit", "crop": "crop", "pad": "pad", "reshape": "stretch", "stretch": "stretch"}
PAD_BACKGROUND = "black"  # Flask-Images pads with black; the service's default is white
HIDPI_QUALITY = 60  # Flask-Images' quality for the hidpi image when none is given
# Flask-Images splits these values on any of these characters
SHARPEN_DELIMITERS = re.compile(r"[+:;,_/ ]")
TRANSFORM_DELIMITERS = re.compile(r"[,;:_/ ]")
# Flask-Images' own switches with no meaning here (the service always caches; URLs are absolute)
IGNORED = frozenset({"cache", "external", "_external"})
INFO_PREFIX = "/info/"


class Size(NamedTuple):
    """Flask-Images' ImageSize, as far as templates read it: `.width` and `.height`."""

    width: int
    height: int


class Images:
    """The extension: `Images(app, base_url="https://img.example.com", key="...", root=None)`.

    `root` is the folder the service serves as `[sources.local] root`, when this app can read it.
    """

    def __init__(
        self,
        app: Flask | None = None,
        base_url: str = "http://127.0.0.1:8080",
        key: str = "",
        root: str | os.PathLike[str] | None = None,
        timeout: float = 2.0,
        cache_entries: int = 1024,
        cache_seconds: float = 300.0,
    ):
        self.base_url = base_url.rstrip("/")
        self.root = Path(root) if root is not None else None
        local = LocalSourceConfig(root=str(self.root or "."))
        self.config = Config(sources=SourcesConfig(local=local), security=SecurityConfig(key=key))
        self.timeout = timeout
        self.cache_entries = cache_entries
        self.cache_seconds = cache_seconds
        self._sizes: OrderedDict[str, tuple[float, tuple[int, int] | None]] = OrderedDict()
        self._lock = threading.Lock()
        self._client: httpx.Client | None = None
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> None:
        app.extensions["images"] = self
        for name in ("resized_img_src", "resized_img_size", "resized_img_attrs", "resized_img_tag"):
            app.add_template_global(getattr(self, name), name)

    def close(self) -> None:
        if self._client is not None:
            self._client.close()

    # --- Flask-Images' template functions ---------------------------------------------------

    def resized_img_src(self, path: str, **kw: object) -> str:
        if kw.get("hidpi"):
            return str(self.resized_img_attrs(path, **kw)["src"])
        return self.url(path, picture_params(kw))[0]

    def resized_img_size(self, path: str, **kw: object) -> Size | None:
        """The size the service answers, or None when the source's size is unknown."""
        _, options = self.url(path, picture_params(kw))
        return self.output_size(path, options)

    def resized_img_attrs(self, path: str, hidpi: object = None, **kw: object) -> dict[str, object]:
        """`src`, `width`, `height` (the 1x size), `data-original-*`, and with `hidpi` (a scale;
        True is 2) the larger `src` and `data-hidpi-scale`, when the source can fill it."""
        hidpi_kw = {name[len("hidpi_") :]: kw.pop(name) for name in list(kw) if name.startswith("hidpi_")}
        params = picture_params(kw)
        src, options = self.url(path, params)
        source = self.source_size(path)
        page = result_size(source, options)
        attrs: dict[str, object] = {"src": src}
        scale = 2.0 if hidpi is True else float(hidpi) if hidpi else 0.0  # type: ignore[arg-type]
        if scale > 1 and source is not None:
            quality = hidpi_kw.pop("quality", None) or params.get("quality") or HIDPI_QUALITY
            big = {**params, **picture_params(hidpi_kw), "dpr": scale}
            _, big_options = self.url(path, big)
            # Flask-Images keeps the 1x image when the larger one would need enlarging
            if options.enlarge or result_size(source, big_options) == result_size(
                source, dataclasses.replace(big_options, enlarge=True)
            ):
                big["hidpi_quality" if scale >= 2 else "quality"] = quality
                attrs["src"] = self.url(path, big)[0]
                attrs["data-hidpi-scale"] = int(scale) if scale.is_integer() else scale
        if source is not None and page is not None:
            attrs["data-original-width"], attrs["data-original-height"] = source
            attrs["width"], attrs["height"] = page
        return attrs

    def resized_img_tag(self, path: str, **kw: object) -> Markup:
        """`<img>` with the attributes above; `class_` and `alt` become HTML attributes."""
        html: dict[str, object] = {"alt": kw.pop("alt", "")}
        if "class_" in kw:
            html["class"] = kw.pop("class_")
        found = self.resized_img_attrs(path, **kw)
        return tag("img", dict(sorted({**html, **found}.items())))

    # --- URLs and sizes -----------------------------------------------------------------------

    def url(self, path: str, params: Mapping[str, object]) -> tuple[str, RenderOptions]:
        """The absolute, signed `/picture` URL and the options the service parses from it."""
        params = dict(params)
        if "version" not in params and (version := self.local_version(path)):
            params["version"] = version  # as Flask-Images: a replaced file gets a new URL (CDN caches a year)
        url, options = build(path.lstrip("/"), self.config, params)
        return self.base_url + url, options

    def local_version(self, path: str) -> str | None:
        if self.root is None or is_remote(path):
            return None
        try:
            return format(os.stat(self.root / path.lstrip("/")).st_mtime_ns, "x")
        except (OSError, ValueError):
            return None

    def output_size(self, path: str, options: RenderOptions) -> Size | None:
        size = result_size(self.source_size(path), options)
        return Size(*size) if size else None

    def source_size(self, path: str) -> tuple[int, int] | None:
        """The source's size after EXIF orientation: from `root`, else from the service's /info."""
        path = path.lstrip("/")
        if self.root is not None and not is_remote(path):
            return source_size(path, self.config)
        now = time.monotonic()
        with self._lock:
            known = self._sizes.get(path)
            if known is not None and known[0] > now:
                self._sizes.move_to_end(path)
                return known[1]
        size = self.fetch_info(path)
        # an unknown size is asked again sooner: the service may have been away for a moment
        expires = now + (self.cache_seconds if size else min(self.cache_seconds, 10.0))
        with self._lock:
            self._sizes[path] = (expires, size)
            self._sizes.move_to_end(path)
            while len(self._sizes) > self.cache_entries:
                self._sizes.popitem(last=False)
        return size

    def fetch_info(self, path: str) -> tuple[int, int] | None:
        url = self.base_url + signed_url(
            INFO_PREFIX + quote(path, safe=PATH_SAFE), (), self.config.security.signing_keys
        )
        with self._lock:
            if self._client is None:
                self._client = httpx.Client(timeout=self.timeout)
        try:
            response = self._client.get(url)
            if response.status_code == 200:
                info = response.json()
                return int(info["width"]), int(info["height"])
            log.warning("imgproxy /info for %s answered %d: %s", path, response.status_code, response.text[:200])
        except (httpx.HTTPError, ValueError, KeyError, TypeError) as exc:
            log.warning("imgproxy /info for %s failed: %s", path, exc)
        return None


def picture_params(kw: Mapping[str, object]) -> dict[str, object]:
    """Flask-Images' keyword arguments as `/picture` parameters (canonical names)."""
    # hidpi and hidpi_* shape resized_img_attrs' larger image only (Flask-Images ignores them elsewhere)
    kw = {n: v for n, v in kw.items() if n not in IGNORED and not n.startswith("hidpi") and v is not None}
    params: dict[str, object] = {}
    width, height = kw.pop("width", None), kw.pop("height", None)
    mode = kw.pop("mode", None)
    if mode is not None and mode not in MODES:
        raise ValueError(f"unknown mode {mode!r} (Flask-Images' modes: fit, crop, pad, reshape)")
    if mode is None and width and height:
        mode = "reshape"  # Flask-Images: both sides and no mode stretch the image
    params["width"], params["height"] = width, height
    if mode is not None:
        params["mode"] = MODES[str(mode)]
    background = kw.pop("background", None)
    if background is None and params.get("mode") == "pad":
        background = PAD_BACKGROUND
    params["background"] = background
    if kw.pop("enlarge", False):
        params["enlarge"] = True
    if "format" in kw:
        params["encoding"] = kw.pop("format")
    for name, delimiters in (("sharpen", SHARPEN_DELIMITERS), ("transform", TRANSFORM_DELIMITERS)):
        value = kw.pop(name, None)
        if value:
            parts = delimiters.split(value) if isinstance(value, str) else list(value)  # type: ignore[call-overload]
            params[name] = ",".join(str(part) for part in parts)
    params.update(kw)  # quality, version, and the service's own names (an unknown one is a ValueError)
    return {name: value for name, value in params.items() if value is not None}
