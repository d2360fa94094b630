"""ThumbHash (Evan Wallace's published algorithm, https://evanw.github.io/thumbhash/): a ~25-byte
placeholder holding the average colour, the aspect ratio and a few DCT terms of L, P, Q and alpha.
`encode` makes one for /info; `decode` turns one back into the small image the HTML helpers inline.

Written here rather than taken from PyPI: the `thumbhash` package (0.1.2, 2023) fails on every
image with alpha (an operator-precedence slip) and loops over every pixel once per coefficient in
Python. This one splits the DCT into rows then columns, with the inner sums done by C (`sum(map)`).
Rounding is JavaScript's Math.round (half up), as in the reference encoder, so hashes match it.
"""

from __future__ import annotations

import math
from operator import mul

MAX_SIDE = 100  # the algorithm's input limit; more adds nothing to a 32-px placeholder


def js_round(value: float) -> int:
    return math.floor(value + 0.5)


def _coefficients(nx: int, ny: int) -> list[tuple[int, int]]:
    """(cx, cy) in the reference's order: a triangle, DC first."""
    return [(cx, cy) for cy in range(ny) for cx in range(nx) if cx * ny < nx * (ny - cy)]


def _cosines(n: int, count: int) -> list[list[float]]:
    return [[math.cos(math.pi / n * c * (i + 0.5)) for i in range(n)] for c in range(count)]


def _encode_channel(
    values: list[float], w: int, h: int, nx: int, ny: int, fx: list[list[float]], fy: list[list[float]]
) -> tuple[float, list[float], float]:
    """DC, the AC terms normalised to 0..1, and their scale."""
    rows = [values[y * w : (y + 1) * w] for y in range(h)]
    # row sums first: per_row[cx][y] = sum over x of value * cos(x, cx)
    per_row = [[sum(map(mul, row, fx[cx])) for row in rows] for cx in range(nx)]
    dc, ac, scale = 0.0, [], 0.0
    for cx, cy in _coefficients(nx, ny):
        f = sum(map(mul, per_row[cx], fy[cy])) / (w * h)
        if cx or cy:
            ac.append(f)
            scale = max(scale, abs(f))
        else:
            dc = f
    if scale:
        ac = [0.5 + 0.5 / scale * f for f in ac]
    return dc, ac, scale


def encode(w: int, h: int, rgba: bytes) -> bytes:
    """The ThumbHash of a `w` x `h` RGBA image (not premultiplied), each side at most 100 px."""
    if not (0 < w <= MAX_SIDE and 0 < h <= MAX_SIDE) or len(rgba) != w * h * 4:
        raise ValueError(f"{w}x{h} RGBA with {len(rgba)} bytes: expected sides of 1..{MAX_SIDE} px")
    count = w * h
    alpha = [v / 255 for v in rgba[3::4]]
    total_alpha = sum(alpha)
    # the average colour weighted by alpha: what transparent pixels are composited on
    averages = [sum(map(mul, alpha, rgba[i::4])) / 255 / total_alpha if total_alpha else 0.0 for i in range(3)]
    planes = []
    for i in range(3):
        avg = averages[i]
        planes.append([avg * (1 - a) + a / 255 * v for a, v in zip(alpha, rgba[i::4])])
    r, g, b = planes
    has_alpha = total_alpha < count
    l_limit = 5 if has_alpha else 7
    lx = max(1, js_round(l_limit * w / max(w, h)))
    ly = max(1, js_round(l_limit * h / max(w, h)))
    lum = [(rv + gv + bv) / 3 for rv, gv, bv in zip(r, g, b)]
    yellow_blue = [(rv + gv) / 2 - bv for rv, gv, bv in zip(r, g, b)]
    red_green = [rv - gv for rv, gv in zip(r, g)]
    nx, ny = max(3, lx), max(3, ly)
    fx, fy = _cosines(w, max(nx, 5)), _cosines(h, max(ny, 5))
    l_dc, l_ac, l_scale = _encode_channel(lum, w, h, nx, ny, fx, fy)
    p_dc, p_ac, p_scale = _encode_channel(yellow_blue, w, h, 3, 3, fx, fy)
    q_dc, q_ac, q_scale = _encode_channel(red_green, w, h, 3, 3, fx, fy)
    landscape = w > h
    header24 = (
        js_round(63 * l_dc)
        | js_round(31.5 + 31.5 * p_dc) << 6
        | js_round(31.5 + 31.5 * q_dc) << 12
        | js_round(31 * l_scale) << 18
        | int(has_alpha) << 23
    )
    header16 = (
        (ly if landscape else lx) | js_round(63 * p_scale) << 3 | js_round(63 * q_scale) << 9 | int(landscape) << 15
    )
    out = [header24 & 255, (header24 >> 8) & 255, header24 >> 16, header16 & 255, header16 >> 8]
    terms = [l_ac, p_ac, q_ac]
    if has_alpha:
        a_dc, a_ac, a_scale = _encode_channel(alpha, w, h, 5, 5, fx, fy)
        out.append(js_round(15 * a_dc) | js_round(15 * a_scale) << 4)
        terms.append(a_ac)
    nibbles = [js_round(15 * f) for ac in terms for f in ac]
    nibbles += [0] * (len(nibbles) % 2)
    out += [low | high << 4 for low, high in zip(nibbles[::2], nibbles[1::2])]
    return bytes(out)


def aspect_ratio(hash_: bytes) -> float:
    """Width / height as the hash keeps it (the short side in 1/7ths of the long, 1/5ths with alpha)."""
    long_side = 5 if hash_[2] & 0x80 else 7
    if not hash_[3] & 7:
        raise ValueError("not a ThumbHash: its short side has no terms")
    if hash_[4] & 0x80:  # landscape
        return long_side / (hash_[3] & 7)
    return (hash_[3] & 7) / long_side


def _lpq_to_rgb(lum: float, p: float, q: float) -> tuple[float, float, float]:
    blue = lum - 2 / 3 * p
    red = (3 * lum - blue + q) / 2
    return red, red - q, blue


def average_rgb(hash_: bytes) -> tuple[int, int, int]:
    """The average colour the hash's header holds (its DC terms), 0..255."""
    header24 = hash_[0] | hash_[1] << 8 | hash_[2] << 16
    rgb = _lpq_to_rgb((header24 & 63) / 63, ((header24 >> 6) & 63) / 31.5 - 1, ((header24 >> 12) & 63) / 31.5 - 1)
    red, green, blue = (round(255 * max(0.0, min(1.0, v))) for v in rgb)
    return red, green, blue


def _decode_channel(nibbles: list[int], start: int, nx: int, ny: int, scale: float) -> dict[tuple[int, int], float]:
    """The AC terms of one channel, (cx, cy) -> value, read from `nibbles[start:]`."""
    terms = [(cx, cy) for cx, cy in _coefficients(nx, ny) if cx or cy]
    return {term: (nibbles[start + i] / 7.5 - 1) * scale for i, term in enumerate(terms)}


def _plane(dc: float, ac: dict[tuple[int, int], float], fx: list[list[float]], fy: list[list[float]]) -> list[float]:
    """dc + sum of ac * cos(x) * cos(y) * 2 at every pixel, row-major; the x sums once per (cy, x)."""
    w, h = len(fx[0]), len(fy[0])
    rows = []
    for cy in sorted({cy for _, cy in ac}):
        terms = [(f, fx[cx]) for (cx, ty), f in ac.items() if ty == cy]
        rows.append(([sum(f * cos[x] for f, cos in terms) for x in range(w)], fy[cy]))
    return [dc + sum(row[x] * cos_y[y] * 2 for row, cos_y in rows) for y in range(h) for x in range(w)]


def decode(hash_: bytes, side: int = 32) -> tuple[int, int, bytes]:
    """(w, h, RGBA bytes) of the placeholder a hash describes, `side` px on its long side; at 32
    exactly the reference `thumbHashToRGBA` (values truncated to 0..255 as its Uint8Array does)."""
    if len(hash_) < 5:
        raise ValueError(f"a ThumbHash has at least 5 bytes, not {len(hash_)}")
    header24 = hash_[0] | hash_[1] << 8 | hash_[2] << 16
    header16 = hash_[3] | hash_[4] << 8
    has_alpha = bool(header24 >> 23)
    landscape = bool(header16 >> 15)
    long_side = 5 if has_alpha else 7
    lx = max(3, long_side if landscape else header16 & 7)
    ly = max(3, header16 & 7 if landscape else long_side)
    start = 6 if has_alpha else 5
    nibbles = [n for b in hash_[start:] for n in (b & 15, b >> 4)]
    sizes = [(lx, ly), (3, 3), (3, 3)] + ([(5, 5)] if has_alpha else [])
    needed = sum(len(_coefficients(nx, ny)) - 1 for nx, ny in sizes)
    if len(nibbles) < needed or (has_alpha and len(hash_) < 6):
        raise ValueError(f"a ThumbHash with these dimensions has {start + (needed + 1) // 2} bytes, not {len(hash_)}")
    l_ac = _decode_channel(nibbles, 0, lx, ly, ((header24 >> 18) & 31) / 31)
    # P and Q boosted by 1.25 as the reference does, against the quantisation's loss of saturation
    p_ac = _decode_channel(nibbles, len(l_ac), 3, 3, ((header16 >> 3) & 63) / 63 * 1.25)
    q_ac = _decode_channel(nibbles, len(l_ac) + len(p_ac), 3, 3, ((header16 >> 9) & 63) / 63 * 1.25)
    ratio = aspect_ratio(hash_)
    w = js_round(side if ratio > 1 else side * ratio)
    h = js_round(side / ratio if ratio > 1 else side)
    fx, fy = _cosines(w, max(lx, 5)), _cosines(h, max(ly, 5))
    lum = _plane((header24 & 63) / 63, l_ac, fx, fy)
    p = _plane(((header24 >> 6) & 63) / 31.5 - 1, p_ac, fx, fy)
    q = _plane(((header24 >> 12) & 63) / 31.5 - 1, q_ac, fx, fy)
    if has_alpha:
        a_ac = _decode_channel(nibbles, len(l_ac) + len(p_ac) + len(q_ac), 5, 5, (hash_[5] >> 4) / 15)
        alpha = _plane((hash_[5] & 15) / 15, a_ac, fx, fy)
    else:
        alpha = [1.0] * (w * h)
    out = bytearray()
    for values in zip(lum, p, q, alpha):
        rgba = (*_lpq_to_rgb(*values[:3]), values[3])
        out += bytes(int(255 * max(0.0, min(1.0, v))) for v in rgba)  # truncated, as a Uint8Array stores
    return w, h, bytes(out)
