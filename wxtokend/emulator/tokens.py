"""Issued credentials: tokens and tickets, their rotation slots and the index of live ones.

Memory stays bounded: per owner and kind only the current and previous one can be valid, and
an index entry goes when its slot evicts it.
"""

from __future__ import annotations

import math
import secrets
from dataclasses import dataclass
from typing import Literal

from wxtokend.emulator.config import Owner
from wxtokend.emulator.replies import NOT_LATEST

__all__ = ["TOKEN_KINDS", "Slot", "Token", "TokenBook", "TokenKind"]

# Token families: classic and stable (Official Account, Mini Program...), and WeCom.
TokenKind = Literal["classic", "stable", "wecom"]
TOKEN_KINDS: tuple[TokenKind, ...] = ("classic", "stable", "wecom")


@dataclass(slots=True, kw_only=True)
class Token:
    """An access_token or a ticket; ``kind`` is the token's family or the ticket's type."""

    value: str
    owner: Owner
    kind: str
    expires_at: float
    # Invalidation (a newer fetch, a force, a revoke) is reported as 40001, expiry as 42001.
    invalid_at: float = math.inf

    @property
    def appid(self) -> str:
        """The appid or corpid: the key its counters are kept under."""
        return self.owner[0]

    def status(self, now: float) -> Literal["valid", "invalid", "expired"]:
        if now >= self.invalid_at and self.invalid_at < self.expires_at:
            return "invalid"
        return "expired" if now >= self.expires_at else "valid"


@dataclass(slots=True)
class Slot:
    """The only tokens of one owner and kind that can still be valid: memory stays bounded."""

    current: Token | None = None
    previous: Token | None = None
    last_force: float = -math.inf

    def rotate(self, fresh: Token, *, now: float, previous_until: float) -> Token | None:
        """Make ``fresh`` current; the old current lives until ``previous_until`` at most.

        Returns the token before that, which dies now (if it has not already).
        """
        evicted = self.previous
        if evicted is not None:
            evicted.invalid_at = min(evicted.invalid_at, now)
        if self.current is not None:
            self.current.invalid_at = min(self.current.invalid_at, previous_until)
        self.previous, self.current = self.current, fresh
        return evicted


class TokenBook:
    """Every access_token still worth knowing, by family and owner, and by its value."""

    def __init__(self, lifetime: int) -> None:
        self._lifetime = lifetime
        self._slots: dict[TokenKind, dict[Owner, Slot]] = {kind: {} for kind in TOKEN_KINDS}
        self._tokens: dict[str, Token] = {}

    def get(self, value: str) -> Token | None:
        return self._tokens.get(value) if value else None

    def owner_of(self, value: str) -> Owner:
        """(appid or corpid, WeCom secret or "") of a token ever issued; ("", "") otherwise."""
        token = self._tokens.get(value)
        return token.owner if token is not None else ("", "")

    def slot(self, kind: TokenKind, owner: Owner) -> Slot:
        slots = self._slots[kind]
        slot = slots.get(owner)
        if slot is None:
            slot = slots[owner] = Slot()
        return slot

    def issue(self, kind: TokenKind, owner: Owner, now: float, *, previous_until: float) -> Token:
        """Make a new current token; the old current lives until ``previous_until`` at most."""
        token = Token(
            value=secrets.token_urlsafe(96),
            owner=owner,
            kind=kind,
            expires_at=now + self._lifetime,
        )
        evicted = self.slot(kind, owner).rotate(token, now=now, previous_until=previous_until)
        if evicted is not None:
            # Two fetches back is invalid anyway: forgetting it keeps memory bounded.
            self._tokens.pop(evicted.value, None)
        self._tokens[token.value] = token
        return token

    def revoke(self, kind: TokenKind, owners: list[Owner], now: float) -> None:
        """Kill the current and previous token of each owner now."""
        for owner in owners:
            slot = self._slots[kind].get(owner)
            if slot is None:
                continue
            for token in (slot.current, slot.previous):
                if token is not None:
                    token.invalid_at = min(token.invalid_at, now)

    def problem(
        self, value: str, kinds: tuple[TokenKind, ...], now: float
    ) -> tuple[int, str] | None:
        """(errcode, message) for a token missing, expired, or not a valid one of ``kinds``."""
        found = self.get(value)
        status = found.status(now) if found is not None and found.kind in kinds else "invalid"
        if value and status == "valid":
            return None
        if not value:
            return 41001, "access_token missing"
        if status == "expired":
            return 42001, "access_token expired"
        return 40001, NOT_LATEST
