"""The HTTP protocol `imgproxy serve` runs: uvicorn's httptools protocol plus the limits a service
exposed without a proxy needs, which uvicorn has for none of its parsers but h11:

- the request line and headers together are cut at [server] max_header_bytes and at max_headers
  lines: the answer is 431 and the connection is closed (measured before: 32 MB of headers were
  buffered and answered);
- a connection must send a request's headers within header_timeout, counted from the connection
  or from the request's first byte; uvicorn's keep-alive timeout only starts after a response, so
  sockets that never sent anything were held for ever (250 of them exhausted a low file limit and
  /health stopped answering).
"""

from __future__ import annotations

import asyncio

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from .config import ServerConfig

LINGER = 2.0  # seconds a refused connection is still read from (and dropped)
REFUSAL_BODY = b"request header too large\n"
REFUSAL = (
    b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
    b"content-type: text/plain; charset=utf-8\r\n"
    b"x-content-type-options: nosniff\r\n"
    b"content-length: " + str(len(REFUSAL_BODY)).encode() + b"\r\n"
    b"connection: close\r\n\r\n" + REFUSAL_BODY
)


class HeaderLimitExceeded(Exception):
    """Raised in a parser callback to stop httptools; the 431 has been sent already."""


class GuardedHttpProtocol(HttpToolsProtocol):
    """uvicorn builds one per connection: `http=functools.partial(GuardedHttpProtocol, server=...)`."""

    def __init__(self, *args, server: ServerConfig, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.limits = server
        self.reading_header = True  # between a request's first byte (or the connection) and its header's end
        self.header_bytes = 0
        self.refused = False
        # One timer per connection, not one per request (a keep-alive connection's requests only
        # move the deadline): it fires at the deadline it was set for and looks again.
        self.header_deadline: float | None = None  # loop time the current header must end by
        self.header_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.start_header_clock()

    def connection_lost(self, exc: Exception | None) -> None:
        self.stop_header_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self.refused:  # lingering: what the client still sends is dropped (see refuse)
            return
        super().data_received(data)
        if self.reading_header and not self.refused:  # this data ended inside a request's header
            self.header_bytes += len(data)
            if self.header_bytes > self.limits.max_header_bytes:
                self.refuse()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.reading_header = True
        self.header_bytes = 0
        self.start_header_clock()

    def start_header_clock(self) -> None:
        self.header_deadline = self.loop.time() + self.limits.header_timeout
        if self.header_timer is None:
            self.header_timer = self.loop.call_at(self.header_deadline, self.header_timed_out)

    def on_headers_complete(self) -> None:
        self.reading_header = False
        self.header_deadline = None
        # The count is checked here, not per header line: the byte limit in data_received already
        # bounds what a slow header can hold, and a callback per line costs every request.
        # data_received only sees headers still incomplete after a read; one read may hold more.
        if (
            len(self.headers) > self.limits.max_headers
            or len(self.url) + sum(len(name) + len(value) + 4 for name, value in self.headers)
            > self.limits.max_header_bytes
        ):
            self.refuse()
            raise HeaderLimitExceeded
        super().on_headers_complete()

    def send_400_response(self, msg: str) -> None:
        if not self.refused:  # uvicorn's answer to a parser error; ours went out already
            super().send_400_response(msg)

    def refuse(self) -> None:
        """Answer 431 and end the connection. Closing a socket with unread input makes the kernel
        send a reset, which can destroy the answer before the client reads it; so the answer goes
        out with a FIN and what the client still sends is read and dropped for LINGER seconds."""
        self.refused = True
        self.stop_header_timer()
        if self.transport.is_closing():
            return
        self.transport.write(REFUSAL)
        if self.transport.can_write_eof():
            self.transport.write_eof()
            self.loop.call_later(LINGER, self.transport.close)
        else:
            self.transport.close()

    def header_timed_out(self) -> None:
        self.header_timer = None
        if self.header_deadline is None:  # between requests: uvicorn's keep-alive timeout applies
            return
        if self.loop.time() < self.header_deadline:  # a later request moved the deadline
            self.header_timer = self.loop.call_at(self.header_deadline, self.header_timed_out)
        elif not self.transport.is_closing():
            self.transport.close()

    def stop_header_timer(self) -> None:
        if self.header_timer is not None:
            self.header_timer.cancel()
            self.header_timer = None
