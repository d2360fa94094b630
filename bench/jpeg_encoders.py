"""JPEG encoders at equal look: Pillow's libjpeg-turbo vs jpegli vs mozjpeg's lossless pass.

    python bench/jpeg_encoders.py [--corpus DIR] [--widths 480,1080,1920]

Per photo (bench/bytes.py's set) and width (not above the photo's upright width), the pixels are
the upright full decode resized by Pillow LANCZOS, and every encoder gets exactly those. The
yardstick is libjpeg-turbo at quality 80 through imgproxy.encode with the default [render]
settings (progressive, 4:2:0); its SSIMULACRA2 against the unencoded pixels (bench/ssimulacra2.py)
is the target look. Then:
- mozjpeg-lossless-optimization on that output: the same pixels (checked), so the same look;
- pyjpegli (jpegli; its API takes only a quality: baseline, 4:2:0) at the lowest integer
  quality whose SSIMULACRA2 reaches the target (bisection over 30..100): equal or better look;
- that jpegli output through the mozjpeg lossless pass (progressive, like our setting).
Bytes are exact. Times are CPU time (process_time, all threads) of one encode, the median of
3 (the machine is shared and noisy; wall time would not mean much), on this process's core.
Each encoder is also run twice on one image to check it is deterministic (same input, same bytes).
"""

from __future__ import annotations

import argparse
import io
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import mozjpeg_lossless_optimization
import numpy as np
import pyjpegli
from bytes import DEFAULT_CORPUS, WIDTHS, upright
from formats import photos
from PIL import Image
from run import format_table
from ssimulacra2 import Reference

from imgproxy.config import RenderConfig
from imgproxy.encode import encode
from imgproxy.render import Rendered

TARGET_QUALITY = 80
LOWEST, HIGHEST = 30, 100


def libjpeg(image: Image.Image, quality: int) -> bytes:
    return encode(Rendered(frames=[image]), "jpeg", quality, RenderConfig())


def jpegli(image: Image.Image, quality: int) -> bytes:
    return pyjpegli.encode(image.tobytes(), image.width, image.height, quality=quality)


def cpu_ms(fn: Callable[[], bytes]) -> tuple[bytes, float]:
    """(output, median CPU ms of 3 runs)."""
    times, out = [], b""
    for _ in range(3):
        started = time.process_time()
        out = fn()
        times.append((time.process_time() - started) * 1000)
    return out, statistics.median(times)


def decode(body: bytes) -> Image.Image:
    with Image.open(io.BytesIO(body)) as image:
        return image.convert("RGB")


def equal_look_quality(image: Image.Image, reference: Reference, target: float) -> tuple[int, bytes, float]:
    """The lowest jpegli quality whose score reaches `target` (HIGHEST when none does)."""
    low, high = LOWEST, HIGHEST
    found: tuple[int, bytes, float] | None = None
    while low <= high:
        middle = (low + high) // 2
        body = jpegli(image, middle)
        score = reference.score(decode(body))
        if score >= target:
            found, high = (middle, body, score), middle - 1
        else:
            low = middle + 1
    if found is None:
        body = jpegli(image, HIGHEST)
        found = (HIGHEST, body, reference.score(decode(body)))
    return found


def measure(image: Image.Image) -> dict[str, float]:
    reference = Reference(image)
    base, base_ms = cpu_ms(lambda: libjpeg(image, TARGET_QUALITY))
    target = reference.score(decode(base))
    moz, moz_ms = cpu_ms(lambda: mozjpeg_lossless_optimization.optimize(base))
    if not np.array_equal(np.asarray(decode(moz)), np.asarray(decode(base))):
        raise AssertionError("mozjpeg's lossless pass changed the pixels")
    quality, _, score = equal_look_quality(image, reference, target)
    li, li_ms = cpu_ms(lambda: jpegli(image, quality))
    li_moz, li_moz_ms = cpu_ms(lambda: mozjpeg_lossless_optimization.optimize(li))
    return {
        "lj KB": len(base) / 1000,
        "S2": target,
        "lj ms": base_ms,
        "moz KB": len(moz) / 1000,
        "moz ms": base_ms + moz_ms,
        "jpegli q": quality,
        "jpegli S2": score,
        "jpegli KB": len(li) / 1000,
        "jpegli ms": li_ms,
        "jpegli+moz KB": len(li_moz) / 1000,
        "jpegli+moz ms": li_ms + li_moz_ms,
    }


def deterministic(image: Image.Image) -> dict[str, bool]:
    base = libjpeg(image, TARGET_QUALITY)
    return {
        "libjpeg-turbo": base == libjpeg(image, TARGET_QUALITY),
        "mozjpeg lossless": mozjpeg_lossless_optimization.optimize(base)
        == mozjpeg_lossless_optimization.optimize(base),
        "jpegli": jpegli(image, TARGET_QUALITY) == jpegli(image, TARGET_QUALITY),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS, help="holds photos/ and bench/")
    parser.add_argument("--widths", default=",".join(map(str, WIDTHS)), help="comma-separated output widths")
    args = parser.parse_args()
    widths = [int(w) for w in args.widths.split(",")]
    rows: dict[str, list[dict[str, float]]] = {}
    checked: dict[str, bool] = {}
    for path in photos(args.corpus.resolve()):
        full = upright(path)
        for width in (w for w in widths if w <= full.width):
            image = full.resize((width, round(width * full.height / full.width)), Image.Resampling.LANCZOS)
            rows.setdefault(path.name, []).append(measure(image))
            if not checked:
                checked = deterministic(image)
    columns = list(next(iter(rows.values()))[0])
    pairs = [r for per_photo in rows.values() for r in per_photo]
    lines = [[name, *(f"{statistics.fmean(r[c] for r in found):.1f}" for c in columns)] for name, found in rows.items()]
    lines.append(["median (all pairs)", *(f"{statistics.median(r[c] for r in pairs):.1f}" for c in columns)])
    lines.append(["total KB (all pairs)"] + [f"{sum(r[c] for r in pairs):.0f}" if "KB" in c else "" for c in columns])
    print(
        f"{len(pairs)} photo-width pairs, widths {widths}; per photo the mean over its widths. lj: libjpeg-turbo q80 "
        "(progressive 4:2:0, the service's encode); S2: its SSIMULACRA2, the target; moz: lj + mozjpeg lossless "
        "pass; jpegli: lowest quality reaching S2; ms: CPU ms per encode (median of 3; moz and +moz include the "
        "encode before them)"
    )
    print(format_table(["photo", *columns], lines))
    for c in ("moz", "jpegli", "jpegli+moz"):
        saved = 1 - sum(r[f"{c} KB"] for r in pairs) / sum(r["lj KB"] for r in pairs)
        time_ratio = statistics.median(r[f"{c} ms"] / r["lj ms"] for r in pairs)
        print(
            f"{c}: {saved:+.1%} bytes saved at equal look (summed), CPU time {time_ratio:.2f}x libjpeg-turbo's (median)"
        )
    print("deterministic (same input twice, same bytes): " + ", ".join(f"{k} {v}" for k, v in checked.items()))


if __name__ == "__main__":
    main()
