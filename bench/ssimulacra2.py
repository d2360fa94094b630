"""SSIMULACRA 2.1 (libjxl's tools/ssimulacra2.cc) in numpy/scipy, with the reference side kept.

The benches score many outputs against one reference each (several formats, servers and
qualities per photo and width), so `Reference` computes the reference's pyramid once and
`Reference.score(image)` only the distorted side (about half the work of a whole comparison).

Same steps as the C++ tool: 8-bit sRGB to linear, XYB (libjxl's opsin matrix and bias, cube
root), the 2.1 "positive" rescaling, 6 scales downsampled 2x2 in linear RGB (edge pixels
replicated), each checked for >= 8 px BEFORE downsampling as the C++ does; per scale and XYB
channel the SSIM' map (no luma denominator, C2 = 0.0009) and the ringing/blurring edge maps,
their 1- and 4-norms, the 108 weights and the final polynomial. One deliberate difference: the
C++ blurs with a recursive (IIR) approximation of a sigma-1.5 Gaussian over a radius of 5 with
zero outside the image; here it is the exact sigma-1.5 Gaussian with the same radius and the same
zero padding on both axes. The PyPI `ssimulacra2` 0.3.0 (the same formula in float64) was not used:
it took 6 s CPU for one 1920x1440 pair (about 1 s here, 0.4 s with the reference kept); it also
reflects instead of zero-padding horizontally (on corpus photos at 480 and 1080 px the two differ
by 0.0-1.8 points) and checks the size after downsampling, so on a picture under 256 px on a side
it drops a scale the C++ keeps, which shifts the weights (480x99 panorama at q80: 47.6 here,
-24.2 there).
"""

from __future__ import annotations

import numpy as np
from PIL import Image
from scipy.ndimage import gaussian_filter1d

SCALES = 6
C2 = 0.0009
SIGMA = 1.5
TRUNCATE = 5 / SIGMA  # radius 5, as the C++ (round(3.2795 * sigma + 0.2546))
OPSIN = np.array(
    [
        [0.30, 0.622, 0.078],
        [0.23, 0.692, 0.078],
        [0.24342268924547819, 0.20476744424496821, 1 - 0.24342268924547819 - 0.20476744424496821],
    ],
    dtype=np.float32,
)
BIAS = np.float32(0.0037930732552754493)
CBRT_BIAS = np.cbrt(BIAS)
_levels = np.arange(256, dtype=np.float64) / 255
SRGB_TO_LINEAR = np.where(_levels <= 0.04045, _levels / 12.92, ((_levels + 0.055) / 1.055) ** 2.4).astype(np.float32)
WEIGHTS = (
    (0.0, 0.0007376606707406586, 0.0, 0.0, 0.0007793481682867309, 0.0, 0.0, 0.0004371155730107379, 0.0)
    + (1.1041726426657346, 0.00066284834129271, 0.00015231632783718752, 0.0, 0.0016406437456599754, 0.0)
    + (1.8422455520539298, 11.441172603757666, 0.0, 0.0007989109436015163, 0.000176816438078653, 0.0)
    + (1.8787594979546387, 10.94906990605142, 0.0, 0.0007289346991508072, 0.9677937080626833, 0.0)
    + (0.00014003424285435884, 0.9981766977854967, 0.00031949755934435053, 0.0004550992113792063, 0.0, 0.0)
    + (0.0013648766163243398, 0.0, 0.0, 0.0, 0.0, 0.0, 7.466890328078848, 0.0, 17.445833984131262)
    + (0.0006235601634041466, 0.0, 0.0, 6.683678146179332, 0.00037724407979611296, 1.027889937768264)
    + (225.20515300849274, 0.0, 0.0, 19.213238186143016, 0.0011401524586618361, 0.001237755635509985)
    + (176.39317598450694, 0.0, 0.0, 24.43300999870476, 0.28520802612117757, 0.0004485436923833408)
    + (0.0, 0.0, 0.0, 34.77906344483772, 44.835625328877896, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0)
    + (0.0008680556573291698, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0005313191874358747, 0.0, 0.00016533814161379112)
    + (0.0, 0.0, 0.0, 0.0, 0.0, 0.0004179171803251336, 0.0017290828234722833, 0.0, 0.0020827005846636437)
    + (0.0, 0.0, 8.826982764996862, 23.19243343998926, 0.0, 95.1080498811086, 0.9863978034400682)
    + (0.9834382792465353, 0.0012286405048278493, 171.2667255897307, 0.9807858872435379, 0.0, 0.0, 0.0)
    + (0.0005130064588990679, 0.0, 0.00010854057858411537)
)
assert len(WEIGHTS) == 108


def linear_rgb(image: Image.Image) -> np.ndarray:
    """(H, W, 3) float32 linear light from 8-bit sRGB (alpha, if any, is dropped: photos only)."""
    return SRGB_TO_LINEAR[np.asarray(image.convert("RGB"))]


def positive_xyb(linear: np.ndarray) -> np.ndarray:
    mixed = np.cbrt(np.maximum(linear @ OPSIN.T + BIAS, 0)) - CBRT_BIAS
    x = 0.5 * (mixed[..., 0] - mixed[..., 1])
    y = 0.5 * (mixed[..., 0] + mixed[..., 1])
    b = mixed[..., 2]
    return np.stack([x * 14 + 0.42, y + 0.01, (b - y) + 0.55], axis=-1)


def downsample(linear: np.ndarray) -> np.ndarray:
    """2x2 box average; an odd last row or column is replicated, as the C++ clamps."""
    h, w = linear.shape[:2]
    padded = np.pad(linear, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")
    return padded.reshape(padded.shape[0] // 2, 2, padded.shape[1] // 2, 2, 3).mean(axis=(1, 3), dtype=np.float32)


def blur(a: np.ndarray) -> np.ndarray:
    a = gaussian_filter1d(a, SIGMA, axis=0, mode="constant", truncate=TRUNCATE)
    return gaussian_filter1d(a, SIGMA, axis=1, mode="constant", truncate=TRUNCATE)


def _norms(d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per channel: the mean (1-norm) and the 4-norm of a non-negative (H, W, 3) map."""
    d = d.reshape(-1, 3).astype(np.float64)
    return d.mean(axis=0), np.sqrt(np.sqrt((d * d * d * d).mean(axis=0)))


def _pyramid(image: Image.Image) -> list[np.ndarray]:
    linear = linear_rgb(image)
    levels: list[np.ndarray] = []
    for scale in range(SCALES):
        if levels and min(levels[-1].shape[:2]) < 8:
            break
        if scale:
            linear = downsample(linear)
        levels.append(positive_xyb(linear))
    return levels


class Reference:
    """One reference image, ready to score any number of distorted images of its size."""

    def __init__(self, image: Image.Image):
        self.size = image.size
        self.levels = []
        for img1 in _pyramid(image):
            self.levels.append((img1, blur(img1), blur(img1 * img1)))

    def score(self, image: Image.Image) -> float:
        if image.size != self.size:
            raise ValueError(f"sizes differ: {image.size} vs reference {self.size}")
        total, i = 0.0, 0
        parts = []
        for (img1, mu1, s11), img2 in zip(self.levels, _pyramid(image)):
            mu2 = blur(img2)
            s22 = blur(img2 * img2)
            s12 = blur(img1 * img2)
            num_m = 1.0 - (mu1 - mu2) ** 2
            num_s = 2 * (s12 - mu1 * mu2) + C2
            denom_s = (s11 - mu1 * mu1) + (s22 - mu2 * mu2) + C2
            ssim = _norms(np.maximum(1.0 - num_m * num_s / denom_s, 0.0))
            edge = (1.0 + np.abs(img2 - mu2)) / (1.0 + np.abs(img1 - mu1)) - 1.0
            ringing = _norms(np.maximum(edge, 0.0))
            blurring = _norms(np.maximum(-edge, 0.0))
            parts.append((ssim, ringing, blurring))
        for c in range(3):
            for ssim, ringing, blurring in parts:
                for n in range(2):
                    total += WEIGHTS[i] * abs(ssim[n][c])
                    total += WEIGHTS[i + 1] * abs(ringing[n][c])
                    total += WEIGHTS[i + 2] * abs(blurring[n][c])
                    i += 3
        total *= 0.9562382616834844
        total = 2.326765642916932 * total - 0.020884521182843837 * total**2 + 6.248496625763138e-05 * total**3
        return 100.0 - 10.0 * total**0.6276336467831387 if total > 0 else 100.0


def ssimulacra2(reference: Image.Image, distorted: Image.Image) -> float:
    return Reference(reference).score(distorted)
