"""bench/peers.py's pure parts: the per-photo table and its MEDIAN row, the widths asked of a
photo, the copies a distinct-source cell needs (the benchmark itself runs under make bench-peers)."""

import sys
from pathlib import Path

from .conftest import CORPUS

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
import peers  # noqa: E402


def figures(rps: float, p99: float, size: float, ssim: float, **flags: float) -> dict:
    return {"rps": rps, "p99_ms": p99, "mean_bytes": size, "ssim": ssim, **flags}


def test_photo_table_median_skips_missing_figures_and_takes_the_median_of_quotients() -> None:
    table = {
        "a.jpg": {
            "imgproxy": figures(10, 100, 1000, 0.97, kept_share=0.5),
            "thumbor": figures(5, 200, 1000, 0.96),
            "ipx": figures(20, 80, 2000, 0.95, exhausted=True),
        },
        "b.jpg": {"imgproxy": figures(12, 120, 900, 0.98, kept_share=1), "thumbor": figures(12, 240, 1000, 0.97)},
        "c.heic": {"imgproxy": figures(2, 900, 500, 0.99)},
    }
    headers, lines = peers.photo_table(table, ["imgproxy", "thumbor", "ipx"], ["a.jpg", "b.jpg", "c.heic"])
    rows = {line[0]: dict(zip(headers, line)) for line in lines}
    assert rows["a.jpg"]["ipx r/s"] == "20.0*"  # ran out of distinct paths
    assert rows["b.jpg"]["ipx r/s"] == peers.NA and rows["c.heic"]["÷thumbor"] == peers.NA
    median = rows["MEDIAN"]
    assert median["imgproxy r/s"] == "10.0"  # 2, 10, 12
    assert median["thumbor r/s"] == "8.5"  # 5 and 12: the HEIC it could not do is left out
    assert median["÷thumbor"] == "1.50"  # median of 2.00 and 1.00, not 10 ÷ 8.5
    assert median["÷ipx"] == "0.50"
    assert median["bytes ÷thumbor"] == "0.95"
    assert median["thumbor p99"] == "220"
    assert median["ipx SSIM"] == "0.9500"
    assert rows["c.heic"]["kept"] == peers.NA and median["kept"] == "75%"  # share of renders reusing a decode


def test_photo_table_without_our_server_has_no_quotients() -> None:
    headers, _ = peers.photo_table({"a.jpg": {"thumbor": figures(5, 200, 1000, 0.96)}}, ["thumbor"], ["a.jpg"])
    assert headers == ["photo", "thumbor r/s", "thumbor p99", "thumbor SSIM"]


def test_a_photo_is_never_asked_to_enlarge_and_its_sample_spans_its_widths() -> None:
    photo = peers.open_photo(CORPUS / "bench" / "camera_3mp_rotated6.jpg")  # 2048x1536, EXIF orientation 6
    assert (photo.width, photo.height) == (1536, 2048)
    assert photo.widths == range(peers.MIN_WIDTH, 1537)
    sample = photo.sample()
    assert len(sample) == peers.SAMPLE_WIDTHS and sample[0] == peers.MIN_WIDTH and sample[-1] == 1536
    wide = peers.open_photo(CORPUS / "photos" / "large_12mp_bus.jpg")
    assert wide.widths[-1] == peers.MAX_WIDTH


def test_distinct_cells_get_copies_for_the_fastest_server_with_headroom() -> None:
    assert peers.copy_count([8.0, 20.0, 12.5], 4) == 130  # 20/s x 4 s x 1.5 + 10
    assert peers.copy_count([], 4) == peers.COPY_MARGIN


def test_every_distinct_request_is_a_copy_no_other_request_asked_for() -> None:
    photo = peers.Photo(Path("x.jpg"), 800, 600)
    server = peers.thumbor_server(Path("/nowhere"), Path("/nowhere"))
    paths = peers.cell_paths(server, photo, "distinct", "webp", 50)
    sources = [path.rsplit("/", 1)[-1] for path in paths]
    assert len(set(sources)) == 50
    assert paths == peers.cell_paths(server, photo, "distinct", "webp", 50)  # the same for every server
    repeated = peers.cell_paths(server, photo, "repeated", "webp", 0)
    assert len(repeated) == len(set(repeated)) == len(photo.widths)
