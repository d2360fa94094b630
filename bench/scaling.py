"""Multi-core scaling of our server on this machine: processes (`serve --workers N`) and render
threads (`[render] workers`), cold JPEG renders.

    python bench/scaling.py [--corpus DIR] [--seconds S]    (env BENCH_ROUNDS, default 3)

Setups: 1 process pinned to core 0 (the other benchmarks' setup), then 1 or 2 processes on cores
0 and 1 with 1 or 2 render threads each. Workloads: bench/run.py's cold JPEG renders at
concurrency 2 and 4, repeated sources (the large photos at unique widths: kept decodes can be
reused) and distinct sources (every request a copy of a photo no request has seen). Every
(workload, setup) pair gets a fresh server with an empty cache; setups are interleaved within each
round and the table gives medians over the rounds, as other processes load the machine.

wrk always runs on core 1, so when the server gets both cores they share core 1. Requests/s
alone would credit or blame the server for wrk's share, so each row also gives the server's CPU
time (its whole process tree, from /proc) and wrk's, over the run: "renders/CPU-s" (renders per
second of server CPU) is the cost of a render whatever the core count, "server cores" how many
cores the server kept busy, "wrk core" the share of a core the load generator took, and "others'
cores" what the rest of the machine (this script, other processes) kept busy meanwhile: when that
is not near 0 the server could not have both cores, and only renders/CPU-s compares setups.
"""

from __future__ import annotations

import os
import resource
import shutil
import statistics
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

from run import (
    CLIENT_CPUS,
    IMAGES,
    WARMUP_WIDTH,
    RunningServer,
    Server,
    Workload,
    format_table,
    imgproxy_server,
    parse_args,
    pin_self_to_client_core,
    prepare_corpus,
    run_workload,
    scratch_dir,
)

TICKS = os.sysconf("SC_CLK_TCK")

WORKLOADS = (
    Workload("miss jpeg c=2", 2, "jpeg", 0),
    Workload("miss jpeg c=4", 4, "jpeg", 1),
    Workload("new source jpeg c=2", 2, "jpeg", new_sources=True),
    Workload("new source jpeg c=4", 4, "jpeg", new_sources=True),
)


@dataclass(frozen=True)
class Setup:
    name: str
    cpus: str  # the server's cores (taskset list)
    processes: int  # `serve --workers`
    threads: int  # [render] workers in each process


SETUPS = (
    Setup("1 proc, core 0, 1 thread", "0", 1, 1),
    Setup("1 proc, 2 cores, 1 thread", "0,1", 1, 1),
    Setup("1 proc, 2 cores, 2 threads", "0,1", 1, 2),
    Setup("2 procs, 2 cores, 1 thread each", "0,1", 2, 1),
    Setup("2 procs, 2 cores, 2 threads each", "0,1", 2, 2),
)


def setup_server(corpus: Path, setup: Setup) -> Server:
    """run.py's server with this setup's threads, processes and cores. RunningServer pins the
    server to core 0; the inner taskset widens that to the setup's cores."""
    server = imgproxy_server(corpus, setup.threads, name="scaling")
    extra = ["--workers", str(setup.processes)] if setup.processes > 1 else []
    return replace(
        server, command=lambda port, scratch: ["taskset", "-c", setup.cpus, *server.command(port, scratch), *extra]
    )


def tree_cpu_seconds(root: int) -> float:
    """User + system CPU of `root` and its live descendants (uvicorn's worker processes)."""
    parents: dict[int, int] = {}
    times: dict[int, float] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as f:
                fields = f.read().rpartition(")")[2].split()  # the command name may hold spaces
        except OSError:
            continue
        parents[int(entry.name)] = int(fields[1])
        times[int(entry.name)] = (int(fields[11]) + int(fields[12])) / TICKS
    total = 0.0
    for pid, seconds in times.items():
        ancestor = pid
        while ancestor > 1 and ancestor != root:
            ancestor = parents.get(ancestor, 0)
        if ancestor == root:
            total += seconds
    return total


def machine_busy_seconds() -> float:
    """CPU time all cores spent on anything but idle and I/O wait, from /proc/stat."""
    with open("/proc/stat") as f:
        user, nice, system, idle, iowait, *rest = (int(v) for v in f.readline().split()[1:])
    return (user + nice + system + sum(rest[:3])) / TICKS  # + irq, softirq, steal


def children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def measure(server: Server, processes: int, workload: Workload, seconds: float, scratch: Path) -> dict:
    """One workload on a fresh server, with the server's and wrk's CPU time over the run."""
    shutil.rmtree(scratch / server.name, ignore_errors=True)  # empty result cache
    with RunningServer(server, scratch) as running:
        # imports and pools not counted: a render on a new connection each, so that every worker
        # process is likely to get one (the kernel hands connections to whichever accepts first)
        for number in range(2 * processes):
            path = server.url(IMAGES[number % len(IMAGES)], WARMUP_WIDTH + number, "jpeg")
            running.client.get(path, headers={"connection": "close"}).raise_for_status()
        server_before, wrk_before = tree_cpu_seconds(running.process.pid), children_cpu_seconds()
        busy_before, start = machine_busy_seconds(), time.time()
        row = run_workload(running, workload, seconds)  # wrk is the only child reaped in here
        elapsed = time.time() - start
        server_cpu = tree_cpu_seconds(running.process.pid) - server_before
        wrk_cpu = children_cpu_seconds() - wrk_before
        others = machine_busy_seconds() - busy_before - server_cpu - wrk_cpu
    renders = row["rps"] * elapsed
    row |= {
        "renders_per_cpu_s": renders / server_cpu if server_cpu else 0.0,
        "server_cores": server_cpu / elapsed,
        "wrk_core": wrk_cpu / elapsed,
        "other_cores": max(others, 0.0) / elapsed,
    }
    return row


def main() -> None:
    parser_args = parse_args("Multi-core scaling: processes and render threads, cold JPEG renders.")
    rounds = int(os.environ.get("BENCH_ROUNDS", "3"))
    pin_self_to_client_core()
    scratch = scratch_dir("scaling-")
    rows: dict[tuple[str, str], list[dict]] = {}
    try:
        corpus = prepare_corpus(parser_args.corpus, scratch)
        for number in range(rounds):
            for workload in WORKLOADS:
                # alternate the order: whichever setup runs first in a round meets other load
                for setup in SETUPS if number % 2 == 0 else SETUPS[::-1]:
                    row = measure(setup_server(corpus, setup), setup.processes, workload, parser_args.seconds, scratch)
                    rows.setdefault((workload.name, setup.name), []).append(row)
                    print(
                        f"  round {number + 1}/{rounds}: {setup.name}, {workload.name}: {row['rps']:.1f} req/s, "
                        f"{row['renders_per_cpu_s']:.1f} renders/CPU-s, server {row['server_cores']:.2f} cores",
                        file=sys.stderr,
                        flush=True,
                    )
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    def median(key: str, runs: list[dict]) -> float:
        return statistics.median(run[key] for run in runs)

    lines = []
    for workload in WORKLOADS:
        base = median("rps", rows[(workload.name, SETUPS[0].name)])
        for setup in SETUPS:
            runs = rows[(workload.name, setup.name)]
            lines.append(
                [
                    workload.name,
                    setup.name,
                    f"{median('rps', runs):.1f}",
                    f"{median('rps', runs) / base:.2f}",
                    f"{median('p99_ms', runs):.0f}",
                    f"{median('renders_per_cpu_s', runs):.1f}",
                    f"{median('server_cores', runs):.2f}",
                    f"{median('wrk_core', runs):.2f}",
                    f"{median('other_cores', runs):.2f}",
                    f"{max(run['peak_rss_mb'] for run in runs):.0f}",
                    str(sum(run["failed"] for run in runs))
                    + (" (list exhausted)" if any(r["exhausted"] for r in runs) else ""),
                ]
            )
    print(
        f"our server, cold JPEG q80 at unique widths; wrk on core {CLIENT_CPUS}; {parser_args.seconds:g} s per run, "
        f"medians of {rounds} interleaved rounds; ×1p: req/s ÷ the 1-process, 1-core setup's"
    )
    headers = [
        "workload",
        "setup",
        "req/s",
        "×1p",
        "p99 ms",
        "renders/CPU-s",
        "server cores",
        "wrk core",
        "others' cores",
        "peak RSS MB",
    ]
    print(format_table([*headers, "failed"], lines))


if __name__ == "__main__":
    main()
