"""Side-by-side benchmark: imgproxy vs thumbor vs ipx, plus nginx serving our bytes for hits.

    python bench/peers.py [--corpus DIR] [--workers N] [--seconds S]

Installs the peers into $BENCH_DIR/peers (default /tmp/imgproxy-bench/peers, outside the
repository; reused while the pins match), then runs bench/run.py's workloads against each server
in turn, each pinned to the same core, and prints one table with our ratio to each peer.

Peers as configured here:
- thumbor (PyPI, Pillow engine): file loader on the corpus, no original storage (we don't keep
  local originals either), result storage on disk like our result cache, default single engine
  thread, log level warning.
- ipx (npm, sharp/libvips): plain node:http listener, filesystem storage; ipx has no result
  cache, so its "hit" row is re-renders.
- nginx: one worker serving the exact bytes of our hit set from disk, the ceiling for hits.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from run import (
    BENCH_DIR,
    CLIENT_CPUS,
    HIT_SET,
    ROW_HEADERS,
    SERVER_CPUS,
    WORKLOADS,
    Server,
    bench_server,
    ensure_debian_packages,
    format_table,
    imgproxy_server,
    parse_args,
    pin_self_to_client_core,
    prepare_corpus,
    row_cells,
    scratch_dir,
)

PEERS_DIR = BENCH_DIR / "peers"
# thumbor 7.8.0 installs and runs on Python 3.11 with Pillow 12 (it allows Pillow < 13)
THUMBOR_REQUIREMENT = "thumbor==7.8.0"
IPX_PACKAGE = "ipx@3.1.1"
IPX_SERVER_JS = Path(__file__).resolve().parent / "ipx_server.mjs"


def install(directory: Path, pin: str, steps: list[list[str]]) -> Path:
    """Runs `steps` in a fresh `directory` unless it already holds an install of `pin`."""
    marker = directory / ".installed"
    if marker.exists() and marker.read_text() == pin:
        return directory
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    print(f"installing {pin} into {directory}", file=sys.stderr, flush=True)
    for step in steps:
        subprocess.run(step, cwd=directory, check=True, stdout=subprocess.DEVNULL)
    marker.write_text(pin)
    return directory


def install_thumbor() -> Path:
    venv = PEERS_DIR / "thumbor"
    return install(
        venv,
        THUMBOR_REQUIREMENT,
        [
            [sys.executable, "-m", "venv", str(venv)],
            [str(venv / "bin/pip"), "install", "-q", THUMBOR_REQUIREMENT],
        ],
    )


def install_ipx() -> Path:
    directory = PEERS_DIR / "ipx"
    install(
        directory,
        IPX_PACKAGE,
        [
            ["npm", "init", "-y"],
            ["npm", "install", "--no-audit", "--no-fund", IPX_PACKAGE],
        ],
    )
    shutil.copy(IPX_SERVER_JS, directory / IPX_SERVER_JS.name)  # ESM resolves imports from here
    return directory


def thumbor_server(corpus: Path, venv: Path) -> Server:
    def command(port: int, scratch: Path) -> list[str]:
        config = scratch / "thumbor.conf"
        config.write_text(
            "LOADER = 'thumbor.loaders.file_loader'\n"
            f"FILE_LOADER_ROOT_PATH = {str(corpus)!r}\n"
            "STORAGE = 'thumbor.storages.no_storage'\n"
            "RESULT_STORAGE = 'thumbor.result_storages.file_storage'\n"
            f"RESULT_STORAGE_FILE_STORAGE_ROOT_PATH = {str(scratch / 'thumbor-results')!r}\n"
            "RESULT_STORAGE_STORES_UNSAFE = True\n"
            "ALLOW_UNSAFE_URL = True\n"
            "QUALITY = 80\n"
            "MAX_AGE = 31536000\n"
        )
        return [
            str(venv / "bin/thumbor"),
            "--ip",
            "127.0.0.1",
            "--port",
            str(port),
            "--conf",
            str(config),
            "--log-level",
            "warning",
        ]

    return Server(
        name="thumbor",
        command=command,
        url=lambda image, width, fmt: f"/unsafe/{width}x0/filters:quality(80):format({fmt})/{image}",
        ready_path="/healthcheck",
    )


def ipx_server(corpus: Path, directory: Path) -> Server:
    return Server(
        name="ipx",
        command=lambda port, scratch: ["node", str(directory / IPX_SERVER_JS.name), str(corpus), str(port)],
        url=lambda image, width, fmt: f"/w_{width},q_80,f_{fmt}/{image}",
    )


def nginx_url(image: str, width: int, fmt: str) -> str:
    return f"/{width}/{image}.{fmt}"


def nginx_server(root: Path) -> Server:
    def command(port: int, scratch: Path) -> list[str]:
        # a root master drops its worker to `nobody`, who can't enter our 0700 scratch dirs
        user = "user root;\n" if os.geteuid() == 0 else ""
        config = scratch / "nginx.conf"
        config.write_text(
            f"{user}worker_processes 1;\ndaemon off;\npid {scratch / 'nginx.pid'};\n"
            f"error_log {scratch / 'nginx-error.log'} warn;\n"
            "events { worker_connections 1024; }\n"
            "http {\n"
            "  access_log off;\n  sendfile on;\n  tcp_nopush on;\n"
            "  keepalive_requests 1000000;\n"
            "  types { image/jpeg jpeg; image/webp webp; }\n"
            f"  client_body_temp_path {scratch / 'nginx-body'};\n"
            f"  server {{ listen 127.0.0.1:{port}; root {root}; }}\n"
            "}\n"
        )
        nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        return [nginx, "-p", str(scratch), "-e", str(scratch / "nginx-error.log"), "-c", str(config)]

    return Server(name="nginx", command=command, url=nginx_url)


def write_static_copies(root: Path, bodies: list[bytes]) -> None:
    for (image, width, fmt), body in zip(HIT_SET, bodies, strict=True):
        path = root / nginx_url(image, width, fmt).lstrip("/")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(body)


def ratio(ours: float, theirs: float) -> str:
    return f"{ours / theirs:.2f}" if theirs else "-"


def main() -> None:
    args = parse_args("imgproxy vs thumbor vs ipx (and nginx for hits), same workloads.")
    ensure_debian_packages(("wrk", "wrk"), ("nginx", "nginx-light"), ("npm", "npm"))
    thumbor_venv = install_thumbor()
    ipx_dir = install_ipx()
    pin_self_to_client_core()
    scratch = scratch_dir("peers-")
    hit_workloads = tuple(w for w in WORKLOADS if not w.cold)
    try:
        corpus = prepare_corpus(args.corpus, scratch)
        ours, hit_bodies = bench_server(imgproxy_server(corpus, args.workers), WORKLOADS, args.seconds, scratch, corpus)
        rows = list(ours)
        for server in (thumbor_server(corpus, thumbor_venv), ipx_server(corpus, ipx_dir)):
            rows += bench_server(server, WORKLOADS, args.seconds, scratch, corpus)[0]
        static_root = scratch / "static"
        write_static_copies(static_root, hit_bodies)
        rows += bench_server(nginx_server(static_root), hit_workloads, args.seconds, scratch)[0]
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    ours_by_workload = {row["workload"]: row for row in ours}
    lines = []
    for workload in WORKLOADS:
        us = ours_by_workload[workload.name]
        for row in (r for r in rows if r["workload"] == workload.name):
            lines.append(
                [
                    workload.name,
                    row["server"],
                    *row_cells(row),
                    ratio(us["rps"], row["rps"]),
                    ratio(us["p99_ms"], row["p99_ms"]),
                    ratio(us["peak_rss_mb"], row["peak_rss_mb"]),
                    ratio(us["mean_bytes"], row["mean_bytes"]),
                ]
            )
    print(
        f"servers on core {SERVER_CPUS}, wrk on core {CLIENT_CPUS}, "
        f"{args.seconds:g} s per workload; "
        f"the last four columns are ours ÷ theirs ({THUMBOR_REQUIREMENT}, {IPX_PACKAGE}; "
        f"nginx serves our hit bytes)"
    )
    print(format_table(["workload", "server", *ROW_HEADERS, "req/s ×", "p99 ×", "RSS ×", "bytes ×"], lines))


if __name__ == "__main__":
    main()
