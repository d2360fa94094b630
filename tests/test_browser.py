"""The demo page in a real browser: Debian's Chromium driven by playwright against a real server.

The server has a signing key, so every image must come either from an allowed-width request (the
lazyloader's) or from a URL the helpers signed. Expectations are computed from the page's own
layout (element widths, positions, the width steps it publishes), not hard-coded pixel values.
"""

from __future__ import annotations

import io
import math
import shutil
from dataclasses import dataclass
from urllib.parse import parse_qs, unquote, urlsplit

import pytest
from PIL import Image, ImageStat

from imgproxy.config import load_config
from imgproxy.html import picture_url

from .chromium import WAIT_MS, marks, signed_site

VIEWPORTS = [(375, 667, 2), (768, 1024, 1), (1440, 900, 1), (1024, 768, 1.25)]
PIXEL_RATIOS = [1, 1.5, 2, 3]  # lazyload.js rounds devicePixelRatio up to these
EDGE = 2  # px: elements this close to the load margin could go either way; not judged

pytestmark = marks()

GALLERY_JS = """() => {
  const script = document.querySelector('script[data-widths]');
  return {
    innerHeight, dpr: devicePixelRatio,
    steps: script.dataset.widths.split(' ').map(Number),
    margin: parseFloat(script.dataset.rootMargin),
    images: [...document.querySelectorAll('.gallery img[data-src]')].map(img => {
      const r = img.getBoundingClientRect();
      return {src: img.dataset.src, top: r.top, bottom: r.bottom, width: r.width};
    }),
  };
}"""
LOADED_JS = """(paths) => paths.every(path => [...document.querySelectorAll('img[data-src]')].some(img =>
  decodeURIComponent(new URL(img.dataset.src, location.href).pathname) === path
  && img.currentSrc && img.complete && img.naturalWidth > 0))"""


@dataclass
class Seen:
    """What the browser asked for and got, from the network log."""

    requests: list[str]
    responses: dict[str, tuple[int, str]]  # url -> (status, content type)
    console_errors: list[str]

    def lazy(self) -> list[tuple[str, int]]:
        """(path, width) of the lazyloader's requests: those carrying encoding=auto."""
        out = []
        for url in self.requests:
            parts = urlsplit(url)
            query = parse_qs(parts.query)
            if parts.path.startswith("/picture/") and query.get("encoding") == ["auto"]:
                out.append((path_of(url), int(query["scalex"][0])))
        return out


def path_of(url: str) -> str:
    return unquote(urlsplit(url).path)


def pixel_ratio(dpr: float) -> float:
    return next((r for r in PIXEL_RATIOS if r >= dpr - 0.001), PIXEL_RATIOS[-1])


def step_for(pixels: float, steps: list[int]) -> int:
    wanted = max(1, math.ceil(pixels))
    return next((w for w in steps if w >= wanted), steps[-1])


def expected_widths(layout: dict) -> tuple[dict[str, int], set[str]]:
    """Gallery images near the viewport -> the width they must ask for; and those that must wait."""
    near, far = {}, set()
    for img in layout["images"]:
        reach = layout["innerHeight"] + layout["margin"]
        if img["top"] < reach - EDGE and img["bottom"] > -layout["margin"] + EDGE:
            near[path_of(img["src"])] = step_for(img["width"] * pixel_ratio(layout["dpr"]), layout["steps"])
        elif img["top"] > reach + EDGE:
            far.add(path_of(img["src"]))
    return near, far


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    yield from signed_site(tmp_path_factory.mktemp("browser-site"), "browser-test-key")


def open_page(browser, site, width: int, height: int, dpr: float):
    context = browser.new_context(viewport={"width": width, "height": height}, device_scale_factor=dpr)
    context.set_default_timeout(WAIT_MS)
    page = context.new_page()
    seen = Seen([], {}, [])
    page.on("request", lambda r: seen.requests.append(r.url))
    page.on("response", lambda r: seen.responses.__setitem__(r.url, (r.status, r.headers.get("content-type", ""))))
    page.on("console", lambda m: seen.console_errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: seen.console_errors.append(str(e)))
    page.goto(site.url + "/")
    return context, page, seen


def gallery_at_top(page) -> dict:
    """Scroll the gallery to the top of the viewport (the lead photo and its figures come first on
    the page) and return its layout there. No gallery image sits above it, so whatever loaded before
    the scroll is near the viewport after it too."""
    page.evaluate("window.scrollTo(0, document.querySelector('.gallery').getBoundingClientRect().top + scrollY)")
    return page.evaluate(GALLERY_JS)


def wait_loaded(page, paths) -> None:
    """Until the lazy images with these source paths have loaded and decoded."""
    page.wait_for_function(LOADED_JS, arg=sorted(paths))


def assert_not_blank(png: bytes, box: tuple[float, float, float, float] | None = None) -> None:
    with Image.open(io.BytesIO(png)) as shot:
        region = shot.convert("RGB").crop(tuple(round(v) for v in box)) if box else shot.convert("RGB")
        spread = sum(ImageStat.Stat(region).stddev) / 3
    assert spread > 8, f"screenshot region {box} looks blank (mean stddev {spread:.1f})"


@pytest.mark.parametrize("width,height,dpr", VIEWPORTS, ids=[f"{w}px@{d}x" for w, _, d in VIEWPORTS])
def test_viewport_sized_lazy_images_and_picture_formats(browser, site, tmp_path, width, height, dpr):
    context, page, seen = open_page(browser, site, width, height, dpr)
    layout = gallery_at_top(page)
    near, far = expected_widths(layout)
    assert near, "some gallery image must start near the viewport"
    wait_loaded(page, near)

    # above the fold: one request per nearby image, its rendered width x DPR rounded up to a step
    assert sorted(seen.lazy()) == sorted(near.items())
    assert not far & {path for path, _ in seen.lazy()}, "images below the fold loaded before scrolling"

    shot = page.screenshot(path=tmp_path / f"viewport-{width}.png")
    assert_not_blank(shot)
    featured = page.locator(".gallery img").first.bounding_box()
    assert_not_blank(
        shot,
        (
            featured["x"] * dpr,
            featured["y"] * dpr,
            (featured["x"] + featured["width"]) * dpr,
            min(featured["y"] + featured["height"], height) * dpr,
        ),
    )

    # scrolling brings in the rest, each at its own size
    for img in page.locator(".gallery img[data-src]").all():
        img.scroll_into_view_if_needed()
        wait_loaded(page, [path_of(img.get_attribute("data-src"))])
    after = page.evaluate(GALLERY_JS)
    everything = {path_of(i["src"]): step_for(i["width"] * pixel_ratio(dpr), after["steps"]) for i in after["images"]}
    assert dict(seen.lazy()) == everything and len(seen.lazy()) == len(everything)

    # <picture>: the browser takes the AVIF source, and every image on the page decodes
    pictures = page.locator("picture img").all()
    assert pictures
    chosen = []
    for img in pictures:
        img.scroll_into_view_if_needed()
        img.evaluate(
            "i => i.complete && i.naturalWidth ? true : new Promise(r => i.addEventListener('load', r, {once: true}))"
        )
        current = img.evaluate("i => i.currentSrc")
        assert parse_qs(urlsplit(current).query)["encoding"] == ["avif"], current
        assert seen.responses[current] == (200, "image/avif")
        chosen.append(path_of(current) + " " + parse_qs(urlsplit(current).query)["preset"][0])
    assert page.evaluate("[...document.images].every(i => i.complete && i.naturalWidth > 0)")

    statuses = {url: status for url, (status, _) in seen.responses.items() if "/picture/" in url}
    assert set(statuses.values()) == {200}, statuses
    assert not seen.console_errors
    print(
        f"\n{width}px @{dpr}x lazy widths: initial {sorted(near.items())}; after scrolling {seen.lazy()}; "
        f"<picture> chose {chosen}"
    )
    context.close()


RESIZE_BARRIER_JS = """() => new Promise(ready => {
  // resolves window.nextResize on the first ResizeObserver round after the armed one; created after the
  // lazyloader's observer, so its callback runs after the lazyloader's in the same rendering step
  let armed = false;
  window.nextResize = new Promise(done => {
    const ro = new ResizeObserver(() => {
      if (!armed) { armed = true; ready(); return; }
      ro.disconnect(); done();
    });
    document.querySelectorAll('.gallery img').forEach(i => ro.observe(i));
  });
})"""


def srcs(page) -> list[str]:
    return page.evaluate("[...document.querySelectorAll('.gallery img')].map(i => i.getAttribute('src'))")


def test_enlarging_upgrades_and_shrinking_keeps_the_larger_image(browser, site):
    # a phone's single column first: every gallery image is as wide as the column; at 768 px the
    # rows give some of them more width than that
    context, page, seen = open_page(browser, site, 390, 844, 1)
    small_layout = gallery_at_top(page)
    near, _ = expected_widths(small_layout)
    wait_loaded(page, near)
    before = dict(seen.lazy())

    page.set_viewport_size({"width": 768, "height": 1024})
    page.wait_for_function("() => document.querySelector('.gallery').getBoundingClientRect().width > 390")
    large_layout = page.evaluate(GALLERY_JS)
    grown = {path_of(i["src"]): step_for(i["width"], large_layout["steps"]) for i in large_layout["images"]}
    upgrades = {src: w for src, w in grown.items() if src in before and w > before[src]}
    assert upgrades, "an image wider in the 768 px rows must ask for a larger step"
    page.wait_for_function(
        """(want) => Object.entries(want).every(([path, w]) => [...document.querySelectorAll('.gallery img')].some(
             i => decodeURIComponent(new URL(i.currentSrc || location.href).pathname) === path
                  && i.currentSrc.includes(`scalex=${w}&`) && i.complete && i.naturalWidth > 0))""",
        arg=upgrades,
    )
    # the rows also bring other images near the viewport: their first loads are not upgrades
    later = [(path, w) for path, w in seen.lazy()[len(before) :] if path in before]
    assert sorted(later) == sorted(upgrades.items())

    # every gallery image loaded, so shrinking cannot bring a new one near
    for img in page.locator(".gallery img[data-src]").all():
        img.scroll_into_view_if_needed()
        wait_loaded(page, [path_of(img.get_attribute("data-src"))])
    shown = srcs(page)
    requests = len(seen.requests)
    page.evaluate(RESIZE_BARRIER_JS)
    page.set_viewport_size({"width": 390, "height": 844})
    page.evaluate("window.nextResize")
    assert srcs(page) == shown, "shrinking must keep the larger image"
    assert [u for u in seen.requests[requests:] if "/picture/" in u] == []
    print(
        f"\nresize 390 -> 768 -> 390: first {sorted(before.items())}, upgrades {sorted(upgrades.items())}, "
        "none after shrinking"
    )
    context.close()


def test_lazyloader_url_building(browser, site):
    context, page, _ = open_page(browser, site, 768, 1024, 1)
    results = page.evaluate("""async () => {
      const m = await import('/static/lazyload.js');
      return {
        plain: m.sizedUrl('/picture/a.jpg', 640),
        kept: m.sizedUrl('/picture/a.jpg?w=10&mode=crop&sig=abc&scaley=50&fm=webp&bg=%23fff', 640),
        alias: m.sizedUrl('/picture/a.jpg?%77idth=10#frag', 320),
        lqip: m.placeholderUrl('/picture/a.jpg?v=3'),
        steps: [m.stepFor(1), m.stepFor(686), m.stepFor(768), m.stepFor(768.2), m.stepFor(100000)],
        ratios: [1, 1.1, 1.25, 1.5, 1.75, 2, 2.625, 3, 4].map((r) => m.pixelRatio(r)),
      };
    }""")
    steps = page.evaluate(GALLERY_JS)["steps"]
    assert results == {
        "plain": "/picture/a.jpg?scalex=640&encoding=auto",
        "kept": "/picture/a.jpg?mode=crop&scaley=50&fm=webp&bg=%23fff&scalex=640",
        "alias": "/picture/a.jpg?scalex=320&encoding=auto",
        "lqip": "/picture/a.jpg?v=3&scalex=32&blur=2&encoding=auto",
        "steps": [step_for(p, steps) for p in (1, 686, 768, 768.2, 100000)],
        "ratios": [1, 1.5, 1.5, 1.5, 2, 2, 3, 3, 3],  # only dpr values the server takes unsigned
    }
    context.close()


def test_placeholder_shows_first_then_the_real_image(browser, site):
    config = load_config(site.config_path, environ={})
    # a copy no other element of the page shows, so every request for it is the test image's
    source = "late.jpg"
    shutil.copyfile(site.root / "demo" / "valley.jpg", site.root / source)
    placeholder = picture_url(source, config, width=32, blur=2)  # signed: the server has a key
    context, page, seen = open_page(browser, site, 768, 1024, 1)
    page.wait_for_load_state()
    page.evaluate(
        """([src, lqip]) => {
             const img = Object.assign(document.createElement('img'), {id: 'late', width: 2400, height: 1600});
             img.dataset.src = src; img.dataset.lqip = lqip;
             document.querySelector('main').prepend(img);
           }""",
        [picture_url(source, config), placeholder],
    )
    page.wait_for_function(
        "() => { const i = document.getElementById('late'); "
        "return i.currentSrc.includes('encoding=auto') && i.complete && i.naturalWidth > 32 "
        "&& !i.classList.contains('lqip'); }"
    )
    ours = [u for u in seen.requests if path_of(u) == "/picture/" + source]
    assert ours[0] == site.url + placeholder
    assert seen.responses[ours[0]][0] == 200
    assert len(ours) == 2 and "scalex=768&encoding=auto" in ours[1]
    context.close()
