"""Per-photo benchmark: imgproxy vs thumbor vs ipx, plus nginx serving our bytes for hits.

    python bench/peers.py [--photos bus,jolla] [--servers imgproxy,thumbor,ipx,nginx]
                          [--seconds S] [--warmup S] [--workers N] [--json PATH] [SOURCE ...]

SOURCEs (files or directories; default: ../shared/corpus/photos/large_* and every photo of
../shared/corpus/bench) are read in place; `--photos` keeps those whose file name contains one of
its words (env BENCH_PHOTOS), `--servers` picks the servers (env BENCH_SERVERS). bench/README.md
describes the method and how to read the output.

Every render server starts once, pinned to core 0 (wrk and this script run on core 1), and stays
up for the whole run; the cells are interleaved: for each photo, workload and format, each server
in turn (the order rotates from cell to cell), BENCH_SECONDS (default 4) each, concurrency 2,
unique widths 301..min(1999, photo width), q80:
- repeated: the photo itself at a new width each request (decodes may be reused);
- distinct: a fresh copy of the photo each request, one no request has seen (the copies are made
  before the photo's distinct cells, shared by all servers, and deleted after them).
Then per photo and format a fixed sample of widths fetched from every server gives the mean
output bytes and the mean SSIM against the upright full decode (bench/run.py, bench/quality.py).
Per server: peak RSS of its process tree over 8 concurrent cold requests for distinct copies of
every photo all servers can do (JPEG, before the cells), its RSS when idle after the cells, and
hits at c=32 (ours, thumbor, and nginx serving our hit bytes; ipx keeps no results: no hits).

Prints one table per workload and format (a row per photo and a MEDIAN row), the per-server table
and the goal check of issue 16, and writes every figure to $BENCH_DIR/peers-<UTC time>.json.

Peers as configured here (installed into $BENCH_DIR/peers, outside the repository, reused while
the pins match):
- thumbor (PyPI, Pillow engine): file loader, no original storage (we keep no local originals
  either), result storage on disk like our result cache, EXIF orientation applied (our outputs
  are upright), default single engine thread, log level warning. Without its optional
  pillow-heif it cannot read HEIC.
- ipx (npm, sharp/libvips): plain node:http listener, filesystem storage, no result cache,
  sharp's autoOrient on (stock ipx ignores EXIF orientation: a rotated photo came out sideways,
  with fewer pixels to make than ours). Stock ipx cannot read this HEIC either.
- nginx: one worker serving the exact bytes of our hit set from disk, the ceiling for hits.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import os
import random
import shutil
import statistics
import subprocess
import sys
import time
import traceback
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import httpx
from formats import photos as corpus_photos
from PIL import Image
from run import (
    BENCH_DIR,
    CLIENT_CPUS,
    REFERENCES,
    REPO,
    SERVER_CPUS,
    RunningServer,
    Server,
    ensure_debian_packages,
    format_table,
    imgproxy_server,
    measure,
    output_ssim,
    pin_self_to_client_core,
    process_tree_rss,
    scratch_dir,
)

PEERS_DIR = BENCH_DIR / "peers"
# thumbor 7.8.0 installs and runs on Python 3.11 with Pillow 12 (it allows Pillow < 13)
THUMBOR_REQUIREMENT = "thumbor==7.8.0"
IPX_PACKAGE = "ipx@3.1.1"
IPX_SERVER_JS = Path(__file__).resolve().parent / "ipx_server.mjs"

DEFAULT_CORPUS = REPO.parent / "shared" / "corpus"
# "simd" is this service again, run by .venv-simd's interpreter (pillow-simd, `make bench-peers-simd`):
# both builds in one run, each compared with the same peers
OURS = ("imgproxy", "simd")
RENDERERS = (*OURS, "thumbor", "ipx")  # in this order in every table
SERVERS = (*RENDERERS, "nginx")
DEFAULT_SERVERS = ("imgproxy", "thumbor", "ipx", "nginx")
SIMD_PYTHON = REPO / ".venv-simd" / "bin" / "python"
HIT_SERVERS = ("imgproxy", "thumbor", "nginx")
FORMATS = ("jpeg", "webp")
WORKLOADS = ("repeated", "distinct")
MIN_WIDTH, MAX_WIDTH = 301, 1999
CONNECTIONS = 2
WARMUP_WIDTHS = range(250, 300)  # below the cold widths; 250 is the decode check
HIT_WIDTHS = (240, 2048)  # 2048 clamped to the photo's width
HIT_PHOTOS = 3
HIT_CONNECTIONS = 32
SAMPLE_WIDTHS = int(os.environ.get("BENCH_SAMPLE", "4"))  # per photo and format
RSS_CONNECTIONS = 8
RSS_COPIES = int(os.environ.get("BENCH_RSS_COPIES", "3"))  # per photo
# distinct copies per format: 1.5x what the fastest server did on the repeated cell, plus a margin
COPY_HEADROOM, COPY_MARGIN = 1.5, 10
ASPECT_TOLERANCE = 0.03  # rounding of small heights; a turned output is off by far more
NA = "n/a"
STARTED = time.monotonic()


def progress(text: str) -> None:
    print(f"[{(time.monotonic() - STARTED) / 60:4.1f} min] {text}", file=sys.stderr, flush=True)


def install(directory: Path, pin: str, steps: list[list[str]]) -> Path:
    """Runs `steps` in a fresh `directory` unless it already holds an install of `pin`."""
    marker = directory / ".installed"
    if marker.exists() and marker.read_text() == pin:
        return directory
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    progress(f"installing {pin} into {directory}")
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
            "RESPECT_ORIENTATION = True\n"
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


@dataclass(frozen=True)
class Photo:
    path: Path
    width: int  # upright
    height: int

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def widths(self) -> range:
        """The cold widths: none asks a server to enlarge (they disagree on whether to)."""
        return range(MIN_WIDTH, min(MAX_WIDTH, self.width) + 1)

    def sample(self) -> list[int]:
        widths = self.widths
        step = (len(widths) - 1) / max(SAMPLE_WIDTHS - 1, 1)
        return [widths[round(i * step)] for i in range(SAMPLE_WIDTHS)]


def open_photo(path: Path) -> Photo:
    with Image.open(path) as image:
        width, height = image.size
        if image.getexif().get(0x0112, 1) in (5, 6, 7, 8):  # EXIF orientation: turned a quarter
            width, height = height, width
    return Photo(path, width, height)


def distinct_copy(photo: Photo, fmt: str, copy: int) -> str:
    return f"distinct/{fmt}/{copy:04d}-{photo.name}"


def rss_copy(photo: Photo, copy: int) -> str:
    return f"rss/{copy}-{photo.name}"


def copy_count(rates: Iterable[float], seconds: float) -> int:
    """Copies one distinct cell needs so no server runs out: its rate was at most the repeated
    cell's (no decode to reuse), taken with headroom."""
    return math.ceil(max(rates, default=0.0) * seconds * COPY_HEADROOM) + COPY_MARGIN


def cell_paths(server: Server, photo: Photo, workload: str, fmt: str, copies: int) -> list[str]:
    """The same requests in the same order for every server."""
    rng = random.Random(f"{photo.name} {workload} {fmt}")
    widths = list(photo.widths)
    rng.shuffle(widths)
    if workload == "repeated":
        return [server.url(photo.name, width, fmt) for width in widths]
    return [server.url(distinct_copy(photo, fmt, i), widths[i % len(widths)], fmt) for i in range(copies)]


# ---- figures → tables (pure) ----


def median(values: Iterable[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def quotient(ours: float | None, theirs: float | None) -> float | None:
    return ours / theirs if ours is not None and theirs else None


def cell(value: float | None, spec: str, flag: str = "") -> str:
    return NA if value is None else f"{value:{spec}}{flag}"


def photo_table(
    figures: dict[str, dict[str, dict]], servers: list[str], photos: list[str]
) -> tuple[list[str], list[list[str]]]:
    """One workload and format: `figures[photo][server]` holds rps, p99_ms, mean_bytes, ssim (any
    may be None: that server could not do that photo) and the flags exhausted and failed. The
    MEDIAN row is each column's median over the photos that have a figure (for a quotient: the
    median of the per-photo quotients)."""
    ours = [s for s in servers if s in OURS]
    peers = [s for s in servers if s not in OURS] if ours else []

    def value(photo: str, server: str, key: str) -> float | None:
        return figures.get(photo, {}).get(server, {}).get(key)

    columns: list[tuple[str, str, dict[str, float | None], dict[str, str]]] = []

    def column(header: str, spec: str, per_photo: dict[str, float | None], flags: dict[str, str] | None = None) -> None:
        columns.append((header, spec, per_photo, flags or {}))

    for server in servers:
        flags = {}
        for photo in photos:
            got = figures.get(photo, {}).get(server, {})
            flags[photo] = ("*" if got.get("exhausted") else "") + ("!" if got.get("failed") else "")
        column(f"{server} r/s", ".1f", {p: value(p, server, "rps") for p in photos}, flags)
    for us in ours:
        for peer in peers:
            column(
                f"{prefix(us)}÷{peer}", ".2f", {p: quotient(value(p, us, "rps"), value(p, peer, "rps")) for p in photos}
            )
    for server in servers:
        column(f"{server} p99", ".0f", {p: value(p, server, "p99_ms") for p in photos})
    for us in ours:
        for peer in peers:
            bytes_quotients = {p: quotient(value(p, us, "mean_bytes"), value(p, peer, "mean_bytes")) for p in photos}
            column(f"{prefix(us)}bytes ÷{peer}", ".2f", bytes_quotients)
    for server in servers:
        column(f"{server} SSIM", ".4f", {p: value(p, server, "ssim") for p in photos})
    for us in ours:
        column(f"{prefix(us)}kept", ".0%", {p: value(p, us, "kept_share") for p in photos})

    headers = ["photo", *(c[0] for c in columns)]
    lines = [
        [photo, *(cell(per[photo], spec, flags.get(photo, "")) for _, spec, per, flags in columns)] for photo in photos
    ]
    lines.append(["MEDIAN", *(cell(median(per.values()), spec) for _, spec, per, _ in columns)])
    return headers, lines


def prefix(ours: str) -> str:
    """How a column or goal names one of our builds: nothing for the stock one."""
    return "" if ours == "imgproxy" else f"{ours} "


def goal_lines(tables: dict[tuple[str, str], dict[str, dict[str, dict]]], per_server: dict[str, dict]) -> list[str]:
    """Issue 16's goals against this run's figures (req/s, p99, RSS and hits; bytes and SSIM are
    in the tables)."""

    lines = []
    for us in OURS:
        if us in per_server:
            lines += [prefix(us) + line for line in build_goal_lines(us, tables, per_server)]
    return lines


def build_goal_lines(
    us: str, tables: dict[tuple[str, str], dict[str, dict[str, dict]]], per_server: dict[str, dict]
) -> list[str]:
    def quotients(workload: str, fmt: str, peer: str, key: str = "rps") -> dict[str, float]:
        found = {}
        for photo, by_server in tables[(workload, fmt)].items():
            q = quotient(by_server.get(us, {}).get(key), by_server.get(peer, {}).get(key))
            if q is not None:
                found[photo] = q
        return found

    lines = []
    for workload, fmt in tables:
        goals = {"distinct": {"thumbor": 1.25, "ipx": 1.0}, "repeated": {"thumbor": 1.5, "ipx": 1.2}}[workload]
        for peer, goal in goals.items():
            q = quotients(workload, fmt, peer)
            if not q:
                continue
            m = statistics.median(q.values())
            text = (
                f"{workload} {fmt}: median req/s ÷{peer} {m:.2f} (goal ≥ {goal:g}) {'met' if m >= goal else 'MISSED'}"
            )
            if workload == "distinct" and peer == "thumbor":
                behind = sorted(p for p, v in q.items() if v < 1)
                text += f"; behind thumbor on {', '.join(behind) if behind else 'no photo'}"
            lines.append(text)
        p99 = quotients(workload, fmt, "thumbor", "p99_ms")
        if p99:
            m = statistics.median(p99.values())
            lines.append(
                f"{workload} {fmt}: median p99 ÷thumbor {m:.2f} (goal ≤ 0.7) {'met' if m <= 0.7 else 'MISSED'}"
            )
    ours, thumbor = per_server.get(us, {}), per_server.get("thumbor", {})
    rss_q = quotient(ours.get("peak_rss_mb"), thumbor.get("peak_rss_mb"))
    if rss_q is not None:
        lines.append(
            f"peak RSS c={RSS_CONNECTIONS} ÷thumbor {rss_q:.2f} (goal ≤ 1.10) {'met' if rss_q <= 1.1 else 'MISSED'}"
        )
    for peer, goal in (("thumbor", 5.0), ("nginx", 0.3)):
        hit_q = quotient(ours.get("hit_rps"), per_server.get(peer, {}).get("hit_rps"))
        if hit_q is not None:
            lines.append(
                f"hits c={HIT_CONNECTIONS} ÷{peer} {hit_q:.2f} (goal ≥ {goal:g}) {'met' if hit_q >= goal else 'MISSED'}"
            )
    return lines


# ---- running ----


def warm_up(running: RunningServer, photos: list[Photo], seconds: float) -> dict[str, str]:
    """Renders each photo once per format (a server that cannot gets "n/a" for that photo: the
    reason is returned), then `seconds` of wrk over small widths of the photos it can do."""
    server = running.server
    failed: dict[str, str] = {}
    for photo in photos:
        for fmt in FORMATS:
            response = running.client.get(server.url(photo.name, WARMUP_WIDTHS[0], fmt))
            if response.status_code != 200:
                why = " ".join(error_message(response).split())[:80]
                failed.setdefault(photo.name, f"{fmt}: HTTP {response.status_code} {why}".strip())
                continue
            try:
                with Image.open(io.BytesIO(response.content)) as output:
                    output.load()
            except Exception as exc:  # whatever the decoder raises, the answer is no image
                failed.setdefault(photo.name, f"{fmt}: undecodable answer ({exc})")
    able = [p for p in photos if p.name not in failed]
    if able and seconds > 0:
        paths = [server.url(p.name, w, fmt) for w in WARMUP_WIDTHS[1:] for p in able for fmt in FORMATS]
        measure(running, paths, CONNECTIONS, seconds)
    return failed


def source_decodes(running: RunningServer) -> dict[str, float]:
    """Our renders so far by where their pixels came from ("decoded", "kept": a decode kept by an
    earlier render of the same source), from /metrics."""
    found = {}
    for line in running.client.get("/metrics").text.splitlines():
        if line.startswith("imgproxy_source_decodes_total{"):
            labels, _, value = line.rpartition(" ")
            found[labels.split('origin="')[1].split('"')[0]] = float(value)
    return found


def error_message(response: httpx.Response) -> str:
    """ipx answers {"error": {"message": ...}}; the others plain text."""
    try:
        return str(response.json()["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return response.text


def peak_rss(running: RunningServer, requests: list[tuple[Photo, int, int]]) -> dict:
    """Peak RSS of the server's tree over RSS_CONNECTIONS concurrent cold JPEG requests, each
    (photo, copy, width) for a distinct copy (the same list for every server)."""
    paths = [running.server.url(rss_copy(photo, i), width, "jpeg") for photo, i, width in requests]
    failures = 0

    def get(path: str) -> None:
        nonlocal failures
        if client.get(path).status_code != 200:
            failures += 1

    running.rss.sampling.set()
    running.rss.reset()
    started = time.monotonic()
    limits = httpx.Limits(max_connections=RSS_CONNECTIONS)
    with (
        httpx.Client(base_url=running.base, timeout=120, limits=limits) as client,
        ThreadPoolExecutor(RSS_CONNECTIONS) as pool,
    ):
        list(pool.map(get, paths))
    elapsed = time.monotonic() - started
    time.sleep(0.2)  # one more sample after the last answer
    running.rss.sampling.clear()
    return {
        "peak_rss_mb": running.rss.peak / 2**20,
        "rss_requests": len(paths),
        "rss_rps": len(paths) / elapsed,
        "rss_failed": failures,
    }


def fetch_quality(running: RunningServer, photo: Photo, fmt: str) -> dict:
    """Mean bytes and SSIM of the photo's sample; both None when the output is not upright (the
    pixels differ: nothing to compare) or a request of the sample failed."""
    bodies = []
    for width in photo.sample():
        response = running.client.get(running.server.url(photo.name, width, fmt))
        if response.status_code != 200:
            return {"mean_bytes": None, "ssim": None, "sample_failed": f"{width}: HTTP {response.status_code}"}
        bodies.append(response.content)
    scores = []
    for body in bodies:
        with Image.open(io.BytesIO(body)) as output:
            turned = abs(output.width * photo.height / (output.height * photo.width) - 1) > ASPECT_TOLERANCE
        scores.append(None if turned else output_ssim(photo.path, body))
    return {
        "mean_bytes": None if None in scores else sum(map(len, bodies)) / len(bodies),
        "ssim": None if None in scores else sum(s for s in scores if s is not None) / len(scores),
        "not_upright": None in scores,
    }


@dataclass
class Run:
    photos: list[Photo]
    servers: dict[str, Server]
    seconds: float
    warmup: float
    root: Path
    scratch: Path
    unavailable: dict[str, dict[str, str]]  # server -> photo -> why
    cells: list[dict]
    per_server: dict[str, dict]

    def start(self, stack: contextlib.ExitStack) -> dict[str, RunningServer]:
        running = {}
        for name, server in self.servers.items():
            if name == "nginx":
                continue
            progress(f"starting {name}")
            running[name] = stack.enter_context(RunningServer(server, self.scratch))
            running[name].rss.sampling.clear()  # sampled only while RSS is measured
        return running

    def prepare(self, running: dict[str, RunningServer]) -> None:
        for photo in self.photos:
            shutil.copyfile(photo.path, self.root / photo.name)
            for i in range(RSS_COPIES):
                copy = self.root / rss_copy(photo, i)
                copy.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(photo.path, copy)
        for name, server in running.items():
            progress(f"{name}: warm-up")
            self.unavailable[name] = warm_up(server, self.photos, self.warmup)
        # like for like: the photos every server can do
        rng = random.Random("rss")
        requests = [(p, i, rng.choice(p.widths)) for i in range(RSS_COPIES) for p in self.photos]
        common = [r for r in requests if not any(r[0].name in self.unavailable[name] for name in running)]
        for name, server in running.items():
            progress(f"{name}: peak RSS at c={RSS_CONNECTIONS}")
            self.per_server[name] = peak_rss(server, common)

    def photo_cells(self, running: dict[str, RunningServer], photo: Photo, turn: int) -> int:
        names = [n for n in running if photo.name not in self.unavailable[n]]
        if not names:
            return turn
        for workload in WORKLOADS:
            copies = {fmt: 0 for fmt in FORMATS}
            if workload == "distinct":
                for fmt in FORMATS:
                    rates = (c["rps"] for c in self.cells if c["photo"] == photo.name and c["format"] == fmt)
                    copies[fmt] = copy_count(rates, self.seconds)
                    for i in range(copies[fmt]):
                        copy = self.root / distinct_copy(photo, fmt, i)
                        copy.parent.mkdir(parents=True, exist_ok=True)
                        shutil.copyfile(photo.path, copy)
            for fmt in FORMATS:
                order = names[turn % len(names) :] + names[: turn % len(names)]  # nobody always first
                turn += 1
                progress(f"{photo.name} {workload} {fmt}: {', '.join(order)}")
                for name in order:
                    paths = cell_paths(running[name].server, photo, workload, fmt, copies[fmt])
                    before = source_decodes(running[name]) if name in OURS else {}
                    row = measure(running[name], paths, CONNECTIONS, self.seconds)
                    if before:
                        after = source_decodes(running[name])
                        kept, decoded = (after.get(o, 0) - before.get(o, 0) for o in ("kept", "decoded"))
                        row["kept_share"] = kept / (kept + decoded) if kept + decoded else None
                    if not row["requests"]:  # nothing finished in time: no latency to speak of
                        row["p50_ms"] = row["p99_ms"] = None
                    self.cells.append({"photo": photo.name, "workload": workload, "format": fmt, "server": name, **row})
            if workload == "distinct":
                shutil.rmtree(self.root / "distinct")
        for name in names:
            for fmt in FORMATS:
                quality = fetch_quality(running[name], photo, fmt)
                for c in self.cells:
                    if (c["photo"], c["format"], c["server"]) == (photo.name, fmt, name):
                        c.update(quality)
        REFERENCES.forget(photo.path)
        return turn

    def hits(self, running: dict[str, RunningServer]) -> None:
        """Hits on the first photos every server can do; nginx serves our bytes of them."""
        able = [p for p in self.photos if not any(p.name in self.unavailable[n] for n in running)]
        hit_set = [(p, min(w, p.width), fmt) for p in able[:HIT_PHOTOS] for w in HIT_WIDTHS for fmt in FORMATS]
        ours: list[bytes] = []
        for name in HIT_SERVERS:
            if name not in self.servers or name == "nginx" and not ours:
                continue
            if name == "nginx":
                static = self.scratch / "static"
                for (photo, width, fmt), body in zip(hit_set, ours):
                    path = static / nginx_url(photo.name, width, fmt).lstrip("/")
                    path.parent.mkdir(parents=True, exist_ok=True)
                    path.write_bytes(body)
                with RunningServer(self.servers[name], self.scratch) as nginx:
                    self.hit_row(nginx, [nginx_url(p.name, w, fmt) for p, w, fmt in hit_set])
                continue
            server = running[name]
            paths = [server.server.url(p.name, w, fmt) for p, w, fmt in hit_set]
            bodies = server.fetch(paths)  # renders them, so wrk sees hits
            if name == "imgproxy":
                ours = bodies
            self.hit_row(server, paths)

    def hit_row(self, running: RunningServer, paths: list[str]) -> None:
        progress(f"{running.server.name}: hits c={HIT_CONNECTIONS}")
        row = measure(running, paths, HIT_CONNECTIONS, self.seconds)
        self.per_server.setdefault(running.server.name, {}).update(
            {"hit_rps": row["rps"], "hit_p99_ms": row["p99_ms"], "hit_failed": row["failed"]}
        )

    def execute(self) -> None:
        with contextlib.ExitStack() as stack:
            running = self.start(stack)
            self.prepare(running)
            turn = 0
            for photo in self.photos:
                turn = self.photo_cells(running, photo, turn)
            for name, server in running.items():
                self.per_server[name]["idle_rss_mb"] = process_tree_rss(server.process.pid) / 2**20
            self.hits(running)

    def figures(self) -> dict[tuple[str, str], dict[str, dict[str, dict]]]:
        tables: dict[tuple[str, str], dict[str, dict[str, dict]]] = {(w, f): {} for w in WORKLOADS for f in FORMATS}
        for c in self.cells:
            tables[(c["workload"], c["format"])].setdefault(c["photo"], {})[c["server"]] = c
        return tables


def report(run: Run, started: datetime, wall: float, json_path: Path) -> None:
    renderers = [s for s in RENDERERS if s in run.servers]
    names = [p.name for p in run.photos]
    tables = run.figures()
    print(
        f"\nservers on core {SERVER_CPUS}, wrk on core {CLIENT_CPUS}; {run.seconds:g} s per cell, c={CONNECTIONS}, "
        f"q80, unique widths {MIN_WIDTH}..min({MAX_WIDTH}, photo width); {THUMBOR_REQUIREMENT}, {IPX_PACKAGE}"
    )
    print(
        "r/s: successful requests/s (* ran out of distinct paths: some repeats; ! some failed); ÷peer: ours ÷ "
        "theirs; p99 in ms; bytes and SSIM: mean over "
        f"{SAMPLE_WIDTHS} widths per photo, SSIM against the upright full decode resized by LANCZOS; "
        "kept: share of our renders in the cell that reused a kept decode (our /metrics)"
    )
    for (workload, fmt), figures in tables.items():
        print(f"\n{workload} sources, {fmt.upper()}")
        print(format_table(*photo_table(figures, renderers, names)))
    notes = [
        f"{server}: {photo} {NA} ({why}); left out of {server}'s medians"
        for server, photos in run.unavailable.items()
        for photo, why in photos.items()
    ]
    notes += [
        f"{c['server']}: {c['photo']} bytes and SSIM {NA}: its output is not upright (EXIF orientation not applied)"
        for c in run.cells
        if c.get("not_upright") and c["workload"] == "repeated" and c["format"] == FORMATS[0]
    ]
    if notes:
        print("\nnotes:\n" + "\n".join(f"- {n}" for n in notes))
    rows = []
    for name in SERVERS:
        got = run.per_server.get(name)
        if got:
            rows.append(
                [
                    name,
                    cell(got.get("peak_rss_mb"), ".0f"),
                    cell(got.get("rss_rps"), ".1f"),
                    cell(got.get("idle_rss_mb"), ".0f"),
                    cell(got.get("hit_rps"), ",.0f"),
                    cell(quotient(run.per_server.get("imgproxy", {}).get("hit_rps"), got.get("hit_rps")), ".2f"),
                ]
            )
    print(
        f"\nper server: peak RSS over {RSS_COPIES} distinct copies of each photo every server can do, "
        f"c={RSS_CONNECTIONS} (JPEG); "
        f"RSS idle after the cells, hits at c={HIT_CONNECTIONS} on {HIT_PHOTOS} photos x {HIT_WIDTHS} x {FORMATS}"
    )
    headers = ["server", "peak RSS MB", "r/s (RSS run)", "idle RSS MB", "hits r/s", "ours ÷ hits"]
    print(format_table(headers, rows))
    goals = goal_lines(tables, run.per_server)
    if goals:
        print("\nissue 16 goals:\n" + "\n".join(f"- {g}" for g in goals))
    json_path.write_text(
        json.dumps(
            {
                "started": started.isoformat(timespec="seconds"),
                "wall_seconds": round(wall),
                "commit": git_commit(),
                "seconds_per_cell": run.seconds,
                "warmup_seconds": run.warmup,
                "server_cpus": SERVER_CPUS,
                "client_cpus": CLIENT_CPUS,
                "peers": [THUMBOR_REQUIREMENT, IPX_PACKAGE],
                "photos": [
                    {"name": p.name, "path": str(p.path), "width": p.width, "height": p.height} for p in run.photos
                ],
                "sample_widths": {p.name: p.sample() for p in run.photos},
                "unavailable": run.unavailable,
                "cells": run.cells,
                "per_server": run.per_server,
                "goals": goals,
            },
            indent=1,
        )
    )
    print(f"\nwall time {wall / 60:.1f} min; every figure in {json_path}")


def git_commit() -> str:
    result = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return result.stdout.strip()


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sources", nargs="*", type=Path, help="photos or directories (default: the corpus set)")
    parser.add_argument(
        "--photos", default=os.environ.get("BENCH_PHOTOS", ""), help="comma-separated parts of file names to keep"
    )
    parser.add_argument("--servers", default=os.environ.get("BENCH_SERVERS", ",".join(DEFAULT_SERVERS)))
    parser.add_argument(
        "--seconds", type=float, default=float(os.environ.get("BENCH_SECONDS", "4")), help="per cell (default 4)"
    )
    parser.add_argument(
        "--warmup", type=float, default=float(os.environ.get("BENCH_WARMUP", "2")), help="wrk warm-up per server"
    )
    parser.add_argument("--workers", type=int, default=None, help="our [render] workers (default: the config's)")
    parser.add_argument("--json", type=Path, default=None, help="default: $BENCH_DIR/peers-<UTC time>.json")
    args = parser.parse_args()
    paths = []
    for source in args.sources or [DEFAULT_CORPUS]:
        if source.resolve() == DEFAULT_CORPUS.resolve():
            paths += corpus_photos(source)
        elif source.is_dir():
            paths += sorted(p for p in source.iterdir() if p.is_file() and p.suffix.lower() != ".tsv")
        else:
            paths.append(source)
    words = [w for w in args.photos.split(",") if w]
    args.paths = [p.resolve() for p in paths if not words or any(w in p.name for w in words)]
    args.servers = [s for s in args.servers.split(",") if s]
    unknown = set(args.servers) - set(SERVERS)
    if unknown:
        parser.error(f"unknown servers {', '.join(sorted(unknown))}; known: {', '.join(SERVERS)}")
    if not args.paths:
        parser.error("no photo left to measure")
    if len({p.name for p in args.paths}) != len(args.paths):
        parser.error("two photos share a file name")
    return args


def main() -> None:
    args = parse_args()
    wanted = set(args.servers)
    needs = {"wrk": ("wrk", "wrk"), "nginx": ("nginx", "nginx-light"), "ipx": ("npm", "npm")}
    ensure_debian_packages(*(package for name, package in needs.items() if name in wanted | {"wrk"}))
    photos = [open_photo(p) for p in args.paths]
    pin_self_to_client_core()
    scratch = scratch_dir("peers-")
    root = scratch / "root"
    root.mkdir()
    factories = {
        "imgproxy": lambda: imgproxy_server(root, args.workers),
        "simd": lambda: imgproxy_server(root, args.workers, name="simd", python=str(SIMD_PYTHON)),
        "thumbor": lambda: thumbor_server(root, install_thumbor()),
        "ipx": lambda: ipx_server(root, install_ipx()),
        "nginx": lambda: nginx_server(scratch / "static"),
    }
    servers = {name: factories[name]() for name in SERVERS if name in wanted}
    started, clock = datetime.now(UTC), time.monotonic()
    run = Run(photos, servers, args.seconds, args.warmup, root, scratch, {}, [], {})
    failed = False
    try:
        run.execute()
    except (Exception, KeyboardInterrupt):  # a late failure still reports the cells measured so far
        traceback.print_exc()
        failed = True
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    json_path = args.json or BENCH_DIR / f"peers-{started:%Y%m%dT%H%M%SZ}.json"
    report(run, started, time.monotonic() - clock, json_path)
    if failed:
        sys.exit("the run stopped early: the figures above are partial")


if __name__ == "__main__":
    main()
