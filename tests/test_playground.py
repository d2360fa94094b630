"""GET /playground and POST /playground/sign against a real server (the page in Chromium is
tests/test_playground_browser.py): the controls come from options.PARAMETERS, and the signing
endpoint signs only for whoever holds the [uploads] token when a key is set."""

from __future__ import annotations

import dataclasses
import json
from html.parser import HTMLParser
from urllib.parse import urlsplit

import pytest

from imgproxy import options, playground
from imgproxy.config import Config, PlaygroundConfig, SecurityConfig
from imgproxy.html import picture_url
from imgproxy.options import PARAMETERS, Parameter
from imgproxy.signing import check_request

from .conftest import CORPUS, LiveServer, copy_from_corpus

pytestmark = pytest.mark.timeout(120)
KEY = "playground-test-key"
TOKEN = "playground-test-token"
PHOTO = "photos/alpha_dice.png"  # 300x225 RGBA


class Elements(HTMLParser):
    """(tag, attributes) of every start tag."""

    def __init__(self, text: str):
        super().__init__()
        self.found: list[tuple[str, dict[str, str]]] = []
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        self.found.append((tag, {k: v or "" for k, v in attrs}))


def controls_in(html: str) -> dict[str, tuple[str, dict[str, str]]]:
    return {a["data-param"]: (t, a) for t, a in Elements(html).found if "data-param" in a}


def sign(client, body: object, token: str | None = None, raw: bytes | None = None):
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    return client.post("/playground/sign", content=raw if raw is not None else json.dumps(body), headers=headers)


@pytest.fixture(scope="module")
def open_site(tmp_path_factory):
    """No key: the sign endpoint only builds URLs."""
    workdir = tmp_path_factory.mktemp("playground-open")
    server = LiveServer(workdir, {"sources": {"local": {"root": str(workdir / "images"), "generate_demo": True}}})
    copy_from_corpus(PHOTO, workdir / "images")
    server.start()
    yield server
    server.stop()


def test_page_has_a_strict_policy_and_a_labelled_control_for_every_parameter(open_site):
    with open_site.client() as client:
        response = client.get("/playground")
        script = client.get("/static/playground.js")
        css = client.get("/static/playground.css")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
    policy = response.headers["content-security-policy"]
    assert "script-src 'self'" in policy and "style-src 'self'" in policy and "default-src 'self'" in policy
    assert "unsafe" not in policy and "http" not in policy  # nothing inline, nothing from another origin
    assert script.status_code == 200 and "javascript" in script.headers["content-type"]
    assert css.status_code == 200 and css.headers["content-type"].startswith("text/css")

    elements = Elements(response.text).found
    assert all("style" not in a and not any(k.startswith("on") for k in a) for _, a in elements)
    assert all(a.get("src", "").startswith("/static/") for t, a in elements if t == "script")
    assert all(a.get("href", "").startswith(("/", "data:")) for t, a in elements if t == "link")
    labels = {a["for"] for t, a in elements if t == "label"}
    found = controls_in(response.text)
    assert list(found) == [p.name for p in PARAMETERS]  # every one, in the table's order
    for p in PARAMETERS:
        tag, attrs = found[p.name]
        assert attrs["id"] in labels, p.name
        assert attrs["data-names"].split() == [p.name, *p.aliases]
        if p.kind == "choice":
            assert tag == "select"
        elif p.kind in ("int", "number"):
            assert (attrs["type"], float(attrs["min"]), float(attrs["max"])) == ("number", p.low, p.high)
        elif p.kind == "bool":
            assert attrs["type"] == "checkbox"
        else:
            assert (tag, attrs["type"]) == ("input", "text")


def test_a_parameter_added_to_the_table_gets_a_control_without_touching_the_page(monkeypatch):
    def set_zoom(values, name, param, raw):
        values[name] = raw

    added = (
        Parameter("zoom", ("z",), set_zoom, "number", "a new `number`", low=0.5, high=8, example="2"),
        Parameter("tint", (), set_zoom, "choice", "a new choice", choices=("warm", "cold")),
        Parameter("mystery", (), set_zoom, "some-future-kind", "a kind the page does not know yet"),
    )
    monkeypatch.setattr(playground, "PARAMETERS", PARAMETERS + added)
    html = playground.page_html(Config(), playground.load_template(), [])
    found = controls_in(html)
    assert list(found)[-3:] == ["zoom", "tint", "mystery"]
    assert found["zoom"][1]["data-names"] == "zoom z" and found["zoom"][1]["max"] == "8"
    assert "<code>number</code>" in html  # its help, Markdown code kept
    assert "<option>warm</option><option>cold</option>" in html
    assert found["mystery"][1]["type"] == "text"  # an unknown kind still gets a text field


def test_the_page_shows_an_image_on_load_from_its_own_answer(open_site):
    with open_site.client() as client:
        html = client.get("/playground").text
        main = next(a for t, a in Elements(html).found if a.get("id") == "playground")
        start = json.loads(main["data-start"])
        formats = json.loads(main["data-formats"])
        assert start["request"] == {"source": "demo/valley.jpg", "params": [["width", "640"]]}
        assert start["answer"] == sign(client, start["request"]).json()
        assert client.get(start["answer"]["url"]).status_code == 200
    assert [f["format"] for f in formats] == [f for f in options.BY_NAME["encoding"].choices if f != "auto"]
    assert all(f["probe"].startswith(f"data:{f['type']};base64,") for f in formats)


def test_sign_without_a_key_builds_the_urls_the_helpers_write(open_site):
    params = [["width", "300"], ["mode", "crop"], ["height", "200"], ["background", "#ff0000"], ["crop", "0,0,50%,50%"]]
    with open_site.client() as client:
        answer = sign(client, {"source": PHOTO, "params": params}).json()
        assert answer["url"] == picture_url(PHOTO, **dict(params))
        assert "sig=" not in answer["url"]
        assert set(answer["formats"]) == {f for f in options.BY_NAME["encoding"].choices if f != "auto"}
        for fmt, url in answer["formats"].items():
            assert url == picture_url(PHOTO, **dict(params), encoding=fmt)
        assert answer["preview"] == picture_url(PHOTO, width=playground.PREVIEW_WIDTH, crop="0,0,50%,50%")
        original = answer["original"]
        assert original["bytes"] == (CORPUS / PHOTO).stat().st_size
        assert original == {"bytes": original["bytes"], "width": 300, "height": 225}
        assert client.get(answer["preview"]).status_code == 200
        assert sign(client, {"source": "missing/none.jpg", "params": []}).json()["original"] is None


@pytest.mark.parametrize(
    "body,status,message",
    [
        (b"x" * (playground.MAX_BODY + 1), 413, "larger than"),
        (b"{not json", 400, "JSON"),
        (b"[]", 400, "source"),
        (json.dumps({"source": "", "params": []}).encode(), 400, "source"),
        (json.dumps({"source": "a" * 2000, "params": []}).encode(), 400, "source"),
        (json.dumps({"source": "a.jpg", "params": {"width": "1"}}).encode(), 400, "params"),
        (json.dumps({"source": "a.jpg", "params": [["width"]]}).encode(), 400, "pairs"),
        (json.dumps({"source": "a.jpg", "params": [["width", 5]]}).encode(), 400, "pairs"),
        (json.dumps({"source": "a.jpg", "params": [["sig", "x"]]}).encode(), 400, "unknown parameter"),
        (json.dumps({"source": "a.jpg", "params": [["w", "5"]]}).encode(), 400, "canonical"),
        (json.dumps({"source": "a.jpg", "params": [["width", "5"], ["width", "6"]]}).encode(), 400, "more than once"),
        (json.dumps({"source": "a.jpg", "params": [["crop", "1" * 300]]}).encode(), 400, "longer than"),
        (json.dumps({"source": "a.jpg", "params": [["width", "1"]] * 200}).encode(), 400, "at most"),
    ],
)
def test_hostile_sign_requests_get_a_clear_4xx(open_site, body, status, message):
    with open_site.client() as client:
        response = sign(client, None, raw=body)
    assert response.status_code == status, response.text
    assert message in response.text


def test_with_a_key_signing_needs_the_uploads_token(live_server, tmp_path):
    server = live_server(
        {
            "sources": {"local": {"root": str(tmp_path / "images"), "generate_demo": True}},
            "security": {"key": KEY},
            "uploads": {"token": TOKEN},
        }
    )
    request = {"source": "demo/valley.jpg", "params": [["width", "320"], ["encoding", "webp"]]}
    with server.client() as client:
        missing = sign(client, request)
        wrong = sign(client, request, token="not-it")
        right = sign(client, request, token=TOKEN)
        assert (missing.status_code, wrong.status_code, right.status_code) == (401, 403, 200)
        assert "Bearer" in missing.text and missing.headers["www-authenticate"].startswith("Bearer")
        answer = right.json()
        for url in [answer["url"], answer["preview"], *answer["formats"].values()]:
            parts = urlsplit(url)
            check_request(parts.path, parts.query, (KEY,), ())  # raises Forbidden when not signed right
        assert client.get(answer["url"]).headers["content-type"] == "image/webp"
        assert client.get(answer["url"].split("&sig=")[0]).status_code == 403  # the key is needed
        # the page itself needs no token: it carries the signed answer for its first image
        html = client.get("/playground").text
    main = next(a for t, a in Elements(html).found if a.get("id") == "playground")
    assert KEY not in html
    start = json.loads(main["data-start"])
    with server.client() as client:
        assert client.get(start["answer"]["url"]).status_code == 200
    assert any(a.get("id") == "token" for _, a in Elements(html).found)


def test_with_a_key_and_no_token_signing_is_off_unless_opened(live_server, tmp_path):
    root = {"sources": {"local": {"root": str(tmp_path / "images"), "generate_demo": True}}}
    closed = live_server({**root, "security": {"key": KEY}}, name="closed")
    opened = live_server({**root, "security": {"key": KEY}, "playground": {"open_signing": True}}, name="opened")
    request = {"source": "demo/valley.jpg", "params": [["width", "100"]]}
    with closed.client() as client:
        refused = sign(client, request, token="anything")
        assert refused.status_code == 403 and "signing is off" in refused.text
        assert client.get("/playground").status_code == 200  # the page still shows its first image
    with opened.client() as client:
        url = sign(client, request).json()["url"]
        assert "&sig=" in url and client.get(url).status_code == 200


def test_playground_can_be_switched_off(live_server):
    server = live_server({"playground": {"enabled": False}})
    with server.client() as client:
        assert client.get("/playground").status_code == 404
        assert sign(client, {"source": "a.jpg", "params": []}).status_code == 404


def test_config_defaults():
    assert Config().playground == PlaygroundConfig(enabled=True, open_signing=False)
    keyed = dataclasses.replace(Config(), security=SecurityConfig(key=KEY))
    html = playground.page_html(keyed, playground.load_template(), [])
    assert 'id="token"' in html and "signed by the server" in html
