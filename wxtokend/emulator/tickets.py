"""Tickets (jsapi, wx_card, agent_config): rotated like classic tokens, checkable after death.

Every fetch issues a new ticket; the previous one of that owner and type keeps working for
``grace`` seconds, older ones die at once. Dead tickets stay indexed for a quota day, so
check-ticket can say why one fails.
"""

from __future__ import annotations

import secrets

from wxtokend.emulator.config import EmulatorConfig, Owner
from wxtokend.emulator.tokens import Slot, Token

__all__ = ["TicketBook"]


class TicketBook:
    """Ticket slots per (owner, type) and the index check-ticket reads."""

    def __init__(self, config: EmulatorConfig, start: float) -> None:
        self._config = config
        self._slots: dict[tuple[Owner, str], Slot] = {}
        self._tickets: dict[str, Token] = {}
        self._sweep_at = start + config.day_length

    def issue(self, owner: Owner, ticket_type: str, now: float) -> Token:
        ticket = Token(
            value=secrets.token_urlsafe(64),
            owner=owner,
            kind=ticket_type,
            expires_at=now + self._config.effective_ticket_lifetime,
        )
        slot = self._slots.setdefault((owner, ticket_type), Slot())
        slot.rotate(ticket, now=now, previous_until=now + self._config.grace)
        self._forget(now)
        self._tickets[ticket.value] = ticket
        return ticket

    def check(self, value: str, now: float) -> dict[str, object]:
        """``GET /emulator/check-ticket``: whether ``ticket`` works now, and whose it is."""
        found = self._tickets.get(value)
        if found is None:
            return {"valid": False, "reason": "unknown"}
        status = found.status(now)
        if status == "valid":
            return {"valid": True, "appid": found.appid, "type": found.kind}
        return {"valid": False, "reason": "expired" if status == "expired" else "invalidated"}

    def _forget(self, now: float) -> None:
        """Once a quota day, drop tickets dead for over a day: check-ticket then says unknown."""
        if now < self._sweep_at:
            return
        self._sweep_at = now + self._config.day_length
        horizon = now - self._config.day_length
        self._tickets = {
            value: ticket
            for value, ticket in self._tickets.items()
            if min(ticket.invalid_at, ticket.expires_at) > horizon
        }
