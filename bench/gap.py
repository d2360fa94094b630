"""Where a render's time goes in the server that it does not take in a plain process (issue 16).

    python bench/gap.py [--rounds N] [--photos a.jpg,b.jpg] [--fmt jpeg] [--tune] [--keep]

The same (photo, width, format) renders run, interleaved round by round, in two processes pinned
to the same core (BENCH_SERVER_CPUS, default 0): a plain process calling
`pipeline.render_original` (the "worker" below, fed over a pipe) and the server (`imgproxy serve`,
one uvicorn worker), asked over HTTP by this process on another core (BENCH_CLIENT_CPUS) at
concurrency 1 and 2. Both processes time the steps of `render_original` with the same wrappers
(open+decode+resize = `render`, `encode`, `etag`; the rest is the file open and bookkeeping) and the
server also the steps around it (`cache.put`, the whole request as the client sees it). Each width
is rendered once per process (all cold), so the server's result cache never answers.

Kept decodes are off in both (--keep: the server's default, with the worker holding the same
budget) so every render decodes. --tune applies imgproxy.malloc's glibc settings in the worker as
the server does. Prints per-photo medians of each step and the gap, and the median over photos.
Times are wall-clock on a shared machine: compare the columns of one run, not across runs; the
CPU columns (thread: the render thread's, proc: the process's per request) are the steadier ones.

Other modes: --server-mallopt "P:V,..." sets glibc mallopt values in the server after
imgproxy.malloc's; --allocators compares glibc settings (ALLOCATORS) in plain processes, and
--progressive the JPEG rule before and after jpeg_progressive_min_pixels (ENCODE_RULES), both
interleaved; --peak "tune;P:V,...;..." gives the peak and idle RSS and CPU per request of a fresh
server per setting at 8 concurrent requests for sources never seen.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import httpx

REPO = Path(__file__).resolve().parent.parent
CORPUS = REPO.parent / "shared" / "corpus"
PHOTOS = sorted(p.name for p in (CORPUS / "bench").glob("*.jpg")) + sorted(
    p.name for p in (CORPUS / "photos").glob("large_*")
)
SERVER_CPUS = os.environ.get("BENCH_SERVER_CPUS", "0")
CLIENT_CPUS = os.environ.get("BENCH_CLIENT_CPUS", "1")
SCRATCH = Path(os.environ.get("BENCH_DIR", "/tmp/imgproxy-bench")) / "gap"
STEPS = ("render", "encode", "etag")


def wait_healthy(client: httpx.Client, port: int) -> None:
    """Until the server on `port` answers /health (at most ~60 s of refused connections)."""
    import httpx  # not in the plain process being measured

    for _ in range(600):
        try:
            if client.get(f"http://127.0.0.1:{port}/health").status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.1)


def photo_path(name: str) -> Path:
    bench = CORPUS / "bench" / name
    return bench if bench.exists() else CORPUS / "photos" / name


def write_config(port: int, keep: bool, access_log: bool) -> Path:
    root = SCRATCH / "root"
    root.mkdir(parents=True, exist_ok=True)
    for name in PHOTOS:
        copy = root / name  # a copy: the local source refuses links that leave its root
        if not copy.exists():
            shutil.copyfile(photo_path(name), copy)
    config = SCRATCH / "gap.toml"
    kept = "" if keep else 'kept_decodes = "0"\n'
    config.write_text(
        f'[server]\nhost = "127.0.0.1"\nport = {port}\nworkers = 1\n'
        f'[sources.local]\nroot = "{root}"\ngenerate_demo = false\n'
        f'[sources.remote]\ncache_dir = "{SCRATCH / "originals"}"\n'
        f'[cache]\ndir = "{SCRATCH / "cache"}"\n'
        f"[render]\n{kept}"
        f"[log]\naccess_log = {str(access_log).lower()}\n"
    )
    return config


# --- timing wrappers, installed in the worker and in the server alike -----------------------------

_local = threading.local()


def instrument(log: Callable[[dict[str, Any]], object]) -> None:
    """Wrap the steps `render_original` calls (looked up in imgproxy.pipeline's namespace) and
    `Renderer._render_and_store`; each finished render is passed to `log` with its step times (ms)."""
    from imgproxy import pipeline

    def timed(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                steps = getattr(_local, "steps", None)
                if steps is not None:
                    steps[name] = steps.get(name, 0.0) + (time.perf_counter() - started) * 1000

        return wrapper

    for name in STEPS:
        target = {"render": "render", "encode": "encode_within", "etag": "etag_of"}[name]
        setattr(pipeline, target, timed(name, getattr(pipeline, target)))
    render_original = pipeline.render_original

    def original(original: Any, options: Any, *args: Any, **kwargs: Any) -> Any:
        _local.steps = {}
        faults = resource.getrusage(resource.RUSAGE_THREAD).ru_minflt
        started = time.perf_counter()
        body, meta = render_original(original, options, *args, **kwargs)
        _local.steps["total"] = (time.perf_counter() - started) * 1000
        _local.steps["faults"] = resource.getrusage(resource.RUSAGE_THREAD).ru_minflt - faults
        _local.steps["cpu"] = time.thread_time() * 1000  # difference taken by the caller
        return body, meta

    def store(self: Any, key: str, original_: Any, options: Any, fmt: str) -> Any:
        cpu = time.thread_time()
        body, meta = original(original_, options, fmt, self.config, self.memory)
        steps = _local.steps
        steps["cpu"] -= cpu * 1000
        started = time.perf_counter()
        pipeline.metrics.observe_render(meta.content_type, meta.render_ms, original_.kind, original_.size)
        self.cache.put(key, body, meta)
        self.renders += 1
        steps["put"] = (time.perf_counter() - started) * 1000
        log({"photo": original_.id.partition(":")[2], "width": options.width, **steps})
        return body, meta

    pipeline.render_original = original
    pipeline.Renderer._render_and_store = store  # type: ignore[method-assign,assignment]


def mallopt_from_env() -> None:
    """GAP_MALLOPT: "param:value,..." passed to glibc's mallopt (see ALLOCATORS)."""
    import ctypes
    import ctypes.util

    for setting in filter(None, os.environ.get("GAP_MALLOPT", "").split(",")):
        param, value = map(int, setting.split(":"))
        ctypes.CDLL(ctypes.util.find_library("c")).mallopt(param, value)


def serve(config: str, port: int, log_path: str) -> None:
    """The server, as `imgproxy serve` runs it, with the timing wrappers."""
    out = open(log_path, "a", buffering=1)  # noqa: SIM115 (open for the server's life)
    instrument(lambda record: out.write(json.dumps(record) + "\n"))
    from imgproxy import malloc
    from imgproxy.cli import main

    tune = malloc.tune

    def tuned() -> bool:  # the server's settings, then GAP_MALLOPT's (--server-mallopt)
        done = tune()
        mallopt_from_env()
        return done

    malloc.tune = tuned

    sys.exit(main(["serve", "--config", config, "--port", str(port)]))


def worker(config_path: str, tune: bool, keep: bool) -> None:
    """Plain process: read "photo width fmt" lines, render each, answer one JSON line of step times."""
    import asyncio
    import ctypes
    import ctypes.util

    from imgproxy import malloc, pipeline
    from imgproxy.budget import UNLIMITED, MemoryBudget
    from imgproxy.config import load_config
    from imgproxy.storage import open_storage

    if tune:
        malloc.tune()
    mallopt_from_env()
    config = load_config(config_path)
    if os.environ.get("GAP_PROGRESSIVE_MIN_PIXELS"):  # --progressive: another encode rule
        render = dataclasses.replace(
            config.render, jpeg_progressive_min_pixels=int(os.environ["GAP_PROGRESSIVE_MIN_PIXELS"])
        )
        config = dataclasses.replace(config, render=render)
    storage = open_storage(config)
    budget = MemoryBudget(config.render.memory_budget, config.render.kept_decodes) if keep else UNLIMITED
    records: list[dict[str, Any]] = []
    instrument(records.append)
    thread = ThreadPoolExecutor(1)
    for line in sys.stdin:
        photo, width, fmt = line.split()
        options = config.parse_query([("scalex", width), ("encoding", fmt), ("quality", "80")])
        original = asyncio.run(storage.load(photo))

        def one(original: Any = original, options: Any = options, fmt: str = fmt) -> tuple[Any, dict[str, Any]]:
            cpu = time.thread_time()
            _, meta = pipeline.render_original(original, options, fmt, config, budget)
            steps = dict(_local.steps)
            steps["cpu"] -= cpu * 1000
            return meta, steps

        meta, steps = thread.submit(one).result()  # on a thread of its own, as in the server
        if os.environ.get("GAP_TRIM"):  # malloc_trim(0) once the render is done (idle), as a server could
            ctypes.CDLL(ctypes.util.find_library("c")).malloc_trim(0)
        rss = int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
        print(json.dumps({"photo": photo, "width": int(width), "bytes": meta.size, "rss": rss, **steps}), flush=True)


# --- the driver -------------------------------------------------------------------------------------


# glibc settings compared by --allocators: (name, flags, environment). mallopt parameters:
# -1 M_TRIM_THRESHOLD, -3 M_MMAP_THRESHOLD, -8 M_ARENA_MAX.
Variant = tuple[str, list[str], dict[str, str]]  # name, worker flags, environment
ALLOCATORS: tuple[Variant, ...] = (
    ("glibc default", [], {}),
    ("malloc.tune", ["--tune"], {}),
    ("tune + THP", ["--tune"], {"GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}),
    ("tune + mmap 32M", ["--tune"], {"GAP_MALLOPT": "-3:33554432"}),
    ("tune + mmap/trim 32M", ["--tune"], {"GAP_MALLOPT": "-3:33554432,-1:33554432"}),
    ("tune + malloc_trim", ["--tune"], {"GAP_TRIM": "1"}),
    ("32M + malloc_trim", ["--tune"], {"GAP_MALLOPT": "-3:33554432,-1:33554432", "GAP_TRIM": "1"}),
)


# --progressive: whole renders (malloc.tune as in the server) with progressive at every size (the
# rule before) and from [render] jpeg_progressive_min_pixels (1 MP) up
ENCODE_RULES: tuple[Variant, ...] = (
    ("progressive always", ["--tune"], {"GAP_PROGRESSIVE_MIN_PIXELS": "0"}),
    ("progressive >= 1 MP", ["--tune"], {}),
)


def allocators(args: argparse.Namespace, photos: list[str]) -> None:
    """The same renders in one plain process per ALLOCATORS (--progressive: ENCODE_RULES) entry,
    interleaved: render thread CPU time, minor page faults, RSS after the render and output bytes
    (medians; bytes: the sum)."""
    variants = ENCODE_RULES if args.progressive else ALLOCATORS
    SCRATCH.mkdir(parents=True, exist_ok=True)
    config = write_config(free_port(), args.keep, False)
    python = str(REPO / ".venv/bin/python") if (REPO / ".venv").exists() else sys.executable
    me = str(Path(__file__).resolve())
    workers = [
        subprocess.Popen(
            ["taskset", "-c", SERVER_CPUS, python, me, "--worker", str(config), *flags],
            env={**os.environ, "PYTHONPATH": str(REPO), **env},
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _, flags, env in variants
    ]
    os.sched_setaffinity(0, {int(c) for c in CLIENT_CPUS.split(",")})
    records: dict[str, list[dict[str, Any]]] = defaultdict(list)
    try:
        widths = iter(range(301, 2000, max(1, 1699 // (args.rounds * len(photos)))))  # spread over 301-1999
        for _ in range(args.rounds):
            for photo in photos:
                width = next(widths)
                for (name, _, _), process in zip(variants, workers, strict=True):
                    assert process.stdin is not None and process.stdout is not None
                    process.stdin.write(f"{photo} {width} {args.fmt}\n")
                    process.stdin.flush()
                    records[name].append(json.loads(process.stdout.readline()))
    finally:
        for process in workers:
            process.terminate()
            process.wait(30)
    print(
        f"{'variant':20} {'wall':>7} {'thread':>7} {'faults':>7} {'RSS MB':>7} {'peak RSS':>8} {'KB':>8}"
        "  (medians over renders; KB: all outputs)"
    )
    for name, _, _ in variants:
        rows = records[name]
        print(
            f"{name:20} {med([r['total'] for r in rows]):7.1f} {med([r['cpu'] for r in rows]):7.1f} "
            f"{med([r['faults'] for r in rows]):7.0f} {med([r['rss'] for r in rows]):7.1f} "
            f"{max(r['rss'] for r in rows):8.1f} {sum(r['bytes'] for r in rows) / 1000:8.0f}"
        )
    if args.progressive:  # per photo: thread CPU and bytes of the new rule against the old
        print(f"{'photo':30} {'thread ms old':>13} {'new':>6} {'ratio':>6} {'bytes ratio':>11}")
        old, new = records[variants[0][0]], records[variants[1][0]]
        ratios = []
        for photo in photos:
            pairs = [(a, b) for a, b in zip(old, new, strict=True) if a["photo"] == photo]
            t_old, t_new = med([a["cpu"] for a, _ in pairs]), med([b["cpu"] for _, b in pairs])
            size = sum(b["bytes"] for _, b in pairs) / sum(a["bytes"] for a, _ in pairs)
            ratios.append((t_new / t_old, size))
            print(f"{photo:30} {t_old:13.1f} {t_new:6.1f} {t_new / t_old:6.3f} {size:11.4f}")
        print(
            f"{'median over photos':30} {'':13} {'':6} {med([r[0] for r in ratios]):6.3f} {med([r[1] for r in ratios]):11.4f}"
        )


PEAK_PHOTOS = ("large_12mp_bus.jpg", "large_12mp_gallery.jpg", "large_9mp_harbour.jpg")
PEAK_REQUESTS = 48  # per round and server: 6 waves of 8 concurrent requests, each for a source never seen


def peak(args: argparse.Namespace) -> None:
    """Peak and idle RSS of a fresh server (kept decodes as configured) per --peak setting ("" = as
    imgproxy.malloc leaves it), 8 concurrent requests for distinct copies of the large photos,
    servers taking turns over --rounds rounds; and the server's CPU time per request."""
    import httpx

    root = SCRATCH / "root"
    root.mkdir(parents=True, exist_ok=True)
    for i in range(PEAK_REQUESTS):
        copy = root / f"copy{i:02d}-{PEAK_PHOTOS[i % 3]}"
        if not copy.exists():
            shutil.copyfile(photo_path(PEAK_PHOTOS[i % 3]), copy)
    python = str(REPO / ".venv/bin/python") if (REPO / ".venv").exists() else sys.executable
    me = str(Path(__file__).resolve())
    figures: dict[str, list[tuple[float, float, float]]] = defaultdict(list)
    os.sched_setaffinity(0, {int(c) for c in CLIENT_CPUS.split(",")})
    widths = list(range(301, 2000, 13))
    for round_ in range(args.rounds):
        for setting in args.peak.split(";"):
            setting = "" if setting == "tune" else setting
            subprocess.run(["rm", "-rf", str(SCRATCH / "cache")], check=True)
            port = free_port()
            config = write_config(port, True, False)
            env = {**os.environ, "PYTHONPATH": str(REPO), "GAP_MALLOPT": setting}
            log = str(SCRATCH / "peak-steps.jsonl")
            command = ["taskset", "-c", SERVER_CPUS, python, me, "--serve", str(config), str(port), log]
            server = subprocess.Popen(command, env=env, stderr=subprocess.DEVNULL)
            try:
                with httpx.Client(timeout=120, limits=httpx.Limits(max_connections=8)) as client:
                    wait_healthy(client, port)
                    top, done = [0.0], threading.Event()

                    def sample(pid: int = server.pid, top: list[float] = top, done: threading.Event = done) -> None:
                        while not done.wait(0.02):
                            top[0] = max(top[0], rss_mb(pid))

                    sampler = threading.Thread(target=sample)
                    sampler.start()
                    cpu = process_cpu(server.pid)
                    paths = [
                        f"/picture/copy{i:02d}-{PEAK_PHOTOS[i % 3]}?scalex={widths[(i * 7 + round_) % len(widths)]}"
                        "&encoding=jpeg&quality=80"
                        for i in range(PEAK_REQUESTS)
                    ]
                    with ThreadPoolExecutor(8) as pool:
                        for response in pool.map(client.get, [f"http://127.0.0.1:{port}{p}" for p in paths]):
                            response.raise_for_status()
                    per_request = (process_cpu(server.pid) - cpu) / PEAK_REQUESTS
                    done.set()
                    sampler.join()
                    time.sleep(1.0)
                    figures[setting or "tune"].append((top[0], rss_mb(server.pid), per_request))
            finally:
                server.terminate()
                server.wait(30)
    print(
        f"{'server GAP_MALLOPT':36} {'peak MB':>8} {'idle MB':>8} {'CPU ms/request':>15}  (medians of {args.rounds} rounds)"
    )
    for name, rows in figures.items():
        print(
            f"{name:36} {med([r[0] for r in rows]):8.1f} {med([r[1] for r in rows]):8.1f} {med([r[2] for r in rows]):15.1f}"
        )


def rss_mb(pid: int) -> float:
    try:
        return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        return 0.0


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def process_cpu(pid: int) -> float:
    """CPU time (ms, ns resolution) the threads of `pid` have run, from /proc/<pid>/task/*/schedstat."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            total += int((task / "schedstat").read_text().split()[0])
        except (OSError, ValueError):
            pass  # a thread that ended meanwhile
    return total / 1e6


def fetch(client: Any, port: int, photo: str, width: int, fmt: str) -> dict[str, Any]:
    started = time.perf_counter()
    response = client.get(f"http://127.0.0.1:{port}/picture/{photo}?scalex={width}&encoding={fmt}&quality=80")
    wall = (time.perf_counter() - started) * 1000
    response.raise_for_status()
    timing = response.headers.get("server-timing", "")
    render_ms = float(timing.rpartition("dur=")[2]) if "dur=" in timing else float("nan")
    return {"photo": photo, "width": width, "wall": wall, "render_ms": render_ms, "bytes": len(response.content)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--photos", default=",".join(PHOTOS))
    parser.add_argument("--fmt", default="jpeg")
    parser.add_argument("--tune", action="store_true", help="glibc settings of imgproxy.malloc in the worker too")
    parser.add_argument("--keep", action="store_true", help="kept decodes as configured (default: off)")
    parser.add_argument("--access-log", action="store_true")
    parser.add_argument("--server-mallopt", default="", help="GAP_MALLOPT for the server, after imgproxy.malloc")
    parser.add_argument("--allocators", action="store_true", help="compare ALLOCATORS in plain processes instead")
    parser.add_argument("--progressive", action="store_true", help="compare ENCODE_RULES in plain processes")
    parser.add_argument(
        "--peak",
        metavar="MALLOPT;...",
        help='peak RSS at c=8 on distinct sources per server GAP_MALLOPT ("tune": none)',
    )
    parser.add_argument("--serve", nargs=3, metavar=("CONFIG", "PORT", "LOG"), help=argparse.SUPPRESS)
    parser.add_argument("--worker", metavar="CONFIG", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        return serve(args.serve[0], int(args.serve[1]), args.serve[2])
    if args.worker:
        return worker(args.worker, args.tune, args.keep)
    photos = args.photos.split(",")
    if args.allocators or args.progressive:
        return allocators(args, photos)
    if args.peak:
        return peak(args)
    import httpx

    SCRATCH.mkdir(parents=True, exist_ok=True)
    subprocess.run(["rm", "-rf", str(SCRATCH / "cache")], check=True)
    port = free_port()
    config = write_config(port, args.keep, args.access_log)
    log_path = SCRATCH / "server-steps.jsonl"
    log_path.unlink(missing_ok=True)
    python = str(REPO / ".venv/bin/python") if (REPO / ".venv").exists() else sys.executable
    env = {**os.environ, "PYTHONPATH": str(REPO), "GAP_MALLOPT": ""}
    me = str(Path(__file__).resolve())
    pin = ["taskset", "-c", SERVER_CPUS]
    server_env = {**env, "GAP_MALLOPT": args.server_mallopt}
    server = subprocess.Popen([*pin, python, me, "--serve", str(config), str(port), str(log_path)], env=server_env)
    flags = ["--tune"] * args.tune + ["--keep"] * args.keep
    plain = subprocess.Popen(
        [*pin, python, me, "--worker", str(config), *flags],
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    os.sched_setaffinity(0, {int(c) for c in CLIENT_CPUS.split(",")})
    try:
        with httpx.Client(timeout=120) as client:
            wait_healthy(client, port)
            run(args, photos, port, plain, client, log_path, server.pid)  # taskset execs: the server's pid
    finally:
        server.terminate()
        plain.terminate()
        server.wait(30)
        plain.wait(30)


def run(
    args: argparse.Namespace, photos: list[str], port: int, plain: Any, client: Any, log_path: Path, server_pid: int
) -> None:
    import httpx

    fmt = args.fmt
    # distinct widths: round r, photo i, mode m (in-process, c=1, c=2 twice) -> its own width
    widths = list(range(301, 2000, 7))
    used = iter(widths)
    results: dict[str, dict[str, list[dict[str, Any]]]] = defaultdict(lambda: defaultdict(list))

    def in_process(photo: str, width: int) -> None:
        assert plain.stdin is not None and plain.stdout is not None
        cpu = process_cpu(plain.pid)
        plain.stdin.write(f"{photo} {width} {fmt}\n")
        plain.stdin.flush()
        record = json.loads(plain.stdout.readline())
        record["process"] = process_cpu(plain.pid) - cpu
        results[photo]["plain"].append(record)

    def served(photo: str, width: int) -> dict[str, Any]:
        cpu = process_cpu(server_pid)
        record = fetch(client, port, photo, width, fmt)
        record["process"] = process_cpu(server_pid) - cpu
        return record

    # warm both processes (imports, first-use caches) on a width outside the measured ones
    for photo in photos[:2]:
        in_process(photo, 200)
        fetch(client, port, photo, 200, fmt)
    for photo in photos:
        results[photo].clear()
    with httpx.Client(timeout=120) as second:
        for _ in range(args.rounds):
            for photo in photos:
                in_process(photo, w := next(used))
                results[photo]["c1"].append(served(photo, w))
                pair: list[dict[str, Any]] = []
                w1, w2 = next(used), next(used)
                cpu = process_cpu(server_pid)
                other = threading.Thread(
                    target=lambda pair=pair, photo=photo, w2=w2: pair.append(fetch(second, port, photo, w2, fmt))
                )
                other.start()
                pair.append(fetch(client, port, photo, w1, fmt))
                other.join()
                for record in pair:
                    record["process"] = (process_cpu(server_pid) - cpu) / 2
                results[photo]["c2"] += pair
    time.sleep(0.5)  # the server's last log lines
    steps = {(r["photo"], r["width"]): r for r in map(json.loads, log_path.read_text().splitlines())}
    report(results, steps, photos)


def med(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


COLUMNS = (
    # (heading, mode, field): mode plain = the plain process, c1/c2 = the server; `steps` fields
    # come from the render thread's wrappers, the others from the driver
    ("wall", "plain", "total"),
    ("thread", "plain", "cpu"),
    ("proc", "plain", "process"),
    ("decode+resize", "plain", "render"),
    ("encode", "plain", "encode"),
    ("wall", "c1", "total"),
    ("thread", "c1", "cpu"),
    ("proc", "c1", "process"),
    ("decode+resize", "c1", "render"),
    ("encode", "c1", "encode"),
    ("put", "c1", "put"),
    ("outside", "c1", "outside"),
    ("wall", "c2", "total"),
    ("thread", "c2", "cpu"),
    ("proc", "c2", "process"),
)


def report(results: dict[str, dict[str, list[dict[str, Any]]]], steps: dict, photos: list[str]) -> None:
    """Per photo, the median of each column (ms): wall = render_original's wall time, thread = its
    render thread's CPU time, proc = the whole process's CPU time per request (the server's at c=2:
    the pair's / 2), outside = the client's wall time less Server-Timing's render."""
    print("ms, medians of the rounds  | plain process " + " " * 33 + "| server c=1" + " " * 50 + "| server c=2")
    print(f"{'photo':28} | " + " ".join(f"{h[:7]:>7}" for h, _, _ in COLUMNS))
    table: dict[tuple[str, str], list[float]] = defaultdict(list)
    for photo in photos:
        row = []
        for _, mode, field in COLUMNS:
            records = results[photo][mode]
            if mode != "plain":  # the server's step times, by width, joined to the driver's
                records = [{**steps[(photo, r["width"])], **r, "outside": r["wall"] - r["render_ms"]} for r in records]
            value = med([r.get(field, 0.0) for r in records])
            table[(mode, field)].append(value)
            row.append(value)
        print(f"{photo:28} | " + " ".join(f"{v:7.1f}" for v in row))
    print(f"{'median over photos':28} | " + " ".join(f"{med(table[(m, f)]):7.1f}" for _, m, f in COLUMNS))
    for mode in ("c1", "c2"):
        for field in ("total", "cpu", "process"):
            ratios = [s / p for s, p in zip(table[(mode, field)], table[("plain", field)], strict=True)]
            print(f"server {mode} / plain, {field}: median over photos {med(ratios):.3f}")


if __name__ == "__main__":
    main()
