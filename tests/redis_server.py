"""A real Redis for tests: Debian's `redis-server` on a free loopback port, persistence off, its
own temporary directory, stopped by PID (also when the test fails).

Use the `redis_server` fixture (import it into the test module), or `RedisServer` directly for
several servers. `stop()` then `start()` brings the same server back on the same port, empty.
When `redis-server` is missing the test fails under CI (env `CI` set) and is skipped elsewhere.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import redis

from .conftest import free_port, stop_process, track

START_SECONDS = 20


def redis_binary() -> str | None:
    return shutil.which("redis-server") or next(
        (p for p in ("/usr/bin/redis-server", "/usr/sbin/redis-server") if os.access(p, os.X_OK)), None
    )


class RedisServer:
    def __init__(self, directory: Path, binary: str):
        self.directory = directory
        self.directory.mkdir(parents=True, exist_ok=True)
        self.binary = binary
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen | None = None

    def start(self) -> RedisServer:
        cmd = [self.binary, "--bind", "127.0.0.1", "--port", str(self.port), "--save", "", "--appendonly", "no"]
        cmd += ["--dir", str(self.directory), "--daemonize", "no", "--logfile", str(self.directory / "redis.log")]
        self.process = track(
            subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True),
            f"redis-server on port {self.port}",
        )
        client = redis.Redis(port=self.port, socket_timeout=1, socket_connect_timeout=1)
        deadline = time.monotonic() + START_SECONDS
        try:
            while True:
                if self.process.poll() is not None:
                    raise RuntimeError(f"redis-server exited with {self.process.returncode}: {self.log_text()}")
                try:
                    if client.ping():
                        return self
                except redis.ConnectionError:
                    pass
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"redis-server did not answer within {START_SECONDS} s: {self.log_text()}")
                time.sleep(0.05)
        finally:
            client.close()

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url, socket_timeout=5, decode_responses=True)

    def log_text(self) -> str:
        path = self.directory / "redis.log"
        return path.read_text(errors="replace")[-2000:] if path.exists() else ""

    def stop(self) -> None:
        if self.process is None:
            return
        stop_process(self.process, 10)
        self.process = None


def require_redis_binary() -> str:
    binary = redis_binary()
    if binary is None:
        message = "redis-server is not installed (Debian: apt-get install redis-server)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return binary


@pytest.fixture
def redis_server(tmp_path):
    """A started RedisServer, stopped at teardown."""
    server = RedisServer(tmp_path / "redis", require_redis_binary())
    try:
        yield server.start()
    finally:
        server.stop()
