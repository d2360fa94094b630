"""Pure render steps, checked against Pillow doing the same work the slow way."""
import random

import pytest
from PIL import Image

from imgproxy.render import TRANSPOSE, oriented_size, stored_box


def _random_image(w, h, seed):
    rng = random.Random(seed)
    image = Image.new("RGB", (w, h))
    image.putdata([(rng.randrange(256), rng.randrange(256), rng.randrange(256)) for _ in range(w * h)])
    return image


@pytest.mark.parametrize("orientation", range(1, 9))
def test_stored_box_selects_the_same_pixels(orientation):
    stored = _random_image(7, 5, orientation)
    upright = stored.transpose(TRANSPOSE[orientation]) if orientation in TRANSPOSE else stored
    assert upright.size == oriented_size(7, 5, orientation)
    rng = random.Random(orientation)
    for _ in range(40):
        l, r = sorted(rng.sample(range(upright.width + 1), 2))
        t, b = sorted(rng.sample(range(upright.height + 1), 2))
        expected = upright.crop((l, t, r, b))
        box = tuple(int(v) for v in stored_box((l, t, r, b), orientation, *stored.size))
        got = stored.crop(box)
        if orientation in TRANSPOSE:
            got = got.transpose(TRANSPOSE[orientation])
        assert got.tobytes() == expected.tobytes(), (orientation, (l, t, r, b), box)
