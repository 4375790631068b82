"""A platform's records in Redis against a real redis-server: sealed, signed, newest wins."""

from __future__ import annotations

import json
import time

import pytest
from harness import FLEET_KEY, RedisServer

from wxtokend.fleet import Fleet, FleetSettings
from wxtokend.metrics import Metrics
from wxtokend.platforms.shared import REMOVED, GrantShare
from wxtokend.platforms.vault import PushedTicket
from wxtokend.redact import Secret

COMPONENT = "wx00c0c0c0c0c0c0c0"
GRANT = "refresh@@@the-only-copy"
TOKEN = "authorizer@@@token"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def share(url: str, key: str = FLEET_KEY, component: str = COMPONENT) -> GrantShare:
    settings = FleetSettings(redis_url=url, key=Secret(key))
    return GrantShare(Fleet(settings, clock_now=time.time, metrics=Metrics()), component)


async def raw(s: GrantShare, credential: str) -> bytes:
    value = await s.fleet._redis.get(f"wxtokend:rec:{credential}")
    assert isinstance(value, bytes)
    return value


async def put(s: GrantShare, credential: str, value: bytes | str) -> None:
    await s.fleet._redis.set(f"wxtokend:rec:{credential}", value)


def token(now: float, lifetime: float = 7200) -> tuple[str, float, float]:
    return (TOKEN, now, now + lifetime)


@pytest.mark.anyio
class TestGrants:
    """An authorizer's grant goes to Redis sealed and signed, and comes back only if intact."""

    async def test_round_trip(self, redis_server: RedisServer) -> None:
        """What one instance publishes another reads: grant, token and a growing version."""
        a, b = share(redis_server.url), share(redis_server.url)
        now = time.time()
        first = await a.publish("wxa1", GRANT, token(now), now=now)
        second = await a.publish("wxa1", GRANT + "2", token(now), now=now)
        assert first is not None
        assert second is not None
        assert second > first
        got = await b.read("wxa1", now)
        assert got is not None
        assert (got.grant, got.token, got.version) == (GRANT + "2", TOKEN, second)
        assert got.expires_at == pytest.approx(now + 7200)
        many = await b.read_many(["wxa1", "wxa2"], now)
        assert list(many) == ["wxa1"]
        assert many["wxa1"].grant == GRANT + "2"

    async def test_a_removal_is_the_newest_record(self, redis_server: RedisServer) -> None:
        """An unauthorized account's record says so, newer than its grant, signed alike."""
        a, b = share(redis_server.url), share(redis_server.url)
        now = time.time()
        granted = await a.publish("wxa1", GRANT, token(now), now=now)
        removed = await a.publish_removed("wxa1", now=now)
        assert granted is not None
        assert removed is not None
        assert removed > granted
        got = await b.read("wxa1", now)
        assert got is not None
        assert got.removed
        assert got.token is None
        assert REMOVED not in (await raw(a, a.grant_key("wxa1"))).decode()  # sealed too

    async def test_the_refresh_token_is_never_in_redis_in_clear(
        self, redis_server: RedisServer
    ) -> None:
        """Anyone who can read Redis sees the sealed grant only."""
        s = share(redis_server.url)
        now = time.time()
        await s.publish("wxa1", GRANT, token(now), now=now)
        stored = await raw(s, s.grant_key("wxa1"))
        assert GRANT.encode() not in stored
        assert b"the-only-copy" not in stored

    async def test_an_expired_token_still_carries_its_grant(
        self, redis_server: RedisServer
    ) -> None:
        """Read after the token expired: the grant is adopted, the dead token is not."""
        s = share(redis_server.url)
        now = time.time()
        await s.publish("wxa1", GRANT, token(now - 100, lifetime=60), now=now)
        got = await s.read("wxa1", now)
        assert got is not None
        assert got.grant == GRANT
        assert got.token is None

    async def test_another_fleet_key_is_refused(self, redis_server: RedisServer) -> None:
        """A record signed and sealed with another key is not adopted, and is counted."""
        ours, theirs = share(redis_server.url), share(redis_server.url, key="x" * 40)
        now = time.time()
        await theirs.publish("wxa1", GRANT, token(now), now=now)
        assert await ours.read("wxa1", now) is None
        assert 'wxtokend_rejected_records_total{source="fleet"} 1.0' in (
            ours.fleet._metrics.render().decode()
        )

    async def test_tampering_is_refused(self, redis_server: RedisServer) -> None:
        """Any field changed (token, expiry, version, sealed grant): the record is refused."""
        s = share(redis_server.url)
        now = time.time()
        await s.publish("wxa1", GRANT, token(now), now=now)
        good = json.loads(await raw(s, s.grant_key("wxa1")))
        changes = {
            "token": "forged@@@token",
            "expires_at": now + 80000,
            "version": good["version"] + 100,
            "grant": good["grant"][:-4] + "AAA=",
        }
        for name, value in changes.items():
            await put(s, s.grant_key("wxa1"), json.dumps({**good, name: value}))
            assert await s.read("wxa1", now) is None, name
        for broken in (b"not json", b"[]", json.dumps({**good, "extra": 1}).encode()):
            await put(s, s.grant_key("wxa1"), broken)
            assert await s.read("wxa1", now) is None

    async def test_a_record_copied_to_another_account_is_refused(
        self, redis_server: RedisServer
    ) -> None:
        """Account A's valid record put under account B's key is not B's grant."""
        s = share(redis_server.url)
        now = time.time()
        await s.publish("wxa1", GRANT, token(now), now=now)
        await put(s, s.grant_key("wxa2"), await raw(s, s.grant_key("wxa1")))
        assert await s.read("wxa2", now) is None
        # Nor does one platform's record pass for another's.
        other = share(redis_server.url, component="wx00d0d0d0d0d0d0d0")
        await put(other, other.grant_key("wxa1"), await raw(s, s.grant_key("wxa1")))
        assert await other.read("wxa1", now) is None


@pytest.mark.anyio
class TestTicket:
    """The pushed ticket is shared sealed; the newest (by WeChat's creation time) wins."""

    async def test_newest_wins(self, redis_server: RedisServer) -> None:
        """An older ticket published late does not replace a newer one."""
        a, b = share(redis_server.url), share(redis_server.url)
        now = time.time()
        assert await a.publish_ticket(PushedTicket(ticket="ticket@@@new", created_at=now))
        assert not await a.publish_ticket(PushedTicket(ticket="ticket@@@old", created_at=now - 600))
        got = await b.read_ticket()
        assert got is not None
        assert (got.ticket, got.created_at) == ("ticket@@@new", now)
        assert b"ticket@@@new" not in await raw(a, a.ticket_key)

    async def test_forged_ticket_is_refused(self, redis_server: RedisServer) -> None:
        """A ticket record not sealed with the fleet key is not taken."""
        s = share(redis_server.url)
        now = time.time()
        forged = {
            "credential": s.ticket_key,
            "ticket": "ticket@@@forged",
            "created_at": now,
            "version": int(now),
            "sig": "0" * 64,
        }
        await put(s, s.ticket_key, json.dumps(forged))
        assert await s.read_ticket() is None
