"""One task per key for concurrent callers asking the same thing (a fetch, a store request).

A caller going away does not cancel the task for the others (shield), and a task's error is
marked retrieved when it ends, so one that nobody awaits anymore logs no warning.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class SharedTasks(Generic[T]):
    def __init__(self) -> None:
        self.running: dict[str, asyncio.Future[T]] = {}

    async def run(self, key: str, make: Callable[[], Awaitable[T]]) -> T:
        task = self.running.get(key)
        if task is None:
            task = asyncio.ensure_future(make())
            self.running[key] = task
            task.add_done_callback(lambda done: self._finished(key, done))
        return await asyncio.shield(task)

    def _finished(self, key: str, task: asyncio.Future[T]) -> None:
        if self.running.get(key) is task:
            del self.running[key]
        if not task.cancelled():
            task.exception()

    def cancel(self) -> None:
        for task in list(self.running.values()):
            task.cancel()
