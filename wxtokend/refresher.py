"""The refresh loop: sleep until the plan, fetch, succeed or fail, plan again.

One :class:`Refresher` keeps one credential fresh (an app's token, or one of its
tickets) and knows none of them by name: its :class:`~wxtokend.kinds.base.Kind`
says how to fetch and renew it. The loop never has two fetches in flight (a
lock), and delegates the rest to its parts:

- how a new value is obtained, alone or in a fleet: :mod:`wxtokend.obtain`;
- compare-and-refresh on a consumer's report, with its budgets: :mod:`wxtokend.passive`;
- the files, written in order and retried: :mod:`wxtokend.persist`;
- when to renew and to retry: the pure functions of :mod:`wxtokend.schedule`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

from wxtokend.clock import Clock
from wxtokend.config import AppConfig, Ticket
from wxtokend.credential import Token
from wxtokend.errors import FetchError, TransientError
from wxtokend.fleet import Fleet
from wxtokend.kinds import Kind, ticket_kind, token_kind
from wxtokend.kinds.base import Dependency, TicketSource, TokenSource, Upstream
from wxtokend.logs import get_logger
from wxtokend.metrics import Metrics
from wxtokend.obtain import Alone, InFleet, Strategy
from wxtokend.outcomes import Outcomes
from wxtokend.passive import PassiveRefresh
from wxtokend.persist import Files
from wxtokend.schedule import (
    Policy,
    Rng,
    backoff,
)
from wxtokend.status import AppStatus, Passive
from wxtokend.store import TokenStore

__all__ = [
    "AppStatus",
    "Passive",
    "Refresher",
    "TicketRefresher",
    "TicketSource",
    "TokenSource",
    "Upstream",
]


class _OfPassive:
    """A budget of the loop's passive refresh, read and set through the loop (tests tune it)."""

    def __init__(self, name: str) -> None:
        self._name = name

    def __get__(self, loop: Refresher | None, owner: object = None) -> Any:
        return self if loop is None else getattr(loop._passive, self._name)

    def __set__(self, loop: Refresher, value: Any) -> None:
        setattr(loop._passive, self._name, value)


class Refresher(Outcomes):
    """Keeps one credential's files fresh."""

    # Slots: one of these per app and ticket, and 10,000 instance dicts weighed ~15 MB.
    __slots__ = ("_lock", "_passive", "_plan", "_semaphore", "_source", "_wake")
    _passive_min_interval = _OfPassive("min_interval")
    _passive_daily_limit = _OfPassive("daily_limit")
    _passive_today = _OfPassive("today")

    def __init__(
        self,
        app: AppConfig,
        *,
        source: TokenSource,
        store: TokenStore,
        clock: Clock,
        rng: Rng,
        policy: Policy,
        semaphore: asyncio.Semaphore,
        metrics: Metrics | None = None,
        fleet: Fleet | None = None,
        passive_min_interval: float = 10.0,
        passive_daily_limit: int = 100,
        on_written: Callable[[], None] | None = None,
        kind: Kind | None = None,
        dependency: Dependency | None = None,
        stem: str | None = None,
    ) -> None:
        kind = kind or token_kind(app)
        metrics = metrics or Metrics()
        log = get_logger(app=app.name, appid=app.appid, grant=app.grant, **kind.log_context())
        obtain: Strategy = Alone() if fleet is None else InFleet(fleet, clock=clock)
        files = Files(store, clock=clock, metrics=metrics, log=log, on_written=on_written)
        super().__init__(
            app,
            kind,
            clock=clock,
            files=files,
            dependency=dependency,
            stem=stem,
            rng=rng,
            policy=policy,
            metrics=metrics,
            log=log,
            obtain=obtain,
        )
        self._source = source
        self._semaphore = semaphore
        self._passive = PassiveRefresh(
            self,
            obtain=obtain,
            clock=clock,
            metrics=metrics,
            log=log,
            min_interval=passive_min_interval,
            daily_limit=passive_daily_limit,
        )
        self._plan = 0  # counts fetches: a loop whose plan is outdated must not fetch
        self._lock = asyncio.Lock()
        self._wake = asyncio.Event()

    # -- what its parts and its kind may use (Attempt, Obtaining, Reported) ---

    @property
    def upstream(self) -> Upstream:
        return self._source  # type: ignore[return-value]  # a kind calls only its own method

    @property
    def lock(self) -> asyncio.Lock:
        return self._lock

    @contextlib.asynccontextmanager
    async def on_wire(self) -> AsyncIterator[None]:
        """Hold a slot of the daemon-wide semaphore only while on the wire."""
        async with self._semaphore:
            self.busy_since = self._clock.monotonic()
            yield

    def off_wire(self) -> None:
        self.busy_since = None

    def warn(self, event: str, **fields: object) -> None:
        self._log.warning(event, **fields)

    async def fetch_upstream(self, *, force: bool) -> Token:
        """The kind's fetch, after noting in the files that it may invalidate the token."""
        await self._mark_refreshing()
        return await self.credential_kind.fetch(self, force=force)

    async def close(self) -> None:
        """Stop for good (reload removed or replaced this app): finish any fetch, write nothing."""
        async with self._lock:
            self._files.closed = True

    def clock_stepped(self, by: float) -> None:
        """The wall clock was stepped ``by`` seconds: re-plan at once.

        Forward, whatever is due by the new wall time (a token now expired) is done
        now. Back, the plan is moved with the clock, so it keeps its moment in real
        time: no wait grows by the step, and no extra fetch.
        """
        if by < 0:
            self.next_at += by
            self._planned += by
        self._wake.set()

    # -- loop ----------------------------------------------------------------

    async def run(self) -> None:
        """Refresh forever (a dependent kind: once its dependency is valid); cancel to stop."""
        while True:
            await self._await_dependency()
            plan = self._plan
            if await self._sleep_until(self.next_at):
                await self.step(plan)

    async def step(self, plan: int | None = None) -> None:
        """Whatever is due now: retry a failed file write, or refresh."""
        if self._files.unsaved and self.record is not None:
            await self._write(self.record)
            return
        async with self._lock:
            # A passive refresh may have run while this waited for the lock; it
            # re-planned, and fetching anyway would (classic) kill its new token.
            if plan is None or plan == self._plan:
                await self._fetch(force=False)

    async def ensure(self, *, attempts: int = 3) -> bool:
        """For ``--once``: a valid token on disk, fetched only if needed, retrying transients."""
        dependency = self._dependency
        if dependency is not None and not dependency.has_valid_token():
            self.waiting_for_token = True  # nothing to fetch it with
            return self.has_valid_token()
        if self.has_valid_token() and self.next_at > self._clock.now():
            return True
        files = self._files
        for attempt in range(attempts):
            if await self.refresh() and not files.unsaved:
                return True
            if files.unsaved:
                break
            if not isinstance(self.last_error, TransientError) or attempt == attempts - 1:
                break
            await self._clock.sleep(backoff(attempt + 1, self._rng, base=1.0, cap=5.0, floor=1.0))
        return self.has_valid_token() and not files.unsaved

    async def refresh(self, *, force: bool = False) -> bool:
        """One fetch for this app (never two at once); True on success."""
        async with self._lock:
            return await self._fetch(force=force)

    async def _fetch(self, *, force: bool, stale: str | None = None) -> bool:
        """The fetch itself; the caller holds the lock.

        ``stale`` is the token being replaced (a passive report names it);
        by default the current one.
        """
        if self._files.closed:
            return False
        if stale is None and self.record is not None:
            stale = self.record.access_token
        try:
            try:
                token, outcome = await self._obtain.obtain(self, force=force, stale=stale)
            finally:
                self.busy_since = None
            await self._succeeded(token, outcome)
            return True
        except FetchError as error:
            await self._failed(error)
            return False
        finally:
            # Only now is the new schedule set (the file write in between yields), so a
            # sleeping loop woken to re-plan cannot read the old refresh time.
            self._plan += 1
            self._wake.set()

    fetch_locked = _fetch  # what passive refresh calls, holding the lock

    async def follow_fleet(self) -> bool:
        """Take the fleet's record if it is newer (pub/sub push or reconcile); no fetch."""
        if self._files.closed:
            return False
        async with self._lock:
            token = await self._obtain.follow(self)
            if token is None:
                return False
            await self._succeeded(token, "shared")
            self._plan += 1
            self._wake.set()
            return True

    async def report_rejected(
        self,
        *,
        token: str | None = None,
        token_fingerprint: str | None = None,
        allow_force: bool = True,
        internal: bool = False,
    ) -> Passive:
        """A consumer says WeChat rejected ``token``: compare-and-refresh.

        ``allow_force=False`` limits a stable app to a normal-mode call (for SDK
        callers, which cannot say which token they saw rejected). ``internal``
        reports (a ticket fetch refused for its token) stay out of the consumers'
        daily budget and metrics.
        """
        return await self._passive.report(
            token=token,
            token_fingerprint=token_fingerprint,
            allow_force=allow_force,
            internal=internal,
        )

    # -- sleeping ------------------------------------------------------------

    async def _sleep_until(self, at: float) -> bool:
        """Sleep until ``at``, marking the token on the way if it expires first.

        Waits are computed once, up front, and slept on the monotonic clock, so a
        wall-clock step cannot stretch them. Returns False if woken early because
        the schedule changed (a passive refresh ran), so the caller re-plans.
        """
        self._wake.clear()
        now = self._clock.now()
        record = self.record
        # WeCom renews only after expiry: its refresh lands a second later, not an outage.
        renews_after = (
            self.schedule_grant == "wecom" and at - (record.expires_at if record else 0) < 5
        )
        left = self.valid_for()
        if record is not None and 0 < left < at - now and not renews_after:
            if not await self._nap(left):
                return False
            if self.record is record:
                await self._mark_if_expired(force=True)
            now += left
        return await self._nap(at - now)

    async def _nap(self, seconds: float) -> bool:
        """Sleep ``seconds`` unless woken; True if the whole time passed."""
        if seconds <= 0:
            return not self._wake.is_set()
        self._wake_due = self._clock.monotonic() + seconds
        try:
            woken = await self._clock.wait(self._wake, seconds)
        finally:
            self._wake_due = None
        return not woken


class TicketRefresher(Refresher):
    """One of an app's tickets: a :class:`Refresher` of a ticket kind, after its token."""

    __slots__ = ("ticket",)

    def __init__(
        self,
        app: AppConfig,
        kind: Ticket,
        *,
        tokens: Refresher,
        tickets: TicketSource,
        store: TokenStore,
        clock: Clock,
        rng: Rng,
        policy: Policy,
        semaphore: asyncio.Semaphore,
        metrics: Metrics | None = None,
        fleet: Fleet | None = None,
        on_written: Callable[[], None] | None = None,
    ) -> None:
        self.ticket: Ticket = kind
        super().__init__(
            app,
            source=tickets,  # type: ignore[arg-type]  # a ticket kind calls only fetch_ticket
            store=store,
            clock=clock,
            rng=rng,
            policy=policy,
            semaphore=semaphore,
            metrics=metrics,
            fleet=fleet,
            on_written=on_written,
            kind=ticket_kind(app, kind),
            dependency=tokens,
        )
