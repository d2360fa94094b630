"""CPU instructions per cache hit, counted by valgrind's callgrind: local vs s3 storage backend.

    python bench/hitcost.py [--hits N]

Requests per second on a shared 2-core machine swing by 20-50 % from run to run; instruction
counts do not (the same total twice, whatever else the machine does). The server runs under
callgrind with counting off; after a warm-up the counter is switched on for N sequential hits of
one URL (a memory-tier hit, the common case), then off. SeaweedFS serves the s3 variant with a
freshness longer than the run, so the hits are the in-window ones that must not touch the store.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
from run import DEFAULT_CORPUS, REPO, ensure_debian_packages, free_port, scratch_dir

SOURCE = "progressive_dalmatian.jpg"  # 960x640: quick to render even under valgrind
URL = "/picture/" + SOURCE + "?scalex=300&encoding=jpeg"


def instructions_per_hit(scratch: Path, corpus: Path, storage: str, hits: int) -> float:
    scratch.mkdir(parents=True)
    config = scratch / "config.toml"
    port = free_port()
    config.write_text(
        f'[server]\nhost = "127.0.0.1"\nport = {port}\n'
        f'[sources.local]\nroot = "{corpus}"\ngenerate_demo = false\n'
        f'[sources.remote]\ncache_dir = "{scratch / "originals"}"\n'
        f'[cache]\ndir = "{scratch / "cache"}"\n[log]\naccess_log = false\n[render]\nworkers = 1\n{storage}'
    )
    out = scratch / "callgrind.out"
    server = subprocess.Popen(
        ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}"]
        + [str(REPO / ".venv/bin/python"), "-m", "imgproxy", "serve", "--config", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=300) as client:
            deadline = time.monotonic() + 600  # python starts ~50x slower under valgrind
            while True:
                try:
                    if client.get(URL).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline or server.poll() is not None:
                    raise RuntimeError("the server under valgrind did not answer")
                time.sleep(0.5)
            for _ in range(20):  # into the memory tier, code paths warm
                client.get(URL)
            subprocess.run(["callgrind_control", "-i", "on", str(server.pid)], check=True, capture_output=True)
            for _ in range(hits):
                if client.get(URL).headers.get("x-cache") != "HIT":
                    raise RuntimeError("a request that should hit missed")
            subprocess.run(["callgrind_control", "-i", "off", str(server.pid)], check=True, capture_output=True)
    finally:
        server.terminate()
        server.wait(120)
    totals = [int(line.split()[1]) for line in out.read_text().splitlines() if line.startswith("totals:")]
    return max(totals) / hits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--hits", type=int, default=300)
    parser.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS)
    args = parser.parse_args()
    ensure_debian_packages(("valgrind", "valgrind"))
    sys.path.insert(0, str(REPO))
    from tests.s3_server import SeaweedFS  # the store the tests use

    scratch = scratch_dir("hitcost-")
    store = SeaweedFS(scratch / "seaweed")
    store.start()
    try:
        import obstore

        obstore.put(store.client(), SOURCE, (args.corpus / SOURCE).read_bytes())
        s3 = "".join(f'{k} = "{v}"\n' for k, v in store.settings["s3"].items())
        storage = f'[storage]\nbackend = "s3"\n[storage.s3]\n{s3}freshness = 3600\n'
        local = instructions_per_hit(scratch / "local", args.corpus, "", args.hits)
        remote = instructions_per_hit(scratch / "s3", args.corpus, storage, args.hits)
    finally:
        store.stop()
        shutil.rmtree(scratch, ignore_errors=True)
    print(f"instructions per hit ({args.hits} hits of {URL}, callgrind)")
    print(f"local {local:,.0f}")
    print(f"s3    {remote:,.0f}  ({remote / local - 1:+.1%} against local)")


if __name__ == "__main__":
    main()
