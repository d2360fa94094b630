"""SVG sources: refused by default; with `[security] svg = "rasterize"` drawn by resvg at the output size,
and every hostile SVG (external references, entities, scripts, huge sizes, slow drawings) refused or
bounded — never a read, a fetch or a 500."""

from __future__ import annotations

import io
import os
import time
from pathlib import Path

import pytest
from PIL import Image

from imgproxy.config import ConfigError, load_config

from .conftest import CORPUS, LiveServer, group_members, manifest_rows

SVG_HEAD = '<svg xmlns="http://www.w3.org/2000/svg" xmlns:xlink="http://www.w3.org/1999/xlink"'
# 200x100: left half red, top right quarter blue, bottom right quarter transparent
SHAPES = (
    SVG_HEAD + ' width="200" height="100" viewBox="0 0 20 10">'
    '<rect width="10" height="10" fill="#ff0000"/><rect x="10" width="10" height="5" fill="#0000ff"/></svg>'
)
RED, BLUE = (255, 0, 0), (0, 0, 255)


def svg(body: str, size: str = 'width="100" height="100"') -> str:
    return f"{SVG_HEAD} {size}>{body}</svg>"


def use_bomb(levels: int = 9, fan: int = 10) -> str:
    """<use> of a group of 10 <use> of … : 10^9 nodes once expanded, from 100 elements."""
    groups = ['<g id="l0"><rect width="10" height="10" fill="red"/></g>']
    for i in range(1, levels + 1):
        groups.append(f'<g id="l{i}">' + f'<use href="#l{i - 1}"/>' * fan + "</g>")
    return svg("<defs>" + "".join(groups) + f'</defs><use href="#l{levels}"/>')


BILLION_LAUGHS = (
    '<?xml version="1.0"?><!DOCTYPE svg [<!ENTITY a "ha"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">'
    '<!ENTITY c "&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;"><!ENTITY d "&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;">'
    '<!ENTITY e "&d;&d;&d;&d;&d;&d;&d;&d;&d;&d;"><!ENTITY f "&e;&e;&e;&e;&e;&e;&e;&e;&e;&e;">'
    '<!ENTITY g "&f;&f;&f;&f;&f;&f;&f;&f;&f;&f;"><!ENTITY h "&g;&g;&g;&g;&g;&g;&g;&g;&g;&g;">'
    '<!ENTITY i "&h;&h;&h;&h;&h;&h;&h;&h;&h;&h;">]>' + svg("<text y='20'>&i;</text>")
)


def peak_rss(server: LiveServer) -> int:
    """Largest peak resident set (VmHWM, bytes) among the server's processes."""
    assert server.process is not None
    peak = 0
    for pid in group_members(server.process.pid):
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    peak = max(peak, int(line.split()[1]) * 1024)
        except OSError:
            continue
    return peak


def children_drawing(server: LiveServer) -> list[int]:
    """resvg child processes of the server still alive."""
    assert server.process is not None
    found = []
    for pid in group_members(server.process.pid):
        try:
            if b"imgproxy.svgchild" in Path(f"/proc/{pid}/cmdline").read_bytes():
                found.append(pid)
        except OSError:
            continue
    return found


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("svg-root")
    (folder / "shapes.svg").write_text(SHAPES)
    return folder


@pytest.fixture(scope="module")
def server(tmp_path_factory, root, origin):
    settings = {
        "sources": {
            "local": {"root": str(root)},
            "remote": {"allowed_hosts": ["127.0.0.1"], "allow_private_addresses": True},
        },
        "security": {"svg": "rasterize"},
        "render": {"timeout": 4},
    }
    live = LiveServer(tmp_path_factory.mktemp("svg-server"), settings)
    live.start()
    yield live
    live.stop()


def put(root: Path, name: str, text: str | bytes) -> str:
    (root / name).write_bytes(text.encode() if isinstance(text, str) else text)
    return f"/picture/{name}"


def image_of(response) -> Image.Image:
    assert response.status_code == 200, response.text
    return Image.open(io.BytesIO(response.content))


def rgba(image: Image.Image, xy: tuple[int, int]) -> tuple[int, ...]:
    pixel = image.getpixel(xy)
    assert isinstance(pixel, tuple)
    return pixel


def alpha(image: Image.Image, xy: tuple[int, int]) -> int:
    return rgba(image, xy)[3]


def close(pixel, colour, tolerance: int = 8) -> bool:
    return all(abs(a - b) <= tolerance for a, b in zip(pixel, colour))


# --- config and the default -------------------------------------------------------------------------


def test_svg_setting_is_checked():
    assert load_config(None, {"IMGPROXY_SECURITY__SVG": "rasterize"}).security.svg == "rasterize"
    assert load_config(None, {}).security.svg == "refuse"
    with pytest.raises(ConfigError, match=r"security\.svg: 'yes' is not allowed \(allowed: refuse or rasterize\)"):
        load_config(None, {"IMGPROXY_SECURITY__SVG": "yes"})


def test_refused_by_default(live_server, root):
    server = live_server({"sources": {"local": {"root": str(root)}}})
    with server.client() as client:
        response = client.get("/picture/shapes.svg?width=100")
    assert response.status_code == 415
    assert "not a supported image" in response.text


# --- rasterize: sizes and pixels --------------------------------------------------------------------


def test_declared_size_is_the_source_size(server):
    with server.client() as client:
        response = client.get("/picture/shapes.svg")
    assert response.headers["content-type"] == "image/png"  # alpha: the `source` format of an SVG is PNG
    image = image_of(response).convert("RGBA")
    assert image.size == (200, 100)
    assert close(image.getpixel((50, 50)), RED + (255,))
    assert close(image.getpixel((150, 25)), BLUE + (255,))
    assert alpha(image, (150, 75)) == 0  # transparent stays transparent


def test_drawn_at_the_output_size_not_upscaled(server):
    """enlarge: the edge between red and blue is sharp at 4x, as only a drawing at that size gives."""
    with server.client() as client:
        image = image_of(client.get("/picture/shapes.svg?width=800&enlarge=1")).convert("RGBA")
        small = image_of(client.get("/picture/shapes.svg?width=100")).convert("RGBA")
        capped = image_of(client.get("/picture/shapes.svg?width=4000"))
    assert image.size == (800, 400)
    assert image.getpixel((399, 100)) == RED + (255,)
    assert image.getpixel((400, 100)) == BLUE + (255,)
    assert alpha(image, (600, 199)) == 255 and alpha(image, (600, 200)) == 0
    assert small.size == (100, 50)
    assert close(small.getpixel((25, 25)), RED + (255,)) and close(small.getpixel((75, 12)), BLUE + (255,))
    assert capped.size == (200, 100)  # no enlarging past the declared size (SPEC §2)


def test_rotate_flip_transform_and_trim_apply_to_the_drawing(server):
    """The drawing is the source of SPEC §12's steps: a turned request is drawn for the turned plan
    (not squeezed), and transform/trim read it at its declared size."""
    with server.client() as client:
        turned = image_of(client.get("/picture/shapes.svg?width=100&rotate=90")).convert("RGBA")
        flipped = image_of(client.get("/picture/shapes.svg?width=100&flip=h")).convert("RGBA")
        warped = image_of(client.get("/picture/shapes.svg?transform=EXTENT,100,100,100,0,200,100")).convert("RGBA")
    assert turned.size == (100, 200)  # red left half of the 200x100 drawing is now the top
    assert close(turned.getpixel((50, 25)), RED + (255,)) and close(turned.getpixel((75, 150)), BLUE + (255,))
    assert flipped.size == (100, 50)
    assert close(flipped.getpixel((75, 25)), RED + (255,)) and close(flipped.getpixel((25, 12)), BLUE + (255,))
    assert warped.size == (100, 100) and close(warped.getpixel((50, 25)), BLUE + (255,))


def test_pipeline_modes_and_formats(server):
    with server.client() as client:
        crop = image_of(client.get("/picture/shapes.svg?width=100&height=100&mode=crop")).convert("RGBA")
        jpeg = image_of(client.get("/picture/shapes.svg?format=jpeg&background=%2300ff00"))
        webp = image_of(client.get("/picture/shapes.svg?format=webp&width=100")).convert("RGBA")
        region = image_of(client.get("/picture/shapes.svg?crop=50%25,0,50%25,100%25")).convert("RGBA")
        stretch = image_of(client.get("/picture/shapes.svg?width=100&height=100&mode=stretch")).convert("RGBA")
        pad = image_of(client.get("/picture/shapes.svg?width=100&height=100&mode=pad")).convert("RGBA")
        again = [client.get("/picture/shapes.svg?width=150", params={"v": v}).content for v in ("a", "b")]
    assert crop.size == (100, 100)  # the middle 100x100 of the 200x100 drawing
    assert close(crop.getpixel((25, 50)), RED + (255,)) and close(crop.getpixel((75, 25)), BLUE + (255,))
    assert jpeg.format == "JPEG" and jpeg.size == (200, 100)
    assert close(jpeg.getpixel((150, 75)), (0, 255, 0), 24)  # transparency flattened on the background
    assert webp.size == (100, 50) and alpha(webp, (75, 40)) < 16  # WebP keeps alpha
    assert region.size == (100, 100)
    assert close(region.getpixel((25, 25)), BLUE + (255,)) and alpha(region, (25, 75)) == 0
    assert stretch.size == (100, 100)
    assert close(stretch.getpixel((25, 50)), RED + (255,)) and close(stretch.getpixel((75, 25)), BLUE + (255,))
    assert pad.size == (100, 100)
    assert close(pad.getpixel((50, 10)), (255, 255, 255, 255)) and close(pad.getpixel((25, 50)), RED + (255,))
    assert again[0] == again[1]  # two renders (two cache entries) of one drawing: the same bytes


def test_text_draws_with_the_bundled_font(server, root):
    """No system fonts (they differ between hosts): text draws with one font, the same everywhere."""
    url = put(root, "text.svg", svg('<text x="5" y="60" font-size="40" font-family="Nonexistent">Hi</text>'))
    with server.client() as client:
        image = image_of(client.get(url)).convert("RGBA")
    assert image.getbbox() is not None  # drawn (without a font resvg draws no text at all)


def test_remote_svg(server, origin):
    origin.put("shapes.svg", SHAPES.encode())
    with server.client() as client:
        response = client.get(f"/picture/{origin.url('/files/shapes.svg')}?width=100")
    image = image_of(response).convert("RGBA")
    assert image.size == (100, 50) and close(image.getpixel((25, 25)), RED + (255,))


# --- hostile SVGs -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "template",
    [
        '<image href="file://{path}" width="10" height="10"/>',
        '<image xlink:href="{path}" width="10" height="10"/>',
        '<image href="{name}" width="10" height="10"/>',
        '<use href="{path}#x"/>',
        '<rect width="10" height="10" style="fill:url({path})"/>',
        '<style>rect {{ fill: url("file://{path}") }}</style><rect width="10" height="10"/>',
    ],
)
def test_file_reference_is_refused_and_never_read(server, root, template):
    bait = root / "bait.png"
    Image.new("RGB", (4, 4), "white").save(bait)
    old = os.stat(bait).st_mtime - 3 * 86400  # atime before mtime: any read moves it, even with relatime
    os.utime(bait, (old, os.stat(bait).st_mtime))
    url = put(root, "file-ref.svg", svg(template.format(path=bait, name=bait.name)))
    with server.client() as client:
        response = client.get(url)
    assert response.status_code == 415
    assert "reference" in response.text
    assert os.stat(bait).st_atime == old  # never read


@pytest.mark.parametrize(
    "template",
    [
        '<image href="{url}" width="10" height="10"/>',
        '<image xlink:href="{url}" width="10" height="10"/>',
        '<use href="{url}#shape"/>',
        '<a xlink:href="{url}"><rect width="10" height="10"/></a>',
        '<rect width="10" height="10" fill="url({url}#paint)"/>',
        "<style>@import url({url});</style>",
        '<style>@font-face {{ font-family: x; src: url("{url}") }}</style>',
        '<image href="data:image/png;base64,iVBORw0KGgo=" width="1" height="1"/>',
    ],
)
def test_url_reference_is_refused_and_never_fetched(server, root, origin, template):
    target = "/photos/alpha_dice.png?svg-ref=" + str(abs(hash(template)))
    url = put(root, "url-ref.svg", svg(template.format(url=origin.url(target).replace("&", "&amp;"))))
    with server.client() as client:
        response = client.get(url)
    assert response.status_code == 415
    assert "reference" in response.text or "import" in response.text
    assert origin.hits(target) == 0


def test_remote_svg_with_a_reference_fetches_only_itself(server, origin):
    target = "/photos/alpha_dice.png?from-remote-svg=1"
    origin.put("ref.svg", svg(f'<image href="{origin.url(target)}" width="10" height="10"/>').encode())
    with server.client() as client:
        response = client.get(f"/picture/{origin.url('/files/ref.svg')}")
    assert response.status_code == 415
    assert origin.hits("/files/ref.svg") == 1 and origin.hits(target) == 0


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        (BILLION_LAUGHS, 415, "DOCTYPE"),
        ('<!DOCTYPE svg SYSTEM "file:///etc/passwd">' + svg(""), 415, "DOCTYPE"),
        ('<?xml-stylesheet href="http://127.0.0.1:1/x.css"?>' + svg(""), 415, "processing instruction"),
        (svg('<script>alert(1)</script><rect width="10" height="10"/>'), 415, "script"),
        (svg('<rect width="10" height="10" onload="alert(1)"/>'), 415, "script"),
        (
            svg('<filter id="f"><feMorphology radius="500"/></filter><rect width="9" height="9" filter="url(#f)"/>'),
            415,
            "filters",
        ),
        (svg('<rect width="10" height="10" style="filter: blur(50px)"/>'), 415, "filters"),
        (svg('<rect width="10" height="10" style="fill: u\\72 l(http://127.0.0.1:1/)"/>'), 415, "escapes"),
        (svg("", 'width="1e400" height="10"'), 415, "width"),
        (svg("", 'width="0" height="10"'), 415, "width"),
        (svg("", 'width="1e12" height="10"'), 413, "width"),
        (svg("<rect/>" * 10_001), 413, "elements"),
        ('<html xmlns="http://www.w3.org/1999/xhtml"/>', 415, "not SVG"),
        (svg("<g>"), 415, "well-formed"),
        (SHAPES.encode("utf-16"), 415, "not a supported image"),  # not UTF-8: not taken for XML
    ],
)
def test_hostile_svg_is_refused(server, root, body, status, message):
    url = put(root, f"hostile-{abs(hash(body))}.svg", body)
    with server.client() as client:
        response = client.get(url)
    assert response.status_code == status, response.text
    assert message in response.text


def test_billion_laughs_is_refused_before_expansion(server, root):
    url = put(root, "laughs.svg", BILLION_LAUGHS)
    before = peak_rss(server)
    with server.client() as client:
        statuses = [client.get(url, params={"v": str(i)}).status_code for i in range(5)]
    assert statuses == [415] * 5
    assert peak_rss(server) - before < 20 * 1024**2  # 10^8 "ha" would take hundreds of MB


@pytest.mark.parametrize(
    ("size", "query"),
    [
        ('width="1000000" height="1000000"', ""),
        ('viewBox="0 0 100000000 100000000"', ""),
        ('width="100" height="100"', "?width=4000&enlarge=1&crop=0,0,1,1"),  # a 400000-px drawing for a crop
    ],
)
def test_huge_sizes_are_refused_before_drawing(server, root, size, query):
    url = put(root, "huge.svg", svg('<rect width="100%" height="100%" fill="red"/>', size))
    before = peak_rss(server)
    with server.client() as client:
        response = client.get(url + query)
    assert response.status_code == 413, response.text
    assert peak_rss(server) - before < 20 * 1024**2


def test_huge_declared_size_draws_small_on_request(server, root):
    """A vector's size is only a number: asked for 100 px, it is drawn at 100 px."""
    url = put(root, "big.svg", svg('<rect width="50%" height="100%" fill="red"/>', 'width="1000000" height="1000000"'))
    with server.client() as client:
        image = image_of(client.get(url + "?width=100")).convert("RGBA")
    assert image.size == (100, 100)
    assert close(image.getpixel((20, 50)), RED + (255,)) and alpha(image, (80, 50)) == 0


def test_use_bomb_hits_the_memory_limit(server, root):
    url = put(root, "use-bomb.svg", use_bomb())
    before = peak_rss(server)
    with server.client() as client:
        response = client.get(url)
    assert response.status_code in (415, 503), response.text  # the child's memory limit, or the deadline
    assert peak_rss(server) - before < 20 * 1024**2  # the child's memory, never the server's
    assert not children_drawing(server)


def test_slow_drawing_is_killed_at_the_deadline(server, root):
    """2,000 full-canvas translucent layers: minutes of drawing; the child dies at [render] timeout."""
    url = put(root, "slow.svg", svg('<rect width="100%" height="100%" fill="red" fill-opacity="0.5"/>' * 2000))
    with server.client() as client:
        response = client.get(url + "?width=1000&enlarge=1")
    assert response.status_code == 503, response.text
    assert "Retry-After" in response.headers
    deadline = time.monotonic() + 30
    while children_drawing(server) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not children_drawing(server)


def test_corpus_under_rasterize(server, root):
    """The corpus's SVG draws or is refused, never a 500; the other hostile files keep their answers."""
    with server.client() as client:
        for row in manifest_rows():
            if not row["file"].startswith("bad/"):
                continue
            name = "corpus-" + row["file"].replace("/", "-")
            url = put(root, name, (CORPUS / row["file"]).read_bytes())
            status = client.get(url + "?width=64").status_code
            if row["file"].endswith(".svg"):
                assert status in (200, 415), row["file"]
            else:
                assert (status == 200) == (row["expect"] == "render") and status < 500, (row["file"], status)
        check = image_of(client.get("/picture/corpus-bad-check.svg?width=100")).convert("RGBA")
    assert check.size == (100, 100)
    green = rgba(check, (50, 60))
    assert green[1] > 100 and green[0] < 50 and green[3] == 255  # the check mark is green


def test_uploads_still_refuse_svg(server):
    """Uploads keep their own list ([uploads] allowed_formats): an SVG upload is a 415 and stores nothing."""
    before = sorted(p for p in server.root.rglob("*") if "uploads" in p.parts and p.is_file())
    with server.client() as client:
        response = client.post("/upload", files={"image": ("shapes.svg", SHAPES.encode(), "image/svg+xml")})
    assert response.status_code == 415, response.text
    assert sorted(p for p in server.root.rglob("*") if "uploads" in p.parts and p.is_file()) == before


def test_image_with_a_fragment_href_is_refused(server, root):
    """resvg loads an <image> href that is no data: URL as a path, '#name' too (relative to the working
    directory): an <image> that loads anything is refused."""
    bait = server.workdir / "#bait.png"
    Image.new("RGB", (4, 4), "white").save(bait)
    old = os.stat(bait).st_mtime - 3 * 86400
    os.utime(bait, (old, os.stat(bait).st_mtime))
    url = put(root, "fragment-image.svg", svg('<image href="#bait.png" width="10" height="10"/>'))
    with server.client() as client:
        response = client.get(url)
    assert response.status_code == 415, response.text
    assert "<image>" in response.text
    assert os.stat(bait).st_atime == old  # never read
