"""nginx as the CDN edge in front of three replicas, with deploy/nginx/imgproxy.conf unchanged
(tests/edge.py runs it). Two logs tell what happened to each request: nginx's access log (did the
edge answer, which replicas were tried), and each replica's access log (did the request reach it).
"""

from __future__ import annotations

import io
import random
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from urllib.parse import urlsplit

import httpx
import pytest
import yaml
from PIL import Image

from imgproxy.config import DEFAULT_PRESETS, load_config
from imgproxy.pipeline import negotiate

from .conftest import LiveServer
from .edge import ACCEPT_OTHER, DEPLOY, Edge, Hop, require_nginx

SOURCE = "/picture/photos/progressive_dalmatian.jpg"  # 960x640 JPEG: quick to render

pytestmark = pytest.mark.timeout(120)

require_nginx()

# What browsers send, and the format encoding=auto must answer each with
ACCEPT_AVIF = "image/avif,image/webp,image/apng,image/svg+xml,image/*,*/*;q=0.8"  # Chrome
ACCEPT_AVIF_FIREFOX = "image/avif,image/webp,image/png,image/svg+xml,image/*;q=0.8,*/*;q=0.5"
ACCEPT_WEBP = "image/webp,*/*"
CONTENT_TYPE = {ACCEPT_AVIF: "image/avif", ACCEPT_WEBP: "image/webp", ACCEPT_OTHER: "image/jpeg"}


def magic_type(body: bytes) -> str:
    """The image format from the bytes, so a mislabelled variant shows."""
    if body[4:12] == b"ftypavif":
        return "image/avif"
    if body[:4] == b"RIFF" and body[8:12] == b"WEBP":
        return "image/webp"
    if body[:3] == b"\xff\xd8\xff":
        return "image/jpeg"
    if body[:2] == b"\xff\x0a" or body[:12] == b"\x00\x00\x00\x0cJXL \r\n\x87\n":
        return "image/jxl"
    if body[:8] == b"\x89PNG\r\n\x1a\n":
        return "image/png"
    if body[:4] == b"GIF8":
        return "image/gif"
    return "unknown"


def address(replica: LiveServer) -> str:
    return f"127.0.0.1:{replica.port}"


def picture_requests(replica: LiveServer) -> int:
    """Requests for /picture that reached the replica, from its access log. The replica logs a
    request before its response leaves, so the count is complete once the client has the answer."""
    return sum("/picture/" in line for line in replica.log_path.read_text(errors="replace").splitlines())


@dataclass
class Cluster:
    edge: Edge
    replicas: list[LiveServer]

    def picture_requests(self) -> int:
        return sum(picture_requests(r) for r in self.replicas)


@pytest.fixture
def cluster(live_server, tmp_path):
    # each replica in its own directory, so each has its own cache; all read the corpus
    # a preset that negotiates its format, besides the shipped ones
    settings = {
        "log": {"level": "info"},
        "presets": {**DEFAULT_PRESETS, "negotiated": {"width": 120, "encoding": "auto"}},
    }
    replicas = [live_server(settings, name=f"replica{i}") for i in range(3)]
    cluster = Cluster(Edge(tmp_path / "edge", [r.port for r in replicas]), replicas)
    yield cluster
    cluster.edge.stop()


def picture(n: int, tag: str, **params: str) -> str:
    """A distinct URL per n: the width changes, `v` keeps tests apart."""
    query = "&".join(f"{k}={v}" for k, v in {"w": str(100 + n), "v": tag, **params}.items())
    return f"{SOURCE}?{query}"


def route(edge: Edge, urls: list[str], accept: str) -> dict[str, tuple[httpx.Response, Hop]]:
    """Request URLs that are new to the edge; every one must succeed."""
    out = {}
    for url in urls:
        response, hop = edge.get(url, accept=accept)
        assert response.status_code == 200, f"{url}: {response.status_code} {response.text[:200]}"
        assert hop.cache == "MISS", f"{url} was expected to be new to the edge: {hop}"
        out[url] = response, hop
    return out


def test_each_variant_reaches_a_replica_once(cluster):
    """Browsing traffic: popular pictures asked again and again, in three Accept classes."""
    rng = random.Random(9)
    urls = [picture(n, "browse", encoding="auto") for n in range(20)]
    weights = [1 / (n + 1) for n in range(len(urls))]  # Zipf-like popularity
    accepts = [ACCEPT_AVIF, ACCEPT_WEBP, ACCEPT_OTHER]
    seen, edge_hits, total = set(), 0, 150
    for _ in range(total):
        url, accept = rng.choices(urls, weights)[0], rng.choice(accepts)
        response, hop = cluster.edge.get(url, accept=accept)
        assert response.status_code == 200
        assert response.headers["Content-Type"] == magic_type(response.content) == CONTENT_TYPE[accept]
        if (url, accept) in seen:
            assert (response.headers["X-Edge-Cache"], hop.upstreams) == ("HIT", []), f"{url} {accept}: {hop}"
            edge_hits += 1
        else:
            assert response.headers["X-Edge-Cache"] == "MISS" and len(hop.upstreams) == 1
            seen.add((url, accept))
        # the service's headers reach the client unchanged
        assert response.headers["Cache-Control"] == "public, max-age=31536000, immutable"
        assert response.headers["Vary"] == "Accept" and response.headers["ETag"]
    assert cluster.picture_requests() == len(seen), "a variant reached a replica more than once"
    print(
        f"\nedge answered {edge_hits}/{total} requests ({edge_hits / total:.0%}); "
        f"replicas saw {len(seen)}, one per distinct variant"
    )


def test_if_none_match_is_answered_304_by_the_edge(cluster):
    url = picture(0, "etag")
    first, _ = cluster.edge.get(url)
    reached = cluster.picture_requests()
    again, hop = cluster.edge.get(url, **{"If-None-Match": first.headers["ETag"]})
    assert again.status_code == 304 and hop.cache == "HIT" and hop.upstreams == []
    assert again.headers["ETag"] == first.headers["ETag"] and again.content == b""
    other, hop = cluster.edge.get(url, **{"If-None-Match": '"another-version"'})
    assert other.status_code == 200 and other.content == first.content and hop.cache == "HIT"
    assert cluster.picture_requests() == reached


def test_errors_are_kept_only_as_long_as_the_service_says(cluster):
    for _ in range(2):  # 400 comes with no-store: every request goes to a replica
        response, hop = cluster.edge.get(f"{SOURCE}?w=abc")
        assert response.status_code == 400 and response.headers["Cache-Control"] == "no-store"
        assert hop.cache == "MISS" and len(hop.upstreams) == 1
    # 404 may be kept briefly, by the service's own Cache-Control
    missing, hop = cluster.edge.get("/picture/photos/no-such-photo.jpg", accept="application/json")
    assert missing.status_code == 404 and len(hop.upstreams) == 1
    assert missing.headers["Cache-Control"] == "public, max-age=60"
    # The replica saw the normalised Accept (*/*), not the client's: the kept 404 is the same text
    # for every client of the class.
    assert missing.headers["Content-Type"].startswith("text/plain")
    again, hop = cluster.edge.get("/picture/photos/no-such-photo.jpg", accept="application/json")
    assert (again.status_code, hop.cache, hop.upstreams) == (404, "HIT", [])


def test_identical_misses_arriving_together_reach_a_replica_once(cluster):
    url = "/picture/photos/large_9mp_harbour.jpg?w=640&v=together"  # a render that takes a while
    with ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(lambda _: cluster.edge.client.get(url), range(8)))
    hops = [cluster.edge.next_hop() for _ in responses]
    assert [r.status_code for r in responses] == [200] * 8
    assert len({r.content for r in responses}) == 1
    assert cluster.picture_requests() == 1, f"edge sent {cluster.picture_requests()} to replicas"
    assert sum(bool(h.upstreams) for h in hops) == 1


def test_accept_classes_get_their_own_variant_with_the_right_type(cluster):
    url = picture(0, "accept", encoding="auto")
    asks = [  # Accept, its class, the format answered, the edge's first answer
        (ACCEPT_AVIF, "avif", "image/avif", "MISS"),
        (ACCEPT_OTHER, "other", "image/jpeg", "MISS"),
        (ACCEPT_WEBP, "webp", "image/webp", "MISS"),
        ("text/html,*/*;q=0.8", "other", "image/jpeg", "HIT"),
        (ACCEPT_AVIF_FIREFOX, "avif", "image/avif", "HIT"),  # another browser, same class
        ("image/webp,image/png,*/*;q=0.5", "webp", "image/webp", "HIT"),
    ]
    for first_round in (True, False):
        for accept, accept_class, content_type, cache in asks:
            response, hop = cluster.edge.get(url, accept=accept)
            assert response.status_code == 200 and hop.accept == accept_class
            assert response.headers["Content-Type"] == magic_type(response.content) == content_type, accept
            assert hop.cache == (cache if first_round else "HIT"), f"Accept {accept!r}: {hop}"
    assert cluster.picture_requests() == 3, "one render per class, no more"


def owners(hops: dict[str, tuple[httpx.Response, Hop]]) -> dict[str, str]:
    return {url: hop.replica or "" for url, (_, hop) in hops.items()}


def test_urls_spread_over_replicas_and_each_stays_on_one(cluster):
    urls = [picture(n, "spread") for n in range(30)]
    owner = owners(route(cluster.edge, urls, ACCEPT_OTHER))
    shares = {address(r): list(owner.values()).count(address(r)) for r in cluster.replicas}
    print(f"\n30 URLs over 3 replicas: {sorted(shares.values(), reverse=True)}")
    assert all(shares.values()), f"a replica got no URL: {shares}"
    for replica in cluster.replicas:  # the replicas' own logs agree with nginx's
        assert picture_requests(replica) == shares[address(replica)]
    # A fresh edge (empty cache) in front of the same replicas sends each URL to the same replica,
    # which answers from its own cache.
    cluster.edge.stop()
    cluster.edge = Edge(cluster.edge.dir.parent / "edge-fresh", [r.port for r in cluster.replicas])
    second = route(cluster.edge, urls, ACCEPT_WEBP)
    assert owners(second) == owner
    assert {response.headers["X-Cache"] for response, _ in second.values()} == {"HIT"}


def test_upload_jobs_are_asked_from_the_replica_that_took_the_upload(cluster):
    """jobs-local.conf: jobs live on the replica that took the upload."""
    _, upload = cluster.edge.request("POST", "/upload")
    assert len(upload.upstreams) == 1
    for job in ("a1", "b2", "c3", "d4"):
        _, hop = cluster.edge.get(f"/jobs/{job}")
        assert hop.upstreams == upload.upstreams


def test_shared_jobs_spread_uploads_and_polls_over_every_replica(cluster, tmp_path):
    """jobs-redis.conf: any replica takes an upload and answers a job, even the same one's polls."""
    cluster.edge.stop()
    cluster.edge = Edge(tmp_path / "edge-shared-jobs", [r.port for r in cluster.replicas], jobs="redis")
    uploads = {cluster.edge.request("POST", "/upload")[1].replica for _ in range(20)}
    polls = {cluster.edge.get("/jobs/a1")[1].replica for _ in range(20)}
    everyone = {address(r) for r in cluster.replicas}
    # 20 random keys over 3 replicas: all on one replica would be a chance of about 3 in 10^9
    assert len(uploads) > 1 and uploads <= everyone, uploads
    assert len(polls) > 1 and polls <= everyone, polls
    # /picture is still hashed on its URL: three Accept classes, three edge misses, one replica
    url = picture(0, "shared-jobs", encoding="auto")
    assert len({cluster.edge.get(url, accept=a)[1].replica for a in CONTENT_TYPE}) == 1


def test_a_stopped_replica_moves_only_its_share(cluster, tmp_path):
    urls = [picture(n, "failover") for n in range(30)]
    owner = owners(route(cluster.edge, urls, ACCEPT_OTHER))
    stopped = max(cluster.replicas, key=lambda r: list(owner.values()).count(address(r)))
    stopped.stop()
    gone = address(stopped)
    moved = {url for url in urls if owner[url] == gone}

    # Failover: the same URLs through a fresh edge (empty cache) are routed as before.
    cluster.edge.stop()
    cluster.edge = Edge(tmp_path / "edge-after-stop", [r.port for r in cluster.replicas])
    after = route(cluster.edge, urls, ACCEPT_WEBP)
    tried_gone = [url for url, (_, hop) in after.items() if gone in hop.upstreams]
    for url, (response, hop) in after.items():
        if url in moved:
            assert hop.replica != gone
            assert response.headers["X-Cache"] == "MISS"  # rendered anew by its next replica
        else:
            assert hop.upstreams == [owner[url]], f"{url} moved although its replica is up"
            assert response.headers["X-Cache"] == "HIT"
    assert len(tried_gone) <= 1, "nginx kept trying the stopped replica"
    fallback = owners(after)

    # Removing the replica from upstream.conf (a fresh edge): the ring without it sends every URL
    # where failover did, so nothing is rendered again.
    cluster.edge.stop()
    remaining = [r for r in cluster.replicas if r is not stopped]
    cluster.edge = Edge(tmp_path / "edge-without-one", [r.port for r in remaining])
    without = route(cluster.edge, urls, ACCEPT_OTHER)
    assert owners(without) == fallback
    print(
        f"\nstopped the replica of {len(moved)}/30 URLs: {len(tried_gone)} request(s) tried it once "
        f"and were answered by the next replica; {len(moved)} URLs moved, {30 - len(moved)} stayed; "
        f"every request answered 200; the ring without it routes like failover did"
    )


def test_compose_runs_the_tested_config(tmp_path, monkeypatch):
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    services = compose["services"]
    mounts = dict(v.split(":")[:2] for v in services["nginx"]["volumes"])
    # nginx resolves upstream.conf, listen.conf and jobs.conf next to nginx.conf, like tests/edge.py
    for name in ("nginx.conf", "imgproxy.conf", "upstream.conf", "listen.conf"):
        assert mounts[f"./nginx/{name}"] == f"/etc/nginx/{name}"
    assert mounts["./nginx/jobs-redis.conf"] == "/etc/nginx/jobs.conf", "jobs are shared: nothing pinned"
    format_conf = next(f for f, target in mounts.items() if target == "/etc/nginx/format.conf")
    main_conf = (DEPLOY / "nginx" / "nginx.conf").read_text()
    assert "include imgproxy.conf;" in main_conf and "keys_zone=imgproxy_edge:" in main_conf

    upstreams = re.findall(r"^server (\S+):(\d+)", (DEPLOY / "nginx" / "upstream.conf").read_text(), re.M)
    assert len(upstreams) == 3
    listen_conf = (DEPLOY / "nginx" / "listen.conf").read_text()
    monkeypatch.chdir(tmp_path)  # no ./config.toml: built-in defaults plus the replica's variables
    caches = set()
    for name, port in upstreams:
        replica = services[name]
        assert replica["build"]["context"] == ".." and port == "8080"
        # no shared directory: each replica mounts its own cache volume and nothing else
        volumes = {target: source for source, target in (v.split(":")[:2] for v in replica["volumes"])}
        assert list(volumes) == ["/data/cache"], f"{name} mounts {volumes}"
        caches.add(volumes["/data/cache"])
        assert not compose["volumes"][volumes["/data/cache"]], "a plain named volume, local to the host"
        # the replica's variables through the real loader (compose's ${VAR:?} filled in)
        env = {k: re.sub(r"\$\{\w+:\?[^}]*\}", "set-by-compose", str(v)) for k, v in replica["environment"].items()}
        config = load_config(environ=env)
        assert (config.storage.backend, config.jobs.backend) == ("s3", "redis")
        # the edge varies plain URLs on Accept exactly when the replicas negotiate their format
        auto = config.render.default_format == "auto"
        assert format_conf == f"./nginx/format-{'auto' if auto else 'fixed'}.conf", format_conf
        assert config.uploads.enabled and config.uploads.token, "serve refuses uploads on 0.0.0.0 without a token"
        endpoint, redis_url = urlsplit(config.storage.s3.endpoint), urlsplit(config.jobs.redis_url)
        assert endpoint.hostname in services and redis_url.hostname in services
        store = services[endpoint.hostname]
        assert f"-s3.port={endpoint.port}" in store["command"] and config.storage.s3.bucket
        assert f"-name {config.storage.s3.bucket}" in " ".join(services["bucket"]["command"])
        assert set(replica["depends_on"]) == {"bucket", redis_url.hostname}
        warm = urlsplit(config.jobs.warm_url)  # jobs warm through the edge, which listens on 80
        assert warm.hostname == "nginx" and (warm.port or 80) == 80 and "listen 80;" in listen_conf
    assert len(caches) == 3, "replicas must not share a cache directory"


# Real browsers' Accept headers for images (and a few clients that send less), each with the
# service's answer for it: the edge's class must give the replica an Accept that the service
# reads the same way (pipeline.negotiate), so a class never mixes two answers.
REAL_ACCEPTS = [
    ACCEPT_AVIF,  # Chrome 85+, Edge, Opera, Samsung Internet
    ACCEPT_AVIF_FIREFOX,  # Firefox 128+
    "image/avif,image/webp,*/*",  # Firefox 93-127
    "image/webp,image/avif,image/jxl,image/heic,image/heic-sequence,video/*;q=0.8,image/png,image/svg+xml,"
    "image/*;q=0.8,*/*;q=0.5",  # Safari 17+
    "image/webp,image/avif,video/*;q=0.8,image/png,image/svg+xml,image/*;q=0.8,*/*;q=0.5",  # Safari 16
    "image/webp,image/png,image/svg+xml,image/*;q=0.8,video/*;q=0.8,*/*;q=0.5",  # Safari 14-15
    "image/png,image/svg+xml,image/*;q=0.8,video/*;q=0.8,*/*;q=0.5",  # Safari 13 and older
    "image/webp,image/apng,image/*,*/*;q=0.8",  # Chrome 32-84
    ACCEPT_WEBP,  # Firefox 65-92
    "image/png,image/svg+xml,image/*;q=0.8,*/*;q=0.5",  # Firefox 47-64
    "image/png, image/svg+xml, image/jxr, image/*; q=0.8, */*; q=0.5",  # IE 11
    "image/png, image/svg+xml, image/*; q=0.8, */*; q=0.5",  # Edge 18 (EdgeHTML)
    "image/jxl,image/avif,image/webp,image/png,image/*;q=0.8,*/*;q=0.5",  # Pale Moon, Thorium
    "image/jxl,image/png,image/*;q=0.8,*/*;q=0.5",  # a JPEG XL viewer without AVIF/WebP
    "image/avif,image/png,*/*;q=0.5",  # AVIF without WebP (an image library's client)
    "IMAGE/WEBP , */*",  # case and spaces
    "image/avif-sequence,image/webpx,*/*",  # look-alikes are not AVIF or WebP
    "*/*",  # curl, wget, most libraries
    "",  # none sent: httpx sends Accept: */* unless told, so this is an empty header
]


def normalised_accepts() -> dict[str, str]:
    """The Accept the edge sends upstream for each class, read from imgproxy.conf's map."""
    conf = (DEPLOY / "nginx" / "imgproxy.conf").read_text()
    block = re.search(r"map \$imgproxy_accept_class \$imgproxy_accept_normalised \{(.*?)\}", conf, re.S)
    assert block, "imgproxy.conf has no class -> Accept map"
    return dict(re.findall(r'^\s*(\w+)\s+"([^"]*)";', block[1], re.M))


def test_edge_accept_classes_match_the_service(cluster):
    """nginx's class of each real Accept, sent upstream as its canonical Accept, reads as the same
    offer in the service; and an encoding=auto answer has the format the service picks for the raw
    header."""
    normalised = normalised_accepts()
    url = picture(0, "classes", encoding="auto")
    mime = {"avif": "image/avif", "webp": "image/webp", "jxl": "image/jxl"}
    classes: dict[tuple[str, ...], set[str]] = {}
    for accept in REAL_ACCEPTS:
        response, hop = cluster.edge.get(url, accept=accept)
        assert response.status_code == 200, response.text
        canonical = normalised.get(hop.accept, normalised["default"])
        for every in (False, True):  # auto_format "first", and "smallest" (which tries each listed format)
            assert negotiate(canonical, every) == negotiate(accept, every), (accept, hop.accept, every)
        offered = negotiate(accept)
        expected = mime[offered[0]] if offered else "image/jpeg"
        assert response.headers["Content-Type"] == magic_type(response.content) == expected, accept
        classes.setdefault(negotiate(accept, every=True), set()).add(hop.accept)
    # one class per answer of the service (under either auto_format), and every answer "first" gives
    assert all(len(names) == 1 for names in classes.values()), classes
    assert {negotiate(a) for a in REAL_ACCEPTS} == {("avif", "webp"), ("avif",), ("webp",), ("jxl",), ()}
    assert cluster.picture_requests() == len(classes), "one render per class"


def test_a_fixed_format_url_is_one_edge_entry_for_every_accept(cluster):
    """encoding=webp (any alias or case), or no encoding under a fixed default_format: the answer
    does not depend on Accept, so the edge keeps it once and the origin sees one request."""
    urls = {
        picture(0, "fixed", encoding="webp"): "image/webp",
        picture(1, "fixed", fm="WEBP"): "image/webp",
        picture(2, "fixed", format="png"): "image/png",
        picture(3, "fixed"): "image/jpeg",  # default_format "source": the JPEG source's format
        picture(4, "fixed", preset="small", encoding="avif"): "image/avif",  # explicit beats the preset
    }
    for url, content_type in urls.items():
        before = cluster.picture_requests()
        bodies = set()
        for n, accept in enumerate((ACCEPT_AVIF, ACCEPT_WEBP, ACCEPT_OTHER)):
            response, hop = cluster.edge.get(url, accept=accept)
            assert response.status_code == 200 and hop.key == "-|", (url, hop)
            assert response.headers["Content-Type"] == magic_type(response.content) == content_type, url
            assert (hop.cache, len(hop.upstreams)) == (("MISS", 1) if n == 0 else ("HIT", 0)), (url, accept, hop)
            bodies.add(response.content)
        assert len(bodies) == 1
        assert cluster.picture_requests() == before + 1, f"{url} reached the origin more than once"


def test_negotiated_urls_keep_one_entry_per_class(cluster):
    """encoding=auto under its aliases, and a preset without encoding (nginx cannot tell whether it
    sets one; this one does): per-class entries with the class's format."""
    urls = [
        picture(0, "negotiated", encoding="auto"),
        picture(1, "negotiated", format="AUTO"),
        picture(2, "negotiated", fm="auto"),
        f"{SOURCE}?preset=negotiated&v=negotiated",
    ]
    asks = [
        (ACCEPT_AVIF, "avif", "image/avif"),
        (ACCEPT_WEBP, "webp", "image/webp"),
        (ACCEPT_OTHER, "other", "image/jpeg"),
    ]
    for url in urls:
        for first_round in (True, False):
            for accept, accept_class, content_type in asks:
                response, hop = cluster.edge.get(url, accept=accept)
                assert response.status_code == 200 and hop.key == f"{accept_class}|", (url, hop)
                assert response.headers["Content-Type"] == magic_type(response.content) == content_type, url
                assert hop.cache == ("MISS" if first_round else "HIT"), (url, accept, hop)
    assert cluster.picture_requests() == 3 * len(urls)


def test_default_format_auto_makes_plain_urls_vary(live_server, tmp_path):
    """format-auto.conf, for replicas with [render] default_format = "auto": a URL without encoding
    is negotiated, so it gets an entry per class; a fixed format stays one entry."""
    replica = live_server({"render": {"default_format": "auto"}})
    edge = Edge(tmp_path / "edge-auto", [replica.port], default_format="auto")
    try:
        plain = picture(0, "default-auto")
        for accept, content_type in CONTENT_TYPE.items():
            response, hop = edge.get(plain, accept=accept)
            assert (response.status_code, hop.cache) == (200, "MISS"), hop
            assert response.headers["Content-Type"] == magic_type(response.content) == content_type
            assert response.headers["Vary"] == "Accept"
        fixed = picture(1, "default-auto", encoding="jpeg")
        hops = [edge.get(fixed, accept=accept)[1] for accept in CONTENT_TYPE]
        assert [(h.cache, h.key) for h in hops] == [("MISS", "-|"), ("HIT", "-|"), ("HIT", "-|")]
        assert picture_requests(replica) == len(CONTENT_TYPE) + 1
    finally:
        edge.stop()


HINTS = {"Sec-CH-Width": "300", "Sec-CH-Viewport-Width": "1280", "Sec-CH-DPR": "2"}


def test_hints_do_not_split_fixed_width_urls(cluster):
    """A numeric width does not depend on client hints: one entry, and the replica gets no hints."""
    url = picture(0, "hints-fixed")
    hops = [cluster.edge.get(url, **hints)[1] for hints in ({}, HINTS, {**HINTS, "Sec-CH-DPR": "3"})]
    assert [(h.cache, h.key) for h in hops] == [("MISS", "-|"), ("HIT", "-|"), ("HIT", "-|")]
    assert cluster.picture_requests() == 1


def test_width_auto_urls_vary_on_client_hints(live_server, tmp_path):
    """width=auto: the hint values are in the key (Sec-CH-Width, else the viewport width, and DPR):
    the same values share one entry, other values get their own, sized by the service."""
    replica = live_server({"render": {"client_hints": True}})
    edge = Edge(tmp_path / "edge-hints", [replica.port])
    try:
        url = f"{SOURCE}?width=auto&v=hints"
        asks = [  # hints, the key's hint class, the edge's answer
            ({"Sec-CH-Width": "300", "Sec-CH-DPR": "1"}, "w300x1", "MISS"),
            ({"Sec-CH-Width": "300", "Sec-CH-DPR": "1", "Sec-CH-Viewport-Width": "999"}, "w300x1", "HIT"),
            ({"Sec-CH-Width": "300", "Sec-CH-DPR": "2"}, "w300x2", "MISS"),
            ({"Sec-CH-Viewport-Width": "500"}, "vw500", "MISS"),
            ({"Sec-CH-Viewport-Width": "500", "Sec-CH-DPR": "2"}, "vw500x2", "MISS"),
            ({"Sec-CH-Width": "300", "Sec-CH-DPR": "2"}, "w300x2", "HIT"),
            ({}, "", "MISS"),
            ({}, "", "HIT"),
        ]
        widths: dict[str, set[int]] = {}
        for hints, hint_class, cache in asks:
            response, hop = edge.get(url, **hints)
            assert response.status_code == 200, response.text
            assert (hop.key, hop.cache) == (f"-|{hint_class}", cache), (hints, hop)
            widths.setdefault(hint_class, set()).add(decoded_width(response.content))
        assert all(len(w) == 1 for w in widths.values()), "one entry, one answer"
        # Sec-CH-Width is in device pixels already (the service does not multiply it again; the key
        # keeps DPR anyway, the edge cannot tell a URL's own dpr apart); the viewport is in CSS pixels
        assert widths["w300x2"] == widths["w300x1"] == {320}
        assert max(widths["vw500x2"]) > max(widths["vw500"]), "the DPR hint reached the replica"
        assert picture_requests(replica) == 5
        # a hint value the edge cannot read is passed on and never kept
        for _ in range(2):
            response, hop = edge.get(url, **{"Sec-CH-Width": "wide"})
            assert hop.cache in ("BYPASS", "MISS") and len(hop.upstreams) == 1, hop
        # hints with an explicit encoding=auto: both classes in the key
        response, hop = edge.get(f"{url}&encoding=auto", accept=ACCEPT_WEBP, **{"Sec-CH-Width": "300"})
        assert hop.key == "webp|w300" and response.headers["Content-Type"] == "image/webp"
    finally:
        edge.stop()


def decoded_width(body: bytes) -> int:
    with Image.open(io.BytesIO(body)) as image:
        return image.width
