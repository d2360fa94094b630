"""Issue 17: `[render] jpeg_encoder = "jpegli"` (Google's jpegli through pyjpegli), opt-in.

make bench-jpeg chose it: at the quality matching libjpeg-turbo q80's SSIMULACRA2 (median 83 over
the corpus photos), jpegli writes fewer bytes in less CPU time. The look itself is measured there,
not here (the metric is a bench dependency).
"""

import io

import httpx
import pytest
from PIL import Image, ImageCms, ImageOps, JpegImagePlugin

from imgproxy.config import ConfigError, RenderConfig, load_config
from imgproxy.encode import encode
from imgproxy.render import Rendered

from .conftest import CORPUS

PHOTO = "bench/portrait_4mp_highbitrate.jpg"
EQUAL_LOOK_QUALITY = 83  # jpegli's quality matching libjpeg-turbo q80 (median, make bench-jpeg)
JPEGLI = RenderConfig(jpeg_encoder="jpegli", jpeg_progressive=False)
JPEGLI_SETTINGS = {"render": {"jpeg_encoder": "jpegli", "jpeg_progressive": False, "jpeg_quality": 83}}


def _photo(width: int) -> Image.Image:
    with Image.open(CORPUS / PHOTO) as source:
        image = ImageOps.exif_transpose(source).convert("RGB")
    return image.resize((width, round(width * image.height / image.width)), Image.Resampling.LANCZOS)


def _decoded(body: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(body))
    image.load()
    return image


def test_jpegli_is_smaller_than_libjpeg_at_the_equal_look_quality():
    image = _photo(1080)
    libjpeg = encode(Rendered([image]), "jpeg", 80, RenderConfig())
    jpegli = encode(Rendered([image]), "jpeg", EQUAL_LOOK_QUALITY, JPEGLI)
    print(f"libjpeg-turbo q80 {len(libjpeg)} B, jpegli q{EQUAL_LOOK_QUALITY} {len(jpegli)} B")
    assert len(jpegli) < len(libjpeg)
    out = _decoded(jpegli)
    assert (out.format, out.size, out.mode) == ("JPEG", image.size, "RGB")
    assert "progressive" not in out.info  # baseline, as configured
    assert JpegImagePlugin.get_sampling(out) == 2  # 4:2:0


def test_jpegli_keeps_icc_profile_and_exif():
    image = _photo(320)
    exif = Image.Exif()
    exif[0x010F] = "Maker"  # Make
    big_profile = bytes(range(256)) * 300  # 76,800 bytes: two APP2 chunks
    for profile in (ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes(), big_profile):
        out = _decoded(encode(Rendered([image], icc_profile=profile, exif=exif.tobytes()), "jpeg", 83, JPEGLI))
        assert out.info["icc_profile"] == profile
        assert out.getexif()[0x010F] == "Maker"
        assert out.size == image.size


def test_jpegli_leaves_grey_frames_to_libjpeg():
    grey = _photo(320).convert("L")
    out = _decoded(encode(Rendered([grey]), "jpeg", 83, JPEGLI))
    assert (out.mode, out.size) == ("L", grey.size)


def test_jpegli_config_refuses_settings_it_would_ignore():
    with pytest.raises(ConfigError, match="jpeg_progressive = false"):
        load_config(environ={"IMGPROXY_RENDER__JPEG_ENCODER": '"jpegli"'})
    with pytest.raises(ConfigError, match="baseline 4:2:0"):
        load_config(
            environ={
                "IMGPROXY_RENDER__JPEG_ENCODER": '"jpegli"',
                "IMGPROXY_RENDER__JPEG_PROGRESSIVE": "false",
                "IMGPROXY_RENDER__JPEG_SUBSAMPLING": '"4:4:4"',
            }
        )
    with pytest.raises(ConfigError, match="libjpeg or jpegli"):
        load_config(environ={"IMGPROXY_RENDER__JPEG_ENCODER": '"mozjpeg"'})


def test_jpegli_server_answers_deterministic_jpegs_of_the_right_size(live_server):
    path = f"/picture/{PHOTO}?scalex=480&encoding=jpeg"
    bodies = []
    for settings in (JPEGLI_SETTINGS, JPEGLI_SETTINGS, {}):  # two fresh jpegli servers, then the default
        server = live_server(settings)
        response = httpx.get(server.url + path, timeout=120)
        assert response.status_code == 200, response.text
        assert response.headers["content-type"] == "image/jpeg"
        bodies.append(response.content)
        server.stop()
    out = _decoded(bodies[0])
    with Image.open(CORPUS / PHOTO) as source:
        upright = ImageOps.exif_transpose(source)
    assert out.size == (480, round(480 * upright.height / upright.width))
    assert "progressive" not in out.info
    assert bodies[0] == bodies[1]  # same source, options and config: same bytes
    assert bodies[0] != bodies[2]  # and the key took effect (the default writes libjpeg-turbo's)
