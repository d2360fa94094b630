"""`RedisJobStore`: job records in Redis, shared by every replica and `imgproxy worker` host.

Keys (under `imgproxy:jobs:`): `job:<id>` the record as JSON (finished ones expire after a week),
`open` a sorted set of unfinished job ids scored by lease expiry (0 while nobody holds one), and
`count:done` / `count:failed`. A change is an optimistic transaction (WATCH the record, check the
lease holder, MULTI/EXEC), retried when another client changed the record in between, so two
workers can never both hold, or both complete, the same job. Every call is bounded by a socket
timeout: an unreachable Redis is an error within seconds, never a hang.

Why not RQ or dramatiq (measured with Redis 7, RQ 3.0, dramatiq 2.2, kill -9 of a worker mid-job):
RQ declares a started job abandoned at the earliest 60 s after its last heartbeat (a fixed
margin) and re-ran nothing within 150 s. dramatiq re-delivers within the lease only when its
heartbeat timeout is below it and its maintenance runs far more often than by default, and then
it also re-delivers the job of a worker that is merely stalled: frozen past the heartbeat and
thawed, that worker completed the job a second time. Completing once needs a fenced record with a
lease holder whatever carries the messages, and that record alone already finds lapsed jobs.
"""

from __future__ import annotations

import json

import redis

from .jobs import COUNT, FINISHED_TTL, Change, JobStore, index_entry

PREFIX = "imgproxy:jobs:"
OPEN_KEY = PREFIX + "open"
TIMEOUT_SECONDS = 2.0


class RedisJobStore(JobStore):
    errors = (redis.RedisError, OSError)
    shared = True

    def __init__(self, url: str):
        self.redis = redis.Redis.from_url(
            url, socket_timeout=TIMEOUT_SECONDS, socket_connect_timeout=TIMEOUT_SECONDS, decode_responses=True
        )

    @staticmethod
    def _key(job_id: str) -> str:
        return f"{PREFIX}job:{job_id}"

    def change(self, job_id: str, decide: Change) -> dict | None:
        key = self._key(job_id)
        with self.redis.pipeline() as pipe:
            while True:
                try:
                    pipe.watch(key)
                    raw = pipe.get(key)
                    record = decide(json.loads(raw) if raw else None)
                    if record is None:
                        pipe.unwatch()
                        return None
                    pipe.multi()
                    self._write(pipe, record)
                    pipe.execute()
                    return record
                except redis.WatchError:
                    continue  # changed by another client meanwhile: decide again on the new record

    def add(self, record: dict) -> None:
        with self.redis.pipeline() as pipe:
            self._write(pipe, record)
            pipe.execute()

    def _write(self, pipe: redis.client.Pipeline, record: dict) -> None:
        job_id, lease = record["id"], index_entry(record)
        if lease is not None:
            pipe.set(self._key(job_id), json.dumps(record))
            pipe.zadd(OPEN_KEY, {job_id: lease})
        else:
            pipe.set(self._key(job_id), json.dumps(record), ex=FINISHED_TTL)
            pipe.zrem(OPEN_KEY, job_id)
            pipe.incr(PREFIX + COUNT + record["status"])

    def get(self, job_id: str) -> dict | None:
        raw = self.redis.get(self._key(job_id))
        return json.loads(raw) if raw else None

    def claimable(self, now: float) -> list[str]:
        return [str(job_id) for job_id in self.redis.zrangebyscore(OPEN_KEY, "-inf", f"({now}")]

    def stats(self, now: float) -> dict[str, int]:
        with self.redis.pipeline(transaction=False) as pipe:
            pipe.zcount(OPEN_KEY, "-inf", f"({now}")
            pipe.zcount(OPEN_KEY, now, "+inf")
            pipe.get(PREFIX + COUNT + "done")
            pipe.get(PREFIX + COUNT + "failed")
            queued, running, done, failed = pipe.execute()
        return {"queued": queued, "running": running, "done": int(done or 0), "failed": int(failed or 0)}

    def ping(self) -> None:
        self.redis.ping()

    def close(self) -> None:
        self.redis.close()
