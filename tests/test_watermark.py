"""Watermarks (`[watermarks.NAME]`, `?watermark=NAME`): config checks at start-up, strict parsing,
cache keys that follow the overlay's bytes and settings, and the pixels of real renders of a
corpus photo through the live server. Overlay images are drawn here with Pillow (none committed)."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from PIL import Image, ImageChops

from imgproxy.config import ConfigError, load_config
from imgproxy.errors import BadRequest
from imgproxy.options import parse_options
from imgproxy.playground import controls

from .conftest import CORPUS, LiveServer, to_toml

pytestmark = pytest.mark.timeout(300)
PHOTO = "photos/progressive_dalmatian.jpg"  # 960x640: w=480 gives 480x320
ANIMATION = "photos/animated_earth.gif"  # 400x400, 44 frames
RED = (255, 0, 0)
WATERMARKS = {
    "red": {"image": "marks/red.png", "position": "southeast", "margin": 10},
    "half": {"image": "marks/red.png", "position": "northwest", "margin": 0, "opacity": 0.5},
    "wide": {"image": "marks/red.png", "position": "center", "scale": 0.25},
    "tiles": {"image": "marks/square.png", "position": "northwest", "margin": 30, "repeat": True},
}


def draw_marks(folder: Path, colour: tuple[int, int, int] = RED) -> None:
    """An opaque 40x20 logo and a 20x20 square, both of one colour."""
    (folder / "marks").mkdir(parents=True, exist_ok=True)
    Image.new("RGBA", (40, 20), colour + (255,)).save(folder / "marks" / "red.png")
    Image.new("RGBA", (20, 20), colour + (255,)).save(folder / "marks" / "square.png")


def write_config(folder: Path, watermarks: dict, presets: dict | None = None) -> Path:
    path = folder / "config.toml"
    settings = {"sources": {"local": {"root": str(CORPUS), "generate_demo": False}}, "watermarks": watermarks}
    if presets is not None:
        settings["presets"] = presets
    path.write_text(to_toml(settings))
    return path


def start_server(workdir: Path, colour: tuple[int, int, int] = RED) -> LiveServer:
    server = LiveServer(workdir, {"watermarks": WATERMARKS, "presets": {"marked": {"width": 300, "watermark": "red"}}})
    draw_marks(server.workdir, colour)
    return server.start()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    server = start_server(tmp_path_factory.mktemp("watermark"))
    yield server
    server.stop()


def get(server: LiveServer, query: str, source: str = PHOTO) -> httpx.Response:
    with server.client() as client:
        return client.get(f"/picture/{source}?{query}")


def picture(server: LiveServer, query: str, source: str = PHOTO) -> Image.Image:
    response = get(server, query, source)
    assert response.status_code == 200, response.text
    image = Image.open(io.BytesIO(response.content))
    image.load()
    return image


def colours(image: Image.Image) -> list:
    return [colour for _, colour in image.getcolors(image.width * image.height)]


def difference(server: LiveServer, query: str, name: str) -> tuple[Image.Image, Image.Image]:
    plain = picture(server, f"{query}&encoding=png").convert("RGB")
    marked = picture(server, f"{query}&encoding=png&watermark={name}").convert("RGB")
    assert plain.size == marked.size
    return plain, marked


# --- config -----------------------------------------------------------------------------------


def test_a_watermark_loads_with_its_settings_and_defaults(tmp_path):
    draw_marks(tmp_path)
    config = load_config(write_config(tmp_path, {"logo": {"image": "marks/red.png"}}), environ={})
    overlay = config.watermarks["logo"]
    assert overlay.image.size == (40, 20) and overlay.image.mode == "RGBA"
    settings = overlay.settings
    assert (settings.position, settings.margin, settings.opacity, settings.scale, settings.repeat) == (
        "southeast",
        10,
        1.0,
        0.0,
        False,
    )
    assert len(overlay.digest) == 16 and config.watermark_digests == {"logo": overlay.digest}


@pytest.mark.parametrize(
    "table, key",
    [
        ({"image": "marks/red.png", "opacity": 1.5}, "watermarks.logo.opacity"),
        ({"image": "marks/red.png", "opacity": -0.1}, "watermarks.logo.opacity"),
        ({"image": "marks/red.png", "opacity": "half"}, "watermarks.logo.opacity"),
        ({"image": "marks/red.png", "position": "middle"}, "watermarks.logo.position"),
        ({"image": "marks/red.png", "position": "smart"}, "watermarks.logo.position"),
        ({"image": "marks/red.png", "margin": -1}, "watermarks.logo.margin"),
        ({"image": "marks/red.png", "margin": 1.5}, "watermarks.logo.margin"),
        ({"image": "marks/red.png", "scale": 2}, "watermarks.logo.scale"),
        ({"image": "marks/red.png", "repeat": "yes"}, "watermarks.logo.repeat"),
        ({"image": "marks/red.png", "colour": "red"}, "watermarks.logo.colour"),
        ({"image": "marks/missing.png"}, "watermarks.logo.image"),
        ({"image": "marks/not-an-image.png"}, "watermarks.logo.image"),
        ({"image": "marks/huge.png"}, "watermarks.logo.image"),
        ({"image": "marks"}, "watermarks.logo.image"),  # a directory
        ({"image": ""}, "watermarks.logo.image"),
        ({"position": "center"}, "watermarks.logo.image"),  # no image at all
    ],
)
def test_a_bad_watermark_is_a_config_error_naming_the_key(tmp_path, table, key):
    draw_marks(tmp_path)
    (tmp_path / "marks" / "not-an-image.png").write_text("this is text, not a PNG\n")
    Image.new("L", (4097, 1)).save(tmp_path / "marks" / "huge.png")  # small file, too wide: refused from the header
    with pytest.raises(ConfigError) as error:
        load_config(write_config(tmp_path, {"logo": table}), environ={})
    assert error.value.problems == [error.value.problems[0]] and error.value.problems[0].startswith(key + ":")


def test_a_watermark_name_must_be_url_safe(tmp_path):
    draw_marks(tmp_path)
    path = tmp_path / "config.toml"
    path.write_text('[watermarks."a/b"]\nimage = "marks/red.png"\n')
    with pytest.raises(ConfigError, match="^watermarks.a/b: a name is up to 64 URL-safe characters"):
        load_config(path, environ={})


def test_a_preset_may_set_a_watermark_but_only_a_configured_one(tmp_path):
    draw_marks(tmp_path)
    marks = {"logo": {"image": "marks/red.png"}}
    config = load_config(write_config(tmp_path, marks, {"marked": {"width": 300, "watermark": "logo"}}), environ={})
    options = parse_options([("preset", "marked")], config.presets, watermarks=config.watermark_digests)
    assert (options.watermark, options.watermark_digest) == ("logo", config.watermarks["logo"].digest)
    with pytest.raises(ConfigError, match=r"presets.marked.watermark: unknown watermark 'nope' \(allowed: logo\)"):
        load_config(write_config(tmp_path, marks, {"marked": {"watermark": "nope"}}), environ={})


def test_check_config_stops_on_a_missing_watermark_file_with_one_line(tmp_path):
    path = write_config(tmp_path, {"logo": {"image": "marks/gone.png"}})
    proc = subprocess.run(
        [sys.executable, "-m", "imgproxy", "check-config", "--config", str(path)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    (line,) = proc.stderr.strip().splitlines()
    assert "config error: watermarks.logo.image: cannot read" in line and "gone.png" in line


# --- parsing and cache keys ---------------------------------------------------------------------


def test_parsing_names_the_parameter_and_the_allowed_names():
    digests = {"logo": "0123456789abcdef", "badge": "fedcba9876543210"}
    options = parse_options([("wm", "logo")], {}, watermarks=digests)
    assert options.cache_key().endswith("&wm=logo:0123456789abcdef")
    with pytest.raises(BadRequest, match=r"^wm: unknown watermark 'nope' \(allowed: badge, logo\)$"):
        parse_options([("wm", "nope")], {}, watermarks=digests)
    with pytest.raises(BadRequest, match=r"^watermark: unknown watermark 'logo' \(allowed: none configured\)$"):
        parse_options([("watermark", "logo")], {})
    for hostile in ("", "a/b", "../logo", "logo\x00", "x" * 65, "lo go"):
        with pytest.raises(BadRequest, match="^watermark: "):
            parse_options([("watermark", hostile)], {}, watermarks=digests)


def test_without_a_watermark_the_cache_key_is_unchanged():
    assert parse_options([("w", "300")], {}, watermarks={"logo": "0" * 16}).cache_key() == (
        "w=300&h=&fm=&q=&m=fit&dpr=1&en=0&bg=ffffffff"
    )


def test_other_overlay_bytes_or_settings_give_another_cache_key(tmp_path):
    keys = []
    for name, colour, opacity in (("a", RED, 1.0), ("b", (0, 0, 255), 1.0), ("c", RED, 0.5), ("d", RED, 1.0)):
        folder = tmp_path / name
        draw_marks(folder, colour)
        config = load_config(write_config(folder, {"logo": {"image": "marks/red.png", "opacity": opacity}}), {})
        keys.append(parse_options([("wm", "logo")], {}, watermarks=config.watermark_digests).cache_key())
    assert keys[0] == keys[3]  # the same bytes and settings in another folder: the same answer
    assert len({keys[0], keys[1], keys[2]}) == 3


# --- pixels, through the live server ------------------------------------------------------------


def test_an_opaque_logo_sits_at_its_gravity_inside_the_margin(server):
    plain, marked = difference(server, "w=480", "red")
    assert marked.size == (480, 320)
    # 40x20 at southeast with a 10-px margin: exactly x 430..470, y 290..310 changed, all of it red
    assert ImageChops.difference(plain, marked).getbbox() == (430, 290, 470, 310)
    assert colours(marked.crop((430, 290, 470, 310))) == [RED]
    assert marked.crop((0, 0, 430, 290)).tobytes() == plain.crop((0, 0, 430, 290)).tobytes()  # northwest untouched
    assert marked.getpixel((10, 10)) != RED


def test_opacity_blends_the_logo_with_the_photo(server):
    plain, marked = difference(server, "w=480", "half")
    assert ImageChops.difference(plain, marked).getbbox() == (0, 0, 40, 20)  # northwest, margin 0
    alpha = round(255 * 0.5) / 255
    for xy in ((0, 0), (5, 7), (20, 10), (39, 19)):
        under, got = plain.getpixel(xy), marked.getpixel(xy)
        expected = tuple(round(o * alpha + u * (1 - alpha)) for o, u in zip(RED, under))
        assert all(abs(g - e) <= 1 for g, e in zip(got, expected)), (xy, under, got, expected)
        assert got != RED and got != under


@pytest.mark.parametrize("width", [480, 240])
def test_scale_is_a_fraction_of_the_output_width(server, width):
    plain, marked = difference(server, f"w={width}", "wide")
    box = ImageChops.difference(plain, marked).getbbox()
    assert box is not None
    logo_w, logo_h = box[2] - box[0], box[3] - box[1]
    assert (logo_w, logo_h) == (round(0.25 * width), round(0.25 * width / 2))  # 40x20 keeps its aspect
    assert (box[0] + box[2]) / 2 == pytest.approx(width / 2, abs=1)  # centred


def test_repeat_tiles_the_logo_over_the_whole_output(server):
    plain, marked = difference(server, "w=480", "tiles")
    # 20x20 squares every 50 px (30-px margin between them), through (30, 30): left edges -20, 30, …, 480
    lefts, tops = range(-20, 480, 50), range(-20, 320, 50)
    for left in lefts:
        for top in tops:
            visible = (max(0, left), max(0, top), min(480, left + 20), min(320, top + 20))
            if visible[0] < visible[2] and visible[1] < visible[3]:
                assert colours(marked.crop(visible)) == [RED], visible
            gap = (left + 25, top + 25)  # between the tiles: the photo as it was
            if 0 <= gap[0] < 480 and 0 <= gap[1] < 320:
                assert marked.getpixel(gap) == plain.getpixel(gap), gap
    tiles = sum(1 for left in lefts for top in tops if left >= 0 and top >= 0 and left + 20 <= 480 and top + 20 <= 320)
    assert tiles >= 40


def test_with_pad_the_logo_sits_on_the_canvas_corner(server):
    plain, marked = difference(server, "w=480&h=480&mode=pad&bg=%23000000", "red")
    assert marked.size == (480, 480)  # the 480x320 photo between black bands of 80 px
    assert ImageChops.difference(plain, marked).getbbox() == (430, 450, 470, 470)


def test_every_frame_of_an_animation_is_marked(server):
    image = picture(server, "w=200&encoding=gif&watermark=red", ANIMATION)
    assert image.n_frames == 44
    for index in range(image.n_frames):
        image.seek(index)
        r, g, b = image.convert("RGB").getpixel((200 - 10 - 20, 200 - 10 - 10))
        assert r > 200 and g < 60 and b < 60, (index, (r, g, b))


def test_an_unknown_watermark_is_a_400_naming_the_parameter_and_the_names(server):
    response = get(server, "w=480&wm=nope")
    assert response.status_code == 400
    assert response.text.strip() == "wm: unknown watermark 'nope' (allowed: half, red, tiles, wide)"
    assert response.headers["cache-control"] == "no-store"


def test_a_preset_with_a_watermark_is_the_same_entry_as_its_parameters(server):
    by_preset = get(server, "preset=marked")
    by_params = get(server, "watermark=red&width=300")
    assert by_preset.status_code == by_params.status_code == 200
    assert by_params.headers["x-cache"] == "HIT" and by_params.content == by_preset.content
    marked = Image.open(io.BytesIO(by_preset.content)).convert("RGB")
    r, g, b = marked.getpixel((300 - 10 - 20, 200 - 10 - 10))
    assert r > 200 and g < 60 and b < 60  # JPEG: red, near enough


def test_the_same_url_renders_the_same_bytes(server):
    first = get(server, "w=333&watermark=tiles&v=1")
    second = get(server, "w=333&watermark=tiles&v=2")  # another cache entry: rendered again
    assert first.headers["x-cache"] == second.headers["x-cache"] == "MISS"
    assert first.content == second.content and first.headers["etag"] == second.headers["etag"]


def test_a_new_overlay_file_gives_new_answers_not_stale_ones(tmp_path):
    """The cache outlives a restart; the overlay's digest in the key keeps the old result out."""
    first = start_server(tmp_path / "same")
    try:
        red = get(first, "w=480&encoding=png&watermark=red")
        assert get(first, "w=480&encoding=png&watermark=red").headers["x-cache"] == "HIT"
    finally:
        first.stop()
    second = start_server(tmp_path / "same", colour=(0, 0, 255))  # same workdir and cache, blue logo
    try:
        blue = get(second, "w=480&encoding=png&watermark=red")
    finally:
        second.stop()
    assert blue.status_code == 200 and blue.headers["x-cache"] == "MISS" and blue.content != red.content
    assert Image.open(io.BytesIO(blue.content)).convert("RGB").getpixel((450, 300)) == (0, 0, 255)


def test_the_playground_suggests_the_configured_watermarks(tmp_path):
    draw_marks(tmp_path)
    config = load_config(write_config(tmp_path, {"logo": {"image": "marks/red.png"}}), environ={})
    by_name = {c.name: c for c in controls(config, {})}
    assert by_name["watermark"].suggestions == ("logo",)
    assert by_name["preset"].suggestions == tuple(config.presets)
