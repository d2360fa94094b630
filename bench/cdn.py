"""Hit throughput through the nginx edge (deploy/nginx) vs straight from a replica, and (mode
`mix`) the edge hit share of a browsing mix with the edge key before and after issue 17.

Default mode: starts 3 replicas and nginx in front of them as tests/test_cdn.py does, warms one URL
on both, then runs wrk (pinned to core 1) for BENCH_SECONDS against each.

`mix`: the same replicas behind two edges, one after the other, each with an empty cache:
"before" puts the Accept class into the key of every /picture URL (the config before issue 17,
made from deploy/nginx/imgproxy.conf by swapping its key back), "after" is imgproxy.conf as it is
(the class only where the format is negotiated). Both get the same requests in the same order:
browsers with their real Accept headers asking for the URLs the Python helpers write for their
markup (mostly fixed formats, some encoding=auto). It prints, per edge, the share of requests the
edge answered, the requests that reached a replica, and the entries in the edge cache.
"""

import os
import random
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from imgproxy.html import picture_url  # noqa: E402
from tests.conftest import LiveServer  # noqa: E402
from tests.edge import EDGE_CONF, Edge  # noqa: E402

SECONDS = os.environ.get("BENCH_SECONDS", "10")
PATH = "/picture/photos/progressive_dalmatian.jpg?w=320"

# Browsers by share of requests (roughly a 2025 global mix), with the Accept they send for images.
BROWSERS = [
    (0.62, "Chrome/Edge", "image/avif,image/webp,image/apng,image/svg+xml,image/*,*/*;q=0.8"),
    (
        0.18,
        "Safari 17+",
        "image/webp,image/avif,image/jxl,image/heic,image/heic-sequence,video/*;q=0.8,"
        "image/png,image/svg+xml,image/*;q=0.8,*/*;q=0.5",
    ),
    (0.07, "Firefox", "image/avif,image/webp,image/png,image/svg+xml,image/*;q=0.8,*/*;q=0.5"),
    (0.06, "Safari 14-15", "image/webp,image/png,image/svg+xml,image/*;q=0.8,video/*;q=0.8,*/*;q=0.5"),
    (0.07, "old/bots", "*/*"),
]
# How the page shows a picture, by share: what each kind of markup makes a browser request.
MARKUP = [
    (0.45, "img"),  # <img srcset>, no encoding: default_format (the source's)
    (0.20, "img-webp"),  # <img srcset> with encoding=webp
    (0.20, "picture"),  # <picture>: an AVIF and a WebP <source>, the plain <img> as fallback
    (0.15, "auto"),  # <img srcset> with encoding=auto
]
SOURCES = ["photos/progressive_dalmatian.jpg", "photos/grayscale_portrait.jpg", "photos/cmyk_park.jpg"]
PICTURES = int(os.environ.get("BENCH_PICTURES", "40"))  # distinct pictures: a source and a version each
WIDTHS = (320, 480)  # what the devices pick from the srcset
REQUESTS = int(os.environ.get("BENCH_REQUESTS", "1000"))


def wrk(url: str) -> str:
    out = subprocess.run(
        ["taskset", "-c", "1", "wrk", "-t1", "-c32", f"-d{SECONDS}s", "--latency", url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rate = re.search(r"Requests/sec:\s+(\S+)", out)[1]
    p99 = re.search(r"99%\s+(\S+)", out)[1]
    return f"{float(rate):10,.0f} req/s   p99 {p99}"


def hit_throughput(replicas: list[LiveServer]) -> None:
    base = replicas[0].workdir.parent
    edge = Edge(base / "edge", [r.port for r in replicas])
    try:
        edge.get(PATH)
        edge.get(PATH)  # cached at the edge now
        httpx.get(replicas[0].url + PATH, timeout=30)  # and on the replica we measure directly
        print(f"edge hit (nginx)   {wrk(f'http://127.0.0.1:{edge.port}{PATH}')}")
        print(f"replica hit        {wrk(replicas[0].url + PATH)}")
    finally:
        edge.stop()


def requested_url(picture: int, markup: str, accept_class: str, width: int) -> str:
    """The URL a browser of `accept_class` fetches for `picture` shown with `markup`."""
    source, version = SOURCES[picture % len(SOURCES)], f"p{picture}"
    encoding = {"img": None, "img-webp": "webp", "auto": "auto"}.get(markup)
    if markup == "picture":  # the browser takes the first <source> whose type it accepts
        encoding = {"avif": "avif", "webp": "webp"}.get(accept_class)
    return picture_url(source, width=width, encoding=encoding, v=version)


def browsing_mix(seed: int = 17) -> list[tuple[str, str]]:
    """(URL, Accept) in order: Zipf-popular pictures, each with its markup, any browser."""
    rng = random.Random(seed)
    markup = {p: rng.choices([m for _, m in MARKUP], [w for w, _ in MARKUP])[0] for p in range(PICTURES)}
    popularity = [1 / (p + 1) for p in range(PICTURES)]
    requests = []
    for _ in range(REQUESTS):
        picture = rng.choices(range(PICTURES), popularity)[0]
        _, name, accept = rng.choices(BROWSERS, [w for w, *_ in BROWSERS])[0]
        accept_class = "avif" if "image/avif" in accept else "webp" if "image/webp" in accept else "other"
        requests.append((requested_url(picture, markup[picture], accept_class, rng.choice(WIDTHS)), accept))
    return requests


def before_conf(directory: Path) -> Path:
    """imgproxy.conf with the edge key of before issue 17: the Accept class in every /picture key."""
    text = EDGE_CONF.read_text()
    swaps = [
        ("$request_uri|$imgproxy_key_accept|$imgproxy_key_hints", "$request_uri|$imgproxy_accept_class"),
        ('"~^/picture/"  $imgproxy_picture_accept;', '"~^/picture/"  $imgproxy_accept_normalised;'),
    ]
    for new, old in swaps:
        assert new in text, f"imgproxy.conf changed: {new!r} not found"
        text = text.replace(new, old)
    path = directory / "imgproxy-before.conf"
    path.write_text(text)
    return path


def run_mix(name: str, edge: Edge, requests: list[tuple[str, str]]) -> None:
    hits = origin = 0
    for url, accept in requests:
        response, hop = edge.get(url, accept=accept)
        assert response.status_code == 200, f"{url}: {response.status_code} {response.text[:200]}"
        hits += hop.cache == "HIT"
        origin += bool(hop.upstreams)
    entries = sum(1 for f in (edge.dir / "cache").rglob("*") if f.is_file())
    print(
        f"{name:7} edge hits {hits}/{len(requests)} ({hits / len(requests):.1%})   "
        f"origin requests {origin}   edge entries {entries}"
    )


def mix(replicas: list[LiveServer]) -> None:
    requests = browsing_mix()
    distinct = len({url for url, _ in requests})
    auto = sum("encoding=auto" in url for url, _ in requests)
    print(f"{len(requests)} requests, {distinct} distinct URLs ({auto} requests for encoding=auto URLs)")
    base = replicas[0].workdir.parent
    ports = [r.port for r in replicas]
    for name, conf in (("before", before_conf(base)), ("after", EDGE_CONF)):
        edge = Edge(base / f"edge-{name}", ports, edge_conf=conf)
        try:
            run_mix(name, edge, requests)
        finally:
            edge.stop()


def main() -> None:
    base = Path(tempfile.mkdtemp(prefix="bench-cdn-"))
    replicas = [LiveServer(base / f"r{i}", {}).start() for i in range(3)]
    try:
        if sys.argv[1:] == ["mix"]:
            mix(replicas)
        else:
            hit_throughput(replicas)
    finally:
        for replica in replicas:
            replica.stop()


if __name__ == "__main__":
    main()
