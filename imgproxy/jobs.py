"""Background pre-rendering: every preset × format of a source rendered into the result cache.

Renders go through `Renderer.picture`, so they land under the keys `/picture` computes and a later
request is a HIT. A job is a record in a `JobStore`: `LocalJobStore` (a diskcache at
`<cache.dir>/jobs`, shared by the processes of one host) or `RedisJobStore` (shared by every host,
imgproxy/redisjobs.py), chosen by `[jobs] backend`. Both keep an index of the unfinished jobs with
the expiry of each one's lease, so finding work reads only that index; finished records expire
after a week. The worker running a job holds a lease on it, renewed every few seconds and released
on a clean shutdown; every process polls the index for jobs whose lease is free or lapsed, which is
how a job resumes after a restart or on another host after its worker died. Every change to a
record checks the lease holder atomically, so a job is completed once, by its current holder.
A process runs `[jobs] workers_in_server` jobs at a time (`imgproxy worker`: its `--workers`) and
starts a render only while a render thread is idle, so live traffic keeps priority. Store calls
run in threads: the event loop never waits on SQLite or the network.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import shutil
import socket
import sqlite3
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import diskcache

from .config import Config
from .errors import ImageProxyError, Overloaded
from .html import picture_url
from .options import RenderOptions, with_encoding
from .pipeline import Renderer, close_body

if TYPE_CHECKING:
    import httpx  # imported where [jobs] warm_url is used: ~5 MB a process that has none

log = logging.getLogger("imgproxy.jobs")
OPEN = ("pending", "running")
POLL_SECONDS = 1.0  # how often a process looks for jobs to take
RENEW_SECONDS = 5.0  # lease renewal, at most this far apart (and four times per lease)
IDLE_POLL_SECONDS = 0.05
RETRY_SECONDS = (1.0, 2.0, 4.0)  # after a 503 (queue full in a race, or a render over its budget)
FINISHED_TTL = 7 * 86400
RETRY_AFTER = 5
PUBLIC_FIELDS = ("id", "status", "done", "total", "error", "source", "created", "started", "finished", "runs")
INDEX = "index:open"  # LocalJobStore: {job id: lease expiry, 0.0 while nobody holds it}
COUNT = "count:"  # completions by final status: count:done, count:failed


class JobsUnavailable(ImageProxyError):
    status = 503

    def __init__(self, message: str = "the job queue is unavailable, try again later"):
        super().__init__(message, headers={"Retry-After": str(RETRY_AFTER)})


@dataclass(frozen=True)
class Task:
    preset: str
    options: RenderOptions  # encoding set: the output format, as /picture's cache key has it
    params: tuple[tuple[str, str], ...]  # the query of the URL the upload's answer gives for it


def plan(renderer: Renderer, presets: Iterable[str], formats: Iterable[str]) -> list[Task]:
    """Every preset × format, one task per distinct cache key.

    "source" stands for what the preset's plain URL answers without an Accept header (the
    source's own format under the default config), so the preset URLs an upload returns are HITs.
    """
    config = renderer.config
    tasks: dict[str, Task] = {}
    for name in presets:
        options = config.parse_query([("preset", name)])
        for fmt in formats:
            encoding = renderer.requested_format(options, "")[0] if fmt == "source" else fmt
            with_format = with_encoding(options, encoding)
            params = (("preset", name),) if fmt == "source" else (("preset", name), ("encoding", fmt))
            tasks.setdefault(with_format.cache_key(), Task(name, with_format, params))
    return list(tasks.values())


async def warm(
    renderer: Renderer, sources: Iterable[str], tasks: list[Task], concurrency: int, progress: Callable[[str], None]
) -> list[str]:
    """Render every task for every source, `concurrency` at a time; the error lines (CLI warm)."""
    items = iter([(source, task) for source in sources for task in tasks])
    errors: list[str] = []

    async def worker() -> None:
        for source, task in items:  # one shared iterator: each item goes to one worker
            try:
                close_body((await renderer.picture(source, task.options)).body)
            except ImageProxyError as exc:
                errors.append(f"{source} {task.preset} ({task.options.encoding}): {exc.message}")
            progress(source)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return errors


def new_record(job_id: str, source: str, presets: list[str], formats: list[str]) -> dict:
    return {
        "id": job_id,
        "source": source,
        "presets": presets,
        "formats": formats,
        "status": "pending",
        "done": 0,
        "total": 0,
        "error": None,
        "created": time.time(),
        "started": None,
        "finished": None,
        "runs": 0,
        "owner": None,
        "lease": 0.0,
    }


def public(record: dict) -> dict:
    """What GET /jobs/<id> answers: the record without its lease, plus `progress` from 0 to 1."""
    total = record["total"]
    progress = min(record["done"] / total, 1.0) if total else float(record["status"] == "done")
    return {**{name: record[name] for name in PUBLIC_FIELDS}, "progress": round(progress, 4)}


Change = Callable[[dict | None], dict | None]


class JobStore:
    """Job records by id plus the index of unfinished ones. A backend provides `change` (read,
    decide, write as one atomic step), `add`, `get`, `claimable`, `stats`, `ping` and `close`;
    the lease rules are here, the same for every backend."""

    errors: tuple[type[BaseException], ...] = ()  # what the backend raises when it is unreachable
    shared = False  # whether other hosts see the same jobs

    def change(self, job_id: str, decide: Change) -> dict | None:
        raise NotImplementedError

    def add(self, record: dict) -> None:
        raise NotImplementedError

    def get(self, job_id: str) -> dict | None:
        raise NotImplementedError

    def claimable(self, now: float) -> list[str]:
        """Unfinished jobs whose lease is free or lapsed: read from the index, O(open jobs)."""
        raise NotImplementedError

    def stats(self, now: float) -> dict[str, int]:
        """queued (free or lapsed lease), running, and completions: done, failed."""
        raise NotImplementedError

    def ping(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def claim(self, job_id: str, owner: str, until: float) -> dict | None:
        """Take an unfinished job whose lease is free, lapsed or ours; None when it is not ours to run."""
        now = time.time()

        def take(record: dict | None) -> dict | None:
            if record is None or record["status"] not in OPEN:
                return None
            if record["owner"] not in (None, owner) and record["lease"] > now:
                return None
            record.update(
                status="running", owner=owner, lease=until, runs=record["runs"] + 1, started=record["started"] or now
            )
            return record

        return self.change(job_id, take)

    def update(self, job_id: str, holder: str, **changes) -> bool:
        """Apply `changes` while `holder` holds the unfinished job; False when it lost it."""

        def apply(record: dict | None) -> dict | None:
            if record is None or record["owner"] != holder or record["status"] not in OPEN:
                return None
            record.update(changes)
            return record

        return self.change(job_id, apply) is not None


def index_entry(record: dict) -> float | None:
    """The index value of a record: its lease expiry while unfinished, None once finished."""
    return float(record["lease"]) if record["status"] in OPEN else None


class LocalJobStore(JobStore):
    """A diskcache shared by the processes of one host. Changes are SQLite transactions."""

    errors = (OSError, sqlite3.Error, diskcache.Timeout)

    def __init__(self, directory: Path):
        # never evicted: an unfinished job must not disappear; finished ones expire instead
        self.cache = diskcache.Cache(str(directory), eviction_policy="none")

    def change(self, job_id: str, decide: Change) -> dict | None:
        with self.cache.transact():
            record = decide(self.cache.get(job_id))
            if record is not None:
                self._write(record)
            return record

    def add(self, record: dict) -> None:
        with self.cache.transact():
            self._write(record)

    def _write(self, record: dict) -> None:
        job_id, lease = record["id"], index_entry(record)
        self.cache.set(job_id, record, expire=None if lease is not None else FINISHED_TTL)
        index = self.cache.get(INDEX, {})
        if lease is not None and index.get(job_id) != lease:
            index[job_id] = lease
            self.cache.set(INDEX, index)
        elif lease is None:
            if index.pop(job_id, None) is not None:
                self.cache.set(INDEX, index)
            self.cache.incr(COUNT + record["status"])

    def get(self, job_id: str) -> dict | None:
        return self.cache.get(job_id)

    def claimable(self, now: float) -> list[str]:
        return [job_id for job_id, lease in self.cache.get(INDEX, {}).items() if lease < now]

    def stats(self, now: float) -> dict[str, int]:
        leases = list(self.cache.get(INDEX, {}).values())
        queued = sum(1 for lease in leases if lease < now)
        counts = {status: int(self.cache.get(COUNT + status, 0)) for status in ("done", "failed")}
        return {"queued": queued, "running": len(leases) - queued, **counts}

    def ping(self) -> None:
        self.cache.get(INDEX)

    def close(self) -> None:
        self.cache.close()


def open_store(config: Config) -> JobStore:
    """The configured backend (no connection is made yet)."""
    if config.jobs.backend == "redis":
        from .redisjobs import RedisJobStore

        return RedisJobStore(config.jobs.redis_url)
    return LocalJobStore(config.path(config.cache.dir) / "jobs")


class JobQueue:
    """Submits jobs, answers their status, and runs `workers` of them at a time in this process."""

    def __init__(self, renderer: Renderer, workers: int):
        config = renderer.config
        self.renderer = renderer
        self.config = config
        self.workers = workers
        self.hold = config.jobs.lease / 2  # a claim lapses this long after its last renewal...
        self.renew_every = min(
            RENEW_SECONDS, config.jobs.lease / 4
        )  # ...so a dead worker's job is taken within the lease
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        self.store = JobStore()  # the configured one from start() on
        self.temporary: Path | None = None  # the local store's directory when the configured one is unusable
        self.queue: asyncio.Queue[str] = asyncio.Queue()
        self.queued: set[str] = set()
        self.running: set[str] = set()
        self.tasks: list[asyncio.Task] = []
        self.warned = False
        self.client: httpx.AsyncClient | None = None  # for [jobs] warm_url

    def open(self) -> None:
        """Open the store (blocking: run it in a thread)."""
        try:
            self.store = open_store(self.config)
        except LocalJobStore.errors as exc:  # like the result cache: degrade, do not refuse to start
            self.temporary = Path(tempfile.mkdtemp(prefix="imgproxy-jobs-"))
            log.warning("job store unusable (%s); jobs kept in %s until restart", exc, self.temporary)
            self.store = LocalJobStore(self.temporary)

    async def start(self) -> None:
        await asyncio.to_thread(self.open)
        if self.workers > 0:
            self.tasks = [asyncio.create_task(self._worker()) for _ in range(self.workers)]
            self.tasks.append(asyncio.create_task(self._maintain()))

    async def stop(self) -> None:
        """Cancel the workers; each releases its job (status back to pending) for another worker."""
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await asyncio.to_thread(self.store.close)
        if self.client is not None:
            await self.client.aclose()
        if self.temporary is not None:
            shutil.rmtree(self.temporary, ignore_errors=True)

    async def check(self) -> None:
        """503 now, before an upload is stored, when a shared queue could not take its job."""
        if self.store.shared:
            try:
                await asyncio.to_thread(self.store.ping)
            except self.store.errors as exc:
                log.warning("job queue unreachable: %s", exc)
                raise JobsUnavailable() from None

    async def healthy(self) -> bool:
        try:
            await asyncio.to_thread(self.store.ping)
        except self.store.errors:
            return False
        return True

    async def stats(self) -> dict[str, int] | None:
        try:
            return await asyncio.to_thread(self.store.stats, time.time())
        except self.store.errors:
            return None

    async def submit(self, job_id: str, source: str, presets: list[str], formats: list[str]) -> dict:
        """Store the job (JobsUnavailable when a shared queue cannot take it) and its public fields."""
        record = new_record(job_id, source, presets, formats)
        try:
            record["total"] = len(plan(self.renderer, presets, formats))
        except ImageProxyError as exc:  # a preset the limits refuse: the job fails, the upload stands
            record.update(status="failed", error=exc.message, finished=time.time())
        try:
            await asyncio.to_thread(self.store.add, record)
        except self.store.errors as exc:
            log.warning("job %s not stored: %s", job_id, exc)
            if self.store.shared:
                raise JobsUnavailable() from None
            # one host: the upload stands; its results render on first request
            record.update(status="failed", error="job store unavailable", finished=time.time())
            return public(record)
        if record["status"] == "pending" and self.workers > 0:
            self._enqueue(job_id)
        return public(record)

    async def status(self, job_id: str) -> dict | None:
        try:
            record = await asyncio.to_thread(self.store.get, job_id)
        except self.store.errors as exc:
            log.warning("job %s unreadable: %s", job_id, exc)
            raise JobsUnavailable("job status is unavailable, try again later") from None
        return public(record) if record else None

    def _enqueue(self, job_id: str) -> None:
        if job_id not in self.queued and job_id not in self.running:
            self.queued.add(job_id)
            self.queue.put_nowait(job_id)

    async def _maintain(self) -> None:
        renewed = 0.0
        while True:
            try:
                now = time.time()
                if now - renewed >= self.renew_every:
                    await asyncio.to_thread(self._renew, list(self.running), now + self.hold)
                    renewed = now
                for job_id in await asyncio.to_thread(self.store.claimable, now):
                    self._enqueue(job_id)
                self.warned = False
            except self.store.errors as exc:
                self._warn(exc)
            await asyncio.sleep(POLL_SECONDS)

    def _renew(self, job_ids: Sequence[str], until: float) -> None:
        for job_id in job_ids:
            if not self.store.update(job_id, self.owner, lease=until):
                log.warning("job %s: lease lost, another worker runs it", job_id)

    def _warn(self, exc: BaseException) -> None:
        if not self.warned:
            log.warning("job store unusable: %s", exc)
            self.warned = True

    async def _worker(self) -> None:
        while True:
            job_id = await self.queue.get()
            self.queued.discard(job_id)
            try:
                record = await asyncio.to_thread(self.store.claim, job_id, self.owner, time.time() + self.hold)
            except self.store.errors as exc:
                self._warn(exc)  # the poll offers it again
                continue
            if record is None:
                continue
            self.running.add(job_id)
            try:
                await self._run(record)
            except asyncio.CancelledError:
                try:  # a clean shutdown hands the job back at once (blocking, but brief and only at exit)
                    self.store.update(job_id, self.owner, status="pending", owner=None, lease=0.0)
                except self.store.errors:
                    pass  # its lease lapses instead
                raise
            except self.store.errors as exc:  # the lease lapses and a worker takes the job up again
                self._warn(exc)
            except Exception:  # a bug: this job fails visibly, the worker carries on
                log.exception("job %s failed", job_id)
                await self._finish(job_id, "failed", "internal error")
            finally:
                self.running.discard(job_id)

    async def _run(self, record: dict) -> None:
        job_id = record["id"]
        try:
            tasks = plan(self.renderer, record["presets"], record["formats"])
        except ImageProxyError as exc:
            await self._finish(job_id, "failed", exc.message)
            return
        done = record["done"]
        errors: list[str] = []
        for index, task in enumerate(tasks):
            try:
                await self._render(record["source"], task)
            except ImageProxyError as exc:  # the other results are still worth having
                errors.append(f"{task.preset} ({task.options.encoding}): {exc.message}")
            done = max(done, index + 1)  # a resumed job counts its cached results again, quickly
            if not await asyncio.to_thread(self.store.update, job_id, self.owner, done=done, total=len(tasks)):
                log.warning("job %s: lease lost, another worker runs it", job_id)
                return
        if errors:
            more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
            await self._finish(job_id, "failed", errors[0] + more)
        else:
            await self._finish(job_id, "done", None)

    async def _finish(self, job_id: str, status: str, error: str | None) -> None:
        changes = {"status": status, "error": error, "finished": time.time(), "owner": None, "lease": 0.0}
        if not await asyncio.to_thread(self.store.update, job_id, self.owner, **changes):
            log.warning("job %s: lease lost before it finished; its holder finishes it", job_id)

    async def _render(self, source: str, task: Task) -> None:
        for delay in RETRY_SECONDS + (None,):
            try:
                if self.config.jobs.warm_url:
                    await self._request(source, task)
                else:
                    while self.renderer.pending >= self.renderer.workers:  # only on an idle thread
                        await asyncio.sleep(IDLE_POLL_SECONDS)
                    close_body((await self.renderer.picture(source, task.options)).body)
                return
            except Overloaded:
                if delay is None:
                    raise
                await asyncio.sleep(delay)

    async def _request(self, source: str, task: Task) -> None:
        """GET the variant's URL from `[jobs] warm_url` (the edge): the replica that owns the URL
        renders and keeps it, and the edge caches it too, so pre-rendering pays off whichever
        host runs the job. The URL is the one the upload's answer names, signed like it."""
        import httpx

        url = self.config.jobs.warm_url.rstrip("/") + picture_url(source, self.config, **dict(task.params))
        if self.client is None:
            self.client = httpx.AsyncClient(timeout=self.config.render.timeout + 10, trust_env=False)
        try:
            async with self.client.stream("GET", url, headers={"Accept": "*/*"}) as response:
                async for _ in response.aiter_raw():  # read to the end: a CDN keeps only whole answers
                    pass
        except httpx.HTTPError as exc:
            raise Overloaded(f"warm_url: {type(exc).__name__}") from None
        if response.status_code == 503:
            raise Overloaded("warm_url answered 503")
        if response.status_code != 200:
            raise ImageProxyError(f"warm_url answered {response.status_code} for {url}")
