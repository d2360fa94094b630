"""How far an encoded image looks from the pixels it was encoded from (pure numpy, no I/O).

`quality=auto` (encode.encode_auto) keeps the smallest encode whose distance (1 - score) is at most
the format's ratio times that of the image's own jpegli q80 encode (`[render] auto_quality_target*`).
The score is 0.7 x a multi-scale SSIM of the luma (the mean SSIM over 8x8 box windows every 4
pixels, at full size, 1/2 and 1/4, averaged) + 0.3 x the mean SSIM of Cb and Cr at half size; ~15 ms
for a 1080-px image. bench/autotarget.py chose it with SSIMULACRA2 as the judge (config.toml has the
figures): the luma alone let colour damage through, and with Cb/Cr at a 0.3 share the looks kept
were the steadiest (shares 0.1-0.5 tried).
"""

from __future__ import annotations

import numpy as np
from PIL import Image

WINDOW = 8  # box window of the local statistics (every WINDOW/2 pixels)
SCALES = 3  # full size, 1/2, 1/4
C1, C2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
CHROMA_WEIGHT = 0.3  # share of the Cb/Cr SSIM in the score (bench/autotarget.py chose it; see config.toml)


def luma(image: Image.Image) -> np.ndarray:
    """The image's luma as float32 (alpha ignored: the encoders keep it losslessly or not at all)."""
    return np.asarray(image.convert("L"), dtype=np.float32)


def planes(image: Image.Image) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Y at full size, Cb and Cr at half size (as the 4:2:0 codecs keep them), float32."""
    if image.mode not in ("RGB", "L"):
        image = image.convert("RGB")  # RGBA, LA, P, CMYK...: Pillow converts to YCbCr from RGB or L only
    y, cb, cr = (np.asarray(band, dtype=np.float32) for band in image.convert("YCbCr").split())
    return y, _half(cb), _half(cr)


def _box(a: np.ndarray) -> np.ndarray:
    """Means of the WINDOW x WINDOW windows every WINDOW/2 pixels: sums of half-window blocks, then
    of 2 x 2 of those. Windows overlap, so every block edge of a JPEG or a DCT codec is inside one."""
    step = WINDOW // 2
    h, w = a.shape[0] // step * step, a.shape[1] // step * step
    rows = a[0:h:step, :w].copy()  # strided adds: faster than reshape().sum()
    for i in range(1, step):
        rows += a[i:h:step, :w]
    blocks = rows[:, 0:w:step].copy()
    for i in range(1, step):
        blocks += rows[:, i:w:step]
    return (blocks[:-1, :-1] + blocks[1:, :-1] + blocks[:-1, 1:] + blocks[1:, 1:]) * (1 / (WINDOW * WINDOW))


def _stats(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mean = _box(x)
    return mean, _box(x * x) - mean * mean


def _index(x: np.ndarray, x_stats: tuple[np.ndarray, np.ndarray], y: np.ndarray) -> float:
    (mx, sxx), (my, syy) = x_stats, _stats(y)
    sxy = _box(x * y) - mx * my
    index = ((2 * mx * my + C1) * (2 * sxy + C2)) / ((mx * mx + my * my + C1) * (sxx + syy + C2))
    return float(index.mean())


def ssim(x: np.ndarray, y: np.ndarray) -> float:
    """Mean SSIM (Wang et al.) of two same-size planes, box windows; 1.0 for a plane too small."""
    return 1.0 if min(x.shape) < WINDOW else _index(x, _stats(x), y)


def _half(a: np.ndarray) -> np.ndarray:
    h, w = a.shape[0] // 2 * 2, a.shape[1] // 2 * 2
    a = a[:h, :w]
    return (a[0::2, 0::2] + a[1::2, 0::2] + a[0::2, 1::2] + a[1::2, 1::2]) * 0.25


def pyramid(plane: np.ndarray, scales: int = SCALES) -> list[np.ndarray]:
    levels = [plane]
    for _ in range(scales - 1):
        levels.append(_half(levels[-1]))
    return levels


class Reference:
    """The pixels about to be encoded, ready to score encodes of them (their statistics computed once)."""

    def __init__(self, image: Image.Image, scales: int = SCALES):
        y, cb, cr = planes(image)
        self.levels = [(x, _stats(x)) for x in pyramid(y, scales) if min(x.shape) >= WINDOW]
        self.chroma = [(x, _stats(x)) for x in (cb, cr)] if min(cb.shape) >= WINDOW else []

    def score(self, image: Image.Image) -> float:
        """(1 - CHROMA_WEIGHT) x the mean over the scales of the luma SSIM of `image` (decoded)
        against the reference + CHROMA_WEIGHT x the mean SSIM of its Cb and Cr at half size; 1.0
        when the image is too small to measure."""
        if not self.levels:
            return 1.0
        y, cb, cr = planes(image)
        levels = pyramid(y, len(self.levels))
        luma_index = sum(_index(x, stats, d) for (x, stats), d in zip(self.levels, levels)) / len(self.levels)
        if not self.chroma:
            return luma_index
        chroma_index = sum(_index(x, stats, d) for (x, stats), d in zip(self.chroma, (cb, cr))) / 2
        return (1 - CHROMA_WEIGHT) * luma_index + CHROMA_WEIGHT * chroma_index
