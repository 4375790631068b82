"""Group commit: many coroutines' writes, one writer-thread call per batch.

A platform refreshes thousands of authorizers a minute at a cold start; a thread
hand-off (and a loop wake-up) per file costs more than the write itself. Each
caller still awaits *its own* write: :meth:`GroupCommit.save` returns once the
batch holding its item is written, and raises that item's error. While one batch
is being written, the next one gathers, so batches grow exactly as far as the
disk is slower than the refreshes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Generic, TypeVar

from wxtokend.persist import in_writer

__all__ = ["GroupCommit", "each"]

T = TypeVar("T")
Outcomes = list[OSError | None]

_MAX_BATCH = 2000


def each(write: Callable[[T], object]) -> Callable[[list[T]], Outcomes]:
    """A batch writer that writes the items one by one, each with its own outcome."""

    def batch(items: list[T]) -> Outcomes:
        outcomes: Outcomes = []
        for item in items:
            try:
                write(item)
            except OSError as exc:
                outcomes.append(exc)
            else:
                outcomes.append(None)
        return outcomes

    return batch


class GroupCommit(Generic[T]):
    """Batches items for ``write``, which returns one outcome per item (or raises for all)."""

    def __init__(self, write: Callable[[list[T]], Outcomes]) -> None:
        self._write = write
        self._pending: list[tuple[T, asyncio.Future[None]]] = []
        self._flusher: asyncio.Task[None] | None = None

    async def save(self, item: T) -> None:
        """Write ``item`` (with whatever else is pending); raise its OSError if it failed."""
        done = asyncio.get_running_loop().create_future()
        self._pending.append((item, done))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush())
        # Shielded: a cancelled caller's item is still written (it is in the batch already).
        await asyncio.shield(done)

    async def _flush(self) -> None:
        while self._pending:
            batch, self._pending = self._pending[:_MAX_BATCH], self._pending[_MAX_BATCH:]
            items = [item for item, _ in batch]
            try:
                outcomes = await in_writer(self._write, items)
            except Exception as exc:  # every caller gets it, none hangs
                outcomes = [
                    exc
                    if isinstance(exc, OSError)
                    else OSError(f"{type(exc).__name__} in a batch write")
                ] * len(batch)
            for (_, done), outcome in zip(batch, outcomes, strict=True):
                if done.done():
                    continue
                if outcome is None:
                    done.set_result(None)
                else:
                    done.set_exception(outcome)
