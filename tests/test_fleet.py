"""The fleet's Redis layer against a real redis-server: CAS, locks, budget, pub/sub."""

from __future__ import annotations

import asyncio
import io
import json
import time

import pytest
from harness import FLEET_KEY, RedisServer

from wxtokend import logs
from wxtokend.fleet import Fleet, FleetSettings, RedisDown, Shared
from wxtokend.metrics import Metrics
from wxtokend.redact import Secret


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def record(
    version: int, token: str = "T", expires_in: float = 600, credential: str = "wx1:classic"
) -> Shared:
    now = time.time()
    return Shared(
        credential=credential,
        token=f"{token}{version}",
        expires_at=now + expires_in,
        fetched_at=now,
        version=version,
    )


def fleet(url: str, key: str = FLEET_KEY, metrics: Metrics | None = None, **kw: object) -> Fleet:
    settings = FleetSettings(redis_url=url, key=Secret(key), **kw)  # type: ignore[arg-type]
    return Fleet(settings, clock_now=time.time, metrics=metrics)


@pytest.mark.anyio
class TestNewestWins:
    """The shared record only moves forward."""

    async def test_older_or_equal_versions_are_refused(self, redis_server: RedisServer) -> None:
        """A stale write after a newer one is rejected by the server-side compare-and-set."""
        f = fleet(redis_server.url)
        assert await f.write("wx1:classic", record(5))
        assert not await f.write("wx1:classic", record(3))  # older, arriving late
        assert not await f.write("wx1:classic", record(5, token="X"))  # equal
        assert await f.write("wx1:classic", record(6))
        shared = await f.read("wx1:classic")
        assert shared is not None
        assert (shared.token, shared.version) == ("T6", 6)
        await f.aclose()

    async def test_versions_only_grow(self, redis_server: RedisServer) -> None:
        """Versions are taken from a counter, so concurrent fetches get distinct, growing ones."""
        f = fleet(redis_server.url)
        versions = await asyncio.gather(*(f.next_version("wx1:classic") for _ in range(50)))
        assert sorted(versions) == list(range(1, 51))
        await f.aclose()

    async def test_credentials_are_separate(self, redis_server: RedisServer) -> None:
        """Each credential has its own record."""
        f = fleet(redis_server.url)
        await f.write("wx1:classic", record(1, token="A"))
        await f.write("wx2:classic", record(1, token="B", credential="wx2:classic"))
        a, b = await f.read("wx1:classic"), await f.read("wx2:classic")
        assert a is not None
        assert b is not None
        assert (a.token, b.token) == ("A1", "B1")
        await f.aclose()


@pytest.mark.anyio
class TestLock:
    """One fetch per credential across the fleet."""

    async def test_exclusive(self, redis_server: RedisServer) -> None:
        """While one instance holds the lock another cannot take it."""
        a, b = fleet(redis_server.url), fleet(redis_server.url)
        async with a.lock("wx1:classic", wait=0) as held_a:
            assert held_a
            async with b.lock("wx1:classic", wait=0.3) as held_b:
                assert not held_b
        async with b.lock("wx1:classic", wait=0) as held_b:
            assert held_b
        await a.aclose()
        await b.aclose()

    async def test_extended_while_held(self, redis_server: RedisServer) -> None:
        """A fetch longer than lock_ttl keeps the lock: it is extended while held."""
        a, b = fleet(redis_server.url, lock_ttl=1.0), fleet(redis_server.url, lock_ttl=1.0)
        async with a.lock("wx1:classic", wait=0) as held:
            assert held
            await asyncio.sleep(2.0)
            async with b.lock("wx1:classic", wait=0) as other:
                assert not other
        await a.aclose()
        await b.aclose()

    async def test_dead_holder_expires(self, redis_server: RedisServer) -> None:
        """A holder that dies without releasing loses the lock after lock_ttl."""
        a = fleet(redis_server.url, lock_ttl=1.0)
        await a._redis.set("wxtokend:lock:wx1:classic", "someone-dead", px=1000)
        started = time.monotonic()
        async with a.lock("wx1:classic", wait=5) as held:
            assert held
        assert 0.5 < time.monotonic() - started < 2.5
        await a.aclose()

    async def test_release_only_own(self, redis_server: RedisServer) -> None:
        """Releasing never deletes a lock another instance took after ours expired."""
        a = fleet(redis_server.url, lock_ttl=1.0)
        async with a.lock("wx1:classic", wait=0):
            await a._redis.set("wxtokend:lock:wx1:classic", "other-owner", px=5000)
        assert await a._redis.get("wxtokend:lock:wx1:classic") == b"other-owner"
        await a.aclose()


@pytest.mark.anyio
class TestFollowAndBudget:
    """Pub/sub pushes and the fleet-wide force budget."""

    async def test_pubsub_pushes_accepted_writes(self, redis_server: RedisServer) -> None:
        """Every accepted write is published; refused ones are not."""
        writer, follower = fleet(redis_server.url), fleet(redis_server.url)
        seen: list[str] = []
        listening = asyncio.create_task(follower.listen(seen.append))
        await asyncio.sleep(0.3)
        await writer.write("wx1:classic", record(2))
        await writer.write("wx1:classic", record(1))  # refused: not published
        await writer.write("wx2:stable", record(1, credential="wx2:stable"))
        for _ in range(50):
            if len(seen) >= 2:
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.2)
        listening.cancel()
        assert seen == ["wx1:classic", "wx2:stable"]
        await writer.aclose()
        await follower.aclose()

    async def test_force_budget_is_shared(self, redis_server: RedisServer) -> None:
        """Forces recorded by one instance are counted by every other."""
        a, b = fleet(redis_server.url), fleet(redis_server.url)
        now = time.time()
        for i in range(3):
            await a.record_force("wx1:stable", now - i * 40)
        assert len(await b.forces_since("wx1:stable", now - 86400)) == 3
        await a.aclose()
        await b.aclose()

    async def test_unreachable_is_redisdown(self) -> None:
        """An unreachable Redis raises RedisDown and says why in last_error, never a redis error."""
        f = fleet("redis://127.0.0.1:1/0")
        with pytest.raises(RedisDown):
            await f.read("wx1:classic")
        assert not f.up
        assert f.last_error
        await f.aclose()


@pytest.mark.anyio
class TestVersionCounter:
    """Versions stay above the stored record even if the counter is lost."""

    async def test_counter_reset_does_not_lock_writes_out(self, redis_server: RedisServer) -> None:
        """After the counter key is evicted, the next version still beats the record."""
        f = fleet(redis_server.url)
        for _ in range(5):
            await f.write("wx1:classic", record(await f.next_version("wx1:classic")))
        await f._redis.delete("wxtokend:ver:wx1:classic")  # eviction, FLUSH of one key, restore
        version = await f.next_version("wx1:classic")
        assert version == 6
        assert await f.write("wx1:classic", record(version))
        await f.aclose()

    async def test_record_without_version(self, redis_server: RedisServer) -> None:
        """A stored record missing its version is overwritten, not an error."""
        f = fleet(redis_server.url)
        await f._redis.set("wxtokend:rec:wx1:classic", '{"token": "x"}')
        assert await f.write("wx1:classic", record(1))
        assert f.up
        await f.aclose()


def rejected(metrics: Metrics) -> float:
    value = metrics.registry.get_sample_value(
        "wxtokend_rejected_records_total", {"source": "fleet"}
    )
    return value or 0.0


@pytest.mark.anyio
class TestUntrustedRecords:
    """Nothing in Redis is adopted unless signed with the fleet key for its own key."""

    async def test_signed_record_is_read(self, redis_server: RedisServer) -> None:
        """Members sharing the key read each other's records."""
        a, b = fleet(redis_server.url), fleet(redis_server.url)
        assert await a.write("wx1:classic", record(1))
        shared = await b.read("wx1:classic")
        assert shared is not None
        assert shared.token == "T1"
        stored = json.loads(await a._redis.get("wxtokend:rec:wx1:classic"))
        assert set(stored) == {"credential", "token", "expires_at", "fetched_at", "version", "sig"}
        await a.aclose()
        await b.aclose()

    async def test_other_key_is_rejected(self, redis_server: RedisServer) -> None:
        """A record signed with another key (another fleet, a forger) reads as absent."""
        metrics = Metrics()
        other = fleet(redis_server.url, key="another-fleet-key-" + "9" * 20)
        mine = fleet(redis_server.url, metrics=metrics)
        assert await other.write("wx1:classic", record(3, token="FOREIGN"))
        assert await mine.read("wx1:classic") is None
        assert rejected(metrics) == 1
        await other.aclose()
        await mine.aclose()

    async def test_copied_record_is_rejected(self, redis_server: RedisServer) -> None:
        """A valid record of one app copied under another app's key reads as absent."""
        f = fleet(redis_server.url)
        assert await f.write("wx1:classic", record(1))
        raw = await f._redis.get("wxtokend:rec:wx1:classic")
        await f._redis.set("wxtokend:rec:wx2:classic", raw)
        assert await f.read("wx2:classic") is None
        assert await f.read("wx1:classic") is not None
        await f.aclose()

    async def test_logged_once_naming_the_key(self, redis_server: RedisServer) -> None:
        """One loud error per bad record, however often it is read: the key, never the token."""
        stream = io.StringIO()
        logs.configure(level="info", stream=stream, json=True)
        metrics = Metrics()
        f = fleet(redis_server.url, metrics=metrics)
        evil = {"token": "EVILTOKEN", "expires_at": 1e15, "fetched_at": 0, "version": 99}
        await f._redis.set("wxtokend:rec:wx1:classic", json.dumps(evil))
        for _ in range(3):
            assert await f.read("wx1:classic") is None
        events = [json.loads(line) for line in stream.getvalue().splitlines()]
        errors = [e for e in events if e["event"].startswith("fleet record rejected")]
        assert len(errors) == 1
        assert errors[0]["key"] == "wxtokend:rec:wx1:classic"
        assert errors[0]["level"] == "error"
        assert "unsigned" in errors[0]["reason"]
        assert "EVILTOKEN" not in stream.getvalue()
        assert rejected(metrics) == 1
        evil["token"] = "EVILTOKEN2"  # another bad record: counted and logged again
        await f._redis.set("wxtokend:rec:wx1:classic", json.dumps(evil))
        assert await f.read("wx1:classic") is None
        assert rejected(metrics) == 2
        await f.aclose()

    async def test_rejected_record_can_be_overwritten(self, redis_server: RedisServer) -> None:
        """An old unsigned or hostile record is replaced by the next signed write (CAS by
        version still works: the next version is taken above the stored one)."""
        f = fleet(redis_server.url)
        unsigned = {"token": "OLD", "expires_at": time.time() + 600, "fetched_at": 0}
        await f._redis.set("wxtokend:rec:wx1:classic", json.dumps(unsigned | {"version": 41}))
        version = await f.next_version("wx1:classic")
        assert version == 42
        assert await f.write("wx1:classic", record(version))
        shared = await f.read("wx1:classic")
        assert shared is not None
        assert (shared.token, shared.version) == ("T42", 42)
        await f.aclose()
