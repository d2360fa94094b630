"""Issue 18: HEIC/HEIF sources (pillow-heif) and JPEG XL output (pillow-jxl-plugin), on a live server.

The HEIF files are made here with pillow-heif (orientation in the container or only in EXIF, an
ICC profile, 10-bit samples, a declared size past the limits); the iPhone photo is the corpus's.
"""

import hashlib
import io
import struct
from pathlib import Path

import numpy as np
import pillow_heif
import pillow_jxl  # noqa: F401 (the JXL writer: the server loads it only when it writes or reads JXL)
import pytest
from PIL import Image, ImageCms

from imgproxy import heif
from imgproxy.budget import decoded_bytes
from imgproxy.config import ConfigError, LimitsConfig, load_config
from imgproxy.errors import PayloadTooLarge
from imgproxy.geometry import check_output
from imgproxy.loader import open_original
from imgproxy.pipeline import negotiate
from imgproxy.sources import LocalSource

from .conftest import CORPUS, copy_from_corpus
from .test_bounds import MB, _status_kb
from .test_uploads import post_file, upload_server, wait_for_job

IPHONE = "bench/iphone_photo.heic"
IPHONE_SIZE = (2566, 3313)  # upright: libheif applies the container's irot (0 here); no EXIF orientation
BLUE, RED = (0, 0, 255), (255, 0, 0)


def _heif(image: Image.Image, **params) -> bytes:
    heif.register()  # the server loads pillow-heif at its first HEIF source; these files are made first
    out = io.BytesIO()
    image.save(out, format="HEIF", **{"quality": -1, **params})  # -1: lossless, so colours can be compared
    return out.getvalue()


def _landscape() -> Image.Image:
    """64x32: a blue band on the left, red elsewhere. Orientation 6 turns it upright to 32x64 with
    the blue band on top."""
    image = Image.new("RGB", (64, 32), RED)
    image.paste(BLUE, (0, 0, 16, 32))
    return image


def _exif(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    exif[0x010F] = "test"  # Make: pillow-heif keeps the block
    return exif.tobytes()


def exif_only_orientation() -> bytes:
    """Orientation 6 in EXIF and none in the container: written with orientation 1 (pillow-heif
    would turn a 6 into an `irot` box), then the EXIF value patched to 6 in place."""
    data = _heif(_landscape(), exif=_exif(1))
    entry = b"\x01\x12\x00\x03\x00\x00\x00\x01\x00\x01"  # big-endian IFD entry: Orientation = 1
    assert data.count(entry) == 1 and b"irot" not in data
    return data.replace(entry, entry[:-2] + b"\x00\x06")


def declared_size(data: bytes, width: int, height: int) -> bytes:
    """The file with its `ispe` box (the size the container declares) set to width x height."""
    assert data.count(b"ispe") == 1
    at = data.index(b"ispe") + 8  # after the type and the full-box version/flags
    return data[:at] + struct.pack(">II", width, height) + data[at + 8 :]


def _icc(path: Path) -> bytes:
    with Image.open(path) as image:
        return image.info["icc_profile"]


ICC = _icc(CORPUS / "photos/adobergb_locket.jpg")
COLOUR = (100, 150, 200)  # in Adobe RGB


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("formats-images")
    copy_from_corpus(IPHONE, root, "iphone.heic")
    copy_from_corpus("photos/animated_earth.gif", root, "anim.gif")
    (root / "exif6.heic").write_bytes(exif_only_orientation())
    (root / "irot6.heic").write_bytes(_heif(_landscape(), exif=_exif(6)))  # irot 270 + EXIF 6
    (root / "adobe.heic").write_bytes(_heif(Image.new("RGB", (32, 32), COLOUR), icc_profile=ICC))
    samples = np.zeros((32, 32, 3), dtype=np.uint16)
    samples[...] = (0xC000, 0x4000, 0x8000)  # 8-bit (192, 64, 128)
    deep = io.BytesIO()
    pillow_heif.from_bytes("RGB;16", (32, 32), samples.tobytes()).save(deep, quality=-1)
    (root / "deep.heic").write_bytes(deep.getvalue())
    small = _heif(Image.new("RGB", (64, 64), COLOUR), quality=50)
    (root / "bomb.heic").write_bytes(declared_size(small, 30000, 30000))  # 900 MP declared
    Image.new("RGB", (40, 30), COLOUR).save(root / "photo.jxl", quality=90)
    iphone = (CORPUS / IPHONE).read_bytes()
    (root / "half.heic").write_bytes(iphone[: len(iphone) // 2])  # libheif alone would fill the rest green
    return root


@pytest.fixture(scope="module")
def server(root, tmp_path_factory):
    from .conftest import LiveServer

    server = LiveServer(tmp_path_factory.mktemp("formats"), {"sources": {"local": {"root": str(root)}}})
    server.start()
    yield server
    server.stop()


def _get(server, url: str, **kwargs):
    with server.client() as client:
        return client.get(url, **kwargs)


def _image(response) -> Image.Image:
    assert response.status_code == 200, response.text
    return Image.open(io.BytesIO(response.content))


def _close(a: tuple, b: tuple, tolerance: int) -> bool:
    return all(abs(x - y) <= tolerance for x, y in zip(a, b))


# --- HEIF input ---


def test_the_iphone_photo_renders_upright_as_jpeg_with_its_profile(server):
    r = _get(server, "/picture/iphone.heic?w=300")
    image = _image(r)
    assert r.headers["content-type"] == "image/jpeg"  # HEIF's "source" format
    assert image.size == (300, round(300 * IPHONE_SIZE[1] / IPHONE_SIZE[0]))
    assert image.info["icc_profile"] == _icc(CORPUS / IPHONE)  # Display P3, kept (keep_icc)


@pytest.mark.parametrize("name", ["exif6.heic", "irot6.heic"])
def test_orientation_is_applied_once_from_the_container_or_exif(server, name):
    """exif6: only EXIF carries orientation 6; irot6: the container's irot and EXIF both do."""
    image = _image(_get(server, f"/picture/{name}?fm=png")).convert("RGB")
    assert image.size == (32, 64)
    assert _close(image.getpixel((16, 2)), BLUE, 24) and _close(image.getpixel((16, 60)), RED, 24)
    # the size read from the header (width-only request) agrees with the decode
    assert _image(_get(server, f"/picture/{name}?w=16")).size == (16, 32)


def test_an_icc_profile_is_kept_or_applied(server):
    png = _image(_get(server, "/picture/adobe.heic?fm=png"))
    assert png.info["icc_profile"] == ICC and _close(png.convert("RGB").getpixel((8, 8)), COLOUR, 3)
    # the JXL writer takes no profile: the pixels are converted to sRGB, which the file declares
    jxl = _image(_get(server, "/picture/adobe.heic?fm=jxl"))
    expected = ImageCms.profileToProfile(
        Image.new("RGB", (1, 1), COLOUR), ImageCms.ImageCmsProfile(io.BytesIO(ICC)), ImageCms.createProfile("sRGB")
    )
    assert expected is not None and expected.getpixel((0, 0)) != COLOUR
    declared = ImageCms.ImageCmsProfile(io.BytesIO(jxl.info["icc_profile"]))  # libjxl's, from its colour encoding
    assert ImageCms.getProfileDescription(declared).strip() == "sRGB"
    assert _close(jxl.convert("RGB").getpixel((8, 8)), expected.getpixel((0, 0)), 4)


def test_ten_bit_samples_render_with_their_colours(server, root):
    assert Image.open(root / "deep.heic").info["bit_depth"] == 10
    image = _image(_get(server, "/picture/deep.heic?fm=png"))
    assert image.mode == "RGB" and _close(image.getpixel((16, 16)), (192, 64, 128), 4)


def test_a_huge_declared_size_is_413_before_any_decode(server, root):
    """30000x30000 declared by a 64x64 file: refused from the container (a decode would take 2.7 GB)."""
    pid = server.process.pid
    assert _get(server, "/picture/exif6.heic?w=10").status_code == 200  # warm up the HEIF code
    before = _status_kb(pid, "VmHWM")
    r = _get(server, "/picture/bomb.heic?w=100")
    with server.client() as client:
        upload = post_file(client, (root / "bomb.heic").read_bytes(), "bomb.heic")
    after = _status_kb(pid, "VmHWM")
    print(f"{r.status_code} {r.text.strip()}; upload {upload.status_code}; peak RSS +{(after - before) / MB:.1f} MB")
    assert r.status_code == 413 and "pixels" in r.text, r.text
    assert upload.status_code == 413, upload.text
    assert (after - before) / MB < 40, f"peak RSS grew {(after - before) / MB:.0f} MB"


def test_a_heif_decode_stays_within_what_the_memory_budget_counts(root, live_server):
    """libheif's own buffers live while Pillow's fill: the budget counts them for an undecoded HEIF."""
    server = live_server({"sources": {"local": {"root": str(root)}}})
    assert _get(server, "/picture/exif6.heic?w=10").status_code == 200  # warm up the HEIF code
    before = _status_kb(server.process.pid, "VmHWM")
    assert _get(server, "/picture/iphone.heic?w=100").status_code == 200
    grown = (_status_kb(server.process.pid, "VmHWM") - before) * 1024
    opened = open_original(LocalSource(root, 10**9).load("iphone.heic"), LimitsConfig(), ("HEIF",))
    with opened.image as image:
        counted = decoded_bytes(image)
    print(f"peak RSS grew {grown / 2**20:.0f} MB; the budget counts {counted / 2**20:.0f} MB")
    assert grown <= counted


def test_a_truncated_heif_is_415_not_filled_in(server, root):
    r = _get(server, "/picture/half.heic?w=100")
    assert r.status_code == 415 and "truncated" in r.text, r.text
    with server.client() as client:
        assert post_file(client, (root / "half.heic").read_bytes(), "half.heic").status_code == 415


@pytest.mark.timeout(300)  # ten renders of an 8.5-MP HEIC on a busy machine
def test_an_iphone_photo_uploads_and_its_presets_render(tmp_path):
    server = upload_server(tmp_path).start()
    try:
        with server.client() as client:
            r = post_file(client, (CORPUS / IPHONE).read_bytes(), "IMG_5195.HEIC")
            assert r.status_code == 201, r.text
            body = r.json()
            assert body["format"] == "heif" and (body["width"], body["height"]) == IPHONE_SIZE
            assert body["path"].endswith("/IMG_5195.heic")
            job = wait_for_job(client, body["job"]["status_url"])
            assert job["status"] == "done" and job["error"] is None, job
            got = client.get(body["urls"]["thumbnail"])  # pre-rendered as "source": JPEG
            assert got.headers["x-cache"] == "HIT" and got.headers["content-type"] == "image/jpeg"
            assert client.get(body["urls"]["thumbnail"] + "&encoding=webp").headers["x-cache"] == "HIT"
    finally:
        server.stop()


def test_heif_off_the_allow_lists_is_415(tmp_path):
    formats = ["JPEG", "PNG"]
    server = upload_server(tmp_path, {"allowed_formats": formats}, {"security": {"allowed_source_formats": formats}})
    copy_from_corpus(IPHONE, server.root, "iphone.heic")
    server.start()
    try:
        with server.client() as client:
            r = client.get("/picture/iphone.heic?w=100")
            assert r.status_code == 415 and "JPEG, PNG" in r.text, r.text
            assert post_file(client, (CORPUS / IPHONE).read_bytes(), "a.heic").status_code == 415
    finally:
        server.stop()


# --- JPEG XL output ---


def test_encoding_jxl_gives_jpeg_xl_the_same_bytes_every_time(server):
    first = _get(server, "/picture/iphone.heic?w=200&fm=jxl&v=1")
    image = _image(first)
    assert first.headers["content-type"] == "image/jxl" and image.format == "JXL"
    assert image.size == (200, round(200 * IPHONE_SIZE[1] / IPHONE_SIZE[0]))
    again = _get(server, "/picture/iphone.heic?w=200&fm=jxl&v=2")  # `v`: another key, a new render
    assert first.headers["x-cache"] == again.headers["x-cache"] == "MISS"
    assert again.content == first.content
    assert first.headers["etag"] == '"' + hashlib.sha256(first.content).hexdigest()[:32] + '"'


@pytest.mark.parametrize(
    "accept, fmt",
    [
        ("image/jxl,*/*;q=0.8", "jxl"),
        ("image/jxl,image/webp,*/*", "webp"),
        ("image/jxl,image/avif,image/webp", "avif"),
        ("image/jxl;q=0,*/*", "jpeg"),  # the source's format: JPEG for HEIF
    ],
)
def test_encoding_auto_offers_jxl_after_avif_and_webp(server, accept, fmt):
    r = _get(server, "/picture/exif6.heic?w=20&encoding=auto", headers={"Accept": accept})
    assert r.status_code == 200 and r.headers["content-type"] == f"image/{fmt}"
    assert r.headers["vary"] == "Accept"


def test_jxl_only_changes_the_accept_class_when_it_changes_the_answer(server):
    assert negotiate("image/avif,image/webp,image/jxl") == negotiate("image/avif,image/webp") == ("avif", "webp")
    assert negotiate("image/jxl,image/webp") == ("webp",)
    assert negotiate("image/jxl") == ("jxl",) and negotiate("image/jxl;q=0") == ()
    # an animation is never JXL: a JXL-only client gets GIF
    r = _get(server, "/picture/anim.gif?w=40&encoding=auto", headers={"Accept": "image/jxl"})
    assert r.headers["content-type"] == "image/gif"


def test_a_jxl_source_is_415_unless_allowed(server, root, tmp_path):
    r = _get(server, "/picture/photo.jxl?w=20")
    assert r.status_code == 415 and "allowed" in r.text
    from .conftest import LiveServer

    allowed = LiveServer(
        tmp_path / "jxl-allowed",
        {"sources": {"local": {"root": str(root)}}, "security": {"allowed_source_formats": ["JXL"]}},
    ).start()
    try:
        assert _image(_get(allowed, "/picture/photo.jxl?w=20&fm=png")).size == (20, 15)
    finally:
        allowed.stop()


def test_jxl_limits_and_settings():
    with pytest.raises(PayloadTooLarge, match="JXL allows at most 262144"):
        check_output((300000, 10), "jxl", 10**6, 10**6)
    config = load_config(None, environ={"IMGPROXY_RENDER__JXL_QUALITY": "75", "IMGPROXY_RENDER__JXL_EFFORT": "5"})
    assert (config.render.jxl_quality, config.render.jxl_effort) == (75, 5)
    with pytest.raises(ConfigError, match="render.jxl_effort"):
        load_config(None, environ={"IMGPROXY_RENDER__JXL_EFFORT": "10"})
