"""/picture end to end: the real app under uvicorn, driven over HTTP with the shared corpus."""

import io
import os
import shutil
import threading

import httpx
import pytest
from PIL import Image

from .conftest import CORPUS, copy_from_corpus, manifest_rows

ROWS = manifest_rows()
RENDER = [r for r in ROWS if r["expect"] == "render"]
REJECT = [r for r in ROWS if r["expect"] == "reject"]
FORMATS = {"jpeg": "JPEG", "png": "PNG", "webp": "WEBP", "avif": "AVIF", "gif": "GIF"}
ORIENTED = {"5", "6", "7", "8"}


def expected_size(row, width):
    w, h = int(row["width"]), int(row["height"])
    name = row["file"]
    if "orientation/Landscape_" in name and name.rsplit("_", 1)[1][0] in ORIENTED:
        w, h = h, w  # stored rotated; EXIF orientation turns it back to landscape
    if width >= w:
        return w, h
    return width, max(1, int(h * width / w + 0.5))


@pytest.mark.parametrize("row", RENDER, ids=lambda r: r["file"])
def test_every_render_row_renders_in_every_format(corpus_server, row):
    width = 64
    with corpus_server.client() as client:
        for fmt, pillow_name in FORMATS.items():
            r = client.get(f"/picture/{row['file']}", params={"scalex": width, "encoding": fmt})
            assert r.status_code == 200, (fmt, r.status_code, r.text[:200])
            assert r.headers["content-type"] == f"image/{fmt}"
            image = Image.open(io.BytesIO(r.content))
            assert image.format == pillow_name
            assert image.size == expected_size(row, width), fmt


@pytest.mark.parametrize("row", REJECT, ids=lambda r: r["file"])
def test_every_reject_row_is_a_clear_4xx(corpus_server, row):
    with corpus_server.client(timeout=60) as client:
        started = corpus_server.cpu_seconds()  # the server's work, not the machine's load
        r = client.get(f"/picture/{row['file']}", params={"scalex": 100})
        assert 400 <= r.status_code < 500, r.status_code
        assert corpus_server.cpu_seconds() - started < 5
        assert r.headers["cache-control"] == "no-store"
        assert "Traceback" not in r.text and len(r.text) < 300
        assert client.get("/health").json()["status"] == "ok"


def test_pixel_floods_are_413_and_non_images_415(corpus_server):
    with corpus_server.client() as client:
        for name in ("giant-image.jpg", "16384x16384.png", "reallybig.bmp", "decompression_bomb.gif"):
            assert client.get(f"/picture/bad/{name}?w=10").status_code == 413, name
        for name in (
            "check.svg",
            "zero_bb.eps",
            "text_1024_ones.jpg",
            "empty.jpg",
            "truncated_image.png",
            "BlueSquare_truncated.jpg",
            "psd-oob-write-overflow.psd",
        ):
            assert client.get(f"/picture/bad/{name}?w=10").status_code == 415, name


def test_response_headers(corpus_server):
    with corpus_server.client() as client:
        r = client.get("/picture/photos/tree.webp?scalex=300&encoding=jpeg&v=headers")
        assert r.status_code == 200
        h = r.headers
        assert h["cache-control"] == "public, max-age=31536000, immutable"
        assert h["etag"].startswith('"') and h["etag"].endswith('"') and not h["etag"].startswith("W/")
        assert int(h["content-length"]) == len(r.content)
        assert h["x-cache"] in ("HIT", "MISS")
        assert "cache;desc=" in h["server-timing"]
        assert h["last-modified"].endswith("GMT")
        assert h["x-content-type-options"] == "nosniff"
        assert h["content-security-policy"] == "default-src 'none'"
        assert "vary" not in h
        # 304 from the ETag, HEAD has headers only
        again = client.get(
            "/picture/photos/tree.webp?scalex=300&encoding=jpeg&v=headers", headers={"If-None-Match": h["etag"]}
        )
        assert again.status_code == 304 and again.content == b"" and again.headers["etag"] == h["etag"]
        head = client.head("/picture/photos/tree.webp?scalex=300&encoding=jpeg&v=headers")
        assert head.status_code == 200 and head.content == b""
        assert head.headers["content-length"] == h["content-length"] and head.headers["etag"] == h["etag"]


def test_etag_is_derived_from_the_bytes(corpus_server):
    import hashlib

    with corpus_server.client() as client:
        r = client.get("/picture/photos/tree.webp?scalex=120&v=etag")
        assert r.headers["etag"] == '"' + hashlib.sha256(r.content).hexdigest()[:32] + '"'


@pytest.mark.parametrize(
    "accept, fmt",
    [
        ("image/avif,image/webp,image/apng,*/*;q=0.8", "avif"),
        ("image/webp,*/*", "webp"),
        ("image/avif;q=0,image/webp", "webp"),
        ("*/*", "webp"),  # the source's own format (tree.webp) is the default
    ],
)
def test_encoding_auto_negotiates_from_accept(corpus_server, accept, fmt):
    with corpus_server.client() as client:
        r = client.get("/picture/photos/tree.webp?scalex=100&encoding=auto", headers={"Accept": accept})
        assert r.headers["content-type"] == f"image/{fmt}"
        assert r.headers["vary"] == "Accept"


def test_default_format_is_the_sources_when_writable(corpus_server):
    with corpus_server.client() as client:
        assert client.get("/picture/photos/alpha_dice.png?w=50").headers["content-type"] == "image/png"
        assert client.get("/picture/photos/sugarshack.mpo?w=50").headers["content-type"] == "image/jpeg"
        assert client.get("/picture/photos/cosmos_sdr.avif?w=50").headers["content-type"] == "image/avif"


def test_errors_are_json_when_asked(corpus_server):
    with corpus_server.client() as client:
        r = client.get("/picture/photos/tree.webp?quality=500", headers={"Accept": "application/json"})
        assert r.status_code == 400
        assert "quality" in r.json()["error"] and "1..100" in r.json()["error"]
        assert r.headers["cache-control"] == "no-store"


def test_404_is_cached_briefly(corpus_server):
    with corpus_server.client() as client:
        r = client.get("/picture/photos/missing.jpg")
        assert r.status_code == 404 and r.headers["cache-control"] == "public, max-age=60"


@pytest.mark.parametrize(
    "path",
    [
        "/picture/%2e%2e/shared/corpus/MANIFEST.tsv",
        "/picture/photos/%2e%2e/%2e%2e/README.md",
        "/picture/photos%2f..%2f..%2fcorpus/README.md",
        "/picture/%252e%252e/README.md",
        "/picture/photos\\..\\README.md",
        "/picture//etc/passwd",
        "/picture/photos/tree.webp%00.png",
    ],
)
def test_path_traversal_never_succeeds(corpus_server, path):
    with corpus_server.client() as client:
        r = client.get(path)
        assert r.status_code in (400, 404), (path, r.status_code)


def test_output_is_oriented_and_stripped(corpus_server):
    with corpus_server.client() as client:
        r = client.get("/picture/photos/orientation/Landscape_6.jpg?w=300")
        image = Image.open(io.BytesIO(r.content))
        assert image.size == (300, 200)
        assert not image.getexif()  # EXIF stripped
        r = client.get("/picture/photos/adobergb_locket.jpg?w=300")
        image = Image.open(io.BytesIO(r.content))
        assert image.info.get("icc_profile")  # ICC kept
        assert b"xmp" not in r.content[:4096].lower()
        assert not image.info.get("progressive")  # 300x161: below jpeg_progressive_min_pixels (1 MP)
        r = client.get("/picture/photos/adobergb_locket.jpg?w=1600")
        image = Image.open(io.BytesIO(r.content))
        assert image.size == (1600, 858) and image.info.get("progressive")  # 1.37 MP: progressive


def test_metadata_kept_when_configured(live_server):
    server = live_server({"render": {"strip_metadata": False}})
    with server.client() as client:
        image = Image.open(io.BytesIO(client.get("/picture/photos/orientation/Landscape_6.jpg?w=300").content))
        assert image.size == (300, 200)
        exif = image.getexif()
        assert exif and exif.get(0x0112) == 1  # kept, with the orientation already applied


def test_animation_is_kept_when_possible(corpus_server):
    source = Image.open(CORPUS / "photos/animated_earth.gif")
    durations = []
    for i in range(3):
        source.seek(i)
        durations.append(source.info["duration"])
    with corpus_server.client() as client:
        for fmt in ("gif", "webp"):
            image = Image.open(
                io.BytesIO(client.get(f"/picture/photos/animated_earth.gif?w=80&encoding={fmt}").content)
            )
            assert image.n_frames == 44 and image.size == (80, 80)
            assert image.info.get("loop") == source.info["loop"]
            for i in range(3):
                image.seek(i)
                image.load()  # WebP reports a frame's duration once it is decoded
                assert image.info["duration"] == durations[i]
        first = Image.open(io.BytesIO(client.get("/picture/photos/animated_earth.gif?w=80&encoding=jpeg").content))
        assert getattr(first, "n_frames", 1) == 1


def test_alpha_is_flattened_onto_background_for_jpeg(corpus_server):
    with corpus_server.client() as client:
        r = client.get("/picture/photos/alpha_dice.png?w=300&encoding=jpeg&bg=ff0000")
        image = Image.open(io.BytesIO(r.content)).convert("RGB")
        # the top-left corner of the dice picture is transparent
        red, green, blue = image.getpixel((2, 2))
        assert red > 200 and green < 60 and blue < 60


def test_pad_and_crop_modes(corpus_server):
    with corpus_server.client() as client:
        image = Image.open(
            io.BytesIO(client.get("/picture/photos/tree.webp?w=200&h=200&mode=pad&bg=000&encoding=png").content)
        )
        assert image.size == (200, 200)
        assert image.convert("RGB").getpixel((100, 2)) == (0, 0, 0)  # padding band at the top
        image = Image.open(io.BytesIO(client.get("/picture/photos/tree.webp?w=200&h=200&mode=crop&g=smart").content))
        assert image.size == (200, 200)
        image = Image.open(io.BytesIO(client.get("/picture/photos/tree.webp?w=2000&h=2000&mode=crop").content))
        assert image.size == (772, 772)


def test_cmyk_becomes_rgb_with_right_colours(corpus_server):
    with corpus_server.client() as client:
        image = Image.open(io.BytesIO(client.get("/picture/photos/cmyk_park.jpg?w=100&encoding=png").content))
        assert image.mode == "RGB"
        # a naive CMYK->RGB inversion gives very different colours from the ICC conversion
        reference = Image.open(CORPUS / "photos/cmyk_park.jpg")
        import io as _io

        from PIL import ImageCms

        profile = ImageCms.ImageCmsProfile(_io.BytesIO(reference.info["icc_profile"]))
        converted = ImageCms.profileToProfile(reference, profile, ImageCms.createProfile("sRGB"), outputMode="RGB")
        expected = converted.resize(image.size, Image.Resampling.LANCZOS)
        diff = sum(abs(a - b) for a, b in zip(image.getpixel((50, 30)), expected.getpixel((50, 30))))
        assert diff < 30


# --- caching ---------------------------------------------------------------------------------


def test_miss_then_hit_and_spellings_share_an_entry(live_server, writable_root):
    copy_from_corpus("photos/tree.webp", writable_root, "a.webp")
    server = live_server({"sources": {"local": {"root": str(writable_root)}}})
    with server.client() as client:
        first = client.get("/picture/a.webp?w=200&encoding=jpeg")
        assert first.headers["x-cache"] == "MISS"
        for spelling in ("scalex=200&fm=jpg", "encoding=jpeg&width=200.0", "w=199.5&format=jpeg"):
            r = client.get(f"/picture/a.webp?{spelling}")
            assert r.headers["x-cache"] == "HIT", spelling
            assert r.content == first.content


def test_preset_and_its_expansion_share_an_entry(live_server, writable_root):
    copy_from_corpus("photos/tree.webp", writable_root, "a.webp")
    server = live_server({"sources": {"local": {"root": str(writable_root)}}})
    with server.client() as client:
        assert client.get("/picture/a.webp?preset=thumbnail").headers["x-cache"] == "MISS"
        r = client.get("/picture/a.webp?width=150&height=150&mode=crop")
        assert r.headers["x-cache"] == "HIT"
        assert Image.open(io.BytesIO(r.content)).size == (150, 150)


def test_replacing_the_source_gives_new_bytes(live_server, writable_root):
    target = copy_from_corpus("photos/tree.webp", writable_root, "a.webp")
    server = live_server({"sources": {"local": {"root": str(writable_root)}}})
    with server.client() as client:
        before = client.get("/picture/a.webp?w=100&encoding=png")
        shutil.copyfile(CORPUS / "photos/alpha_dice.png", target)
        after = client.get("/picture/a.webp?w=100&encoding=png")
        assert after.headers["x-cache"] == "MISS"
        assert after.content != before.content and after.headers["etag"] != before.headers["etag"]


def test_deleted_cache_dir_still_serves_and_is_rebuilt(live_server, writable_root):
    copy_from_corpus("photos/tree.webp", writable_root, "a.webp")
    server = live_server({"sources": {"local": {"root": str(writable_root)}}})
    with server.client() as client:
        assert client.get("/picture/a.webp?w=100").status_code == 200
        shutil.rmtree(server.cache_dir)
        for width in (101, 102, 103):
            assert client.get(f"/picture/a.webp?w={width}").status_code == 200
        assert (server.cache_dir / "cache.db").exists()
        assert client.get("/picture/a.webp?w=103").headers["x-cache"] == "HIT"


def test_unusable_cache_dir_degrades_to_uncached(live_server, writable_root, tmp_path):
    copy_from_corpus("photos/tree.webp", writable_root, "a.webp")
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the cache directory should be")
    server = live_server({"sources": {"local": {"root": str(writable_root)}}, "cache": {"dir": str(blocker / "cache")}})
    with server.client() as client:
        for _ in range(2):
            r = client.get("/picture/a.webp?w=100")
            assert r.status_code == 200 and r.headers["x-cache"] == "MISS"


def test_size_limit_evicts_least_recently_used(live_server, writable_root):
    copy_from_corpus("photos/large_9mp_harbour.jpg", writable_root, "a.jpg")
    # 2 MB for the whole directory leaves results 0.4-1.4 MB (SQLite's WAL grows to 1 MB, 0.5 MB
    # margin); the 40 PNGs take ~8 MB. diskcache evicts the 10 least recently used at once.
    server = live_server(
        {
            "sources": {"local": {"root": str(writable_root)}},
            "cache": {"size_limit": "2MB"},
            "render": {"jpeg_quality": 95},
        }
    )
    with server.client() as client:
        keep = "/picture/a.jpg?w=300"
        first = client.get(keep)
        assert first.headers["x-cache"] == "MISS" and len(first.content) < 50 * 1024
        for width in range(601, 641):
            assert client.get(keep).headers["x-cache"] == "HIT"  # used again and again
            client.get(f"/picture/a.jpg?w={width}&encoding=png")
        assert client.get(keep).headers["x-cache"] == "HIT"
        assert client.get("/picture/a.jpg?w=601&encoding=png").headers["x-cache"] == "MISS"
        stats = client.get("/health").json()["cache"]
        assert stats["bytes"] <= 2 * 1024**2 and stats["entries"] < 30


def test_concurrent_identical_misses_render_once(live_server):
    server = live_server({})
    url = server.url + "/picture/photos/large_12mp_bus.jpg?w=1234&encoding=webp"
    results = []

    def fetch():
        results.append(httpx.get(url, timeout=120))

    threads = [threading.Thread(target=fetch) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [r.status_code for r in results] == [200] * 8
    assert len({r.content for r in results}) == 1
    assert httpx.get(server.url + "/health").json()["renders"] == 1


def test_full_queue_answers_503_with_retry_after(live_server):
    server = live_server({"render": {"workers": 1, "queue_limit": 1}})
    responses = []

    def fetch(width):
        responses.append(
            httpx.get(f"{server.url}/picture/photos/large_12mp_bus.jpg?w={width}&encoding=avif&q=90", timeout=60)
        )

    threads = [threading.Thread(target=fetch, args=(w,)) for w in range(1500, 1508)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    codes = sorted(r.status_code for r in responses)
    assert 200 in codes and 503 in codes
    shed = next(r for r in responses if r.status_code == 503)
    assert int(shed.headers["retry-after"]) >= 1 and shed.headers["cache-control"] == "no-store"


def test_cli_render_writes_the_same_size(tmp_path):
    import subprocess
    import sys

    out = tmp_path / "out.webp"
    proc = subprocess.run(
        [sys.executable, "-m", "imgproxy", "render", "photos/tree.webp", "--width", "128", "-o", str(out)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "IMGPROXY_SOURCES__LOCAL__ROOT": str(CORPUS)},
    )
    assert proc.returncode == 0, proc.stderr
    image = Image.open(out)
    assert image.format == "WEBP" and image.size == (128, 97)


def test_convert_to_srgb_drops_the_profile_and_converts(live_server, corpus_server):
    path = "/picture/photos/adobergb_locket.jpg?w=200&encoding=png"
    with corpus_server.client() as client:
        kept = Image.open(io.BytesIO(client.get(path).content))
    server = live_server({"render": {"convert_to_srgb": True}})
    with server.client() as client:
        converted = Image.open(io.BytesIO(client.get(path).content))
    assert kept.info.get("icc_profile") and not converted.info.get("icc_profile")
    # Adobe RGB pixels reinterpreted as sRGB look duller; the conversion changes the values
    assert kept.convert("RGB").tobytes() != converted.convert("RGB").tobytes()


def test_metadata_follows_settings_in_every_format(live_server, corpus_server):
    server = live_server({"render": {"keep_icc": False}})
    for fmt in ("jpeg", "png", "webp", "avif"):
        path = f"/picture/photos/adobergb_locket.jpg?w=120&encoding={fmt}"
        with corpus_server.client() as client:
            kept = client.get(path).content
        with server.client() as client:
            dropped = client.get(path).content
        assert Image.open(io.BytesIO(kept)).info.get("icc_profile"), fmt
        assert not Image.open(io.BytesIO(dropped)).info.get("icc_profile"), fmt
        for data in (kept, dropped):  # the source has EXIF and XMP; neither is copied
            image = Image.open(io.BytesIO(data))
            assert not image.getexif() and b"xpacket" not in data and b"http://ns.adobe.com/xap" not in data, fmt


def test_default_format_auto_varies_on_accept(live_server):
    server = live_server({"render": {"default_format": "auto"}})
    with server.client() as client:
        webp = client.get("/picture/photos/grayscale_portrait.jpg?w=100", headers={"Accept": "image/webp,*/*"})
        plain = client.get("/picture/photos/grayscale_portrait.jpg?w=100", headers={"Accept": "*/*"})
        assert webp.headers["content-type"] == "image/webp" and webp.headers["vary"] == "Accept"
        assert plain.headers["content-type"] == "image/jpeg" and plain.headers["vary"] == "Accept"
        explicit = client.get("/picture/photos/grayscale_portrait.jpg?w=100&encoding=png")
        assert explicit.headers["content-type"] == "image/png" and "vary" not in explicit.headers
