"""Background pre-rendering: every preset × format of a source rendered into the result cache.

Renders go through `Renderer.picture`, so they land under the keys `/picture` computes and a later
request is a HIT. A job is a record in a diskcache at `<cache.dir>/jobs`, shared by worker
processes and kept across restarts (finished records expire after a week). The process running
a job holds a lease on it, renewed every few seconds and released on a clean shutdown; a sweep
queues every unfinished job whose lease is free or lapsed, which is how jobs resume after a
restart or a crashed worker. A process runs at most `[uploads] job_workers` renders at a time and
starts one only while a render thread is idle, so live traffic keeps priority.
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
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import diskcache

from .errors import ImageProxyError, Overloaded
from .options import RenderOptions, parse_options, with_encoding
from .pipeline import Renderer, close_body

log = logging.getLogger("imgproxy.jobs")
OPEN = ("pending", "running")
LEASE_SECONDS = 15.0
SWEEP_SECONDS = 5.0  # lease renewal and the search for jobs to resume
IDLE_POLL_SECONDS = 0.05
RETRY_SECONDS = (1.0, 2.0, 4.0)  # after a 503 (queue full in a race, or a render over its budget)
FINISHED_TTL = 7 * 86400
STORAGE_ERRORS = (OSError, sqlite3.Error, diskcache.Timeout)
PUBLIC_FIELDS = ("id", "status", "done", "total", "error", "source", "created", "started", "finished", "runs")


@dataclass(frozen=True)
class Task:
    preset: str
    options: RenderOptions  # encoding set: the output format, as /picture's cache key has it


def plan(renderer: Renderer, presets: Iterable[str], formats: Iterable[str]) -> list[Task]:
    """Every preset × format, one task per distinct cache key.

    "source" stands for what the preset's plain URL answers without an Accept header (the
    source's own format under the default config), so the preset URLs an upload returns are HITs.
    """
    config = renderer.config
    limits = config.limits
    tasks: dict[str, Task] = {}
    for name in presets:
        options = parse_options([("preset", name)], config.presets, limits.max_output_width, limits.max_output_height)
        for fmt in formats:
            encoding = renderer.requested_format(options, "")[0] if fmt == "source" else fmt
            with_format = with_encoding(options, encoding)
            tasks.setdefault(with_format.cache_key(), Task(name, with_format))
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
    return {name: record[name] for name in PUBLIC_FIELDS}


class JobStore:
    """Job records by id. Changes are transactions, so several processes can share the store."""

    def __init__(self, directory: Path):
        # never evicted: an unfinished job must not disappear; finished ones expire instead
        self.cache = diskcache.Cache(str(directory), eviction_policy="none")

    def get(self, job_id: str) -> dict | None:
        return self.cache.get(job_id)

    def add(self, record: dict) -> None:
        self.cache.set(record["id"], record, expire=None if record["status"] in OPEN else FINISHED_TTL)

    def claim(self, job_id: str, owner: str) -> dict | None:
        """Take an unfinished job whose lease is free, lapsed or ours; None when it is not ours to run."""
        now = time.time()
        with self.cache.transact():
            record = self.cache.get(job_id)
            if record is None or record["status"] not in OPEN:
                return None
            if record["owner"] not in (None, owner) and record["lease"] > now:
                return None
            record.update(
                status="running",
                owner=owner,
                lease=now + LEASE_SECONDS,
                runs=record["runs"] + 1,
                started=record["started"] or now,
            )
            self.cache.set(job_id, record)
            return record

    def update(self, job_id: str, holder: str, **changes) -> bool:
        """Apply `changes` while `holder` owns the job; False when it lost it."""
        with self.cache.transact():
            record = self.cache.get(job_id)
            if record is None or record["owner"] != holder:
                return False
            record.update(changes)
            self.add(record)
            return True

    def claimable(self) -> list[str]:
        now = time.time()
        found = []
        for job_id in self.cache.iterkeys():
            record = self.cache.get(job_id)
            if record and record["status"] in OPEN and (record["owner"] is None or record["lease"] < now):
                found.append(job_id)
        return found

    def close(self) -> None:
        self.cache.close()


class JobQueue:
    def __init__(self, renderer: Renderer):
        config = renderer.config
        self.renderer = renderer
        self.directory = config.path(config.cache.dir) / "jobs"
        self.workers = config.uploads.job_workers
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        self.store: JobStore | None = None
        self.temporary: Path | None = None  # the store's directory when the configured one is unusable
        self.queue: asyncio.Queue[str] = asyncio.Queue()
        self.queued: set[str] = set()
        self.running: set[str] = set()
        self.tasks: list[asyncio.Task] = []

    async def start(self) -> None:
        try:
            self.store = JobStore(self.directory)
        except STORAGE_ERRORS as exc:  # like the result cache: degrade, do not refuse to start
            self.temporary = Path(tempfile.mkdtemp(prefix="imgproxy-jobs-"))
            log.warning(
                "job store at %s unusable (%s); jobs kept in %s until restart", self.directory, exc, self.temporary
            )
            self.store = JobStore(self.temporary)
        self.tasks = [asyncio.create_task(self._worker()) for _ in range(self.workers)]
        self.tasks.append(asyncio.create_task(self._maintain()))

    async def stop(self) -> None:
        """Cancel the workers; each releases its job (status back to pending) for the next start."""
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        if self.store is not None:
            self.store.close()
        if self.temporary is not None:
            shutil.rmtree(self.temporary, ignore_errors=True)

    def submit(self, job_id: str, source: str, presets: list[str], formats: list[str]) -> dict:
        record = new_record(job_id, source, presets, formats)
        try:
            record["total"] = len(plan(self.renderer, presets, formats))
        except ImageProxyError as exc:  # a preset the limits refuse: the job fails, the upload stands
            record.update(status="failed", error=exc.message, finished=time.time())
        try:
            self.store.add(record)
        except STORAGE_ERRORS as exc:  # the upload stands; its results render on first request
            log.warning("job %s not stored: %s", job_id, exc)
            record.update(status="failed", error="job store unavailable", finished=time.time())
            return public(record)
        if record["status"] == "pending":
            self._enqueue(job_id)
        return public(record)

    def status(self, job_id: str) -> dict | None:
        try:
            record = self.store.get(job_id)
        except STORAGE_ERRORS as exc:
            log.warning("job %s unreadable: %s", job_id, exc)
            return None
        return public(record) if record else None

    def _enqueue(self, job_id: str) -> None:
        if job_id not in self.queued and job_id not in self.running:
            self.queued.add(job_id)
            self.queue.put_nowait(job_id)

    async def _maintain(self) -> None:
        warned = False
        while True:
            try:
                lease = time.time() + LEASE_SECONDS
                for job_id in list(self.running):
                    self.store.update(job_id, self.owner, lease=lease)
                for job_id in self.store.claimable():
                    self._enqueue(job_id)
                warned = False
            except STORAGE_ERRORS as exc:
                if not warned:
                    log.warning("job store at %s unusable: %s", self.directory, exc)
                    warned = True
            await asyncio.sleep(SWEEP_SECONDS)

    async def _worker(self) -> None:
        while True:
            job_id = await self.queue.get()
            self.queued.discard(job_id)
            try:
                record = self.store.claim(job_id, self.owner)
            except STORAGE_ERRORS as exc:
                log.warning("job %s: cannot claim: %s", job_id, exc)  # the sweep offers it again
                continue
            if record is None:
                continue
            self.running.add(job_id)
            try:
                await self._run(record)
            except asyncio.CancelledError:
                self.store.update(job_id, self.owner, status="pending", owner=None, lease=0.0)
                raise
            except Exception:  # a bug: this job fails visibly, the worker carries on
                log.exception("job %s failed", job_id)
                self._finish(job_id, "failed", "internal error")
            finally:
                self.running.discard(job_id)

    async def _run(self, record: dict) -> None:
        job_id = record["id"]
        try:
            tasks = plan(self.renderer, record["presets"], record["formats"])
        except ImageProxyError as exc:
            self._finish(job_id, "failed", exc.message)
            return
        done = record["done"]
        errors: list[str] = []
        for index, task in enumerate(tasks):
            try:
                await self._render(record["source"], task)
            except ImageProxyError as exc:  # the other results are still worth having
                errors.append(f"{task.preset} ({task.options.encoding}): {exc.message}")
            done = max(done, index + 1)  # a resumed job counts its cached results again, quickly
            if not self.store.update(job_id, self.owner, done=done, total=len(tasks)):
                log.warning("job %s: lease lost, another process runs it", job_id)
                return
        if errors:
            more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
            self._finish(job_id, "failed", errors[0] + more)
        else:
            self._finish(job_id, "done", None)

    def _finish(self, job_id: str, status: str, error: str | None) -> None:
        self.store.update(job_id, self.owner, status=status, error=error, finished=time.time(), owner=None, lease=0.0)

    async def _render(self, source: str, task: Task) -> None:
        for delay in RETRY_SECONDS + (None,):
            while self.renderer.pending >= self.renderer.workers:  # only on an idle thread
                await asyncio.sleep(IDLE_POLL_SECONDS)
            try:
                result = await self.renderer.picture(source, task.options)
            except Overloaded:
                if delay is None:
                    raise
                await asyncio.sleep(delay)
                continue
            close_body(result.body)
            return
