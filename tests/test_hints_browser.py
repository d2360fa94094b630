"""Client hints in real Chromium (SPEC §11): the service's page sends Accept-CH, and Chromium then
sends Sec-CH-DPR/Width/Viewport-Width with the page's `width=auto` image requests from the first
load on; the answers are sized by them. Expectations come from the headers Chromium sent."""

from __future__ import annotations

import math

import pytest
from PIL import Image
from playwright import sync_api

from imgproxy.hints import ACCEPT_CH, round_up
from imgproxy.html import WIDTH_STEPS

from .chromium import WAIT_MS, marks, signed_site

pytestmark = marks()

VIEWPORT = (800, 600)
SOURCE = "demo/valley.jpg"
# One <img> per way Chromium decides Sec-CH-Width (or not), each its own URL (aliases; all pass unsigned)
IMAGES = {
    "sizes": f'<img id="sizes" src="/picture/{SOURCE}?scalex=auto" sizes="300px" alt="">',
    "width-attribute": f'<img id="width-attribute" src="/picture/{SOURCE}?w=auto" width="250" alt="">',
    "neither": f'<img id="neither" src="/picture/{SOURCE}?width=auto&encoding=auto" alt="">',
}
CSS_WIDTHS = {"sizes": 300, "width-attribute": 250}  # what Chromium multiplies by the DPR for Sec-CH-Width
LOADED_JS = (
    "(ids) => ids.every(id => { const i = document.getElementById(id); return i.complete && i.naturalWidth > 0; })"
)


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    # a signed service: width=auto passes unsigned because allowed_widths is set
    yield from signed_site(tmp_path_factory.mktemp("hints-browser"), "hints-browser-key", render={"client_hints": True})


@pytest.mark.parametrize("dpr", [1, 2, 2.625])
def test_chromium_sends_the_hints_and_gets_images_sized_by_them(browser, site, dpr):
    with Image.open(site.root / SOURCE) as image:
        source_width = image.width
    context = browser.new_context(viewport=dict(zip(("width", "height"), VIEWPORT)), device_scale_factor=dpr)
    try:  # a fresh context: nothing learnt from earlier loads, so this is the first load's behaviour
        context.set_default_timeout(WAIT_MS)
        page = context.new_page()
        requests: dict[str, sync_api.Request] = {}
        page.on(
            "request", lambda r: requests.setdefault(r.url.split("/picture/", 1)[-1], r) if "=auto" in r.url else None
        )
        document = page.goto(site.url + "/")
        assert document.headers["accept-ch"] == ACCEPT_CH
        page.evaluate("(html) => document.body.insertAdjacentHTML('beforeend', html)", "".join(IMAGES.values()))
        page.wait_for_function(LOADED_JS, arg=list(IMAGES))

        report = []
        widths_sent: dict[str, str | None] = {}
        for name, markup in IMAGES.items():
            url = markup.split('src="/picture/', 1)[1].split('"', 1)[0].replace("&amp;", "&")
            request = requests[url]
            sent = {
                k: v
                for k, v in request.all_headers().items()
                if k in ("sec-ch-width", "sec-ch-viewport-width", "sec-ch-dpr")
            }
            response = request.response()
            assert response is not None and response.status == 200
            natural = page.evaluate("(id) => document.getElementById(id).naturalWidth", name)
            assert float(sent["sec-ch-dpr"]) == dpr and int(sent["sec-ch-viewport-width"]) == VIEWPORT[0]
            if "sec-ch-width" in sent:  # physical pixels: the layout width x DPR, rounded up
                assert int(sent["sec-ch-width"]) == math.ceil(CSS_WIDTHS[name] * dpr)
                wanted = round_up(int(sent["sec-ch-width"]), WIDTH_STEPS)
                vary = "Sec-CH-Width"
            else:  # the viewport x DPR
                wanted = round_up(VIEWPORT[0] * dpr, WIDTH_STEPS)
                vary = "Accept, " * (name == "neither") + "Sec-CH-Width, Sec-CH-Viewport-Width, Sec-CH-DPR"
            assert natural == min(wanted, source_width), (name, sent)  # never enlarged past the source
            assert response.headers["vary"] == vary
            report.append(f"{name}: sent {sent} -> {natural} px, Vary: {vary}")
            widths_sent[name] = sent.get("sec-ch-width")
        # Chromium 156 sends Sec-CH-Width for an <img> with `sizes`; for one with only a `width` attribute just
        # when its preload scanner fetches it from parsed markup (measured), never for one a script inserts
        assert widths_sent == {"sizes": str(math.ceil(300 * dpr)), "width-attribute": None, "neither": None}
        print(f"\n@{dpr}x " + "; ".join(report))
    finally:
        context.close()
