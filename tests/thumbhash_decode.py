"""A ThumbHash decoder (the published algorithm's reverse), for tests: it reads what a browser-side
decoder would read from /info's `thumbhash`, independently of the encoder in imgproxy."""

from __future__ import annotations

import math

from PIL import Image


def _terms(nx: int, ny: int) -> list[tuple[int, int]]:
    return [(cx, cy) for cy in range(ny) for cx in range(0 if cy else 1, nx) if cx * ny < nx * (ny - cy)]


def aspect_ratio(hash_: bytes) -> float:
    has_alpha = bool(hash_[2] & 0x80)
    landscape = bool(hash_[4] & 0x80)
    long_side = 5 if has_alpha else 7
    lx = long_side if landscape else hash_[3] & 7
    ly = hash_[3] & 7 if landscape else long_side
    return lx / ly


def average_rgb(hash_: bytes) -> tuple[int, int, int]:
    """The average colour the hash's header holds (its DC terms), 0..255."""
    header24 = hash_[0] | hash_[1] << 8 | hash_[2] << 16
    lum = (header24 & 63) / 63
    p = ((header24 >> 6) & 63) / 31.5 - 1
    q = ((header24 >> 12) & 63) / 31.5 - 1
    b = lum - 2 / 3 * p
    r = (3 * lum - b + q) / 2
    g = r - q
    red, green, blue = (round(255 * max(0.0, min(1.0, v))) for v in (r, g, b))
    return red, green, blue


def decode(hash_: bytes) -> Image.Image:
    """The placeholder image (RGBA, 32 px on its long side)."""
    header24 = hash_[0] | hash_[1] << 8 | hash_[2] << 16
    header16 = hash_[3] | hash_[4] << 8
    l_dc = (header24 & 63) / 63
    p_dc = ((header24 >> 6) & 63) / 31.5 - 1
    q_dc = ((header24 >> 12) & 63) / 31.5 - 1
    l_scale = ((header24 >> 18) & 31) / 31
    has_alpha = bool(header24 >> 23)
    p_scale = ((header16 >> 3) & 63) / 63
    q_scale = ((header16 >> 9) & 63) / 63
    landscape = bool(header16 >> 15)
    long_side = 5 if has_alpha else 7
    lx = max(3, long_side if landscape else header16 & 7)
    ly = max(3, header16 & 7 if landscape else long_side)
    a_dc = (hash_[5] & 15) / 15 if has_alpha else 1.0
    a_scale = (hash_[5] >> 4) / 15 if has_alpha else 0.0
    start = 6 if has_alpha else 5
    nibbles = [n for b in hash_[start:] for n in (b & 15, b >> 4)]
    index = 0

    def read(nx: int, ny: int, scale: float) -> list[tuple[int, int, float]]:
        nonlocal index
        out = []
        for cx, cy in _terms(nx, ny):
            out.append((cx, cy, (nibbles[index] / 7.5 - 1) * scale))
            index += 1
        return out

    l_ac = read(lx, ly, l_scale)
    p_ac = read(3, 3, p_scale * 1.25)
    q_ac = read(3, 3, q_scale * 1.25)
    a_ac = read(5, 5, a_scale) if has_alpha else []
    ratio = aspect_ratio(hash_)
    w = round(32 if ratio > 1 else 32 * ratio)
    h = round(32 / ratio if ratio > 1 else 32)
    pixels = []
    for y in range(h):
        for x in range(w):

            def value(dc: float, ac: list[tuple[int, int, float]], x: int = x, y: int = y) -> float:
                return dc + sum(
                    f * math.cos(math.pi / w * (x + 0.5) * cx) * math.cos(math.pi / h * (y + 0.5) * cy) * 2
                    for cx, cy, f in ac
                )

            lum, p, q, a = value(l_dc, l_ac), value(p_dc, p_ac), value(q_dc, q_ac), value(a_dc, a_ac)
            b = lum - 2 / 3 * p
            r = (3 * lum - b + q) / 2
            g = r - q
            pixels.append(tuple(int(255 * max(0.0, min(1.0, v))) for v in (r, g, b, a)))  # truncated, as in JS
    image = Image.new("RGBA", (w, h))
    image.putdata(pixels)
    return image
