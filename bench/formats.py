"""JPEG XL vs AVIF vs WebP vs JPEG at the configured qualities: bytes, encode time and SSIM.

    python bench/formats.py [--corpus DIR] [--width 1080] [--sweep]

Every photo of <corpus>/photos/large_* and <corpus>/bench/ (the HEIC too) is rendered once to
`--width` px by imgproxy.render (sRGB, so every encoder gets the same pixels: the JXL writer
cannot embed a profile), then encoded by imgproxy.encode with config.toml's [render] settings.
Per photo and format: bytes, encode ms (best of 2, one core: BENCH_SERVER_CPUS, default 0) and
SSIM of the decoded output against the unencoded render (bench/quality.py's SSIM). The last line
per format is the median over the photos. `--sweep` adds JXL at other qualities and efforts,
medians only, to choose `jxl_quality` and `jxl_effort`.
"""

from __future__ import annotations

import dataclasses
import io
import os
import statistics
import sys
import time
from pathlib import Path

from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from quality import REPO, original, ssim, table  # noqa: E402

from imgproxy.budget import Deadline  # noqa: E402
from imgproxy.config import Config, RenderConfig, load_config  # noqa: E402
from imgproxy.encode import encode  # noqa: E402
from imgproxy.loader import open_original  # noqa: E402
from imgproxy.options import RenderOptions  # noqa: E402
from imgproxy.render import Rendered, render  # noqa: E402

DEFAULT_CORPUS = REPO.parent / "shared" / "corpus"
FORMATS = ("jpeg", "webp", "avif", "jxl")
SWEEP_QUALITIES = (70, 75, 80, 82, 85)
SWEEP_EFFORTS = (3, 4, 5, 7)
SERVER_CPUS = os.environ.get("BENCH_SERVER_CPUS", "0")


def photos(corpus: Path) -> list[Path]:
    found = sorted((corpus / "photos").glob("large_*")) + sorted((corpus / "bench").iterdir())
    return [p for p in found if p.suffix.lower() != ".tsv"]


def configured() -> Config:
    """config.toml's settings, with sRGB pixels for every encoder."""
    config = load_config(REPO / "config.toml", environ={})
    return dataclasses.replace(config, render=dataclasses.replace(config.render, convert_to_srgb=True))


def rendered(path: Path, width: int, config: Config) -> Rendered:
    source = original(path)
    opened = open_original(source, config.limits, config.security.allowed_source_formats)
    with opened.image:
        return render(opened, RenderOptions(width=width), "png", config.render, Deadline(120), limits=config.limits)


def measure(image: Rendered, fmt: str, quality: int | None, render_settings: RenderConfig) -> tuple[int, float, float]:
    """(bytes, best-of-2 encode ms, SSIM against the unencoded render)."""
    best = float("inf")
    for _ in range(2):
        started = time.perf_counter()
        body = encode(image, fmt, quality, render_settings)
        best = min(best, time.perf_counter() - started)
    with Image.open(io.BytesIO(body)) as decoded:
        score = ssim(decoded.convert("RGB"), image.frames[0])
    return len(body), best * 1000, score


def main() -> None:
    args = sys.argv[1:]
    corpus = Path(args[args.index("--corpus") + 1]) if "--corpus" in args else DEFAULT_CORPUS
    width = int(args[args.index("--width") + 1]) if "--width" in args else 1080
    os.sched_setaffinity(0, {int(c) for c in SERVER_CPUS.split(",")})
    config = configured()
    render_settings = config.render
    images = {path.name: rendered(path, width, config) for path in photos(corpus)}
    quality = {f: getattr(render_settings, f"{f}_quality") for f in FORMATS}
    print(
        f"{len(images)} photos rendered to {width} px; qualities {quality}, webp_method "
        f"{render_settings.webp_method}, avif_speed {render_settings.avif_speed}, jxl_effort "
        f"{render_settings.jxl_effort} (encode only, best of 2, one core)"
    )
    results = {
        (name, fmt): measure(image, fmt, None, render_settings) for name, image in images.items() for fmt in FORMATS
    }
    rows = []
    for name in [*images, "median"]:
        row = [name]
        for fmt in FORMATS:
            if name == "median":
                size, ms, score = (
                    statistics.median(r[i] for (_, f), r in results.items() if f == fmt) for i in range(3)
                )
            else:
                size, ms, score = results[name, fmt]
            row += [f"{size / 1000:.1f}", f"{ms:.0f}", f"{score:.4f}"]
        rows.append(row)
    headers = ["photo"] + [f"{fmt} {what}" for fmt in FORMATS for what in ("KB", "ms", "SSIM")]
    print(table(headers, rows))
    if "--sweep" in args:
        sweep = []
        for effort in SWEEP_EFFORTS:
            varied = dataclasses.replace(render_settings, jxl_effort=effort)
            for q in SWEEP_QUALITIES:
                found = [measure(image, "jxl", q, varied) for image in images.values()]
                size, ms, score = (statistics.median(r[i] for r in found) for i in range(3))
                sweep.append([f"jxl q{q} effort {effort}", f"{size / 1000:.1f}", f"{ms:.0f}", f"{score:.4f}"])
        print("\nJXL settings, medians over the photos")
        print(table(["setting", "KB", "ms", "SSIM"], sweep))


if __name__ == "__main__":
    main()
