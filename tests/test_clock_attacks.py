"""Time lies: the daemon stopped for longer than a lifetime, the wall clock stepped both ways.

Expiry is judged by the wall clock *and* the monotonic one (whichever says
sooner), sleeps run on the monotonic clock, and a daemon-wide watcher tells
every loop when the wall clock was stepped. The end-to-end tests step the real
daemon's wall clock with libfaketime (Debian's ``faketime``, installed by
tests/run); the unit tests step a virtual one.
"""

from __future__ import annotations

import asyncio
import io
import json
import random
import shutil
import signal
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from conftest import DaemonFactory, EmulatorFactory
from fakes import T0, ScriptedWeChat, VirtualClock, daemon_config
from harness import DaemonProcess, EmulatorProcess, TestApp, wait_for

from wxtokend import logs
from wxtokend.config import AppConfig
from wxtokend.daemon import Daemon
from wxtokend.errors import TransientError
from wxtokend.redact import Secret
from wxtokend.refresher import Refresher
from wxtokend.schedule import Policy
from wxtokend.store import TokenStore

# Debian's faketime package, for whichever architecture this is.
LIBFAKETIME = next(Path("/usr/lib").glob("*/faketime/libfaketime.so.1"), None)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class SteppedClock(VirtualClock):
    """A virtual clock whose wall time can be stepped while the monotonic one runs on."""

    def __init__(self) -> None:
        super().__init__()
        self.offset = 0.0

    def now(self) -> float:
        return self.t + self.offset

    def monotonic(self) -> float:
        return self.t

    def step(self, by: float) -> None:
        self.offset += by


def shop_app() -> AppConfig:
    return AppConfig(
        api_base="https://api.weixin.qq.com",
        appid="wx0123456789abcdef",
        name="shop",
        grant="classic",
        secret=Secret("SECRET_0123456789abcdef0123456789"),
        secret_source="secret_file /etc/wxtokend/secrets/shop",
    )


def refresher_on(tmp_path: Path, clock: SteppedClock, wechat: ScriptedWeChat) -> Refresher:
    return Refresher(
        shop_app(),
        source=wechat,
        store=TokenStore(directory=tmp_path, file_mode=0o640),
        clock=clock,
        rng=random.Random(1),
        policy=Policy(),
        semaphore=asyncio.Semaphore(4),
    )


async def run_until(refresher: Refresher, done: Callable[[], bool]) -> None:
    """Run the loop until ``done()``; the virtual clock makes each turn instant."""
    task = asyncio.create_task(refresher.run())
    deadline = time.monotonic() + 30
    while not done() and time.monotonic() < deadline:  # noqa: ASYNC110 - a clock turn
        await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert done(), "the loop never reached the expected state"


@pytest.mark.anyio
class TestSteppedWallClock:
    """One loop on a virtual clock whose wall time is stepped."""

    async def test_step_back_does_not_stretch_the_token(self, tmp_path: Path) -> None:
        """Set back an hour, with WeChat failing: the token still expires after its lifetime."""
        clock = SteppedClock()
        failing = {n: TransientError("HTTP 502 from WeChat") for n in range(2, 10_000)}
        wechat = ScriptedWeChat(clock, lifetime=100, failures=failing)
        refresher = refresher_on(tmp_path, clock, wechat)
        assert await refresher.refresh()
        clock.step(-3600)
        await run_until(refresher, lambda: clock.monotonic() >= T0 + 100.5)
        assert not refresher.has_valid_token()
        assert refresher.status().state == "expired"
        assert json.loads((tmp_path / "shop.json").read_text())["expired"] is True

    async def test_step_forward_past_expiry_refreshes_at_once(self, tmp_path: Path) -> None:
        """Set forward two lifetimes: expired at once by wall time, refetched with no wait."""
        clock = SteppedClock()
        wechat = ScriptedWeChat(clock, lifetime=7200)
        refresher = refresher_on(tmp_path, clock, wechat)
        assert await refresher.refresh()
        clock.step(2 * 7200)
        assert not refresher.has_valid_token()
        refresher.clock_stepped(2 * 7200)
        await run_until(refresher, lambda: len(wechat.calls) == 2)
        assert clock.monotonic() - T0 < 1  # no real time passed
        assert refresher.has_valid_token()

    async def test_step_back_keeps_the_plan_in_real_time(self, tmp_path: Path) -> None:
        """Set back an hour: the next fetch comes at 75-85 % of the lifetime, not an hour late."""
        clock = SteppedClock()
        wechat = ScriptedWeChat(clock, lifetime=7200)
        refresher = refresher_on(tmp_path, clock, wechat)
        assert await refresher.refresh()
        clock.step(-3600)
        refresher.clock_stepped(-3600)
        await run_until(refresher, lambda: len(wechat.calls) == 2)
        assert 0.75 * 7200 <= clock.monotonic() - T0 <= 0.85 * 7200
        assert refresher.has_valid_token()

    async def test_daemon_tells_every_loop(self, tmp_path: Path) -> None:
        """The daemon's watcher sees a step of the wall against the monotonic clock, once."""
        stream = io.StringIO()
        logs.configure(level="debug", stream=stream, json=True)
        clock = SteppedClock()
        daemon = Daemon(
            daemon_config(tmp_path, (shop_app(),)), source=ScriptedWeChat(clock), clock=clock
        )
        refresher = daemon.refreshers["shop"]
        refresher.next_at = T0 + 5000
        watcher = asyncio.create_task(daemon._watch_clock())
        for _ in range(5):
            await asyncio.sleep(0)
        clock.step(-3600)
        for _ in range(20):
            await asyncio.sleep(0)
        watcher.cancel()
        with pytest.raises(asyncio.CancelledError):
            await watcher
        assert refresher.next_at == T0 + 5000 - 3600
        steps = [json.loads(line) for line in stream.getvalue().splitlines()]
        assert [e["by_seconds"] for e in steps if e["event"] == "the wall clock was stepped"] == [
            -3600
        ]


# -- against the real daemon ------------------------------------------------------------


def app(n: int, name: str, grant: str = "classic") -> TestApp:
    return TestApp(appid=f"wx{n:016x}", secret=f"{n:032x}", name=name, grant=grant)


def sdk_token(client: httpx.Client, a: TestApp) -> str | None:
    """The SDK endpoint's answer: a token it presents as valid, or None."""
    response = client.get(
        "/cgi-bin/token",
        params={"grant_type": "client_credential", "appid": a.appid, "secret": a.secret},
    )
    body = response.json()
    return str(body["access_token"]) if "access_token" in body else None


@pytest.mark.e2e
class TestStoppedProcess:
    """SIGSTOP for longer than a lifetime, then SIGCONT."""

    def test_resumes_with_one_fetch_each_and_serves_nothing_expired(
        self, emulator: EmulatorFactory, daemon: DaemonFactory
    ) -> None:
        """Every answer after SIGCONT is a valid token; each app fetches once, no burst."""
        apps = [app(1, "shop"), app(2, "mall"), app(3, "mini", "stable")]
        emu = emulator(apps, lifetime=4, grace=1, stable_window=2)
        d = daemon(apps, emu.base_url, stable_renew_window=2).start()
        d.wait_for_tokens([a.name for a in apps])
        client = d.admin()
        wait_for(lambda: client.get("/readyz").status_code == 200, timeout=20, what="ready")
        d.send(signal.SIGSTOP)
        stopped = {a.name: calls(emu, a) for a in apps}
        time.sleep(10)  # 2.5 lifetimes: every token the daemon holds is dead
        assert all(emu.check(d.token(a.name) or "") != 0 for a in apps)
        d.send(signal.SIGCONT)
        deadline = time.monotonic() + 15
        while not all(emu.check(d.token(a.name) or "") == 0 for a in apps):
            assert time.monotonic() < deadline, "no valid tokens on disk after SIGCONT"
            for a in apps:  # meanwhile, whatever the SDK endpoint hands out must work
                token = sdk_token(client, a)
                if token is not None:
                    assert emu.check(token) == 0, f"{a.name}: served an expired token"
        fetched = {a.name: calls(emu, a) - stopped[a.name] for a in apps}
        assert all(1 <= n <= 2 for n in fetched.values()), fetched
        assert all(emu.check(sdk_token(client, a) or "") == 0 for a in apps)
        wait_for(lambda: client.get("/healthz").status_code == 200, timeout=10, what="healthy")


def calls(emu: EmulatorProcess, a: TestApp) -> int:
    return emu.calls(a.appid, "stable_token" if a.grant == "stable" else "token")


@pytest.fixture
def faketime(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A file holding the daemon's wall-clock offset, and the environment that applies it."""
    if shutil.which("faketime") is None or LIBFAKETIME is None:
        pytest.fail("libfaketime is missing: tests/run installs it (apt-get install faketime)")
    offset = tmp_path / "faketime-offset"
    offset.write_text("+0\n")
    env = {
        "LD_PRELOAD": str(LIBFAKETIME),
        "FAKETIME_TIMESTAMP_FILE": str(offset),
        "FAKETIME_NO_CACHE": "1",  # read the offset on every call: it changes mid-test
        "FAKETIME_DONT_FAKE_MONOTONIC": "1",  # only the wall clock jumps
    }
    return offset, env


def step_wall_clock(offset: Path, seconds: int) -> None:
    temp = offset.with_name(offset.name + ".new")
    temp.write_text(f"{seconds:+d}\n")
    temp.replace(offset)


def started_under_faketime(
    emulator: EmulatorFactory,
    daemon: DaemonFactory,
    faketime: tuple[Path, dict[str, str]],
    lifetime: int,
) -> tuple[EmulatorProcess, DaemonProcess, TestApp, str]:
    shop = app(4, "shop")
    emu = emulator([shop], lifetime=lifetime, grace=5)
    d = daemon([shop], emu.base_url).start(env=faketime[1])
    token = d.wait_for_tokens(["shop"])["shop"]
    wait_for(lambda: d.admin().get("/readyz").status_code == 200, timeout=20, what="ready")
    return emu, d, shop, token


def stepped_events(d: DaemonProcess) -> list[float]:
    return [e["by_seconds"] for e in d.events() if e.get("event") == "the wall clock was stepped"]


@pytest.mark.e2e
class TestWallClockSteps:
    """The real daemon's wall clock stepped by libfaketime while its monotonic clock runs on."""

    def test_forward_past_expiry_refreshes_at_once(
        self,
        emulator: EmulatorFactory,
        daemon: DaemonFactory,
        faketime: tuple[Path, dict[str, str]],
    ) -> None:
        """Two lifetimes ahead: one fetch at once (not at the planned 45 s), then calm."""
        emu, d, shop, old = started_under_faketime(emulator, daemon, faketime, lifetime=60)
        assert emu.calls(shop.appid, "token") == 1
        step_wall_clock(faketime[0], 120)
        new = wait_for(
            lambda: (d.token("shop") or old) != old and d.token("shop"),
            timeout=15,
            what="a new token soon after the step (the plan said 45-51 s)",
        )
        assert emu.check(new) == 0
        assert emu.calls(shop.appid, "token") == 2
        record = d.record("shop") or {}
        assert record["expires_at"] - record["fetched_at"] == 60
        assert record["fetched_at"] > time.time() + 100  # in the daemon's new wall time
        assert [round(s) for s in stepped_events(d)] == [120]
        time.sleep(3)
        assert emu.calls(shop.appid, "token") == 2

    def test_back_keeps_the_schedule_and_no_extra_fetch(
        self,
        emulator: EmulatorFactory,
        daemon: DaemonFactory,
        faketime: tuple[Path, dict[str, str]],
    ) -> None:
        """An hour back: the token is still replaced at 75-85 % of its 8 s, with one fetch."""
        emu, d, shop, old = started_under_faketime(emulator, daemon, faketime, lifetime=8)
        step_wall_clock(faketime[0], -3600)
        wait_for(lambda: stepped_events(d), timeout=10, what="the step noticed")
        new = wait_for(
            lambda: (d.token("shop") or old) != old and d.token("shop"),
            timeout=15,
            what="the next token at its planned time, not an hour later",
        )
        assert emu.check(new) == 0
        assert emu.calls(shop.appid, "token") == 2
        assert d.admin().get("/readyz").status_code == 200
        assert [round(s) for s in stepped_events(d)] == [-3600]
