"""Progressive or baseline JPEG, per output width: encode time, bytes and pixels (issue 16).

    python bench/progressive.py [--widths 320,480,...] [--reps 5]

Per photo (corpus photos/large_* and bench/*.jpg) and width (not above the photo's upright width),
the pixels are the upright full decode resized by LANCZOS, and every setting encodes exactly those
with imgproxy.encode at quality 80, 4:2:0 (only `jpeg_progressive` and `optimize` vary). A JPEG's
entropy coding is lossless, so the settings must decode to the same pixels (checked: then SSIM is
equal too). Times are CPU time (thread_time) of one encode, the median of `reps` runs interleaved
across the settings (the machine is shared); bytes are exact. Prints, per width, the medians over
photos of the time and of the bytes relative to progressive.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import statistics
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from PIL import Image, ImageOps

from imgproxy import encode as encode_module
from imgproxy.config import RenderConfig
from imgproxy.render import Rendered

CORPUS = Path(__file__).resolve().parent.parent.parent / "shared" / "corpus"
WIDTHS = (320, 480, 640, 800, 1024, 1150, 1280, 1600, 1920)
# name -> (progressive, optimize)
SETTINGS = {"progressive": (True, False), "baseline": (False, False), "baseline+optimize": (False, True)}


def photos() -> list[Path]:
    return sorted((CORPUS / "photos").glob("large_*")) + sorted((CORPUS / "bench").glob("*.jpg"))


def encoded(image: Image.Image, icc: bytes | None, progressive: bool, optimize: bool) -> tuple[bytes, float]:
    """(bytes, CPU ms) of imgproxy.encode's JPEG with these two settings."""
    # min_pixels 0: the setting as asked at every size (the measured rule is off)
    settings = dataclasses.replace(RenderConfig(), jpeg_progressive=progressive, jpeg_progressive_min_pixels=0)
    original = Image.Image.save

    def save(self: Image.Image, fp: Any, format: str | None = None, **params: Any) -> None:  # noqa: A002
        params["optimize"] = optimize  # encode() passes optimize=False; the one change measured here
        original(self, fp, format, **params)

    Image.Image.save = save  # type: ignore[method-assign]
    try:
        started = time.thread_time()
        body = encode_module.encode(Rendered(frames=[image], icc_profile=icc), "jpeg", 80, settings)
        return body, (time.thread_time() - started) * 1000
    finally:
        Image.Image.save = original  # type: ignore[method-assign]


def pixels(body: bytes) -> bytes:
    with Image.open(io.BytesIO(body)) as image:
        return image.tobytes()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--widths", default=",".join(map(str, WIDTHS)))
    parser.add_argument("--reps", type=int, default=5)
    args = parser.parse_args()
    widths = [int(w) for w in args.widths.split(",")]
    # (width, setting) -> per photo: median ms, bytes
    times: dict[tuple[int, str], list[float]] = defaultdict(list)
    sizes: dict[tuple[int, str], list[float]] = defaultdict(list)
    kilobytes: dict[int, list[float]] = defaultdict(list)  # progressive's output, KB
    for path in photos():
        with Image.open(path) as source:
            icc = source.info.get("icc_profile")
            full = ImageOps.exif_transpose(source).convert("RGB")
        for width in widths:
            if width > full.width:
                continue
            image = full.resize((width, max(1, round(full.height * width / full.width))), Image.Resampling.LANCZOS)
            runs: dict[str, list[float]] = defaultdict(list)
            bodies: dict[str, bytes] = {}
            for _ in range(args.reps):
                for name, (progressive, optimize) in SETTINGS.items():
                    bodies[name], ms = encoded(image, icc, progressive, optimize)
                    runs[name].append(ms)
            reference = pixels(bodies["progressive"])
            for name in SETTINGS:
                if pixels(bodies[name]) != reference:
                    raise SystemExit(f"{path.name} {width}: {name} decodes to other pixels than progressive")
                times[(width, name)].append(statistics.median(runs[name]))
                sizes[(width, name)].append(len(bodies[name]) / len(bodies["progressive"]))
            kilobytes[width].append(len(bodies["progressive"]) / 1000)
    header = f"{'width':>5} {'photos':>6} {'KB':>6} | " + " | ".join(f"{name:>31}" for name in SETTINGS)
    print("medians over photos: encode CPU ms, bytes / progressive's [range] (pixels identical in every case);")
    print("KB: progressive's output")
    print(header)
    for width in widths:
        cells = []
        for name in SETTINGS:
            ms = statistics.median(times[(width, name)])
            ratio = sizes[(width, name)]
            cells.append(f"{ms:6.1f} ms {statistics.median(ratio):6.3f} [{min(ratio):.3f}-{max(ratio):.3f}]")
        kb = statistics.median(kilobytes[width])
        print(f"{width:5} {len(times[(width, 'progressive')]):6} {kb:6.1f} | " + " | ".join(cells))


if __name__ == "__main__":
    main()
