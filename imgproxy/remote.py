"""Remote originals over HTTP(S): fetched safely, cached on disk and revalidated.

Safety: only http/https URLs without credentials whose host matches `allowed_hosts`; every
connection (redirect hops included) goes through netguard's pinned, address-checked backend;
connect/read timeouts plus a deadline for the whole fetch; bodies are streamed raw (a
Content-Encoding other than identity is refused, so nothing is decompressed) and cut off past
`max_bytes`; the first bytes must look like an allowed image format. At most `max_fetches`
fetches run at once, so their bodies hold at most `max_fetches × max_bytes`; up to
`fetch_queue_limit` more wait for a turn, past that the answer is 503. Only the URL goes
upstream — never a client's cookies or Authorization — and error messages name the host, never
the path or query (they may carry tokens).

Caching: each original is stored with its validators; within its freshness (`Cache-Control:
max-age` from upstream, else `freshness`) it is served without a request, after that revalidated
with If-None-Match / If-Modified-Since. Concurrent loads of one URL share one fetch.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import http.cookiejar
import re
import ssl
import time
from collections.abc import AsyncIterator, Iterable
from email.utils import parsedate_to_datetime
from pathlib import Path

import httpx
from PIL import Image

from . import metrics
from .config import RemoteSourceConfig, SecurityConfig
from .errors import (
    BadGateway,
    BadRequest,
    Forbidden,
    GatewayTimeout,
    NotFound,
    Overloaded,
    PayloadTooLarge,
    UnsupportedMedia,
)
from .netguard import (
    AddressPolicy,
    GuardedBackend,
    GuardedTransport,
    Resolver,
    compile_host_pattern,
    host_allowed,
    is_host_shaped,
)
from .originals import OriginalsCache
from .shared import SharedTasks
from .sources import Original
from .svg import looks_like_svg

SNIFF_BYTES = 16  # what Pillow's format checks look at
MAX_URL_LENGTH = 2048
REQUEST_HEADERS = {
    "User-Agent": "imgproxy",
    "Accept": "image/*,*/*;q=0.8",
    "Accept-Encoding": "identity",  # images are compressed already; no gzip bombs
}


def parse_remote_url(source: str) -> httpx.URL:
    """The URL to fetch, or a 400. Accepts `https:/host/…` (slashes collapsed by a proxy)."""
    if len(source) > MAX_URL_LENGTH:
        raise BadRequest(f"remote URL longer than {MAX_URL_LENGTH} characters")
    fixed = re.sub(r"^(https?):/+", r"\1://", source.strip(), count=1, flags=re.IGNORECASE)
    try:
        url = httpx.URL(fixed)
        host = url.host  # decodes IDNA: an `xn--` label that is not valid punycode fails here
    except (httpx.InvalidURL, ValueError, TypeError):  # ValueError includes idna's UnicodeErrors
        raise BadRequest("bad remote URL") from None
    if url.scheme not in ("http", "https"):
        raise BadRequest("remote URL must use http or https")
    if url.userinfo:
        raise BadRequest("credentials in remote URLs are not allowed")
    if not host:
        raise BadRequest("remote URL has no host")
    if not is_host_shaped(host_of(url)):
        raise BadRequest("remote URL has a bad host name")
    if url.port is not None and not 0 < url.port < 65536:
        raise BadRequest("remote URL has a bad port")
    return url.copy_with(fragment=None)


def freshness(headers: httpx.Headers, default: float) -> float:
    """Seconds a response may be reused without asking upstream again."""
    directives = {}
    for item in headers.get("cache-control", "").lower().split(","):
        name, _, value = item.strip().partition("=")
        directives[name] = value.strip('"')
    if "no-cache" in directives or "no-store" in directives:
        return 0.0
    for name in ("s-maxage", "max-age"):  # s-maxage is for shared caches like this one
        value = directives.get(name, "")
        if value.isascii() and value.isdigit():  # "²".isdigit() is true as well
            return float(value)
    return default


def sniff_format(head: bytes, formats: Iterable[str]) -> str | None:
    """The first allowed format whose signature (Pillow's own check) matches `head`."""
    Image.init()
    for name in formats:
        plugin = Image.OPEN.get(name)
        if plugin and plugin[1] and plugin[1](head):
            return name
    return None


def host_of(url: httpx.URL) -> str:
    """The host as connected to and matched: IDNA A-labels, no brackets."""
    return url.raw_host.decode("ascii")


def redirect_target(url: httpx.URL, location: str) -> httpx.URL:
    try:
        return parse_remote_url(str(url.join(location)))
    except (BadRequest, httpx.InvalidURL):
        raise BadGateway(f"upstream {host_of(url)} redirected to an invalid or non-http URL") from None


def validator(headers: httpx.Headers, name: str) -> str | None:
    """An ETag or Last-Modified to send back when revalidating: only ASCII fits a request header."""
    value = headers.get(name)
    return value if value and value.isascii() else None


def identity_encoded(headers: httpx.Headers) -> bool:
    return all(coding.strip().lower() in ("", "identity") for coding in headers.get("content-encoding", "").split(","))


class FetchSlots:
    """At most `limit` upstream fetches at once and `queue_limit` more waiting, per worker.

    Taken before a request goes out, so the bytes fetches hold are bounded by `limit × max_bytes`
    however many clients ask. A short queue rides out a page's burst of images (browsers do not
    retry an <img> that got a 503); past it, or when the wait reaches the deadline, the answer is
    503 with Retry-After, like the render queue's.
    """

    def __init__(self, limit: int, queue_limit: int):
        self.limit = limit
        self.queue_limit = queue_limit
        self.running = 0
        self.waiting = 0
        self.semaphore = asyncio.Semaphore(limit)

    @contextlib.asynccontextmanager
    async def slot(self, deadline: float) -> AsyncIterator[None]:
        """A turn to fetch, waited for until `deadline` (event loop time)."""
        if self.running + self.waiting >= self.limit + self.queue_limit:
            raise Overloaded(f"too many upstream fetches ({self.limit} running, {self.waiting} waiting)", retry_after=2)
        self.waiting += 1
        try:
            async with asyncio.timeout_at(deadline):
                await self.semaphore.acquire()
        except TimeoutError:
            raise Overloaded(
                f"no upstream fetch slot came free within the timeout ({self.limit} running)", retry_after=2
            ) from None
        finally:
            self.waiting -= 1
        self.running += 1
        try:
            yield
        finally:
            self.running -= 1
            self.semaphore.release()


def _epoch(http_date: str | None) -> float | None:
    try:
        return parsedate_to_datetime(http_date).timestamp() if http_date else None
    except (TypeError, ValueError, OverflowError):  # OverflowError: a year past datetime's range
        return None


class RemoteSource:
    def __init__(
        self,
        cfg: RemoteSourceConfig,
        *,
        cache_dir: Path,
        resolver: Resolver | None = None,
        formats: Iterable[str] = SecurityConfig.allowed_source_formats,
        trusted_networks: Iterable[str] = (),
        svg: bool = False,
    ):
        for pattern in cfg.allowed_hosts:
            compile_host_pattern(pattern)  # a bad pattern fails at start-up, not per request
        self.cfg = cfg
        # MPO is opened by the JPEG plugin: its signature is JPEG's
        self.formats = tuple(dict.fromkeys("JPEG" if f == "MPO" else f for f in formats))
        self.svg = svg  # [security] svg = "rasterize": XML passes the sniff, the render scans it
        policy = AddressPolicy(cfg.allow_private_addresses, trusted_networks)
        self.client = httpx.AsyncClient(
            transport=GuardedTransport(GuardedBackend(policy, resolver)),
            timeout=httpx.Timeout(cfg.read_timeout, connect=cfg.connect_timeout),
            follow_redirects=False,  # followed by hand so each hop is checked
            trust_env=False,  # no proxies or .netrc credentials from the environment
            cookies=http.cookiejar.CookieJar(http.cookiejar.DefaultCookiePolicy(allowed_domains=[])),
            headers=REQUEST_HEADERS,
        )
        self.cache = OriginalsCache(cache_dir, cfg.cache_size_limit)
        self.inflight: SharedTasks[Original] = SharedTasks()  # one fetch per URL for concurrent callers
        self.fetches = FetchSlots(cfg.max_fetches, cfg.fetch_queue_limit)

    def check(self, source: str) -> httpx.URL:
        """Parse and authorize a remote source before anything is fetched (400/403)."""
        url = parse_remote_url(source)
        self.check_host(url)
        return url

    def check_host(self, url: httpx.URL, redirect: bool = False) -> None:
        if not self.cfg.allowed_hosts:
            raise Forbidden("remote sources are off: sources.remote.allowed_hosts is empty")
        host = host_of(url)
        if not host_allowed(host, self.cfg.allowed_hosts):
            what = "redirect to a host" if redirect else "remote host"
            raise Forbidden(f"{what} not allowed: {host}")

    async def load(self, source: str) -> Original:
        url = self.check(source)
        key = str(url)
        return await self.inflight.run(key, lambda: self._load(url, key))

    async def _load(self, url: httpx.URL, key: str) -> Original:
        entry = await asyncio.to_thread(self.cache.get, key)
        if entry is None or time.time() >= entry["fetched_at"] + entry["max_age"]:
            # one deadline for the wait for a slot and the fetch: a client waits at most `timeout`
            deadline = asyncio.get_running_loop().time() + self.cfg.timeout
            async with self.fetches.slot(deadline):
                try:
                    with metrics.upstream_fetch():
                        async with asyncio.timeout_at(deadline):
                            entry = await self._fetch(url, entry)
                except TimeoutError:
                    message = f"upstream {host_of(url)} did not answer within {self.cfg.timeout:g} s"
                    raise GatewayTimeout(message) from None
            await asyncio.to_thread(self.cache.set, key, entry)
        return Original(
            id=key,
            version=entry["version"],
            size=len(entry["data"]),
            last_modified=_epoch(entry["last_modified"]),
            data=entry["data"],
        )

    async def _fetch(self, url: httpx.URL, cached: dict | None) -> dict:
        headers = {}
        if cached and cached["etag"]:
            headers["If-None-Match"] = cached["etag"]
        if cached and cached["last_modified"]:
            headers["If-Modified-Since"] = cached["last_modified"]
        for hop in range(self.cfg.max_redirects + 1):
            if hop:
                self.check_host(url, redirect=True)
            host = host_of(url)
            try:
                response = await self.client.send(self.client.build_request("GET", url, headers=headers), stream=True)
                try:
                    if not response.has_redirect_location:
                        return await self._read(response, cached, host)
                    location = response.headers["location"]
                finally:
                    await response.aclose()
            except httpx.TimeoutException:
                raise GatewayTimeout(f"upstream {host} did not answer within the timeout") from None
            except httpx.ConnectError:  # refused, unresolvable, or resolving only to private addresses
                raise BadGateway(f"cannot connect to upstream {host}") from None
            except (httpx.HTTPError, ssl.SSLError):  # httpcore maps TLS errors in the handshake, not in reads
                raise BadGateway(f"upstream {host} sent an invalid response") from None
            except (httpx.InvalidURL, UnicodeError):
                # httpx builds the next request from a redirect's Location itself (follow_redirects
                # off or not), and a host that is not valid IDNA fails in its URL model
                raise BadGateway(f"upstream {host} redirected to an invalid or non-http URL") from None
            url = redirect_target(url, location)
        raise BadGateway(f"upstream redirected more than {self.cfg.max_redirects} times")

    async def _read(self, response: httpx.Response, cached: dict | None, host: str) -> dict:
        status = response.status_code
        if status == 304 and cached:
            return {
                **cached,
                "etag": validator(response.headers, "etag") or cached["etag"],
                "fetched_at": time.time(),
                "max_age": freshness(response.headers, cached["max_age"]),
            }
        if status in (404, 410):
            raise NotFound(f"upstream {host} answered {status}: not found")
        if status != 200:
            raise BadGateway(f"upstream {host} answered {status}")
        if not identity_encoded(response.headers):
            # asked for identity; decoding would let a few hundred bytes grow past max_bytes in one step
            raise BadGateway(f"upstream {host} sent a compressed body (Content-Encoding); only identity is accepted")
        limit = self.cfg.max_bytes
        too_large = PayloadTooLarge(f"remote source is larger than {limit} bytes")
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise too_large
        body = bytearray()
        sniffed = False
        async for chunk in response.aiter_raw():  # raw: never decoded
            body += chunk
            if len(body) > limit:
                raise too_large
            if not sniffed and len(body) >= SNIFF_BYTES:
                self._sniff(body)
                sniffed = True
        if not sniffed:
            self._sniff(body)
        data = bytes(body)
        digest = await asyncio.to_thread(hashlib.sha256, data)  # up to max_bytes: off the event loop
        return {
            "data": data,
            # the content decides the version (ETags may be weak, or differ per CDN node)
            "version": digest.hexdigest()[:16],
            "etag": validator(response.headers, "etag"),
            "last_modified": validator(response.headers, "last-modified"),
            "fetched_at": time.time(),
            "max_age": freshness(response.headers, self.cfg.freshness),
        }

    def _sniff(self, head: bytes | bytearray) -> None:
        start = bytes(head[:SNIFF_BYTES])
        if sniff_format(start, self.formats) is None and not (self.svg and looks_like_svg(start)):
            raise UnsupportedMedia("remote source is not a supported image")

    async def aclose(self) -> None:
        self.inflight.cancel()
        await self.client.aclose()
        self.cache.close()
