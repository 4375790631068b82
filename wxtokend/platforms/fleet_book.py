"""A platform's authorizers in fleet mode: each refreshed once, fleet-wide.

When an authorizer falls due on an instance, that instance takes the
authorizer's lock (never waiting for it) and reads the fleet's record: if
another instance refreshed it meanwhile, its token and rotated refresh token are
adopted (written to this instance's vault and files) and nothing is called;
only the lock holder with nothing newer in the fleet calls WeChat, and then
publishes what it got (:class:`~wxtokend.platforms.writes.Writes`). Pub/sub
brings every publish to the others at once, accounts authorized elsewhere too.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from wxtokend.fleet import RedisDown
from wxtokend.platforms.authorizers import Authorizer

if TYPE_CHECKING:
    from wxtokend.platforms.authorizers import AuthorizerBook
    from wxtokend.platforms.shared import GrantShare, SharedGrant

__all__ = ["FleetBook", "adopt"]

_BATCH = 500  # accounts per MGET when catching up


def adopt(entry: Authorizer, shared: SharedGrant | None) -> bool:
    """Take the fleet's record if it is newer than what ``entry`` holds; True if taken.

    Not while ``entry`` holds a grant the fleet has not got yet: that one is newest.
    """
    if shared is None or shared.removed or shared.version <= entry.version or entry.unshared:
        return False
    entry.version = shared.version
    if shared.grant != entry.refresh_token:
        entry.refresh_token, entry.unsaved = shared.grant, True
        entry.error, entry.failures = None, 0  # a grant WeChat gave out since
    if shared.token is not None and shared.expires_at > entry.expires_at:
        entry.token, entry.fetched_at = shared.token, shared.fetched_at
        entry.expires_at, entry.unwritten = shared.expires_at, True
        entry.error, entry.failures = None, 0
    return True


class FleetBook:
    """Makes one platform's :class:`AuthorizerBook` refresh and follow through the fleet."""

    def __init__(self, book: AuthorizerBook, share: GrantShare) -> None:
        self._book, self._share = book, share
        self._following: set[str] = set()
        book.in_fleet = self.refresh

    async def refresh(self, entry: Authorizer) -> None:
        """Refresh only with the authorizer's lock, and only if the fleet has nothing newer."""
        book, share = self._book, self._share
        now = book.now()
        try:
            async with share.turn(entry.appid) as mine:
                shared = await share.read(entry.appid, now)
                if shared is not None and shared.removed:
                    shared = None  # a removal is a question for WeChat: this refresh asks it
                # A refused token is never taken as fresh: the refusal needs a new one.
                if adopt(entry, shared) and self._fresh(entry, now) and not entry.refused():
                    await book.write(entry)  # another instance refreshed it: no call
                elif mine:
                    await book.refresh(entry)
                else:  # another instance holds it now: read its result shortly
                    wait = 30.0 if share.follower else 1.0
                    book.plan(entry, now + book.rng.uniform(wait, 2 * wait))
        except RedisDown:
            if share.fetch_without_redis:
                await book.refresh(entry)
            else:  # wait for Redis: the token in the files stays valid until it expires
                book.plan(entry, now + book.rng.uniform(10.0, 20.0))

    def _fresh(self, entry: Authorizer, now: float) -> bool:
        return entry.valid(now) and self._book.refresh_point(entry, now) > now

    async def follow(self, appid: str) -> None:
        """Pushed by pub/sub: the fleet's record of ``appid`` changed; adopt it, no call.

        An account authorized on another instance arrives here as a new entry.
        """
        if appid in self._following:
            return
        self._following.add(appid)  # a flood of messages for one account coalesces
        try:
            now = self._book.now()
            shared = await self._share.read(appid, now)
            if shared is None or self._removed(appid, shared):
                return
            entry = self._book.entries.setdefault(appid, Authorizer(appid=appid))
            if adopt(entry, shared):
                await self._settle(entry, now)
        except RedisDown:
            return
        finally:
            self._following.discard(appid)

    async def follow_all(self) -> int:
        """At a start: take what the fleet refreshed while this instance was away,
        500 accounts per round trip; how many were adopted."""
        adopted, appids = 0, list(self._book.entries)
        for start in range(0, len(appids), _BATCH):
            now = self._book.now()
            try:
                found = await self._share.read_many(appids[start : start + _BATCH], now)
            except RedisDown:
                return adopted
            for appid, shared in found.items():
                if self._removed(appid, shared):
                    continue
                entry = self._book.entries.get(appid)
                if entry is not None and adopt(entry, shared):
                    adopted += 1
                    await self._settle(entry, now)
        return adopted

    def _removed(self, appid: str, shared: SharedGrant) -> bool:
        """The fleet says ``appid`` unauthorized the platform (WeChat told another member):
        True, and if this instance holds it, its refresh is due now. The answer is
        WeChat's, not the record's: an account no longer authorized is refused and
        marked, one authorized again (or a replayed record) is simply refreshed; a grant
        is never deleted on a fleet record's word."""
        if not shared.removed:
            return False
        entry = self._book.entries.get(appid)
        if entry is not None and shared.version > entry.version:
            entry.version = shared.version  # acted on once, not at every catch-up
            self._book.plan(entry, self._book.now())
        return True

    async def _settle(self, entry: Authorizer, now: float) -> None:
        """An adopted entry: written (and planned) if its token is valid, else due now."""
        if entry.valid(now):
            await self._book.write(entry)
        else:
            self._book.plan(entry, now)
