"""The demo page's sample images: drawn in code, the same bytes on every run, photo-like."""

from __future__ import annotations

import pytest
from PIL import Image

from imgproxy import demo

SMALL = {"lake": (240, 160), "meadow": (120, 180), "forest": (180, 120), "dunes": (300, 100)}


@pytest.mark.parametrize("name", sorted(SMALL))
def test_scenes_are_deterministic_and_not_flat(name):
    draw = getattr(demo, name)
    first, second = draw(*SMALL[name]), draw(*SMALL[name])
    assert first.tobytes() == second.tobytes()
    # gradients, grain and blur give thousands of colours; flat shapes give a handful
    assert len(first.getcolors(maxcolors=1 << 24) or []) > 2000


def test_the_sample_folder_holds_the_lead_photo_and_an_animation(tmp_path):
    folder = demo.ensure_demo_images(tmp_path)
    names = {p.name for p in folder.iterdir()}
    assert demo.HERO in names and "spinner.gif" in names
    with Image.open(folder / "spinner.gif") as gif:
        assert getattr(gif, "n_frames", 1) == 12
    with Image.open(folder / demo.HERO) as photo:
        assert photo.size == (2400, 1600)
    again = demo.ensure_demo_images(tmp_path / "again")
    assert all((folder / n).read_bytes() == (again / n).read_bytes() for n in names)
