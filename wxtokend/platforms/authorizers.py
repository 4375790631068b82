"""Every authorizer of one platform: its refresh token, its token, its plan.

Platforms act for up to hundreds of thousands of accounts, so an authorizer is
a small slotted entry, not a loop of its own: one scheduler keeps a heap of
due times and a fixed pool of workers refreshes what is due, each fetch under a
slot of the daemon's concurrency limit. Rules of one refresh:

- the refresh token WeChat returns is written to the vault *before* anything
  else (a crash after that loses nothing; before it, the old one still stands,
  and ``api_get_authorizer_list`` recovers the current one);
- 61023/61003 mark that authorizer as needing re-authorization: loud, counted,
  never retried until an ``authorized`` event brings a new code; the others go on;
- a component token WeChat rejects is reported to the component loop
  (compare-and-refresh), and the authorizer retries shortly;
- the token files are replaced only with a newer valid token, never blanked;
- in fleet mode (a :class:`~wxtokend.platforms.shared.GrantShare`) an authorizer is
  refreshed by the instance that takes its lock; the others adopt the record it
  publishes (pushed by pub/sub, or read when their own timer fires) and call nothing.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from wxtokend.clock import Clock
from wxtokend.credential import Token
from wxtokend.errors import FetchError, ReauthorizationNeeded, StateFileError, TransientError
from wxtokend.kinds.base import Dependency
from wxtokend.platforms.calls import Sender
from wxtokend.platforms.due import DueTimes
from wxtokend.platforms.products import OPEN_PLATFORM, Product
from wxtokend.platforms.shared import GrantShare
from wxtokend.platforms.vault import Grant, Vault
from wxtokend.platforms.writes import Writes
from wxtokend.schedule import Policy, Rng, refresh_at, retry_at
from wxtokend.store import TokenStore

__all__ = ["Authorizer", "AuthorizerBook", "count"]

_COMPONENT_REJECTED = (40001, 40014, 42001)
_NEVER = math.inf


@dataclass(slots=True)
class Authorizer:
    """One authorizer account: ~200 bytes, so 100,000 of them fit in a few tens of MB."""

    appid: str
    refresh_token: str | None = field(default=None, repr=False)
    token: str | None = field(default=None, repr=False)
    fetched_at: float = 0.0
    expires_at: float = 0.0
    next_at: float = 0.0
    failures: int = 0
    error: FetchError | None = None
    unsaved: bool = False  # its refresh token is not in the vault yet (a failed write)
    unwritten: bool = False  # its token is not in its files yet (a failed write)
    unshared: bool = False  # fleet mode: its grant is not in Redis yet
    version: int = 0  # fleet mode: the version of the fleet's record it holds
    rejected: str | None = field(default=None, repr=False)  # a token WeChat refused (proxy)

    def valid(self, now: float) -> bool:
        return self.token is not None and now < self.expires_at

    def hold(self, refresh_token: str, *, saved: bool) -> None:
        """A refresh token WeChat gave out (a fresh start): earlier errors are moot."""
        self.refresh_token, self.error, self.failures = refresh_token, None, 0
        self.unsaved = not saved

    def refused(self) -> bool:
        """The token held is one WeChat refused in a proxied call: refresh it first."""
        return self.rejected is not None and self.rejected == self.token

    @property
    def needs_authorization(self) -> bool:
        return self.refresh_token is None or isinstance(self.error, ReauthorizationNeeded)


class AuthorizerBook:
    """One platform's authorizers, refreshed by a pool of workers from a heap of due times."""

    def __init__(
        self,
        *,
        sender: Sender,
        component: Dependency,
        vault: Vault,
        store: TokenStore,
        clock: Clock,
        rng: Rng,
        policy: Policy,
        semaphore: asyncio.Semaphore,
        log: Any,
        workers: int = 16,
        on_outcome: Any = None,
        product: Product = OPEN_PLATFORM,
        recover: Callable[[str], Awaitable[str | None]] | None = None,
        share: GrantShare | None = None,
    ) -> None:
        self._product = product
        self._recover = recover  # an account's current grant, as WeChat lists it
        self._send, self._component = sender, component
        self._vault, self._store = vault, store
        self._clock, self.rng, self._policy = clock, rng, policy
        self._semaphore = semaphore
        self._log = log
        self._on_outcome = on_outcome or (lambda outcome: None)  # counts by outcome, for metrics
        self.entries: dict[str, Authorizer] = {}
        self._due = DueTimes(clock=clock, workers=workers)
        self._share = share
        # Fleet mode: how a due authorizer is refreshed (fleet_book.FleetBook.refresh).
        self.in_fleet: Callable[[Authorizer], Awaitable[None]] | None = None
        self._writes = Writes(
            vault=vault, store=store, api_base=sender.app.api_base, log=log, share=share
        )
        self._grants = self._writes.grants
        self.refreshes = 0  # upstream refreshes done (for metrics)

    # -- start ------------------------------------------------------------------

    def adopt_stored(self, expected: tuple[str, ...]) -> list[str]:
        """Load refresh tokens and still-valid token files; problems come back as lines."""
        grants, problems = self._vault.grants()
        now = self._clock.now()
        for grant in grants:
            entry = Authorizer(appid=grant.appid, refresh_token=grant.refresh_token)
            self.entries[grant.appid] = entry
            loaded = _load_token(self._store, entry, now)
            entry.next_at = self.refresh_point(entry, now) if loaded else now
        for appid in expected:
            self.entries.setdefault(appid, Authorizer(appid=appid))
        for entry in self.entries.values():
            if entry.refresh_token is not None:
                self.plan(entry, entry.next_at)
        return problems

    # -- events and sync ---------------------------------------------------------

    async def authorize(self, code: str, appid: str | None = None) -> Authorizer:
        """An authorization event's code traded for the account's grant (and token).

        ``appid``: the account the event named (Open Platform), checked against the reply.
        """
        upper = await _component_token(self._component)
        fetched_at = self._clock.now()
        body = await self._call(self._product.authorize_call(self._send.app, upper, code))
        account, token, grant = self._product.read_authorize(body, fetched_at=fetched_at)
        if appid is not None and account != appid:
            raise TransientError("the authorization reply is for another account")
        entry = self.entries.setdefault(account, Authorizer(appid=account))
        entry.error = None
        if token is None:  # the reply had the grant only: fetch the token with it now
            entry.refresh_token = grant
            entry.unshared = self._share is not None  # newer than any the fleet holds
            await self._grants.save(
                Grant(appid=account, refresh_token=grant, updated_at=fetched_at)
            )
            self.plan(entry, self._clock.now())
        else:
            await self._keep(entry, token, grant)
        self._log.info("account authorized the platform", authorizer=account)
        return entry

    def adopt_listed(self, appid: str, refresh_token: str) -> bool:
        """A refresh token from a sweep of ``api_get_authorizer_list``; True if new to us.

        Held in memory only, and due now: its first refresh saves the grant it rotates
        to. Until then WeChat's list is the durable copy (a crash reads it again), so a
        fresh start of 100,000 accounts does not fsync 100,000 grants twice.
        """
        entry = self.entries.setdefault(appid, Authorizer(appid=appid))
        if entry.refresh_token == refresh_token and not entry.needs_authorization:
            return False
        entry.hold(refresh_token, saved=False)
        if not entry.valid(self._clock.now()):
            self.plan(entry, self._clock.now())
        return True

    async def adopt_grant(self, appid: str, refresh_token: str) -> bool:
        """One account's refresh token recovered from the list: saved before it is used."""
        entry = self.entries.setdefault(appid, Authorizer(appid=appid))
        if entry.refresh_token == refresh_token and not entry.needs_authorization:
            return False
        grant = Grant(appid=appid, refresh_token=refresh_token, updated_at=self._clock.now())
        await self._grants.save(grant)
        entry.hold(refresh_token, saved=True)
        if not entry.valid(self._clock.now()):
            self.plan(entry, self._clock.now())
        return True

    # -- the scheduler ------------------------------------------------------------

    async def run(self) -> None:
        """Refresh what is due, forever; cancel to stop."""
        await self._due.run(self._refresh_due)

    async def _refresh_due(self, appid: str, at: float) -> None:
        entry = self.entries.get(appid)
        # Not due any more: re-planned later meanwhile, and that plan is on the heap too.
        # A token WeChat refused in a proxied call (rejections.py) is replaced regardless.
        if entry is None or (entry.next_at > self._clock.now() and not entry.refused()):
            return
        pending = entry.unsaved or entry.unwritten or entry.unshared
        if entry.valid(self._clock.now()) and pending and not entry.refused():
            await self.write(entry)  # writes failed: only they are retried, no call
        elif self.in_fleet is None:
            await self.refresh(entry)
        else:
            await self.in_fleet(entry)

    def plan(self, entry: Authorizer, at: float) -> None:
        entry.next_at = at
        self._due.plan(entry.appid, at)

    # -- one refresh ---------------------------------------------------------------

    async def refresh(self, entry: Authorizer) -> None:
        """One upstream refresh of ``entry`` with its refresh token."""
        refresh, entry.rejected = entry.refresh_token, None  # this attempt answers a refusal
        if refresh is None:
            return
        component: str | None = None
        try:
            component = await _component_token(self._component)
            call = self._product.refresh_call(self._send.app, component, entry.appid, refresh)
            fetched_at = self._clock.now()
            body = await self._call(call)
            token, grant = self._product.read_refresh(body, refresh, fetched_at=fetched_at)
            await self._keep(entry, token, grant)
        except FetchError as error:
            await self._failed(entry, error, component)

    async def _keep(self, entry: Authorizer, token: Token, refresh: str) -> None:
        """The vault first (the refresh token must never be lost), then the token files."""
        if refresh != entry.refresh_token:
            entry.refresh_token, entry.unsaved = refresh, True  # held in memory, whatever comes
        entry.token, entry.fetched_at, entry.expires_at = (
            token.access_token,
            token.fetched_at,
            token.expires_at,
        )
        entry.failures, entry.error, entry.unwritten = 0, None, True
        entry.unshared = self._share is not None
        await self.write(entry)
        self.refreshes += 1
        self._on_outcome("ok")

    async def write(self, entry: Authorizer) -> None:
        """What is not on disk yet; a failed write is tried again alone in 5 s."""
        if await self._writes.write(entry, self._clock.now()):
            self.plan(entry, self.refresh_point(entry, self._clock.now()))
        elif entry.unsaved or entry.unwritten:
            self.plan(entry, self._clock.now() + 5.0)
        else:  # only Redis is missing: the state_dir holds the grant meanwhile
            self.plan(entry, self._clock.now() + self.rng.uniform(10.0, 20.0))

    async def _failed(self, entry: Authorizer, error: FetchError, component: str | None) -> None:
        now = self._clock.now()
        entry.failures += 1
        entry.error = error
        self._on_outcome(error.outcome)
        if isinstance(error, ReauthorizationNeeded):
            if await self._recovered(entry):
                return
            entry.next_at = _NEVER
            self._log.error(
                "authorizer needs re-authorization: not refreshed until it authorizes again",
                authorizer=entry.appid,
                errcode=error.errcode,
                fix=error.fix,
            )
            return
        if error.errcode in _COMPONENT_REJECTED and component is not None:
            await self._component.report_rejected(token=component, allow_force=False, internal=True)
        valid_until = entry.expires_at if entry.valid(now) else None
        at = retry_at(
            now=now,
            error=error,
            attempt=entry.failures,
            rng=self.rng,
            policy=self._policy,
            expires_at=valid_until,
        )
        self._log.warning(
            "authorizer refresh failed",
            authorizer=entry.appid,
            outcome=error.outcome,
            errcode=error.errcode,
            error=str(error),
            attempt=entry.failures,
        )
        self.plan(entry, at)

    async def _recovered(self, entry: Authorizer) -> bool:
        """A refused refresh token: WeChat's list may hold a newer one (a rotation whose
        answer was lost, or a copy elsewhere). Take it, once, before giving up."""
        if self._recover is None or entry.refresh_token is None:
            return False
        current = await self._recover(entry.appid)
        if current is None or current == entry.refresh_token:
            return False
        await self.adopt_grant(entry.appid, current)
        self._log.warning(
            "refresh token refused; the current one was recovered from api_get_authorizer_list",
            authorizer=entry.appid,
        )
        return True

    async def _call(self, call: Any) -> Any:
        async with self._semaphore:
            return await self._send.send(call, self._product.errcodes)

    def refresh_point(self, entry: Authorizer, now: float) -> float:
        return _refresh_point(entry, now, self.rng, self._policy)

    def now(self) -> float:
        return self._clock.now()

    # -- what the daemon reports ---------------------------------------------------

    def counts(self) -> dict[str, int]:
        return count(self.entries.values(), self._clock.now())


def _refresh_point(entry: Authorizer, now: float, rng: Rng, policy: Policy) -> float:
    # Spread over the lifetime's renewal window by the jitter: no herd at one mark.
    return refresh_at(
        now=now,
        fetched_at=entry.fetched_at,
        expires_at=entry.expires_at,
        grant="classic",
        rng=rng,
        policy=policy,
    )


async def _component_token(component: Dependency) -> str:
    if not component.has_valid_token():
        await component.until_valid(60.0)
    record = component.record
    if record is None or not component.has_valid_token():
        raise TransientError("no valid component_access_token yet")
    token: str = record.access_token
    return token


def count(entries: Iterable[Authorizer], now: float) -> dict[str, int]:
    """How many authorizers are valid, need authorization, or wait for their first token."""
    valid = reauth = pending = total = 0
    dead = ReauthorizationNeeded
    for e in entries:
        # Authorizer.needs_authorization and .valid, inlined: each /readyz and metrics
        # scrape runs this over every entry, and two calls each were most of its cost.
        total += 1
        if e.refresh_token is None or isinstance(e.error, dead):
            reauth += 1
        elif e.token is not None and now < e.expires_at:
            valid += 1
        else:
            pending += 1
    return {"total": total, "valid": valid, "needs_authorization": reauth, "pending": pending}


def _load_token(store: TokenStore, entry: Authorizer, now: float) -> bool:
    """Take the still-valid token an earlier run left in ``entry``'s files, if there is one."""
    try:
        record = store.load(entry.appid, now=now)
    except StateFileError:
        return False
    if record is None or record.appid != entry.appid or record.expired:
        return False
    if now >= record.expires_at:
        return False
    entry.token, entry.fetched_at, entry.expires_at = (
        record.access_token,
        record.fetched_at,
        record.expires_at,
    )
    return True
