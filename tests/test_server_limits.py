"""[server] limits for a service facing clients without a proxy (imgproxy.httpguard), against a real
server: oversized or too many headers are refused with 431 and the connection closed; sockets that
never send a request are closed after header_timeout, so they cannot starve /health."""

from __future__ import annotations

import resource
import socket
import time

import httpx
import pytest

from imgproxy.config import ConfigError, load_config

from .conftest import LiveServer

pytestmark = pytest.mark.timeout(120)


def exchange(port: int, request: bytes) -> bytes:
    """Send `request` (the server may stop reading early) and read until the server closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as conn:
        try:
            conn.sendall(request)
        except (BrokenPipeError, ConnectionResetError):
            pass  # refused before the whole request was read: the answer is still there to read
        answer = b""
        while chunk := conn.recv(65536):  # b"" once the server closed; a timeout fails the test
            answer += chunk
        return answer


def request_with(headers: list[bytes]) -> bytes:
    return b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n" + b"".join(headers) + b"\r\n"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    live = LiveServer(tmp_path_factory.mktemp("limits"), {"server": {"max_header_bytes": "16KB", "max_headers": 50}})
    live.start()
    yield live
    live.stop()


@pytest.mark.parametrize("size", [20_000, 1024**2, 8 * 1024**2])
def test_oversized_header_is_refused_and_the_connection_closed(server, size):
    answer = exchange(server.port, request_with([b"X-Big: " + b"a" * size + b"\r\n"]))
    assert answer.startswith(b"HTTP/1.1 431 "), answer[:200]
    assert answer.endswith(b"request header too large\n")


def test_header_sent_without_its_end_is_refused_once_past_the_limit(server):
    # never finished: the server must stop buffering at the limit, not wait for the end
    answer = exchange(server.port, b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (1024**2))
    assert answer.startswith(b"HTTP/1.1 431 ")


def test_oversized_url_is_refused(server):
    answer = exchange(server.port, b"GET /picture/" + b"a" * 40_000 + b".jpg HTTP/1.1\r\nHost: x\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 431 ")


def test_too_many_header_lines_are_refused(server):
    answer = exchange(server.port, request_with([b"X-%d: 1\r\n" % i for i in range(60)]))
    assert answer.startswith(b"HTTP/1.1 431 "), answer[:200]


def test_headers_within_the_limits_pass(server):
    answer = exchange(server.port, request_with([b"X-%d: %s\r\n" % (i, b"v" * 200) for i in range(40)]))
    assert answer.startswith(b"HTTP/1.1 200 "), answer[:200]


def test_idle_sockets_are_closed_and_do_not_starve_health(live_server):
    live = live_server({"server": {"header_timeout": 1}})
    # a low file limit, as on many hosts: 250 idle sockets are more than it allows
    resource.prlimit(live.process.pid, resource.RLIMIT_NOFILE, (128, 128))
    idle = [socket.create_connection(("127.0.0.1", live.port), timeout=30) for _ in range(250)]
    try:
        status, deadline = None, time.monotonic() + 60
        while status is None and time.monotonic() < deadline:
            try:
                status = httpx.get(live.url + "/health", timeout=5).status_code
            except httpx.TransportError:  # not accepted yet, or shed while the file limit is reached
                time.sleep(0.2)
        assert status == 200, "/health did not answer while idle sockets were open"
        # the first idle sockets were accepted before /health: the server closed them
        assert all(conn.recv(1) == b"" for conn in idle[:20])
    finally:
        for conn in idle:
            conn.close()


def test_server_keys_are_checked():
    with pytest.raises(ConfigError, match="server.max_headers"):
        load_config(None, environ={"IMGPROXY_SERVER__MAX_HEADERS": "0"})
    with pytest.raises(ConfigError, match="server.max_header_bytes"):
        load_config(None, environ={"IMGPROXY_SERVER__MAX_HEADER_BYTES": "10GB"})
