"""The state every product shares: the clock, counters, quotas, fault settings, credentials.

Products (official.py, wecom.py) hold their own apps and register each app's key here, so
counters cover every app and one key never names apps of two products.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from wxtokend.emulator.config import EmulatorConfig, Faults, Owner, owner_of
from wxtokend.emulator.faults import Fault, roll
from wxtokend.emulator.replies import Reply
from wxtokend.emulator.tickets import TicketBook
from wxtokend.emulator.tokens import Token, TokenBook, TokenKind

__all__ = ["COUNTERS", "Core", "Endpoint", "Usage"]

# The endpoints whose calls are counted and may be hijacked by a fault.
Endpoint = Literal[
    "token", "stable_token", "gettoken", "getticket", "get_jsapi_ticket", "ticket_get"
]

# Every counter is reported for every app, so consumers can index without .get().
COUNTERS = (
    "token",
    "stable_token",
    "stable_token_force",
    "gettoken",
    "getcallbackip",
    "issued",
    "getticket",
    "get_jsapi_ticket",
    "ticket_get",
    "tickets_issued",
    "faults",
    "api_calls",
    "api_rejected",
)


@dataclass(slots=True, kw_only=True)
class Usage:
    """Quota counters of one app; reset lazily when the day or minute index changes."""

    day: int
    minute: int
    daily: dict[str, int] = field(default_factory=dict)  # calls today, by API name
    minute_calls: int = 0

    def used(self, api: str) -> int:
        return self.daily.get(api, 0)

    def use(self, api: str) -> None:
        self.daily[api] = self.daily.get(api, 0) + 1


class Core:
    """Bookkeeping shared by the products, as pure logic: no I/O, time comes from ``clock``."""

    def __init__(
        self, config: EmulatorConfig, *, clock: Callable[[], float], rng: random.Random
    ) -> None:
        self.config = config
        self.clock = clock
        self.rng = rng
        self.tokens = TokenBook(config.lifetime)
        self._start = clock()
        self.tickets = TicketBook(config, self._start)
        self._default_faults = config.faults
        self._app_faults = {owner_of(app): app.faults for app in config.apps if app.faults}
        self._products: dict[str, str] = {}  # app key (appid, corpid) -> its product
        self._usage: dict[Owner, Usage] = {}
        self._counts: dict[str, dict[str, int]] = {}

    def claim(self, key: str, product: str) -> bool:
        """Register ``key`` as an app of ``product``; False if another product has it."""
        return self._products.setdefault(key, product) == product

    # -- counters and fault settings

    def stats(self) -> dict[str, dict[str, int]]:
        """Counters per app key: every registered app and every key seen, all keys present."""
        apps = {appid: dict(counts) for appid, counts in self._counts.items()}
        for appid in self._products:
            apps.setdefault(appid, dict.fromkeys(COUNTERS, 0))
        return apps

    def reset_stats(self) -> None:
        self._counts.clear()

    def count(self, appid: str, counter: str) -> None:
        counts = self._counts.get(appid)
        if counts is None:
            counts = self._counts[appid] = dict.fromkeys(COUNTERS, 0)
        counts[counter] += 1

    def set_faults(self, appid: str | None, faults: Faults | None, *, secret: str = "") -> None:
        if appid is None:
            self._default_faults = faults or Faults()
        elif faults is None:
            self._app_faults.pop((appid, secret), None)
        else:
            self._app_faults[(appid, secret)] = faults

    def faults_for(self, appid: str, secret: str = "") -> Faults:
        for owner in ((appid, secret), (appid, "")):
            faults = self._app_faults.get(owner)
            if faults is not None:
                return faults
        return self._default_faults

    def admit(
        self, endpoint: Endpoint, appid: str, *, force: bool = False, secret: str = ""
    ) -> Fault | None:
        """Count a call of a token or ticket endpoint and decide whether a fault hijacks it."""
        self.count(appid, endpoint)
        if force:
            self.count(appid, "stable_token_force")
        fault = roll(self.rng, self.faults_for(appid, secret))
        if fault is not None:
            self.count(appid, "faults")
        return fault

    # -- quotas

    def usage_of(self, owner: Owner, now: float) -> Usage:
        elapsed = now - self._start
        day, minute = int(elapsed // self.config.day_length), int(elapsed // 60)
        usage = self._usage.get(owner)
        if usage is None:
            usage = self._usage[owner] = Usage(day=day, minute=minute)
        if usage.day != day:
            usage.day = day
            usage.daily.clear()
        if usage.minute != minute:
            usage.minute = minute
            usage.minute_calls = 0
        return usage

    def over_minute_quota(self, usage: Usage) -> bool:
        if not self.config.minute_quota:
            return False
        usage.minute_calls += 1
        return usage.minute_calls > self.config.minute_quota

    # -- issuing

    def issue(self, kind: TokenKind, owner: Owner, now: float, *, previous_until: float) -> Token:
        token = self.tokens.issue(kind, owner, now, previous_until=previous_until)
        self.count(owner[0], "issued")
        return token

    def issue_ticket(self, owner: Owner, ticket_type: str, now: float) -> Reply:
        ticket = self.tickets.issue(owner, ticket_type, now)
        self.count(owner[0], "tickets_issued")
        lifetime = self.config.effective_ticket_lifetime
        return {"errcode": 0, "errmsg": "ok", "ticket": ticket.value, "expires_in": lifetime}

    def fresh(self, token: Token) -> Reply:
        # The configured lifetime, not expires_at - now: float rounding could make that 7199.
        return {"access_token": token.value, "expires_in": self.config.lifetime}

    def grant(self, token: Token, now: float) -> Reply:
        return {"access_token": token.value, "expires_in": math.floor(token.expires_at - now)}
