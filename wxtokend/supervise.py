"""Keeping refresh loops running: restart one that crashed, tell all of a clock step."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from wxtokend.clock import Clock
    from wxtokend.refresher import Refresher

__all__ = ["cancel", "supervise", "watch_clock"]

_CRASH_PAUSE = 5.0
_CLOCK_CHECK_EVERY = 1.0
# How far the wall clock may move against the monotonic one between two checks
# before it counts as a step (NTP slewing moves it by under a millisecond a second).
_CLOCK_STEP = 2.0


async def supervise(refresher: Refresher, *, clock: Clock, log: Any) -> None:
    """Keep a refresher alive: a bug in one app's loop must not stop the others."""
    while True:
        try:
            await refresher.run()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("refresh loop crashed; restarting", app=refresher.app.name)
            await clock.sleep(_CRASH_PAUSE)


async def watch_clock(clock: Clock, loops: Mapping[str, Refresher], *, log: Any) -> None:
    """Tell every loop when the wall clock is stepped (by hand, NTP, a VM resume).

    Sleeps run on the monotonic clock, so without this a step forward past a
    token's expiry would go unnoticed until the loop's next wake-up.
    """
    offset = clock.now() - clock.monotonic()
    while True:
        await clock.sleep(_CLOCK_CHECK_EVERY)
        stepped = clock.now() - clock.monotonic() - offset
        offset += stepped
        if abs(stepped) >= _CLOCK_STEP:
            log.warning("the wall clock was stepped", by_seconds=round(stepped, 1))
            for loop in loops.values():
                loop.clock_stepped(stepped)


async def cancel(tasks: Iterable[asyncio.Task[None]]) -> None:
    tasks = list(tasks)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
