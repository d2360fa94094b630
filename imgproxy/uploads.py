"""`POST /upload` and `GET /jobs/<id>` (SPEC §7): store an original safely, pre-render its presets.

The body is parsed while it streams in (python-multipart's push parser); the one file part goes
straight to a temporary file while its bytes are counted, so nothing past `[uploads] max_bytes` is
read or buffered. Pillow then decides the format from the bytes (the header limits of
`/picture`, plus a decode, JPEG at 1/8 scale, that catches truncated data) before the storage
(storage.py) keeps it as `<uploads.dir>/<random id>/<sanitised name>`: renamed into the local
root from a temporary file on the same filesystem (atomic), or put into the bucket in one request
after the check, so a crash or a refused upload never leaves a partial file or object behind.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
import secrets
import string
import time
import typing
import unicodedata
from dataclasses import dataclass
from pathlib import Path

from PIL import Image
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from .budget import Deadline, MemoryBudget, decoded_bytes
from .config import Config
from .encode import CONTENT_TYPES
from .errors import (
    BadRequest,
    Forbidden,
    ImageProxyError,
    NotFound,
    PayloadTooLarge,
    StorageUnavailable,
    Unauthorized,
    UnsupportedMedia,
)
from .html import candidates, join_srcset, picture_tag, picture_url, width_steps, width_variants
from .jobs import JobQueue, JobsUnavailable
from .loader import open_original
from .pages import width_presets
from .pipeline import Renderer
from .render import DECODE_ERRORS, SHRINK_ON_LOAD_FORMATS, orientation_of, oriented_size
from .sources import Original

log = logging.getLogger("imgproxy.uploads")
FIELD = "image"
ID_BYTES = 16  # 128 random bits, hex in paths and job ids
STALE_TEMP_SECONDS = 3600  # temp files older than this are left over from a crash
MULTIPART_OVERHEAD = 16 * 1024  # boundaries and part headers around the file
BODY_SECONDS = 300  # a whole upload; a slower client gets 408 instead of holding a temp file
DROP_SECONDS = 30  # the rest of a refused upload is read and dropped this long at most (nginx's lingering_time)
MAX_STEM = 80
NAME_CHARS = frozenset(string.ascii_letters + string.digits + "-_.")
EXTENSIONS = {
    "JPEG": "jpg",
    "MPO": "jpg",
    "PNG": "png",
    "GIF": "gif",
    "WEBP": "webp",
    "AVIF": "avif",
    "TIFF": "tif",
    "BMP": "bmp",
    "HEIF": "heic",
}
SAME_FORMAT = {"MPO": "JPEG"}  # phones write MPO into .jpg files


class RequestTimeout(ImageProxyError):
    status = 408


def too_large(limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(f"upload is larger than the limit of {limit} bytes")


def safe_name(filename: str | None, fmt: str) -> str:
    """The client's file name reduced to `[A-Za-z0-9._-]`, no directories, no leading dot, with an
    extension that matches the detected format; `image.<ext>` when nothing is left."""
    base = (filename or "")[:1024].replace("\\", "/").rsplit("/", 1)[-1]
    ascii_text = unicodedata.normalize("NFKD", base).encode("ascii", "ignore").decode("ascii")
    cleaned = "".join(c if c in NAME_CHARS else "-" for c in ascii_text)
    stem, dot, suffix = cleaned.rpartition(".")
    if not dot:
        stem, suffix = suffix, ""
    stem = _squeeze(stem)[:MAX_STEM].strip("-.") or "image"
    registered = Image.registered_extensions().get("." + suffix.lower())
    family = SAME_FORMAT.get(fmt, fmt)
    keep = registered is not None and SAME_FORMAT.get(registered, registered) == family
    return f"{stem}.{suffix.lower() if keep else EXTENSIONS.get(fmt, fmt.lower())}"


def _squeeze(text: str) -> str:
    """Runs of '-' and '.' become one character: no '..', no '----'."""
    out: list[str] = []
    for c in text:
        if c in "-." and out and out[-1] in "-.":
            continue
        out.append(c)
    return "".join(out)


def inspect(path: Path, config: Config, budget: MemoryBudget) -> tuple[str, int, int]:
    """(Pillow format, width, height after EXIF orientation); 413/415 for what `/picture` refuses.
    Runs on a render thread: the decode holds its bytes of the renders' memory `budget`."""
    original = Original(id="upload", version="", size=path.stat().st_size, path=str(path))
    opened = open_original(original, config.limits, config.uploads.allowed_formats)
    with opened.image as image:
        if opened.format in SHRINK_ON_LOAD_FORMATS:
            image.draft(image.mode, (1, 1))  # DCT scaling to 1/8: every byte is still checked
        with budget.hold(decoded_bytes(image, working_set=1.0), Deadline(config.render.timeout)):
            try:
                image.load()
            except DECODE_ERRORS:
                raise UnsupportedMedia("image data is truncated or corrupt") from None
            width, height = oriented_size(opened.width, opened.height, orientation_of(image))
    return opened.format, width, height


def check_bearer(request: Request, token: str, action: str) -> None:
    """401 without `Authorization: Bearer <token>`, 403 with another token; nothing when `token` is empty."""
    if not token:
        return
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    given = given.strip()
    if scheme.lower() != "bearer" or not given:
        raise Unauthorized(
            f"{action} needs Authorization: Bearer <token>", headers={"WWW-Authenticate": 'Bearer realm="imgproxy"'}
        )
    if not hmac.compare_digest(given.encode(), token.encode()):
        raise Forbidden(f"{action} token is not valid")


class ImagePart:
    """Multipart callbacks: exactly one part, the field `image`, streamed into a file."""

    def __init__(self, path: Path, max_bytes: int):
        self.path = path
        self.max_bytes = max_bytes
        self.file: typing.BinaryIO | None = None
        self.filename: str | None = None
        self.size = 0
        self.parts = 0
        self.ended = False
        self.header_name = bytearray()
        self.header_value = bytearray()
        self.disposition = b""

    def callbacks(self) -> typing.Any:  # python-multipart's MultipartCallbacks
        return {
            "on_part_begin": self.on_part_begin,
            "on_header_field": self.on_header_field,
            "on_header_value": self.on_header_value,
            "on_header_end": self.on_header_end,
            "on_headers_finished": self.on_headers_finished,
            "on_part_data": self.on_part_data,
            "on_end": self.on_end,
        }

    def on_part_begin(self) -> None:
        self.parts += 1
        if self.parts > 1:
            raise BadRequest(f"one file per upload: send only the field '{FIELD}'")

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self.header_name += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self.header_value += data[start:end]

    def on_header_end(self) -> None:
        if self.header_name.lower() == b"content-disposition":
            self.disposition = bytes(self.header_value)
        self.header_name.clear()
        self.header_value.clear()

    def on_headers_finished(self) -> None:
        _, params = parse_options_header(self.disposition)
        name = params.get(b"name", b"").decode("utf-8", "replace")
        if name != FIELD:
            raise BadRequest(f"unexpected field {name[:64]!r}: send the image in the field '{FIELD}'")
        raw = params.get(b"filename")
        self.filename = raw.decode("utf-8", "replace") if raw is not None else None  # browsers send UTF-8
        self.file = open(self.path, "xb")

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        self.size += end - start
        if self.size > self.max_bytes:
            raise too_large(self.max_bytes)
        assert self.file is not None  # opened when the part's headers ended
        self.file.write(data[start:end])  # page-cache writes of at most one received chunk

    def on_end(self) -> None:
        self.ended = True


@dataclass(frozen=True)
class Stored:
    id: str
    path: str  # relative to the local root: /picture/<path>
    format: str
    width: int
    height: int
    bytes: int


class Uploads:
    def __init__(self, config: Config, renderer: Renderer):
        self.config = config
        self.settings = config.uploads
        self.storage = renderer.storage
        # what /picture would refuse as a source is refused as an upload already
        self.max_bytes = min(self.settings.max_bytes, config.limits.max_source_bytes)
        self.renderer = renderer
        self.jobs = JobQueue(renderer, config.jobs.workers_in_server)

    def routes(self) -> list[Route]:
        return [
            Route("/upload", self.upload, methods=["POST"]),
            Route("/jobs/{id}", self.job, methods=["GET", "HEAD"]),
        ]

    async def start(self) -> None:
        if self.settings.enabled:
            self._remove_stale_temp_files()
            await self.jobs.start()

    async def stop(self) -> None:
        if self.settings.enabled:
            await self.jobs.stop()

    def _remove_stale_temp_files(self) -> None:
        cutoff = time.time() - STALE_TEMP_SECONDS
        try:
            for entry in os.scandir(self.storage.temp_dir):
                if entry.name.endswith(".part") and entry.stat().st_mtime < cutoff:
                    os.unlink(entry.path)
        except OSError:  # no temp dir yet, or a read-only root: nothing to tidy
            pass

    async def upload(self, request: Request) -> Response:
        try:
            return await self._upload(request)
        except ImageProxyError as exc:
            if not await self._drop_rest(request, exc):
                exc.headers["Connection"] = "close"
            raise

    async def _drop_rest(self, request: Request, refusal: ImageProxyError) -> bool:
        """Read what the client still sends of a refused upload, and drop it; False when the
        connection must close instead (a body over the limit or too slow: reading it is what the
        refusal avoids). Closing a socket with unread input resets it, and the reset can destroy
        the answer before the client reads it: nginx then answered 502 for 1 refused upload in 10."""
        if isinstance(refusal, (PayloadTooLarge, RequestTimeout)):
            return False
        limit = self.max_bytes + MULTIPART_OVERHEAD
        dropped = 0
        try:
            async with asyncio.timeout(DROP_SECONDS):
                async for chunk in request.stream():
                    dropped += len(chunk)
                    if dropped > limit:
                        return False
        except RuntimeError:  # Starlette's "Stream consumed": the body was all read already
            return True
        except (TimeoutError, ClientDisconnect):
            return False
        return True

    async def _upload(self, request: Request) -> Response:
        if not self.settings.enabled:
            raise NotFound("uploads are off")
        self._check_token(request)
        boundary = self._boundary(request)
        await self.jobs.check()  # a shared queue that is down: 503 before anything is stored
        limit = self.max_bytes + MULTIPART_OVERHEAD
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise too_large(self.max_bytes)
        upload_id = secrets.token_hex(ID_BYTES)
        temp = self.storage.temp_dir / f"{upload_id}.part"
        try:
            part = await self._receive(request, boundary, temp, limit)
            inspected = await self.renderer.run(inspect, temp, self.config, self.renderer.memory)
            stored = await self._store(temp, upload_id, part.filename, inspected)
        finally:
            temp.unlink(missing_ok=True)
        body = await run_in_threadpool(self._describe, stored)
        try:
            job = await self.jobs.submit(
                stored.id, stored.path, list(self.config.presets), list(self.settings.pregenerate_formats)
            )
        except JobsUnavailable:  # the queue went away since the check: take the upload back
            await self.storage.remove_upload(stored.path)
            raise
        body["job"] = {
            "id": job["id"],
            "status_url": f"/jobs/{job['id']}",
            "status": job["status"],
            "total": job["total"],
        }
        headers = {"Cache-Control": "no-store", "Location": picture_url(stored.path, self.config)}
        return JSONResponse(body, status_code=201, headers=headers)

    async def job(self, request: Request) -> Response:
        job_id = request.path_params["id"]
        known = self.settings.enabled and len(job_id) == 2 * ID_BYTES and all(c in "0123456789abcdef" for c in job_id)
        record = await self.jobs.status(job_id) if known else None
        if record is None:
            raise NotFound("no such job")
        return JSONResponse(record, headers={"Cache-Control": "no-store"})

    def _check_token(self, request: Request) -> None:
        check_bearer(request, self.settings.token, "upload")

    @staticmethod
    def _boundary(request: Request) -> bytes:
        kind, params = parse_options_header(request.headers.get("content-type", ""))
        boundary = params.get(b"boundary")
        if kind != b"multipart/form-data" or not boundary:
            raise BadRequest(f"expected multipart/form-data with the image in the field '{FIELD}'")
        return boundary

    async def _receive(self, request: Request, boundary: bytes, temp: Path, limit: int) -> ImagePart:
        part = ImagePart(temp, self.max_bytes)
        received = 0
        try:
            temp.parent.mkdir(parents=True, exist_ok=True)
            parser = MultipartParser(boundary, part.callbacks())
            async with asyncio.timeout(BODY_SECONDS):
                async for chunk in request.stream():
                    received += len(chunk)
                    if received > limit:
                        raise too_large(self.max_bytes)
                    parser.write(chunk)
            parser.finalize()
        except FormParserError:
            raise BadRequest("malformed multipart body") from None
        except TimeoutError:
            raise RequestTimeout(f"upload took longer than {BODY_SECONDS} s") from None
        except ClientDisconnect:
            raise BadRequest("client disconnected during the upload") from None
        except OSError as exc:
            log.warning("cannot write uploads under %s: %s", self.storage.temp_dir, exc)
            raise StorageUnavailable("upload storage is unavailable") from None
        finally:
            if part.file is not None:
                part.file.close()
        if part.file is None:
            raise BadRequest(f"no field '{FIELD}' in the form")
        if not part.ended:
            raise BadRequest("multipart body ended early")
        return part

    async def _store(self, temp: Path, upload_id: str, filename: str | None, inspected: tuple[str, int, int]) -> Stored:
        """Hand the checked image to the storage: nothing is stored unchecked."""
        fmt, width, height = inspected
        name = safe_name(filename, fmt)
        path, size = await self.storage.save_upload(temp, upload_id, name)
        return Stored(upload_id, path, fmt, width, height, size)

    def _describe(self, stored: Stored) -> dict:
        """The 201 body: where the image is and the markup that shows it (header reads: a thread)."""
        config = self.config
        plain = width_presets(config)  # presets that keep the aspect ratio: srcset candidates
        variants = [{"preset": name} for name in plain] or width_variants(width_steps(config), {})
        formats = [f for f in self.settings.pregenerate_formats if f in CONTENT_TYPES]
        alt = stored.path.rsplit("/", 1)[-1]
        return {
            "id": stored.id,
            "path": stored.path,
            "width": stored.width,
            "height": stored.height,
            "format": stored.format.lower(),
            "bytes": stored.bytes,
            "urls": {name: picture_url(stored.path, config, preset=name) for name in config.presets},
            "srcset": join_srcset(candidates(stored.path, config, variants)),
            "picture_html": str(
                picture_tag(stored.path, presets=plain or None, formats=formats, alt=alt, config=config)
            ),
        }
