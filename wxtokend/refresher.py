"""One refresh loop per app: fetch, write, sleep until the schedule says so.

A :class:`Refresher` owns one app's token. It never has two fetches in flight
(a lock), takes a slot of the daemon-wide semaphore only for the network call,
and never touches the files except to replace a token with a newer one or to
note in the JSON that the token expired without a replacement.

It also answers *passive* refreshes — a consumer reporting that WeChat
rejected the token — by compare-and-refresh: only a report naming the current
token triggers a fetch, concurrent reports of the same token share it, and a
per-app minimum interval bounds how often reports can cost an upstream call.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import random
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Literal, Protocol

from wxtokend.clock import Clock, iso
from wxtokend.config import AppConfig, Grant, Ticket
from wxtokend.errors import (
    AdminWaitError,
    DailyQuotaError,
    FatalConfigError,
    FetchError,
    StateFileError,
    TokenRejectedError,
    TransientError,
    UnknownErrcodeError,
)
from wxtokend.fleet import Fleet, RedisDown, Shared
from wxtokend.logs import REDACTOR, get_logger
from wxtokend.metrics import Metrics
from wxtokend.redact import fingerprint
from wxtokend.schedule import (
    Policy,
    Rng,
    backoff,
    force_allowed_at,
    next_quota_reset,
    refresh_at,
    retry_at,
    unchanged_retry_at,
)
from wxtokend.store import TOKEN, Record, TokenStore, write_fix
from wxtokend.wechat import Token

__all__ = [
    "AppStatus",
    "Passive",
    "Refresher",
    "TicketRefresher",
    "TicketSource",
    "TokenSource",
    "Upstream",
]

State = Literal["pending", "ok", "failing", "expired"]
PassiveResult = Literal[
    "refreshed", "newer", "rate_limited", "force_budget_spent", "failed", "no_token"
]

_STUCK_AFTER = 60.0  # seconds a loop may be late, or a fetch run beyond its timeout


class TokenSource(Protocol):
    """Where tokens come from: the WeChat client, or a fake in tests."""

    async def fetch_token(self, app: AppConfig, *, force: bool = False) -> Token: ...


class TicketSource(Protocol):
    """Where tickets come from: the WeChat client, or a fake in tests."""

    async def fetch_ticket(self, app: AppConfig, kind: Ticket, access_token: str) -> Token: ...


class Upstream(TokenSource, TicketSource, Protocol):
    """Both: what the daemon talks to."""


@dataclass(frozen=True, kw_only=True)
class AppStatus:
    """A snapshot of one app for status pages, without the token itself."""

    name: str
    appid: str
    grant: str
    state: State
    expires_at: float | None
    fingerprint: str | None
    next_refresh: float
    consecutive_failures: int
    last_error: str | None
    hint: str | None


@dataclass(frozen=True, kw_only=True)
class Passive:
    """The answer to a passive refresh report."""

    result: PassiveResult
    status: AppStatus
    retry_after: float | None = None
    detail: str | None = None


class Refresher:
    """Keeps one app's token files fresh."""

    kind = TOKEN  # what this loop keeps: the token here, a ticket in TicketRefresher
    # Slots: one of these per app and ticket, and 10,000 instance dicts weighed ~15 MB.
    __slots__ = (
        "_arrived",
        "_clock",
        "_closed",
        "_expires_mono",
        "_files",
        "_fleet",
        "_fleet_held",
        "_fleet_version",
        "_flights",
        "_forces",
        "_last_passive",
        "_lock",
        "_log",
        "_metrics",
        "_on_written",
        "_passive_daily_limit",
        "_passive_min_interval",
        "_passive_today",
        "_plan",
        "_planned",
        "_policy",
        "_rng",
        "_semaphore",
        "_source",
        "_store",
        "_unpublished",
        "_unsaved",
        "_wake",
        "_wake_due",
        "app",
        "busy_since",
        "failures",
        "last_error",
        "next_at",
        "record",
        "write_error",
        "write_failures",
        "write_hint",
        "writing_since",
        "written_token",
    )

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
    ) -> None:
        self.app = app
        self._source = source
        self._store = store
        self._clock = clock
        self._rng = rng
        self._policy = policy
        self._semaphore = semaphore
        self._metrics = metrics or Metrics()
        self._fleet = fleet
        self._fleet_version: int | None = None  # the shared record's version we follow
        self._fleet_held = False
        self._unpublished: Shared | None = None
        self._passive_min_interval = passive_min_interval
        self._passive_daily_limit = passive_daily_limit
        self._passive_today: list[float] = []
        self._closed = False
        self._wake_due: float | None = None  # monotonic deadline of the current sleep
        self._plan = 0  # counts fetches: a loop whose plan is outdated must not fetch
        self._on_written = on_written
        self._lock = asyncio.Lock()
        self._files = asyncio.Lock()  # one file write at a time, in order
        self._wake = asyncio.Event()
        self._arrived = asyncio.Event()  # set (and replaced) whenever a new token is in place
        self._log = get_logger(
            app=app.name, appid=app.appid, grant=app.grant, **self._log_context()
        )
        self.record: Record | None = None
        # When the record's token expires on the monotonic clock: a wall clock set
        # back must not stretch its life (one set forward shortens it, by wall time).
        self._expires_mono = float("inf")
        self.next_at = clock.now()
        self._planned = self.next_at  # the refresh point, kept while a file write is retried
        self.failures = 0
        self.last_error: FetchError | None = None
        self._unsaved = False
        self.write_failures = 0
        self.write_error: str | None = None
        self.write_hint: str | None = None
        self.busy_since: float | None = None
        self.writing_since: float | None = None  # monotonic start of a file write in progress
        self.written_token: str | None = None  # the token the files on disk hold
        self._flights: dict[str, asyncio.Future[Passive]] = {}
        self._last_passive = float("-inf")
        self._forces: list[float] = []

    # -- what this loop keeps (TicketRefresher overrides these) ---------------

    def _log_context(self) -> dict[str, str]:
        return {}

    @property
    def schedule_grant(self) -> Grant:
        """Which timing rules apply: the app's grant for its token."""
        return self.app.grant

    @property
    def credential(self) -> str:
        """The label in metrics and status: the grant for a token, ``jsapi_ticket`` etc."""
        return self.app.grant

    async def _upstream(self, *, force: bool) -> Token:
        """The network call, holding a semaphore slot only while on the wire."""
        async with self._semaphore:
            self.busy_since = self._clock.monotonic()
            return await self._source.fetch_token(self.app, force=force)

    # -- state ---------------------------------------------------------------

    def clock_now(self) -> float:
        return self._clock.now()

    def on_disk(self) -> bool:
        """A valid token whose files are written (not just fetched)."""
        record = self.record
        return (
            self.has_valid_token()
            and record is not None
            and record.access_token == self.written_token
            and not self.write_error
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
        record, error = self.record, self.last_error
        problem = str(error) if error else self.write_error
        state: State
        if record is None:
            state = "pending"
        elif not self.has_valid_token():
            state = "expired"
        else:
            state = "failing" if problem else "ok"
        return AppStatus(
            name=self.app.name,
            appid=self.app.appid,
            grant=self.credential,
            state=state,
            expires_at=record.expires_at if record else None,
            fingerprint=fingerprint(record.access_token) if record else None,
            next_refresh=self.next_at,
            consecutive_failures=self.failures,
            last_error=problem,
            hint=error.hint if error else (self.write_hint if self.write_error else None),
        )

    def stuck(self, *, fetch_limit: float) -> str | None:
        """Why this loop looks stuck (a fetch hanging, a wake-up long overdue), or None.

        Measured on the monotonic clock, so a wall-clock step is no false alarm;
        waiting for a semaphore slot or a long back-off is not being stuck.
        """
        mono = self._clock.monotonic()
        if self.busy_since is not None and mono - self.busy_since > fetch_limit + _STUCK_AFTER:
            return f"a fetch has been running for {int(mono - self.busy_since)} s"
        writing = self.writing_since
        if writing is not None and mono - writing > fetch_limit + _STUCK_AFTER:
            return f"a file write has been running for {int(mono - writing)} s"
        due = self._wake_due
        if self.busy_since is None and due is not None and mono - due > _STUCK_AFTER:
            return f"its wake-up is {int(mono - due)} s overdue"
        return None

    async def close(self) -> None:
        """Stop for good (reload removed or replaced this app): finish any fetch, write nothing."""
        async with self._lock:
            self._closed = True

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
        try:
            record = self._store.load(self.app.name, self.kind, now=self._clock.now())
        except StateFileError as exc:
            self._metrics.rejected("state_file")
            self._log.warning("state file ignored", reason=str(exc), fix="it will be replaced")
            return False
        if record is None:
            return False
        if record.appid != self.app.appid:
            # Another account's token must not be served under this app's name.
            self._store.remove(self.app.name, (self.kind,))
            self._log.warning(
                "state file removed",
                reason=f"it holds a token of appid {record.appid}, not {self.app.appid}",
            )
            return False
        if (record.grant, record.api_base) != (self.app.grant, self.app.api_base):
            self._log.warning(
                "state file not reused",
                reason=f"fetched with grant {record.grant} from {record.api_base or '?'}",
                fix="a new token replaces it now",
            )
            return False
        now = self._clock.now()
        if record.expired or now >= record.expires_at:
            return False
        self._hold(record, record.expires_at - now)
        self.next_at = self._planned = self._refresh_point(record, now)
        if record.interrupted() or refetch:
            # Interrupted: WeChat may have issued a newer token, killing this one soon.
            self.next_at = self._planned = now
        self._save_now(record)  # repairs a bare file left behind by a crash; no-op otherwise
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
        """Refresh forever; cancel the task to stop."""
        while True:
            plan = self._plan
            if await self._sleep_until(self.next_at):
                await self.step(plan)

    async def step(self, plan: int | None = None) -> None:
        """Whatever is due now: retry a failed file write, or refresh."""
        if self._unsaved and self.record is not None:
            await self._write(self.record)
            return
        async with self._lock:
            # A passive refresh may have run while this waited for the lock; it
            # re-planned, and fetching anyway would (classic) kill its new token.
            if plan is None or plan == self._plan:
                await self._fetch(force=False)

    async def ensure(self, *, attempts: int = 3) -> bool:
        """For ``--once``: a valid token on disk, fetched only if needed, retrying transients."""
        if self.has_valid_token() and self.next_at > self._clock.now():
            return True
        for attempt in range(attempts):
            if await self.refresh() and not self._unsaved:
                return True
            if self._unsaved:
                break
            if not isinstance(self.last_error, TransientError) or attempt == attempts - 1:
                break
            await self._clock.sleep(backoff(attempt + 1, self._rng, base=1.0, cap=5.0, floor=1.0))
        return self.has_valid_token() and not self._unsaved

    async def refresh(self, *, force: bool = False) -> bool:
        """One fetch for this app (never two at once); True on success."""
        async with self._lock:
            return await self._fetch(force=force)

    async def _fetch(self, *, force: bool, stale: str | None = None) -> bool:
        """The fetch itself; the caller holds the lock.

        ``stale`` is the token being replaced (a passive report names it);
        by default the current one.
        """
        if self._closed:
            return False
        if stale is None and self.record is not None:
            stale = self.record.access_token
        try:
            try:
                token, outcome = await self._obtain(force=force, stale=stale)
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

    # -- fleet mode ------------------------------------------------------------

    @property
    def fleet_key(self) -> str:
        """This credential's name in Redis (a WeCom corp's applications differ by secret)."""
        key = f"{self.app.appid}:{self.app.grant}"
        if self.app.kind == "wecom":
            key += f":{fingerprint(self.app.secret.reveal())}"
        return key if self.kind == TOKEN else f"{key}:{self.kind}"

    async def _obtain(self, *, force: bool, stale: str | None) -> tuple[Token, str]:
        """A new token: from the fleet's shared record if a newer one is there, else fetched."""
        fleet = self._fleet
        if fleet is None:
            await self._mark_refreshing()
            return await self._upstream(force=force), "ok"
        try:
            return await self._obtain_in_fleet(fleet, force=force, stale=stale)
        except RedisDown as exc:
            if fleet.settings.role == "member" and (
                self.schedule_grant != "classic" or fleet.settings.on_redis_down == "fetch"
            ):
                # Stable normal mode (and WeCom) cannot invalidate anyone's token.
                self._log.warning("Redis unreachable: fetching directly", error=str(exc))
                await self._mark_refreshing()
                return await self._upstream(force=force), "ok"
            raise TransientError(
                f"Redis unreachable, and this instance may not fetch alone: {exc}",
                fix="restore Redis; classic-grant members never fetch independently (that"
                " starts the invalidation war) unless fleet.on_redis_down is fetch",
            ) from None

    async def _obtain_in_fleet(
        self, fleet: Fleet, *, force: bool, stale: str | None
    ) -> tuple[Token, str]:
        key = self.fleet_key
        shared = await fleet.read(key)
        if self._is_newer(shared, stale):
            assert shared is not None
            return self._adopted(shared)
        if fleet.settings.role == "follower":
            raise TransientError(
                "follower: waiting for a member of the fleet to refresh",
                fix="followers never fetch; check that a member runs and reaches Redis",
            )
        if self._fleet_held:  # a passive refresh already holds the fleet's lock
            return await self._fetch_and_publish(fleet, key, force=force)
        async with fleet.lock(key, wait=fleet.settings.lock_ttl + 1) as held:
            shared = await fleet.read(key)
            if self._is_newer(shared, stale):
                assert shared is not None
                return self._adopted(shared)
            if not held:
                raise TransientError(
                    "another instance holds the fetch lock and published nothing yet",
                    retry="retrying; its lock expires after fleet.lock_ttl if it died",
                )
            return await self._fetch_and_publish(fleet, key, force=force)

    async def _fetch_and_publish(self, fleet: Fleet, key: str, *, force: bool) -> tuple[Token, str]:
        version = await fleet.next_version(key)  # before the fetch: older fetches lose
        await self._mark_refreshing()
        token = await self._upstream(force=force)
        record = Shared(
            credential=key,
            token=token.access_token,
            expires_at=token.expires_at,
            fetched_at=token.fetched_at,
            version=version,
        )
        try:
            if await fleet.write(key, record):
                self._fleet_version = version
                return token, "ok"
            newest = await fleet.read(key)  # someone newer won the race: follow them
        except RedisDown as exc:
            # WeChat issued it (and, classic, killed the old one): never drop it.
            self._unpublished = record
            self._fleet_version = version
            self._log.error(
                "fetched a token but could not publish it to the fleet; retrying",
                error=str(exc),
            )
            return token, "ok"
        if newest is not None and newest.expires_at > self._clock.now():
            return self._adopted(newest)
        return token, "ok"

    def _adopted(self, shared: Shared) -> tuple[Token, str]:
        self._fleet_version = shared.version
        return _token_of(shared), "shared"

    @contextlib.asynccontextmanager
    async def _fleet_hold(self) -> AsyncIterator[None]:
        """Hold the fleet's lock across a whole passive refresh (normal call, then force),
        so the fleet makes one refresh per stale token and counts forces in order."""
        fleet = self._fleet
        if fleet is None or fleet.settings.role == "follower":
            yield
            return
        async with contextlib.AsyncExitStack() as stack:
            try:
                held = await stack.enter_async_context(
                    fleet.lock(self.fleet_key, wait=fleet.settings.lock_ttl + 1)
                )
            except RedisDown:
                held = False
            self._fleet_held = held
            try:
                yield
            finally:
                self._fleet_held = False

    def _is_newer(self, shared: Shared | None, stale: str | None) -> bool:
        """A shared record worth taking instead of fetching: another, valid, newer token.

        ``shared`` has passed Fleet.read's checks (signature, key, credential.check).
        """
        if shared is None or shared.expires_at <= self._clock.now() + 1:
            return False
        current = self.record
        for known in (stale, current.access_token if current else None):
            if known is not None and hmac.compare_digest(shared.token.encode(), known.encode()):
                return False
        if self._fleet_version is not None and shared.version > self._fleet_version:
            return True  # versions, not clocks of different hosts
        # No version followed yet, or a version not above ours with another token: Redis
        # lost its state (FLUSHALL, a restart without persistence) and counting restarted.
        # Only then do fetch times decide, and never backwards.
        return current is None or shared.fetched_at >= current.fetched_at

    async def follow_fleet(self) -> bool:
        """Take the fleet's record if it is newer (pub/sub push or reconcile); no fetch."""
        fleet = self._fleet
        if fleet is None or self._closed:
            return False
        async with self._lock:
            current = self.record.access_token if self.record else None
            try:
                if self._unpublished is not None:
                    await fleet.write(self.fleet_key, self._unpublished)  # refused if stale
                    self._unpublished = None
                shared = await fleet.read(self.fleet_key)
            except RedisDown:
                return False
            if not self._is_newer(shared, current):
                return False
            assert shared is not None
            token, outcome = self._adopted(shared)
            await self._succeeded(token, outcome)
            self._plan += 1
            self._wake.set()
            return True

    # -- passive refresh -----------------------------------------------------

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
        record = self.record
        if record is None:
            return self._passive("no_token", detail="no token yet: the first fetch is under way")
        current = record.access_token
        if token is not None:
            named = hmac.compare_digest(token.encode(), current.encode())
        else:
            named = hmac.compare_digest(
                (token_fingerprint or "").encode(), fingerprint(current).encode()
            )
        if not named:
            return self._passive("newer", detail="a newer token is already in place")
        flight = self._flights.get(current)
        if flight is None:
            refusal = self._passive_refusal(internal=internal)
            if refusal is not None:
                return refusal
            self._last_passive = self._clock.now()
            if not internal:
                self._passive_today.append(self._last_passive)
            flight = asyncio.ensure_future(self._passive_refresh(current, allow_force))
            self._flights[current] = flight
            flight.add_done_callback(lambda _: self._flights.pop(current, None))
        answer = await asyncio.shield(flight)
        if not internal:
            self._metrics.passive(self.app.name, answer.result)
        return answer

    def _passive_refresh_blocked(self, now: float) -> Passive | None:
        """No report may break a wait WeChat imposed (quota, admin, a wrong secret)."""
        error = self.last_error
        waiting = isinstance(
            error, DailyQuotaError | AdminWaitError | FatalConfigError | UnknownErrcodeError
        )
        if error is not None and waiting and self.next_at > now:
            return self._passive(
                "failed",
                retry_after=self.next_at - now,
                detail=f"not asking WeChat before {iso(self.next_at)}: {error}",
            )
        return None

    def _passive_refusal(self, *, internal: bool = False) -> Passive | None:
        now = self._clock.now()
        blocked = self._passive_refresh_blocked(now)
        if blocked is not None:
            return blocked
        wait = self._last_passive + self._passive_min_interval - now
        if wait > 0:
            return self._passive(
                "rate_limited",
                retry_after=wait,
                detail="this app was refreshed on a report moments ago",
            )
        if internal:
            return None
        day_start = next_quota_reset(now) - 86400
        self._passive_today = [t for t in self._passive_today if t >= day_start]
        if len(self._passive_today) >= self._passive_daily_limit:
            if len(self._passive_today) == self._passive_daily_limit:
                self._log.error(
                    "passive refresh limit for today reached: a consumer keeps reporting fresh"
                    " tokens as rejected (wrong appid's token? wrong API?)",
                    limit=self._passive_daily_limit,
                )
                self._passive_today.append(now)  # log once
            return self._passive(
                "rate_limited",
                retry_after=next_quota_reset(now) - now,
                detail=f"{self._passive_daily_limit} refreshes on reports today already",
            )
        return None

    async def _passive_refresh(self, stale: str, allow_force: bool) -> Passive:
        async with self._lock, self._fleet_hold():
            if self.record is None or self.record.access_token != stale:
                return self._answer("newer", detail="replaced while this report waited")
            if not await self._fetch(force=False, stale=stale):
                return self._answer("failed", detail=str(self.last_error or "stopped"))
            if self.record.access_token != stale:
                return self._answer("refreshed")
            if not allow_force or self.schedule_grant != "stable":
                # Only the stable grant has a force mode; WeCom repeats a valid token.
                return self._answer("newer", detail="WeChat confirmed the current token is valid")
            # Stable grant: normal mode returned the same token, so WeChat still
            # thinks it valid while a consumer saw it rejected: it really is dead.
            return await self._force(stale)

    async def _force(self, stale: str) -> Passive:
        now = self._clock.now()
        try:
            used = await self._forces_used(now)
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
        await self._use_force(now)
        before = (self.next_at, self.last_error, self.failures)
        if not await self._fetch(force=True):
            if isinstance(self.last_error, DailyQuotaError):
                # The *force* budget is spent (maybe by others, or before a restart):
                # that must not stop the regular normal-mode refreshes for the day.
                self.next_at, self.last_error, self.failures = before
                self._forces.extend([now] * 20)
                return self._answer(
                    "force_budget_spent",
                    retry_after=next_quota_reset(now) - now,
                    detail="WeChat says today's force_refresh budget is spent",
                )
            return self._answer("failed", detail=str(self.last_error))
        if self.record is None or self.record.access_token == stale:
            return self._answer("failed", detail="WeChat returned the same token to force_refresh")
        return self._answer("refreshed")

    async def _forces_used(self, now: float) -> list[float]:
        """Force refreshes used: by the whole fleet (in Redis) or by this daemon."""
        if self._fleet is None:
            return self._forces
        return await self._fleet.forces_since(self.fleet_key, now - 86400)

    async def _use_force(self, now: float) -> None:
        self._forces.append(now)
        if self._fleet is not None:
            with contextlib.suppress(RedisDown):
                await self._fleet.record_force(self.fleet_key, now)

    def _passive(
        self, result: PassiveResult, *, retry_after: float | None = None, detail: str | None = None
    ) -> Passive:
        self._metrics.passive(self.app.name, result)
        return self._answer(result, retry_after=retry_after, detail=detail)

    def _answer(
        self, result: PassiveResult, *, retry_after: float | None = None, detail: str | None = None
    ) -> Passive:
        return Passive(result=result, status=self.status(), retry_after=retry_after, detail=detail)

    # -- outcomes ------------------------------------------------------------

    async def _succeeded(self, token: Token, outcome: str = "ok") -> None:
        now = self._clock.now()
        self.failures, self.last_error = 0, None
        self._metrics.failures(self.app.name, 0, kind=self.kind)
        previous = self.record
        if (
            self.kind == TOKEN  # a ticket repeated is simply valid for expires_in from now
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

    # -- files ---------------------------------------------------------------

    async def _write(self, record: Record) -> bool:
        """Save, or keep the token in memory and retry the write soon (never refetch for it)."""
        if await self._save(record):
            self._unsaved = False
            self.write_failures = 0
            self.next_at = self._planned
            if self._on_written is not None:
                self._on_written()
            return True
        self._unsaved = True
        self.write_failures += 1
        self.next_at = self._clock.now() + backoff(
            self.write_failures, self._rng, base=1.0, cap=30.0, floor=1.0
        )
        return False

    async def _save(self, record: Record) -> bool:
        """Write in a worker thread: fsync waits on the disk, and the loop serves on meanwhile.

        Writes of one app queue on ``_files`` in the order they were asked for (the lock
        is fair), so the newest record is always the one left on disk.
        """
        async with self._files:
            if self._closed:
                return True  # removed or replaced by a reload: its files are not ours any more
            self.writing_since = self._clock.monotonic()
            try:
                await _in_thread(self._store.save, record)
            except OSError as exc:
                return self._write_failed(exc)
            finally:
                self.writing_since = None
            self.written_token = record.access_token
            self.write_error = self.write_hint = None
        return True

    def _save_now(self, record: Record) -> bool:
        """The same, in the caller's thread: at start, before the loops run."""
        try:
            self._store.save(record)
        except OSError as exc:
            return self._write_failed(exc)
        self.written_token = record.access_token
        self.write_error = self.write_hint = None
        return True

    def _write_failed(self, exc: OSError) -> bool:
        where = exc.filename or self._store.directory
        self.write_hint = write_fix(exc)
        self.write_error = f"cannot write token files: {exc.strerror} ({where}) — {self.write_hint}"
        self._metrics.write_error()
        self._log.error("write failed", error=self.write_error)
        return False

    async def _mark_refreshing(self) -> None:
        """Before a classic fetch, note it in the JSON: it will invalidate the current token.

        If the note cannot be written, neither could the new token be: the fetch would
        only kill the token consumers hold. While that one is valid, the fetch waits
        (a transient error, retried with backoff) for the disk to come back.
        """
        record = self.record
        if self.schedule_grant != "classic" or record is None or self._unsaved:
            return
        if await self._save(record.refreshing(self._clock.now())):
            return
        if self.has_valid_token() and self.written_token == record.access_token:
            raise TransientError(
                f"fetch deferred, the token on disk stays valid: {self.write_error}",
                fix=self.write_hint or "",
            )

    async def _mark_if_expired(self, *, force: bool = False) -> None:
        record = self.record
        if record is None or record.expired:
            return
        if not force and self.valid_for() > 0:
            return
        self.record = record.as_expired()
        await self._save(self.record)
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

    def _refresh_point(
        self,
        record: Record,
        now: float,
        *,
        fetched_at: float | None = None,
        expires_at: float | None = None,
    ) -> float:
        """When to replace ``record``.

        In a fleet every instance draws the *same* jitter for the same token (seeded
        by its fingerprint), plus a small offset of its own: the fleet then refreshes
        at one point per token, not at the earliest of N independent draws, and the
        instances do not all reach for the lock at the same instant.
        """
        # The token's exact times when known: the record's are floored to whole seconds.
        fetched = record.fetched_at if fetched_at is None else fetched_at
        expires = record.expires_at if expires_at is None else expires_at
        rng: Rng = self._rng
        if self._fleet is not None:
            rng = random.Random(int(fingerprint(record.access_token), 16))
        at = refresh_at(
            now=now,
            fetched_at=fetched,
            expires_at=expires,
            grant=self.schedule_grant,
            rng=rng,
            policy=self._policy,
        )
        if self._fleet is not None and at > now and self.schedule_grant != "wecom":
            at += self._rng.uniform(0, 0.01 * max(0.0, expires - fetched))
        return at


class TicketRefresher(Refresher):
    """Keeps one of an app's tickets fresh, fetched with the app's current token.

    A ticket fetch refused for its token (40001/40014/42001) goes through the
    token's compare-and-refresh, then asks once more: one token refresh per dead
    token, never a loop.
    """

    __slots__ = ("_refusing", "_tickets", "_tokens", "kind", "ticket", "waiting_for_token")

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
        self.kind = kind
        self.ticket: Ticket = kind
        self._refusing = False  # fresh tokens refused too: stop refreshing the token for it
        self.waiting_for_token = False
        self._tokens = tokens
        self._tickets = tickets
        super().__init__(
            app,
            source=tokens._source,
            store=store,
            clock=clock,
            rng=rng,
            policy=policy,
            semaphore=semaphore,
            metrics=metrics,
            fleet=fleet,
            on_written=on_written,
        )

    def _log_context(self) -> dict[str, str]:
        return {"ticket": self.kind}

    @property
    def schedule_grant(self) -> Grant:
        # Whether a re-fetch invalidates the previous ticket is not documented:
        # assume it may, like a classic token, and replace tickets well ahead.
        return "classic"

    @property
    def credential(self) -> str:
        return f"{self.kind}_ticket"

    async def run(self) -> None:
        """Like the token's loop, but no fetch (and no failure) before the token is valid."""
        while True:
            await self._await_token()
            plan = self._plan
            if await self._sleep_until(self.next_at):
                await self.step(plan)

    async def _await_token(self) -> None:
        """Sleep until the app's token is valid, woken when it arrives.

        A cold start fetches the token first; a token that keeps failing is the token
        loop's error to report, not this one's. Meanwhile this ticket's own file is
        still marked expired when its time comes.
        """
        while not self._tokens.has_valid_token():
            self.waiting_for_token = True
            record = self.record
            live = record is not None and not record.expired
            timeout = max(0.0, record.expires_at - self._clock.now()) if live and record else None
            if not await self._tokens.until_valid(timeout):
                await self._mark_if_expired(force=True)
        self.waiting_for_token = False

    async def ensure(self, *, attempts: int = 3) -> bool:
        """For ``--once``: without a valid token there is nothing to fetch the ticket with."""
        if not self._tokens.has_valid_token():
            self.waiting_for_token = True
            return self.has_valid_token()
        return await super().ensure(attempts=attempts)

    def status(self) -> AppStatus:
        status = super().status()
        if not self.waiting_for_token or status.last_error is not None:
            return status
        token = self._tokens.status()
        why = f": {token.last_error}" if token.last_error else ""
        return replace(status, last_error=f"waiting for the access_token{why}", hint=token.hint)

    async def _upstream(self, *, force: bool) -> Token:
        for attempt in (1, 2):
            token = self._tokens.record
            if token is None or not self._tokens.has_valid_token():
                raise TransientError(
                    "no valid access_token yet", retry="the ticket is fetched once the token is"
                )
            try:
                async with self._semaphore:
                    self.busy_since = self._clock.monotonic()
                    ticket = await self._tickets.fetch_ticket(
                        self.app, self.ticket, token.access_token
                    )
                self._refusing = False
                return ticket
            except TokenRejectedError:
                self.busy_since = None
                if attempt == 2 or self._refusing:
                    # Even a freshly issued token is refused: refreshing again cannot help
                    # and would kill the token consumers hold. Wait as for a fatal error.
                    self._refusing = True
                    raise FatalConfigError(
                        f"the {self.kind} ticket endpoint refuses even a fresh access_token",
                        errcode=40001,
                        fix="another system may be refreshing this appid's token (classic"
                        " grant), or the account may not use this ticket",
                    ) from None
                answer = await self._tokens.report_rejected(
                    token=token.access_token, allow_force=False, internal=True
                )
                self._log.warning(
                    "the ticket fetch was refused for its token: refreshed the token first",
                    result=answer.result,
                )
        raise AssertionError("unreachable")


_WRITER_POOL: ThreadPoolExecutor | None = None


def _writers() -> ThreadPoolExecutor:
    """File writes get threads of their own: in the default executor they queued with
    aiohttp's DNS lookups, which could then time out behind a burst of fsyncs."""
    global _WRITER_POOL
    if _WRITER_POOL is None:
        _WRITER_POOL = ThreadPoolExecutor(max_workers=4, thread_name_prefix="wxtokend-write")
    return _WRITER_POOL


async def _in_thread(work: Callable[[Record], object], record: Record) -> None:
    """``work(record)`` in the default executor. If the caller is cancelled meanwhile, the
    thread still finishes before the cancellation goes on, so no later write overlaps it."""
    future = asyncio.get_running_loop().run_in_executor(_writers(), work, record)
    try:
        await asyncio.shield(future)
    except asyncio.CancelledError:
        while not future.done():  # a second cancellation must not cut this wait short
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait({future})
        raise


def _token_of(shared: Shared) -> Token:
    """A fleet record as if just fetched: same token, its own fetch time and expiry."""
    lifetime = max(1, round(shared.expires_at - shared.fetched_at))  # 1 s to a day: checked
    return Token(access_token=shared.token, expires_in=lifetime, fetched_at=shared.fetched_at)
