"""SVG sources (`[security] svg = "rasterize"`): a strict pre-scan, then resvg in a child process.

resvg itself reads any file an `<image href>` names (measured: resvg 0.48 through resvg-py 0.5 reads
`href="/etc/…"` without a resources dir, and `href="#name"` as a file in its working directory), so the
pre-scan is the barrier: the SVG must parse as XML without a DTD or entities (no billion laughs) and
may refer only to its own `#fragments` — a file, URL or `data:` reference in `href`/`src`, CSS
`url(...)` or `@import`, or an `<image>` with any href is a 415 and is never read or fetched. Scripts and filters are refused too (resvg runs no script; filter primitives such as
feMorphology and feTurbulence take minutes at any size).

The SVG's declared size is the source size of the geometry; the raster is drawn at the planned
output's scale (a vector needs no large raster to be downscaled), after the output canvas and the
raster's pixels are checked against `[limits]` (413). resvg runs in a child process bounded by the
render deadline (killed past it) and by an address-space limit, so no SVG can hold a render thread
or the server's memory; a crash of the child is a 415.
"""

from __future__ import annotations

import atexit
import functools
import io
import math
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from xml.parsers import expat

from PIL import Image, ImageFont

from .budget import Deadline, MemoryBudget
from .config import LimitsConfig
from .errors import Overloaded, PayloadTooLarge, UnsupportedMedia
from .geometry import check_output
from .loader import Opened
from .options import RenderOptions
from .render import DECODE_ERRORS, make_plan, oriented_size, placed
from .sources import Original

FORMAT = "SVG"  # Opened.format of a rasterised SVG
SVG_NS = "http://www.w3.org/2000/svg"
MAX_ELEMENTS = 10_000  # elements in one SVG: with the child's deadline, what bounds its parse and draw
MAX_DEPTH = 256  # element nesting (usvg walks the tree recursively)
MAX_SIDE = 1_000_000_000  # declared width/height in px past which it is not a size but an attack
# CSS pixels per unit, as usvg converts them (font-relative units against its 16-px default font size)
UNITS = {"": 1.0, "px": 1.0, "pt": 4 / 3, "pc": 16.0, "mm": 96 / 25.4, "cm": 96 / 2.54, "in": 96.0, "em": 16.0}
UNITS["ex"] = UNITS["em"] / 2
LENGTH = re.compile(r"\s*([+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)\s*(px|pt|pc|mm|cm|in|em|ex|%)?\s*")
CSS_URL = re.compile(r"url\s*\(\s*['\"]?\s*([^'\")\s]*)")
CSS_FILTER = re.compile(r"(?<![\w-])filter\s*:")
FONT = "aileron.ttf"
CHILD_BASE_MEMORY = 128 * 1024**2  # address space of the child before its pixmap (Python and resvg take ~40 MB)


@dataclass(frozen=True)
class Scanned:
    text: str
    width: int  # declared size in CSS px, rounded: the source size of the geometry
    height: int


def looks_like_svg(head: bytes) -> bool:
    """XML starts with '<' (after a BOM or whitespace); no raster format does."""
    return head.removeprefix(b"\xef\xbb\xbf").lstrip(b" \t\r\n").startswith(b"<")


def is_svg(original: Original) -> bool:
    if original.data is not None:
        return looks_like_svg(original.data[:64])
    if original.path is None:
        return False
    with open(original.path, "rb") as f:
        return looks_like_svg(f.read(64))


def _read(original: Original) -> bytes:
    if original.data is not None:
        return original.data
    assert original.path is not None
    return Path(original.path).read_bytes()  # within max_source_bytes: the source checked its size


class _Refused(Exception):
    """Raised inside expat's callbacks to stop the parse."""

    def __init__(self, error: Exception):
        self.error = error


def _refuse(message: str) -> _Refused:
    return _Refused(UnsupportedMedia(message))


def _check_css(text: str) -> None:
    """Stylesheets and style attributes: no imports, no url() but #fragments, no escapes that could hide
    either, no filters."""
    lower = text.lower()
    if "\\" in lower:
        raise _refuse("SVG stylesheet has escapes; they are not allowed")
    if "@import" in lower:
        raise _refuse("SVG stylesheet imports another (@import); external references are not allowed")
    if CSS_FILTER.search(lower):
        raise _refuse("SVG filters are not supported")
    _check_urls(lower)


def _check_urls(value: str) -> None:
    for match in CSS_URL.finditer(value.lower()):
        if not match.group(1).startswith("#"):
            raise _refuse("SVG refers to an external resource in url(...); only #fragment references are allowed")


class _Scanner:
    def __init__(self) -> None:
        self.elements = 0
        self.depth = 0
        self.root: dict[str, str] | None = None
        self.style_depth = 0  # inside a <style> element
        self.style: list[str] = []

    def start(self, name: str, attributes: dict[str, str]) -> None:
        namespace, _, local = name.rpartition(" ")
        self.elements += 1
        self.depth += 1
        if self.elements > MAX_ELEMENTS:
            raise _Refused(PayloadTooLarge(f"SVG has more than {MAX_ELEMENTS} elements"))
        if self.depth > MAX_DEPTH:
            raise _Refused(PayloadTooLarge(f"SVG nests elements deeper than {MAX_DEPTH}"))
        if self.root is None:
            if namespace != SVG_NS or local != "svg":
                raise _refuse("source is XML but not SVG (the root must be <svg> in the SVG namespace)")
            self.root = attributes
        if local == "script":
            raise _refuse("SVG has a <script>; scripts are not allowed")
        if local == "filter" or (local.startswith("fe") and local[2:3].isupper()):
            raise _refuse("SVG filters are not supported")
        if local == "style":
            self.style_depth += 1
        if local == "image" and any(a.rpartition(" ")[2] == "href" for a in attributes):
            # resvg reads any <image> href that is no data: URL as a path, "#name" too
            raise _refuse("SVG has an <image> that loads a file or URL; external references are not allowed")
        for attribute, value in attributes.items():
            _check_attribute(attribute.rpartition(" ")[2], value)

    def end(self, name: str) -> None:
        self.depth -= 1
        if name.rpartition(" ")[2] == "style":
            self.style_depth -= 1

    def characters(self, data: str) -> None:
        if self.style_depth:
            self.style.append(data)


def _check_attribute(local: str, value: str) -> None:
    if local.lower().startswith("on"):
        raise _refuse(f"SVG has an event handler ({local}); scripts are not allowed")
    if local in ("href", "src") and not value.strip().startswith("#"):
        raise _refuse(f"SVG refers to an external resource ({local}); only #fragment references are allowed")
    if local == "style":
        _check_css(value)
    elif local == "filter" and value.strip() != "none":
        raise _refuse("SVG filters are not supported")
    elif "url" in value.lower():
        _check_urls(value)


def _stop(kind: str):
    def handler(*_: object) -> None:
        raise _refuse(f"SVG has {kind}; DTDs, entities and processing instructions are not allowed")

    return handler


def scan(data: bytes) -> Scanned:
    """Parse `data` strictly (415 for anything unsafe, 413 past the element limits) and read its size."""
    try:
        text = data.removeprefix(b"\xef\xbb\xbf").decode("utf-8")
    except UnicodeDecodeError:
        raise UnsupportedMedia("SVG must be UTF-8 encoded") from None
    scanner = _Scanner()
    parser = expat.ParserCreate(encoding="utf-8", namespace_separator=" ")
    parser.SetParamEntityParsing(expat.XML_PARAM_ENTITY_PARSING_NEVER)
    # a DOCTYPE is refused where it starts, before its internal subset (entities) is read
    parser.StartDoctypeDeclHandler = _stop("a DOCTYPE")
    parser.EntityDeclHandler = _stop("an entity")
    parser.ExternalEntityRefHandler = _stop("an external entity")
    parser.ProcessingInstructionHandler = _stop("a processing instruction")
    parser.StartElementHandler = scanner.start
    parser.EndElementHandler = scanner.end
    parser.CharacterDataHandler = scanner.characters
    try:
        parser.Parse(text.encode("utf-8"), True)
    except _Refused as refused:
        raise refused.error from None
    except expat.ExpatError as exc:
        raise UnsupportedMedia(f"SVG is not well-formed XML (line {exc.lineno})") from None
    try:
        _check_css("".join(scanner.style))
    except _Refused as refused:
        raise refused.error from None
    assert scanner.root is not None  # a well-formed document has a root element
    width, height = declared_size(scanner.root)
    return Scanned(text, width, height)


def _length(value: str | None) -> tuple[float, str] | None:
    match = LENGTH.fullmatch(value) if value is not None else None
    if match is None:
        return None
    return float(match.group(1)), match.group(2) or ""


def _view_box(value: str | None) -> tuple[float, float] | None:
    parts = (value or "").replace(",", " ").split()
    try:
        numbers = [float(p) for p in parts]
    except ValueError:
        return None
    if len(numbers) != 4 or not all(math.isfinite(n) for n in numbers) or numbers[2] <= 0 or numbers[3] <= 0:
        return None
    return numbers[2], numbers[3]


def declared_size(root: dict[str, str]) -> tuple[int, int]:
    """The root's size as usvg computes it: width/height (default 100 %), a percentage of the
    viewBox, else of usvg's 100x100 default. 415 when empty or unreadable, 413 when absurd."""
    box = _view_box(root.get("viewBox"))
    sides = []
    for name, index in (("width", 0), ("height", 1)):
        length = _length(root.get(name, "100%"))
        if length is None:
            raise UnsupportedMedia(f"SVG {name} is not a length")
        number, unit = length
        if unit == "%":
            number = number / 100 * (box[index] if box else 100.0)
        else:
            number *= UNITS[unit]
        if not math.isfinite(number) or number <= 0:
            raise UnsupportedMedia(f"SVG declares an empty or invalid {name}")
        if number > MAX_SIDE:
            raise PayloadTooLarge(f"SVG declares a {name} of {number:g} px; the limit is {MAX_SIDE}")
        sides.append(max(1, round(number)))
    return sides[0], sides[1]


def raster_size(scanned: Scanned, options: RenderOptions, fmt: str, limits: LimitsConfig) -> tuple[int, int]:
    """The size the whole SVG is drawn at for this request: the planned window comes out at the output
    size. 413 (before anything is drawn) past the output limits or max_source_pixels."""
    turn, region = placed(options, 1, scanned.width, scanned.height)  # rotate/flip: the plan is on the turned image
    plan = make_plan(options, region, options.focal)
    check_output(plan.canvas, fmt, limits.max_output_width, limits.max_output_height)
    if options.transform is not None or options.trim is not None:
        # both read the drawing at their own points: drawn at its declared size, as a raster source is decoded
        size = (scanned.width, scanned.height)
    else:
        left, top, right, bottom = plan.window
        turned = oriented_size(scanned.width, scanned.height, turn)
        whole = region == (0, 0, *turned) and plan.window == (0.0, 0.0, float(turned[0]), float(turned[1]))
        if whole and options.mode != "stretch":
            # drawn at exactly the output size (turned back to the drawing's sides): nothing left to resample
            return oriented_size(*plan.size, turn)
        # a window (crop) is drawn at the output's scale; stretch at the larger of its two scales, the
        # resize then squeezes the other side
        scale = max(plan.size[0] / (right - left), plan.size[1] / (bottom - top))
        size = (max(1, round(scanned.width * scale)), max(1, round(scanned.height * scale)))
    if size[0] * size[1] > limits.max_source_pixels:
        raise PayloadTooLarge(
            f"SVG would be drawn at {size[0]}x{size[1]} for this request; the limit is {limits.max_source_pixels} pixels"
        )
    return size


@functools.cache
def child_folder() -> Path:
    """A private folder, the child's working directory (nothing else in it to find), holding Pillow's
    bundled Aileron: the only font resvg gets, so text looks the same on every machine (system fonts
    would change the bytes of one URL between hosts). Without FreeType in Pillow, text is not drawn."""
    folder = Path(tempfile.mkdtemp(prefix="imgproxy-svg-"))
    atexit.register(shutil.rmtree, folder, True)
    font = ImageFont.load_default(size=16)
    if isinstance(font, ImageFont.FreeTypeFont):
        (folder / FONT).write_bytes(font.font_bytes)
    return folder


def rasterize(text: str, size: tuple[int, int], deadline: Deadline) -> Image.Image:
    """Draw `text` at `size` (its aspect kept) in a child process, killed at the deadline."""
    memory = CHILD_BASE_MEMORY + size[0] * size[1] * 4 * 3  # pixmap, PNG rows and encoder
    # -P: nothing is imported from the working directory
    folder = child_folder()
    if not folder.is_dir():  # a tmp cleaner removed it from a long-running server
        child_folder.cache_clear()
        folder = child_folder()
    font = str(folder / FONT) if (folder / FONT).is_file() else ""
    command = [sys.executable, "-P", "-m", "imgproxy.svgchild", str(size[0]), str(size[1]), font, str(memory)]
    remaining = deadline.end - time.monotonic()
    if remaining <= 0:
        deadline.check()
    try:
        child = subprocess.run(command, input=text.encode("utf-8"), capture_output=True, timeout=remaining, cwd=folder)
    except subprocess.TimeoutExpired:
        raise Overloaded(f"drawing the SVG took longer than the {deadline.seconds:g} s budget", retry_after=5) from None
    if child.returncode != 0:
        raise UnsupportedMedia("SVG could not be drawn (invalid, or past the memory limit)")
    try:
        image: Image.Image = Image.open(io.BytesIO(child.stdout), formats=["PNG"])
        image.load()
    except DECODE_ERRORS:
        raise UnsupportedMedia("SVG could not be drawn") from None
    if image.mode != "RGBA":
        image = image.convert("RGBA")
    if image.size != size:  # resvg's idea of the aspect differs from the declared one by a pixel or so
        image = image.resize(size, Image.Resampling.LANCZOS)
    return image


def open_svg(
    original: Original, options: RenderOptions, fmt: str, limits: LimitsConfig, budget: MemoryBudget, deadline: Deadline
) -> Opened:
    """An Opened whose width/height are the SVG's declared size and whose image is the raster for
    `options`: the render maps its plan onto it as onto a JPEG decoded at reduced scale."""
    scanned = scan(_read(original))
    size = raster_size(scanned, options, fmt, limits)
    with budget.hold(size[0] * size[1] * 4 * 2, deadline):  # the child's pixmap, then the decoded PNG
        image = rasterize(scanned.text, size, deadline)
    return Opened(image, FORMAT, scanned.width, scanned.height, 1, False)
