"""The end-to-end proof of SPEC §10: several replicas that share nothing but the engines.

Three `serve` replicas, each with its own cache directories, temp directory and an empty local
root (no directory is shared), one SeaweedFS (originals and uploads), one Redis (jobs), and the
nginx edge of deploy/nginx in front with jobs-redis.conf; jobs warm the variants through that
edge (`[jobs] warm_url`). One test walks the life of the cluster
in four steps — an upload and its job seen from every replica; kill -9 of the replica running a
job; SeaweedFS and Redis stopped and started under traffic; an object overwritten in the bucket —
and prints a timeline (run with -s to read it).
"""

from __future__ import annotations

import io
import json
import os
import signal
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest
from PIL import Image

from imgproxy.config import DEFAULT_PRESETS
from imgproxy.jobs import COUNT
from imgproxy.redisjobs import PREFIX

from .conftest import CORPUS, LiveServer, free_port
from .edge import Edge, Hop, require_nginx
from .redis_server import RedisServer, redis_server  # noqa: F401 (a fixture)
from .s3_server import SeaweedFS, seaweed  # noqa: F401 (a fixture)
from .test_jobs import holder_pid
from .test_uploads import post_file

require_nginx()

pytestmark = pytest.mark.timeout(300)

BIG_PHOTO = "photos/large_12mp_bus.jpg"  # 4032x3024
SMALL_PHOTO = "photos/grayscale_portrait.jpg"
TOKEN = "multihost-upload-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
LEASE = 8.0  # [jobs] lease
FRESHNESS = 3  # [storage.s3] freshness
FORMATS = ["webp", "avif", "png", "source"]  # pre-rendered per preset: 5 presets x 4 = 20 renders of 12 MP
ACCEPT_WEBP = "image/webp,*/*"  # other edge entries for a preset URL (it varies on Accept), same answer
ACCEPT_AVIF = "image/avif,image/webp,*/*"
OUTAGE = "photos/outage.jpg"  # in the bucket, never asked for before the store goes away
SWAP = "photos/swap.jpg"  # overwritten in step 4
SWAP_OLD, SWAP_NEW = "photos/progressive_dalmatian.jpg", "photos/tree.webp"  # 300 px wide: 300x200, 300x226


class Timeline:
    def __init__(self) -> None:
        self.start = time.monotonic()

    def __call__(self, text: str) -> None:
        print(f"t={time.monotonic() - self.start:6.1f}s  {text}", flush=True)


class Cluster:
    def __init__(self, replicas: list[LiveServer], edge: Edge, redis: RedisServer, store: SeaweedFS):
        self.replicas, self.edge, self.redis, self.store = replicas, edge, redis, store
        self.names = {f"127.0.0.1:{r.port}": r.workdir.name for r in replicas}
        self.by_pid = {r.process.pid: r for r in replicas if r.process}

    def name(self, hop: Hop) -> str:
        return self.names.get(hop.replica or "", "edge")

    def upload(self, photo: str, filename: str) -> tuple[httpx.Response, Hop]:
        response = post_file(self.edge.client, (CORPUS / photo).read_bytes(), filename, headers=AUTH)
        return response, self.edge.hop_of(response)

    def uploads_in_bucket(self) -> list[str]:
        return self.store.keys("uploads/")


def replica_settings(workdir: Path, store: SeaweedFS, redis_url: str, edge_url: str) -> dict:
    empty = workdir / "empty-root"
    empty.mkdir(parents=True)
    storage = store.settings
    storage["s3"]["freshness"] = FRESHNESS
    return {
        "sources": {
            "local": {"root": str(empty), "generate_demo": False},
            "remote": {"cache_dir": str(workdir / "originals")},
        },
        "cache": {"dir": str(workdir / "results")},
        "storage": storage,
        # warm_url: a job GETs each variant through the edge, so the replica owning the URL keeps it
        "jobs": {
            "backend": "redis",
            "redis_url": redis_url,
            "workers_in_server": 1,
            "lease": LEASE,
            "warm_url": edge_url,
        },
        "uploads": {"enabled": True, "token": TOKEN, "pregenerate_formats": FORMATS},
        "log": {"level": "info"},  # access lines: which replica saw what
    }


@pytest.fixture
def cluster(tmp_path, seaweed, redis_server):  # noqa: F811
    replicas: list[LiveServer] = []
    edge = None
    edge_port = free_port()  # the replicas' warm_url, before the edge knows its replicas
    try:
        for i in range(3):
            workdir = tmp_path / f"replica{i}"
            settings = replica_settings(workdir, seaweed, redis_server.url, f"http://127.0.0.1:{edge_port}")
            # TMPDIR: upload temp files and metrics files in the replica's own directory too
            replica = LiveServer(workdir, settings, env={"TMPDIR": str(workdir / "tmp")})
            (workdir / "tmp").mkdir()
            replicas.append(replica.start())
        ports = [r.port for r in replicas]
        edge = Edge(tmp_path / "edge", ports, jobs="redis", port=edge_port, other_clients=True)
        yield Cluster(replicas, edge, redis_server, seaweed)
    finally:
        if edge is not None:
            edge.stop()
        for replica in replicas:
            replica.stop()


def redis_record(redis, job_id: str) -> dict:
    return json.loads(redis.get(PREFIX + "job:" + job_id))


def decoded_size(body: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(body)) as image:
        image.load()  # the whole image decodes, not just its header
        return image.size


def expected_size(preset: dict) -> tuple[int, int]:
    width = int(preset["width"])
    if preset.get("mode") == "crop":
        return width, int(preset["height"])
    return width, round(width * 3024 / 4032)


def wait_until_done(
    cluster: Cluster, job_id: str, polls: Counter, at_least: int, bound: float, holders: set[str] | None = None
) -> dict:
    """Poll /jobs/<id> through the edge until the job is done (and at least `at_least` times);
    `polls` counts which replica answered each poll, `holders` collects whose worker held the job."""
    deadline = time.monotonic() + bound
    redis = cluster.redis.client()
    while True:
        if holders is not None and (pid := holder_pid(redis, job_id)) is not None:
            holders.add(cluster.by_pid[pid].workdir.name)
        response, hop = cluster.edge.get(f"/jobs/{job_id}")
        assert response.status_code == 200, response.text
        polls[cluster.name(hop)] += 1
        if len(hop.upstreams) > 1:  # nginx tried a replica that is gone, then the next one
            polls["passed on by nginx"] += 1
        job = response.json()
        assert job["status"] != "failed", job
        if job["status"] == "done" and sum(polls.values()) >= at_least:
            redis.close()
            return job
        assert time.monotonic() < deadline, f"job not done within {bound} s: {job}"
        time.sleep(0.1)


def test_three_replicas_sharing_only_seaweedfs_and_redis(cluster):
    log = Timeline()
    edge, store = cluster.edge, cluster.store
    store.put(OUTAGE, (CORPUS / SMALL_PHOTO).read_bytes())
    store.put(SWAP, (CORPUS / SWAP_OLD).read_bytes())
    log(f"3 replicas ({', '.join(f'{n}={a}' for a, n in cluster.names.items())}), SeaweedFS, Redis, nginx edge up")

    # --- 1. an upload through the edge, its job polled through the edge, every preset served -----
    response, hop = cluster.upload(BIG_PHOTO, "bus.jpg")
    assert response.status_code == 201, response.text
    upload = response.json()
    log(f"step 1: POST /upload (12 MP) -> 201 on {cluster.name(hop)}, object {upload['path']}")
    assert cluster.uploads_in_bucket() == [upload["path"]]
    polls: Counter[str] = Counter()
    holders: set[str] = set()
    job = wait_until_done(cluster, upload["id"], polls, at_least=12, bound=120, holders=holders)
    assert job["done"] == job["total"] == 5 * 4 and job["progress"] == 1, job
    log(f"step 1: job done by the worker of {sorted(holders)}, {job['total']} renders")
    log(f"step 1: {sum(polls.values())} polls of /jobs/<id> through the edge answered by {dict(polls)}")
    assert len(polls) > 1, "every poll landed on one replica"
    # The job GET every variant through the edge: its log lines say which replica rendered what.
    warmed = {hop.uri: cluster.name(hop) for hop in edge.others if hop.uri.startswith("/picture/")}
    assert all(hop.status == 200 for hop in edge.others), edge.others
    by_replica: dict[str, list[str]] = {}
    presets = DEFAULT_PRESETS
    assert set(upload["urls"]) == set(presets)
    variants = {
        (url if fmt == "source" else f"{url}&encoding={fmt}"): (name, fmt)
        for name, url in upload["urls"].items()
        for fmt in FORMATS
    }
    assert set(warmed) == set(variants), (sorted(warmed), sorted(variants))
    owners: dict[str, str] = {}  # plain preset URL -> replica that keeps it
    for url, (name, fmt) in variants.items():
        response, hop = edge.get(url)  # the Accept class the job used: the edge has it
        assert (response.status_code, hop.cache) == (200, "HIT"), (url, response.text)
        assert decoded_size(response.content) == expected_size(presets[name]), url
        response, hop = edge.get(url, accept=ACCEPT_WEBP)
        if fmt != "source":  # a fixed format is one edge entry for every Accept class
            assert (response.status_code, hop.cache, hop.upstreams) == (200, "HIT", []), (url, hop)
        else:  # a preset without encoding may negotiate: another class, the edge asks the owner
            assert (response.status_code, response.headers["x-cache"]) == (200, "HIT"), (url, response.headers)
            assert cluster.name(hop) == warmed[url], f"{url} was warmed on {warmed[url]}, is served by {hop}"
            owners[url] = hop.replica or ""
        by_replica.setdefault(warmed[url], []).append(f"{name}.{fmt}")
    log(f"step 1: {len(variants)} variant URLs -> 200 at their sizes, edge HIT; rendered by the job on the replica")
    for replica, names in sorted(by_replica.items()):
        log(f"step 1:   {replica} rendered and keeps {len(names)}: {' '.join(sorted(names))}")

    # --- 2. kill -9 the replica whose worker runs a job: another worker finishes it -------------
    response, hop = cluster.upload(BIG_PHOTO, "bus-again.jpg")
    assert response.status_code == 201, response.text
    job_id = response.json()["id"]
    log(f"step 2: second upload -> 201 on {cluster.name(hop)}")
    redis = cluster.redis.client()
    try:
        deadline = time.monotonic() + 120
        while (victim_pid := holder_pid(redis, job_id)) is None or redis_record(redis, job_id)["done"] < 1:
            assert time.monotonic() < deadline, redis_record(redis, job_id)
            time.sleep(0.02)
        record = redis_record(redis, job_id)
        assert record["done"] < record["total"], record
        victim = cluster.by_pid[victim_pid]
        os.kill(victim_pid, signal.SIGKILL)
        assert victim.process is not None
        victim.process.wait(10)
        log(
            f"step 2: kill -9 {victim.workdir.name} (pid {victim_pid}) holding the job at {record['done']}/{record['total']}"
        )
        killed = time.monotonic()
        while (heir_pid := holder_pid(redis, job_id)) in (None, victim_pid):
            assert time.monotonic() - killed < 3 * LEASE, f"nobody took the job within {3 * LEASE} s"
            time.sleep(0.05)
        picked_up = time.monotonic() - killed
        heir = cluster.by_pid[heir_pid]
        log(f"step 2: {heir.workdir.name} took the job {picked_up:.1f} s after the kill (lease {LEASE:.0f} s)")
        assert picked_up <= LEASE
        polls = Counter()
        job = wait_until_done(cluster, job_id, polls, at_least=1, bound=120)
        assert job["done"] == job["total"] == 20 and job["runs"] >= 2, job
        assert int(redis.get(PREFIX + COUNT + "done") or 0) == 2, "a job completed twice"
        log(f"step 2: job done on {heir.workdir.name} (runs {job['runs']}); polls answered by {dict(polls)}")
    finally:
        redis.close()
    live = [r for r in cluster.replicas if r is not victim]
    alive = {f"127.0.0.1:{r.port}" for r in live}
    # step 3 needs a result kept on a live replica; the 5 plain preset URLs all hash to the killed
    # one about 1 run in 250: then render more versions of one of them until one lands elsewhere
    plain = next(iter(owners))
    for n in range(1, 41):
        if any(owner in alive for owner in owners.values()):
            break
        url = f"{plain}&v=step3-{n}"
        response, hop = edge.get(url)
        assert response.status_code == 200, (url, response.text)
        owners[url] = hop.replica or ""

    # --- 3. the store and Redis go away and come back, the replicas keep running ----------------
    store.stop()
    log("step 3: SeaweedFS stopped (SIGKILL)")
    response, hop = edge.get(f"/picture/{OUTAGE}?width=200")
    assert response.status_code == 503 and int(response.headers["retry-after"]) > 0, response.text
    log(
        f"step 3: uncached /picture/{OUTAGE} -> 503, Retry-After {response.headers['retry-after']} ({cluster.name(hop)})"
    )
    kept = [url for url, owner in owners.items() if owner in alive]
    assert kept, "every step-1 URL was on the killed replica"
    for url in kept:  # a third Accept class: the edge asks the replica, which has the result
        response, hop = edge.get(url, accept=ACCEPT_AVIF)
        assert (response.status_code, hop.replica, response.headers["x-cache"]) == (200, owners[url], "HIT")
    log(f"step 3: {len(kept)} results cached on live replicas -> 200 (edge MISS, replica HIT)")
    for replica in live:
        health = httpx.get(replica.url + "/health", timeout=30)
        assert health.status_code == 200 and health.json()["status"] == "degraded", health.text
        assert health.json()["checks"]["storage"] is False
    log("step 3: /health of the live replicas -> 200, status degraded, checks.storage false")
    store.start()
    log("step 3: SeaweedFS started again")
    deadline, refused = time.monotonic() + 60, 0
    while (response := edge.get(f"/picture/{OUTAGE}?width=200")[0]).status_code != 200:
        assert response.status_code == 503 and time.monotonic() < deadline, response.text
        refused += 1
        time.sleep(0.25)
    assert decoded_size(response.content) == (200, 133)
    log(f"step 3: /picture/{OUTAGE} -> 200 after {refused} more 503s, replicas not restarted")

    before = cluster.uploads_in_bucket()
    cluster.redis.stop()
    log("step 3: Redis stopped")
    response, hop = cluster.upload(SMALL_PHOTO, "during.jpg")
    assert response.status_code == 503 and int(response.headers["retry-after"]) > 0, response.text
    assert cluster.uploads_in_bucket() == before
    log(
        f"step 3: POST /upload -> 503, Retry-After {response.headers['retry-after']} ({cluster.name(hop)}); bucket unchanged"
    )
    response, _ = edge.get(f"/picture/{OUTAGE}?width=201")
    assert response.status_code == 200
    log("step 3: /picture still 200 without Redis")
    cluster.redis.start()
    log("step 3: Redis started again (empty)")
    deadline = time.monotonic() + 60
    while (response := cluster.upload(SMALL_PHOTO, "after.jpg")[0]).status_code != 201:
        assert response.status_code == 503 and time.monotonic() < deadline, response.text
        time.sleep(0.5)
    job = wait_until_done(cluster, response.json()["id"], Counter(), at_least=1, bound=120)
    log(f"step 3: POST /upload -> 201, its job done ({job['total']} renders)")
    # Redis takes no writes while the upload is stored: the job cannot be queued, the object is taken back
    before = cluster.uploads_in_bucket()
    redis = cluster.redis.client()
    redis.execute_command("CLIENT", "PAUSE", "8000", "WRITE")
    try:
        response, hop = cluster.upload(SMALL_PHOTO, "stalled.jpg")
    finally:
        redis.execute_command("CLIENT", "UNPAUSE")
        redis.close()
    assert response.status_code == 503 and int(response.headers["retry-after"]) > 0, response.text
    taker = next(r for r in live if f"127.0.0.1:{r.port}" == hop.replica)
    assert "not stored" in taker.log_text(), "the job was refused before the object was put"
    assert cluster.uploads_in_bucket() == before
    log(f"step 3: Redis stalls writes: POST /upload -> 503 ({cluster.name(hop)}), the stored object taken back")

    # --- 4. an object overwritten in the bucket: new within freshness, never a mix --------------
    clients = [r.client() for r in live]
    try:
        path = f"/picture/{SWAP}?width=300"
        first = [c.get(path) for c in clients]
        assert [r.status_code for r in first] == [200] * len(live)
        old = first[0]
        assert {r.headers["etag"] for r in first} == {old.headers["etag"]} and decoded_size(old.content) == (300, 200)
        store.put(SWAP, (CORPUS / SWAP_NEW).read_bytes())
        overwritten = time.monotonic()
        log(f"step 4: {SWAP} overwritten in the bucket (old ETag {old.headers['etag']})")
        seen: dict[str, float] = {}  # replica -> seconds after the overwrite it first served the new one
        new: httpx.Response | None = None
        while len(seen) < len(live):
            late = time.monotonic() - overwritten > FRESHNESS  # every version now known is past freshness
            for replica, client in zip(live, clients, strict=True):
                if replica.workdir.name in seen:
                    continue
                response = client.get(path)
                assert response.status_code == 200
                if response.headers["etag"] == old.headers["etag"]:
                    assert response.content == old.content  # the old version, whole
                    assert not late, f"{replica.workdir.name} served the old image {FRESHNESS} s after the overwrite"
                    continue
                assert decoded_size(response.content) == (300, 226)  # the new image, whole
                if new is None:
                    new = response
                assert (response.headers["etag"], response.content) == (new.headers["etag"], new.content)
                seen[replica.workdir.name] = time.monotonic() - overwritten
            time.sleep(0.1)
        assert new is not None
        log(
            f"step 4: new image (ETag {new.headers['etag']}) served after: {', '.join(f'{n} {s:.1f} s' for n, s in seen.items())}"
        )
        for client in clients:  # and it stays new
            response = client.get(path)
            assert (response.headers["etag"], response.content) == (new.headers["etag"], new.content)
        response, hop = edge.get(f"{path}&v=after-overwrite")
        assert response.status_code == 200 and response.headers["etag"] == new.headers["etag"]
        log(f"step 4: through the edge (a new URL) -> the new image ({cluster.name(hop)})")
    finally:
        for client in clients:
            client.close()
    for replica in live:
        assert "Traceback" not in replica.log_text(), replica.log_text()
