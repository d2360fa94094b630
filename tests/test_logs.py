"""Access log: one line per request, JSON or text, without `sig`; a failure logged once with its cause."""

import asyncio
import json
import logging
import re
from datetime import datetime

import httpx
import pytest
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from imgproxy.app import PictureFastPath
from imgproxy.logs import AccessLog, JsonFormatter, TextFormatter, loggable_path, render_ms
from imgproxy.signing import signed_url

KEY = "test-key-for-logs"
FIELDS = {"time", "method", "path", "status", "bytes", "ms", "cache", "render_ms"}


def json_lines(server) -> list[dict]:
    return [json.loads(line) for line in server.log_path.read_text().splitlines() if line.startswith("{")]


def access_lines(server) -> list[dict]:
    return [line for line in json_lines(server) if "method" in line]


@pytest.mark.timeout(60)
def test_json_lines_carry_the_fields_and_never_the_signature(live_server):
    server = live_server({"log": {"format": "json"}, "security": {"key": KEY}})
    signed = signed_url("/picture/photos/tree.webp", [("w", 90), ("encoding", "webp")], (KEY,))
    signature = signed.rsplit("sig=", 1)[1]
    with server.client() as client:
        miss, hit = client.get(signed), client.get(signed)
        missing = client.get(signed_url("/picture/nope.jpg", [("w", 10)], (KEY,)))
        unsigned = client.get("/picture/photos/tree.webp?w=91")
    assert (miss.status_code, hit.status_code, missing.status_code, unsigned.status_code) == (200, 200, 404, 403)

    lines = access_lines(server)
    pictures = [line for line in lines if line["path"].startswith("/picture/")]
    assert len(pictures) == 4  # one line per request
    for line in lines:
        assert set(line) >= FIELDS
        datetime.fromisoformat(line["time"])
        assert line["ms"] >= 0
    first, second, not_found, forbidden = pictures
    assert first["path"] == second["path"] == "/picture/photos/tree.webp?w=90&encoding=webp"
    assert signature not in server.log_path.read_text() and "sig=" not in server.log_path.read_text()
    assert (first["method"], first["status"], first["bytes"]) == ("GET", 200, len(miss.content))
    assert first["cache"] == "MISS" and first["render_ms"] > 0
    assert second["cache"] == "HIT" and second["render_ms"] is None and second["bytes"] == len(hit.content)
    assert (not_found["status"], not_found["error"], not_found["cache"]) == (404, "source not found", None)
    assert forbidden["status"] == 403 and "signature" in forbidden["error"]
    assert not any(line.get("logger") == "uvicorn.access" for line in json_lines(server))


@pytest.mark.timeout(60)
def test_text_lines_are_readable(live_server):
    server = live_server({"log": {"format": "text"}})
    with server.client() as client:
        r = client.get("/picture/photos/tree.webp?w=64&encoding=jpeg")
        client.get("/picture/photos/tree.webp?w=64&encoding=jpeg")
    lines = [line for line in server.log_path.read_text().splitlines() if " /picture/" in line]
    assert len(lines) == 2
    pattern = (
        r"\S+Z GET /picture/photos/tree\.webp\?w=64&encoding=jpeg 200 (\d+)B [\d.]+ms (MISS|HIT)( render=[\d.]+ms)?"
    )
    (size, cache, render), (_, cache2, render2) = (re.fullmatch(pattern, line).groups() for line in lines)
    assert (int(size), cache, cache2, render2) == (len(r.content), "MISS", "HIT", None) and render


@pytest.mark.timeout(60)
def test_access_log_off_writes_no_request_lines(live_server):
    server = live_server({"log": {"format": "json", "access_log": False}})
    with server.client() as client:
        assert client.get("/picture/photos/tree.webp?w=64").status_code == 200
        assert client.get("/metrics").status_code == 200
    assert access_lines(server) == []
    assert not any("/picture/" in line for line in server.log_path.read_text().splitlines())


def _failing_app():
    async def boom(request):
        raise RuntimeError("render exploded")

    async def fine(request):
        return PlainTextResponse("ok")

    # as in create_app: inside Starlette's own error middleware, which then never sees the error
    return Starlette(
        routes=[Route("/boom", boom), Route("/fine", fine)], middleware=[Middleware(AccessLog, enabled=False)]
    )


def test_an_unexpected_error_is_a_500_logged_once_with_its_traceback(caplog):
    caplog.set_level(logging.INFO)

    async def requests():
        transport = httpx.ASGITransport(app=_failing_app())
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return await client.get("/boom?sig=secret-signature"), await client.get("/fine")

    r, fine = asyncio.run(requests())
    assert (r.status_code, r.text, r.headers["cache-control"]) == (500, "internal error\n", "no-store")
    assert fine.status_code == 200  # access_log off: no line for it
    records = [r for r in caplog.records if r.name.startswith(("imgproxy", "uvicorn", "starlette"))]
    assert len(records) == 1
    record = records[0]
    assert record.levelno == logging.ERROR and record.exc_info[0] is RuntimeError
    assert record.access["path"] == "/boom" and record.access["status"] == 500
    assert record.access["error"] == "RuntimeError: render exploded"
    line = json.loads(JsonFormatter().format(record))
    assert "render exploded" in line["exception"] and "Traceback" in line["exception"]
    assert "secret-signature" not in line["exception"] + json.dumps(line)
    first, *traceback = TextFormatter().format(record).splitlines()
    assert re.fullmatch(r'\S+Z GET /boom 500 15B [\d.]+ms error="RuntimeError: render exploded"', first)
    assert traceback[0].startswith("Traceback")


def test_a_500_from_the_picture_fast_path_carries_the_security_headers():
    async def broken_endpoint(scope, receive, send):
        raise RuntimeError("bug in the hit path")

    route = Route("/picture/{source:path}", broken_endpoint)
    app = PictureFastPath(_failing_app(), broken_endpoint, route, enabled=False)

    async def requests():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return await client.get("/picture/a.jpg?w=10"), await client.get("/boom")

    fast, routed = asyncio.run(requests())
    for r in (fast, routed):
        assert (r.status_code, r.text) == (500, "internal error\n")
        assert r.headers["x-content-type-options"] == "nosniff"
        assert r.headers["content-security-policy"] == "default-src 'none'"
        assert r.headers.get_list("content-security-policy") == ["default-src 'none'"]


def test_loggable_path_drops_sig_however_it_is_spelled():
    def scope(path, query):
        return {"path": path, "raw_path": path.encode(), "query_string": query.encode()}

    assert loggable_path(scope("/picture/a.jpg", "w=1&sig=abc&h=2")) == "/picture/a.jpg?w=1&h=2"
    assert loggable_path(scope("/picture/a.jpg", "%73ig=abc")) == "/picture/a.jpg"
    assert loggable_path(scope("/picture/a%20b.jpg", "")) == "/picture/a%20b.jpg"
    assert len(loggable_path(scope("/picture/" + "a" * 5000, ""))) == 1025


def test_render_ms_reads_server_timing():
    assert render_ms('cache;desc="MISS", render;dur=12.5') == 12.5
    assert render_ms('cache;desc="HIT"') is None
    assert render_ms("render;dur=x") is None
