"""Benchmark of the image proxy: cold renders and cache hits, server on one core, wrk on another.

    python bench/run.py [--corpus DIR] [--workers N] [--seconds S] [--storage s3]

The server runs under `taskset -c 0`, wrk under `taskset -c 1` with rotate.lua walking a list of
URL paths. Workloads: cold renders of the large corpus JPEGs to unique widths 300-1999 (quality
80) as JPEG and WebP at concurrency 2 and 8, then cache hits at concurrency 32. Each row gives
successful requests/s, p50/p99 latency, the peak RSS of the server's process tree over that
workload (sampled every 100 ms) and the mean size of that format's output (a fixed sample of
URLs fetched once with httpx, the same for every server).

`--storage s3` compares the storage backends instead: the same photos read from local disk and
from a SeaweedFS bucket (tests/s3_server.py, pinned to wrk's core like a store on another host),
for cold renders of photos never seen (every request fetches its original from the store), misses
of known photos, and cache hits, which must not touch the store (goal: within 5 % of local).

A server is a `Server` (command + URL form), so bench/peers.py drives thumbor, ipx and nginx
through the same code. Env: BENCH_SECONDS (per workload, default 15), BENCH_THREADS (wrk
threads, default 1), BENCH_DIR (scratch dir, default /tmp/imgproxy-bench).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from PIL import Image
from quality import References, ssim

REPO = Path(__file__).resolve().parent.parent
ROTATE_LUA = Path(__file__).resolve().parent / "rotate.lua"
DEFAULT_CORPUS = REPO.parent / "shared" / "corpus" / "photos"
BENCH_DIR = Path(os.environ.get("BENCH_DIR", "/tmp/imgproxy-bench"))
SERVER_CPUS = os.environ.get("BENCH_SERVER_CPUS", "0")
CLIENT_CPUS = os.environ.get("BENCH_CLIENT_CPUS", "1")

IMAGES = ("large_12mp_gallery.jpg", "large_12mp_bus.jpg", "large_9mp_harbour.jpg")
COLD_WIDTHS = range(300, 2000)
FORMATS = ("jpeg", "webp")
# Hits rotate over a dozen rendered URLs: widths outside COLD_WIDTHS so they never overlap.
HIT_SET = tuple((image, width, fmt) for image in IMAGES for width in (240, 2048) for fmt in FORMATS)
# Mean output bytes come from the same fixed spread of widths on every server.
SAMPLE_SIZE = 24
WARMUP_WIDTH = 200
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
# The server runs under this interpreter: BENCH_PYTHON, else the one running the bench (make PILLOW=simd)
PYTHON = os.environ.get("BENCH_PYTHON", sys.executable)


@dataclass(frozen=True)
class Server:
    """How to start one server and how it spells a resize of IMAGE to WIDTH as FMT at q=80."""

    name: str
    command: Callable[[int, Path], list[str]]  # (port, scratch dir) -> argv
    url: Callable[[str, int, str], str]  # (image, width, fmt) -> path with query
    ready_path: str = "/"
    env: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Workload:
    name: str
    connections: int
    fmt: str | None = None  # None: the hit set, which mixes formats
    part: int = 0  # which disjoint slice of the format's cold URLs this workload uses
    new_sources: bool = False  # every request a source no server has seen (a copy of a photo)

    @property
    def cold(self) -> bool:
        return self.fmt is not None


WORKLOADS = (
    Workload("miss jpeg c=2", 2, "jpeg", 0),
    Workload("miss webp c=2", 2, "webp", 0),
    Workload("miss jpeg c=8", 8, "jpeg", 1),
    Workload("miss webp c=8", 8, "webp", 1),
    Workload("new source jpeg c=2", 2, "jpeg", new_sources=True),
    Workload("new source webp c=2", 2, "webp", new_sources=True),
    Workload("hit c=32", 32),
)
# Copies of each photo per format for the new-source workloads (one request each).
NEW_SOURCE_COPIES = int(os.environ.get("BENCH_NEW_SOURCE_COPIES", "50"))
COLD_PARTS = 2


def imgproxy_server(
    corpus: Path, render_workers: int | None = None, storage: str = "", name: str = "imgproxy", python: str = PYTHON
) -> Server:
    """Our server from the repo's .venv with a temp config: fresh cache, no access log.
    `storage`: extra TOML ([storage] sections) for another backend than the local root."""

    def command(port: int, scratch: Path) -> list[str]:
        render = f"[render]\nworkers = {render_workers}\n" if render_workers is not None else ""
        config = scratch / f"{name}.toml"
        config.write_text(
            f'[server]\nhost = "127.0.0.1"\nport = {port}\nworkers = 1\n'
            f'[sources.local]\nroot = "{corpus}"\ngenerate_demo = false\n'
            f'[sources.remote]\ncache_dir = "{scratch / name / "originals"}"\n'
            f'[cache]\ndir = "{scratch / name / "cache"}"\n'
            f"{render}"
            f"{storage}"
            f"[log]\naccess_log = false\n"
        )
        return [python, "-m", "imgproxy", "serve", "--config", str(config), "--port", str(port)]

    return Server(
        name=name,
        command=command,
        url=lambda image, width, fmt: f"/picture/{image}?scalex={width}&encoding={fmt}&quality=80",
        ready_path="/health",
    )


def cold_paths(server: Server, workload: Workload) -> list[str]:
    """One disjoint slice of every (image, width) pair, shuffled the same way for every server;
    for new sources, each copy of a photo once, at a width drawn the same way for every server."""
    fmt = workload.fmt or ""
    rng = random.Random(fmt)
    if workload.new_sources:
        pairs = [
            (new_source(image, fmt, i), rng.choice(COLD_WIDTHS)) for i in range(NEW_SOURCE_COPIES) for image in IMAGES
        ]
        rng.shuffle(pairs)
        return [server.url(image, width, fmt) for image, width in pairs]
    pairs = [(image, width) for width in COLD_WIDTHS for image in IMAGES]
    rng.shuffle(pairs)
    return [server.url(image, width, fmt) for image, width in pairs[workload.part :: COLD_PARTS]]


def new_source(image: str, fmt: str, copy: int) -> str:
    return f"new/{fmt}/{copy:03d}-{image}"


def prepare_corpus(corpus: Path, scratch: Path) -> Path:
    """The servers' image root: the photos, plus the copies the new-source workloads ask for."""
    root = scratch / "corpus"
    for image in IMAGES:
        (root / image).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(corpus / image, root / image)
        for fmt in FORMATS:
            for i in range(NEW_SOURCE_COPIES):
                copy = root / new_source(image, fmt, i)
                copy.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(corpus / image, copy)
    return root


def hit_paths(server: Server) -> list[str]:
    return [server.url(image, width, fmt) for image, width, fmt in HIT_SET]


def sample_pairs() -> list[tuple[str, int]]:
    step = (len(COLD_WIDTHS) - 1) / (SAMPLE_SIZE - 1)
    return [(IMAGES[i % len(IMAGES)], COLD_WIDTHS[round(i * step)]) for i in range(SAMPLE_SIZE)]


REFERENCES = References()  # full decodes, shared by every server's sample


def mean_ssim(corpus: Path, bodies: list[bytes]) -> float:
    """Mean SSIM of the sample's outputs against one LANCZOS pass over their full decode."""
    scores = [output_ssim(corpus / image, body) for (image, _), body in zip(sample_pairs(), bodies, strict=True)]
    return sum(scores) / len(scores)


def output_ssim(source: Path, body: bytes) -> float:
    """SSIM of one output against one LANCZOS pass over the full (upright) decode of its source."""
    with Image.open(io.BytesIO(body)) as encoded:
        output = encoded.convert("RGB")
    return ssim(output, REFERENCES.get(source, output.size))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def process_tree_rss(root: int) -> int:
    """Sum of RSS over `root` and all its descendants, in bytes (0 once it is gone)."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as f:
                # the command name may hold spaces and parentheses: split after its last ')'
                ppid = int(f.read().rpartition(")")[2].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(entry.name))
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        todo.extend(children.get(pid, ()))
        try:
            with open(f"/proc/{pid}/statm") as f:
                total += int(f.read().split()[1]) * PAGE_SIZE
        except (OSError, ValueError, IndexError):
            pass
    return total


class RssSampler(threading.Thread):
    """Samples the server tree's RSS every 100 ms; `peak` is the maximum since the last reset().
    Clearing `sampling` pauses it (a scan of /proc takes ~10 ms of the client's core)."""

    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.pid = pid
        self.peak = 0
        self.stopped = threading.Event()
        self.sampling = threading.Event()
        self.sampling.set()

    def run(self) -> None:
        while not self.stopped.wait(0.1):
            if self.sampling.is_set():
                self.peak = max(self.peak, process_tree_rss(self.pid))

    def reset(self) -> None:
        self.peak = process_tree_rss(self.pid)


class RunningServer:
    """A server started pinned to SERVER_CPUS in its own process group, stopped on exit."""

    def __init__(self, server: Server, scratch: Path):
        self.server = server
        self.port = free_port()
        self.scratch = scratch
        self.log_path = scratch / f"{server.name}.log"

    def __enter__(self) -> RunningServer:
        command = ["taskset", "-c", SERVER_CPUS, *self.server.command(self.port, self.scratch)]
        self.log = open(self.log_path, "wb")
        self.process = subprocess.Popen(
            command,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, **self.server.env},
        )
        self.base = f"http://127.0.0.1:{self.port}"
        self.client = httpx.Client(base_url=self.base, timeout=120)
        self.wait_ready()
        self.rss = RssSampler(self.process.pid)
        self.rss.start()
        return self

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"{self.server.name} exited with {self.process.returncode}; "
                    f"log:\n{self.log_path.read_text(errors='replace')[-3000:]}"
                )
            try:
                self.client.get(self.server.ready_path, timeout=2)
                return  # any HTTP answer means it is listening
            except httpx.TransportError:
                time.sleep(0.2)
        raise RuntimeError(f"{self.server.name} did not answer within {timeout:.0f} s")

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if exc_type is not None:  # the scratch dir goes away: show why while we can
            print(
                f"--- {self.server.name} log (tail) ---\n{self.log_path.read_text(errors='replace')[-3000:]}",
                file=sys.stderr,
            )
        if hasattr(self, "rss"):
            self.rss.stopped.set()
        self.client.close()
        # the server got its own session, so its pid is its process group: stop just that group
        for sig, grace in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
            try:
                os.killpg(self.process.pid, sig)
                self.process.wait(grace)
                break
            except ProcessLookupError:
                break
            except subprocess.TimeoutExpired:
                continue
        self.log.close()

    def fetch(self, paths: list[str]) -> list[bytes]:
        bodies = []
        for path in paths:
            response = self.client.get(path)
            if response.status_code != 200:
                raise RuntimeError(f"{self.server.name} {path}: {response.status_code} {response.text[:200]}")
            bodies.append(response.content)
        return bodies


def run_wrk(port: int, paths: list[str], connections: int, seconds: float, scratch: Path) -> dict:
    threads = min(int(os.environ.get("BENCH_THREADS", "1")), connections)
    paths_file = scratch / "paths.txt"
    paths_file.write_text("\n".join(paths) + "\n")
    command = [
        "taskset",
        "-c",
        CLIENT_CPUS,
        "wrk",
        "-t",
        str(threads),
        "-c",
        str(connections),
        "-d",
        f"{seconds:g}s",
        "--timeout",
        "60s",
        "-s",
        str(ROTATE_LUA),
        f"http://127.0.0.1:{port}",
        "--",
        str(paths_file),
        str(threads),
    ]
    output = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 120)
    for line in output.stdout.splitlines():
        if line.startswith("BENCH_JSON "):
            return json.loads(line.removeprefix("BENCH_JSON "))
    raise RuntimeError(f"wrk gave no result: {output.stdout}\n{output.stderr}")


def run_workload(running: RunningServer, workload: Workload, seconds: float) -> dict:
    server = running.server
    paths = cold_paths(server, workload) if workload.cold else hit_paths(server)
    running.rss.reset()
    row = measure(running, paths, workload.connections, seconds)
    # a cold list shorter than the requests made means some requests were hits
    row["exhausted"] = row["exhausted"] and workload.cold
    return {"workload": workload.name, "server": server.name, **row, "peak_rss_mb": running.rss.peak / 2**20}


def measure(running: RunningServer, paths: list[str], connections: int, seconds: float) -> dict:
    """wrk walking `paths` for `seconds`: successful requests/s, latency percentiles, failures,
    and whether it ran past the end of the list (made some request twice)."""
    stats = run_wrk(running.port, paths, connections, seconds, running.scratch)
    failed = (
        stats["non_2xx"] + stats["connect_errors"] + stats["read_errors"] + stats["write_errors"] + stats["timeouts"]
    )
    return {
        "rps": (stats["requests"] - stats["non_2xx"]) / (stats["duration_us"] / 1e6),
        "p50_ms": stats["p50_us"] / 1000,
        "p99_ms": stats["p99_us"] / 1000,
        "mean_ms": stats["mean_us"] / 1000,
        "failed": failed,
        "exhausted": stats["requests"] > len(paths),
        "requests": stats["requests"],
    }


def bench_server(
    server: Server, workloads: tuple[Workload, ...], seconds: float, scratch: Path, corpus: Path | None = None
) -> tuple[list[dict], list[bytes]]:
    """Runs the workloads against one fresh server; returns the rows and the hit set's bodies.
    With `corpus` (the server's image root), rows carry the SSIM of the cold sample."""
    rows = []
    hit_bodies: list[bytes] = []
    with RunningServer(server, scratch) as running:
        formats = sorted({w.fmt for w in workloads if w.fmt})
        # one render per format first, so start-up work (imports, pools) is not counted
        running.fetch([server.url(IMAGES[0], WARMUP_WIDTH, fmt) for fmt in formats])
        for workload in workloads:
            if not workload.cold:
                hit_bodies = running.fetch(hit_paths(server))  # renders them, so wrk sees hits
            print(f"  {server.name}: {workload.name} ...", file=sys.stderr, flush=True)
            rows.append(run_workload(running, workload, seconds))
        samples = {
            fmt: running.fetch([server.url(image, width, fmt) for image, width in sample_pairs()]) for fmt in formats
        }
    quality = {fmt: mean_ssim(corpus, bodies) for fmt, bodies in samples.items()} if corpus else {}
    for row, workload in zip(rows, workloads):
        row["mean_bytes"] = mean_size(samples[workload.fmt]) if workload.fmt else mean_size(hit_bodies)
        row["ssim"] = quality.get(workload.fmt or "")
    return rows, hit_bodies


def mean_size(bodies: list[bytes]) -> float:
    return sum(map(len, bodies)) / len(bodies) if bodies else 0.0


def format_table(headers: list[str], lines: list[list[str]]) -> str:
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *lines)]
    render = lambda cells: "  ".join(
        str(c).rjust(w) if i else str(c).ljust(w) for i, (c, w) in enumerate(zip(cells, widths))
    )
    return "\n".join([render(headers), render(["-" * w for w in widths]), *map(render, lines)])


def row_cells(row: dict) -> list[str]:
    note = " (list exhausted: some hits)" if row["exhausted"] else ""
    return [
        f"{row['rps']:,.1f}",
        f"{row['p50_ms']:,.1f}",
        f"{row['p99_ms']:,.1f}",
        f"{row['peak_rss_mb']:.0f}",
        f"{row['mean_bytes'] / 1000:,.1f} KB",
        "-" if row.get("ssim") is None else f"{row['ssim']:.4f}",
        f"{row['failed']}{note}",
    ]


ROW_HEADERS = ["req/s", "p50 ms", "p99 ms", "peak RSS MB", "mean bytes", "SSIM", "failed"]


def ensure_debian_packages(*packages: tuple[str, str]) -> None:
    """Installs each (binary, package) whose binary is missing, with apt-get."""
    missing = [
        package for binary, package in packages if not (shutil.which(binary) or Path("/usr/sbin", binary).exists())
    ]
    if missing:
        sudo = [] if os.geteuid() == 0 else ["sudo"]
        subprocess.run([*sudo, "apt-get", "update", "-q"], check=True)
        subprocess.run(
            [*sudo, "apt-get", "install", "-y", "-q", *missing],
            check=True,
            env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
        )


def scratch_dir(prefix: str) -> Path:
    BENCH_DIR.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=prefix, dir=BENCH_DIR))


def pin_self_to_client_core() -> None:
    """httpx fetches and RSS sampling run here: keep them off the server's core."""
    os.sched_setaffinity(0, {int(c) for c in CLIENT_CPUS.split(",")})


def parse_args(description: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument(
        "--corpus",
        type=Path,
        default=DEFAULT_CORPUS,
        help="directory holding the large JPEGs (default: ../shared/corpus/photos)",
    )
    parser.add_argument(
        "--workers", type=int, default=None, help="our [render] workers (default: the config's default)"
    )
    parser.add_argument(
        "--seconds",
        type=float,
        default=float(os.environ.get("BENCH_SECONDS", "15")),
        help="duration of each workload (env BENCH_SECONDS, default 15)",
    )
    parser.add_argument(
        "--storage", choices=("local", "s3"), default="local", help="s3: compare the local and s3 storage backends"
    )
    args = parser.parse_args()
    args.corpus = args.corpus.resolve()
    missing = [image for image in IMAGES if not (args.corpus / image).is_file()]
    if missing:
        parser.error(f"{args.corpus} lacks {', '.join(missing)}")
    return args


STORAGE_WORKLOADS = (
    Workload("new source jpeg c=2", 2, "jpeg", new_sources=True),  # every original fetched from the store
    Workload("miss jpeg c=2", 2, "jpeg", 0),
    Workload("hit c=32", 32),
)


def bench_storage(corpus: Path, workers: int | None, seconds: float, scratch: Path) -> None:
    """The same workloads with originals on local disk and in a SeaweedFS bucket."""
    sys.path.insert(0, str(REPO))
    from tests.s3_server import SeaweedFS  # the store the tests use

    store = SeaweedFS(scratch / "seaweed", wrapper=("taskset", "-c", CLIENT_CPUS))
    store.start()
    try:
        client = store.client()
        import obstore

        for path in sorted(p for p in corpus.rglob("*") if p.is_file()):
            obstore.put(client, path.relative_to(corpus).as_posix(), path.read_bytes())
        s3 = store.settings["s3"]
        storage = '[storage]\nbackend = "s3"\n[storage.s3]\n' + "".join(f'{k} = "{v}"\n' for k, v in s3.items())
        rows = []
        # local, s3, s3, local: whichever server is measured second ran up to 20 % slower in either
        # order on this machine, so each backend gets one early and one late turn
        for name in ("local", "s3", "s3", "local"):
            shutil.rmtree(scratch / name, ignore_errors=True)  # each turn starts cold: no results, no originals
            server = imgproxy_server(corpus, workers, storage if name == "s3" else "", name)
            rows += bench_server(server, STORAGE_WORKLOADS, seconds, scratch)[0]
    finally:
        store.stop()
    print(f"storage backends, server on core {SERVER_CPUS}, wrk and SeaweedFS on core {CLIENT_CPUS}, {seconds:g} s")
    print("each backend measured twice (order local, s3, s3, local)")
    table = [[r["workload"], r["server"], *row_cells(r)[:4], row_cells(r)[-1]] for r in rows]
    print(format_table(["workload", "storage", *ROW_HEADERS[:4], "failed"], sorted(table, key=lambda t: t[0])))
    for workload in dict.fromkeys(r["workload"] for r in rows):
        local, remote = (
            sum(r["rps"] for r in rows if r["workload"] == workload and r["server"] == name) for name in ("local", "s3")
        )
        print(f"{workload}: s3 at {remote / local:.1%} of local req/s (both turns summed)")


def main() -> None:
    args = parse_args("Self-only benchmark: cold renders and cache hits.")
    ensure_debian_packages(("wrk", "wrk"))
    pin_self_to_client_core()
    scratch = scratch_dir("self-")
    try:
        corpus = prepare_corpus(args.corpus, scratch)
        if args.storage == "s3":
            bench_storage(corpus, args.workers, args.seconds, scratch)
            return
        rows, _ = bench_server(imgproxy_server(corpus, args.workers), WORKLOADS, args.seconds, scratch, corpus)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print(f"imgproxy, server on core {SERVER_CPUS}, wrk on core {CLIENT_CPUS}, {args.seconds:g} s per workload")
    print(format_table(["workload", *ROW_HEADERS], [[r["workload"], *row_cells(r)] for r in rows]))


if __name__ == "__main__":
    main()
