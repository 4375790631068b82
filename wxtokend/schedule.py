"""When to call WeChat next: pure functions of (now, state, rng).

Nothing here reads a clock or sleeps, so every rule is tested table-style.

- Classic: refresh after 75-85 % of the lifetime. The jitter keeps many apps
  and instances from synchronising; the remaining 15 %+ of the lifetime leaves
  room for retries while the old token still works.
- Stable: WeChat renews only inside the last ``stable_window`` seconds (a
  normal-mode call before that returns the same token), so aim just inside the
  window, and retry fast there if WeChat has not renewed yet.
- WeCom: gettoken returns the same token until it expires, so ask right after.
- Tickets are scheduled like classic tokens: a re-fetch may invalidate the
  previous ticket, so they are replaced well before expiry.
- Errors: each class waits as WeChat asks (next minute, next Beijing day,
  10 minutes for what needs a human); transient ones back off exponentially
  with full jitter, capped, never tighter than one second, and always leave a
  few tries before the current token expires.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Protocol

from wxtokend.config import Grant
from wxtokend.errors import (
    AdminWaitError,
    DailyQuotaError,
    FatalConfigError,
    FetchError,
    MinuteQuotaError,
    UnknownErrcodeError,
)

__all__ = [
    "Policy",
    "Rng",
    "backoff",
    "fleet_refresh_at",
    "force_allowed_at",
    "next_minute",
    "next_quota_reset",
    "refresh_at",
    "retry_at",
    "unchanged_retry_at",
]

BEIJING_OFFSET = 8 * 3600
DAY = 86400


class Rng(Protocol):
    """The part of :class:`random.Random` the scheduler uses."""

    def uniform(self, a: float, b: float) -> float: ...


@dataclass(frozen=True, kw_only=True)
class Policy:
    """Timing knobs; defaults follow WeChat's documented behaviour."""

    stable_window: float = 300.0
    classic_fraction: tuple[float, float] = (0.75, 0.85)
    stable_aim: tuple[float, float] = (0.05, 0.25)
    min_delay: float = 1.0  # the shortest wait of any kind except transient retries
    backoff_floor: float = 1.0  # transient retries (config retry.min)
    backoff_base: float = 1.0
    backoff_cap: float = 60.0
    fatal_interval: float = 600.0
    unknown_base: float = 30.0
    wecom_after: tuple[float, float] = (0.5, 1.5)


def _stable_window(policy: Policy, fetched_at: float, expires_at: float) -> float:
    # A lifetime shorter than twice the window would put the aim before the
    # fetch itself; half the lifetime keeps one call per half-life at worst.
    return min(policy.stable_window, max(0.0, expires_at - fetched_at) / 2)


def refresh_at(
    *, now: float, fetched_at: float, expires_at: float, grant: Grant, rng: Rng, policy: Policy
) -> float:
    """When a healthy token should be replaced (``now`` if that moment has passed)."""
    if grant == "classic":
        at = fetched_at + (expires_at - fetched_at) * rng.uniform(*policy.classic_fraction)
    elif grant == "wecom":
        # WeCom answers with the same token until it expires, then a new one: no
        # earlier renewal exists, so ask just after the expiry.
        at = expires_at + rng.uniform(*policy.wecom_after)
    else:
        window = _stable_window(policy, fetched_at, expires_at)
        at = expires_at - window + window * rng.uniform(*policy.stable_aim)
    return max(at, now)


def fleet_refresh_at(
    *,
    now: float,
    fetched_at: float,
    expires_at: float,
    token_print: str,
    grant: Grant,
    rng: Rng,
    policy: Policy,
) -> float:
    """When an instance of a fleet should replace the token of fingerprint ``token_print``.

    Every instance draws the *same* jitter for the same token (seeded by its
    fingerprint), plus a small offset of its own: the fleet then refreshes at one
    point per token, not at the earliest of N independent draws, and the
    instances do not all reach for the lock at the same instant.
    """
    shared = random.Random(int(token_print, 16))
    at = refresh_at(
        now=now,
        fetched_at=fetched_at,
        expires_at=expires_at,
        grant=grant,
        rng=shared,
        policy=policy,
    )
    if at > now and grant != "wecom":
        at += rng.uniform(0, 0.01 * max(0.0, expires_at - fetched_at))
    return at


def unchanged_retry_at(
    *,
    now: float,
    fetched_at: float,
    expires_at: float,
    rng: Rng,
    policy: Policy,
    grant: Grant = "stable",
) -> float:
    """WeChat answered with the token we already hold (stable or WeCom, not renewed yet).

    Inside the renewal window: ask again within seconds, since the renewal is
    due. Before it (our clock ran ahead): aim inside the window as usual.
    """
    if grant == "wecom":
        return max(now + policy.min_delay, expires_at + policy.wecom_after[0])
    window = _stable_window(policy, fetched_at, expires_at)
    if now < expires_at - window:
        return refresh_at(
            now=now,
            fetched_at=fetched_at,
            expires_at=expires_at,
            grant="stable",
            rng=rng,
            policy=policy,
        )
    # WeChat's real window may be shorter than ours: keep several tries in hand
    # before the token runs out rather than overshooting it.
    step = min(max(policy.min_delay, window / 30), (expires_at - now) / 3)
    return now + max(policy.min_delay, step * rng.uniform(0.5, 1.0))


def backoff(attempt: int, rng: Rng, *, base: float, cap: float, floor: float) -> float:
    """Capped exponential backoff with full jitter; ``attempt`` counts from 1."""
    ceiling = min(cap, base * 2 ** min(max(attempt, 1) - 1, 62))
    return max(floor, rng.uniform(0, ceiling))


def next_minute(now: float) -> float:
    return (math.floor(now / 60) + 1) * 60.0


def next_quota_reset(now: float) -> float:
    """Next 00:00 Beijing time (UTC+8), when WeChat's daily quotas reset."""
    return (math.floor((now + BEIJING_OFFSET) / DAY) + 1) * DAY - BEIJING_OFFSET


def retry_at(
    *,
    now: float,
    error: FetchError,
    attempt: int,
    rng: Rng,
    policy: Policy,
    expires_at: float | None,
) -> float:
    """When to try again after ``error``, the ``attempt``-th failure in a row."""
    if isinstance(error, DailyQuotaError):
        return next_quota_reset(now) + rng.uniform(0, 60)
    if isinstance(error, MinuteQuotaError):
        return next_minute(now) + rng.uniform(policy.min_delay, 5)
    if isinstance(error, AdminWaitError):
        return now + error.wait * rng.uniform(1.0, 1.1)
    if isinstance(error, FatalConfigError):
        return now + policy.fatal_interval * rng.uniform(1.0, 1.1)
    if isinstance(error, UnknownErrcodeError):
        return now + backoff(
            attempt,
            rng,
            base=policy.unknown_base,
            cap=policy.fatal_interval,
            floor=policy.min_delay,
        )
    delay = backoff(
        attempt, rng, base=policy.backoff_base, cap=policy.backoff_cap, floor=policy.backoff_floor
    )
    if expires_at is not None and expires_at > now:
        # Keep several tries in hand before the token consumers hold runs out.
        delay = min(delay, max(policy.backoff_floor, (expires_at - now) / 4))
    return now + delay


def force_allowed_at(
    now: float, used: list[float], *, daily: int = 20, interval: float = 30.0
) -> float:
    """When the next stable force_refresh is allowed (``now`` if it is).

    WeChat allows 20 a day per app (the day turns at 00:00 Beijing time) and
    ignores a force less than 30 s after the previous one.
    """
    day_start = next_quota_reset(now) - DAY
    today = [t for t in used if t >= day_start]
    if len(today) >= daily:
        return next_quota_reset(now)
    if today and now - max(today) < interval:
        return max(today) + interval
    return now
