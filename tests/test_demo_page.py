"""The demo page as a visitor sees it, in Debian's Chromium against a real server (the setup of
test_browser.py): the lead photo's figures are the real bytes, nothing is shown larger than its
source allows, nothing shifts, nothing overflows, the first view stays within a byte budget, the
animation still moves, and the upload form shows its progress and the returned `<picture>`.

Screenshots go to $IMGPROXY_SHOTS when set (the ones the README's demo description was checked
against), else to pytest's tmp_path.
"""

from __future__ import annotations

import io

import pytest
from PIL import Image

from imgproxy.config import load_config
from imgproxy.pages import DEVICES, hero_slot, source_facts

from .chromium import marks, shots_dir, signed_site
from .conftest import CORPUS
from .test_browser import open_page, path_of

# First-view image bytes (resource timing, each image once), measured, then ~25 % added so an
# encoder update moving AVIF sizes a few % does not fail it while a page that loads a second
# large photo does. Measured: 390 px @3x 47.2 kB (the lead photo only, 1080 px AVIF); 768 px @1x
# 88.2 kB and 1440 px @1x 136.3-146.8 kB in 9-10 images over runs (the lead photo at 768 px, the
# gallery rows near the fold, and the <picture> cards, which Chromium's loading=lazy fetches
# within its 1250 px distance: whether the last one counts depends on timing).
BUDGETS = {390: 60_000, 768: 110_000, 1440: 185_000}
VIEWPORTS = [(390, 844, 3), (768, 1024, 1), (1440, 900, 1)]
CLS_LIMIT = 0.01

pytestmark = marks(timeout=240)

LAYOUT_SHIFTS_JS = """
window.__shift = 0;
new PerformanceObserver((list) => {
  for (const entry of list.getEntries()) if (!entry.hadRecentInput) window.__shift += entry.value;
}).observe({type: 'layout-shift', buffered: true});
"""
IMAGE_BYTES_JS = """() => {
  const seen = new Map();  // each image once: a second entry for the same URL is a cache read
  for (const e of performance.getEntriesByType('resource')) {
    if (e.initiatorType === 'img' && !seen.has(e.name)) seen.set(e.name, e.encodedBodySize);
  }
  return Object.fromEntries(seen);
}"""
FIGURES_FILLED_JS = """() => [...document.querySelectorAll('.fact.device, .fact.mine')]
  .every(row => row.querySelector('.bytes').dataset.bytes)"""
ALL_LOADED_JS = "() => [...document.images].every(i => i.complete && i.naturalWidth > 0)"
# per image: the CSS px its content is drawn at (object-fit decides), the pixels the served image
# really has (a plain Image: naturalWidth of a srcset image is divided by the candidate's density)
SHOWN_JS = """async () => Promise.all([...document.images].map(async (img) => {
  const box = img.getBoundingClientRect();
  const probe = new Image();
  probe.src = img.currentSrc;
  await probe.decode();
  const nw = probe.naturalWidth, nh = probe.naturalHeight;
  const contain = Math.min(box.width / nw, box.height / nh), cover = Math.max(box.width / nw, box.height / nh);
  const scale = {contain, cover, 'scale-down': Math.min(1, contain), none: 1}[getComputedStyle(img).objectFit]
    ?? box.width / nw;
  return {src: img.currentSrc, alt: img.alt, pixels: nw, shown: nw * scale,
          width: img.getAttribute('width'), height: img.getAttribute('height')};
}))"""


def scroll_through(page) -> None:
    """Bring every image near the viewport in turn and wait until all of them have loaded."""
    for img in page.locator("img").all():
        img.scroll_into_view_if_needed()
    page.wait_for_function(ALL_LOADED_JS)
    page.evaluate("window.scrollTo(0, 0)")


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    yield from signed_site(tmp_path_factory.mktemp("demo-site"), "demo-test-key")


@pytest.mark.parametrize("width,height,dpr", VIEWPORTS, ids=[f"{w}px@{d}x" for w, _, d in VIEWPORTS])
def test_demo_page_as_a_visitor_sees_it(browser, site, tmp_path, width, height, dpr):
    config = load_config(site.config_path, environ={})
    context, page, seen = open_page(browser, site, width, height, dpr)
    page.add_init_script(LAYOUT_SHIFTS_JS)
    page.goto(site.url + "/")  # again, now with the layout-shift observer in from the start
    page.wait_for_load_state("networkidle")
    page.wait_for_function(FIGURES_FILLED_JS)

    # the first view's image bytes: within the budget for this width
    first = page.evaluate(IMAGE_BYTES_JS)
    total = sum(first.values())
    assert first and total <= BUDGETS[width], (total, first)

    # the lead photo's figures are the real answers: the devices' by a GET of their URLs, this
    # browser's by what it loaded, and a phone-sized or desktop-sized browser takes what its row says
    rows = page.evaluate("""() => [...document.querySelectorAll('.fact.device')].map(row => ({
        url: row.dataset.url, bytes: Number(row.querySelector('.bytes').dataset.bytes),
        name: row.querySelector('.who').firstChild.textContent.trim()}))""")
    assert [r["name"] for r in rows] == [name for name, _, _ in DEVICES]
    with site.client() as client:
        for row in rows:
            answer = client.get(row["url"])
            assert answer.status_code == 200 and answer.headers["content-type"] == "image/avif"
            assert row["bytes"] == len(answer.content), row
    hero = page.evaluate("() => document.getElementById('hero-img').currentSrc")
    # the slot pages.py computes the devices' picks from is the one demo.css lays out
    assert abs(page.locator("#hero-img").bounding_box()["width"] - hero_slot(width)) < 1
    mine = int(page.get_attribute("#this-browser .bytes", "data-bytes"))
    assert mine == first[hero]
    device = next((url for (name, w, d), url in zip(DEVICES, [r["url"] for r in rows]) if (w, d) == (width, dpr)), None)
    if device:
        assert hero == site.url + device, "the row for this device names another candidate than the one taken"

    scroll_through(page)
    assert page.evaluate("window.__shift") < CLS_LIMIT
    assert page.evaluate("document.documentElement.scrollWidth") <= width, "horizontal overflow"

    # every image: width/height attributes, and never drawn larger than its source; drawn at
    # least as sharp as this screen can show, up to all the pixels the source has
    images = page.evaluate(SHOWN_JS)
    for img in images:
        assert img["width"] and img["height"], img
        facts = source_facts(path_of(img["src"]).removeprefix("/picture/"), config)
        assert facts, img
        assert img["shown"] <= facts.width + 0.5, f"upscaled past its source: {img}"
        assert img["pixels"] >= min(img["shown"] * dpr, facts.width) - 1, f"blurry on this screen: {img}"

    # the animation: served animated, and moving on screen
    spinner = page.locator(".gallery.natural img[alt$='.gif']")
    url = spinner.evaluate("i => i.currentSrc")
    with Image.open(io.BytesIO(page.request.get(url, headers={"Accept": "image/avif,image/webp,*/*"}).body())) as a:
        assert getattr(a, "n_frames", 1) > 1
    spinner.scroll_into_view_if_needed()
    frames = {spinner.screenshot(animations="allow") for _ in range(3)}
    for _ in range(20):  # a frame lasts 80 ms; each screenshot takes longer than that
        if len(frames) > 1:
            break
        frames.add(spinner.screenshot(animations="allow"))
    assert len(frames) > 1, "the animated image does not move"

    assert not seen.console_errors
    page.screenshot(path=shots_dir(tmp_path) / f"demo-after-{width}.png", full_page=True)
    shown = [(i["alt"][:24], round(i["shown"]), i["pixels"]) for i in images]
    print(
        f"\n{width}px @{dpr}x: first view {total} B in {len(first)} images; CLS {page.evaluate('window.__shift'):.4f}"
    )
    print(f"  hero {hero.removeprefix(site.url)} {mine} B; devices {[(r['name'], r['bytes']) for r in rows]}")
    print(f"  (image, CSS px shown, pixels served): {shown}")
    context.close()


def test_upload_shows_progress_the_picture_and_its_html(browser, site, tmp_path):
    context, page, seen = open_page(browser, site, 390, 844, 3)
    photo = CORPUS / "photos" / "grayscale_portrait.jpg"
    with page.expect_response(lambda r: r.url.endswith("/upload")) as upload:
        page.set_input_files("#upload-image", photo)
        assert photo.name in page.inner_text("#upload-file")
        page.click("#upload-form button[type=submit]")
    body = upload.value.json()
    assert upload.value.status == 201
    page.wait_for_function(
        "() => { const p = document.querySelector('#upload-result progress'); return p && p.value === p.max; }"
    )
    assert page.inner_text("#upload-result pre code") == body["picture_html"]
    page.wait_for_function("() => document.querySelector('#upload-result picture img')?.naturalWidth > 0")
    shown = page.evaluate("() => document.querySelector('#upload-result picture img').getBoundingClientRect().width")
    assert 0 < shown <= body["width"]
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    assert not seen.console_errors
    page.locator("#upload").screenshot(path=shots_dir(tmp_path) / "demo-after-upload-390.png")
    context.close()
