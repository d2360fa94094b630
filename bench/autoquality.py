"""Which score `quality=auto` should search on, and its target: SSIMULACRA2 is the judge.

    python bench/autoquality.py [--corpus DIR] [--widths 480,1080,1920] [--save FILE] [--only A,B] [--judged Q,Q]
        [--part I/N] [--server]
    python bench/autoquality.py --load FILE [FILE ...]

`--save` keeps the measurements as JSON (one run per width or per `--part` of the photos can go on
each core); `--load` prints the summary of saved runs together.

Every photo of <corpus>/photos/large_* and <corpus>/bench/ (the HEIC too) is rendered by
imgproxy.render to each width (sRGB pixels), then encoded as JPEG at q 30..70 in steps of 10, then 75..95 in steps of 5.
For each encode: every candidate server score (imgproxy.perceptual, and variants) with its CPU
time, and at q 30, 50, 70, 80, 90 and 95 SSIMULACRA2 (bench/ssimulacra2.py: libjxl's metric, built to
track human ratings; 100 = identical, ~90 very high, ~70 high, ~50 medium quality).

For each candidate, the target is set so that the median SSIMULACRA2 of what the search keeps
(the smallest q on the grid whose score meets the target; SSIMULACRA2 interpolated in q) equals
fixed q80's median; then the candidates are compared by how steady that SSIMULACRA2 is over the
images (standard deviation, worst) and by bytes and CPU time. The best candidate is the one whose
fixed target gives the same look on every image: the point of `quality=auto`.

`--server` then runs the real thing at 1080 px (imgproxy.pipeline.render_original, config.toml's
settings): per photo, bytes and SSIMULACRA2 at fixed q80 vs quality=auto, encodes made, render
ms (median of 3, CPU time of the process), for JPEG, and medians for WebP, AVIF and JXL; then
auto_format "first" vs "smallest" (bytes, render ms, which format won).
"""

from __future__ import annotations

import dataclasses
import io
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from formats import configured, photos, rendered  # noqa: E402
from quality import REPO, original  # noqa: E402
from ssimulacra2 import ssimulacra2  # noqa: E402  (bench/ssimulacra2.py, the judge bench/bytes.py uses)

from imgproxy import perceptual  # noqa: E402
from imgproxy.config import Config  # noqa: E402
from imgproxy.encode import encode  # noqa: E402
from imgproxy.options import RenderOptions  # noqa: E402
from imgproxy.pipeline import render_original  # noqa: E402
from imgproxy.render import Rendered  # noqa: E402

DEFAULT_CORPUS = REPO.parent / "shared" / "corpus"
QUALITIES = (30, 40, 50, 60, 70, 75, 80, 85, 90, 95)
JUDGED = (30, 50, 70, 80, 90, 95)
BASELINE = 80


def _ycc(image: Image.Image) -> list[np.ndarray]:
    return [np.asarray(band, dtype=np.float32) for band in image.convert("YCbCr").split()]


def score_ssim(ref: Image.Image, out: Image.Image) -> float:
    """Single-scale luma SSIM at full size."""
    return perceptual.ssim(perceptual.luma(ref), perceptual.luma(out))


def score_ssim_small(ref: Image.Image, out: Image.Image) -> float:
    """Luma SSIM on copies downscaled to at most 512 px wide (cheaper)."""
    factor = max(1, round(ref.width / 512))
    size = (ref.width // factor, ref.height // factor)
    return perceptual.ssim(
        perceptual.luma(ref.resize(size, Image.Resampling.BOX)), perceptual.luma(out.resize(size, Image.Resampling.BOX))
    )


def score_msssim(ref: Image.Image, out: Image.Image) -> float:
    """imgproxy.perceptual's multi-scale luma SSIM (full, 1/2, 1/4)."""
    return perceptual.Reference(ref).score(out)


def score_ssim_ycc(ref: Image.Image, out: Image.Image) -> float:
    """SSIM of Y, Cb and Cr at full size, weighted 0.8 / 0.1 / 0.1."""
    weights = (0.8, 0.1, 0.1)
    return sum(w * perceptual.ssim(r, d) for w, r, d in zip(weights, _ycc(ref), _ycc(out)))


def score_msssim_ycc(ref: Image.Image, out: Image.Image) -> float:
    """Multi-scale SSIM of Y (weight 0.8) and of Cb and Cr (0.1 each)."""
    weights = (0.8, 0.1, 0.1)
    return sum(
        w * sum(perceptual.ssim(a, b) for a, b in zip(perceptual.pyramid(r), perceptual.pyramid(d))) / perceptual.SCALES
        for w, r, d in zip(weights, _ycc(ref), _ycc(out))
    )


CANDIDATES: dict[str, Callable[[Image.Image, Image.Image], float]] = {
    "ssim-luma": score_ssim,
    "ssim-luma-512": score_ssim_small,
    "ms-ssim-luma": score_msssim,
    "ssim-ycc": score_ssim_ycc,
    "ms-ssim-ycc": score_msssim_ycc,
}


@dataclasses.dataclass
class Row:
    name: str
    bytes: dict[int, int]  # q -> bytes
    scores: dict[str, dict[int, float]]  # candidate -> q -> score
    cost_ms: dict[str, float]  # candidate -> median CPU ms per score
    judged: dict[int, float]  # q -> SSIMULACRA2


def s2(reference_png: bytes, body: bytes) -> float:
    return ssimulacra2(Image.open(io.BytesIO(reference_png)), Image.open(io.BytesIO(body)))


def measure(name: str, image: Image.Image, config: Config, judged: tuple[int, ...] = JUDGED) -> Row:
    reference = io.BytesIO()
    image.save(reference, "PNG")
    row = Row(name, {}, {c: {} for c in CANDIDATES}, {}, {})
    costs: dict[str, list[float]] = {c: [] for c in CANDIDATES}
    for q in QUALITIES:
        body = encode(Rendered([image]), "jpeg", q, config.render)
        row.bytes[q] = len(body)
        with Image.open(io.BytesIO(body)) as decoded:
            out = decoded.convert("RGB")
        for candidate, fn in CANDIDATES.items():
            started = time.thread_time()
            row.scores[candidate][q] = fn(image, out)
            costs[candidate].append((time.thread_time() - started) * 1000)
        if q in judged:
            row.judged[q] = s2(reference.getvalue(), body)
    row.cost_ms = {c: statistics.median(v) for c, v in costs.items()}
    return row


def judged_at(row: Row, q: float) -> float:
    """SSIMULACRA2 at `q`, linear between the judged qualities."""
    judged = sorted(row.judged)
    return float(np.interp(q, judged, [row.judged[j] for j in judged]))


def chosen(row: Row, candidate: str, target: float) -> int:
    """What a search keeps: the smallest q whose score meets the target (the largest when none does)."""
    return next((q for q in QUALITIES if row.scores[candidate][q] >= target), QUALITIES[-1])


def calibrate(rows: list[Row], candidate: str, goal: float) -> float:
    """The target whose kept outputs have a median SSIMULACRA2 of `goal` (bisection on the target)."""
    low, high = 0.5, 1.0
    for _ in range(40):
        middle = (low + high) / 2
        median = statistics.median(judged_at(r, chosen(r, candidate, middle)) for r in rows)
        low, high = (middle, high) if median < goal else (low, middle)
    return round(high, 4)


def _spread(values: list[float]) -> str:
    """Median, median absolute deviation (robust to the odd image SSIMULACRA2 scores far off), stdev, min."""
    median = statistics.median(values)
    mad = statistics.median(abs(v - median) for v in values)
    return f"{median:>7.1f} {mad:>6.2f} {statistics.pstdev(values):>6.2f} {min(values):>7.1f}"


def summary(rows: list[Row]) -> None:
    fixed = [r.judged[BASELINE] for r in rows]
    goal = statistics.median(fixed)
    base_bytes = statistics.median(r.bytes[BASELINE] for r in rows)
    print(f"\n{len(rows)} renders; SSIMULACRA2 (S2) of what each keeps: median, MAD, stdev, min")
    print(
        f"{'score':<14} {'target':>7} {'S2 med':>7} {'S2 MAD':>6} {'S2 sd':>6} {'S2 min':>7} {'KB med':>7} {'ms/score':>8}"
    )
    print(f"{'fixed q80':<14} {'':>7} {_spread(fixed)} {base_bytes / 1000:>7.1f}")
    for candidate in CANDIDATES:
        if any(candidate not in r.scores for r in rows):
            continue  # not measured at every width
        target = calibrate(rows, candidate, goal)
        kept = [chosen(r, candidate, target) for r in rows]
        looks = [judged_at(r, q) for r, q in zip(rows, kept)]
        sizes = [r.bytes[q] for r, q in zip(rows, kept)]
        cost = statistics.median(r.cost_ms[candidate] for r in rows)
        print(f"{candidate:<14} {target:>7.4f} {_spread(looks)} {statistics.median(sizes) / 1000:>7.1f} {cost:>8.1f}")


def server(corpus: Path, config: Config, width: int) -> None:
    """The real render path: fixed q80 vs quality=auto per photo (JPEG), then medians per format."""
    print(f"\nserver path at {width} px, auto_quality_target {config.render.auto_quality_target}")
    for fmt in ("jpeg", "webp", "avif", "jxl"):
        lines = []
        for path in photos(corpus):
            source = original(path)
            reference = io.BytesIO()
            rendered(path, width, config).frames[0].save(reference, "PNG")
            figures = []
            for quality in (None, "auto"):
                options = RenderOptions(width=width, quality=quality)
                times = []
                for _ in range(3):
                    started = time.process_time()  # the encoders' own threads count too
                    body, _meta = render_original(source, options, fmt, config)
                    times.append((time.process_time() - started) * 1000)
                figures.append((len(body), s2(reference.getvalue(), body), statistics.median(times)))
            lines.append((path.name, *figures))
        if fmt == "jpeg":
            print(f"{'photo':<30} {'KB q80':>7} {'S2':>5} {'ms':>5} | {'KB auto':>7} {'S2':>5} {'ms':>5}")
            for name, (b1, s1, t1), (b2, s2_, t2) in lines:
                print(f"{name:<30} {b1 / 1000:>7.1f} {s1:>5.1f} {t1:>5.0f} | {b2 / 1000:>7.1f} {s2_:>5.1f} {t2:>5.0f}")
        med = [statistics.median(line[i][j] for line in lines) for i in (1, 2) for j in (0, 1, 2)]
        sd = [statistics.pstdev(line[i][1] for line in lines) for i in (1, 2)]
        print(
            f"{fmt:<6} median  fixed: {med[0] / 1000:.1f} KB S2 {med[1]:.1f} (sd {sd[0]:.1f}) {med[2]:.0f} ms | "
            f"auto: {med[3] / 1000:.1f} KB S2 {med[4]:.1f} (sd {sd[1]:.1f}) {med[5]:.0f} ms"
        )


def smallest(corpus: Path, config: Config, width: int) -> None:
    """auto_format: "first" (AVIF) vs "smallest" (AVIF, WebP, JXL and JPEG), fixed and auto quality."""
    print(f"\nauto_format at {width} px, Accept: image/avif,image/webp,image/jxl (medians over the photos)")
    for quality in (None, "auto"):
        figures: dict[str, list[tuple[int, float]]] = {"auto:avif,webp": [], "smallest:avif,webp,jxl": []}
        chosen: dict[str, int] = {}
        for path in photos(corpus):
            options = RenderOptions(width=width, quality=quality)
            for requested, found in figures.items():
                times = []
                for _ in range(3):
                    started = time.process_time()
                    body, meta = render_original(original(path), options, requested, config)
                    times.append((time.process_time() - started) * 1000)
                found.append((len(body), statistics.median(times)))
                if requested.startswith("smallest"):
                    chosen[meta.content_type] = chosen.get(meta.content_type, 0) + 1
        (first, best) = figures.values()
        print(
            f"quality={quality or 'default'}: first {statistics.median(b for b, _ in first) / 1000:.1f} KB "
            f"{statistics.median(t for _, t in first):.0f} ms | smallest "
            f"{statistics.median(b for b, _ in best) / 1000:.1f} KB {statistics.median(t for _, t in best):.0f} ms, "
            f"bytes/first {statistics.median(b / f for (b, _), (f, _) in zip(best, first)):.2f}, chosen {chosen}"
        )


def main() -> None:
    args = sys.argv[1:]
    corpus = Path(args[args.index("--corpus") + 1]) if "--corpus" in args else DEFAULT_CORPUS
    widths = [int(w) for w in (args[args.index("--widths") + 1] if "--widths" in args else "480,1080,1920").split(",")]
    if "--load" in args:
        loaded = []
        for file in args[args.index("--load") + 1 :]:
            loaded += [Row(**_keys_to_int(r)) for r in json.loads(Path(file).read_text())]
        summary(loaded)
        return
    if "--only" in args:  # a subset of the candidates (the slow ones take most of a run)
        only = args[args.index("--only") + 1].split(",")
        for name in list(CANDIDATES):
            if name not in only:
                del CANDIDATES[name]
    judged = tuple(int(q) for q in args[args.index("--judged") + 1].split(",")) if "--judged" in args else JUDGED
    config = configured()
    if "--server" in args:
        server(corpus, config, 1080)
        smallest(corpus, config, 1080)
        return
    part, parts = (int(v) for v in args[args.index("--part") + 1].split("/")) if "--part" in args else (1, 1)
    rows = []
    for path in photos(corpus)[part - 1 :: parts]:
        for width in widths:
            image = rendered(path, width, config).frames[0]
            row = measure(f"{path.name}@{width}", image, config, judged)
            rows.append(row)
            print(
                f"{row.name:<36} q80 {row.bytes[BASELINE] / 1000:6.1f} KB S2 {row.judged[BASELINE]:5.1f}  "
                + "  ".join(f"{c} {row.scores[c][BASELINE]:.4f}/{row.cost_ms[c]:.0f}ms" for c in CANDIDATES),
                flush=True,
            )
    if "--save" in args:
        Path(args[args.index("--save") + 1]).write_text(json.dumps([dataclasses.asdict(r) for r in rows]))
    summary(rows)


def _keys_to_int(row: dict) -> dict:
    """JSON turned the qualities into strings."""
    row["bytes"] = {int(q): v for q, v in row["bytes"].items()}
    row["judged"] = {int(q): v for q, v in row["judged"].items()}
    row["scores"] = {c: {int(q): v for q, v in by_q.items()} for c, by_q in row["scores"].items()}
    return row


if __name__ == "__main__":
    main()
