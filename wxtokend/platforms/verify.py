"""The component_verify_ticket WeChat pushes every 10 minutes: what the component token needs.

:class:`VerifyTicket` holds the newest pushed ticket (kept in the vault, so it
survives restarts) and is the component token loop's dependency: that loop
waits until a valid ticket is here. A ticket WeChat refuses (61005/61006) is
dropped, so the loop waits for the next push instead of asking again.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Final

from wxtokend.clock import Clock
from wxtokend.platforms.vault import PushedTicket, Vault
from wxtokend.redact import fingerprint
from wxtokend.status import AppStatus, Passive

__all__ = ["TICKET_LIFETIME", "VerifyTicket"]

TICKET_LIFETIME: Final = 12 * 3600.0  # WeChat: a ticket is valid about 12 hours


@dataclass(frozen=True)
class _Held:
    access_token: str = field(repr=False)  # the ticket, named as the loop reads a dependency


class VerifyTicket:
    """One platform's newest pushed ticket."""

    def __init__(
        self,
        vault: Vault,
        *,
        name: str,
        component_appid: str,
        clock: Clock,
        log: object,
        lifetime: float = TICKET_LIFETIME,
        label: str = "component_verify_ticket",
    ) -> None:
        self._label = label
        self._vault = vault
        self._name, self._appid = name, component_appid
        self._clock = clock
        self._log = log
        self._lifetime = lifetime
        self._ticket: PushedTicket | None = None
        self._refused: str | None = None  # the ticket WeChat refused: wait for another
        self._arrived = asyncio.Event()

    def load(self) -> None:
        """The ticket kept by an earlier run, if any (a bad file is replaced by the next push)."""
        self._ticket = self._vault.load_ticket()

    def is_news(self, ticket: PushedTicket) -> bool:
        """Whether a pushed ticket should replace the one held (newer, or one refused)."""
        held = self._ticket
        if held is not None and ticket.created_at < held.created_at:
            return False
        return held is None or held.ticket != ticket.ticket or self._refused is not None

    def hold(self, ticket: PushedTicket) -> None:
        """Take ``ticket`` (already saved in the vault) and wake whoever waits for one."""
        self._ticket, self._refused = ticket, None
        arrived, self._arrived = self._arrived, asyncio.Event()
        arrived.set()

    def accept(self, ticket: PushedTicket) -> bool:
        """A pushed ticket: kept (durably first) if it is news."""
        if not self.is_news(ticket):
            return False
        self._vault.save_ticket(ticket)
        self.hold(ticket)
        return True

    # -- what the component token loop reads (kinds.base.Dependency) ---------

    @property
    def record(self) -> _Held | None:
        return _Held(self._ticket.ticket) if self._ticket is not None else None

    def has_valid_token(self) -> bool:
        ticket = self._ticket
        if ticket is None or ticket.ticket == self._refused:
            return False
        return self._clock.now() < ticket.created_at + self._lifetime

    async def until_valid(self, within: float | None) -> bool:
        if self.has_valid_token():
            return True
        if within is None:
            await self._arrived.wait()
        else:
            await self._clock.wait(self._arrived, within)
        return self.has_valid_token()

    async def report_rejected(
        self, *, token: str | None = None, allow_force: bool = True, internal: bool = False
    ) -> Passive:
        """WeChat refused ``token`` (61005/61006): drop it and wait for the next push."""
        if token is not None and self._ticket is not None and token == self._ticket.ticket:
            self._refused = token
        return Passive(result="newer", status=self.status(), detail="waiting for the next push")

    def status(self) -> AppStatus:
        ticket = self._ticket
        valid = self.has_valid_token()
        return AppStatus(
            name=self._name,
            appid=self._appid,
            grant=self._label,
            state="ok" if valid else ("pending" if ticket is None else "expired"),
            expires_at=ticket.created_at + self._lifetime if ticket else None,
            fingerprint=fingerprint(ticket.ticket) if ticket else None,
            next_refresh=self._clock.now(),
            consecutive_failures=0,
            last_error=None if valid else f"no valid {self._label} pushed yet",
            hint=None
            if valid
            else "WeChat pushes one every 10 minutes to the callback listener: check that"
            " callback.listen is reachable from WeChat at the platform's 授权事件接收URL",
        )
