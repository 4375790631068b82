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
from dataclasses import replace
from typing import Any

from wxtokend.clock import Clock, iso
from wxtokend.config import AppConfig, Grant, Ticket
from wxtokend.credential import Token
from wxtokend.errors import DailyQuotaError, FetchError, TransientError
from wxtokend.fleet import Fleet
from wxtokend.kinds import Kind, ticket_kind, token_kind
from wxtokend.kinds.base import TicketSource, TokenSource, Upstream
from wxtokend.logs import REDACTOR, get_logger
from wxtokend.metrics import Metrics
from wxtokend.obtain import Alone, InFleet, Strategy
from wxtokend.passive import PassiveRefresh
from wxtokend.persist import Files
from wxtokend.redact import fingerprint
from wxtokend.schedule import (
    Policy,
    Rng,
    backoff,
    fleet_refresh_at,
    refresh_at,
    retry_at,
    unchanged_retry_at,
)
from wxtokend.status import AppStatus, Passive, State, stuck_reason
from wxtokend.store import Record, TokenStore

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


class Refresher:
    """Keeps one credential's files fresh."""

    # Slots: one of these per app and ticket, and 10,000 instance dicts weighed ~15 MB.
    __slots__ = (
        "_arrived",
        "_clock",
        "_dependency",
        "_expires_mono",
        "_files",
        "_lock",
        "_log",
        "_metrics",
        "_obtain",
        "_passive",
        "_plan",
        "_planned",
        "_policy",
        "_rng",
        "_semaphore",
        "_source",
        "_wake",
        "_wake_due",
        "app",
        "busy_since",
        "credential_kind",
        "failures",
        "kind",
        "last_error",
        "next_at",
        "record",
        "waiting_for_token",
    )
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
        dependency: Refresher | None = None,
    ) -> None:
        self.app = app
        self.credential_kind = kind or token_kind(app)
        self.kind = self.credential_kind.name  # what the store calls its files
        self._dependency = dependency
        self._source = source
        self._clock, self._rng, self._policy = clock, rng, policy
        self._semaphore = semaphore
        self._metrics = metrics or Metrics()
        self._log = get_logger(
            app=app.name, appid=app.appid, grant=app.grant, **self.credential_kind.log_context()
        )
        self._obtain: Strategy = Alone() if fleet is None else InFleet(fleet, clock=clock)
        self._files = Files(
            store, clock=clock, metrics=self._metrics, log=self._log, on_written=on_written
        )
        self._passive = PassiveRefresh(
            self,
            obtain=self._obtain,
            clock=clock,
            metrics=self._metrics,
            log=self._log,
            min_interval=passive_min_interval,
            daily_limit=passive_daily_limit,
        )
        self._wake_due: float | None = None  # monotonic deadline of the current sleep
        self._plan = 0  # counts fetches: a loop whose plan is outdated must not fetch
        self._lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._arrived = asyncio.Event()  # set (and replaced) whenever a new value is in place
        self.record: Record | None = None
        # When the record's token expires on the monotonic clock: a wall clock set
        # back must not stretch its life (one set forward shortens it, by wall time).
        self._expires_mono = float("inf")
        self.next_at = clock.now()
        self._planned = self.next_at  # the refresh point, kept while a file write is retried
        self.failures = 0
        self.last_error: FetchError | None = None
        self.busy_since: float | None = None
        self.waiting_for_token = False  # its dependency has no valid value yet

    # -- what this loop keeps, as its kind says ------------------------------

    @property
    def schedule_grant(self) -> Grant:
        """Which timing rules apply: the app's grant for its token, classic for tickets."""
        return self.credential_kind.renewal(self.app)

    @property
    def credential(self) -> str:
        """The label in metrics and status: the grant for a token, ``jsapi_ticket`` etc."""
        return self.credential_kind.label(self.app)

    @property
    def fleet_key(self) -> str:
        """This credential's name in Redis (a WeCom corp's applications differ by secret)."""
        return self.credential_kind.fleet_key(self.app)

    # -- what its parts and its kind may use (Attempt, Obtaining, Reported) ---

    @property
    def upstream(self) -> Upstream:
        return self._source  # type: ignore[return-value]  # a kind calls only its own method

    @property
    def dependency(self) -> Refresher | None:
        return self._dependency

    @property
    def lock(self) -> asyncio.Lock:
        return self._lock

    @property
    def log(self) -> Any:
        return self._log

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

    # -- state ---------------------------------------------------------------

    @property
    def writing_since(self) -> float | None:
        """Monotonic start of a file write in progress."""
        return self._files.writing_since

    def clock_now(self) -> float:
        return self._clock.now()

    def on_disk(self) -> bool:
        """A valid token whose files are written (not just fetched)."""
        record = self.record
        return (
            self.has_valid_token() and record is not None and self._files.holds(record.access_token)
        )

    def has_valid_token(self) -> bool:
        """Valid by the wall clock *and* the monotonic one: a clock step either way is safe."""
        return self.valid_for() > 0

    def valid_for(self) -> float:
        """Seconds the current token has left (0 if none): the lesser of both clocks' answer."""
        record = self.record
        if record is None or record.expired:
            return 0.0
        left = min(
            record.expires_at - self._clock.now(), self._expires_mono - self._clock.monotonic()
        )
        return max(0.0, left)

    def _hold(self, record: Record, expires_in: float) -> None:
        """Take ``record`` as the current token, valid ``expires_in`` seconds from now."""
        self.record = record
        self._expires_mono = self._clock.monotonic() + expires_in

    def status(self) -> AppStatus:
        record, error, files = self.record, self.last_error, self._files
        problem = str(error) if error else files.write_error
        state: State
        if record is None:
            state = "pending"
        elif not self.has_valid_token():
            state = "expired"
        else:
            state = "failing" if problem else "ok"
        status = AppStatus(
            name=self.app.name,
            appid=self.app.appid,
            grant=self.credential,
            state=state,
            expires_at=record.expires_at if record else None,
            fingerprint=fingerprint(record.access_token) if record else None,
            next_refresh=self.next_at,
            consecutive_failures=self.failures,
            last_error=problem,
            hint=error.hint if error else (files.write_hint if files.write_error else None),
        )
        if not self.waiting_for_token or problem is not None or self._dependency is None:
            return status
        needed = self._dependency.status()
        why = f": {needed.last_error}" if needed.last_error else ""
        return replace(status, last_error=f"waiting for the access_token{why}", hint=needed.hint)

    def stuck(self, *, fetch_limit: float) -> str | None:
        """Why this loop looks stuck (a fetch hanging, a wake-up long overdue), or None."""
        return stuck_reason(
            mono=self._clock.monotonic(),
            busy_since=self.busy_since,
            writing_since=self._files.writing_since,
            wake_due=self._wake_due,
            fetch_limit=fetch_limit,
        )

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

    def reconfigure(self, app: AppConfig, *, policy: Policy) -> None:
        """A reload kept this app's fetch settings: take its new details, keep the token."""
        self.app = app
        self._policy = policy

    # -- start ---------------------------------------------------------------

    def adopt_stored(self, *, refetch: bool = False) -> bool:
        """Take over a still-valid token from an earlier run; True if one was adopted.

        ``refetch``: serve it, but fetch a new one at once (a reload changed the secret).
        """
        now = self._clock.now()
        record = self._files.stored(self.app, self.kind, now=now)
        if record is None or record.expired or now >= record.expires_at:
            return False
        self._hold(record, record.expires_at - now)
        self.next_at = self._planned = self._refresh_point(
            record, now, fetched_at=record.fetched_at, expires_at=record.expires_at
        )
        if record.interrupted() or refetch:
            # Interrupted: WeChat may have issued a newer token, killing this one soon.
            self.next_at = self._planned = now
        self._files.save_now(record)  # repairs a bare file left behind by a crash; no-op otherwise
        REDACTOR.register(f"{self.kind}:{self.app.name}", record.access_token, label="<token>")
        self._metrics.refresh(self.app.name, self.credential, "reused", None)
        self._metrics.token(self.app.name, expires_at=record.expires_at, kind=self.kind)
        self._log.info(
            "refresh",
            outcome="reused",
            fingerprint=fingerprint(record.access_token),
            expires_in=int(record.expires_at - now),
            next_refresh=iso(self.next_at),
            interrupted_fetch=record.interrupted() or None,
        )
        return True

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

    # -- outcomes ------------------------------------------------------------

    async def _succeeded(self, token: Token, outcome: str = "ok") -> None:
        now = self._clock.now()
        self.failures, self.last_error = 0, None
        self._metrics.failures(self.app.name, 0, kind=self.kind)
        previous = self.record
        if (
            self.credential_kind.repeat_keeps_times
            and previous is not None
            and self.has_valid_token()  # else (a clock step, a long stop) its times are stale
            and token.access_token == previous.access_token
        ):
            self.next_at = unchanged_retry_at(
                now=now,
                fetched_at=previous.fetched_at,
                expires_at=previous.expires_at,
                rng=self._rng,
                policy=self._policy,
                grant=self.schedule_grant,
            )
            self._log_refresh("unchanged", token, now)
            return
        record = Record.of(
            token,
            appid=self.app.appid,
            name=self.app.name,
            grant=self.app.grant,
            api_base=self.app.api_base,
            kind=self.kind,
        )
        REDACTOR.register(f"{self.kind}:{self.app.name}", token.access_token, label="<token>")
        self._hold(record, token.expires_at - now)
        self._planned = self._refresh_point(
            record, now, fetched_at=token.fetched_at, expires_at=token.expires_at
        )
        self.next_at = self._planned  # before the write: it yields, and may be cancelled
        saved = await self._write(record)
        self._announce_arrival()
        self._metrics.token(
            self.app.name, expires_at=record.expires_at, fetched=now, kind=self.kind
        )
        self._log_refresh(outcome if saved else "unsaved", token, now)

    async def _failed(self, error: FetchError) -> None:
        now = self._clock.now()
        self.failures += 1
        self.last_error = error
        left = self.valid_for()
        valid_until = now + left if left > 0 else None
        self.next_at = retry_at(
            now=now,
            error=error,
            attempt=self.failures,
            rng=self._rng,
            policy=self._policy,
            expires_at=valid_until,
        )
        self._metrics.refresh(self.app.name, self.credential, error.outcome, error.errcode)
        self._metrics.failures(self.app.name, self.failures, kind=self.kind)
        log = self._log.warning if isinstance(error, TransientError) else self._log.error
        if isinstance(error, DailyQuotaError):
            self._log.error(
                "daily quota used up: no more fetches for this app until the reset",
                reset_at=iso(self.next_at),
            )
        log(
            "refresh",
            outcome=error.outcome,
            errcode=error.errcode,
            error=str(error),
            hint=error.hint or None,
            attempt=self.failures,
            next_refresh=iso(self.next_at),
            token_valid_for=int(valid_until - now) if valid_until else 0,
        )
        await self._mark_if_expired()

    def _log_refresh(self, outcome: str, token: Token, now: float) -> None:
        self._metrics.refresh(self.app.name, self.credential, outcome, 0)
        self._log.info(
            "refresh",
            outcome=outcome,
            errcode=0,
            fingerprint=fingerprint(token.access_token),
            expires_in=token.expires_in,
            next_refresh=iso(self.next_at),
            next_refresh_in=round(self.next_at - now, 1),
        )

    def _refresh_point(
        self, record: Record, now: float, *, fetched_at: float, expires_at: float
    ) -> float:
        """When to replace ``record``: in a fleet, at one point per token (see schedule)."""
        # The token's exact times when known: the record's are floored to whole seconds.
        when = {"now": now, "fetched_at": fetched_at, "expires_at": expires_at}
        grant, rng, policy = self.schedule_grant, self._rng, self._policy
        if isinstance(self._obtain, InFleet):
            token_print = fingerprint(record.access_token)
            return fleet_refresh_at(
                **when, token_print=token_print, grant=grant, rng=rng, policy=policy
            )
        return refresh_at(**when, grant=grant, rng=rng, policy=policy)

    # -- waiting for a dependency, or for a token to arrive ------------------

    def _announce_arrival(self) -> None:
        """Wake everything waiting for a token (ticket loops at a cold start)."""
        arrived, self._arrived = self._arrived, asyncio.Event()
        arrived.set()

    async def until_valid(self, within: float | None) -> bool:
        """Until this loop holds a valid token (True), or ``within`` seconds passed."""
        if self.has_valid_token():
            return True
        if within is None:
            await self._arrived.wait()
        else:
            await self._clock.wait(self._arrived, within)
        return self.has_valid_token()

    async def _await_dependency(self) -> None:
        """Sleep until the value this kind is fetched with is valid, woken when it arrives.

        A cold start fetches the token first; a token that keeps failing is the token
        loop's error to report, not this one's. Meanwhile this loop's own file is
        still marked expired when its time comes.
        """
        dependency = self._dependency
        while dependency is not None and not dependency.has_valid_token():
            self.waiting_for_token = True
            record = self.record
            live = record is not None and not record.expired
            timeout = max(0.0, record.expires_at - self._clock.now()) if live and record else None
            if not await dependency.until_valid(timeout):
                await self._mark_if_expired(force=True)
        self.waiting_for_token = False

    # -- files ---------------------------------------------------------------

    async def _write(self, record: Record) -> bool:
        """Save, or keep the token in memory and retry the write soon (never refetch for it)."""
        files = self._files
        if await files.save(record):
            files.unsaved = False
            files.write_failures = 0
            self.next_at = self._planned
            if files.on_written is not None:
                files.on_written()
            return True
        files.unsaved = True
        files.write_failures += 1
        self.next_at = self._clock.now() + backoff(
            files.write_failures, self._rng, base=1.0, cap=30.0, floor=1.0
        )
        return False

    async def _mark_refreshing(self) -> None:
        """Before a classic fetch, note it in the JSON: it will invalidate the current token.

        If the note cannot be written, neither could the new token be: the fetch would
        only kill the token consumers hold. While that one is valid, the fetch waits
        (a transient error, retried with backoff) for the disk to come back.
        """
        record, files = self.record, self._files
        if self.schedule_grant != "classic" or record is None or files.unsaved:
            return
        if await files.save(record.refreshing(self._clock.now())):
            return
        if self.has_valid_token() and files.written_token == record.access_token:
            raise TransientError(
                f"fetch deferred, the token on disk stays valid: {files.write_error}",
                fix=files.write_hint or "",
            )

    async def _mark_if_expired(self, *, force: bool = False) -> None:
        record = self.record
        if record is None or record.expired:
            return
        if not force and self.valid_for() > 0:
            return
        self.record = record.as_expired()
        await self._files.save(self.record)
        error = self.last_error
        self._log.error(
            "token expired without a replacement; its file stays, marked expired in the JSON",
            last_error=str(error) if error else None,
            hint=error.hint if error else None,
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
