"""Issue 14: a `serve` that cannot listen fails in one line and leaves a running server's statistics alone."""

import pytest

from .test_cachetool import A, cache_status, imgproxy


def lookups(server) -> tuple[str, str]:
    done = imgproxy("cache", "stats", "--config", str(server.config_path))
    assert done.returncode == 0, done.stderr
    fields = {k: v.strip() for k, v in (line.split(":", 1) for line in done.stdout.splitlines())}
    return fields["hits"], fields["misses"]


@pytest.mark.timeout(120)
def test_a_second_serve_on_a_busy_port_fails_and_keeps_the_counters(live_server):
    server = live_server({})
    with server.client() as client:
        assert [cache_status(client, A + "?w=64") for _ in range(3)] == ["MISS", "HIT", "HIT"]
        assert lookups(server) == ("2", "1")

        second = imgproxy(
            "serve", "--config", str(server.config_path), "--host", "127.0.0.1", "--port", str(server.port)
        )
        assert second.returncode != 0
        assert second.stderr.strip() == f"imgproxy: cannot listen on 127.0.0.1:{server.port}: address already in use"
        assert lookups(server) == ("2", "1")

        assert cache_status(client, A + "?w=64") == "HIT"  # the first server still counts into its file
        assert lookups(server) == ("3", "1")


@pytest.mark.timeout(120)
def test_a_new_serve_starts_the_counts_afresh(live_server):
    first = live_server({}, name="one")
    with first.client() as client:
        assert [cache_status(client, A + "?w=64") for _ in range(2)] == ["MISS", "HIT"]
    first.stop()
    second = live_server({"cache": {"dir": str(first.cache_dir)}}, name="two")
    assert lookups(second) == ("0", "0")  # the ended server's counters went
    with second.client() as client:
        assert cache_status(client, A + "?w=64") == "HIT"
    assert lookups(second) == ("1", "0")
