"""What quality=auto costs: render CPU time of quality=auto over the configured quality.

    python bench/autocost.py [--corpus DIR] [--widths 480,1080,1920] [--rounds 3] [--only A,B]
        [--set render.KEY=VALUE ...]

Every photo of <corpus>/photos/large_* and <corpus>/bench/ at each width (not above the photo's
width), through the real render path (imgproxy.pipeline.render_original, config.toml's settings):
per format (JPEG, WebP, AVIF, and `encoding=auto` with auto_format "smallest" over AVIF and WebP:
what a Chrome gets) the CPU time of the process (the encoders' threads count too) of a render at
the configured quality and of one at quality=auto, the two interleaved round by round; the ratio of
their medians per render. Printed: per photo and width the ratios, then per format the median ratio
over all renders and per width (SPEC §11: at most 2x at the median). Decoding is part of both
renders (quality=auto decodes finer: `[render] auto_reducing_gap`). `--set` overrides a config.toml
setting as its environment variable would (the value in TOML syntax).
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time
from pathlib import Path

from PIL import Image, ImageOps

sys.path.insert(0, str(Path(__file__).resolve().parent))
from formats import photos  # noqa: E402
from quality import REPO, original  # noqa: E402

from imgproxy.config import load_config  # noqa: E402
from imgproxy.options import RenderOptions  # noqa: E402
from imgproxy.pipeline import render_original  # noqa: E402

DEFAULT_CORPUS = REPO.parent / "shared" / "corpus"
FORMATS = {"jpeg": "jpeg", "webp": "webp", "avif": "avif", "chrome": "smallest:avif,webp"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS, help="holds photos/ and bench/")
    parser.add_argument("--widths", default="480,1080,1920", help="comma-separated output widths")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds per render")
    parser.add_argument("--only", default="", help="comma-separated formats of " + ",".join(FORMATS))
    parser.add_argument("--set", action="append", default=[], help="SECTION.KEY=VALUE over config.toml")
    args = parser.parse_args()
    overrides = dict(item.split("=", 1) for item in args.set)
    environ = {"IMGPROXY_" + key.upper().replace(".", "__"): value for key, value in overrides.items()}
    config = load_config(REPO / "config.toml", environ=environ)
    config = dataclasses.replace(config, render=dataclasses.replace(config.render, timeout=600))
    formats = {k: v for k, v in FORMATS.items() if not args.only or k in args.only.split(",")}
    ratios: dict[tuple[str, int], list[float]] = {}
    for path in photos(args.corpus.resolve()):
        source = original(path)
        with Image.open(path) as image:
            upright_width = ImageOps.exif_transpose(image).width
        for width in (int(w) for w in args.widths.split(",")):
            if width > upright_width:
                continue
            line = [f"{path.name[:28]:<28} {width:>5}"]
            for name, fmt in formats.items():
                times: dict[str | None, list[float]] = {None: [], "auto": []}
                for _ in range(args.rounds):
                    for quality in times:
                        started = time.process_time()
                        render_original(source, RenderOptions(width=width, quality=quality), fmt, config)
                        times[quality].append(time.process_time() - started)
                fixed, auto = statistics.median(times[None]), statistics.median(times["auto"])
                ratios.setdefault((name, width), []).append(auto / fixed)
                line.append(f"{name} {fixed * 1000:.0f}->{auto * 1000:.0f} ms {auto / fixed:.2f}x")
            print("  ".join(line), flush=True)
    print("\nquality=auto over the configured quality, median of the per-render CPU time ratios")
    for name in formats:
        every = [r for (n, _), rs in ratios.items() if n == name for r in rs]
        per_width = ", ".join(f"{w} px {statistics.median(rs):.2f}x" for (n, w), rs in ratios.items() if n == name)
        print(f"  {name:<7} {statistics.median(every):.2f}x over {len(every)} renders ({per_width})")


if __name__ == "__main__":
    main()
