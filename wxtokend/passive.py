"""Passive refresh: a consumer reports that WeChat rejected a token.

Compare-and-refresh: only a report naming the current token triggers a fetch,
concurrent reports of the same token share one flight, and budgets bound what
reports can cost — a per-app minimum interval, a daily cap, no report breaking a
wait WeChat imposed, and (stable grant) the force_refresh budget WeChat allows.

:func:`refusal` holds the budget rules as a pure function of (now, state);
:class:`PassiveRefresh` is the per-loop object that applies them.
"""

from __future__ import annotations

import asyncio
import hmac
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from wxtokend.clock import Clock, iso
from wxtokend.config import AppConfig
from wxtokend.errors import (
    AdminWaitError,
    DailyQuotaError,
    FatalConfigError,
    FetchError,
    UnknownErrcodeError,
)
from wxtokend.fleet import RedisDown
from wxtokend.metrics import Metrics
from wxtokend.obtain import Obtaining, Strategy
from wxtokend.redact import fingerprint
from wxtokend.schedule import force_allowed_at, next_quota_reset
from wxtokend.status import AppStatus, Passive, PassiveResult
from wxtokend.store import Record

__all__ = ["PassiveRefresh", "Refusal", "Reported", "refusal", "today_only"]

# Waits WeChat imposed: no report may cut them short.
_WAITS = (DailyQuotaError, AdminWaitError, FatalConfigError, UnknownErrcodeError)


@dataclass(frozen=True, kw_only=True)
class Refusal:
    """A report that costs no upstream call, and why."""

    result: PassiveResult
    retry_after: float
    detail: str
    capped: bool = False  # the daily cap refused it (not a wait or the minimum interval)


def refusal(
    *,
    now: float,
    error: FetchError | None,
    next_at: float,
    last: float,
    min_interval: float,
    used_today: int,
    daily_limit: int,
    internal: bool,
) -> Refusal | None:
    """Whether a report that names the current token may refresh it now.

    ``last`` is when a report last refreshed this app, ``used_today`` how many
    consumers' reports did today. ``internal`` reports (a ticket fetch refused for
    its token) skip the daily cap: it is the consumers' budget.
    """
    if error is not None and isinstance(error, _WAITS) and next_at > now:
        return Refusal(
            result="failed",
            retry_after=next_at - now,
            detail=f"not asking WeChat before {iso(next_at)}: {error}",
        )
    wait = last + min_interval - now
    if wait > 0:
        return Refusal(
            result="rate_limited",
            retry_after=wait,
            detail="this app was refreshed on a report moments ago",
        )
    if not internal and used_today >= daily_limit:
        return Refusal(
            result="rate_limited",
            retry_after=next_quota_reset(now) - now,
            detail=f"{daily_limit} refreshes on reports today already",
            capped=True,
        )
    return None


def today_only(times: Sequence[float], now: float) -> list[float]:
    """The ``times`` since today's quota reset (WeChat's day: 00:00 Beijing time)."""
    day_start = next_quota_reset(now) - 86400
    return [t for t in times if t >= day_start]


class Reported(Obtaining, Protocol):
    """What passive refresh needs of its loop (besides what its strategy needs)."""

    app: AppConfig
    record: Record | None
    last_error: FetchError | None
    next_at: float
    failures: int

    @property
    def lock(self) -> asyncio.Lock: ...

    def status(self) -> AppStatus: ...

    async def fetch_locked(self, *, force: bool, stale: str | None = None) -> bool:
        """One fetch; the caller holds ``lock``. True on success."""
        ...


class PassiveRefresh:
    """One loop's compare-and-refresh, with its budgets."""

    __slots__ = (
        "_clock",
        "_flights",
        "_forces",
        "_log",
        "_loop",
        "_metrics",
        "_obtain",
        "daily_limit",
        "last",
        "min_interval",
        "today",
    )

    def __init__(
        self,
        loop: Reported,
        *,
        obtain: Strategy,
        clock: Clock,
        metrics: Metrics,
        log: Any,
        min_interval: float,
        daily_limit: int,
    ) -> None:
        self._loop = loop
        self._obtain = obtain
        self._clock = clock
        self._metrics = metrics
        self._log = log
        self.min_interval = min_interval
        self.daily_limit = daily_limit
        self.today: list[float] = []  # when consumers' reports refreshed it, today
        self.last = float("-inf")
        self._flights: dict[str, asyncio.Future[Passive]] = {}
        self._forces: list[float] = []

    async def report(
        self,
        *,
        token: str | None = None,
        token_fingerprint: str | None = None,
        allow_force: bool = True,
        internal: bool = False,
    ) -> Passive:
        """A consumer says WeChat rejected ``token`` (or the token of that fingerprint)."""
        record = self._loop.record
        if record is None:
            return self._counted("no_token", detail="no token yet: the first fetch is under way")
        current = record.access_token
        if token is not None:
            named = hmac.compare_digest(token.encode(), current.encode())
        else:
            named = hmac.compare_digest(
                (token_fingerprint or "").encode(), fingerprint(current).encode()
            )
        if not named:
            return self._counted("newer", detail="a newer token is already in place")
        flight = self._flights.get(current)
        if flight is None:
            refused = self._refusal(internal=internal)
            if refused is not None:
                return refused
            self.last = self._clock.now()
            if not internal:
                self.today.append(self.last)
            flight = asyncio.ensure_future(self._refresh(current, allow_force))
            self._flights[current] = flight
            flight.add_done_callback(lambda _: self._flights.pop(current, None))
        answer = await asyncio.shield(flight)
        if not internal:
            self._metrics.passive(self._loop.app.name, answer.result)
        return answer

    def _refusal(self, *, internal: bool) -> Passive | None:
        loop, now = self._loop, self._clock.now()
        if not internal:
            self.today = today_only(self.today, now)
        refused = refusal(
            now=now,
            error=loop.last_error,
            next_at=loop.next_at,
            last=self.last,
            min_interval=self.min_interval,
            used_today=len(self.today),
            daily_limit=self.daily_limit,
            internal=internal,
        )
        if refused is None:
            return None
        if refused.capped and len(self.today) == self.daily_limit:
            self._log.error(
                "passive refresh limit for today reached: a consumer keeps reporting fresh"
                " tokens as rejected (wrong appid's token? wrong API?)",
                limit=self.daily_limit,
            )
            self.today.append(now)  # log once
        return self._counted(refused.result, retry_after=refused.retry_after, detail=refused.detail)

    async def _refresh(self, stale: str, allow_force: bool) -> Passive:
        loop = self._loop
        async with loop.lock, self._obtain.hold(loop):
            if loop.record is None or loop.record.access_token != stale:
                return self._answer("newer", detail="replaced while this report waited")
            if not await loop.fetch_locked(force=False, stale=stale):
                return self._answer("failed", detail=str(loop.last_error or "stopped"))
            if loop.record.access_token != stale:
                return self._answer("refreshed")
            if not allow_force or loop.schedule_grant != "stable":
                # Only the stable grant has a force mode; WeCom repeats a valid token.
                return self._answer("newer", detail="WeChat confirmed the current token is valid")
            # Stable grant: normal mode returned the same token, so WeChat still
            # thinks it valid while a consumer saw it rejected: it really is dead.
            return await self._force(stale)

    async def _force(self, stale: str) -> Passive:
        loop, now = self._loop, self._clock.now()
        try:
            used = await self._obtain.forces_used(loop, now, self._forces)
        except RedisDown as exc:
            return self._answer(
                "failed", detail=f"Redis unreachable: the fleet's force budget is unknown ({exc})"
            )
        allowed = force_allowed_at(now, used)
        if allowed > now:
            self._log.error(
                "force_refresh budget spent: the rejected token stays until WeChat renews it",
                allowed_at=iso(allowed),
            )
            return self._answer(
                "force_budget_spent",
                retry_after=allowed - now,
                detail="WeChat allows 20 force refreshes a day, 30 s apart",
            )
        self._forces.append(now)
        await self._obtain.record_force(loop, now)
        before = (loop.next_at, loop.last_error, loop.failures)
        if not await loop.fetch_locked(force=True):
            if isinstance(loop.last_error, DailyQuotaError):
                # The *force* budget is spent (maybe by others, or before a restart):
                # that must not stop the regular normal-mode refreshes for the day.
                loop.next_at, loop.last_error, loop.failures = before
                self._forces.extend([now] * 20)
                return self._answer(
                    "force_budget_spent",
                    retry_after=next_quota_reset(now) - now,
                    detail="WeChat says today's force_refresh budget is spent",
                )
            return self._answer("failed", detail=str(loop.last_error))
        if loop.record is None or loop.record.access_token == stale:
            return self._answer("failed", detail="WeChat returned the same token to force_refresh")
        return self._answer("refreshed")

    def _counted(
        self, result: PassiveResult, *, retry_after: float | None = None, detail: str | None = None
    ) -> Passive:
        self._metrics.passive(self._loop.app.name, result)
        return self._answer(result, retry_after=retry_after, detail=detail)

    def _answer(
        self, result: PassiveResult, *, retry_after: float | None = None, detail: str | None = None
    ) -> Passive:
        return Passive(
            result=result, status=self._loop.status(), retry_after=retry_after, detail=detail
        )
