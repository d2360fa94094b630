"""Resize pipelines and encoder settings, measured: SSIM against a LANCZOS reference, and time.

    python bench/quality.py [--corpus DIR]

Runs in this process, pinned to one core (BENCH_SERVER_CPUS, default 0). Part 1 renders the
large corpus JPEGs to a spread of widths with:
- reference: the full decode, one LANCZOS pass (what every pipeline is compared against);
- thumbor's way: JPEG draft straight to the target size, then LANCZOS;
- ours: imgproxy.render with each `reducing_gap`, cold (decode included) and after an earlier
  request at another width (a kept decode is reused only at its own scale, so the pixels are the
  cold ones; only the time differs).
Part 2 encodes one 1280-px render of each 12-MP photo with the JPEG, WebP and AVIF settings
config.toml offers, and prints time, bytes and SSIM against the unencoded render per setting.
Part 3 times whole cold renders (decode, resize, encode) of those photos to 1280 px per format.

SSIM is the mean of Wang et al.'s index (11x11 Gaussian window, sigma 1.5) on luma. bench/peers.py
uses the same function on each server's actual output. Part 1 also gives SSIMULACRA2
(bench/ssimulacra2.py, bench/bytes.py's judge) of each render against the reference: what a
pipeline loses before any encoder runs (quality=auto renders with `auto_reducing_gap`).
"""

from __future__ import annotations

import dataclasses
import functools
import io
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from PIL import Image, ImageOps

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from imgproxy.budget import Deadline, MemoryBudget  # noqa: E402
from imgproxy.config import Config, LimitsConfig, RenderConfig  # noqa: E402
from imgproxy.loader import open_original  # noqa: E402
from imgproxy.options import RenderOptions  # noqa: E402
from imgproxy.pipeline import render_original  # noqa: E402
from imgproxy.render import render  # noqa: E402
from imgproxy.sources import Original  # noqa: E402

DEFAULT_CORPUS = REPO.parent / "shared" / "corpus" / "photos"
IMAGES = ("large_12mp_gallery.jpg", "large_12mp_bus.jpg", "large_9mp_harbour.jpg")
WIDTHS = (300, 480, 640, 800, 1000, 1150, 1400, 1700, 1999)
GAPS = (1.0, 1.5, 2.0)
ENCODE_WIDTH = 1280
SERVER_CPUS = os.environ.get("BENCH_SERVER_CPUS", "0")


def _gaussian(size: int = 11, sigma: float = 1.5) -> np.ndarray:
    x = np.arange(size) - size // 2
    g = np.exp(-(x * x) / (2 * sigma * sigma))
    return g / g.sum()


def _blur(a: np.ndarray, g: np.ndarray) -> np.ndarray:
    a = sliding_window_view(a, len(g), axis=1) @ g
    return sliding_window_view(a, len(g), axis=0) @ g


def ssim(a: Image.Image, b: Image.Image) -> float:
    """Mean SSIM of the luma of two images of the same size."""
    if a.size != b.size:
        raise ValueError(f"sizes differ: {a.size} vs {b.size}")
    x = np.asarray(a.convert("L"), dtype=np.float64)
    y = np.asarray(b.convert("L"), dtype=np.float64)
    g = _gaussian()
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    mx, my = _blur(x, g), _blur(y, g)
    sxx = _blur(x * x, g) - mx * mx
    syy = _blur(y * y, g) - my * my
    sxy = _blur(x * y, g) - mx * my
    index = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx * mx + my * my + c1) * (sxx + syy + c2))
    return float(index.mean())


class References:
    """LANCZOS from the full decode of each source, made upright (EXIF orientation), at any size
    asked (the decode and each size kept per source until forget(): servers' outputs share sizes)."""

    def __init__(self) -> None:
        self.full: dict[Path, Image.Image] = {}
        self.resized: dict[tuple[Path, tuple[int, int]], Image.Image] = {}

    def get(self, path: Path, size: tuple[int, int]) -> Image.Image:
        if path not in self.full:
            with Image.open(path) as image:
                self.full[path] = ImageOps.exif_transpose(image).convert("RGB")
        if (path, size) not in self.resized:
            self.resized[(path, size)] = self.full[path].resize(size, Image.Resampling.LANCZOS)
        return self.resized[(path, size)]

    def forget(self, path: Path) -> None:
        self.full.pop(path, None)
        self.resized = {key: image for key, image in self.resized.items() if key[0] != path}


def thumbor_way(path: Path, width: int) -> Image.Image:
    with Image.open(path) as image:
        height = round(width * image.height / image.width)
        image.draft(image.mode, (width, height))
        return image.convert("RGB").resize((width, height), Image.Resampling.LANCZOS)


def original(path: Path) -> Original:
    st = path.stat()
    return Original(id=f"local:{path.name}", version=f"{st.st_mtime_ns}-{st.st_size}", size=st.st_size, path=str(path))


def ours(path: Path, width: int, settings: RenderConfig, kept: MemoryBudget) -> Image.Image:
    source = original(path)
    opened = open_original(source, LimitsConfig(), ("JPEG",))
    with opened.image:
        rendered = render(
            opened, RenderOptions(width=width), "jpeg", settings, Deadline(60), kept, source_key=source.key
        )
    return rendered.frames[0]


def timed(fn, *args) -> tuple[float, Image.Image]:
    started = time.perf_counter()
    result = fn(*args)
    return (time.perf_counter() - started) * 1000, result


def pipelines(corpus: Path) -> list[list[str]]:
    from ssimulacra2 import ssimulacra2  # bench/bytes.py's judge; scipy: the bench extra, not the tests'

    refs = References()
    variants: list[tuple[str, Callable[[Path, int], Image.Image]]] = [("thumbor: draft to size + LANCZOS", thumbor_way)]
    for gap in GAPS:
        settings = dataclasses.replace(RenderConfig(), reducing_gap=gap)
        variants.append(
            (f"ours, reducing_gap {gap:g}, cold", functools.partial(ours, settings=settings, kept=MemoryBudget(0)))
        )
        kept = MemoryBudget(RenderConfig().memory_budget, RenderConfig().kept_decodes)
        for image in IMAGES:  # an earlier request at the widest width leaves its decode kept
            ours(corpus / image, max(WIDTHS), settings, kept)
        variants.append(
            (f"ours, reducing_gap {gap:g}, kept decode", functools.partial(ours, settings=settings, kept=kept))
        )
    rows = []
    for name, fn in variants:
        scores, judged, times = [], [], []
        for image in IMAGES:
            path = corpus / image
            for width in WIDTHS:
                ms, out = timed(fn, path, width)
                scores.append(ssim(out, refs.get(path, out.size)))
                judged.append(ssimulacra2(refs.get(path, out.size), out))
                times.append(ms)
        rows.append(
            [name, f"{statistics.fmean(scores):.4f}", f"{min(scores):.4f}"]
            + [f"{statistics.fmean(judged):.2f}", f"{min(judged):.2f}", f"{statistics.fmean(times):.1f}"]
        )
    return rows


ENCODERS = (
    ("jpeg baseline", "JPEG", dict(quality=80)),
    ("jpeg optimize", "JPEG", dict(quality=80, optimize=True)),
    ("jpeg progressive", "JPEG", dict(quality=80, progressive=True)),
    *((f"webp method {m}", "WEBP", dict(quality=80, method=m)) for m in (0, 2, 4, 6)),
    *((f"avif q60 speed {s}", "AVIF", dict(quality=60, speed=s)) for s in (6, 8, 9, 10)),
)


def encoders(corpus: Path) -> list[list[str]]:
    images = [thumbor_way(corpus / image, ENCODE_WIDTH) for image in IMAGES if "12mp" in image]
    rows = []
    for name, fmt, params in ENCODERS:
        times, sizes, scores = [], [], []
        for image in images:
            best = float("inf")
            for _ in range(3):
                out = io.BytesIO()
                started = time.perf_counter()
                image.save(out, fmt, **params)
                best = min(best, time.perf_counter() - started)
            times.append(best * 1000)
            sizes.append(out.tell())
            out.seek(0)
            with Image.open(out) as encoded:
                scores.append(ssim(encoded.convert("RGB"), image))
        rows.append(
            [
                name,
                f"{statistics.fmean(times):.1f}",
                f"{statistics.fmean(sizes) / 1000:.1f} KB",
                f"{statistics.fmean(scores):.4f}",
            ]
        )
    return rows


def whole_renders(corpus: Path) -> list[list[str]]:
    """A 12-MP source to ENCODE_WIDTH px, decode to bytes, with the default settings, per format."""
    config = Config()
    rows = []
    for fmt in ("jpeg", "webp", "avif"):
        times = []
        for image in IMAGES:
            if "12mp" in image:
                for _ in range(2):
                    ms, _ = timed(
                        render_original, original(corpus / image), RenderOptions(width=ENCODE_WIDTH), fmt, config
                    )
                    times.append(ms)
        rows.append([fmt, f"{statistics.fmean(times):.1f}"])
    return rows


def table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(c) for c in col) for col in zip(headers, *rows)]
    line = lambda cells: "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths)))
    return "\n".join([line(headers), line(["-" * w for w in widths]), *map(line, rows)])


def main() -> None:
    corpus = Path(sys.argv[sys.argv.index("--corpus") + 1]) if "--corpus" in sys.argv else DEFAULT_CORPUS
    os.sched_setaffinity(0, {int(c) for c in SERVER_CPUS.split(",")})
    print(
        f"Resize to widths {', '.join(map(str, WIDTHS))} of {', '.join(IMAGES)} (one core; ms include the decode unless it was kept)"
    )
    headers = ["pipeline", "mean SSIM", "min SSIM", "mean SSIMULACRA2", "min SSIMULACRA2", "mean ms"]
    print(table(headers, pipelines(corpus)))
    print(f"\nEncoders, {ENCODE_WIDTH}-px renders of the 12-MP photos (best of 3, one core)")
    print(table(["setting", "ms", "mean bytes", "SSIM vs unencoded"], encoders(corpus)))
    print(f"\nWhole cold renders, 12-MP photos to {ENCODE_WIDTH} px, default settings (one core)")
    print(table(["format", "mean ms"], whole_renders(corpus)))


if __name__ == "__main__":
    main()
