"""A platform's part in the fleet: its pushed ticket shared, its tokens followed.

WeChat pushes the ticket to one instance, which publishes it; the others take it
from pub/sub or from a periodic re-read. The component (or suite) and provider
tokens are plain fleet loops; the authorizers go through
:class:`~wxtokend.platforms.fleet_book.FleetBook`. See :mod:`wxtokend.platforms.shared`
for what is kept in Redis.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Protocol

from wxtokend.clock import Clock
from wxtokend.fleet import RedisDown
from wxtokend.platforms.authorizers import AuthorizerBook
from wxtokend.platforms.fleet_book import FleetBook
from wxtokend.platforms.shared import GrantShare
from wxtokend.platforms.vault import PushedTicket, check_appid
from wxtokend.platforms.verify import VerifyTicket
from wxtokend.refresher import Refresher

__all__ = ["FleetSide"]


class Wired(Protocol):
    """The parts of a platform its fleet side works with (platform.Platform)."""

    book: AuthorizerBook
    ticket: VerifyTicket
    clock: Clock
    log: Any

    async def keep_ticket(self, pushed: PushedTicket) -> None: ...

    def upper_loops(self) -> list[Refresher]: ...


class FleetSide:
    """Shares one platform's ticket and follows what the fleet refreshed."""

    def __init__(
        self,
        share: GrantShare,
        book: FleetBook,
        *,
        ticket: VerifyTicket,
        keep_ticket: Callable[[PushedTicket], Awaitable[None]],
        upper_loops: list[Refresher],
        clock: Clock,
        log: Any,
    ) -> None:
        self.share, self.book = share, book
        self._ticket, self._keep_ticket = ticket, keep_ticket
        self._upper = upper_loops
        self._clock, self._log = clock, log

    @classmethod
    def of(cls, platform: Wired, share: GrantShare) -> FleetSide:
        """``platform``'s fleet side, wired to its parts."""
        return cls(
            share,
            FleetBook(platform.book, share),
            ticket=platform.ticket,
            keep_ticket=platform.keep_ticket,
            upper_loops=platform.upper_loops(),
            clock=platform.clock,
            log=platform.log,
        )

    async def run(self) -> None:
        """Catch up at start, then re-read the shared ticket and upper tokens now and
        then (pub/sub messages can be lost; each authorizer re-reads when it is due)."""
        await self.follow_ticket()
        adopted = await self.book.follow_all()
        if adopted:
            self._log.info("authorizer tokens taken from the fleet", count=adopted)
        while True:
            for loop in self._upper:
                await loop.follow_fleet()
            await self._clock.sleep(self.share.fleet.settings.reconcile_interval)
            await self.follow_ticket()

    async def follow_ticket(self) -> None:
        """The fleet's newest ticket, if it is news here."""
        try:
            shared = await self.share.read_ticket()
        except RedisDown:
            return
        if shared is not None and self._ticket.is_news(shared):
            await self._keep_ticket(shared)

    async def publish_ticket(self, pushed: PushedTicket) -> None:
        try:
            await self.share.publish_ticket(pushed)
        except RedisDown as exc:
            self._log.error(
                "cannot share the pushed ticket with the fleet: the others wait for it",
                error=str(exc),
            )

    async def publish_removed(self, appid: str) -> None:
        """Tell the fleet ``appid`` unauthorized the platform: every member forgets it."""
        try:
            await self.share.publish_removed(appid, now=self._clock.now())
        except RedisDown as exc:
            self._log.error(
                "cannot tell the fleet an authorizer unauthorized the platform: the others"
                " learn it when their refresh of it is refused",
                authorizer=appid,
                error=str(exc),
            )

    def follow(self, credential: str) -> Coroutine[Any, Any, None] | None:
        """The work a pub/sub hint about ``credential`` calls for, if it is this
        platform's (re-read and checked there: a hint is never trusted as it came)."""
        share = self.share
        if credential == share.ticket_key:
            return self.follow_ticket()
        if credential.startswith(share.grant_prefix):
            appid = credential[len(share.grant_prefix) :]
            return self.book.follow(appid) if _is_appid(appid) else _nothing()
        for loop in self._upper:
            if credential == loop.fleet_key:
                return _followed(loop)
        return None


def _is_appid(value: str) -> bool:
    try:
        check_appid(value)
    except ValueError:
        return False
    return True


async def _followed(loop: Refresher) -> None:
    await loop.follow_fleet()


async def _nothing() -> None:
    return None
