"""Pre-render jobs on both backends: the lease rules on the real stores, the redis backend shared by
live servers and `imgproxy worker` processes, kill -9 mid-job, Redis going away, and a local store
with 100k finished jobs that must not stall the event loop."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import diskcache
import pytest

from imgproxy.config import ConfigError, load_config
from imgproxy.jobs import FINISHED_TTL, LocalJobStore, new_record
from imgproxy.redisjobs import PREFIX, RedisJobStore

from .conftest import CORPUS, copy_from_corpus, free_port, stop_process, to_toml, track
from .redis_server import redis_server  # noqa: F401 (a fixture)
from .test_uploads import MANY_PRESETS, post_file, stored_files, wait_for_job

SMALL_PHOTO = "photos/grayscale_portrait.jpg"
BIG_PHOTO = "photos/large_12mp_bus.jpg"


# --- config ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, message",
    [
        ('[jobs]\nbackend = "rabbit"\n', "jobs.backend"),
        ('[jobs]\nbackend = "redis"\n', "jobs.redis_url: required"),
        ('[jobs]\nredis_url = "http://127.0.0.1:6379"\n', "jobs.redis_url"),
        ("[jobs]\nworkers_in_server = -1\n", "jobs.workers_in_server"),
        ("[jobs]\nlease = 1\n", "jobs.lease"),
        ('[jobs]\nwarm_url = "edge.internal"\n', "jobs.warm_url"),
        ("[uploads]\njob_workers = 2\n", r"uploads.job_workers: moved to \[jobs\] workers_in_server"),
    ],
)
def test_bad_jobs_config_names_the_key(tmp_path, text, message):
    path = tmp_path / "c.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_config(path, environ={})


# --- the lease rules, on each real store --------------------------------------------------------


@pytest.fixture(params=["local", "redis"])
def store(request, tmp_path):
    if request.param == "local":
        local = LocalJobStore(tmp_path / "jobs")
        yield local
        local.close()
        return
    server = request.getfixturevalue("redis_server")
    shared = RedisJobStore(server.url)
    yield shared
    shared.close()


def test_one_claim_wins_and_a_lapsed_holder_cannot_complete(store):
    job_id = "a" * 32
    store.add(new_record(job_id, "x.jpg", ["small"], ["webp"]))
    assert store.claimable(time.time()) == [job_id]
    until = time.time() + 60
    with ThreadPoolExecutor(8) as pool:
        claims = list(pool.map(lambda i: store.claim(job_id, f"worker{i}", until), range(8)))
    winners = [record["owner"] for record in claims if record is not None]
    assert len(winners) == 1, winners
    first = winners[0]
    assert store.claimable(time.time()) == []
    assert store.stats(time.time()) == {"queued": 0, "running": 1, "done": 0, "failed": 0}

    assert store.update(job_id, first, lease=time.time() - 1)  # its worker stopped renewing
    assert store.claimable(time.time()) == [job_id]
    assert store.claim(job_id, "second", time.time() + 60)["runs"] == 2
    assert not store.update(job_id, first, done=1)
    assert not store.update(job_id, first, status="done", owner=None, lease=0.0)
    assert store.update(job_id, "second", status="done", owner=None, lease=0.0)
    assert not store.update(job_id, "second", status="done", owner=None, lease=0.0)  # finished: once
    assert store.stats(time.time()) == {"queued": 0, "running": 0, "done": 1, "failed": 0}
    assert store.get(job_id)["status"] == "done"


# --- redis backend, end to end --------------------------------------------------------------------


def redis_settings(redis_url: str, root: Path, workers: int, lease: float = 30) -> dict:
    return {
        "sources": {"local": {"root": str(root)}},
        "jobs": {"backend": "redis", "redis_url": redis_url, "workers_in_server": workers, "lease": lease},
    }


class Worker:
    """`python -m imgproxy worker` with its own config; its own cache dir (a host of its own) unless
    the settings name one."""

    def __init__(self, directory: Path, settings: dict):
        directory.mkdir(parents=True, exist_ok=True)
        self.config = directory / "config.toml"
        self.config.write_text(to_toml({"cache": {"dir": str(directory / "cache")}, **settings}))
        self.log_path = directory / "worker.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith("IMGPROXY_")}
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "imgproxy", "worker", "--config", str(self.config)],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        track(self.process, f"imgproxy worker with {self.config}")

    def stop(self) -> None:
        stop_process(self.process, 20)


@pytest.fixture
def workers():
    started: list[Worker] = []

    def start(directory: Path, settings: dict) -> Worker:
        started.append(Worker(directory, settings))
        return started[-1]

    yield start
    for worker in started:
        worker.stop()


def jobs_stats(config: Path) -> dict[str, int]:
    out = subprocess.run(
        [sys.executable, "-m", "imgproxy", "jobs", "stats", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    return {name: int(value) for name, value in (line.split() for line in out.splitlines())}


def test_two_servers_share_the_redis_queue(live_server, redis_server, tmp_path):  # noqa: F811
    root = tmp_path / "images"
    root.mkdir()
    # the server that takes the upload runs no job worker: the other one must find the job in Redis
    taker = live_server(redis_settings(redis_server.url, root, workers=0), name="taker")
    runner = live_server(redis_settings(redis_server.url, root, workers=1), name="runner")
    with taker.client() as a, runner.client() as b:
        r = post_file(a, (CORPUS / SMALL_PHOTO).read_bytes(), "portrait.jpg")
        assert r.status_code == 201, r.text
        status_url = r.json()["job"]["status_url"]
        job = wait_for_job(a, status_url)
        assert job["status"] == "done" and job["done"] == job["total"] == 10 and job["progress"] == 1, job
        assert b.get(status_url).json() == a.get(status_url).json() == job
        assert b.get("/health").json()["checks"]["jobs"] is True
        assert 'imgproxy_jobs{state="queued"} 0.0' in a.get("/metrics").text
        assert runner.cache_dir.exists() and b.get(r.json()["urls"]["small"]).headers["x-cache"] == "HIT"
    assert jobs_stats(taker.config_path) == {"queued": 0, "running": 0, "failed": 0, "done": 1}


def holder_pid(redis, job_id: str) -> int | None:
    """The PID of the worker holding the job (owner is host:pid:token), from the record in Redis."""
    owner = json.loads(redis.get(PREFIX + "job:" + job_id))["owner"]
    return int(owner.split(":")[1]) if owner else None


def wait_for_new_holder(redis, job_id: str, old: int, bound: float) -> float:
    """Seconds until a worker other than `old` holds the job (asserted within `bound`)."""
    started = time.monotonic()
    while holder_pid(redis, job_id) in (None, old):
        assert time.monotonic() - started < bound, f"nobody took the job from {old} within {bound} s"
        time.sleep(0.05)
    return time.monotonic() - started


@pytest.mark.timeout(300)
def test_a_stalled_or_killed_worker_loses_the_job_within_the_lease_and_it_completes_once(
    live_server,
    redis_server,  # noqa: F811
    workers,
    tmp_path,
):
    """12 presets × 4 formats of a 12-MP photo. The worker holding the job is frozen (SIGSTOP) past
    the lease and thawed: the other worker has taken the job, and the thawed one must give it up
    rather than complete it too. Then the new holder is killed with SIGKILL: taken up again."""
    lease = 12
    root = tmp_path / "images"
    root.mkdir()
    settings = redis_settings(redis_server.url, root, workers=0, lease=lease)
    settings["uploads"] = {"pregenerate_formats": ["webp", "avif", "png", "source"]}
    settings["presets"] = MANY_PRESETS
    server = live_server(settings)
    pool = {w.process.pid: w for w in (workers(tmp_path / f"worker{i}", settings) for i in range(2))}
    redis = redis_server.client()
    try:
        with server.client() as client:
            r = post_file(client, (CORPUS / BIG_PHOTO).read_bytes(), "bus.jpg")
            assert r.status_code == 201, r.text
            job_id = r.json()["id"]
            deadline = time.monotonic() + 120
            while (job := client.get(f"/jobs/{job_id}").json())["done"] < 2:  # running, some results in
                assert time.monotonic() < deadline, job
                time.sleep(0.05)
            assert job["status"] == "running" and job["total"] == 48 and 0 < job["progress"] < 1, job
            assert job["progress"] == round(job["done"] / 48, 4)

            frozen = holder_pid(redis, job_id)
            assert frozen in pool
            os.kill(frozen, signal.SIGSTOP)
            try:
                taken = wait_for_new_holder(redis, job_id, frozen, 3 * lease)
            finally:
                os.kill(frozen, signal.SIGCONT)
            thawed_log = pool[frozen].log_path
            deadline = time.monotonic() + 60
            while "lease lost" not in thawed_log.read_text():  # it noticed, and stopped working on it
                assert time.monotonic() < deadline, thawed_log.read_text()
                time.sleep(0.05)

            victim = holder_pid(redis, job_id)
            assert victim in pool and victim != frozen
            os.kill(victim, signal.SIGKILL)
            pool[victim].process.wait(10)
            picked_up = wait_for_new_holder(redis, job_id, victim, 3 * lease)
            print(f"lease {lease} s: taken from a frozen worker after {taken:.1f} s, after kill -9 {picked_up:.1f} s")
            assert taken <= lease and picked_up <= lease, (taken, picked_up)

            job = wait_for_job(client, f"/jobs/{job_id}", timeout=240)
            assert job["status"] == "done" and job["done"] == job["total"] == 48 and job["runs"] == 3, job
    finally:
        redis.close()
    assert jobs_stats(server.config_path)["done"] == 1  # completed once, though three workers ran it


def test_redis_down_refuses_uploads_and_keeps_serving_pictures(live_server, redis_server, tmp_path):  # noqa: F811
    root = tmp_path / "images"
    copy_from_corpus(SMALL_PHOTO, root)
    server = live_server(redis_settings(redis_server.url, root, workers=1))
    data = (CORPUS / SMALL_PHOTO).read_bytes()
    with server.client() as client:
        r = post_file(client, data, "before.jpg")
        assert r.status_code == 201, r.text
        assert wait_for_job(client, r.json()["job"]["status_url"])["status"] == "done"
        before = stored_files(root)

        redis_server.stop()
        refused = post_file(client, data, "during.jpg")
        assert refused.status_code == 503, refused.text
        assert int(refused.headers["retry-after"]) > 0
        assert stored_files(root) == before
        assert client.get(f"/jobs/{r.json()['id']}").status_code == 503
        picture = client.get(f"/picture/{SMALL_PHOTO}?width=123")  # not cached yet: rendered now
        assert picture.status_code == 200 and picture.headers["x-cache"] == "MISS"
        health = client.get("/health")
        assert health.status_code == 200
        assert health.json()["checks"]["jobs"] is False and health.json()["status"] == "degraded"
        assert "imgproxy_requests" in client.get("/metrics").text

        redis_server.start()  # same port, empty: the server reconnects by itself
        again = post_file(client, data, "after.jpg")
        assert again.status_code == 201, again.text
        assert wait_for_job(client, again.json()["job"]["status_url"])["status"] == "done"
        assert client.get("/health").json()["checks"]["jobs"] is True

        # Redis answers PING but stalls writes: the job cannot be stored after the image was, and the
        # image is taken back
        before = stored_files(root)
        redis = redis_server.client()
        redis.execute_command("CLIENT", "PAUSE", "4000", "WRITE")
        try:
            stalled = post_file(client, data, "stalled.jpg")
        finally:
            redis.execute_command("CLIENT", "UNPAUSE")
            redis.close()
        assert stalled.status_code == 503 and "retry-after" in stalled.headers, stalled.text
        assert stored_files(root) == before
    assert "Traceback" not in server.log_text()


def test_without_redis_the_server_starts_serves_pictures_and_refuses_uploads(live_server, tmp_path):
    root = tmp_path / "images"
    copy_from_corpus(SMALL_PHOTO, root)
    nobody = f"redis://127.0.0.1:{free_port()}/0"  # a port nobody listens on
    server = live_server(redis_settings(nobody, root, workers=1))
    with server.client() as client:
        assert client.get(f"/picture/{SMALL_PHOTO}?width=100").status_code == 200
        refused = post_file(client, (CORPUS / SMALL_PHOTO).read_bytes(), "a.jpg")
        assert refused.status_code == 503 and int(refused.headers["retry-after"]) > 0, refused.text
        assert client.get("/health").json()["checks"]["jobs"] is False
    assert stored_files(root) == [Path(SMALL_PHOTO)]
    result = subprocess.run(
        [sys.executable, "-m", "imgproxy", "jobs", "stats", "--config", str(server.config_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1 and "unavailable" in result.stderr and "Traceback" not in result.stderr
    checked = subprocess.run(
        [sys.executable, "-m", "imgproxy", "check-config", "--config", str(server.config_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert checked.returncode == 2 and "problem: jobs.redis_url: cannot reach Redis" in checked.stderr, checked.stderr
    assert "Traceback" not in server.log_text()


def test_local_backend_with_no_job_worker_in_the_server_and_one_imgproxy_worker(live_server, workers, tmp_path):
    root = tmp_path / "images"
    root.mkdir()
    server = live_server({"sources": {"local": {"root": str(root)}}, "jobs": {"workers_in_server": 0}})
    with server.client() as client:
        r = post_file(client, (CORPUS / SMALL_PHOTO).read_bytes(), "a.jpg")
        assert r.status_code == 201, r.text
        status_url = r.json()["job"]["status_url"]
        assert client.get(status_url).json()["status"] == "pending"  # the server itself runs no job
        workers(tmp_path / "worker", server.settings)  # same host: same cache dir and job store
        job = wait_for_job(client, status_url)
        assert job["status"] == "done" and job["runs"] == 1, job
        assert client.get(r.json()["urls"]["small"]).headers["x-cache"] == "HIT"  # same host, same cache
        assert client.get("/health").json()["renders"] == 0  # rendered by the worker, not the server
    assert jobs_stats(server.config_path) == {"queued": 0, "running": 0, "failed": 0, "done": 1}


# --- local backend: history does not slow anything down ----------------------------------------

FINISHED_JOBS = 100_000


def fill_finished_jobs(directory: Path, count: int) -> None:
    """`count` finished job records straight into a local job store (one transaction: seconds)."""
    cache = diskcache.Cache(str(directory), eviction_policy="none")
    try:
        with cache.transact():
            for n in range(count):
                record = new_record(f"{n:032x}", "uploads/x/a.jpg", ["small"], ["webp"])
                record.update(status="done", done=1, total=1, finished=record["created"])
                cache.set(record["id"], record, expire=FINISHED_TTL)
    finally:
        cache.close()


@pytest.mark.timeout(240)
def test_100k_finished_jobs_do_not_stall_the_event_loop(live_server, tmp_path):
    """The old sweep read every record on the event loop every 5 s: 10–13 s stalls with 100k."""
    workdir = tmp_path / "server0"
    fill_finished_jobs(workdir / "cache" / "jobs", FINISHED_JOBS)
    root = tmp_path / "images"
    copy_from_corpus(SMALL_PHOTO, root)
    server = live_server({"sources": {"local": {"root": str(root)}}}, name="server0")
    worst = 0.0
    with server.client() as client:
        until = time.monotonic() + 12  # several polls of the job index, and two of the old 5-s sweeps
        while time.monotonic() < until:
            started = time.monotonic()
            assert client.get("/health").status_code == 200
            worst = max(worst, time.monotonic() - started)
            time.sleep(0.05)
        r = post_file(client, (CORPUS / SMALL_PHOTO).read_bytes(), "new.jpg")  # jobs still run
        assert wait_for_job(client, r.json()["job"]["status_url"])["status"] == "done"
        assert client.get("/jobs/" + f"{7:032x}").json()["status"] == "done"  # history is still readable
    print(f"slowest /health over 12 s with {FINISHED_JOBS} finished jobs: {worst * 1000:.0f} ms")
    assert worst < 3.0, worst


def test_warm_url_renders_each_variant_where_its_url_is_served(live_server, tmp_path):
    """With [jobs] warm_url a job GETs every variant through that URL (an edge, here a replica):
    the replica answering the URLs has them all as HITs, the one that ran the job has none."""
    root = tmp_path / "images"
    root.mkdir()
    owner = live_server({"sources": {"local": {"root": str(root)}}, "uploads": {"enabled": False}}, name="owner")
    runner = live_server(
        {"sources": {"local": {"root": str(root)}}, "jobs": {"warm_url": owner.url, "workers_in_server": 1}},
        name="runner",
    )
    with runner.client() as a, owner.client() as b:
        r = post_file(a, (CORPUS / SMALL_PHOTO).read_bytes(), "portrait.jpg")
        assert r.status_code == 201, r.text
        job = wait_for_job(a, r.json()["job"]["status_url"])
        assert job["status"] == "done" and job["done"] == job["total"] == 10, job
        urls = [u for url in r.json()["urls"].values() for u in (url, url + "&encoding=webp")]
        assert [b.get(url).headers["x-cache"] for url in urls] == ["HIT"] * len(urls)
        assert [a.get(url).headers["x-cache"] for url in urls] == ["MISS"] * len(urls)
