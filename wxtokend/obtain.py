"""How a loop obtains a new value: alone, or as one instance of a fleet.

:class:`Alone` fetches from upstream. :class:`InFleet` makes the fleet fetch each
credential once: lock, re-read, adopt a newer shared record, else fetch, publish
with compare-and-set (versions, not clocks), and keep a fetched token that could
not be published (WeChat issued it, and with the classic grant killed the old
one). A loop holds one strategy object for its whole life.
"""

from __future__ import annotations

import contextlib
import hmac
from collections.abc import AsyncIterator
from typing import Any, Protocol

from wxtokend.clock import Clock
from wxtokend.config import Grant
from wxtokend.credential import Token
from wxtokend.errors import TransientError
from wxtokend.fleet import Fleet, RedisDown, Shared
from wxtokend.store import Record

__all__ = ["Alone", "InFleet", "Obtaining", "Strategy"]


class Obtaining(Protocol):
    """What a strategy needs of the loop it obtains for."""

    @property
    def record(self) -> Record | None: ...

    @property
    def fleet_key(self) -> str: ...

    @property
    def schedule_grant(self) -> Grant: ...

    @property
    def log(self) -> Any: ...

    async def fetch_upstream(self, *, force: bool) -> Token:
        """The upstream call, after noting in the files that it may invalidate the token."""
        ...


class Alone:
    """This daemon is the credential's only refresher."""

    __slots__ = ()
    in_fleet = False

    async def obtain(self, loop: Obtaining, *, force: bool, stale: str | None) -> tuple[Token, str]:
        return await loop.fetch_upstream(force=force), "ok"

    @contextlib.asynccontextmanager
    async def hold(self, loop: Obtaining) -> AsyncIterator[None]:
        yield

    async def forces_used(self, loop: Obtaining, now: float, mine: list[float]) -> list[float]:
        return mine

    async def record_force(self, loop: Obtaining, now: float) -> None:
        return None

    async def follow(self, loop: Obtaining) -> Token | None:
        return None


class InFleet:
    """One instance of a fleet: Redis decides who fetches; everyone else adopts."""

    __slots__ = ("_clock", "_held", "_unpublished", "_version", "fleet")
    in_fleet = True

    def __init__(self, fleet: Fleet, *, clock: Clock) -> None:
        self.fleet = fleet
        self._clock = clock
        self._version: int | None = None  # the shared record's version we follow
        self._held = False
        self._unpublished: Shared | None = None

    async def obtain(self, loop: Obtaining, *, force: bool, stale: str | None) -> tuple[Token, str]:
        """A new token: from the fleet's shared record if a newer one is there, else fetched."""
        fleet = self.fleet
        try:
            return await self._obtain(loop, force=force, stale=stale)
        except RedisDown as exc:
            if fleet.settings.role == "member" and (
                loop.schedule_grant != "classic" or fleet.settings.on_redis_down == "fetch"
            ):
                # Stable normal mode (and WeCom) cannot invalidate anyone's token.
                loop.log.warning("Redis unreachable: fetching directly", error=str(exc))
                return await loop.fetch_upstream(force=force), "ok"
            raise TransientError(
                f"Redis unreachable, and this instance may not fetch alone: {exc}",
                fix="restore Redis; classic-grant members never fetch independently (that"
                " starts the invalidation war) unless fleet.on_redis_down is fetch",
            ) from None

    async def _obtain(
        self, loop: Obtaining, *, force: bool, stale: str | None
    ) -> tuple[Token, str]:
        fleet, key = self.fleet, loop.fleet_key
        shared = await fleet.read(key)
        if self._is_newer(loop, shared, stale):
            assert shared is not None
            return self._adopted(shared)
        if fleet.settings.role == "follower":
            raise TransientError(
                "follower: waiting for a member of the fleet to refresh",
                fix="followers never fetch; check that a member runs and reaches Redis",
            )
        if self._held:  # a passive refresh already holds the fleet's lock
            return await self._fetch_and_publish(loop, key, force=force)
        async with fleet.lock(key, wait=fleet.settings.lock_ttl + 1) as held:
            shared = await fleet.read(key)
            if self._is_newer(loop, shared, stale):
                assert shared is not None
                return self._adopted(shared)
            if not held:
                raise TransientError(
                    "another instance holds the fetch lock and published nothing yet",
                    retry="retrying; its lock expires after fleet.lock_ttl if it died",
                )
            return await self._fetch_and_publish(loop, key, force=force)

    async def _fetch_and_publish(
        self, loop: Obtaining, key: str, *, force: bool
    ) -> tuple[Token, str]:
        fleet = self.fleet
        version = await fleet.next_version(key)  # before the fetch: older fetches lose
        token = await loop.fetch_upstream(force=force)
        record = Shared(
            credential=key,
            token=token.access_token,
            expires_at=token.expires_at,
            fetched_at=token.fetched_at,
            version=version,
        )
        try:
            if await fleet.write(key, record):
                self._version = version
                return token, "ok"
            newest = await fleet.read(key)  # someone newer won the race: follow them
        except RedisDown as exc:
            # WeChat issued it (and, classic, killed the old one): never drop it.
            self._unpublished = record
            self._version = version
            loop.log.error(
                "fetched a token but could not publish it to the fleet; retrying",
                error=str(exc),
            )
            return token, "ok"
        if newest is not None and newest.expires_at > self._clock.now():
            return self._adopted(newest)
        return token, "ok"

    def _adopted(self, shared: Shared) -> tuple[Token, str]:
        self._version = shared.version
        return _token_of(shared), "shared"

    @contextlib.asynccontextmanager
    async def hold(self, loop: Obtaining) -> AsyncIterator[None]:
        """Hold the fleet's lock across a whole passive refresh (normal call, then force),
        so the fleet makes one refresh per stale token and counts forces in order."""
        fleet = self.fleet
        if fleet.settings.role == "follower":
            yield
            return
        async with contextlib.AsyncExitStack() as stack:
            try:
                held = await stack.enter_async_context(
                    fleet.lock(loop.fleet_key, wait=fleet.settings.lock_ttl + 1)
                )
            except RedisDown:
                held = False
            self._held = held
            try:
                yield
            finally:
                self._held = False

    async def forces_used(self, loop: Obtaining, now: float, mine: list[float]) -> list[float]:
        """Force refreshes used by the whole fleet (in Redis), not just this daemon."""
        return await self.fleet.forces_since(loop.fleet_key, now - 86400)

    async def record_force(self, loop: Obtaining, now: float) -> None:
        with contextlib.suppress(RedisDown):
            await self.fleet.record_force(loop.fleet_key, now)

    async def follow(self, loop: Obtaining) -> Token | None:
        """The fleet's record if it is newer (pub/sub push or reconcile); no fetch.

        The caller holds the loop's lock.
        """
        fleet = self.fleet
        current = loop.record.access_token if loop.record else None
        try:
            if self._unpublished is not None:
                await fleet.write(loop.fleet_key, self._unpublished)  # refused if stale
                self._unpublished = None
            shared = await fleet.read(loop.fleet_key)
        except RedisDown:
            return None
        if not self._is_newer(loop, shared, current):
            return None
        assert shared is not None
        return self._adopted(shared)[0]

    def _is_newer(self, loop: Obtaining, shared: Shared | None, stale: str | None) -> bool:
        """A shared record worth taking instead of fetching: another, valid, newer token.

        ``shared`` has passed Fleet.read's checks (signature, key, credential.check).
        """
        if shared is None or shared.expires_at <= self._clock.now() + 1:
            return False
        current = loop.record
        for known in (stale, current.access_token if current else None):
            if known is not None and hmac.compare_digest(shared.token.encode(), known.encode()):
                return False
        if self._version is not None and shared.version > self._version:
            return True  # versions, not clocks of different hosts
        # No version followed yet, or a version not above ours with another token: Redis
        # lost its state (FLUSHALL, a restart without persistence) and counting restarted.
        # Only then do fetch times decide, and never backwards.
        return current is None or shared.fetched_at >= current.fetched_at


Strategy = Alone | InFleet


def _token_of(shared: Shared) -> Token:
    """A fleet record as if just fetched: same token, its own fetch time and expiry."""
    lifetime = max(1, round(shared.expires_at - shared.fetched_at))  # 1 s to a day: checked
    return Token(access_token=shared.token, expires_in=lifetime, fetched_at=shared.fetched_at)
