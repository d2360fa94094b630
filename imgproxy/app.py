"""The ASGI application: routes, response headers and error answers."""

from __future__ import annotations

import contextlib
import functools
import os
import typing
from collections.abc import Iterator
from typing import BinaryIO
from urllib.parse import parse_qsl

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from . import malloc
from .cache import ResultCache, etag_matches
from .config import Config, load_config
from .errors import SECURITY_HEADERS, BadRequest, ImageProxyError
from .hints import client_hints, resolve_width
from .logs import AccessLog, skip_unused_record_fields
from .metrics import MetricsEndpoint
from .options import ALIASES, RenderOptions
from .pages import page_routes
from .pipeline import Renderer, Result, close_body
from .playground import playground_routes
from .signing import check_request
from .uploads import Uploads

MAX_QUERY_LENGTH = 2048
MAX_QUERY_FIELDS = 24
CHUNK = 256 * 1024
HIT_LINES = [(b"x-cache", b"HIT"), (b"server-timing", b'cache;desc="HIT"')]
ENTITY_HEADERS = (b"content-type", b"content-length")  # not on a 304
SECURITY_FIELDS = {name.decode(): value.decode() for name, value in SECURITY_HEADERS}
PICTURE_PREFIX = "/picture/"
INFO_PARAMETERS = frozenset({"sig", *(spelling for spelling, name in ALIASES.items() if name == "version")})


def error_response(exc: ImageProxyError, scope, config: Config, accept: str) -> Response:
    scope.setdefault("state", {})["error"] = exc.message  # for the access log line
    headers = {**SECURITY_FIELDS, **exc.headers}
    if exc.status == 404 and config.cache.not_found_max_age > 0:
        headers["Cache-Control"] = f"public, max-age={config.cache.not_found_max_age}"
    else:
        headers["Cache-Control"] = "no-store"
    if "application/json" in accept:
        body = {"error": exc.message, "detail": exc.detail}
        return JSONResponse(body, status_code=exc.status, headers=headers)
    return PlainTextResponse(exc.message + "\n", status_code=exc.status, headers=headers)


def _chunks(file: BinaryIO) -> Iterator[bytes]:
    with file:
        while chunk := file.read(CHUNK):
            yield chunk


class PreparedResponse:
    """An answer whose header lines are bytes already (starlette's Response builds them from a
    dict each time; on a cache hit that is a good part of the work)."""

    def __init__(self, status: int, headers: list[tuple[bytes, bytes]], body: bytes = b""):
        self.status = status
        self.headers = headers
        self.body = body

    async def __call__(self, scope, receive, send) -> None:
        await send({"type": "http.response.start", "status": self.status, "headers": self.headers})
        await send({"type": "http.response.body", "body": self.body})


def request_headers(scope) -> tuple[str, str]:
    """Accept and If-None-Match: both are lists, so repeated lines join with commas."""
    accept = if_none_match = ""
    for name, value in scope["headers"]:
        if name == b"accept":
            accept += ("," if accept else "") + value.decode("latin-1")
        elif name == b"if-none-match":
            if_none_match += ("," if if_none_match else "") + value.decode("latin-1")
    return accept, if_none_match


class PictureEndpoint:
    """GET and HEAD /picture/<source>, as a plain ASGI app: cache hits are the hottest path of the
    service, so it reads the two request headers it needs straight from the scope."""

    def __init__(self, config: Config, renderer: Renderer):
        self.config = config
        self.renderer = renderer
        cache = config.cache
        cache_control = f"public, max-age={cache.max_age}" + (", immutable" if cache.immutable else "")
        self.cache_control = (b"cache-control", cache_control.encode())
        self.signing_keys = config.security.signing_keys
        self.parse_query = functools.lru_cache(maxsize=1024)(self._parse_query)

    def options_from(self, scope) -> RenderOptions:
        raw_query = scope["query_string"].decode("latin-1")
        if len(raw_query) > MAX_QUERY_LENGTH:
            raise BadRequest(f"query string longer than {MAX_QUERY_LENGTH} characters")
        if self.signing_keys:
            raw_path = scope.get("raw_path") or scope["path"].encode()
            check_request(raw_path.decode("latin-1"), raw_query, self.signing_keys, self.unsigned_widths())
        self.check_names(raw_query)
        return self.parse_query(raw_query)

    def unsigned_widths(self) -> tuple[int, ...]:
        """Widths a request may ask for without a signature when a key is set."""
        return self.config.security.allowed_widths

    def check_names(self, raw_query: str) -> None:
        """Route-specific parameter rules before parsing (parsing names unknown ones anyway)."""

    def _parse_query(self, raw_query: str) -> RenderOptions:
        """Pure in the query string, so remembered per string (errors are not remembered)."""
        try:
            pairs = parse_qsl(raw_query, keep_blank_values=True, max_num_fields=MAX_QUERY_FIELDS)
        except ValueError:
            raise BadRequest(f"more than {MAX_QUERY_FIELDS} query parameters") from None
        return self.config.parse_query(pairs)

    async def __call__(self, scope, receive, send) -> None:
        accept, if_none_match = request_headers(scope)
        try:
            options = self.options_from(scope)
            hints_used: tuple[str, ...] = ()
            if options.auto_width:  # before the cache key: it holds the width the hints resolve to
                options, hints_used = resolve_width(options, client_hints(scope["headers"]), self.config)
            result = await self.renderer.picture(scope["path_params"]["source"], options, accept, if_none_match)
        except ImageProxyError as exc:
            response = error_response(exc, scope, self.config, accept)
        else:
            response = self.respond(scope["method"], if_none_match, result, hints_used)
        await response(scope, receive, send)

    def respond(self, method: str, if_none_match: str, result: Result, hints_used: tuple[str, ...] = ()):
        meta = result.meta
        headers = [*meta.header_lines, self.cache_control, *SECURITY_HEADERS]
        if result.cache_status == "HIT":
            headers += HIT_LINES
        else:
            headers += [
                (b"x-cache", b"MISS"),
                (b"server-timing", f'cache;desc="MISS", render;dur={result.render_ms:.1f}'.encode()),
            ]
        if result.vary_accept or hints_used:
            vary = ("Accept",) * result.vary_accept + hints_used
            headers.append((b"vary", ", ".join(vary).encode()))
        if result.max_bytes_unmet:
            headers.append((b"x-max-bytes", b"unmet"))
        body = result.body
        if if_none_match and etag_matches(if_none_match, meta.etag):
            close_body(body)
            return PreparedResponse(304, [line for line in headers if line[0] not in ENTITY_HEADERS])
        if method == "HEAD":
            close_body(body)
            return PreparedResponse(200, headers)
        if not isinstance(body, bytes):  # larger than memory_body_limit: streamed from its file
            return StreamingResponse(_chunks(body), headers={k.decode(): v.decode() for k, v in headers})
        return PreparedResponse(200, headers, body)


class InfoEndpoint(PictureEndpoint):
    """GET and HEAD /info/<source> (SPEC §11): signed like /picture (never unsigned by
    allowed_widths); its only parameter is the cache-buster `v`. Answers carry /picture's headers."""

    def unsigned_widths(self) -> tuple[int, ...]:
        return ()  # never unsigned: /info has no width

    def check_names(self, raw_query: str) -> None:
        for name, _ in parse_qsl(raw_query, keep_blank_values=True):
            if name not in INFO_PARAMETERS:
                raise BadRequest(f"unknown parameter {name[:40]!r} (/info takes only v and sig)")

    async def __call__(self, scope, receive, send) -> None:
        accept, if_none_match = request_headers(scope)
        try:
            self.options_from(scope)
            result = await self.renderer.info(scope["path_params"]["source"], if_none_match)
        except ImageProxyError as exc:
            response = error_response(exc, scope, self.config, accept)
        else:
            response = self.respond(scope["method"], if_none_match, result)
        await response(scope, receive, send)


class PictureFastPath:
    """The outermost app: GET and HEAD /picture/… go straight to the endpoint, past starlette's
    error middleware, router and our middleware, each of which wraps every `send` in a closure of
    its own (together a good part of a cache hit). The endpoint sets the security headers itself;
    the access line and the 500 for a bug come from AccessLog as on every other route. Everything
    else (lifespan included) goes to the starlette app."""

    def __init__(self, app, picture: PictureEndpoint, route: Route, enabled: bool):
        self.app = app
        self.route = route
        self.picture = AccessLog(picture, enabled=enabled)

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["method"] in ("GET", "HEAD") and scope["path"].startswith(PICTURE_PREFIX):
            scope["route"] = self.route  # what starlette's router would have set, for metrics and logs
            scope["path_params"] = {"source": scope["path"][len(PICTURE_PREFIX) :]}
            return await self.picture(scope, receive, send)
        return await self.app(scope, receive, send)


class SecurityHeaders:
    """nosniff and a deny-all CSP on every response that did not set its own policy."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                present = {name.lower() for name, _ in message.get("headers", [])}
                extra = [(n, v) for n, v in SECURITY_HEADERS if n not in present]
                message["headers"] = list(message.get("headers", [])) + extra
            await send(message)

        await self.app(scope, receive, send_with_headers)


def make_renderer(config: Config) -> Renderer:
    """The renderer with its result cache and remote source (the server's, and `imgproxy worker`'s)."""
    cache_dir = config.path(config.cache.dir)
    cache = ResultCache(cache_dir, config.cache)
    remote_cfg = config.sources.remote
    remote = None
    if remote_cfg.allowed_hosts:
        from .remote import RemoteSource  # and httpx (~5 MB a process): only where remote sources are on

        remote = RemoteSource(
            remote_cfg,
            cache_dir=config.path(remote_cfg.cache_dir),
            formats=config.security.allowed_source_formats,
            trusted_networks=remote_cfg.trusted_networks,
            svg=config.security.svg == "rasterize",
        )
    return Renderer(config, cache, remote)


def create_app(config: Config) -> PictureFastPath:
    renderer = make_renderer(config)
    cache, remote = renderer.cache, renderer.remote
    picture = PictureEndpoint(config, renderer)
    uploads = Uploads(config, renderer)

    async def health(request: Request) -> Response:
        """Liveness is answering at all; ready (200) while the render queue has room.

        An unwritable cache or an unreachable storage is reported as "degraded" but stays ready: the
        service still serves (uncached; cached results while the object store is away), and
        restarting it would neither free a full disk nor bring the store back.
        """
        writable, stats = await run_in_threadpool(lambda: (cache.probe(), cache.stats()))
        checks = {
            "cache_writable": writable or not config.cache.enabled,
            "storage": await renderer.storage.check(),
            "render_pool": renderer.accepting,
        }
        if config.uploads.enabled:  # a job store that is away stops uploads, not /picture: degraded
            checks["jobs"] = await uploads.jobs.healthy()
        ready = checks["render_pool"]
        status = ("ok" if all(checks.values()) else "degraded") if ready else "unavailable"
        body = {
            "status": status,
            "checks": checks,
            "cache": stats,
            "renders": renderer.renders,
            "pending": renderer.pending,
            "capacity": renderer.capacity,
        }
        return JSONResponse(body, status_code=200 if ready else 503, headers={"Cache-Control": "no-store"})

    @contextlib.asynccontextmanager
    async def lifespan(app):
        await uploads.start()
        yield
        await uploads.stop()
        if remote is not None:
            await remote.aclose()
        renderer.close()

    picture_route = Route(PICTURE_PREFIX + "{source:path}", picture, methods=["GET", "HEAD"])
    routes = [
        picture_route,
        Route("/health", health, methods=["GET", "HEAD"]),
        Route(
            "/metrics", MetricsEndpoint(cache, uploads.jobs if config.uploads.enabled else None).handle, methods=["GET"]
        ),
        *uploads.routes(),
        *page_routes(config),
        Route("/info/{source:path}", InfoEndpoint(config, renderer), methods=["GET", "HEAD"]),
        *playground_routes(config),
    ]

    async def client_error(request: Request, exc: ImageProxyError) -> Response:
        return error_response(exc, request.scope, config, request.headers.get("accept", ""))

    handlers: dict[typing.Any, typing.Any] = {
        ImageProxyError: client_error
    }  # anything else is a bug: AccessLog answers 500 and logs it
    app = Starlette(routes=routes, lifespan=lifespan, exception_handlers=handlers)
    app.add_middleware(AccessLog, enabled=config.log.access_log)
    app.add_middleware(SecurityHeaders)
    return PictureFastPath(app, picture, picture_route, config.log.access_log)


def create_app_from_env() -> PictureFastPath:
    """uvicorn factory for `--workers N`: each worker process loads the config named by IMGPROXY_CONFIG."""
    malloc.tune()
    skip_unused_record_fields()
    return create_app(load_config(os.environ.get("IMGPROXY_CONFIG") or None))
