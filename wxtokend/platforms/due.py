"""Due times for many credentials at once: one heap, one timer, a fixed pool of workers.

A loop per credential costs a task, a lock and events each; at 100,000
authorizers that is most of the memory. Here a credential is a key and a time:
:meth:`DueTimes.plan` pushes it on a heap (a re-plan just pushes again; the
stale entry is skipped when it surfaces), and :meth:`DueTimes.run` hands what is
due to ``workers`` coroutines, so at most that many refreshes run at once and a
burst of due keys waits in a queue instead of spawning a task each.
"""

from __future__ import annotations

import asyncio
import heapq
import math
from collections.abc import Awaitable, Callable

from wxtokend.clock import Clock

__all__ = ["DueTimes"]


class DueTimes:
    """A heap of (time, key), worked off by a pool."""

    def __init__(self, *, clock: Clock, workers: int) -> None:
        self._clock = clock
        self._workers = max(1, workers)
        self._heap: list[tuple[float, str]] = []
        self._queue: asyncio.Queue[tuple[str, float]] = asyncio.Queue()
        self._queued: set[str] = set()
        self._wake = asyncio.Event()

    def plan(self, key: str, at: float) -> None:
        """``key`` is due at ``at`` (``inf``: never, until planned again)."""
        if math.isinf(at):
            return
        heapq.heappush(self._heap, (at, key))
        if self._heap[0] == (at, key):
            self._wake.set()  # sooner than the timer was set for

    async def run(self, work: Callable[[str, float], Awaitable[None]]) -> None:
        """Hand each due (key, time) to ``work``, forever; cancel to stop."""
        workers = [asyncio.create_task(self._worker(work)) for _ in range(self._workers)]
        try:
            while True:
                self._release_due()
                await self._sleep()
        finally:
            for worker in workers:
                worker.cancel()
            await asyncio.gather(*workers, return_exceptions=True)

    def _release_due(self) -> None:
        now = self._clock.now()
        while self._heap and self._heap[0][0] <= now:
            at, key = heapq.heappop(self._heap)
            if key in self._queued:
                continue  # already waiting for a worker: its work reads the newest plan
            self._queued.add(key)
            self._queue.put_nowait((key, at))

    async def _sleep(self) -> None:
        self._wake.clear()
        if not self._heap:
            await self._wake.wait()  # nothing planned: the next plan wakes it
            return
        await self._clock.wait(self._wake, max(0.0, self._heap[0][0] - self._clock.now()))

    async def _worker(self, work: Callable[[str, float], Awaitable[None]]) -> None:
        while True:
            key, at = await self._queue.get()
            try:
                await work(key, at)
            finally:
                self._queued.discard(key)
