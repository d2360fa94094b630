"""quality=auto's score and per-format targets, calibrated on SSIMULACRA2 against thumbor's q80.

    python bench/autotarget.py --grid 480,1080 [--only A,B] --save FILE   (one process per width fits a core)
    python bench/autotarget.py --thumbor --save FILE
    python bench/autotarget.py --load FILE [FILE ...] --thumbor-load FILE

`--grid`: every photo of <corpus>/photos/large_* and <corpus>/bench/ at each width, rendered as the
server does (config.toml), encoded per format at a few qualities (JPEG by libjpeg-turbo and by
jpegli, WebP, AVIF at speed 9 and 7); per encode its bytes, its SSIMULACRA2 against bench/bytes.py's
reference (Pillow LANCZOS of the upright full decode) and the parts of the candidate scores against
the rendered pixels (imgproxy.perceptual: luma SSIM per scale, Cb and Cr SSIM at half size).
`--thumbor`: thumbor 7.8's q80 answers for the same photos and widths (JPEG, and WebP for Chrome's
Accept), scored the same way (bench/bytes.py's code).
`--load`: per format and candidate score (luma only, luma + a share of chroma, and SSIMULACRA2 itself
as the oracle) as a fixed target, and imgproxy.perceptual's score as a ratio target (the pair's
distance, 1 - score, at most a ratio times that of its jpegli q80 encode: what the server does), the
target or ratio whose kept outputs (the crossing quality, bytes and SSIMULACRA2 interpolated
between the measured qualities) have thumbor's median SSIMULACRA2 (JPEG's for JPEG, its WebP
answer's for WebP and AVIF); then the kept outputs' spread, smallest look, bytes against
thumbor, worst pair against thumbor, and the median quality kept and score slope there (the search's
first guess and step, imgproxy/encode.py's AUTO_FIRST and AUTO_SLOPE).
"""

from __future__ import annotations

import dataclasses
import io
import json
import statistics
import sys
import typing
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

sys.path.insert(0, str(Path(__file__).resolve().parent))
from formats import photos, rendered  # noqa: E402
from ssimulacra2 import Reference as Judge  # noqa: E402

from imgproxy import perceptual  # noqa: E402
from imgproxy.config import load_config  # noqa: E402
from imgproxy.encode import encode  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
CORPUS = REPO.parent / "shared" / "corpus"
JPEG_QS = [40, 50, 60, 70, 80, 90]
FORMATS: dict[str, tuple[str, dict[str, typing.Any], list[int]]] = {  # name -> (format, settings changes, qualities)
    "jpeg": ("jpeg", {}, JPEG_QS),
    "jpegli": ("jpeg", {"jpeg_encoder": "jpegli"}, JPEG_QS),
    "webp": ("webp", {}, [50, 65, 80, 90]),
    "avif9": ("avif", {}, [40, 50, 60, 70, 80]),
    "avif7": ("avif", {"avif_speed": 7}, [45, 55, 65, 75]),
}
THUMBOR = {"jpeg": "jpeg/thumbor q80", "jpegli": "jpeg/thumbor q80"}  # others: Chrome's answer (WebP)


def grid(widths: list[int], only: list[str]) -> list[dict]:
    config = load_config(REPO / "config.toml", environ={})  # as the server renders (no sRGB conversion)
    rows: list[dict] = []
    for path in photos(CORPUS):
        name = path.relative_to(CORPUS).as_posix()
        if only and not any(o in name for o in only):
            continue
        with Image.open(path) as source:
            full = ImageOps.exif_transpose(source).convert("RGB")
        for width in (w for w in widths if w <= full.width):
            image = rendered(path, width, config)
            frame = image.frames[0].convert("RGB")
            judge = Judge(full.resize(frame.size, Image.Resampling.LANCZOS))
            y, cb, cr = perceptual.planes(frame)
            levels = perceptual.pyramid(y)
            for label, (fmt, changes, qualities) in FORMATS.items():
                settings = dataclasses.replace(config.render, **changes)
                for q in qualities:
                    body = encode(image, fmt, q, settings)
                    with Image.open(io.BytesIO(body)) as decoded:
                        out = decoded.convert("RGB")
                    dy, dcb, dcr = perceptual.planes(out)
                    rows.append(
                        {
                            "image": name,
                            "width": width,
                            "fmt": label,
                            "q": q,
                            "bytes": len(body),
                            "s2": judge.score(out),
                            "y": [perceptual.ssim(a, b) for a, b in zip(levels, perceptual.pyramid(dy))],
                            "cb": perceptual.ssim(cb, dcb),
                            "cr": perceptual.ssim(cr, dcr),
                        }
                    )
            print(f"  {name} {width}", file=sys.stderr, flush=True)
    return rows


def thumbor() -> list[dict]:
    import shutil

    import bytes as bench_bytes
    from peers import install_thumbor

    images = [p.relative_to(CORPUS).as_posix() for p in photos(CORPUS)]
    pairs = []
    for image in images:
        with Image.open(CORPUS / image) as source:
            width = ImageOps.exif_transpose(source).width
        pairs += [(image, w) for w in bench_bytes.WIDTHS if w <= width]
    server = bench_bytes.thumbor_upright_auto(CORPUS, install_thumbor())
    wanted = [v for v in bench_bytes.variants({"thumbor": server, "ipx": server}) if v.server == "thumbor"]
    wanted = [v for v in wanted if v.group in ("jpeg", "chrome")]
    scratch = bench_bytes.scratch_dir("autotarget-")
    try:
        results = bench_bytes.fetch_all(server, wanted, pairs, scratch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    bench_bytes.score_all(CORPUS, results, pairs)
    return [{"image": i, "width": w, "key": k, "bytes": len(r.body), "s2": r.score} for (i, w, k), r in results.items()]


def _luma(r: dict) -> float:
    return sum(r["y"]) / len(r["y"])


def _with_chroma(share: float) -> Callable[[dict], float]:
    return lambda r: (1 - share) * _luma(r) + share * (r["cb"] + r["cr"]) / 2


CANDIDATES: dict[str, Callable[[dict], float]] = {
    "luma": _luma,
    **{f"luma+{share:.1f} chroma": _with_chroma(share) for share in (0.1, 0.2, 0.3, 0.4, 0.5)},
    "S2 (oracle)": lambda r: r["s2"] / 100,
}
RATIO = {"luma+0.3 chroma": _with_chroma(0.3)}  # imgproxy.perceptual's score as a ratio target
PROBE_QUALITY = 80  # imgproxy.encode.AUTO_PROBE_QUALITY


def _at(rows: list[dict], q: float) -> tuple[float, float]:
    """(SSIMULACRA2, bytes) at quality q, linear between the measured ones (bytes in log)."""
    qs = [r["q"] for r in rows]
    return float(np.interp(q, qs, [r["s2"] for r in rows])), float(
        np.exp(np.interp(q, qs, [np.log(r["bytes"]) for r in rows]))
    )


def crossing(rows: list[dict], score: Callable[[dict], float], target: float) -> float:
    """The quality where the score reaches the target (the ends when it never or always does)."""
    scores = [score(r) for r in rows]
    if scores[0] >= target:
        return rows[0]["q"]
    for a, b, sa, sb in zip(rows, rows[1:], scores, scores[1:]):
        if sb >= target:
            return a["q"] + (target - sa) / (sb - sa) * (b["q"] - a["q"]) if sb > sa else b["q"]
    return rows[-1]["q"]


def calibrate(
    groups: list[list[dict]], targets: Callable[[float], list[float]], goal: float, low: float, high: float
) -> float:
    """The knob (a score, or a ratio) whose kept outputs have a median SSIMULACRA2 of `goal`;
    `targets(knob)` gives each group's score target, which rises with the knob when low < high."""
    for _ in range(40):
        middle = (low + high) / 2
        median = statistics.median(_at(g, crossing(g, SCORE, t))[0] for g, t in zip(groups, targets(middle)))
        low, high = (middle, high) if median < goal else (low, middle)
    return high


SCORE: Callable[[dict], float] = _with_chroma(0.3)  # calibrate()'s score, set per candidate


def _ratio_targets(distances: list[float]) -> Callable[[float], list[float]]:
    return lambda knob: [1 - knob * d for d in distances]


def _same_targets(count: int) -> Callable[[float], list[float]]:
    return lambda knob: [knob] * count


def report(rows: list[dict], theirs: list[dict]) -> None:
    global SCORE
    by: dict[tuple[str, int, str], list[dict]] = {}
    for r in rows:
        by.setdefault((r["image"], r["width"], r["fmt"]), []).append(r)
    ref = {(t["image"], t["width"], t["key"]): t for t in theirs if t["s2"] is not None}
    for fmt in FORMATS:
        keys = sorted(k for k in by if k[2] == fmt and (k[0], k[1], "jpegli") in by)
        if not keys:
            continue
        groups = [sorted(by[k], key=lambda r: r["q"]) for k in keys]
        probes = [next(r for r in by[(k[0], k[1], "jpegli")] if r["q"] == PROBE_QUALITY) for k in keys]
        key = THUMBOR.get(fmt, "chrome/thumbor q80")
        pairs = [(g, ref.get((k[0], k[1], key))) for k, g in zip(keys, groups)]
        goal = statistics.median(t["s2"] for _, t in pairs if t)
        print(f"\n{fmt}: {len(keys)} pairs; goal: thumbor's ({key}) median S2 {goal:.2f}")
        print(
            f"{'score':<26} {'target':>7} {'med S2':>6} {'MAD':>5} {'min S2':>6} {'saved':>6} {'worst':>6} {'<-2':>3} "
            f"{'q med':>5} {'slope':>7}"
        )
        for name, score in [*CANDIDATES.items(), *[(f"{n}, ratio of jpegli q80's", s) for n, s in RATIO.items()]]:
            SCORE = score
            if "ratio" in name:  # 1 - knob x (1 - the probe's score): the target falls as the knob rises
                distances = [1 - score(p) for p in probes]
                knob = calibrate(groups, _ratio_targets(distances), goal, 5.0, 0.2)
                targets = [1 - knob * d for d in distances]
            else:
                knob = calibrate(groups, _same_targets(len(groups)), goal, 0.3, 1.0)
                targets = [knob] * len(groups)
            kept = [crossing(g, score, t) for g, t in zip(groups, targets)]
            looks = [_at(g, q) for g, q in zip(groups, kept)]
            s2 = [s for s, _ in looks]
            median = statistics.median(s2)
            both = [(look, t) for look, (_, t) in zip(looks, pairs) if t]
            saved = 1 - sum(b for (_, b), _ in both) / sum(t["bytes"] for _, t in both)
            drops = [s - t["s2"] for (s, _), t in both]
            slopes = []
            for g, q in zip(groups, kept):
                for a, b in zip(g, g[1:]):
                    if a["q"] <= q <= b["q"]:
                        slopes.append((score(b) - score(a)) / (b["q"] - a["q"]))
                        break
            print(
                f"{name:<26} {knob:>7.4f} {median:>6.2f} {statistics.median(abs(s - median) for s in s2):>5.2f} "
                f"{min(s2):>6.2f} {saved:>+6.1%} {min(drops):>+6.2f} {sum(d < -2 for d in drops):>3} "
                f"{statistics.median(kept):>5.1f} {statistics.median(slopes) if slopes else 0:>7.5f}"
            )


def main() -> None:
    args = sys.argv[1:]

    def value(flag: str) -> str:
        return args[args.index(flag) + 1]

    if "--grid" in args:
        only = value("--only").split(",") if "--only" in args else []
        found = grid([int(w) for w in value("--grid").split(",")], only)
        Path(value("--save")).write_text(json.dumps(found))
    elif "--thumbor" in args:
        Path(value("--save")).write_text(json.dumps(thumbor()))
    else:
        files = args[args.index("--load") + 1 : args.index("--thumbor-load")]
        rows, seen = [], set()
        for file in files:  # the first file measuring a (photo, width, format, quality) wins
            for r in json.loads(Path(file).read_text()):
                if (k := (r["image"], r["width"], r["fmt"], r["q"])) not in seen:
                    seen.add(k)
                    rows.append(r)
        report(rows, json.loads(Path(value("--thumbor-load")).read_text()))


if __name__ == "__main__":
    main()
