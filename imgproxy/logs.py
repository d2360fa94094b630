"""Logging: one access line per request, JSON or readable, and uvicorn's logs in the same format.

`AccessLog` is the middleware that sees every HTTP request once: it times it, counts the body
bytes, feeds the request metrics and writes the access line. An exception escaping the app is
answered 500 here and logged here only, in that request's line, with its traceback. The line
carries the path without `sig`, the status, the error message of a 4xx/5xx — never a body.
"""

from __future__ import annotations

import json
import logging
import time
import typing
from datetime import UTC, datetime

from starlette.requests import ClientDisconnect

from . import metrics
from .config import LogConfig
from .errors import SECURITY_HEADERS
from .signing import split_query

access_log = logging.getLogger("imgproxy.access")
MAX_PATH = 1024
CLIENT_CLOSED = 499  # nginx's status for a client that went away before the answer
INTERNAL_ERROR = b"internal error\n"


def skip_unused_record_fields() -> None:
    """Our formatters never print a record's source line, thread or process, so don't look them up
    (the logging HOWTO's "Optimization" settings; a frame walk per access line otherwise)."""
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False


def logging_config(log: LogConfig) -> dict:
    """dictConfig for uvicorn (applied in every worker). Access lines follow [log] access_log,
    not the level, so `level = "warning"` still keeps them."""
    formatter = "imgproxy.logs.JsonFormatter" if log.format == "json" else "imgproxy.logs.TextFormatter"
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"default": {"()": formatter}},
        "handlers": {
            "default": {"class": "logging.StreamHandler", "formatter": "default", "stream": "ext://sys.stderr"}
        },
        "root": {"handlers": ["default"], "level": log.level.upper()},
        "loggers": {
            "uvicorn": {"handlers": [], "propagate": True},
            "imgproxy.access": {"level": "INFO"},
            # one INFO line per upstream request otherwise; the access line already covers it
            "httpx": {"level": "WARNING"},
            "httpcore": {"level": "WARNING"},
        },
    }


def _timestamp(record: logging.LogRecord) -> str:
    moment = datetime.fromtimestamp(record.created, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class JsonFormatter(logging.Formatter):
    """One JSON object per line: the access fields for access lines, else level, logger, message."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {"time": _timestamp(record)}
        access = getattr(record, "access", None)
        if access is not None:
            entry.update(access)
        else:
            entry.update(level=record.levelname.lower(), logger=record.name, message=record.getMessage())
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """`2025-06-01T12:00:00.123Z GET /picture/a.jpg?w=300 200 5120B 12.3ms MISS render=10.1ms`"""

    def format(self, record: logging.LogRecord) -> str:
        access = getattr(record, "access", None)
        if access is not None:
            a = access
            line = f"{_timestamp(record)} {a['method']} {a['path']} {a['status']} {a['bytes']}B {a['ms']}ms"
            if a["cache"]:
                line += f" {a['cache']}"
            if a["render_ms"] is not None:
                line += f" render={a['render_ms']}ms"
            if "error" in a:
                line += f" error={json.dumps(a['error'], ensure_ascii=False)}"
        else:
            line = f"{_timestamp(record)} {record.levelname} {record.name}: {record.getMessage()}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def loggable_path(scope) -> str:
    """The path and query as sent, without `sig`, cut at MAX_PATH characters."""
    path = (scope.get("raw_path") or scope["path"].encode()).decode("latin-1")
    query = scope.get("query_string", b"").decode("latin-1")
    if "sig" in query or "%" in query:  # a name that is or may decode to `sig`
        query = "&".join(split_query(query)[0])
    if query:
        path += "?" + query
    return path if len(path) <= MAX_PATH else path[:MAX_PATH] + "…"


def render_ms(server_timing: str) -> float | None:
    """The `render;dur=X` of a Server-Timing header."""
    for metric in server_timing.split(","):
        name, *params = metric.strip().split(";")
        if name == "render":
            for param in params:
                key, _, value = param.partition("=")
                if key.strip() == "dur":
                    try:
                        return float(value)
                    except ValueError:
                        return None
    return None


class AccessLog:
    def __init__(self, app, enabled: bool = True):
        self.app = app
        self.enabled = enabled

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        response: dict[str, typing.Any] = {"status": 0, "bytes": 0, "headers": []}
        failure: Exception | None = None
        recorded = False

        def record() -> None:
            nonlocal recorded
            recorded = True
            self.record(scope, response, time.perf_counter() - started, failure)

        async def observed_send(message):
            if message["type"] == "http.response.start":
                response["status"] = message["status"]
                response["headers"] = message.get("headers", [])
            elif message["type"] == "http.response.body":
                response["bytes"] += len(message.get("body", b""))
                if not message.get("more_body", False):
                    record()  # before the last bytes go: a client holding the answer finds it counted
            await send(message)

        try:
            await self.app(scope, receive, observed_send)
        except ClientDisconnect:
            response["status"] = response["status"] or CLIENT_CLOSED
        except Exception as exc:
            failure = exc
            if recorded:  # failed after its answer went out (a background task): an error line of its own
                access_log.error("%s %s failed after its response", scope["method"], loggable_path(scope), exc_info=exc)
            elif not response["status"]:
                await observed_send(
                    {
                        "type": "http.response.start",
                        "status": 500,
                        "headers": [
                            (b"content-type", b"text/plain; charset=utf-8"),
                            (b"cache-control", b"no-store"),
                            (b"content-length", str(len(INTERNAL_ERROR)).encode()),
                            *SECURITY_HEADERS,  # the /picture fast path has no SecurityHeaders around it
                        ],
                    }
                )
                await observed_send({"type": "http.response.body", "body": INTERNAL_ERROR})
        if not recorded:
            record()

    def record(self, scope, response: dict, seconds: float, failure: Exception | None) -> None:
        route = getattr(scope.get("route"), "path", "unmatched")
        metrics.observe_request(route, response["status"], seconds, response["bytes"])
        if failure is None and not self.enabled:
            return
        cache = timing = None
        for name, value in response["headers"]:
            name = name.lower()
            if name == b"x-cache":
                cache = value.decode("latin-1")
            elif name == b"server-timing":
                timing = value.decode("latin-1")
        fields = {
            "method": scope["method"],
            "path": loggable_path(scope),
            "status": response["status"],
            "bytes": response["bytes"],
            "ms": round(seconds * 1000, 1),
            "cache": cache,
            "render_ms": render_ms(timing) if timing else None,
        }
        if failure is not None:
            fields["error"] = f"{type(failure).__name__}: {failure}"
            access_log.error("request failed", exc_info=failure, extra={"access": fields})
            return
        if error := scope.get("state", {}).get("error"):
            fields["error"] = error
        access_log.info("request", extra={"access": fields})
