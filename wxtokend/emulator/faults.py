"""Fault injection: which call misbehaves (one seeded draw) and what the caller then sees.

The draw is pure (``roll``); ``hijack`` turns a fault into the reply that replaces the real
answer, and ``held`` delays a reply that a "lost" fault let through.
"""

from __future__ import annotations

import asyncio
import contextvars
import random
import secrets
from collections.abc import Awaitable, Callable
from enum import Enum

from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response

from wxtokend.emulator.config import Faults

__all__ = ["Fault", "garbage_body", "held", "hijack", "roll"]

# Set by a "lost" fault while a call is handled: how long to hold its finished reply.
_HOLD: contextvars.ContextVar[float] = contextvars.ContextVar("hold", default=0.0)
_BAD_GATEWAY = (
    "<html><head><title>502 Bad Gateway</title></head><body>"
    "<center><h1>502 Bad Gateway</h1></center><hr><center>nginx</center></body></html>"
)

_GATEWAY_TIMEOUT = (
    "<html><head><title>504 Gateway Time-out</title></head><body>"
    "<center><h1>504 Gateway Time-out</h1></center><hr><center>nginx</center></body></html>"
)


class Fault(Enum):
    """How an injected fault makes a token-endpoint call misbehave."""

    HTTP_5XX = "http_5xx"
    BUSY = "busy"
    GARBAGE = "garbage"
    SLOW = "slow"
    HANG = "hang"
    LOST = "lost"


def held(
    handler: Callable[[Request], Awaitable[Response]],
) -> Callable[[Request], Awaitable[Response]]:
    """The handler, its reply held back if a lost fault hit the call (after it took effect)."""

    async def handle(request: Request) -> Response:
        hold = _HOLD.set(0.0)
        try:
            response = await handler(request)
            seconds = _HOLD.get()
        finally:
            _HOLD.reset(hold)
        if seconds:
            await asyncio.sleep(seconds)
        return response

    return handle


def roll(rng: random.Random, faults: Faults) -> Fault | None:
    """The fault that hijacks one call, if any."""
    # One draw split into consecutive bands: each fraction is honoured exactly while they
    # sum to at most 1, and the order decides which wins when they do not.
    bands = (
        (Fault.HTTP_5XX, faults.http_5xx),
        (Fault.BUSY, faults.busy),
        (Fault.GARBAGE, faults.garbage),
        (Fault.SLOW, faults.slow),
        (Fault.HANG, faults.hang),
        (Fault.LOST, faults.lost),
    )
    if not any(fraction for _, fraction in bands):
        return None
    draw = rng.random()
    for fault, fraction in bands:
        if draw < fraction:
            return fault
        draw -= fraction
    return None


def garbage_body(rng: random.Random) -> bytes:
    """A body no JSON parser accepts: either not JSON at all, or JSON cut off mid-token."""
    if rng.random() < 0.5:
        return b"upstream connect error or disconnect/reset before headers"
    return b'{"access_token":"' + secrets.token_urlsafe(24).encode()


async def hijack(fault: Fault, faults: Faults, rng: random.Random) -> Response | None:
    """The response ``fault`` replaces the real answer with; None to answer normally."""
    if fault is Fault.HTTP_5XX:
        return HTMLResponse(_BAD_GATEWAY, status_code=502)
    if fault is Fault.BUSY:
        return JSONResponse({"errcode": -1, "errmsg": "system error"})
    if fault is Fault.GARBAGE:
        return Response(garbage_body(rng), media_type="application/json")
    if fault is Fault.SLOW:
        await asyncio.sleep(faults.slow_seconds)
    if fault is Fault.HANG:
        await asyncio.sleep(faults.hang_seconds)
        return HTMLResponse(_GATEWAY_TIMEOUT, status_code=504)
    if fault is Fault.LOST:
        _HOLD.set(faults.hang_seconds)
    return None
