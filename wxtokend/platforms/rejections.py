"""An account's token rejected by WeChat in a proxied call: compare, then refresh once.

The API proxy puts an authorizer's (or corp's) token into calls made for it; when
WeChat answers 40001, 40014 or 42001 for that token, the proxy asks here for a
new one. The refresh is not made here: the account is planned as due now, so
the platform's own workers refresh it exactly as at its planned time (the fleet
lock too, in fleet mode), and a refresh already running is never doubled — a
second ``api_authorizer_token`` with the same refresh token would race the
rotation. The account is marked (``Authorizer.rejected``) so that attempt
refreshes even where it would only have retried a write or taken the fleet's copy
of the same dead token; where the next attempt is planned past the wait (a
failure's backoff, a fleet member whose turn it is not) the callers get WeChat's
answer at once. Every concurrent caller waits for that one refresh; an account is
forced at most once per :data:`MIN_INTERVAL`, so a token WeChat keeps refusing
cannot spend the quota call after call.
"""

from __future__ import annotations

from typing import Final, Protocol

from wxtokend.clock import Clock
from wxtokend.platforms.authorizers import Authorizer

__all__ = ["MIN_INTERVAL", "Rejections"]

MIN_INTERVAL: Final = 60.0  # seconds between two forced refreshes of one account
_WAIT: Final = 15.0  # at most this long for the refresh: a proxied caller is waiting
_STEP: Final = 0.05


class _Book(Protocol):
    entries: dict[str, Authorizer]

    def plan(self, entry: Authorizer, at: float) -> None: ...


class Rejections:
    """One platform's compare-and-refresh for proxied calls."""

    def __init__(self, book: _Book, *, clock: Clock) -> None:
        self._book, self._clock = book, clock
        # appid → (when its last forced refresh was asked, the token it replaces)
        self._forced: dict[str, tuple[float, str]] = {}

    async def rejected(self, appid: str, token: str) -> str | None:
        """WeChat refused ``token`` for ``appid``: the account's next valid token once it
        differs from ``token``, or None (none in time, unknown account, or budget spent)."""
        entry = self._book.entries.get(appid)
        if entry is None or entry.needs_authorization:
            return None
        if entry.token == token and not self._asked(entry, token):
            return None
        deadline = self._clock.now() + _WAIT
        while entry.token == token or not entry.valid(self._clock.now()):
            if self._gone(entry, deadline):
                return None
            await self._clock.sleep(_STEP)
        return entry.token

    def _gone(self, entry: Authorizer, deadline: float) -> bool:
        """No new token for the waiters in time: out of time, the account removed or
        refused, or its next attempt planned past the wait (a failure's backoff, or a
        fleet member whose turn it is not)."""
        return (
            self._clock.now() >= deadline
            or self._book.entries.get(entry.appid) is not entry
            or entry.needs_authorization
            or entry.next_at > deadline
        )

    def _asked(self, entry: Authorizer, token: str) -> bool:
        """Whether a refresh replacing ``token`` is on its way: asked for now (``entry``
        planned as due), or already within the last minute for this very token."""
        now = self._clock.monotonic()
        last = self._forced.get(entry.appid)
        if last is not None and now - last[0] < MIN_INTERVAL:
            return last[1] == token  # another token forced a moment ago: budget spent
        if entry.failures and entry.next_at > self._clock.now():
            return False  # failing already: its backoff stands, a refusal does not hurry it
        self._forced[entry.appid] = (now, token)
        if len(self._forced) > 10_000:  # forget old ones: bounded by what was refused lately
            self._forced = {a: f for a, f in self._forced.items() if now - f[0] < MIN_INTERVAL}
        entry.rejected = token  # the next attempt refreshes, whatever else it had to do
        self._book.plan(entry, self._clock.now())
        return True
