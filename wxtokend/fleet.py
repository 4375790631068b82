"""Fleet mode: many wxtokend instances coordinating through Redis.

One fetch per credential across the fleet, and the newest token always wins.
Keys, for a credential ``c`` (``appid:grant`` for a token, ``appid:grant:jsapi``
for a ticket) under the configured prefix ``p``:

- ``p:rec:c``    the shared record, JSON ``{credential, token, expires_at, fetched_at,
                 version, sig}``, ``sig`` an HMAC-SHA256 with the fleet key over the rest;
- ``p:ver:c``    a counter: a version is taken *before* a fetch, so a slower,
                 older fetch that finishes last still loses (WxJava #1222);
- ``p:lock:c``   the fetch lock: ``SET NX PX`` with a unique owner, extended
                 while the fetch runs, released by compare-and-delete;
- ``p:force:c``  the fleet's force_refresh times (WeChat allows 20 a day);
- ``p:updates``  pub/sub: ``c`` is published on every accepted write.

Every write is a server-side compare-and-set: a record whose version is not
higher than the stored one is refused, whatever order writes arrive in.

Nothing read from Redis is trusted: a record is adopted only if its signature
is right, it names the key it sits under and its token passes
:func:`wxtokend.credential.check`. A pub/sub message is only a hint to re-read.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import secrets
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

import redis.asyncio as redis
from redis.exceptions import RedisError

from wxtokend.credential import InvalidCredential, check
from wxtokend.logs import get_logger
from wxtokend.metrics import Metrics
from wxtokend.redact import Secret

__all__ = ["Fleet", "FleetSettings", "RedisDown", "RejectedRecord", "Shared"]

_CAS = """
local current = redis.call('GET', KEYS[1])
if current then
  local ok, record = pcall(cjson.decode, current)
  if ok and tonumber(record['version'] or 0) >= tonumber(ARGV[2]) then return 0 end
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[3])
redis.call('PUBLISH', KEYS[2], ARGV[4])
return 1
"""
# A version above both the counter and the stored record: if the counter key was
# evicted, flushed or restored, counting restarts *above* the record, not at 1.
_NEXT_VERSION = """
local v = redis.call('INCR', KEYS[1])
local current = redis.call('GET', KEYS[2])
if current then
  local ok, record = pcall(cjson.decode, current)
  local stored = ok and tonumber(record['version'] or 0) or 0
  if stored >= v then
    v = stored + 1
    redis.call('SET', KEYS[1], v)
  end
end
return v
"""
_EXTEND = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
R = TypeVar("R")
_KEEP_RECORD = 86400.0  # a record outlives its token by a day, then Redis drops it


class RedisDown(Exception):
    """Redis could not be reached or answered an error; the message says which."""


@dataclass(frozen=True, kw_only=True)
class FleetSettings:
    redis_url: str
    key: Secret  # the fleet key: signs every record (fleet.key_file)
    key_prefix: str = "wxtokend"
    lock_ttl: float = 15.0
    role: Literal["member", "follower"] = "member"
    on_redis_down: Literal["wait", "fetch"] = "wait"
    reconcile_interval: float = 30.0


class RejectedRecord(Exception):
    """A record in Redis that must not be adopted; the message says why, never its token."""


_FIELDS = frozenset({"credential", "token", "expires_at", "fetched_at", "version", "sig"})
_SIGNED_AS = "wxtokend-fleet-record-v1"  # domain separation: this HMAC signs nothing else


@dataclass(frozen=True, kw_only=True)
class Shared:
    """The fleet's record of one credential, signed with the fleet key.

    The signature covers every field, the credential (the Redis key it belongs
    under) included, so a record moved to another key is refused too.
    """

    credential: str
    token: str = field(repr=False)
    expires_at: float
    fetched_at: float
    version: int

    def _signature(self, key: bytes) -> str:
        fields = [_SIGNED_AS, self.credential, self.token, self.expires_at]
        fields += [self.fetched_at, self.version]
        canonical = json.dumps(fields, ensure_ascii=True, separators=(",", ":"))
        return hmac.new(key, canonical.encode(), hashlib.sha256).hexdigest()

    def to_json(self, key: bytes) -> str:
        return json.dumps(
            {
                "credential": self.credential,
                "token": self.token,
                "expires_at": self.expires_at,
                "fetched_at": self.fetched_at,
                "version": self.version,
                "sig": self._signature(key),
            }
        )

    @classmethod
    def from_json(cls, raw: bytes | str, *, credential: str, key: bytes, now: float) -> Shared:
        """The record stored under ``credential``; RejectedRecord unless it is signed with
        ``key``, belongs to ``credential`` and holds a valid token (credential.check)."""
        try:
            data = json.loads(raw)
        except (ValueError, UnicodeDecodeError, RecursionError):
            raise RejectedRecord("not valid JSON") from None
        if not isinstance(data, dict):
            raise RejectedRecord("not a JSON object")
        if "sig" not in data:
            raise RejectedRecord(
                "unsigned (written by a wxtokend without fleet.key_file, or forged)"
            )
        if set(data) != _FIELDS:
            raise RejectedRecord(f"its fields are not {', '.join(sorted(_FIELDS))}")
        record = cls._typed(data)
        signature = data["sig"]
        expected = record._signature(key)
        if not isinstance(signature, str) or not hmac.compare_digest(
            signature.encode(), expected.encode()
        ):
            raise RejectedRecord("its signature is wrong (not signed with this fleet's key)")
        if not hmac.compare_digest(record.credential.encode(), credential.encode()):
            raise RejectedRecord("it was signed for another credential and copied here")
        try:
            check(record.token, fetched_at=record.fetched_at, expires_at=record.expires_at, now=now)
        except InvalidCredential as exc:
            raise RejectedRecord(str(exc)) from None
        return record

    @classmethod
    def _typed(cls, data: dict[str, Any]) -> Shared:
        version, times = data["version"], (data["expires_at"], data["fetched_at"])
        if isinstance(version, bool) or not isinstance(version, int) or version < 1:
            raise RejectedRecord("version is not a positive integer")
        if any(isinstance(t, bool) or not isinstance(t, int | float) for t in times):
            raise RejectedRecord("expires_at / fetched_at are not unix times")
        if not isinstance(data["credential"], str) or not isinstance(data["token"], str):
            raise RejectedRecord("credential / token are not strings")
        return cls(
            credential=data["credential"],
            token=data["token"],
            expires_at=float(data["expires_at"]),
            fetched_at=float(data["fetched_at"]),
            version=version,
        )


class Fleet:
    """The Redis side of fleet mode; every method raises RedisDown, never a redis error."""

    def __init__(
        self,
        settings: FleetSettings,
        *,
        clock_now: Callable[[], float],
        client: redis.Redis | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.settings = settings
        self._now = clock_now
        self._key_bytes = settings.key.reveal().encode()
        self._metrics = metrics or Metrics()
        self._log = get_logger()
        self._rejected: dict[str, bytes] = {}  # the last record refused per key, logged once
        self._redis = client or redis.Redis.from_url(
            settings.redis_url, socket_timeout=5, socket_connect_timeout=5
        )
        self._cas = self._redis.register_script(_CAS)
        self._next_version = self._redis.register_script(_NEXT_VERSION)
        self._extend = self._redis.register_script(_EXTEND)
        self._release = self._redis.register_script(_RELEASE)
        self.instance = secrets.token_hex(8)
        self.up = True
        self.last_error: str | None = None
        self.lost_locks = 0

    def _key(self, kind: str, credential: str) -> str:
        return f"{self.settings.key_prefix}:{kind}:{credential}"

    @property
    def channel(self) -> str:
        return f"{self.settings.key_prefix}:updates"

    async def aclose(self) -> None:
        with contextlib.suppress(RedisError, OSError):
            await self._redis.aclose()

    async def _call(self, operation: Any) -> Any:
        """Await a Redis operation, turning every failure into RedisDown."""
        try:
            result = await operation
        except (RedisError, OSError, TimeoutError) as exc:
            self.up = False
            self.last_error = f"{type(exc).__name__}: {exc}"
            raise RedisDown(self.last_error) from None
        self.up, self.last_error = True, None
        return result

    # -- records -------------------------------------------------------------

    async def read(self, credential: str) -> Shared | None:
        """The record under ``credential``; None if absent or rejected (then the caller
        goes on with its current token, and fetches if it may: never adopted)."""
        return await self.read_checked(
            credential,
            lambda raw: Shared.from_json(
                raw, credential=credential, key=self._key_bytes, now=self._now()
            ),
        )

    async def read_checked(self, credential: str, parse: Callable[[bytes], R]) -> R | None:
        """The record under ``credential`` as ``parse`` makes it; None if absent or if
        ``parse`` raised RejectedRecord (logged and counted once per stored value)."""
        key = self._key("rec", credential)
        raw = await self._call(self._redis.get(key))
        if raw is None:
            return None
        try:
            record = parse(raw)
        except RejectedRecord as exc:
            self._reject(key, raw, str(exc))
            return None
        self._rejected.pop(key, None)
        return record

    async def read_many_checked(
        self, credentials: list[str], parse: Callable[[str, bytes], R]
    ) -> dict[str, R]:
        """Like :meth:`read_checked` for many credentials in one round trip (MGET):
        the accepted records by credential; absent and rejected ones left out."""
        keys, found = [self._key("rec", c) for c in credentials], {}
        raws = await self._call(self._redis.mget(keys)) if keys else []
        for credential, key, raw in zip(credentials, keys, raws, strict=True):
            if raw is None:
                continue
            try:
                found[credential] = parse(credential, raw)
            except RejectedRecord as exc:
                self._reject(key, raw, str(exc))
        return found

    def _reject(self, key: str, raw: bytes, reason: str) -> None:
        """Log and count a refused record once, however often it is read again."""
        digest = hashlib.sha256(raw).digest()
        if self._rejected.get(key) == digest:
            return
        self._rejected[key] = digest
        self._metrics.rejected("fleet")
        self._log.error(
            "fleet record rejected: not adopted, the current token stays",
            key=key,
            reason=reason,
            fix="only fleet members hold fleet.key_file and may write under the key prefix:"
            " find who wrote this key (see README, Security model); the next refresh replaces it",
        )

    async def next_version(self, credential: str) -> int:
        keys = [self._key("ver", credential), self._key("rec", credential)]
        return int(await self._call(self._next_version(keys=keys)))

    async def write(self, credential: str, record: Shared) -> bool:
        """Compare-and-set: stored only if its version beats the stored one; then published."""
        raw, version = record.to_json(self._key_bytes), record.version
        return await self.write_raw(credential, raw, version, record.expires_at)

    async def write_raw(self, credential: str, raw: str, version: int, expires_at: float) -> bool:
        """Compare-and-set of a signed JSON record whose ``version`` field is ``version``:
        stored only if it beats the stored one, kept a day past ``expires_at``, published."""
        keep_ms = int(max(1.0, expires_at - self._now() + _KEEP_RECORD) * 1000)
        keys = [self._key("rec", credential), self.channel]
        args: list[str | int] = [raw, version, keep_ms, credential]
        return bool(await self._call(self._cas(keys=keys, args=args)))

    def derived_key(self, label: str) -> bytes:
        """A key for one purpose only (``label``), derived from the fleet key."""
        return hmac.new(self._key_bytes, label.encode(), hashlib.sha256).digest()

    # -- the fetch lock ------------------------------------------------------

    @contextlib.asynccontextmanager
    async def lock(self, credential: str, *, wait: float) -> AsyncIterator[bool]:
        """Hold the fetch lock for ``credential``; yields False if not had within ``wait``.

        While held it is extended every third of lock_ttl, so a long fetch keeps it;
        a crashed holder's lock expires after lock_ttl and another instance takes over.
        """
        key = self._key("lock", credential)
        ttl_ms = int(self.settings.lock_ttl * 1000)
        owner = f"{self.instance}:{secrets.token_hex(4)}"
        deadline = self._now() + wait
        held, pause = False, 0.05
        while True:
            held = bool(await self._call(self._redis.set(key, owner, nx=True, px=ttl_ms)))
            if held or self._now() >= deadline:
                break
            await asyncio.sleep(pause)
            pause = min(pause * 2, 0.5)  # a dead holder's lock takes lock_ttl to lapse
        keeper = asyncio.create_task(self._keep(key, owner, ttl_ms)) if held else None
        try:
            yield held
        finally:
            if keeper is not None:
                keeper.cancel()
                await asyncio.gather(keeper, return_exceptions=True)
                with contextlib.suppress(RedisDown):
                    await self._call(self._release(keys=[key], args=[owner]))

    async def _keep(self, key: str, owner: str, ttl_ms: int) -> None:
        while True:
            await asyncio.sleep(ttl_ms / 3000)
            with contextlib.suppress(RedisDown):
                if not await self._call(self._extend(keys=[key], args=[owner, ttl_ms])):
                    self.lost_locks += 1  # lapsed: another instance may be fetching too
                    return

    # -- the force_refresh budget ----------------------------------------------

    async def forces_since(self, credential: str, since: float) -> list[float]:
        key = self._key("force", credential)
        members = await self._call(self._redis.zrangebyscore(key, since, "+inf"))
        return [float(m.decode() if isinstance(m, bytes) else m) for m in members]

    async def record_force(self, credential: str, at: float) -> None:
        key = self._key("force", credential)
        await self._call(self._redis.zadd(key, {f"{at:.6f}": at}))
        await self._call(self._redis.zremrangebyscore(key, "-inf", at - 2 * 86400))

    # -- following -----------------------------------------------------------

    async def listen(self, on_update: Callable[[str], None]) -> None:
        """Call ``on_update(credential)`` for every accepted write, until cancelled.

        Reconnects with backoff when Redis goes away; the periodic reconcile
        covers what was published meanwhile.
        """
        delay = 1.0
        while True:
            pubsub = self._redis.pubsub()
            try:
                await self._call(pubsub.subscribe(self.channel))
                delay = 1.0
                while True:
                    message = await self._call(
                        pubsub.get_message(ignore_subscribe_messages=True, timeout=5.0)
                    )
                    if message and message.get("type") == "message":
                        data = message["data"]
                        text = (
                            data.decode(errors="replace") if isinstance(data, bytes) else str(data)
                        )
                        on_update(text)
            except RedisDown:
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)
            finally:
                # Typed only from redis 8: the ignore must hold for both.
                with contextlib.suppress(RedisError, OSError):
                    await pubsub.aclose()  # type: ignore[no-untyped-call,unused-ignore]
