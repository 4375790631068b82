"""Following the fleet: take the tokens other instances refreshed, pushed or polled.

Pub/sub pushes which credential changed; a periodic reconcile re-reads every
shared record, because pub/sub messages can be lost (and Redis can be away).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from wxtokend.fleet import Fleet
    from wxtokend.refresher import Refresher

__all__ = ["Follower"]


class Follower:
    """Makes a daemon's loops follow what the fleet refreshed (nothing without a fleet)."""

    def __init__(
        self,
        fleet: Fleet | None,
        *,
        loops: Mapping[str, Refresher],
        fleet_keys: Mapping[str, Refresher],
        log: Any,
    ) -> None:
        self._fleet, self._loops, self._fleet_keys, self._log = fleet, loops, fleet_keys, log
        # Other parts' credentials (the platforms'): followed there, True if taken.
        self.also: Callable[[str], bool] | None = None
        self._following: set[str] = set()
        self._follow_tasks: set[asyncio.Task[bool]] = set()

    def tasks(self) -> list[asyncio.Task[None]]:
        if self._fleet is None:
            return []
        return [
            asyncio.create_task(self._fleet.listen(self._on_fleet_update), name="fleet-listen"),
            asyncio.create_task(self._reconcile(self._fleet), name="fleet-reconcile"),
        ]

    async def follow_once(self) -> None:
        """At start, before any loop runs: take what the fleet refreshed while we were away."""
        if self._fleet is None:
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(10):  # Redis away must not hold the start back
                for loop in list(self._loops.values()):
                    await loop.follow_fleet()

    def _on_fleet_update(self, credential: str) -> None:
        """Pushed by pub/sub: a credential changed somewhere in the fleet; follow it."""
        loop = self._fleet_keys.get(credential)
        if loop is None and self.also is not None:
            self.also(credential)
            return
        if loop is None or credential in self._following:
            return  # one pending follow per credential: a flood of messages coalesces
        self._following.add(credential)
        task = asyncio.create_task(loop.follow_fleet())
        task.add_done_callback(lambda _: self._following.discard(credential))
        self._follow_tasks.add(task)
        task.add_done_callback(self._follow_tasks.discard)

    async def _reconcile(self, fleet: Fleet) -> None:
        """Re-read every shared record now and then: pub/sub messages can be lost."""
        was_up = True
        while True:
            await asyncio.sleep(fleet.settings.reconcile_interval)
            for loop in list(self._loops.values()):
                await loop.follow_fleet()
            if fleet.up != was_up:
                log = self._log.info if fleet.up else self._log.error
                log(
                    "Redis is back: following the fleet again"
                    if fleet.up
                    else "Redis unreachable: serving the tokens on disk, retrying",
                    error=fleet.last_error,
                )
                was_up = fleet.up
