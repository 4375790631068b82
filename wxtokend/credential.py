"""THE check of a token or ticket, wherever it comes from.

A WeChat reply, a state file, a fleet record in Redis: each passes :func:`check`
before the daemon holds it, writes it or hands it out. A value that fails is
never adopted; the error says which field is wrong and never quotes the value.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Final

__all__ = [
    "FUTURE_SKEW",
    "MAX_LIFETIME",
    "MAX_TOKEN_LENGTH",
    "InvalidCredential",
    "Token",
    "check",
    "is_valid_token",
]

MAX_TOKEN_LENGTH: Final = 512
# WeChat says "within 7200 s"; a lifetime beyond a day is a broken or hostile
# value, and trusting it would park the refresh loop for years.
MAX_LIFETIME: Final = 86400
# How far ahead of this host's clock another member's fetch time may lie
# (fleet hosts' clocks differ); further is a forged or broken record.
FUTURE_SKEW: Final = 300.0
_VISIBLE_ASCII = re.compile(r"[\x21-\x7e]+")
_ROUNDING = 1e-3  # fetched_at + expires_in - fetched_at is not exact in floats


@dataclass(frozen=True, kw_only=True)
class Token:
    """A token or ticket as WeChat gave it; ``fetched_at`` is when the request was sent."""

    access_token: str = field(repr=False)
    expires_in: int
    fetched_at: float

    @property
    def expires_at(self) -> float:
        return self.fetched_at + self.expires_in


class InvalidCredential(ValueError):
    """Why a token or ticket was refused: names the field, never the value.

    ``field`` is which part failed (``token``, ``lifetime``, ``fetched_at`` or
    ``expires_at``), so a caller can name it as its own source spells it.
    """

    def __init__(self, message: str, *, field: str) -> None:
        self.field = field
        super().__init__(message)


def is_valid_token(token: object) -> bool:
    """1-512 visible ASCII characters: what a consumer can safely ``cat`` and send."""
    return (
        isinstance(token, str)
        and len(token) <= MAX_TOKEN_LENGTH
        and bool(_VISIBLE_ASCII.fullmatch(token))
    )


def check(token: object, *, fetched_at: object, expires_at: object, now: float) -> None:
    """Raise InvalidCredential unless this is a token or ticket wxtokend may hold.

    The token: 1-512 visible ASCII characters. The times: finite unix seconds, a
    lifetime of 1 s to a day, fetched no later than FUTURE_SKEW after ``now``
    (so the expiry is never far in the future either).
    """
    if not is_valid_token(token):
        raise InvalidCredential(
            f"the token is not 1-{MAX_TOKEN_LENGTH} visible ASCII characters", field="token"
        )
    fetched, expires = _unix_time("fetched_at", fetched_at), _unix_time("expires_at", expires_at)
    lifetime = expires - fetched
    if not 1 - _ROUNDING <= lifetime <= MAX_LIFETIME + _ROUNDING:
        raise InvalidCredential(
            f"its lifetime (expires_at - fetched_at) of {lifetime:.0f} s is not 1 s to a day",
            field="lifetime",
        )
    if fetched > now + FUTURE_SKEW:
        raise InvalidCredential(
            f"fetched_at lies {fetched - now:.0f} s in the future", field="fetched_at"
        )


def _unix_time(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InvalidCredential(f"{name} is not a unix time", field=name)
    return float(value)
