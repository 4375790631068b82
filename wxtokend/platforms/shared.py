"""Platforms in fleet mode: the pushed ticket and every authorizer's grant, in Redis.

WeChat pushes a platform's ticket to one callback URL, so to one instance; and a
refresh token rotates on each use, so two instances refreshing one authorizer
would race for its only valid grant. So the fleet shares both, under the fleet's
key prefix ``p`` (with :class:`~wxtokend.fleet.Fleet`'s compare-and-set, lock and
pub/sub):

- ``p:rec:ticket:<component_appid>``: the newest ticket ``{credential, ticket,
  created_at, version, sig}``, its version its creation time (newer wins);
- ``p:rec:grant:<component_appid>:<appid>``: an authorizer ``{credential, token,
  expires_at, fetched_at, grant, version, sig}``; its refresh token (``grant``) and
  the ticket are *sealed*: AES-256-GCM under a key derived from the fleet key,
  the credential as associated data (moved under another key, it does not open);
- ``p:lock:grant:…``: held while one instance refreshes that authorizer.

An account that unauthorized the platform gets a grant record whose sealed grant is
:data:`REMOVED`: the others then refresh it at once and let WeChat's answer decide.

Every record is signed (HMAC-SHA256, its own derived key) over all its fields,
and checked like any input before use: a record that fails is not adopted.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import math
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from wxtokend.credential import InvalidCredential, check
from wxtokend.fleet import Fleet, RejectedRecord
from wxtokend.platforms.vault import PushedTicket, check_secret

__all__ = ["REMOVED", "GrantShare", "Sealer", "SharedGrant"]

_GRANT_FIELDS: Final = frozenset(
    {"credential", "token", "expires_at", "fetched_at", "grant", "version", "sig"}
)
_TICKET_FIELDS: Final = frozenset({"credential", "ticket", "created_at", "version", "sig"})
_KEEP_GRANT: Final = 90 * 86400.0  # a grant outlives its token: refresh tokens last long
# The sealed grant of an account that unauthorized the platform: WeChat tells one instance,
# the record tells the rest. No refresh token WeChat issues has this form; an instance too
# old to know it takes it for one, is refused (61023) and marks the account.
REMOVED: Final = "wxtokend:unauthorized"


class Sealer:
    """Signs and seals platform records with keys derived from the fleet key."""

    def __init__(self, sign_key: bytes, seal_key: bytes) -> None:
        self._sign_key = sign_key
        self._aead = AESGCM(seal_key)

    @classmethod
    def of(cls, fleet: Fleet) -> Sealer:
        return cls(
            fleet.derived_key("wxtokend-platform-sign-v1"),
            fleet.derived_key("wxtokend-platform-seal-v1"),
        )

    def signature(self, fields: list[object]) -> str:
        canonical = json.dumps(fields, ensure_ascii=True, separators=(",", ":"))
        return hmac.new(self._sign_key, canonical.encode(), "sha256").hexdigest()

    def seal(self, secret: str, credential: str) -> str:
        nonce = os.urandom(12)
        sealed = self._aead.encrypt(nonce, secret.encode(), credential.encode())
        return base64.b64encode(nonce + sealed).decode()

    def open(self, sealed: object, credential: str, what: str) -> str:
        """The secret sealed for ``credential``; RejectedRecord otherwise (never echoed)."""
        try:
            raw = base64.b64decode(str(sealed), validate=True)
            plain = self._aead.decrypt(raw[:12], raw[12:], credential.encode()).decode()
        except (binascii.Error, ValueError, InvalidTag, UnicodeDecodeError):
            raise RejectedRecord(f"its {what} does not open with this fleet's key") from None
        try:
            return check_secret(plain, what)
        except ValueError as exc:
            raise RejectedRecord(str(exc)) from None

    def checked(self, data: dict[str, Any], fields: list[object]) -> None:
        given = data.get("sig")
        expected = self.signature(fields)
        if not isinstance(given, str) or not hmac.compare_digest(given, expected):
            raise RejectedRecord("its signature is wrong (not signed with this fleet's key)")


@dataclass(frozen=True, kw_only=True)
class SharedGrant:
    """An authorizer as the fleet holds it: its refresh token, and its token if still valid."""

    version: int
    grant: str = field(repr=False)
    token: str | None = field(default=None, repr=False)  # None once expired
    fetched_at: float = 0.0
    expires_at: float = 0.0

    @property
    def removed(self) -> bool:
        """The account unauthorized the platform (on the instance WeChat told)."""
        return self.grant == REMOVED


def _object(raw: bytes, fields: frozenset[str]) -> dict[str, Any]:
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise RejectedRecord("not valid JSON") from None
    if not isinstance(data, dict):
        raise RejectedRecord("not a JSON object")
    if set(data) != fields:
        raise RejectedRecord(f"its fields are not {', '.join(sorted(fields))}")
    version = data["version"]
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise RejectedRecord("version is not a positive integer")
    return data


def _time(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise RejectedRecord(f"{name} is not a unix time")
    return float(value)


def _signed_fields(kind: str, data: dict[str, Any], names: list[str]) -> list[object]:
    return [f"wxtokend-platform-{kind}-v1", *(data[n] for n in names)]


_GRANT_SIGNED = ["credential", "token", "expires_at", "fetched_at", "grant", "version"]
_TICKET_SIGNED = ["credential", "ticket", "created_at", "version"]


class GrantShare:
    """One platform's side of the fleet: its ticket and its authorizers' grants.

    Every method may raise :class:`~wxtokend.fleet.RedisDown`.
    """

    def __init__(self, fleet: Fleet, component_appid: str) -> None:
        self.fleet = fleet
        self.component_appid = component_appid
        self._sealer = Sealer.of(fleet)
        self.ticket_key = f"ticket:{component_appid}"
        self.grant_prefix = f"grant:{component_appid}:"

    @property
    def follower(self) -> bool:
        return self.fleet.settings.role == "follower"

    @property
    def fetch_without_redis(self) -> bool:
        return self.fleet.settings.on_redis_down == "fetch" and not self.follower

    def grant_key(self, appid: str) -> str:
        return self.grant_prefix + appid

    # -- authorizers -------------------------------------------------------------

    @asynccontextmanager
    async def turn(self, appid: str) -> AsyncIterator[bool]:
        """This instance's turn to refresh ``appid``: True if it holds the lock now.

        Never waits: an instance that does not get it plans to read the holder's
        result instead. A follower never has a turn.
        """
        if self.follower:
            yield False
            return
        async with self.fleet.lock(self.grant_key(appid), wait=0.0) as held:
            yield held

    async def read(self, appid: str, now: float) -> SharedGrant | None:
        credential = self.grant_key(appid)
        return await self.fleet.read_checked(
            credential, lambda raw: self.parse_grant(raw, credential, now)
        )

    async def read_many(self, appids: list[str], now: float) -> dict[str, SharedGrant]:
        """The fleet's records of ``appids`` (one round trip), by appid."""
        prefix = len(self.grant_prefix)
        found = await self.fleet.read_many_checked(
            [self.grant_key(a) for a in appids],
            lambda credential, raw: self.parse_grant(raw, credential, now),
        )
        return {credential[prefix:]: grant for credential, grant in found.items()}

    async def publish(
        self, appid: str, grant: str, token: tuple[str, float, float] | None, *, now: float
    ) -> int | None:
        """The grant (and token: value, fetched_at, expires_at) as the fleet's newest;
        its version, or None if a newer one was stored meanwhile."""
        credential = self.grant_key(appid)
        version = await self.fleet.next_version(credential)
        value, fetched_at, expires_at = token if token is not None else (None, 0.0, 0.0)
        data: dict[str, Any] = {
            "credential": credential,
            "token": value,
            "expires_at": expires_at,
            "fetched_at": fetched_at,
            "grant": self._sealer.seal(grant, credential),
            "version": version,
        }
        data["sig"] = self._sealer.signature(_signed_fields("grant", data, _GRANT_SIGNED))
        keep = max(expires_at, now) + _KEEP_GRANT
        stored = await self.fleet.write_raw(credential, json.dumps(data), version, keep)
        return version if stored else None

    async def publish_removed(self, appid: str, *, now: float) -> int | None:
        """``appid`` unauthorized the platform: the fleet's newest record says so."""
        return await self.publish(appid, REMOVED, None, now=now)

    def parse_grant(self, raw: bytes, credential: str, now: float) -> SharedGrant:
        """The checked record under ``credential``, or RejectedRecord saying why."""
        data = _object(raw, _GRANT_FIELDS)
        self._sealer.checked(data, _signed_fields("grant", data, _GRANT_SIGNED))
        if data["credential"] != credential:
            raise RejectedRecord("it was signed for another authorizer and copied here")
        grant = self._sealer.open(data["grant"], credential, "refresh_token")
        fetched_at = _time(data["fetched_at"], "fetched_at")
        expires_at = _time(data["expires_at"], "expires_at")
        token = data["token"]
        if token is not None:
            try:
                check(token, fetched_at=fetched_at, expires_at=expires_at, now=now)
            except InvalidCredential as exc:
                raise RejectedRecord(str(exc)) from None
            if now >= expires_at:
                token = None  # the grant is still good; an expired token is not
        return SharedGrant(
            version=data["version"],
            grant=grant,
            token=token,
            fetched_at=fetched_at,
            expires_at=expires_at,
        )

    # -- the pushed ticket ---------------------------------------------------------

    async def read_ticket(self) -> PushedTicket | None:
        credential = self.ticket_key
        return await self.fleet.read_checked(
            credential, lambda raw: self.parse_ticket(raw, credential)
        )

    async def publish_ticket(self, ticket: PushedTicket) -> bool:
        """The ticket as the fleet's newest, unless a newer one is there (by creation time)."""
        credential = self.ticket_key
        data: dict[str, Any] = {
            "credential": credential,
            "ticket": self._sealer.seal(ticket.ticket, credential),
            "created_at": ticket.created_at,
            "version": max(1, math.floor(ticket.created_at)),
        }
        data["sig"] = self._sealer.signature(_signed_fields("ticket", data, _TICKET_SIGNED))
        keep = ticket.created_at + 12 * 3600
        return await self.fleet.write_raw(credential, json.dumps(data), data["version"], keep)

    def parse_ticket(self, raw: bytes, credential: str) -> PushedTicket:
        data = _object(raw, _TICKET_FIELDS)
        self._sealer.checked(data, _signed_fields("ticket", data, _TICKET_SIGNED))
        if data["credential"] != credential:
            raise RejectedRecord("it was signed for another platform and copied here")
        ticket = self._sealer.open(data["ticket"], credential, "ticket")
        return PushedTicket(ticket=ticket, created_at=_time(data["created_at"], "created_at"))
