"""The nginx edge of deploy/nginx, run unchanged in front of replicas on 127.0.0.1 (used by
tests/test_cdn.py, tests/test_multihost.py and bench/cdn.py).

deploy/nginx/imgproxy.conf is wrapped in a minimal nginx.conf (pid, temp paths and logs in a
temp dir, the current user) and the deployment-specific files are written beside it:
listen.conf, upstream.conf, jobs.conf — a copy of deploy/nginx/jobs-local.conf or
jobs-redis.conf, whichever mode is asked for — and format.conf (format-fixed.conf or
format-auto.conf, for the replicas' [render] default_format). nginx's access log, in the config's own
`imgproxy_edge` format, tells what happened to each request (did the edge answer, which
replicas were tried).
"""

from __future__ import annotations

import grp
import os
import pwd
import re
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from .conftest import free_port, stop_process, track

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
EDGE_CONF = DEPLOY / "nginx" / "imgproxy.conf"
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
STARTUP_SECONDS = 60

WRAPPER = """\
daemon off;
worker_processes 1;
{user}
pid {dir}/nginx.pid;
error_log {dir}/error.log notice;
events {{ worker_connections 256; }}
http {{
    client_body_temp_path {dir}/client_body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    proxy_cache_path {dir}/cache levels=1:2 keys_zone=imgproxy_edge:1m max_size=64m use_temp_path=off;
    include {edge_conf};
    access_log {dir}/access.log imgproxy_edge;
}}
"""

LOG_LINE = re.compile(
    r'"(?P<method>\S+) (?P<uri>\S+) [^"]*" (?P<status>\d+) \d+ rt=\S+ cache=(?P<cache>\S+) '
    r"upstream=(?P<upstream>.*) upstream_status=.* key=(?P<key>\S+) accept=(?P<accept>\S+)$"
)

ACCEPT_OTHER = "*/*"


def require_nginx() -> None:
    """Skip the calling module without nginx, except in CI where it must be there."""
    if not Path(NGINX).exists():
        if os.environ.get("CI"):
            raise RuntimeError("nginx is missing: .ci/run installs Debian's nginx-light")
        pytest.skip("nginx not installed (apt-get install nginx-light)", allow_module_level=True)


@dataclass
class Hop:
    """What nginx logged for one request."""

    uri: str
    status: int
    cache: str  # HIT, MISS, … or "-" when the cache was not used
    upstreams: list[str]  # replicas tried, in order; empty when nginx answered alone
    accept: str  # the client's Accept class
    key: str  # what the cache key holds besides the URL: "<Accept class or ->|<hint class>"

    @property
    def replica(self) -> str | None:
        return self.upstreams[-1] if self.upstreams else None


class Edge:
    """nginx running deploy/nginx/imgproxy.conf in front of the given replica ports. `jobs` picks
    the routing of /upload and /jobs/*: "local" pins them to one replica, "redis" spreads them.
    `default_format` ("fixed" or "auto") picks format.conf, for the replicas' [render]
    default_format. `edge_conf` replaces deploy/nginx/imgproxy.conf (bench/cdn.py's "before").
    With `other_clients` (replicas' jobs GET through the edge too), log lines that are not the
    test's own requests are kept in `others` instead of failing the test."""

    def __init__(
        self,
        workdir: Path,
        replica_ports: list[int],
        jobs: str = "local",
        port: int | None = None,
        other_clients: bool = False,
        default_format: str = "fixed",
        edge_conf: Path = EDGE_CONF,
    ):
        self.dir = workdir
        self.port = port or free_port()
        self.access_log = workdir / "access.log"
        self.logged = 0
        self.other_clients = other_clients
        self.others: list[Hop] = []
        workdir.mkdir(parents=True)
        (workdir / "listen.conf").write_text(f"listen 127.0.0.1:{self.port};\n")
        (workdir / "upstream.conf").write_text(
            "".join(f"server 127.0.0.1:{p} max_fails=1 fail_timeout=10s;\n" for p in replica_ports)
        )
        shutil.copyfile(DEPLOY / "nginx" / f"jobs-{jobs}.conf", workdir / "jobs.conf")
        shutil.copyfile(DEPLOY / "nginx" / f"format-{default_format}.conf", workdir / "format.conf")
        user = ""
        if os.geteuid() == 0:  # workers would drop to nobody and lose access to the temp dir
            user = f"user {pwd.getpwuid(os.geteuid()).pw_name} {grp.getgrgid(os.getegid()).gr_name};"
        conf = workdir / "nginx.conf"
        conf.write_text(WRAPPER.format(dir=workdir, user=user, edge_conf=edge_conf))
        command = [NGINX, "-p", str(workdir), "-c", str(conf)]
        check = subprocess.run(command + ["-t"], capture_output=True, text=True, timeout=30)
        assert check.returncode == 0, check.stderr
        output = workdir / "nginx.out"
        with output.open("wb") as out:
            self.process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        track(self.process, f"nginx in {workdir}")
        try:
            self.wait_until_listening(output)
        except BaseException:
            stop_process(self.process, 30)
            raise
        self.client = httpx.Client(base_url=f"http://127.0.0.1:{self.port}", timeout=120)

    def wait_until_listening(self, output: Path) -> None:
        deadline = time.monotonic() + STARTUP_SECONDS
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"nginx exited with {self.process.returncode}:\n{output.read_text()}")
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            time.sleep(0.05)
        raise RuntimeError(f"nginx did not listen on {self.port} within {STARTUP_SECONDS}s")

    def request(self, method: str, path: str, accept: str = ACCEPT_OTHER, **headers: str) -> tuple[httpx.Response, Hop]:
        """One request through the edge, and nginx's log line for it."""
        response = self.client.request(method, path, headers={"Accept": accept, **headers})
        return response, self.hop_of(response)

    def get(self, path: str, accept: str = ACCEPT_OTHER, **headers: str) -> tuple[httpx.Response, Hop]:
        return self.request("GET", path, accept, **headers)

    def hop_of(self, response: httpx.Response) -> Hop:
        """nginx's log line for a response just received through `self.client`. nginx (one worker)
        logs requests in the order it finishes them, so other clients' lines can only come first."""
        mine = (response.request.url.raw_path.decode(), response.status_code)
        hop = self.next_hop()
        while self.other_clients and (hop.uri, hop.status) != mine:
            self.others.append(hop)
            hop = self.next_hop()
        assert (hop.uri, hop.status) == mine, "log out of step with requests"
        return hop

    def next_hop(self) -> Hop:
        # nginx writes the line once the response is sent, so it may trail the response a little.
        deadline = time.monotonic() + 60
        while True:
            lines = self.access_log.read_text().splitlines() if self.access_log.exists() else []
            if len(lines) > self.logged:
                break
            assert time.monotonic() < deadline, "nginx logged no line for the request"
            time.sleep(0.01)
        line = lines[self.logged]
        self.logged += 1
        match = LOG_LINE.search(line)
        assert match, f"unexpected access log line: {line}"
        upstream = match["upstream"]
        return Hop(
            uri=match["uri"],
            status=int(match["status"]),
            cache=match["cache"],
            upstreams=[] if upstream == "-" else [u.strip() for u in upstream.split(",")],
            accept=match["accept"],
            key=match["key"],
        )

    def stop(self) -> None:
        self.client.close()
        stop_process(self.process, 30)  # SIGTERM, then SIGKILL to master and workers if they linger
