"""`max_bytes`: the quality goes down in bounded steps (not below 10) until the answer fits, PNG and
GIF are only recompressed, and an answer that cannot fit is still a 200 with `X-Max-Bytes: unmet`,
on a cache hit too."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from imgproxy.budget import Deadline
from imgproxy.config import RenderConfig
from imgproxy.encode import MAX_EXTRA_ENCODES, MIN_QUALITY, encode, encode_within
from imgproxy.errors import BadRequest, Overloaded
from imgproxy.options import parse_options
from imgproxy.render import Rendered

from .conftest import CORPUS

pytestmark = pytest.mark.timeout(300)
PHOTO = "photos/progressive_dalmatian.jpg"  # 960x640
SETTINGS = RenderConfig()


@pytest.fixture(scope="module")
def photo() -> Image.Image:
    with Image.open(CORPUS / PHOTO) as image:
        return image.convert("RGB").resize((480, 320), Image.Resampling.LANCZOS)


def rendered(photo: Image.Image) -> Rendered:
    return Rendered([photo.copy()])


def fit(photo: Image.Image, fmt: str, max_bytes: int | None, quality: int | None = None) -> tuple[bytes, int]:
    return encode_within(rendered(photo), fmt, quality, SETTINGS, max_bytes, Deadline(60))


# --- parsing ------------------------------------------------------------------------------------


def test_max_bytes_parses_strictly_and_is_in_the_key_only_when_given():
    assert parse_options([("max_bytes", "20000")], {}).max_bytes == 20000
    assert parse_options([("mb", " 100 ")], {}).cache_key().endswith("&mb=100")
    assert parse_options([("mb", "50000000")], {}).max_bytes == 50_000_000
    assert "mb=" not in parse_options([("w", "300")], {}).cache_key()
    for hostile in ("", "99", "0", "-1", "50000001", "1e5", "1.5", "20KB", "abc", "٣٠٠", "9" * 40, "0x100"):
        with pytest.raises(BadRequest, match=r"^mb: .* \(allowed: a byte count 100\.\.50000000\)$"):
            parse_options([("mb", hostile)], {})


# --- the encode loop ----------------------------------------------------------------------------


def test_an_output_that_fits_is_encoded_once(photo):
    body, encodes = fit(photo, "jpeg", 10_000_000)
    assert encodes == 1 and body == encode(rendered(photo), "jpeg", None, SETTINGS)


@pytest.mark.parametrize("fmt", ["jpeg", "webp"])
def test_a_lossy_output_gets_the_quality_that_fits(photo, fmt):
    plain = encode(rendered(photo), fmt, None, SETTINGS)
    floor = encode(rendered(photo), fmt, MIN_QUALITY, SETTINGS)
    limit = (len(plain) + len(floor)) // 2
    body, encodes = fit(photo, fmt, limit)
    assert len(body) <= limit < len(plain)
    assert 2 < encodes <= 1 + MAX_EXTRA_ENCODES
    # close to the best quality that fits (a bisection of 5 steps over 11..79 ends within 3 of it)
    sizes = {q: encode(rendered(photo), fmt, q, SETTINGS) for q in range(MIN_QUALITY, 80)}
    (chosen,) = [q for q, out in sizes.items() if out == body]
    best = max(q for q, out in sizes.items() if len(out) <= limit)
    assert best - 3 <= chosen <= best


def test_an_impossible_limit_gives_the_floor_quality_after_one_extra_encode(photo):
    body, encodes = fit(photo, "jpeg", 100)
    assert encodes == 2 and body == encode(rendered(photo), "jpeg", MIN_QUALITY, SETTINGS)


def test_a_requested_quality_at_the_floor_is_not_lowered(photo):
    body, encodes = fit(photo, "jpeg", 100, quality=MIN_QUALITY)
    assert encodes == 1 and body == encode(rendered(photo), "jpeg", MIN_QUALITY, SETTINGS)


def test_png_is_only_recompressed_at_maximum_effort(photo):
    plain = encode(rendered(photo), "png", None, SETTINGS)
    body, encodes = fit(photo, "png", len(plain) - 1)
    assert encodes == 2 and len(body) < len(plain)
    Image.open(io.BytesIO(body)).load()
    assert Image.open(io.BytesIO(body)).tobytes() == photo.tobytes()  # lossless: the same pixels


def test_the_extra_encodes_respect_the_render_deadline(photo):
    with pytest.raises(Overloaded):
        encode_within(rendered(photo), "jpeg", None, SETTINGS, 100, Deadline(0))


# --- through the live server --------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(corpus_server):
    return corpus_server


def test_a_small_max_bytes_fits_and_is_smaller(server):
    with server.client() as client:
        plain = client.get(f"/picture/{PHOTO}?w=480")
        limit = len(plain.content) // 2
        fitted = client.get(f"/picture/{PHOTO}?w=480&max_bytes={limit}")
    assert plain.status_code == fitted.status_code == 200
    assert len(fitted.content) <= limit < len(plain.content)
    assert int(fitted.headers["content-length"]) == len(fitted.content)
    assert "x-max-bytes" not in fitted.headers
    assert Image.open(io.BytesIO(fitted.content)).size == (480, 320)


def test_an_impossible_max_bytes_is_200_unmet_also_from_the_cache(server):
    with server.client() as client:
        first = client.get(f"/picture/{PHOTO}?w=480&max_bytes=100")
        second = client.get(f"/picture/{PHOTO}?w=480&max_bytes=100")
        head = client.head(f"/picture/{PHOTO}?w=480&max_bytes=100")
    assert first.status_code == second.status_code == head.status_code == 200
    assert [r.headers["x-cache"] for r in (first, second, head)] == ["MISS", "HIT", "HIT"]
    assert [r.headers.get("x-max-bytes") for r in (first, second, head)] == ["unmet"] * 3
    assert first.content == second.content and len(first.content) > 100


def test_png_recompresses_through_the_server(server):
    with server.client() as client:
        plain = client.get(f"/picture/{PHOTO}?w=480&encoding=png")
        limit = len(plain.content) - 1
        fitted = client.get(f"/picture/{PHOTO}?w=480&encoding=png&max_bytes={limit}")
    assert fitted.status_code == 200 and len(fitted.content) < len(plain.content)
    assert fitted.headers.get("x-max-bytes") == ("unmet" if len(fitted.content) > limit else None)
    same = Image.open(io.BytesIO(fitted.content)).tobytes() == Image.open(io.BytesIO(plain.content)).tobytes()
    assert same


def test_a_bad_max_bytes_is_a_400_naming_it(server):
    with server.client() as client:
        response = client.get(f"/picture/{PHOTO}?w=480&max_bytes=-5")
    assert response.status_code == 400 and response.text.startswith("max_bytes: ")
