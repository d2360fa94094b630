"""Stock Pillow vs pillow-simd: our whole render (imgproxy.pipeline.render_original) per photo, in process.

Two worker processes, one per interpreter (stock: the one running this; simd: --simd, e.g.
.venv-simd/bin/python from `make PILLOW=simd install`), take the same jobs one at a time, A and B
interleaved (which goes first alternates), several rounds; times are medians over the rounds.
Per job: wall and CPU time of render_original, and the CPU time inside Image.resize (LANCZOS,
with its reduce()) and inside the encode. The outputs are compared here: bytes simd/stock, SSIM
simd vs stock, and SSIM of each against one LANCZOS pass over the full upright decode (stock).

    make bench-simd      # or: python bench/simd.py --simd .venv-simd/bin/python --rounds 3

`--server`: the same through HTTP, bench/run.py's cold workloads (server on one core, wrk on the
other) against a server under each interpreter, alternated, fresh server and cache each time.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CORPUS = REPO.parent / "shared" / "corpus"
WIDTHS = (480, 1080, 1920)
FORMATS = ("jpeg", "webp")


def photos() -> list[Path]:
    found = sorted((CORPUS / "photos").glob("large_*")) + sorted(
        p for p in (CORPUS / "bench").iterdir() if p.name != "MANIFEST.tsv"
    )
    return found


def worker() -> None:
    """Read jobs (JSON lines) on stdin, render each, write the output file, answer timings."""
    sys.path.insert(0, str(REPO))
    from PIL import Image

    from imgproxy import pipeline
    from imgproxy.config import Config
    from imgproxy.options import RenderOptions
    from imgproxy.sources import Original

    spent = {"resize": 0.0, "encode": 0.0}

    def timed(name, fn):
        def wrapper(*args, **kwargs):
            started = time.process_time()
            try:
                return fn(*args, **kwargs)
            finally:
                spent[name] += time.process_time() - started

        return wrapper

    Image.Image.resize = timed("resize", Image.Image.resize)  # type: ignore[method-assign]
    pipeline.encode_within = timed("encode", pipeline.encode_within)  # type: ignore[assignment]
    config = Config()
    import PIL

    print(json.dumps({"pillow": PIL.__version__}), flush=True)
    for line in sys.stdin:
        job = json.loads(line)
        path = Path(job["photo"])
        st = path.stat()
        original = Original(
            id=f"local:{path.name}", version=f"{st.st_mtime_ns}-{st.st_size}", size=st.st_size, path=str(path)
        )
        spent.update(resize=0.0, encode=0.0)
        wall, cpu = time.perf_counter(), time.process_time()
        body, _ = pipeline.render_original(original, RenderOptions(width=job["width"]), job["fmt"], config)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        Path(job["out"]).write_bytes(body)
        answer = {"wall": wall * 1000, "cpu": cpu * 1000, "bytes": len(body)}
        answer.update({k: v * 1000 for k, v in spent.items()})
        print(json.dumps(answer), flush=True)


class Worker:
    def __init__(self, python: str) -> None:
        env = dict(os.environ, PYTHONPATH=str(REPO))
        self.proc = subprocess.Popen(
            [python, __file__, "--worker"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env
        )
        self.pillow = self._read()["pillow"]

    def _read(self) -> dict:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("worker exited")
        return json.loads(line)

    def run(self, job: dict) -> dict:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(job) + "\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self) -> None:
        if self.proc.stdin:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def reference(path: Path, size: tuple[int, int], cache: dict):
    from PIL import Image, ImageOps

    if path not in cache:
        cache.clear()  # one full decode at a time
        with Image.open(path) as image:
            cache[path] = ImageOps.exif_transpose(image).convert("RGB")
    return cache[path].resize(size, Image.Resampling.LANCZOS)


def table(headers: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + " --- |" * len(headers)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--stock", default=sys.executable, help="interpreter with stock Pillow")
    parser.add_argument("--simd", default=str(REPO / ".venv-simd/bin/python"), help="interpreter with pillow-simd")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--random-widths", type=int, default=2, help="widths 301-1999 per photo, besides 480/1080/1920")
    parser.add_argument("--only", default="", help="comma-separated substrings of photo names")
    parser.add_argument("--json", default="", help="also write every measurement here")
    parser.add_argument("--server", action="store_true", help="bench/run.py's cold workloads instead")
    parser.add_argument("--seconds", type=float, default=float(os.environ.get("BENCH_SECONDS", 4)))
    args = parser.parse_args()
    if args.worker:
        worker()
        return
    if args.server:
        servers(args)
        return
    sys.path.insert(0, str(REPO))
    from PIL import Image
    from quality import ssim

    import imgproxy.loader  # noqa: F401  (HEIF and AVIF readers for the comparisons)

    rng = random.Random(16)
    chosen = [p for p in photos() if not args.only or any(s in p.name for s in args.only.split(","))]
    jobs = [
        {"photo": str(p), "width": w, "fmt": f}
        for p in chosen
        for w in (*WIDTHS, *sorted(rng.randint(301, 1999) for _ in range(args.random_widths)))
        for f in FORMATS
    ]
    builds = {"stock": Worker(args.stock), "simd": Worker(args.simd)}
    print(f"stock: Pillow {builds['stock'].pillow}, simd: Pillow {builds['simd'].pillow}", file=sys.stderr)
    results: dict[tuple[int, str], list[dict]] = {}
    scratch = Path(tempfile.mkdtemp(prefix="imgproxy-simd-"))
    try:
        for round_ in range(args.rounds):
            order = list(range(len(jobs)))
            random.Random(round_).shuffle(order)
            for n, i in enumerate(order):
                names = ["stock", "simd"] if (n + round_) % 2 == 0 else ["simd", "stock"]
                for name in names:
                    job = dict(jobs[i], out=str(scratch / f"{i}-{name}"))
                    results.setdefault((i, name), []).append(builds[name].run(job))
            print(f"round {round_ + 1}/{args.rounds} done", file=sys.stderr)
        per_job = []
        cache: dict = {}
        for i, job in enumerate(jobs):
            med = {
                name: {k: statistics.median(r[k] for r in results[(i, name)]) for k in results[(i, name)][0]}
                for name in builds
            }
            with Image.open(scratch / f"{i}-stock") as a, Image.open(scratch / f"{i}-simd") as b:
                a, b = a.convert("RGB"), b.convert("RGB")
                ref = reference(Path(job["photo"]), a.size, cache)
                scores = {"between": ssim(a, b), "stock": ssim(ref, a), "simd": ssim(ref, b)}
            per_job.append({**job, **{f"{n}_{k}": v for n in med for k, v in med[n].items()}, "ssim": scores})
    finally:
        for build in builds.values():
            build.close()
        for f in scratch.iterdir():
            f.unlink()
        scratch.rmdir()
    if args.json:
        Path(args.json).write_text(json.dumps(per_job, indent=1))
    report(per_job, chosen, args.rounds)


def servers(args: argparse.Namespace) -> None:
    import dataclasses
    import shutil

    import run

    workloads = tuple(w for w in run.WORKLOADS if w.cold and w.connections == 2)
    run.ensure_debian_packages(("wrk", "wrk"))
    run.pin_self_to_client_core()
    scratch = run.scratch_dir("simd-")
    rows: dict[tuple[str, str], list[dict]] = {}
    try:
        corpus = run.prepare_corpus(CORPUS / "photos", scratch)
        for round_ in range(args.rounds):
            for build in ("stock", "simd") if round_ % 2 == 0 else ("simd", "stock"):
                python = args.stock if build == "stock" else args.simd
                server = run.imgproxy_server(corpus, name=f"{build}-{round_}")
                server = dataclasses.replace(
                    server, command=lambda port, dir, s=server, py=python: [py, *s.command(port, dir)[1:]]
                )
                for row in run.bench_server(server, workloads, args.seconds, scratch, corpus)[0]:
                    rows.setdefault((row["workload"], build), []).append(row)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print(
        f"\nserver on core {run.SERVER_CPUS}, wrk on {run.CLIENT_CPUS}, {args.seconds:g} s each, {args.rounds} rounds"
    )
    print("(req/s: median of rounds; bytes and SSIM: bench/run.py's fixed sample, last round)\n")
    lines = []
    for workload in workloads:
        stock, simd = (rows[(workload.name, b)] for b in ("stock", "simd"))
        rps = [statistics.median(r["rps"] for r in rs) for rs in (stock, simd)]
        p99 = [statistics.median(r["p99_ms"] for r in rs) for rs in (stock, simd)]
        lines.append(
            [
                workload.name,
                f"{rps[0]:.1f} / {rps[1]:.1f}",
                f"{rps[1] / rps[0]:.2f}",
                f"{p99[0]:.0f} / {p99[1]:.0f}",
                f"{stock[-1]['mean_bytes'] / 1000:.1f} / {simd[-1]['mean_bytes'] / 1000:.1f} KB",
                f"{stock[-1]['ssim']:.4f} / {simd[-1]['ssim']:.4f}",
                f"{sum(r['failed'] for r in stock + simd)}",
            ]
        )
    headers = ["workload", "req/s stock / simd", "simd/stock", "p99 ms", "mean bytes", "SSIM vs ref", "failed"]
    print(table(headers, lines))


def report(per_job: list[dict], chosen: list[Path], rounds: int) -> None:
    for fmt in FORMATS:
        rows, ratios, cpu_ratios, resize_ratios = [], [], [], []
        for photo in chosen:
            js = [j for j in per_job if j["photo"] == str(photo) and j["fmt"] == fmt]
            if not js:
                continue
            total = lambda key, js=js: sum(j[key] for j in js) / len(js)
            wall = total("simd_wall") / total("stock_wall")
            cpu = total("simd_cpu") / total("stock_cpu")
            resize = total("simd_resize") / max(total("stock_resize"), 1e-9)
            ratios.append(wall)
            cpu_ratios.append(cpu)
            resize_ratios.append(resize)
            rows.append(
                [
                    photo.name,
                    f"{total('stock_wall'):.1f}",
                    f"{total('simd_wall'):.1f}",
                    f"{wall:.2f}",
                    f"{total('stock_cpu'):.1f} / {total('simd_cpu'):.1f}",
                    f"{total('stock_resize'):.1f} / {total('simd_resize'):.1f}",
                    f"{total('stock_encode'):.1f} / {total('simd_encode'):.1f}",
                    f"{sum(j['simd_bytes'] for j in js) / sum(j['stock_bytes'] for j in js):.4f}",
                    f"{min(j['ssim']['between'] for j in js):.4f}",
                    f"{statistics.fmean(j['ssim']['stock'] for j in js):.4f} / "
                    f"{statistics.fmean(j['ssim']['simd'] for j in js):.4f}",
                ]
            )
        rows.append(
            [
                "**median**",
                "",
                "",
                f"{statistics.median(ratios):.2f}",
                f"ratio {statistics.median(cpu_ratios):.2f}",
                f"ratio {statistics.median(resize_ratios):.2f}",
                "",
                "",
                "",
                "",
            ]
        )
        print(f"\n{fmt.upper()}: mean per render over {len(WIDTHS)}+random widths, median of {rounds} rounds (ms)\n")
        headers = [
            "photo",
            "stock wall",
            "simd wall",
            "simd/stock",
            "CPU stock / simd",
            "resize CPU",
            "encode CPU",
            "bytes simd/stock",
            "min SSIM simd vs stock",
            "SSIM vs ref stock / simd",
        ]
        print(table(headers, rows))


if __name__ == "__main__":
    main()
