"""Sample images for the demo page, drawn with Pillow on first run (no bundled binaries).

They are meant to look like photographs, so the page shows what the service does to real
pictures: smooth gradients, grain, soft light, a blurred background behind a sharp subject.
Every random choice comes from a seeded generator, so the files are the same on every run.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from pathlib import Path

from PIL import Image, ImageChops, ImageDraw, ImageFilter

DEMO_DIR = "demo"
HERO = "valley.jpg"  # the page leads with this one when it is there
Colour = tuple[int, int, int]


def _gradient(width: int, height: int, stops: Sequence[tuple[float, Colour]]) -> Image.Image:
    """A vertical gradient through (position 0..1, colour) stops."""
    strip = Image.new("RGB", (1, 256))
    for y in range(256):
        t = y / 255
        (p0, c0), (p1, c1) = next(
            ((a, b) for a, b in zip(stops, stops[1:]) if a[0] <= t <= b[0]), (stops[-2], stops[-1])
        )
        f = (t - p0) / ((p1 - p0) or 1)
        strip.putpixel((0, y), tuple(round(a + (b - a) * f) for a, b in zip(c0, c1)))
    return strip.resize((width, height), Image.Resampling.BILINEAR)


def _glow(width: int, height: int, cx: float, cy: float, radius: float, colour: Colour, strength: float) -> Image.Image:
    """Soft light around (cx, cy) as an additive RGB layer."""
    size = max(1, round(radius * 2))
    # radial_gradient reaches 255 in the corners only: stretched so the light ends at the circle
    circle = Image.radial_gradient("L").point(lambda v: min(255, round(v * 256 / 181)))
    falloff = circle.resize((size, size), Image.Resampling.BILINEAR)
    mask = Image.new("L", (width, height), 255)
    mask.paste(falloff, (round(cx - radius), round(cy - radius)))
    mask = mask.point(lambda v: round((255 - v) ** 2 / 255 * strength))
    layer = Image.new("RGB", (width, height), colour)
    return Image.composite(layer, Image.new("RGB", (width, height)), mask)


def _ridge(rng: random.Random, width: int, base: float, rough: float, steps: int = 9) -> list[tuple[float, float]]:
    """A mountain or hill outline by midpoint displacement: points from x=0 to x=width."""
    heights = [base + rng.uniform(-rough, rough), base + rng.uniform(-rough, rough)]
    spread = rough
    for _ in range(steps):
        spread *= 0.55
        out = []
        for a, b in zip(heights, heights[1:]):
            out += [a, (a + b) / 2 + rng.uniform(-spread, spread)]
        heights = out + [heights[-1]]
    step = width / (len(heights) - 1)
    return [(i * step, h) for i, h in enumerate(heights)]


def _layer(image: Image.Image, outline: list[tuple[float, float]], colour: Colour, blur: float) -> None:
    """Fill below `outline` with `colour`, its edge blurred by `blur` px (depth of field)."""
    width, height = image.size
    mask = Image.new("L", image.size, 0)
    ImageDraw.Draw(mask).polygon(outline + [(width, height), (0, height)], fill=255)
    if blur:
        mask = mask.filter(ImageFilter.GaussianBlur(blur))
    image.paste(Image.new("RGB", image.size, colour), (0, 0), mask)


def _grain(image: Image.Image, seed: int, amount: float) -> Image.Image:
    """Film grain: seeded noise, softened a little, mixed in (stays the same on every run)."""
    width, height = image.size
    noise = Image.frombytes("L", (width, height), random.Random(seed).randbytes(width * height))
    noise = noise.filter(ImageFilter.GaussianBlur(0.6)).point(lambda v: 128 + (v - 128) * 2)
    return Image.blend(image, ImageChops.overlay(image, noise.convert("RGB")), amount)


def _vignette(image: Image.Image, strength: float) -> Image.Image:
    width, height = image.size
    ring = Image.radial_gradient("L").resize((width, height), Image.Resampling.BILINEAR)
    ring = ring.point(lambda v: 255 - round(min(255, v * v / 255) * strength))
    return ImageChops.multiply(image, Image.merge("RGB", (ring, ring, ring)))


def _pine(
    draw: ImageDraw.ImageDraw, x: float, ground: float, tall: float, colour: Colour | int, rng: random.Random
) -> None:
    """A sharp conifer: a trunk and ragged tiers of branches."""
    draw.rectangle((x - tall * 0.012, ground - tall * 0.25, x + tall * 0.012, ground), fill=colour)
    tiers = 14
    for i in range(tiers):
        y = ground - tall * (0.15 + 0.85 * i / tiers)
        half = tall * 0.2 * (1 - i / tiers) + tall * 0.015
        points = [(x, y - tall * 0.11)]
        for k in range(7):
            f = k / 6
            points.append((x + half * f, y - tall * 0.11 * (1 - f) + rng.uniform(-1, 1) * tall * 0.008))
        points.append((x - half, y + rng.uniform(-1, 1) * tall * 0.01))
        draw.polygon(points, fill=colour)


def lake(width: int = 2400, height: int = 1600) -> Image.Image:
    """Sunrise over a mountain lake: hazy peaks, a warm sky, a sharp pine on the near shore."""
    rng = random.Random(1)
    horizon = height * 0.58
    sun = (width * 0.64, height * 0.33)
    image = _gradient(
        width,
        height,
        [(0, (38, 74, 140)), (0.25, (110, 135, 190)), (0.45, (245, 185, 135)), (0.58, (255, 214, 160)), (1, (0, 0, 0))],
    )
    image = ImageChops.add(image, _glow(width, height, *sun, height * 0.55, (255, 150, 70), 0.7))
    image = ImageChops.add(image, _glow(width, height, *sun, height * 0.06, (255, 250, 235), 1.0))
    # distant ranges: paler and softer the farther they are (haze and a shallow depth of field)
    ranges = (((196, 150, 160), 9, 0.2, 0.13), ((120, 100, 130), 6, 0.13, 0.09), ((52, 56, 78), 3, 0.06, 0.05))
    for colour, blur, rise, rough in ranges:
        outline = _ridge(rng, width, horizon - height * rise, height * rough, steps=10)
        _layer(image, [(x, min(y, horizon)) for x, y in outline], colour, blur)
    # light scattered in the haze over the far ranges
    image = ImageChops.add(image, _glow(width, height, *sun, height * 0.35, (120, 70, 30), 0.5))
    # the water mirrors the sky and hills, darker and softened by ripples
    sky = image.crop((0, 0, width, round(horizon)))
    mirror = sky.transpose(Image.Transpose.FLIP_TOP_BOTTOM).filter(ImageFilter.GaussianBlur(4))
    mirror = Image.blend(mirror, Image.new("RGB", mirror.size, (20, 35, 55)), 0.4)
    image.paste(mirror.crop((0, 0, width, height - round(horizon))), (0, round(horizon)))
    ripples = Image.new("L", (width, height - round(horizon)), 0)
    rdraw = ImageDraw.Draw(ripples)
    for _ in range(2500):
        y = rng.random() ** 1.5 * ripples.height
        # most ripples catch the light on the sun's path, a few anywhere
        x = rng.gauss(sun[0], width * 0.05 * (1 + y / ripples.height)) if rng.random() < 0.7 else rng.uniform(0, width)
        length = rng.uniform(10, 90) * (1 + y / ripples.height * 3)
        rdraw.line((x - length / 2, y, x + length / 2, y), fill=rng.randint(40, 150), width=max(1, round(y / 90)))
    ripples = ripples.filter(ImageFilter.GaussianBlur(1.6))
    image.paste(Image.new("RGB", ripples.size, (255, 222, 180)), (0, round(horizon)), ripples)
    # the near shore and the subject, in focus
    shore = _ridge(rng, width, height * 0.86, height * 0.05, steps=10)
    _layer(image, [(x, y + (width - x) / width * height * 0.05) for x, y in shore], (16, 18, 18), 1)
    draw = ImageDraw.Draw(image)
    for x, tall in ((width * 0.18, height * 0.62), (width * 0.24, height * 0.42), (width * 0.09, height * 0.5)):
        _pine(draw, x, height * 0.9, tall, (12, 16, 15), rng)
    return _grain(_vignette(image, 0.4), 11, 0.12)


def meadow(width: int = 1200, height: int = 1800) -> Image.Image:
    """A flower at dusk in front of out-of-focus lights (bokeh): blurred far, sharp near."""
    rng = random.Random(2)
    image = _gradient(width, height, [(0, (40, 34, 70)), (0.55, (150, 80, 90)), (1, (40, 48, 30))])
    lights = Image.new("RGB", (width, height))
    ldraw = ImageDraw.Draw(lights)
    for _ in range(70):
        r = rng.uniform(width * 0.03, width * 0.1)
        x, y = rng.uniform(0, width), rng.uniform(0, height * 0.75)
        colour = rng.choice(((255, 190, 110), (255, 140, 120), (200, 170, 255), (255, 230, 170)))
        ldraw.ellipse((x - r, y - r, x + r, y + r), fill=tuple(round(c * rng.uniform(0.25, 0.6)) for c in colour))
    image = ImageChops.add(image, lights.filter(ImageFilter.GaussianBlur(width * 0.012)))
    grass = Image.new("L", (width, height), 0)
    gdraw = ImageDraw.Draw(grass)
    for _ in range(260):
        x = rng.uniform(0, width)
        top = height * rng.uniform(0.55, 0.85)
        gdraw.line((x, height, x + rng.uniform(-80, 80), top), fill=255, width=rng.randint(3, 9))
    image.paste(Image.new("RGB", (width, height), (34, 48, 26)), (0, 0), grass.filter(ImageFilter.GaussianBlur(9)))
    # the subject: a stem and a flower head, sharp, lit from the upper left
    draw = ImageDraw.Draw(image)
    cx, cy = width * 0.52, height * 0.36
    stem = [(cx + math.sin(t / 40) * width * 0.04, cy + t * height / 40 * 0.62) for t in range(41)]
    draw.line(stem, fill=(70, 110, 50), width=round(width * 0.014), joint="curve")
    # the petals are drawn and turned on a square around the flower only (full-size layers are slow)
    length, across = width * 0.2, width * 0.06
    side = round(length * 2.6)
    ox, oy = cx - side / 2, cy - side / 2
    petals = Image.new("RGBA", (side, side))
    for k in range(14):
        angle = k / 14 * math.tau + rng.uniform(-0.05, 0.05)
        petal = Image.new("RGBA", (side, side))
        pdraw = ImageDraw.Draw(petal)
        for i in range(12):  # layered ellipses: lighter toward the tip, a soft sheen
            f = i / 11
            shade = (round(235 + 20 * f), round(200 + 45 * f), round(120 + 110 * f), 255)
            px = side / 2 + math.cos(angle) * length * (0.3 + 0.4 * f)
            py = side / 2 + math.sin(angle) * length * (0.3 + 0.4 * f)
            rx, ry = length * (0.45 - 0.3 * f), across * (1 - 0.5 * f)
            pdraw.ellipse((px - rx, py - ry, px + rx, py + ry), fill=shade)
        turned = petal.rotate(-math.degrees(angle), center=(side / 2, side / 2), resample=Image.Resampling.BICUBIC)
        petals.alpha_composite(turned)
    edge = petals.getchannel("A").filter(ImageFilter.GaussianBlur(0.8))
    image.paste(petals.convert("RGB"), (round(ox), round(oy)), edge)
    r = width * 0.07
    disk = _glow(width, height, cx - r * 0.3, cy - r * 0.3, r * 1.4, (255, 200, 60), 1.0)
    mask = Image.new("L", (width, height), 0)
    ImageDraw.Draw(mask).ellipse((cx - r, cy - r, cx + r, cy + r), fill=255)
    image.paste(ImageChops.add(Image.new("RGB", (width, height), (120, 60, 10)), disk), (0, 0), mask)
    return _grain(_vignette(image, 0.55), 12, 0.15)


def dunes(width: int = 3000, height: int = 1000) -> Image.Image:
    """A panorama of dunes in evening light, each ridge fainter with distance."""
    rng = random.Random(3)
    image = _gradient(width, height, [(0, (90, 130, 190)), (0.45, (240, 200, 170)), (1, (200, 120, 70))])
    image = ImageChops.add(image, _glow(width, height, width * 0.8, height * 0.4, height * 0.9, (255, 180, 110), 0.7))
    for depth in range(6):
        f = depth / 5
        colour = (round(225 - 90 * f), round(170 - 95 * f), round(140 - 95 * f))
        outline = _ridge(rng, width, height * (0.45 + 0.1 * depth), height * 0.08, steps=8)
        _layer(image, outline, colour, 8 * (1 - f) + 0.8)
        # the lit side of each crest
        ImageDraw.Draw(image).line(outline, fill=tuple(min(255, c + 50) for c in colour), width=2)
    return _grain(_vignette(image, 0.35), 13, 0.15)


def forest(width: int = 1800, height: int = 1200) -> Image.Image:
    """Pines in morning fog: rows of trees fading into the mist, the nearest sharp."""
    rng = random.Random(4)
    image = _gradient(width, height, [(0, (200, 210, 205)), (0.7, (150, 165, 150)), (1, (60, 70, 55))])
    image = ImageChops.add(image, _glow(width, height, width * 0.3, height * 0.2, height * 0.8, (90, 80, 50), 0.8))
    for depth in range(4):
        f = depth / 3
        layer = Image.new("L", (width, height), 0)
        ldraw = ImageDraw.Draw(layer)
        for _ in range(18 - depth * 4):
            ground = height * (0.6 + 0.14 * f + rng.uniform(-0.03, 0.03))
            _pine(ldraw, rng.uniform(0, width), ground, height * (0.25 + 0.45 * f) * rng.uniform(0.7, 1.2), 255, rng)
        colour = (round(150 - 130 * f), round(165 - 135 * f), round(150 - 125 * f))
        image.paste(
            Image.new("RGB", image.size, colour), (0, 0), layer.filter(ImageFilter.GaussianBlur(9 * (1 - f) ** 2 + 0.5))
        )
    return _grain(_vignette(image, 0.4), 14, 0.15)


def marble(size: int = 1024) -> Image.Image:
    """A glass marble on a transparent background with a soft shadow: a product shot (alpha)."""
    image = Image.new("RGBA", (size, size))
    shadow = Image.new("L", (size, size), 0)
    ImageDraw.Draw(shadow).ellipse((size * 0.2, size * 0.8, size * 0.9, size * 0.93), fill=150)
    image.paste(
        Image.new("RGBA", (size, size), (20, 20, 30, 255)), (0, 0), shadow.filter(ImageFilter.GaussianBlur(size / 40))
    )
    r = size * 0.36
    cx, cy = size * 0.5, size * 0.48
    body = _gradient(size, size, [(0, (90, 170, 230)), (0.5, (30, 90, 160)), (1, (10, 30, 70))])
    swirl = Image.new("L", (size, size), 0)
    sdraw = ImageDraw.Draw(swirl)
    for k in range(5):
        sdraw.arc(
            (cx - r * 0.8, cy - r * (0.2 + 0.12 * k), cx + r * 0.8, cy + r * (0.2 + 0.12 * k)),
            200,
            340,
            fill=255,
            width=round(size / 60),
        )
    body.paste(
        Image.new("RGB", (size, size), (250, 140, 60)), (0, 0), swirl.filter(ImageFilter.GaussianBlur(size / 90))
    )
    body = ImageChops.add(body, _glow(size, size, cx - r * 0.35, cy - r * 0.4, r * 0.5, (255, 255, 255), 0.9))
    body = ImageChops.add(body, _glow(size, size, cx + r * 0.4, cy + r * 0.5, r * 0.6, (60, 120, 160), 0.6))
    mask = Image.new("L", (size, size), 0)
    ImageDraw.Draw(mask).ellipse((cx - r, cy - r, cx + r, cy + r), fill=255)
    image.paste(_grain(body, 15, 0.1).convert("RGBA"), (0, 0), mask.filter(ImageFilter.GaussianBlur(1.2)))
    return image


def spinner(size: int = 240, frames: int = 12) -> list[Image.Image]:
    """A loading indicator: twelve dots, the brightest one turning (an animated GIF's frames)."""
    out = []
    scale = 4  # drawn large, then reduced: smooth edges
    for n in range(frames):
        big = Image.new("RGB", (size * scale, size * scale), (246, 247, 250))
        draw = ImageDraw.Draw(big)
        c = size * scale / 2
        for k in range(frames):
            age = (n - k) % frames
            colour = tuple(round(a + (b - a) * age / frames) for a, b in zip((37, 99, 235), (214, 222, 235)))
            angle = k / frames * math.tau
            x, y = c + math.cos(angle) * c * 0.62, c + math.sin(angle) * c * 0.62
            dot = c * (0.13 - 0.05 * age / frames)
            draw.ellipse((x - dot, y - dot, x + dot, y + dot), fill=colour)
        out.append(big.resize((size, size), Image.Resampling.LANCZOS))
    return out


def ensure_demo_images(root: Path) -> Path:
    """Create <root>/demo/ with the sample images unless it exists. Returns the directory."""
    target = root / DEMO_DIR
    if target.is_dir() and any(target.iterdir()):
        return target
    target.mkdir(parents=True, exist_ok=True)
    lake().save(target / HERO, quality=92)
    meadow().save(target / "dusk-portrait.jpg", quality=92)
    forest().save(target / "forest.jpg", quality=92)
    dunes().save(target / "panorama.webp", quality=92)
    marble().save(target / "badge.png")  # the name earlier versions used
    frames = spinner()
    frames[0].save(target / "spinner.gif", save_all=True, append_images=frames[1:], duration=80, loop=0)
    return target
