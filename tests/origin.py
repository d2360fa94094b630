"""A real origin server for remote-source tests, misbehaving on request.

Runs a starlette app under uvicorn in a background thread on 127.0.0.1 (a free port picked by the
OS). Every request is recorded, so tests can count fetches per path and see the validators sent.

    origin = Origin().start()
    origin.url("/photos/alpha_dice.png")
    origin.hits("/photos/alpha_dice.png")
    origin.stop()

Endpoints (`?x=…` on any of them makes a distinct URL with its own hit count; paths are logged with
the query percent-decoded, so `hits("/photos/a.png?cache_control=max-age=60")` works):
    /photos/NAME            a corpus photo; ETag + Last-Modified, 304 on a matching If-None-Match;
                            `?cache_control=…` is echoed as Cache-Control, `?cookie=1` sets a cookie,
                            `?etag=…` replaces the ETag (sent as UTF-8), `?last_modified=…` the date
    /files/NAME             bytes put with `origin.put(NAME, data)`: lets a test change the content
    /status/CODE            an error status with a text body
    /slow?seconds=S         waits S seconds before answering with a photo
    /stall                  sends a JPEG's first bytes, then nothing until the client gives up
    /endless                a JPEG header followed by zeros, forever
    /html-as-jpeg           an HTML page labelled image/jpeg
    /redirect?to=URL&n=N    a chain of N redirects ending at URL (relative or absolute)
    /location?to=RAW        one 302 whose Location header is RAW exactly, however malformed
    /encoded/CODING         a JPEG head and 200 MB of zeros compressed as CODING (gzip, gzip-gzip,
                            deflate) with that Content-Encoding: a few hundred bytes on the wire;
                            any other CODING (br, zstd, …) is declared only, on a JPEG head
    /gated/NAME?size=N      N bytes of a JPEG head and zeros, the last one only once `origin.open_gate(NAME)`;
                            `origin.active` and `origin.peak_active` count requests being answered
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import mimetypes
import os
import socket
import threading
import time
import zlib
from dataclasses import dataclass
from email.utils import formatdate
from pathlib import Path
from urllib.parse import unquote, urlencode

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Route

CORPUS = Path(os.environ.get("IMGPROXY_CORPUS", Path(__file__).resolve().parents[2] / "shared" / "corpus"))
PHOTOS = CORPUS / "photos"
JPEG_HEAD = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00"
BOMB_SIZE = 200 * 1024**2  # what an /encoded body decodes to


def _zeros_compressed(compressor, size: int = BOMB_SIZE) -> bytes:
    """`size` bytes of a JPEG head and zeros through `compressor`, without holding them in memory."""
    chunk = bytes(1024**2)
    parts = [compressor.compress(JPEG_HEAD)]
    parts += [compressor.compress(chunk) for _ in range(size // len(chunk))]
    return b"".join(parts) + compressor.flush()


def compression_bomb(coding: str) -> bytes:
    if coding == "deflate":
        return _zeros_compressed(zlib.compressobj(9))
    if coding in ("gzip", "gzip-gzip"):
        gzipped = _zeros_compressed(zlib.compressobj(9, wbits=31))  # wbits 31: the gzip container
        return gzipped if coding == "gzip" else gzip.compress(gzipped, 9)
    return JPEG_HEAD + bytes(1024)  # a coding this origin cannot produce: declared only


@dataclass(frozen=True)
class Hit:
    path: str  # with the (percent-decoded) query string when there is one
    headers: dict[str, str]  # request headers
    status: int
    response_headers: dict[str, str]


class Origin:
    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.log: list[Hit] = []
        self.gates: dict[str, threading.Event] = {}
        self.bombs: dict[str, bytes] = {}
        self.active = 0  # requests being answered now
        self.peak_active = 0
        self.server: uvicorn.Server | None = None
        self.thread: threading.Thread | None = None
        self.port = 0
        self.app = Starlette(
            routes=[
                Route("/photos/{name}", self.photo),
                Route("/files/{name}", self.file),
                Route("/status/{code:int}", self.status),
                Route("/slow", self.slow),
                Route("/stall", self.stall),
                Route("/endless", self.endless),
                Route("/html-as-jpeg", self.html_as_jpeg),
                Route("/redirect", self.redirect),
                Route("/location", self.location),
                Route("/encoded/{coding}", self.encoded),
                Route("/gated/{name}", self.gated),
            ]
        )

    # --- control -------------------------------------------------------------------------------

    def start(self, timeout: float = 60.0) -> Origin:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(
            self.record,
            interface="asgi3",
            log_config=None,
            log_level="warning",
            access_log=False,
            timeout_graceful_shutdown=1,
        )
        self.server = uvicorn.Server(config)
        # the name lets conftest's end-of-session check find an origin a test forgot to stop
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [sock]}, daemon=True, name=f"origin:{self.port}"
        )
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("origin server did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        if self.server and self.thread:
            self.server.should_exit = True
            self.thread.join(timeout=60)
            if self.thread.is_alive():
                raise RuntimeError("origin server did not stop")

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url(self, path: str, **query: object) -> str:
        return self.base + path + ("?" + urlencode(query) if query else "")

    def put(self, name: str, data: bytes) -> None:
        self.files[name] = data

    def bomb(self, coding: str) -> bytes:
        """The /encoded/CODING body (built once: a 200 MB one takes a second)."""
        if coding not in self.bombs:
            self.bombs[coding] = compression_bomb(coding)
        return self.bombs[coding]

    def open_gate(self, name: str) -> None:
        self.gates.setdefault(name, threading.Event()).set()

    def requests(self, path: str) -> list[Hit]:
        """Requests for `path` (query included; percent-encoded or not), oldest first."""
        path = unquote(path)
        return [hit for hit in self.log if hit.path == path]

    def hits(self, path: str) -> int:
        return len(self.requests(path))

    def statuses(self, path: str) -> list[int]:
        return [hit.status for hit in self.requests(path)]

    # --- app -----------------------------------------------------------------------------------

    async def record(self, scope, receive, send) -> None:
        """ASGI wrapper around the app: logs each request with the status it got."""
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        query = unquote(scope["query_string"].decode("latin-1"))
        path = scope["path"] + (f"?{query}" if query else "")
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}

        async def send_and_record(message) -> None:
            if message["type"] == "http.response.start":
                sent = {k.decode("latin-1"): v.decode("latin-1") for k, v in message.get("headers", [])}
                self.log.append(Hit(path, headers, message["status"], sent))
            await send(message)

        self.active += 1
        self.peak_active = max(self.peak_active, self.active)
        try:
            await self.app(scope, receive, send_and_record)
        finally:
            self.active -= 1

    def serve_bytes(self, request: Request, data: bytes, media_type: str = "image/jpeg", mtime: float = 0) -> Response:
        etag = '"' + hashlib.sha256(data).hexdigest()[:20] + '"'
        if "etag" in request.query_params:  # header values go out as latin-1: this sends UTF-8 bytes
            etag = request.query_params["etag"].encode().decode("latin-1")
        modified = request.query_params.get("last_modified") or formatdate(mtime or 1_700_000_000, usegmt=True)
        headers = {"ETag": etag, "Last-Modified": modified}
        if "cache_control" in request.query_params:
            headers["Cache-Control"] = request.query_params["cache_control"]
        if "cookie" in request.query_params:
            headers["Set-Cookie"] = "session=origin-secret; Path=/"
        if request.headers.get("if-none-match") == etag:
            return Response(status_code=304, headers=headers)
        return Response(data, media_type=media_type, headers=headers)

    async def photo(self, request: Request) -> Response:
        path = PHOTOS / request.path_params["name"]
        if path.parent != PHOTOS or not path.is_file():
            return PlainTextResponse("no such photo", status_code=404)
        media_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        return self.serve_bytes(request, path.read_bytes(), media_type, path.stat().st_mtime)

    async def file(self, request: Request) -> Response:
        data = self.files.get(request.path_params["name"])
        if data is None:
            return PlainTextResponse("no such file", status_code=404)
        return self.serve_bytes(request, data)

    async def status(self, request: Request) -> Response:
        code = request.path_params["code"]
        return PlainTextResponse(f"status {code}", status_code=code)

    async def slow(self, request: Request) -> Response:
        await asyncio.sleep(float(request.query_params.get("seconds", "5")))
        return self.serve_bytes(request, (PHOTOS / "alpha_dice.png").read_bytes(), "image/png")

    async def stall(self, request: Request) -> Response:
        async def body():
            yield JPEG_HEAD
            await asyncio.sleep(30)

        return StreamingResponse(body(), media_type="image/jpeg")

    async def endless(self, request: Request) -> Response:
        async def body():
            yield JPEG_HEAD
            chunk = bytes(64 * 1024)
            while True:
                yield chunk
                await asyncio.sleep(0)  # lets the disconnect listener stop this once the client is gone

        return StreamingResponse(body(), media_type="image/jpeg")

    async def html_as_jpeg(self, request: Request) -> Response:
        page = b"<!doctype html><html><body>not an image</body></html>"
        return Response(page, media_type="image/jpeg")

    async def redirect(self, request: Request) -> Response:
        target = request.query_params["to"]
        n = int(request.query_params.get("n", "1"))
        location = target if n <= 1 else "/redirect?" + urlencode({"to": target, "n": n - 1})
        return RedirectResponse(location, status_code=302)

    async def location(self, request: Request) -> Response:
        return Response(status_code=302, headers={"Location": request.query_params["to"]})

    async def encoded(self, request: Request) -> Response:
        coding = request.path_params["coding"]
        body = await asyncio.to_thread(self.bomb, coding)
        declared = "gzip, gzip" if coding == "gzip-gzip" else coding
        return Response(body, media_type="image/jpeg", headers={"Content-Encoding": declared})

    async def gated(self, request: Request) -> Response:
        gate = self.gates.setdefault(request.path_params["name"], threading.Event())
        size = int(request.query_params.get("size", "1024"))

        async def body():
            yield JPEG_HEAD + bytes(max(0, size - len(JPEG_HEAD) - 1))
            while not gate.is_set():  # the test's thread opens it; polled so the loop stays free
                await asyncio.sleep(0.01)
            yield b"\0"

        return StreamingResponse(body(), media_type="image/jpeg")
