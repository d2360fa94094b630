"""Hit throughput through the nginx edge (deploy/nginx) vs straight from a replica.

Starts 3 replicas and nginx in front of them as tests/test_cdn.py does, warms one URL on both,
then runs wrk (pinned to core 1) for BENCH_SECONDS against each.
"""

import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.conftest import LiveServer  # noqa: E402
from tests.edge import Edge  # noqa: E402

SECONDS = os.environ.get("BENCH_SECONDS", "10")
PATH = "/picture/photos/progressive_dalmatian.jpg?w=320"


def wrk(url: str) -> str:
    out = subprocess.run(
        ["taskset", "-c", "1", "wrk", "-t1", "-c32", f"-d{SECONDS}s", "--latency", url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rate = re.search(r"Requests/sec:\s+(\S+)", out)[1]
    p99 = re.search(r"99%\s+(\S+)", out)[1]
    return f"{float(rate):10,.0f} req/s   p99 {p99}"


def main() -> None:
    base = Path(tempfile.mkdtemp(prefix="bench-cdn-"))
    replicas = [LiveServer(base / f"r{i}", {}).start() for i in range(3)]
    edge = Edge(base / "edge", [r.port for r in replicas])
    try:
        edge.get(PATH)
        edge.get(PATH)  # cached at the edge now
        httpx.get(replicas[0].url + PATH, timeout=30)  # and on the replica we measure directly
        print(f"edge hit (nginx)   {wrk(f'http://127.0.0.1:{edge.port}{PATH}')}")
        print(f"replica hit        {wrk(replicas[0].url + PATH)}")
    finally:
        edge.stop()
        for replica in replicas:
            replica.stop()


if __name__ == "__main__":
    main()
