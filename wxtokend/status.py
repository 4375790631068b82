"""What a refresh loop shows of itself: plain data for status pages and answers.

No token here, only its fingerprint: these objects go to the admin API, the
logs and the CLI.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from wxtokend.clock import iso

__all__ = ["AppStatus", "Passive", "PassiveResult", "State", "describe", "stuck_reason"]

State = Literal["pending", "ok", "failing", "expired"]
PassiveResult = Literal[
    "refreshed", "newer", "rate_limited", "force_budget_spent", "failed", "no_token"
]

_STUCK_AFTER = 60.0  # seconds a loop may be late, or a fetch run beyond its timeout


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


def stuck_reason(
    *,
    mono: float,
    busy_since: float | None,
    writing_since: float | None,
    wake_due: float | None,
    fetch_limit: float,
) -> str | None:
    """Why a loop looks stuck (a fetch hanging, a wake-up long overdue), or None.

    Measured on the monotonic clock, so a wall-clock step is no false alarm;
    waiting for a semaphore slot or a long back-off is not being stuck.
    """
    if busy_since is not None and mono - busy_since > fetch_limit + _STUCK_AFTER:
        return f"a fetch has been running for {int(mono - busy_since)} s"
    if writing_since is not None and mono - writing_since > fetch_limit + _STUCK_AFTER:
        return f"a file write has been running for {int(mono - writing_since)} s"
    if busy_since is None and wake_due is not None and mono - wake_due > _STUCK_AFTER:
        return f"its wake-up is {int(mono - wake_due)} s overdue"
    return None


def describe(status: AppStatus, now: float) -> dict[str, Any]:
    """An app's status as JSON, with readable times and no token."""
    data: dict[str, Any] = {
        "name": status.name,
        "appid": status.appid,
        "grant": status.grant,
        "state": status.state,
        "fingerprint": status.fingerprint,
        "expires_at": status.expires_at,
        "expires_in": int(status.expires_at - now) if status.expires_at else None,
        "next_refresh": round(status.next_refresh, 3),
        "consecutive_failures": status.consecutive_failures,
        "last_error": status.last_error,
        "hint": status.hint,
    }
    if status.expires_at is not None:
        data["expires_at_iso"] = iso(status.expires_at)
    data["next_refresh_iso"] = iso(status.next_refresh)
    return data
