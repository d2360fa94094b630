"""The inline placeholder in a real browser (Debian's Chromium via playwright, as tests/test_browser.py):
a page built with `img_tag(..., placeholder=True)` under the pages' CSP shows the placeholder while the
real image is held back, then the real image, without layout shift and with a fade (none with
prefers-reduced-motion)."""

from __future__ import annotations

import base64
import html
import io
from urllib.parse import parse_qs, urlsplit

import pytest
from PIL import Image, ImageChops, ImageStat
from playwright import sync_api

from imgproxy.config import load_config
from imgproxy.html import WIDTH_STEPS, img_attrs, img_tag, picture_tag
from imgproxy.pages import PAGE_CSP
from imgproxy.signing import sign

from .chromium import WAIT_MS, marks, signed_site

pytestmark = marks()

SOURCE = "demo/valley.jpg"
WIDTH = 640
PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>placeholder</title>
<link rel="stylesheet" href="/static/placeholder.css">
<script type="module" src="/static/lazyload.js" data-widths="{widths}"></script></head>
<body><main><p>Above the image.</p>{img}<p id="below">Below the image.</p></main></body></html>"""
# before any page script: layout shifts (CLS) and every cover the lazyloader lays, as it was laid
RECORD_JS = """
window.cls = 0;
new PerformanceObserver((list) => list.getEntries().forEach((e) => { if (!e.hadRecentInput) window.cls += e.value; }))
  .observe({type: 'layout-shift', buffered: true});
window.covers = [];
new MutationObserver((records) => records.forEach((r) => r.addedNodes.forEach((node) => {
  if (!node.classList?.contains('imgproxy-cover')) return;
  const style = getComputedStyle(node), at = node.getBoundingClientRect();
  const img = document.querySelector('img[data-placeholder]').getBoundingClientRect();
  window.covers.push({className: node.className, src: node.src, property: style.transitionProperty,
    duration: parseFloat(style.transitionDuration), offset: [at.left - img.left, at.top - img.top,
    at.width - img.width, at.height - img.height]});
}))).observe(document, {childList: true, subtree: true});
"""
SHOWN_JS = """() => { const i = document.querySelector('img[data-placeholder]');
  return i.currentSrc.includes('/picture/') && i.complete && i.naturalWidth > 16
    && !document.querySelector('.imgproxy-cover'); }"""


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    yield from signed_site(tmp_path_factory.mktemp("placeholder-site"), "placeholder-test-key")


def shot_of(locator: sync_api.Locator) -> Image.Image:
    with Image.open(io.BytesIO(locator.screenshot(animations="disabled"))) as shot:
        return shot.convert("RGB")


def difference(a: Image.Image, b: Image.Image) -> float:
    return sum(ImageStat.Stat(ImageChops.difference(a, b)).mean) / 3


@pytest.mark.parametrize(
    "helper,motion", [(img_tag, "no-preference"), (img_tag, "reduce"), (picture_tag, "no-preference")]
)
def test_placeholder_first_then_the_image_faded_in_without_layout_shift(browser, site, helper, motion):
    config = load_config(site.config_path, environ={})
    markup = helper(SOURCE, width=WIDTH, alt="A valley", placeholder=True, config=config)
    page_url = site.url + "/placeholder-page"
    with site.client() as client:
        dominant = client.get(f"/info/{SOURCE}", params={"sig": sig_of(config)}).json()["dominant_color"]
    context = browser.new_context(viewport={"width": 768, "height": 1024}, reduced_motion=motion)
    context.set_default_timeout(WAIT_MS)
    try:
        page = context.new_page()
        errors: list[str] = []
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.add_init_script(RECORD_JS)
        # the page is what a server would send: the helper's markup under the pages' CSP
        html_page = PAGE.format(widths=" ".join(map(str, WIDTH_STEPS)), img=markup)
        page.route(
            page_url,
            lambda route: route.fulfill(
                status=200, content_type="text/html", body=html_page, headers={"Content-Security-Policy": PAGE_CSP}
            ),
        )
        held: list[sync_api.Route] = []
        page.route("**/picture/**", lambda route: held.append(route))  # held until the placeholder is checked
        with page.expect_request(lambda r: "/picture/" in r.url) as asked:
            page.goto(page_url, wait_until="domcontentloaded")
        real = asked.value.url
        # a candidate of the srcset the helper parked, the one the browser picks for a 640-px slot at 1x
        # (the AVIF <source> of a <picture>), signed by the helper where the server wants it
        query = parse_qs(urlsplit(real).query)
        assert real.removeprefix(site.url) in html.unescape(markup)
        assert query.get("encoding") == (["avif"] if helper is picture_tag else None)
        assert query["scalex"] == [str(WIDTH)]

        # while the real image is held back, the image paints its inline placeholder, at its final size
        # (Chromium keeps painting the old image but reports currentSrc "" meanwhile: judged by pixels)
        image = page.locator("img[data-placeholder]")
        src = img_attrs(SOURCE, width=WIDTH, placeholder=True, config=config)["src"]  # what the markup carried
        assert isinstance(src, str) and src.startswith("data:image/png;base64,") and f'src="{src}"' in markup
        box = image.bounding_box()
        assert (round(box["width"]), round(box["height"])) == (WIDTH, int(image.get_attribute("height")))
        held_shot = shot_of(image)
        assert max(abs(a - b) for a, b in zip(ImageStat.Stat(held_shot).mean, rgb(dominant))) <= 16, dominant
        with Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))) as tiny:
            placeholder = tiny.convert("RGB").resize(held_shot.size, Image.Resampling.BILINEAR)
        page.unroute("**/picture/**")
        for route in held:
            route.continue_()
        page.wait_for_function(SHOWN_JS)
        assert image.evaluate("i => i.currentSrc") == real
        assert image.bounding_box() == box, "the box was reserved: loading the image must not move or resize it"
        real_shot = shot_of(image)
        # the held frame was the placeholder (a few levels of scaling filter apart), not the image
        to_placeholder, to_real = difference(held_shot, placeholder), difference(held_shot, real_shot)
        assert to_placeholder < 6 and to_real > 2 * to_placeholder, (to_placeholder, to_real)
        cls = page.evaluate("window.cls")
        assert cls < 0.01
        covers = page.evaluate("window.covers")
        if motion == "reduce":
            assert covers == [], "no fade with prefers-reduced-motion"
        else:
            # one cover: the placeholder laid exactly over the image, fading out by the static CSS's transition
            [cover] = covers
            assert cover["src"] == src and "imgproxy-faded" in cover["className"]
            assert cover["property"] == "opacity" and cover["duration"] > 0
            assert max(abs(v) for v in cover["offset"]) < 0.5, cover
        assert not errors, errors  # a CSP violation (an inline style) would show here
        print(
            f"\n{helper.__name__} {motion}: real image {real}, held frame off the placeholder by {to_placeholder:.1f} levels and off the "
            f"image by {to_real:.1f}; CLS {cls:.4f}; covers {[(c['property'], c['duration']) for c in covers]}"
        )
    finally:
        context.close()


def rgb(colour: str) -> tuple[int, ...]:
    return tuple(int(colour[i : i + 2], 16) for i in (1, 3, 5))


def sig_of(config) -> str:
    return sign(f"/info/{SOURCE}", "", config.security.signing_keys[0])
