"""Peak memory with 8 concurrent cold requests for distinct sources, and what kept decodes earn.

    python bench/rss.py [--rounds 3] [--seconds 4] [--variant NAME TREE [SETTING ...]] [--no-thumbor]

Every server runs fresh (empty caches) for each round, pinned to one core like bench/run.py, and
the servers take turns within a round (their order rotates from round to round), so the machine's
load falls on all of them alike; the table gives the median over the rounds. Workloads, one after
the other on each server (JPEG q80, widths 300-1999 drawn as in bench/run.py):

- distinct c=8: 8 requests at once, every one for a copy of a 9-12 MP photo no request has seen
  (peak RSS of the server's process tree is the figure of issue 16: thumbor's + 10 % at most);
- distinct c=2: the same kind of sources, other copies, 2 at once;
- repeated c=2: the 3 photos at unique widths, so decodes can be reused.

For our servers the rows also give the kept-decode figures from /metrics over that workload:
the share of renders that reused a kept decode and the kept decodes dropped without a reuse.

A variant is one of our trees (a checkout, imported through PYTHONPATH) with settings: `render.KEY=VALUE`
adds TOML to the server's config, `env.NAME=VALUE` sets an environment variable. Default: this tree
as it is. Env: BENCH_NEW_SOURCE_COPIES (copies per photo, default 50 in run.py; this script wants
enough for seconds x rate requests per distinct workload, half each).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import random
import re
import shutil
import statistics
import sys
import time
from pathlib import Path

from peers import install_thumbor, thumbor_server
from run import (
    COLD_WIDTHS,
    DEFAULT_CORPUS,
    IMAGES,
    NEW_SOURCE_COPIES,
    REPO,
    WARMUP_WIDTH,
    RunningServer,
    Server,
    Workload,
    cold_paths,
    ensure_debian_packages,
    format_table,
    imgproxy_server,
    new_source,
    pin_self_to_client_core,
    prepare_corpus,
    process_tree_rss,
    run_wrk,
    scratch_dir,
)

DISTINCT = Workload("distinct c=8", 8, "jpeg", new_sources=True)
DISTINCT_2 = Workload("distinct c=2", 2, "jpeg", part=1, new_sources=True)
REPEATED = Workload("repeated c=2", 2, "jpeg", 0)
WORKLOADS = (DISTINCT, DISTINCT_2, REPEATED)
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
METRIC_LINE = re.compile(r'^(imgproxy_(?:kept_decodes|source_decodes)_total)\{\w+="(\w+)"\} ([0-9.e+]+)$', re.M)


@dataclasses.dataclass
class Variant:
    name: str
    tree: Path
    settings: list[str]


def paths_for(server: Server, workload: Workload) -> list[str]:
    """Cold paths; the two distinct workloads take alternate copies, so none sees the other's."""
    if not workload.new_sources:
        return cold_paths(server, workload)

    rng = random.Random("distinct")  # one order for both distinct workloads: their halves never overlap
    copies = [
        (new_source(image, "jpeg", i), rng.choice(COLD_WIDTHS)) for i in range(NEW_SOURCE_COPIES) for image in IMAGES
    ]
    rng.shuffle(copies)
    return [server.url(image, width, "jpeg") for image, width in copies[workload.part :: 2]]


def our_server(corpus: Path, variant: Variant) -> Server:
    toml = "".join(s.removeprefix("render.") + "\n" for s in variant.settings if s.startswith("render."))
    env = dict(s.removeprefix("env.").split("=", 1) for s in variant.settings if s.startswith("env."))
    server = imgproxy_server(corpus, storage=f"[render]\n{toml}" if toml else "", name=variant.name)
    command = server.command
    return dataclasses.replace(
        server,
        # -P: the bench's working directory (maybe another checkout) must not come before PYTHONPATH
        command=lambda port, scratch: [sys.executable, "-P", *command(port, scratch)[1:]],
        env={**env, "PYTHONPATH": str(variant.tree)},
    )


def tree_cpu_ticks(root: int) -> int:
    """utime + stime of `root` and its children, in clock ticks."""
    total = 0
    for pid in [root, *map(int, Path(f"/proc/{root}/task/{root}/children").read_text().split())]:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total


def wait_idle(root: int, timeout: float = 120) -> None:
    """Until the server has stopped working on what wrk left in flight (no CPU for 0.5 s), so the
    next workload neither waits behind it nor counts its renders."""
    deadline = time.monotonic() + timeout
    last = tree_cpu_ticks(root)
    while time.monotonic() < deadline:
        time.sleep(0.5)
        now = tree_cpu_ticks(root)
        if now - last <= 2:
            return
        last = now


def kept_figures(running: RunningServer) -> dict[str, float]:
    text = running.client.get("/metrics").text
    return {f"{name}:{label}": float(value) for name, label, value in METRIC_LINE.findall(text)}


def measure(server: Server, scratch: Path, seconds: float, ours: bool) -> list[dict]:
    rows = []
    with RunningServer(server, scratch) as running:
        running.fetch([server.url(IMAGES[0], WARMUP_WIDTH, "jpeg")])  # imports and pools, not counted
        wait_idle(running.process.pid)
        idle = process_tree_rss(running.process.pid)
        for workload in WORKLOADS:
            paths = paths_for(server, workload)
            before = kept_figures(running) if ours else {}
            running.rss.reset()
            ticks = tree_cpu_ticks(running.process.pid)
            stats = run_wrk(running.port, paths, workload.connections, seconds, scratch)
            wait_idle(running.process.pid)
            ticks = tree_cpu_ticks(running.process.pid) - ticks
            after = kept_figures(running) if ours else {}
            delta = {k: after[k] - before.get(k, 0.0) for k in after}
            renders = delta.get("imgproxy_source_decodes_total:decoded", 0) + delta.get(
                "imgproxy_source_decodes_total:kept", 0
            )
            rows.append(
                {
                    "server": server.name,
                    "workload": workload.name,
                    "rps": (stats["requests"] - stats["non_2xx"]) / (stats["duration_us"] / 1e6),
                    "p99_ms": stats["p99_us"] / 1000,
                    # the server's CPU over the requests wrk saw answered and those in flight at its end
                    "cpu_ms": ticks * 1000 / CLOCK_TICKS / (stats["requests"] + workload.connections),
                    "idle_mb": idle / 2**20,
                    "peak_mb": running.rss.peak / 2**20,
                    "failed": stats["non_2xx"] + stats["timeouts"] + stats["read_errors"],
                    "exhausted": stats["requests"] > len(paths),
                    "reuse": delta.get("imgproxy_source_decodes_total:kept", 0) / renders if renders else None,
                    "kept": delta.get("imgproxy_kept_decodes_total:kept"),
                    "unused": delta.get("imgproxy_kept_decodes_total:dropped_unused"),
                }
            )
    return rows


def cell(rows: list[dict], key: str, form: str) -> str:
    """The median of `key` over `rows` (rounds), "-" where no row has it."""
    values = [r[key] for r in rows if r[key] is not None]
    return format(statistics.median(values), form) if values else "-"


def median_rows(rows: list[dict]) -> list[list[str]]:
    lines = []
    for workload in WORKLOADS:
        for server in dict.fromkeys(r["server"] for r in rows):
            mine = [r for r in rows if r["server"] == server and r["workload"] == workload.name]
            lines.append(
                [
                    workload.name,
                    server,
                    cell(mine, "rps", ".2f"),
                    " ".join(f"{r['rps']:.1f}" for r in mine),
                    cell(mine, "p99_ms", ".0f"),
                    cell(mine, "cpu_ms", ".0f"),
                    cell(mine, "idle_mb", ".0f"),
                    cell(mine, "peak_mb", ".0f"),
                    " ".join(f"{r['peak_mb']:.0f}" for r in mine),
                    cell(mine, "reuse", ".0%"),
                    cell(mine, "kept", ".0f"),
                    cell(mine, "unused", ".0f"),
                    f"{sum(r['failed'] for r in mine)}{' exhausted' if any(r['exhausted'] for r in mine) else ''}",
                ]
            )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=4)
    parser.add_argument("--variant", nargs="+", action="append", metavar="NAME TREE [SETTING]", default=[])
    parser.add_argument("--no-thumbor", action="store_true")
    args = parser.parse_args()
    variants = [Variant(v[0], Path(v[1]).resolve(), v[2:]) for v in args.variant] or [Variant("imgproxy", REPO, [])]
    ensure_debian_packages(("wrk", "wrk"))
    thumbor_venv = None if args.no_thumbor else install_thumbor()
    pin_self_to_client_core()
    scratch = scratch_dir("rss-")
    rows: list[dict] = []
    try:
        corpus = prepare_corpus(DEFAULT_CORPUS, scratch)
        servers = [(our_server(corpus, v), True) for v in variants]
        if thumbor_venv is not None:
            servers.append((thumbor_server(corpus, thumbor_venv), False))
        for round_ in range(args.rounds):
            turn = servers[round_ % len(servers) :] + servers[: round_ % len(servers)]
            for server, ours in turn:
                print(f"round {round_ + 1}: {server.name}", file=sys.stderr, flush=True)
                for leftover in ("cache", "originals", "thumbor-results"):
                    shutil.rmtree(scratch / server.name / leftover, ignore_errors=True)
                shutil.rmtree(scratch / "thumbor-results", ignore_errors=True)
                rows += measure(server, scratch, args.seconds, ours)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print(f"{args.rounds} rounds, {args.seconds:g} s per workload, medians; servers pinned to one core; JPEG q80")
    for v in variants:
        print(f"  {v.name}: {v.tree} {' '.join(v.settings)}")
    headers = [
        "workload",
        "server",
        "req/s",
        "each",
        "p99 ms",
        "CPU ms/req",
        "idle MB",
        "peak MB",
        "peaks",
        "reused",
        "kept",
        "unused",
    ]
    print(format_table([*headers, "failed"], median_rows(rows)))


if __name__ == "__main__":
    main()
