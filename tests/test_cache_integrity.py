"""Issue 14: a damaged result file is never served; it is a miss that removes the entry and logs once."""

import hashlib

import diskcache
import pytest

URL = "/picture/photos/large_9mp_harbour.jpg?w=900&encoding=png"  # ~480 KB: stored as a file


def damage(cache_dir, how: str) -> None:
    """Cut the single result file to half its length, or flip two bytes in its middle."""
    with diskcache.Cache(str(cache_dir)) as cache:
        names = [name for (name,) in cache._sql("SELECT filename FROM Cache WHERE filename IS NOT NULL")]
    assert len(names) == 1
    path = cache_dir / names[0]
    data = bytearray(path.read_bytes())
    if how == "cut":
        data = data[: len(data) // 2]
    else:
        data[len(data) // 2] ^= 0xFF
        data[len(data) // 2 + 1] ^= 0x55
    path.write_bytes(bytes(data))


@pytest.mark.timeout(120)
@pytest.mark.parametrize("how", ["cut", "flip"])
@pytest.mark.parametrize("memory_body_limit", ["1MB", "64KB"], ids=["read", "streamed"])
def test_a_damaged_result_file_is_a_miss_rendered_again(live_server, how, memory_body_limit):
    server = live_server({"cache": {"memory_body_limit": memory_body_limit}})
    with server.client() as client:
        first = client.get(URL)
        assert first.status_code == 200 and first.headers["x-cache"] == "MISS"
        damage(server.cache_dir, how)
        for expected in ("MISS", "HIT", "HIT"):
            r = client.get(URL)
            assert r.status_code == 200 and r.headers["x-cache"] == expected
            assert int(r.headers["content-length"]) == len(r.content) == len(first.content)
            assert r.headers["etag"] == '"' + hashlib.sha256(r.content).hexdigest()[:32] + '"' == first.headers["etag"]
            assert r.content == first.content
    warnings = [line for line in server.log_text().splitlines() if "is damaged" in line]
    assert len(warnings) == 1, server.log_text()
    assert ("bytes stored" if how == "cut" else "do not match its ETag") in warnings[0]
    assert "Traceback" not in server.log_text()
