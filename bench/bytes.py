"""Bytes at the same look: this service vs thumbor and ipx, judged by SSIMULACRA2.

    python bench/bytes.py [--corpus DIR] [--widths 480,1080,1920]

Every photo of <corpus>/photos/large_* and <corpus>/bench/ (the HEIC and the TIFF too) at each
width (skipped where it exceeds the photo's upright width: no server is asked to enlarge), from:
- this service: JPEG, WebP and AVIF at quality=80 and at quality=auto; `encoding=auto` with the
  Accept header of a current Chrome (at the configured qualities) on a server with
  `[render] auto_format = "first"` (the default) and on one with "smallest" (the second server gets
  IMGPROXY_RENDER__AUTO_FORMAT), there also with quality=auto;
- thumbor 7.8 (q80; RESPECT_ORIENTATION, AUTO_WEBP and AUTO_AVIF on: it answers Chrome with WebP,
  since it checks AUTO_WEBP first) and ipx 3.1 (q80; `f_auto` for Chrome: AVIF), installed and
  started by bench/peers.py (both apply EXIF orientation there). An output whose aspect ratio is not
  the upright photo's is reported as "not upright" and not scored.
A request this server refuses (quality=auto or auto_format before they exist) is reported as
"not supported by this server"; a peer's failure (thumbor cannot read HEIC) as "failed".

Judge: SSIMULACRA2 (bench/ssimulacra2.py) of each decoded output against its reference: the
source's full decode, made upright (EXIF orientation), resized to the output's size by plain
Pillow LANCZOS; pixel values as decoded, no colour management, on both sides. Per group (JPEG,
WebP, AVIF, the answer Chrome gets) a table: per photo the mean KB and mean SSIMULACRA2 over its
widths; then over all photo-width pairs the mean, the median and the minimum. Then the goal check
(SPEC §11): at an equal or better median SSIMULACRA2 than thumbor's, >= 25 % fewer bytes (summed
over the pairs) for JPEG and for Chrome's answer, and no pair more than 2 points below thumbor's.
Bytes and scores are exact; nothing here is timed. Servers run one at a time (bench/run.py's
RunningServer: own core, own process group, stopped on exit).
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import shutil
import statistics
import sys
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pillow_heif
from formats import photos
from peers import install_ipx, install_thumbor, ipx_server, thumbor_server
from PIL import Image, ImageOps
from run import REPO, RunningServer, Server, ensure_debian_packages, format_table, imgproxy_server, scratch_dir
from ssimulacra2 import Reference

pillow_heif.register_heif_opener()

DEFAULT_CORPUS = REPO.parent / "shared" / "corpus"
WIDTHS = (480, 1080, 1920)
FORMATS = ("jpeg", "webp", "avif")
CHROME_ACCEPT = "image/avif,image/webp,image/apng,image/svg+xml,image/*,*/*;q=0.8"
UNSUPPORTED = "not supported by this server"
GOAL_SAVING = 0.25
GOAL_WORST_DROP = 2.0
ASPECT_TOLERANCE = 0.03  # rounding of small heights; a turned output is off by far more


@dataclass(frozen=True)
class Variant:
    group: str  # "jpeg", "webp", "avif" or "chrome"
    name: str
    server: str
    path: Callable[[str, int], str]  # (image, width) -> path with query
    accept: str = ""
    ours: bool = False  # a refusal means "not supported by this server" rather than a failure


def ours_path(fmt: str, quality: str) -> Callable[[str, int], str]:
    return lambda image, width: (
        f"/picture/{image}?scalex={width}&encoding={fmt}" + (f"&quality={quality}" if quality else "")
    )


def variants(servers: dict[str, Server]) -> list[Variant]:
    found = []
    for fmt in FORMATS:
        found += [
            Variant(fmt, "ours q80", "imgproxy", ours_path(fmt, "80"), ours=True),
            Variant(fmt, "ours q=auto", "imgproxy", ours_path(fmt, "auto"), ours=True),
            Variant(fmt, "thumbor q80", "thumbor", lambda i, w, f=fmt: servers["thumbor"].url(i, w, f)),
            Variant(fmt, "ipx q80", "ipx", lambda i, w, f=fmt: servers["ipx"].url(i, w, f)),
        ]
    found += [
        Variant("chrome", "ours first", "imgproxy", ours_path("auto", ""), CHROME_ACCEPT, ours=True),
        Variant("chrome", "ours smallest", "smallest", ours_path("auto", ""), CHROME_ACCEPT, ours=True),
        Variant("chrome", "ours smallest q=auto", "smallest", ours_path("auto", "auto"), CHROME_ACCEPT, ours=True),
        Variant(
            "chrome", "thumbor q80", "thumbor", lambda i, w: f"/unsafe/{w}x0/filters:quality(80)/{i}", CHROME_ACCEPT
        ),
        Variant("chrome", "ipx q80", "ipx", lambda i, w: f"/w_{w},q_80,f_auto/{i}", CHROME_ACCEPT),
    ]
    return found


def thumbor_upright_auto(corpus: Path, venv: Path) -> Server:
    """bench/peers.py's thumbor (EXIF orientation applied there: our outputs are upright, and so
    is the reference), its config extended with the Accept-driven formats a Chrome would get."""
    server = thumbor_server(corpus, venv)

    def command(port: int, scratch: Path) -> list[str]:
        argv = server.command(port, scratch)
        config = Path(argv[argv.index("--conf") + 1])
        config.write_text(config.read_text() + "AUTO_WEBP = True\nAUTO_AVIF = True\n")
        return argv

    return dataclasses.replace(server, command=command)


@dataclass
class Result:
    body: bytes = b""
    content_type: str = ""
    error: str = ""
    score: float | None = None


Key = tuple[str, int, str]  # (image, width, variant name with group)


def fetch_all(server: Server, wanted: list[Variant], pairs: list[tuple[str, int]], scratch: Path) -> dict[Key, Result]:
    results: dict[Key, Result] = {}
    started = False
    try:
        with RunningServer(server, scratch) as running:
            started = True
            for variant in wanted:
                print(f"  {server.name}: {variant.group} {variant.name} ...", file=sys.stderr, flush=True)
                for image, width in pairs:
                    headers = {"accept": variant.accept} if variant.accept else {}
                    response = running.client.get(variant.path(image, width), headers=headers)
                    key = (image, width, f"{variant.group}/{variant.name}")
                    if response.status_code == 200:
                        results[key] = Result(response.content, response.headers.get("content-type", ""))
                    elif variant.ours and 400 <= response.status_code < 500:
                        results[key] = Result(error=UNSUPPORTED)
                    else:
                        results[key] = Result(error=f"failed: {response.status_code}")
    except RuntimeError as exc:
        if started:
            raise
        # it refused its config (an unknown key) or never answered: every request of it is missing
        first_line = str(exc).splitlines()[0]
        print(f"  {server.name} did not start: {first_line}", file=sys.stderr)
        for v in wanted:
            error = UNSUPPORTED if v.ours else f"failed: {first_line}"
            results.update({(i, w, f"{v.group}/{v.name}"): Result(error=error) for i, w in pairs})
    return results


def upright(path: Path) -> Image.Image:
    with Image.open(path) as image:
        return ImageOps.exif_transpose(image).convert("RGB")


def score_all(corpus: Path, results: dict[Key, Result], pairs: list[tuple[str, int]]) -> None:
    by_image: dict[str, list[int]] = {}
    for image, width in pairs:
        by_image.setdefault(image, []).append(width)
    for image, widths in by_image.items():
        full = upright(corpus / image)
        references: dict[tuple[int, int], Reference] = {}
        for (name, width, _), result in results.items():
            if name != image or width not in widths or not result.body:
                continue
            with Image.open(io.BytesIO(result.body)) as decoded:
                output = decoded.convert("RGB")
            if abs(output.width * full.height / (output.height * full.width) - 1) > ASPECT_TOLERANCE:
                result.error = "not upright"
                continue
            if output.size not in references:
                references[output.size] = Reference(full.resize(output.size, Image.Resampling.LANCZOS))
            result.score = references[output.size].score(output)
        print(f"  scored {image}", file=sys.stderr, flush=True)


def summary(values: list[Result]) -> list[str]:
    ok = [r for r in values if r.score is not None]
    if not ok:
        errors = {r.error for r in values if r.error}
        return ["-", ", ".join(sorted(errors))[:40] or "-"]
    return [f"{statistics.fmean(len(r.body) for r in ok) / 1000:.1f}", f"{statistics.fmean(r.score for r in ok):.2f}"]


def group_table(group: str, names: list[str], results: dict[Key, Result], pairs: list[tuple[str, int]]) -> str:
    images = list(dict.fromkeys(i for i, _ in pairs))
    rows = []
    for image in images:
        row = [image.rsplit("/", 1)[-1]]
        for name in names:
            row += summary([results[(image, w, f"{group}/{name}")] for i, w in pairs if i == image])
        rows.append(row)
    for label in ("mean", "median", "min"):
        row = [f"{label} (all pairs)"]
        for name in names:
            ok = [r for r in (results[(i, w, f"{group}/{name}")] for i, w in pairs) if r.score is not None]
            if not ok:
                row += ["-", "-"]
                continue
            sizes, scores = [len(r.body) / 1000 for r in ok], [r.score for r in ok]
            if label == "mean":
                row += [f"{statistics.fmean(sizes):.1f}", f"{statistics.fmean(scores):.2f}"]
            elif label == "median":
                row += [f"{statistics.median(sizes):.1f}", f"{statistics.median(scores):.2f}"]
            else:
                row += ["", f"{min(scores):.2f}"]
        rows.append(row)
    headers = ["photo"] + [f"{name} {what}" for name in names for what in ("KB", "S2")]
    return format_table(headers, rows)


def goal_check(
    group: str, ours: str, results: dict[Key, Result], pairs: list[tuple[str, int]], theirs_key: str = ""
) -> str:
    theirs_key = theirs_key or f"{group}/thumbor q80"
    mine = [results[(i, w, f"{group}/{ours}")] for i, w in pairs]
    theirs = [results[(i, w, theirs_key)] for i, w in pairs]
    if all(r.error == UNSUPPORTED for r in mine):
        return f"{group} {ours}: {UNSUPPORTED}"
    both = [(a, b, pair) for a, b, pair in zip(mine, theirs, pairs) if a.score is not None and b.score is not None]
    if not both:
        return f"{group} {ours}: nothing to compare"
    median_ours = statistics.median(a.score for a, _, _ in both)
    median_theirs = statistics.median(b.score for _, b, _ in both)
    saving = 1 - sum(len(a.body) for a, _, _ in both) / sum(len(b.body) for _, b, _ in both)
    median_ratio = statistics.median(len(a.body) / len(b.body) for a, b, _ in both)
    worst = min(both, key=lambda t: t[0].score - t[1].score)
    drop = worst[1].score - worst[0].score
    passed = median_ours >= median_theirs and saving >= GOAL_SAVING and drop <= GOAL_WORST_DROP
    return (
        f"{group} {ours} vs {theirs_key} ({len(both)} pairs): median S2 {median_ours:.2f} vs {median_theirs:.2f}, "
        f"bytes {saving:+.1%} saved (median ratio {median_ratio:.2f}), worst pair {worst[2][0].rsplit('/', 1)[-1]}"
        f"@{worst[2][1]} {-drop:+.2f} points -> {'PASS' if passed else 'FAIL'}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS, help="holds photos/ and bench/")
    parser.add_argument("--widths", default=",".join(map(str, WIDTHS)), help="comma-separated output widths")
    args = parser.parse_args()
    corpus = args.corpus.resolve()
    widths = [int(w) for w in args.widths.split(",")]
    ensure_debian_packages(("npm", "npm"))
    thumbor_venv, ipx_dir = install_thumbor(), install_ipx()
    images = [p.relative_to(corpus).as_posix() for p in photos(corpus)]
    pairs = []
    for image in images:
        with Image.open(corpus / image) as source:
            source_width = ImageOps.exif_transpose(source).width
        pairs += [(image, w) for w in widths if w <= source_width]
    servers = {
        "imgproxy": imgproxy_server(corpus),
        "smallest": dataclasses.replace(
            imgproxy_server(corpus, name="smallest"), env={"IMGPROXY_RENDER__AUTO_FORMAT": '"smallest"'}
        ),
        "thumbor": thumbor_upright_auto(corpus, thumbor_venv),
        "ipx": ipx_server(corpus, ipx_dir),
    }
    all_variants = variants(servers)
    results: dict[Key, Result] = {}
    scratch = scratch_dir("bytes-")
    try:
        for name, server in servers.items():
            results |= fetch_all(server, [v for v in all_variants if v.server == name], pairs, scratch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    score_all(corpus, results, pairs)

    print(
        f"{len(images)} photos x widths {widths} ({len(pairs)} pairs; widths above a photo's width skipped). "
        "KB: mean bytes/1000 per photo over its widths; S2: SSIMULACRA2 vs Pillow LANCZOS of the upright full "
        "decode at the output's size"
    )
    for group in (*FORMATS, "chrome"):
        names = [v.name for v in all_variants if v.group == group]
        print(f"\n{group if group != 'chrome' else 'encoding=auto, Accept of Chrome'}")
        print(group_table(group, names, results, pairs))
        if group == "chrome":
            for name in names:
                served = Counter(r.content_type for (_, _, k), r in results.items() if k == f"chrome/{name}" and r.body)
                print(f"  {name} served: {dict(served) or '-'}")
    print("\ngoal (SPEC §11): median S2 >= thumbor's, >= 25 % fewer bytes, no pair > 2 points below thumbor")
    for group, ours in (
        ("jpeg", "ours q80"),
        ("jpeg", "ours q=auto"),
        ("chrome", "ours first"),
        ("chrome", "ours smallest"),
        ("chrome", "ours smallest q=auto"),
    ):
        print("  " + goal_check(group, ours, results, pairs))
    print("  (thumbor answers Chrome with WebP; had it been set to answer AVIF instead:)")
    for ours in ("ours first", "ours smallest", "ours smallest q=auto"):
        print("  " + goal_check("chrome", ours, results, pairs, "avif/thumbor q80"))
    refused = sorted({k for (_, _, k), r in results.items() if r.error == UNSUPPORTED})
    if refused:
        print(f"\n{UNSUPPORTED}: {', '.join(refused)}")


if __name__ == "__main__":
    main()
