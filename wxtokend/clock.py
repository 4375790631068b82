"""The seam between wxtokend and time.

Everything that schedules asks a :class:`Clock` for the time and to sleep, so
tests can swap in a virtual clock and never sleep for real.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from typing import Protocol

__all__ = ["Clock", "SystemClock", "iso"]


def iso(t: float) -> str:
    """Unix seconds as ISO 8601 UTC, for people; the number itself if out of range."""
    try:
        return datetime.fromtimestamp(t, UTC).isoformat(timespec="seconds")
    except (OverflowError, ValueError, OSError):
        return str(t)


class Clock(Protocol):
    """Wall-clock time (unix seconds), a monotonic clock, and a way to wait."""

    def now(self) -> float: ...

    def monotonic(self) -> float: ...

    async def sleep(self, seconds: float) -> None: ...

    async def wait(self, event: asyncio.Event, seconds: float) -> bool:
        """Until ``event`` is set (True) or ``seconds`` have passed (False)."""
        ...


class SystemClock:
    """The real clock: ``time.time`` and ``asyncio.sleep``."""

    def now(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))

    async def wait(self, event: asyncio.Event, seconds: float) -> bool:
        # In the caller's task, with one timer: no helper tasks per sleeping loop,
        # which at 10,000 apps were a sizeable share of the daemon's memory.
        if event.is_set():
            return True
        try:
            async with asyncio.timeout(max(0.0, seconds)):
                await event.wait()
        except TimeoutError:
            return event.is_set()
        return True
