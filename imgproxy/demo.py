"""Sample images for the demo page, drawn with Pillow on first run (no bundled binaries)."""

from __future__ import annotations

import math
from pathlib import Path

from PIL import Image, ImageDraw, ImageFilter

DEMO_DIR = "demo"


def _scene(width: int, height: int, sky: tuple, ground: tuple, sun: tuple) -> Image.Image:
    gradient = Image.linear_gradient("L").resize((width, height))
    image = Image.composite(
        Image.new("RGB", (width, height), sky),
        Image.new("RGB", (width, height), ground),
        gradient.point(lambda v: 255 - v),
    )
    draw = ImageDraw.Draw(image)
    r = min(width, height) // 8
    draw.ellipse((width * 0.7 - r, height * 0.25 - r, width * 0.7 + r, height * 0.25 + r), fill=sun)
    for i, shade in enumerate((60, 90, 120)):
        points = [
            (x, height * (0.55 + 0.1 * i) + math.sin(x / width * math.pi * (2 + i)) * height * 0.06)
            for x in range(0, width + 40, 40)
        ]
        draw.polygon(points + [(width, height), (0, height)], fill=(shade // 3, shade, shade // 2))
    # fine texture, so encoders have real detail to work on
    noise = Image.effect_noise((width, height), 24).convert("RGB")
    return Image.blend(image, noise, 0.08)


def _badge(size: int) -> Image.Image:
    image = Image.new("RGBA", (size, size), (0, 0, 0, 0))
    draw = ImageDraw.Draw(image)
    for i, colour in enumerate(((230, 57, 70, 255), (69, 123, 157, 220), (241, 250, 238, 200))):
        inset = i * size // 6
        draw.ellipse((inset, inset, size - inset, size - inset), fill=colour)
    return image.filter(ImageFilter.SMOOTH)


def _spinner(size: int, frames: int) -> list[Image.Image]:
    out = []
    for n in range(frames):
        frame = Image.new("RGB", (size, size), (250, 250, 250))
        draw = ImageDraw.Draw(frame)
        angle = 360 * n / frames
        draw.pieslice((size * 0.1, size * 0.1, size * 0.9, size * 0.9), angle, angle + 90, fill=(29, 53, 87))
        out.append(frame)
    return out


def ensure_demo_images(root: Path) -> Path:
    """Create <root>/demo/ with the sample images unless it exists. Returns the directory."""
    target = root / DEMO_DIR
    if target.is_dir() and any(target.iterdir()):
        return target
    target.mkdir(parents=True, exist_ok=True)
    _scene(2400, 1600, (135, 190, 235), (250, 220, 170), (255, 200, 80)).save(target / "valley.jpg", quality=90)
    _scene(1200, 1800, (40, 40, 90), (240, 120, 90), (255, 240, 200)).save(target / "dusk-portrait.jpg", quality=90)
    _scene(3000, 1000, (180, 220, 250), (200, 230, 200), (255, 255, 220)).save(target / "panorama.webp", quality=90)
    _badge(1024).save(target / "badge.png")
    frames = _spinner(240, 12)
    frames[0].save(target / "spinner.gif", save_all=True, append_images=frames[1:], duration=80, loop=0)
    return target
