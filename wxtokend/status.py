"""What a refresh loop shows of itself: plain data for status pages and answers.

No token here, only its fingerprint: these objects go to the admin API, the
logs and the CLI.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = ["AppStatus", "Passive", "PassiveResult", "State"]

State = Literal["pending", "ok", "failing", "expired"]
PassiveResult = Literal[
    "refreshed", "newer", "rate_limited", "force_budget_spent", "failed", "no_token"
]


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
