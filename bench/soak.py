"""Memory over a long run of distinct cold renders: is peak RSS bounded, and does it stay flat?

    python bench/soak.py [--corpus DIR] [--seconds S]   (default 300 s; make bench-soak)

Our server on core 0 (one worker, default config), wrk on core 1 with 8 connections walking
distinct cold URLs (the large photos at widths 300-1999, JPEG and WebP interleaved, then copies
of the photos no request has seen), so every request is a cold render. The server's RSS is read
every second; the table gives per-minute mean and peak, and the last line the drift of the mean
from the first minute to the last, and the process's own high-water mark (VmHWM).
"""

from __future__ import annotations

import itertools
import os
import shutil
import sys
import threading
import time

from run import (
    SERVER_CPUS,
    RunningServer,
    Workload,
    cold_paths,
    ensure_debian_packages,
    format_table,
    imgproxy_server,
    parse_args,
    pin_self_to_client_core,
    prepare_corpus,
    process_tree_rss,
    run_wrk,
    scratch_dir,
)

CONNECTIONS = 8
MINUTE = 60


def soak_paths(server) -> list[str]:
    """Every cold URL of the bench, formats interleaved: far more than a soak can render."""
    lists = [
        cold_paths(server, Workload("soak", CONNECTIONS, fmt, part)) for part in (0, 1) for fmt in ("jpeg", "webp")
    ]
    lists += [cold_paths(server, Workload("soak", CONNECTIONS, fmt, new_sources=True)) for fmt in ("jpeg", "webp")]
    return [path for group in itertools.zip_longest(*lists) for path in group if path is not None]


def vm_hwm_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return 0.0


def main() -> None:
    args = parse_args("Peak and drift of memory over a long run of distinct cold renders.")
    seconds = args.seconds if "--seconds" in sys.argv else float(os.environ.get("BENCH_SOAK_SECONDS", "300"))
    ensure_debian_packages(("wrk", "wrk"))
    pin_self_to_client_core()
    scratch = scratch_dir("soak-")
    samples: list[tuple[float, int]] = []
    try:
        corpus = prepare_corpus(args.corpus, scratch)
        with RunningServer(imgproxy_server(corpus, args.workers), scratch) as running:
            stop = threading.Event()
            started = time.monotonic()

            def sample() -> None:
                while not stop.wait(1.0):
                    samples.append((time.monotonic() - started, process_tree_rss(running.process.pid)))

            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
            stats = run_wrk(running.port, soak_paths(running.server), CONNECTIONS, seconds, scratch)
            stop.set()
            sampler.join()
            hwm = vm_hwm_mb(running.process.pid)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    minutes = max(1, round(seconds / MINUTE))
    rows = []
    for m in range(minutes):
        window = [rss / 2**20 for t, rss in samples if m * MINUTE <= t < (m + 1) * MINUTE]
        if window:
            rows.append([f"{m}-{m + 1} min", f"{sum(window) / len(window):.0f}", f"{max(window):.0f}"])
    failed = stats["non_2xx"] + stats["connect_errors"] + stats["read_errors"] + stats["timeouts"]
    print(
        f"imgproxy soak, server on core {SERVER_CPUS}, {CONNECTIONS} connections, {seconds:g} s: "
        f"{stats['requests']} cold renders, {failed} failed"
    )
    print(format_table(["window", "mean RSS MB", "peak RSS MB"], rows))
    first, last = float(rows[0][1]), float(rows[-1][1])
    print(
        f"mean RSS first -> last window: {first:.0f} -> {last:.0f} MB ({(last - first) / first:+.1%}); "
        f"VmHWM {hwm:.0f} MB"
    )


if __name__ == "__main__":
    main()
