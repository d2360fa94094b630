"""The playground in a real browser: Debian's Chromium driven by playwright against a real server.

What the page shows is checked against what the server sent (the responses the page received,
seen by playwright) and against the URL fetched again here; the formats it compares against what
this Chromium decodes, found here from real renders, not from the page's own probes.
"""

from __future__ import annotations

import base64
import io
import math
from dataclasses import dataclass, field
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from PIL import Image
from playwright import sync_api

from imgproxy.options import BY_NAME, PARAMETERS
from imgproxy.signing import check_request

from .chromium import WAIT_MS, marks, shots_dir
from .conftest import CORPUS, LiveServer
from .test_browser import assert_not_blank

pytestmark = marks(timeout=300)
KEY = "playground-browser-key"
TOKEN = "playground-browser-token"
ALWAYS_DECODED = {"jpeg", "png", "gif", "webp", "avif"}  # every Chromium this project supports
REFUSED = "Failed to load resource: the server responded with a status of 4"

READY_JS = """(previous) => {
  const r = document.getElementById('result'), f = document.getElementById('formats');
  return r.dataset.state === 'ready' && r.dataset.url !== previous
    && f.dataset.state === 'ready' && f.dataset.url === r.dataset.url;
}"""
SHOWN_JS = """() => {
  const value = (id) => document.querySelector(`#${id} data`)?.value ?? null;
  const img = document.getElementById('image');
  return {
    url: document.getElementById('url').textContent, size: value('out-size'), bytes: value('out-bytes'),
    format: value('out-format'), cache: value('out-cache'), time: value('out-time'),
    natural: `${img.naturalWidth}x${img.naturalHeight}`, src: img.src,
  };
}"""
ERRORS_JS = """() => Object.fromEntries([...document.querySelectorAll('.error')]
  .filter((e) => !e.hidden).map((e) => [e.id, e.textContent]))"""


@dataclass
class Seen:
    responses: dict[str, sync_api.Response] = field(default_factory=dict)  # the last one per URL
    console_errors: list[str] = field(default_factory=list)

    def response(self, base: str, url: str) -> sync_api.Response:
        return self.responses[base + url]


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("playground-site")
    server = LiveServer(workdir, {"sources": {"local": {"root": str(workdir / "images"), "generate_demo": True}}})
    server.start()
    yield server
    server.stop()


def open_playground(browser, server: LiveServer, width: int = 1440, height: int = 900, **options):
    context = browser.new_context(viewport={"width": width, "height": height}, **options)
    context.set_default_timeout(WAIT_MS)
    page = context.new_page()
    seen = Seen()
    page.on("response", lambda r: seen.responses.__setitem__(r.url, r))
    page.on("console", lambda m: seen.console_errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: seen.console_errors.append(str(e)))
    page.goto(server.url + "/playground")
    return context, page, seen


def wait_ready(page, previous: str | None = None) -> dict:
    """Until the result and the format comparison show a request other than `previous`."""
    page.wait_for_function(READY_JS, arg=previous)
    return page.evaluate(SHOWN_JS)


def change(page, selector: str, value: str | bool) -> dict:
    previous = page.evaluate("() => document.getElementById('result').dataset.url")
    if isinstance(value, bool):
        page.set_checked(selector, value)
    elif page.locator(selector).evaluate("e => e.tagName") == "SELECT":
        page.select_option(selector, value)
    else:
        page.fill(selector, value)
    return wait_ready(page, previous)


def fetched(server: LiveServer, url: str) -> httpx.Response:
    """The URL fetched here (renders are deterministic: the bytes the page got)."""
    with httpx.Client(base_url=server.url, timeout=60) as client:
        return client.get(url)


def query(url: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}


def image_of(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def test_each_kind_of_control_changes_the_url_and_the_image(browser, site):
    context, page, seen = open_playground(browser, site)
    shown = wait_ready(page)
    assert (query(shown["url"]), shown["size"]) == ({"scalex": "640"}, "640x427")  # an image on load
    bodies = {shown["url"]: fetched(site, shown["url"]).content}

    def step(selector: str, value: str | bool, params: dict[str, str], size: str | None = None) -> dict:
        now = change(page, selector, value)
        assert query(now["url"]) == params, (selector, value)
        assert now["size"] == now["natural"] and (size is None or now["size"] == size), now
        body = fetched(site, now["url"]).content
        assert int(seen.response(site.url, now["url"]).all_headers()["content-length"]) == len(body)
        assert body not in bodies.values(), f"{selector}={value} did not change the image"
        bodies[now["url"]] = body
        return now

    step("#param-width", "320", {"scalex": "320"}, "320x213")  # int
    step("#param-dpr", "1.5", {"scalex": "320", "dpr": "1.5"}, "480x320")  # number
    now = step("#param-encoding", "webp", {"scalex": "320", "encoding": "webp", "dpr": "1.5"})  # choice
    assert now["format"] == "image/webp"
    step("#param-height", "160", {"scalex": "320", "scaley": "160", "encoding": "webp", "dpr": "1.5"}, "360x240")
    crop = {"scalex": "320", "scaley": "160", "encoding": "webp", "mode": "crop", "dpr": "1.5"}
    step("#param-mode", "crop", crop, "480x240")

    # text, set by clicking the source (the focal point), by the arrow keys, and typed
    page.locator("#preview").scroll_into_view_if_needed()  # a mouse click does not scroll: the box must be on screen
    box = page.locator("#preview").bounding_box()
    previous = now = page.evaluate(SHOWN_JS)["url"]
    page.mouse.click(box["x"] + box["width"] * 0.8, box["y"] + box["height"] * 0.9)
    now = wait_ready(page, previous)
    x, y = (float(v) for v in query(now["url"])["gravity"].removeprefix("fp:").split(","))
    assert abs(x - 0.8) < 0.01 and abs(y - 0.9) < 0.01
    page.focus("#focal")
    page.keyboard.press("ArrowLeft")
    moved = wait_ready(page, now["url"])
    assert query(moved["url"])["gravity"] == f"fp:{round(x - 0.05, 3):g},{y:g}"
    step("#param-gravity", "north", {**crop, "gravity": "north"})

    # color: the pad around the picture
    padded = {**crop, "mode": "pad", "gravity": "north"}
    step("#param-mode", "pad", padded, "480x240")
    now = step("#param-background", "#ff0000", {**padded, "background": "#ff0000"}, "480x240")
    with image_of(bodies[now["url"]]) as image:
        assert image.convert("RGB").getpixel((2, 120))[0] > 200 > image.convert("RGB").getpixel((2, 120))[1]

    # bool, on another sample (the source select): enlarge past the source's 1024 px
    for selector in ("#param-height", "#param-dpr", "#param-mode", "#param-gravity", "#param-background"):
        change(page, selector, "")
    step("#source", "demo/badge.png", {"scalex": "320", "encoding": "webp"}, "320x320")
    step("#param-width", "1100", {"scalex": "1100", "encoding": "webp"}, "1024x1024")
    step("#param-enlarge", True, {"scalex": "1100", "encoding": "webp", "enlarge": "1"}, "1100x1100")

    # an upload through POST /upload becomes the source
    previous = page.evaluate(SHOWN_JS)["url"]
    page.set_input_files("#upload-file", str(CORPUS / "photos/alpha_dice.png"))
    now = wait_ready(page, previous)
    assert urlsplit(now["url"]).path.startswith("/picture/uploads/") and now["size"] == "1100x825"
    assert page.input_value("#source") == urlsplit(now["url"]).path.removeprefix("/picture/")
    assert not seen.console_errors
    print(f"\n{len(bodies)} distinct results, last {now}")
    context.close()


def test_the_numbers_shown_are_the_response_headers(browser, site):
    context, page, seen = open_playground(browser, site)
    first = wait_ready(page)
    second = change(page, "#param-quality", "55")
    again = change(page, "#param-quality", "")  # the same URL as on load: now a cache hit
    assert again["url"] == first["url"]
    with httpx.Client(base_url=site.url, timeout=60) as client:
        for shown in (second, again):
            response = seen.response(site.url, shown["url"])
            headers = response.all_headers()
            mine = client.get(shown["url"])
            with image_of(mine.content) as image:
                size = f"{image.width}x{image.height}"
            assert int(shown["bytes"]) == int(headers["content-length"]) == len(mine.content)
            assert headers["etag"] == mine.headers["etag"]  # the same bytes
            assert shown["size"] == size
            assert shown["format"] == headers["content-type"] == mine.headers["content-type"]
            assert shown["cache"] == headers["x-cache"]
            assert mine.headers["x-cache"] == "HIT"
            timing = headers["server-timing"]
            if shown["cache"] == "MISS":
                assert f"render;dur={shown['time']}" in timing
            else:
                assert shown["time"] == "" and "render" not in timing
    assert (second["cache"], again["cache"]) == ("MISS", "HIT")
    assert query(second["url"]) == {"scalex": "640", "quality": "55"}
    assert not seen.console_errors
    print(f"\nshown {second} and, fetched again, {again}")
    context.close()


def decodable(page, server: LiveServer, formats: list[str]) -> set[str]:
    """The formats this browser decodes, tried on real renders of this server."""
    found = set()
    with httpx.Client(base_url=server.url, timeout=60) as client:
        for fmt in formats:
            data = client.get("/picture/demo/badge.png", params={"scalex": "64", "encoding": fmt}).content
            ok = page.evaluate(
                """async ([b64, type]) => {
                     const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
                     try { return (await createImageBitmap(new Blob([bytes], {type}))).width === 64; }
                     catch { return false; }
                   }""",
                [base64.b64encode(data).decode(), f"image/{fmt}"],
            )
            if ok:
                found.add(fmt)
    return found


def test_the_comparison_shows_every_format_the_browser_decodes(browser, site):
    context, page, seen = open_playground(browser, site)
    shown = wait_ready(page)
    written = [
        f["format"] for f in page.evaluate("() => JSON.parse(document.getElementById('playground').dataset.formats)")
    ]
    expected = [f for f in written if f in decodable(page, site, written)]
    assert set(expected) >= ALWAYS_DECODED
    items = page.evaluate(
        """() => [...document.querySelectorAll('#format-list li')].map((li) => ({
             format: li.dataset.format, bytes: li.querySelector('data').value, text: li.textContent,
             src: li.querySelector('img').src, width: li.querySelector('img').naturalWidth}))"""
    )
    assert [i["format"] for i in items] == expected
    original = (site.root / "demo/valley.jpg").stat().st_size
    assert f"{original:,} bytes" in page.inner_text("#original")
    for item in items:
        url = next(u for u in seen.responses if query(u).get("encoding") == item["format"] and "scalex=640" in u)
        body = fetched(site, url).content
        assert int(item["bytes"]) == len(body) == int(seen.responses[url].all_headers()["content-length"])
        assert item["width"] == 640
        saving = math.floor((1 - len(body) / original) * 100 + 0.5)  # JavaScript's Math.round
        assert f"{saving} % smaller" in item["text"]
        assert seen.responses[url].all_headers()["content-type"] == f"image/{item['format']}"

    # encoding=auto: the page offers what this browser decodes, as its <img> would
    auto = change(page, "#param-encoding", "auto")
    accept = ",".join([*(f"image/{f}" for f in expected), "image/*", "*/*;q=0.8"])
    with httpx.Client(base_url=site.url, timeout=60) as client:
        mine = client.get(auto["url"], headers={"Accept": accept})
    assert auto["format"] == mine.headers["content-type"] != "image/jpeg"
    assert seen.response(site.url, auto["url"]).all_headers()["vary"] == "Accept"
    best = auto["format"]
    assert not seen.console_errors
    print(f"\n{shown['url']}: " + ", ".join(f"{i['format']} {i['bytes']} B" for i in items) + f"; auto: {best}")
    context.close()


@pytest.mark.parametrize(
    "selector,value,status",
    [
        ("#param-width", "0", 400),
        ("#param-width", "5000", 413),
        ("#param-crop", "1,2,3", 400),
        ("#param-crop", "0,0,900,900", 400),  # outside the source: found at render time
        ("#param-background", "nocolour", 400),
        ("#param-sharpen", "99", 400),
        ("#param-preset", "nope", 400),
    ],
)
def test_a_bad_value_shows_the_service_message_next_to_its_control(browser, site, selector, value, status):
    context, page, seen = open_playground(browser, site)
    wait_ready(page)
    change(page, "#source", "demo/spinner.gif")  # 240 px: a region of 900 px is outside it
    page.fill(selector, value)
    page.wait_for_function("() => document.getElementById('result').dataset.state === 'error'")
    url = page.inner_text("#url")
    with httpx.Client(base_url=site.url, timeout=60) as client:
        answer = client.get(url)
    assert answer.status_code == status
    name = selector.removeprefix("#param-")
    assert page.evaluate(ERRORS_JS) == {f"error-{name}": f"{answer.text.strip()} (HTTP {status})"}
    assert page.get_attribute(selector, "aria-invalid") == "true"
    spelling = answer.text.split(":")[0].split()[0]  # the message names the parameter as written
    assert spelling in (name, *BY_NAME[name].aliases)

    page.fill(selector, "")  # fixed: the message goes
    wait_ready(page, None)
    assert page.evaluate(ERRORS_JS) == {} and page.get_attribute(selector, "aria-invalid") is None
    assert seen.console_errors and all(e.startswith(REFUSED) for e in seen.console_errors)
    context.close()


def test_signing_with_a_key_needs_the_token_and_the_key_stays_on_the_server(browser, tmp_path):
    settings = {
        "sources": {"local": {"root": str(tmp_path / "images"), "generate_demo": True}},
        "security": {"key": KEY},
        "uploads": {"token": TOKEN},
    }
    server = LiveServer(tmp_path / "server", settings).start()
    try:
        context, page, seen = open_playground(browser, server)
        first = wait_ready(page)  # shown without a token: the page carries its first answer
        assert KEY not in page.content()

        def valid(url: str) -> bool:
            parts = urlsplit(url)
            check_request(parts.path, parts.query, (KEY,), ())  # raises when the signature is wrong
            return "sig=" in parts.query

        assert valid(first["url"])
        page.fill("#param-width", "300")
        page.wait_for_function("() => document.getElementById('result').dataset.state === 'error'")
        assert page.evaluate(ERRORS_JS) == {"error-general": "signing needs Authorization: Bearer <token> (HTTP 401)"}
        assert page.evaluate("() => document.activeElement.id") == "token"
        page.fill("#token", "wrong")
        page.dispatch_event("#token", "change")
        page.wait_for_function("() => document.getElementById('error-general').textContent.includes('not valid')")
        assert page.evaluate(ERRORS_JS) == {"error-general": "signing token is not valid (HTTP 403)"}
        page.fill("#token", TOKEN)
        page.dispatch_event("#token", "change")
        now = wait_ready(page, first["url"])
        assert query(now["url"])["scalex"] == "300" and valid(now["url"]) and now["size"] == "300x200"
        assert seen.response(server.url, now["url"]).status == 200
        formats = page.evaluate("() => [...document.querySelectorAll('#format-list img')].map((i) => i.naturalWidth)")
        assert formats and set(formats) == {300}
        assert all(e.startswith(REFUSED) for e in seen.console_errors)  # the 401 and the 403
        context.close()
    finally:
        server.stop()


@pytest.mark.parametrize("width,height", [(390, 844), (768, 1024), (1440, 900)])
def test_screenshots_fit_the_width_and_are_not_blank(browser, site, tmp_path, width, height):
    context, page, seen = open_playground(browser, site, width, height)
    wait_ready(page)
    page.evaluate("() => Promise.all([...document.images].map((i) => i.complete || i.decode()))")
    overflow = page.evaluate(
        """() => ({page: [document.documentElement.scrollWidth, document.documentElement.clientWidth],
                   wide: [...document.querySelectorAll('body *')].filter((e) => e.getBoundingClientRect().right >
                     document.documentElement.clientWidth + 0.5).map((e) => e.id || e.className || e.tagName)})"""
    )
    assert overflow["page"][0] <= overflow["page"][1] and overflow["wide"] == [], overflow
    shot = page.screenshot(path=shots_dir(tmp_path) / f"playground-{width}.png", full_page=True)
    assert_not_blank(shot)
    box = page.locator("#image").bounding_box()
    assert box["width"] > 100 and box["x"] >= 0 and box["x"] + box["width"] <= width
    viewport_shot = page.screenshot()
    assert_not_blank(
        viewport_shot, (box["x"], box["y"], box["x"] + box["width"], min(box["y"] + box["height"], height))
    )
    assert not seen.console_errors
    context.close()


def test_every_parameter_has_a_labelled_control_in_keyboard_order(browser, site):
    context, page, seen = open_playground(browser, site, permissions=["clipboard-read", "clipboard-write"])
    shown = wait_ready(page)
    for p in PARAMETERS:
        control = page.locator(f'[data-param="{p.name}"]')
        assert control.count() == 1, p.name
        assert control.is_visible() and control.evaluate("e => e.labels.length") >= 1, p.name
    page.focus("#source")
    order = []
    for _ in range(6 * len(PARAMETERS) + 20):
        page.keyboard.press("Tab")
        active = page.evaluate("() => document.activeElement.dataset.param || document.activeElement.id")
        if active in order:
            break
        order.append(active)
    assert [name for name in order if name in {p.name for p in PARAMETERS}] == [p.name for p in PARAMETERS]
    assert "focal" in order and order.index("focal") < order.index(PARAMETERS[0].name)

    # the copy button, from the keyboard: the absolute URL lands on the clipboard
    page.focus("#copy")
    page.keyboard.press("Enter")
    page.wait_for_function("() => document.getElementById('copy-status').textContent === 'Copied.'")
    assert page.evaluate("() => navigator.clipboard.readText()") == site.url + shown["url"]
    assert not seen.console_errors
    context.close()
