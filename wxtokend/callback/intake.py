"""One receiver's callbacks: checked, opened and turned into an event, or refused.

Every check happens before anything in a body is used: the query names a
signature, a timestamp near now and a nonce; the signature matches the body; the
body decrypts with our key to a message for our receiver id; and the same
(timestamp, nonce, signature) was not seen in the last :data:`MAX_CLOCK_SKEW`
seconds (a replay within the window is refused as well as one outside it).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from typing import Final

from wxtokend.callback.crypto import MAX_CLOCK_SKEW, Forged, MessageCrypto
from wxtokend.callback.events import Event, Product, parse_event
from wxtokend.clock import Clock
from wxtokend.errors import BadCallback

__all__ = ["REPLAY_MEMORY", "Intake", "Replayed"]

REPLAY_MEMORY: Final = 10_000  # signatures remembered: WeChat sends a few per minute


class Replayed(Forged):
    """A callback seen before: the same signature, timestamp and nonce."""


class Intake:
    """Opens the callbacks addressed to one receiver (a platform or a suite)."""

    def __init__(self, crypto: MessageCrypto, *, product: Product, clock: Clock) -> None:
        self._crypto = crypto
        self._product = product
        self._clock = clock
        self._seen: OrderedDict[tuple[str, str, str], float] = OrderedDict()

    def open(self, body: bytes, query: Mapping[str, str]) -> Event | None:
        """The event in a callback (None: one wxtokend ignores), or :class:`BadCallback`."""
        signature = query.get("msg_signature", "")
        timestamp, nonce = query.get("timestamp", ""), query.get("nonce", "")
        if not signature or not nonce:
            raise BadCallback("msg_signature or nonce missing from the query")
        if query.get("encrypt_type", "aes") != "aes":
            raise BadCallback("encrypt_type is not aes")
        now = self._clock.now()
        message = self._crypto.open(
            body, msg_signature=signature, timestamp=timestamp, nonce=nonce, now=now
        )
        self._remember((timestamp, nonce, signature), now)
        event = parse_event(message, product=self._product)
        if event is not None and event.receiver != self._crypto.receiver_id:
            raise Forged("the message names another receiver, not ours")
        return event

    def _remember(self, key: tuple[str, str, str], now: float) -> None:
        seen = self._seen
        while seen and (
            len(seen) >= REPLAY_MEMORY or next(iter(seen.values())) < now - 2 * MAX_CLOCK_SKEW
        ):
            seen.popitem(last=False)
        if key in seen:
            raise Replayed("this callback was already received (a replay)")
        seen[key] = now
