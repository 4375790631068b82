"""Telling systemd: READY once every app has a token, then STATUS and WATCHDOG.

READY waits (up to admin.start_timeout) for each loop's first file, woken by
every file written; a reload in progress tells it the set of loops changed.
WATCHDOG pings are withheld while a loop is dead or stuck, so systemd restarts
a daemon that no longer refreshes.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from wxtokend.memory import settle_memory
from wxtokend.readiness import ready

if TYPE_CHECKING:
    from wxtokend.clock import Clock
    from wxtokend.notify import Notifier
    from wxtokend.refresher import Refresher

__all__ = ["Announcer"]

_STATUS_EVERY = 30.0


class Announcer:
    """READY, STATUS and WATCHDOG for one daemon's loops."""

    def __init__(
        self,
        *,
        notifier: Notifier,
        clock: Clock,
        loops: Mapping[str, Refresher],
        status_line: Callable[[], str],
        health: Callable[[], list[str]],
        applying: Callable[[], bool],
        log: Any,
    ) -> None:
        self._notifier, self._clock, self._loops = notifier, clock, loops
        self._status_line, self._health, self._applying = status_line, health, applying
        self._log = log
        self.written = asyncio.Event()  # set by every loop's file write
        self.ready_sent = False
        self._reloads = 0  # applied reloads: the READY wait re-reads the loops when it moves

    def loops_changed(self) -> None:
        """A reload added or replaced loops: a READY wait in progress looks at the new set."""
        self._reloads += 1
        self.written.set()

    def reannounce(self) -> None:
        """After a reload: READY again, with the new status line."""
        if self.ready_sent:  # before the first READY, READY still waits for the tokens
            self._notifier.ready(self._status_line())

    async def run(self, start_timeout: float) -> None:
        """READY=1 once every app has a token (or after start_timeout), then STATUS and WATCHDOG."""
        await self._wait_until_ready(self._clock.now() + start_timeout)
        self._notifier.ready(self._status_line())
        self.ready_sent = True
        self._log.info("ready", status=self._status_line())
        if not self._applying():  # a reload in progress settles memory when it ends
            settle_memory()  # the first tokens' records and tasks are long-lived too
        ping = self._notifier.watchdog_interval
        step = min(ping, _STATUS_EVERY) if ping else _STATUS_EVERY
        since_status = 0.0
        while True:
            await asyncio.sleep(step)
            since_status += step
            problems = self._health()
            if ping and not problems:
                self._notifier.watchdog()  # withheld while a loop is stuck: systemd restarts us
            if problems:
                self._log.error("unhealthy", problems=problems)
            if since_status >= _STATUS_EVERY:
                since_status = 0.0
                self._notifier.status(self._status_line())

    async def _wait_until_ready(self, deadline: float) -> None:
        """Until every app has a token, woken by each token written, or until ``deadline``."""
        # Cheap checks, each loop passed once: at 10,000 apps a full readiness() report
        # per written token cost more than the fetches.
        seen, waiting, first = -1, [], 0
        while True:
            if seen != self._reloads:  # apps added or replaced: wait for the current loops
                seen, waiting, first = self._reloads, list(self._loops.values()), 0
            # Loops get their tokens roughly in order: skip past the ready ones and stop at
            # the first still waiting, so each loop is passed once, not at every wake-up.
            while first < len(waiting) and ready(waiting[first]):
                first += 1
            if first == len(waiting):
                return
            left = deadline - self._clock.now()
            if left <= 0:
                return
            self.written.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.written.wait(), timeout=left)
            # Let a burst of first tokens land before checking again.
            await asyncio.sleep(0.05)
