"""A removed app's files outlive it until they expire, in-process on a clock the test moves."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from fakes import ScriptedTickets, ScriptedWeChat, VirtualClock, daemon_config
from test_tickets import Upstream, official

from wxtokend.config import AppConfig, Config, load_config
from wxtokend.daemon import Daemon
from wxtokend.errors import ConfigError

LIFETIME = 7200
SHOP = official("shop", 1, ("jsapi",))
MINI = official("mini", 2, ())
SHOP_FILES = ("shop", "shop.json", "shop.jsapi_ticket", "shop.jsapi_ticket.json")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class SteppedClock(VirtualClock):
    """Time moves only when the test advances it; sleepers wake once their time has come."""

    def __init__(self) -> None:
        super().__init__()
        self._moved = asyncio.Event()

    async def sleep(self, seconds: float) -> None:
        target = self.t + max(0.0, seconds)
        while self.t < target:
            await self._moved.wait()
        await asyncio.sleep(0)

    async def wait(self, event: asyncio.Event, seconds: float) -> bool:
        target = self.t + max(0.0, seconds)
        while not event.is_set() and self.t < target:
            waits = {asyncio.ensure_future(self._moved.wait()), asyncio.ensure_future(event.wait())}
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            for waiting in waits:
                waiting.cancel()
        return event.is_set()

    async def advance(self, seconds: float) -> None:
        self.t += seconds
        moved, self._moved = self._moved, asyncio.Event()
        moved.set()
        for _ in range(20):
            await asyncio.sleep(0)


class World:
    def __init__(self, tmp_path: Path, apps: tuple[AppConfig, ...], **settings: Any) -> None:
        self.tokens = tmp_path / "tokens"
        self.clock = SteppedClock()
        self.wechat = ScriptedWeChat(self.clock, lifetime=LIFETIME)
        self.ticketing = ScriptedTickets(self.clock, self.wechat, lifetime=LIFETIME)
        self.config = replace(daemon_config(tmp_path, apps), **settings)
        self.daemon = self.make_daemon(self.config)
        self.daemon.start()

    def make_daemon(self, config: Config) -> Daemon:
        return Daemon(config, source=Upstream(self.wechat, self.ticketing), clock=self.clock)

    async def fetch_all(self) -> None:
        for refresher in self.daemon.refreshers.values():
            assert await refresher.refresh()
        for kinds in self.daemon.tickets.values():
            for ticket in kinds.values():
                assert await ticket.refresh()

    async def apply(self, *apps: AppConfig, **settings: Any) -> dict[str, list[str]]:
        return await self.daemon._apply(replace(self.daemon.config, apps=apps, **settings))

    def files(self) -> dict[str, str]:
        return {p.name: p.read_text() for p in sorted(self.tokens.iterdir())}

    async def close(self) -> None:
        tasks = [*self.daemon._tasks.values(), *self.daemon._retiring.values()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    world = World(tmp_path, (SHOP, MINI))
    await world.fetch_all()
    yield world
    await world.close()


@pytest.mark.anyio
class TestRemovedApp:
    """Removing an app stops it, but its files stay for consumers until they expire."""

    async def test_files_stay_until_they_expire(self, world: World) -> None:
        """The token and ticket files stay unchanged until expiry, then go; others stay."""
        before = world.files()
        changes = await world.apply(MINI)
        assert changes["removed"] == ["shop"]
        assert "shop" not in world.daemon.refreshers
        await world.clock.advance(LIFETIME - 1)
        assert world.files() == before
        await world.clock.advance(1)
        after = world.files()
        assert not set(SHOP_FILES) & set(after)
        assert after == {k: v for k, v in before.items() if k.startswith("mini")}
        assert world.daemon._retiring == {}

    async def test_metrics_forget_it_at_once(self, world: World) -> None:
        """The app's gauges leave /metrics as soon as it is removed (counters stay)."""
        await world.apply(MINI)
        text = world.daemon.metrics.render().decode()
        assert 'wxtokend_token_expiry_timestamp_seconds{app="shop"}' not in text
        assert 'wxtokend_ticket_expiry_timestamp_seconds{app="shop"' not in text
        assert 'wxtokend_token_expiry_timestamp_seconds{app="mini"}' in text

    async def test_coming_back_cancels_the_deletion(self, world: World) -> None:
        """Added again before expiry, the app takes its files back with no upstream call."""
        before = world.files()
        calls = (len(world.wechat.calls), len(world.ticketing.calls))
        await world.apply(MINI)
        timers = list(world.daemon._retiring.values())
        assert len(timers) == 2
        changes = await world.apply(SHOP, MINI)
        assert changes["added"] == ["shop"]
        await asyncio.sleep(0)
        assert all(timer.cancelled() for timer in timers)
        assert world.daemon._retiring == {}
        assert world.files() == before
        assert (len(world.wechat.calls), len(world.ticketing.calls)) == calls

    async def test_remove_files_on_removal(self, world: World) -> None:
        """remove_files_on_removal: true deletes them at once, as before."""
        await world.apply(MINI, remove_files_on_removal=True)
        assert not set(SHOP_FILES) & set(world.files())
        assert world.daemon._retiring == {}

    async def test_switching_the_option_on_deletes_retiring_files(self, world: World) -> None:
        """Files waiting for their expiry go at once when a reload sets the option."""
        await world.apply(MINI)
        await world.apply(MINI, remove_files_on_removal=True)
        assert not set(SHOP_FILES) & set(world.files())
        assert world.daemon._retiring == {}

    async def test_appid_change_deletes_at_once(self, world: World) -> None:
        """Same name, another appid: the old account's files go at once, never served."""
        other = replace(SHOP, appid=f"wx{9:016x}", tickets=())
        await world.apply(other, MINI)
        left = world.files()
        assert "shop.jsapi_ticket" not in left
        assert "shop.jsapi_ticket.json" not in left
        assert SHOP.appid not in json.dumps(left)

    async def test_back_under_another_appid(self, world: World) -> None:
        """Removed, then added under another appid: none of the old account's files remain."""
        await world.apply(MINI)
        other = replace(SHOP, appid=f"wx{9:016x}", tickets=())
        await world.apply(other, MINI)
        left = world.files()
        assert SHOP.appid not in json.dumps(left)
        assert "shop.jsapi_ticket" not in left
        assert world.daemon._retiring == {}


@pytest.mark.anyio
class TestLeftoversAtStart:
    """A restart after a removal deletes the removed app's files once they expire, nothing else."""

    async def run(self, world: World) -> tuple[asyncio.Event, asyncio.Task[None]]:
        daemon = world.make_daemon(replace(world.config, apps=(MINI,)))
        stop = asyncio.Event()
        task = asyncio.create_task(daemon.run(stop))
        for _ in range(20):
            await asyncio.sleep(0)
        return stop, task

    async def test_valid_leftovers_wait_for_their_expiry(self, world: World) -> None:
        """Still valid at start: kept until they expire, then deleted."""
        before = world.files()
        stop, task = await self.run(world)
        try:
            assert world.files() == before
            await world.clock.advance(LIFETIME)
            assert not set(SHOP_FILES) & set(world.files())
        finally:
            stop.set()
            await task

    async def test_expired_leftovers_go_at_start(self, world: World) -> None:
        """Already expired at start: deleted at once."""
        world.clock.t += LIFETIME
        stop, task = await self.run(world)
        try:
            assert not set(SHOP_FILES) & set(world.files())
        finally:
            stop.set()
            await task

    async def test_once_deletes_only_expired_leftovers(self, world: World) -> None:
        """run --once sets no timer: valid leftovers stay, expired ones go."""
        daemon = world.make_daemon(replace(world.config, apps=(MINI,)))
        assert await daemon.once()
        assert set(SHOP_FILES) <= set(world.files())
        world.clock.t += LIFETIME
        assert await world.make_daemon(replace(world.config, apps=(MINI,))).once()
        assert not set(SHOP_FILES) & set(world.files())

    async def test_other_files_are_never_touched(self, world: World) -> None:
        """Files that are not our own records stay, whatever their names."""
        foreign = {
            "admin.sock": "not ours",
            "notes.json": '{"hello": "world"}',
            "broken.json": "{",
            "alias.json": (world.tokens / "shop.json").read_text(),  # names another app
            "shop.jsapi.json": "{}",
        }
        for name, text in foreign.items():
            (world.tokens / name).write_text(text)
        world.clock.t += LIFETIME
        stop, task = await self.run(world)
        stop.set()
        await task
        left = world.files()
        assert {name: left.get(name) for name in foreign} == foreign
        assert "shop" not in left


class TestOption:
    """remove_files_on_removal is a top-level boolean, false by default."""

    def write(self, tmp_path: Path, line: str) -> Path:
        (tmp_path / "app.secret").write_text("0123456789abcdef0123456789abcdef")
        path = tmp_path / "config.yaml"
        path.write_text(
            f"{line}apps:\n  - {{appid: wx0123456789abcdef, secret_file: app.secret}}\n"
        )
        path.chmod(0o600)
        return path

    def test_default_false(self, tmp_path: Path) -> None:
        """Left out: false."""
        assert load_config(self.write(tmp_path, "")).remove_files_on_removal is False

    def test_true(self, tmp_path: Path) -> None:
        """Set: true."""
        path = self.write(tmp_path, "remove_files_on_removal: true\n")
        assert load_config(path).remove_files_on_removal is True

    def test_not_a_boolean(self, tmp_path: Path) -> None:
        """Anything but a boolean is a config error naming the key."""
        path = self.write(tmp_path, "remove_files_on_removal: sometimes\n")
        with pytest.raises(ConfigError) as info:
            load_config(path)
        assert "remove_files_on_removal" in str(info.value)
