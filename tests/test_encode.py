"""JPEG layout per output size: progressive from [render] jpeg_progressive_min_pixels up, else an
optimized baseline; the same pixels either way."""

from __future__ import annotations

import dataclasses
import io

import pytest
from PIL import Image, ImageOps

from imgproxy.config import RenderConfig
from imgproxy.encode import encode, progressive_jpeg
from imgproxy.render import Rendered

from .conftest import CORPUS


@pytest.fixture(scope="module")
def photo() -> Image.Image:
    with Image.open(CORPUS / "photos/progressive_dalmatian.jpg") as image:  # 960x640: 0.61 MP
        return ImageOps.exif_transpose(image).convert("RGB")


def jpeg(image: Image.Image, settings: RenderConfig) -> tuple[bytes, Image.Image]:
    body = encode(Rendered(frames=[image.copy()]), "jpeg", 80, settings)
    decoded = Image.open(io.BytesIO(body))
    decoded.load()
    return body, decoded


def test_the_rule_is_by_output_pixels_and_off_with_progressive_off():
    settings = RenderConfig(jpeg_progressive_min_pixels=1_000_000)
    assert not progressive_jpeg((1000, 999), settings)
    assert progressive_jpeg((1000, 1000), settings)
    assert progressive_jpeg((1, 1), dataclasses.replace(settings, jpeg_progressive_min_pixels=0))
    assert not progressive_jpeg((4000, 3000), dataclasses.replace(settings, jpeg_progressive=False))


def test_a_small_output_is_an_optimized_baseline_with_the_pixels_of_the_progressive_one(photo):
    baseline, small = jpeg(photo, RenderConfig())  # 0.61 MP < the default 1 MP
    progressive, every = jpeg(photo, RenderConfig(jpeg_progressive_min_pixels=0))
    assert not small.info.get("progressive") and every.info.get("progressive")
    assert small.tobytes() == every.tobytes()  # entropy coding only: the same decoded pixels
    plain = io.BytesIO()
    photo.save(plain, "JPEG", quality=80, subsampling="4:2:0")  # libjpeg's standard Huffman tables
    assert len(baseline) < len(plain.getvalue())  # optimized tables
    assert abs(len(baseline) / len(progressive) - 1) < 0.06  # within bench/progressive.py's range


def test_a_large_output_stays_progressive(photo):
    _, decoded = jpeg(photo, RenderConfig(jpeg_progressive_min_pixels=960 * 640))
    assert decoded.info.get("progressive")
