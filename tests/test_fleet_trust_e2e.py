"""Fleet mode trusts nothing in Redis: hostile records and a misbehaving Redis, real processes."""

from __future__ import annotations

import json
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis
from conftest import DaemonFactory, EmulatorFactory
from harness import FLEET_KEY, DaemonProcess, EmulatorProcess, RedisServer, TestApp, wait_for

from wxtokend.fleet import Shared

pytestmark = pytest.mark.e2e

EVIL = "evil token\nwith newline and \u00fcn\u00efcode"
LONG = "HOSTILE" + "x" * 606  # 613 visible ASCII characters


def apps(n: int) -> list[TestApp]:
    return [
        TestApp(
            appid=f"wx{0xE000 + i:016x}",
            secret=f"{0xE000 + i:032x}",
            name=f"app{i}",
            grant="classic",
        )
        for i in range(n)
    ]


def fleet_settings(server: RedisServer) -> dict[str, Any]:
    return {"redis": server.url, "lock_ttl": 3, "reconcile_interval": 2}


def credential(app: TestApp) -> str:
    return f"{app.appid}:classic"


def signed(cred: str, token: str, fetched_at: float, expires_at: float, version: int) -> str:
    """A record as a member holding the fleet key would write it."""
    record = Shared(
        credential=cred, token=token, expires_at=expires_at, fetched_at=fetched_at, version=version
    )
    return record.to_json(FLEET_KEY.encode())


def hostile_records(target: TestApp, other: TestApp, version: int) -> list[tuple[str, str]]:
    """(what, raw record) to plant under ``target``'s key; each must be refused, saying why."""
    now, cred, theirs = time.time(), credential(target), credential(other)
    mine_as_ticket = f"{cred}:jsapi"  # the app's jsapi ticket record: another kind
    unsigned = {"token": "HOSTILE_UNSIGNED", "expires_at": now + 7200, "fetched_at": now}
    return [
        ("the token is not 1-512", signed(cred, EVIL, now, now + 7200, version)),
        ("the token is not 1-512", signed(cred, LONG, now, now + 7200, version + 1)),
        ("is not 1 s to a day", signed(cred, "HOSTILE_FAR", now, 1e15, version + 2)),
        ("in the future", signed(cred, "HOSTILE_SOON", now + 3600, now + 7200, version + 3)),
        ("another credential", signed(theirs, "HOSTILE_APPID", now, now + 600, version + 4)),
        ("another credential", signed(mine_as_ticket, "HOSTILE_KIND", now, now + 60, version + 5)),
        ("not valid JSON", '{"token": "HOSTILE_GARBAGE", "version": ' + str(version + 6)),
        ("unsigned", json.dumps(unsigned | {"version": version + 7})),
        ("signature is wrong", _other_key(cred, "HOSTILE_OTHERKEY", now, version + 8)),
    ]


def _other_key(cred: str, token: str, now: float, version: int) -> str:
    record = Shared(
        credential=cred, token=token, expires_at=now + 600, fetched_at=now, version=version
    )
    return record.to_json(b"another-fleet-key-with-32-characters")


def stored_version(client: redis.Redis, cred: str) -> int:
    raw = client.get(f"wxtokend:rec:{cred}")
    try:
        return int(json.loads(raw)["version"]) if raw else 0
    except (ValueError, KeyError, TypeError):
        return 0


def rejected_metric(member: DaemonProcess) -> float:
    with member.admin() as admin:
        for line in admin.get("/metrics").text.splitlines():
            if line.startswith('wxtokend_rejected_records_total{source="fleet"}'):
                return float(line.split()[-1])
    return 0.0


@dataclass
class Watcher:
    """Polls every member's files; every token a file newly shows is checked at once."""

    emu: EmulatorProcess
    fleet: list[DaemonProcess]
    group: list[TestApp]
    problems: list[str] = field(default_factory=list)
    seen: dict[tuple[int, str], list[tuple[str, int]]] = field(default_factory=dict)
    owner: dict[str, str] = field(default_factory=dict)  # token -> the app it belongs to
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> Watcher:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        assert self._thread is not None
        self._thread.join(timeout=30)

    def _run(self) -> None:
        while not self._stop.is_set():
            for i, member in enumerate(self.fleet):
                for app in self.group:
                    self._look(i, member, app)
            time.sleep(0.05)

    def _look(self, i: int, member: DaemonProcess, app: TestApp) -> None:
        try:
            record = member.record(app.name)
            token = member.token(app.name)
        except ValueError:
            self.problems.append(f"member {i} {app.name}: unparsable JSON")
            return
        if record is None or token is None:
            return
        history = self.seen.setdefault((i, app.name), [])
        entry = (record["access_token"], int(record["fetched_at"]))
        if history and history[-1] == entry:
            return
        history.append(entry)
        where = f"member {i} {app.name}"
        if history[:-1] and entry[1] < history[-2][1]:
            self.problems.append(f"{where}: an older token replaced a newer one")
        if self.owner.setdefault(entry[0], app.name) != app.name:
            self.problems.append(f"{where}: holds another app's token")
        if "HOSTILE" in token or "evil" in token or "HOSTILE" in entry[0]:
            self.problems.append(f"{where}: holds a planted token")
        valid_for = record["expires_at"] - time.time()
        if not record.get("expired") and valid_for > 1 and self.emu.check(entry[0]) != 0:
            self.problems.append(f"{where}: wrote a token WeChat rejects")


def converged(emu: EmulatorProcess, fleet: list[DaemonProcess], group: list[TestApp]) -> bool:
    for app in group:
        tokens = {d.token(app.name) for d in fleet}
        if len(tokens) != 1 or emu.check(tokens.pop() or "") != 0:
            return False
    return True


class TestHostileRecords:
    """A record planted in Redis (higher version, plus a PUBLISH) is never adopted."""

    def test_planted_records_are_refused(
        self, emulator: EmulatorFactory, daemon: DaemonFactory, redis_server: RedisServer
    ) -> None:
        """Token files keep the valid token, /readyz stays ready, each record is counted and
        logged by its key (never its value), and the app keeps refreshing."""
        group = apps(2)
        target, other = group
        emu = emulator(group, lifetime=30, grace=2)
        fleet = [daemon(group, emu.base_url, fleet=fleet_settings(redis_server)) for _ in range(2)]
        for member in fleet:
            member.start()
        for member in fleet:
            member.wait_for_tokens([a.name for a in group], timeout=30)
        wait_for(lambda: converged(emu, fleet, group), timeout=15, what="the fleet to agree")
        before = {d.token(target.name) for d in fleet}
        watcher = Watcher(emu, fleet, group).start()
        client = redis.Redis.from_url(redis_server.url)
        top = stored_version(client, credential(target)) + 1000
        records = hostile_records(target, other, top)
        for planted, (_, raw) in enumerate(records, start=1):
            client.set(f"wxtokend:rec:{credential(target)}", raw)
            client.publish("wxtokend:updates", credential(target))
            # Each record must be read before the next replaces it: a member busy for a
            # moment would otherwise read only the later one (and count one refusal).
            wait_for(
                lambda n=planted: all(rejected_metric(m) >= n for m in fleet),  # type: ignore[misc]
                timeout=10,
                what=f"record {planted} to be refused by every member",
            )
        for member in fleet:
            with member.admin() as admin:
                ready = admin.get("/readyz")
                assert (ready.status_code, ready.json()["status"]) == (200, "ready")
        assert {d.token(target.name) for d in fleet} == before  # no refresh was due yet
        for member in fleet:
            assert rejected_metric(member) == len(records)
            errors = [e for e in member.events() if e["event"].startswith("fleet record rejected")]
            assert {e["key"] for e in errors} == {f"wxtokend:rec:{credential(target)}"}
            assert len(errors) == len(records)
            for (why, _), error in zip(records, errors, strict=True):
                assert why in error["reason"]
            log = member.log_text()
            assert "HOSTILE" not in log
            assert "evil token" not in log
        # The schedule is untouched: the next refresh (at 75-85 % of 30 s) replaces the
        # planted record with a signed one, and every member follows it.
        wait_for(
            lambda: (
                all(d.token(target.name) not in before for d in fleet)
                and converged(emu, fleet, group)
            ),
            timeout=40,
            what="the next scheduled refresh",
        )
        watcher.stop()
        assert watcher.problems == []
        stored = json.loads(client.get(f"wxtokend:rec:{credential(target)}") or b"{}")
        assert stored["token"] == fleet[0].token(target.name)
        assert stored["version"] > top + len(records) - 1  # above the last planted one
        assert "sig" in stored
        client.close()


class TestRedisMisbehaving:
    """Redis killed, emptied or stalled while members hold tokens."""

    def test_kill_flush_and_stall(
        self, emulator: EmulatorFactory, daemon: DaemonFactory, redis_server: RedisServer
    ) -> None:
        """No member ever writes an invalid, foreign or older token, and they converge."""
        group = apps(2)
        lifetime = 10
        emu = emulator(group, lifetime=lifetime, grace=2)
        fleet = [daemon(group, emu.base_url, fleet=fleet_settings(redis_server)) for _ in range(3)]
        for member in fleet:
            member.start()
        for member in fleet:
            member.wait_for_tokens([a.name for a in group], timeout=30)
        watcher = Watcher(emu, fleet, group).start()
        agree: Callable[[], bool] = lambda: converged(emu, fleet, group)  # noqa: E731

        assert redis_server.process is not None
        redis_server.process.send_signal(signal.SIGKILL)  # kill -9: gone, nothing saved
        redis_server.process.wait()
        redis_server.process = None
        time.sleep(4)
        redis_server.start()  # empty
        wait_for(agree, timeout=lifetime * 3, what="convergence after kill -9 and an empty start")

        client = redis.Redis.from_url(redis_server.url, socket_timeout=30)
        client.flushall()
        time.sleep(lifetime)  # a whole lifetime on an emptied Redis: every app refreshes
        wait_for(agree, timeout=lifetime * 3, what="convergence after FLUSHALL")

        client.execute_command("DEBUG", "SLEEP", "5")  # every member's calls hang meanwhile
        wait_for(agree, timeout=lifetime * 3, what="convergence after DEBUG SLEEP 5")
        time.sleep(lifetime)
        wait_for(agree, timeout=lifetime * 3, what="convergence at the end")
        watcher.stop()
        client.close()
        assert watcher.problems == []
        refreshes = [len(history) for history in watcher.seen.values()]
        assert min(refreshes) >= 3  # every member kept getting new tokens throughout

    def test_one_fetch_per_refresh_after_flushall(
        self, emulator: EmulatorFactory, daemon: DaemonFactory, redis_server: RedisServer
    ) -> None:
        """Redis emptied, versions restart at 1: members still take the first new record
        (its fetch is newer than theirs) instead of each fetching its own."""
        group = apps(2)
        emu = emulator(group, lifetime=10, grace=2)
        fleet = [daemon(group, emu.base_url, fleet=fleet_settings(redis_server)) for _ in range(3)]
        for member in fleet:
            member.start()
        for member in fleet:
            member.wait_for_tokens([a.name for a in group], timeout=30)
        wait_for(lambda: converged(emu, fleet, group), timeout=30, what="the fleet to agree")
        client = redis.Redis.from_url(redis_server.url)
        client.flushall()
        client.close()
        before = {a.name: fleet[0].token(a.name) for a in group}
        emu.post("/emulator/reset-stats", {})
        wait_for(
            lambda: (
                all(d.token(a.name) != before[a.name] for d in fleet for a in group)
                and converged(emu, fleet, group)
            ),
            timeout=30,
            what="every member to take the first refresh after the flush",
        )
        time.sleep(1)  # a second fetch would come right behind the first
        stats = emu.stats()
        assert [stats[a.appid]["token"] for a in group] == [1, 1]


def documented_acls() -> dict[str, str]:
    """The ACL SETUSER lines of README's Security model, by user name."""
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    lines = [line for line in readme.splitlines() if line.startswith("ACL SETUSER ")]
    return {line.split()[2]: line for line in lines}


class TestRedisAcls:
    """The Redis ACLs the README gives are enough for a member, and a follower may only read."""

    def test_documented_acls(
        self, emulator: EmulatorFactory, daemon: DaemonFactory, redis_server: RedisServer
    ) -> None:
        """A member (classic and stable, a force included) and a follower run on the documented
        users without one refused command; the follower's user cannot write a record."""
        acls = documented_acls()
        assert set(acls) == {"wxtokend-member", "wxtokend-follower"}
        admin = redis.Redis.from_url(redis_server.url)
        for user, line in acls.items():
            line = line.replace("MEMBER_PASSWORD", "pw-member").replace(
                "FOLLOWER_PASSWORD", "pw-follower"
            )
            assert admin.execute_command(*line.split()) == b"OK", user
        url = f"redis://{{}}@127.0.0.1:{redis_server.port}/0"
        member_url = url.format("wxtokend-member:pw-member")
        follower_url = url.format("wxtokend-follower:pw-follower")
        group = [*apps(1), TestApp(appid="wx" + "d" * 16, secret="s" * 32, name="mini")]
        emu = emulator(group, lifetime=8, grace=2, stable_window=1)
        member = daemon(
            group,
            emu.base_url,
            fleet={**fleet_settings(redis_server), "redis": member_url},
            stable_renew_window=1,
        )
        follower = daemon(
            group,
            emu.base_url,
            fleet={**fleet_settings(redis_server), "redis": follower_url, "role": "follower"},
            stable_renew_window=1,
        )
        member.start()
        follower.start()
        first = member.wait_for_tokens(["app0", "mini"], timeout=30)
        wait_for(
            lambda: all(follower.token(n) == first[n] for n in first),
            timeout=15,
            what="the follower to mirror the member",
        )
        with member.admin() as client:  # stable: normal mode returns the same token, then force
            answer = client.post("/v1/apps/mini/refresh", json={"access_token": first["mini"]})
            assert answer.json()["result"] == "refreshed"
        assert emu.stats()[group[1].appid]["stable_token_force"] == 1
        assert admin.zcard(f"wxtokend:force:{group[1].appid}:stable") == 1  # the fleet counted it
        admin.close()
        wait_for(
            lambda: (
                member.token("app0") != first["app0"]
                and all(follower.token(n) == member.token(n) for n in first)
            ),
            timeout=20,
            what="a scheduled refresh the follower mirrors",
        )
        for proc in (member, follower):
            assert "NOPERM" not in proc.log_text()
            assert "Redis unreachable" not in proc.log_text()
        as_follower = redis.Redis.from_url(follower_url)
        for write in (
            lambda: as_follower.set("wxtokend:rec:wx1:classic", "{}"),
            lambda: as_follower.publish("wxtokend:updates", "wx1:classic"),
            lambda: as_follower.get("wxtokend:lock:wx1:classic"),
            lambda: as_follower.eval("return 1", 0),
        ):
            with pytest.raises(redis.exceptions.NoPermissionError):
                write()
        as_follower.close()
