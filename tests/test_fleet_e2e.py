"""Fleet mode with real processes: five daemons, one emulator, one real redis-server."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from typing import Any

import pytest
from conftest import DaemonFactory, EmulatorFactory
from harness import DaemonProcess, EmulatorProcess, RedisServer, TestApp, raw_post, wait_for

pytestmark = pytest.mark.e2e


def apps(n: int, grant: str = "classic") -> list[TestApp]:
    return [
        TestApp(
            appid=f"wx{0xF000 + i:016x}", secret=f"{0xF000 + i:032x}", name=f"app{i}", grant=grant
        )
        for i in range(n)
    ]


def fleet_settings(redis: RedisServer, **extra: Any) -> dict[str, Any]:
    return {"redis": redis.url, "lock_ttl": 3, "reconcile_interval": 2, **extra}


def start_fleet(
    daemon: DaemonFactory, members: list[TestApp], emu: EmulatorProcess, redis: RedisServer, n: int
) -> list[DaemonProcess]:
    return [daemon(members, emu.base_url, fleet=fleet_settings(redis)).start() for _ in range(n)]


def token_calls(emu: EmulatorProcess, group: list[TestApp]) -> int:
    stats = emu.stats()
    return sum(stats[a.appid]["token"] + stats[a.appid]["stable_token"] for a in group)


class TestOneFetchPerApp:
    """Five classic-grant instances behave like one."""

    def test_five_members(
        self, emulator: EmulatorFactory, daemon: DaemonFactory, redis_server: RedisServer
    ) -> None:
        """About one fetch per app per lifetime (not five); every read on every host validates."""
        group = apps(3)
        lifetime = 6
        emu = emulator(group, lifetime=lifetime, grace=2)
        fleet = start_fleet(daemon, group, emu, redis_server, 5)
        for d in fleet:
            d.wait_for_tokens([a.name for a in group], timeout=30)
        emu.post("/emulator/reset-stats", {})
        started = time.monotonic()
        failures, seen = [], set()
        while time.monotonic() - started < 5 * lifetime:
            for d in fleet:
                for a in group:
                    token = d.token(a.name) or ""
                    seen.add(token)
                    if emu.check(token):
                        failures.append(a.name)
            time.sleep(0.1)
        lifetimes = (time.monotonic() - started) / lifetime
        per_app = token_calls(emu, group) / len(group) / lifetimes
        assert failures == []
        assert len(seen) >= 3 * 4
        assert per_app <= 1.6, per_app  # a single daemon makes ~1.25; five alone would be ~6


class TestFollower:
    """A follower mirrors the fleet and never fetches."""

    def test_follower_never_fetches(
        self, emulator: EmulatorFactory, daemon: DaemonFactory, redis_server: RedisServer
    ) -> None:
        """Alone, a follower makes no call; once a member publishes, it has the same token."""
        group = apps(2)
        emu = emulator(group, lifetime=60)
        follower = daemon(group, emu.base_url, fleet=fleet_settings(redis_server, role="follower"))
        follower.start()
        time.sleep(3)
        assert token_calls(emu, group) == 0
        assert follower.token("app0") is None
        member = daemon(group, emu.base_url, fleet=fleet_settings(redis_server)).start()
        tokens = member.wait_for_tokens(["app0", "app1"])
        wait_for(
            lambda: all(follower.token(n) == tokens[n] for n in tokens),
            timeout=10,
            what="the follower to mirror the member's tokens",
        )
        assert token_calls(emu, group) == 2


class TestCrashes:
    """A dead lock holder and a restarted instance."""

    def test_kill_the_lock_holder(
        self, emulator: EmulatorFactory, daemon: DaemonFactory, redis_server: RedisServer
    ) -> None:
        """kill -9 the instance fetching under the lock: another one finishes within lock_ttl."""
        group = apps(1)
        emu = emulator(group, lifetime=60)
        emu.post("/emulator/faults", {"faults": {"slow": 1.0, "slow_seconds": 30}})
        holder = daemon(group, emu.base_url, fleet=fleet_settings(redis_server)).start()
        wait_for(lambda: token_calls(emu, group) == 1, timeout=15, what="the holder's fetch")
        other = daemon(group, emu.base_url, fleet=fleet_settings(redis_server)).start()
        time.sleep(1)
        emu.post("/emulator/faults", {"faults": {}})
        assert holder.process is not None
        holder.process.send_signal(signal.SIGKILL)
        holder.process.wait()
        killed = time.monotonic()
        other.wait_for_tokens(["app0"], timeout=15)
        took = time.monotonic() - killed
        assert took < 3 + 3, took  # lock_ttl, plus the retry after the lock wait, plus a fetch
        assert emu.check(other.token("app0") or "") == 0

    def test_restart_takes_the_shared_record(
        self, emulator: EmulatorFactory, daemon: DaemonFactory, redis_server: RedisServer
    ) -> None:
        """A new instance (empty disk) takes the fleet's valid token with zero upstream calls."""
        group = apps(2)
        emu = emulator(group, lifetime=120)
        first = daemon(group, emu.base_url, fleet=fleet_settings(redis_server)).start()
        tokens = first.wait_for_tokens(["app0", "app1"])
        calls = token_calls(emu, group)
        second = daemon(group, emu.base_url, fleet=fleet_settings(redis_server)).start()
        assert second.wait_for_tokens(["app0", "app1"]) == tokens
        time.sleep(1)
        assert token_calls(emu, group) == calls


class TestRedisOutage:
    """Redis away for longer than a refresh interval."""

    def test_outage_and_return(
        self, emulator: EmulatorFactory, daemon: DaemonFactory, redis_server: RedisServer
    ) -> None:
        """Valid tokens keep being served, classic members do not fetch alone, then converge."""
        group = apps(2)
        lifetime = 12
        emu = emulator(group, lifetime=lifetime, grace=2)
        fleet = start_fleet(daemon, group, emu, redis_server, 3)
        for d in fleet:
            d.wait_for_tokens(["app0", "app1"], timeout=30)
        redis_server.stop()
        stopped = time.monotonic()
        calls = token_calls(emu, group)
        bad_reads = []
        while time.monotonic() - stopped < lifetime * 0.9:
            for d in fleet:
                for a in group:
                    record = d.record(a.name) or {}
                    if record.get("expires_at", 0) > time.time() + 1 and emu.check(
                        record["access_token"]
                    ):
                        bad_reads.append(a.name)
            time.sleep(0.2)
        assert bad_reads == []
        assert token_calls(emu, group) == calls  # nobody fetched on their own
        with fleet[0].admin() as admin:
            assert "Redis unreachable" in admin.get("/readyz").text
        redis_server.start()
        wait_for(
            lambda: all(
                len({d.token(a.name) for d in fleet}) == 1
                and emu.check(fleet[0].token(a.name) or "") == 0
                for a in group
            ),
            timeout=lifetime * 3,
            what="the fleet to converge on valid tokens",
        )


class TestFleetPassiveStorm:
    """Passive refresh across the fleet."""

    @pytest.mark.parametrize(("grant", "expected"), [("classic", 1), ("stable", 2)])
    def test_thousand_reports_over_five_instances(
        self,
        emulator: EmulatorFactory,
        daemon: DaemonFactory,
        redis_server: RedisServer,
        grant: str,
        expected: int,
    ) -> None:
        """1,000 concurrent reports over 5 instances: one refresh (stable: normal, then force)."""
        group = apps(1, grant)
        emu = emulator(group, lifetime=600)
        fleet = start_fleet(daemon, group, emu, redis_server, 5)
        stale = fleet[0].wait_for_tokens(["app0"])["app0"]
        for d in fleet:
            wait_for(lambda d=d: d.token("app0") == stale, timeout=10, what="the fleet to agree")
        urls = [d.admin_url() for d in fleet]
        before = token_calls(emu, group)
        body = json.dumps({"access_token": stale}).encode()

        async def storm() -> list[tuple[int, bytes, float]]:
            return await asyncio.gather(
                *(raw_post(urls[i % 5], "/v1/apps/app0/refresh", body) for i in range(1000))
            )

        answers = asyncio.run(storm())
        assert token_calls(emu, group) - before == expected
        if grant == "stable":  # normal mode confirmed it valid to WeChat, so one force
            assert emu.stats()[group[0].appid]["stable_token_force"] == 1
        assert {status for status, _, _ in answers} == {200}
        fingerprints = {json.loads(payload)["app"]["fingerprint"] for _, payload, _ in answers}
        assert len(fingerprints) == 1
