"""Test doubles shared by the unit tests: a virtual clock and a scripted WeChat."""

from __future__ import annotations

import asyncio
from pathlib import Path

from wxtokend.config import AdminConfig, AppConfig, Config, Grant
from wxtokend.errors import FetchError
from wxtokend.wechat import Token

T0 = 1_800_000_000.0


class VirtualClock:
    """Time that jumps instead of passing: sleeping costs nothing."""

    def __init__(self, start: float = T0) -> None:
        self.t = start

    def now(self) -> float:
        return self.t

    def monotonic(self) -> float:
        return self.t

    async def sleep(self, seconds: float) -> None:
        self.t += max(0.0, seconds)
        await asyncio.sleep(0)

    async def wait(self, event: asyncio.Event, seconds: float) -> bool:
        """The time passes at once; woken only if ``event`` was set by then."""
        if event.is_set():
            return True
        await self.sleep(seconds)
        return event.is_set()


class ScriptedWeChat:
    """Answers like WeChat: classic issues anew, stable renews only inside the window.

    ``failures`` maps a call number (1-based) to the error that call raises.
    Every issued token is remembered with its expiry so tests can check validity.
    """

    def __init__(
        self,
        clock: VirtualClock,
        *,
        lifetime: int = 7200,
        window: float = 300,
        failures: dict[int, FetchError] | None = None,
    ) -> None:
        self.clock = clock
        self.lifetime = lifetime
        self.window = window
        self.failures = failures or {}
        self.calls: list[float] = []
        self.expiry: dict[str, float] = {}
        self.current: str | None = None
        self.in_flight = 0
        self.max_in_flight = 0
        self.gate: asyncio.Event | None = None
        self.forced: list[float] = []

    async def fetch_token(self, app: AppConfig, *, force: bool = False) -> Token:
        now = self.clock.now()
        self.calls.append(now)
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if self.gate is not None:
                await self.gate.wait()
            if len(self.calls) in self.failures:
                raise self.failures[len(self.calls)]
            if force:
                self.forced.append(now)
                self.current = None  # force always issues a new token
            return self._answer(app.grant, now)
        finally:
            self.in_flight -= 1

    def _answer(self, grant: Grant, now: float) -> Token:
        cur = self.current
        if grant == "stable" and cur and self.expiry[cur] - now > self.window:
            return Token(access_token=cur, expires_in=int(self.expiry[cur] - now), fetched_at=now)
        token = f"TOKEN_{len(self.calls):06d}_" + "x" * 40
        self.expiry[token] = now + self.lifetime
        self.current = token
        return Token(access_token=token, expires_in=self.lifetime, fetched_at=now)


class ScriptedTickets:
    """Tickets like WeChat: valid only with the current token; ``reject`` makes the next
    ``reject`` calls refuse their token with 40001."""

    def __init__(
        self, clock: VirtualClock, wechat: ScriptedWeChat, *, lifetime: int = 7200
    ) -> None:
        self.clock = clock
        self.wechat = wechat
        self.lifetime = lifetime
        self.calls: list[tuple[float, str, str]] = []
        self.reject = 0

    async def fetch_ticket(self, app: AppConfig, kind: str, access_token: str) -> Token:
        from wxtokend.errors import TokenRejectedError

        now = self.clock.now()
        self.calls.append((now, kind, access_token))
        if self.reject > 0 or self.wechat.expiry.get(access_token, 0) <= now:
            self.reject = max(0, self.reject - 1)
            raise TokenRejectedError("errcode 40001", errcode=40001)
        ticket = f"TICKET_{kind}_{len(self.calls):06d}"
        return Token(access_token=ticket, expires_in=self.lifetime, fetched_at=now)


def daemon_config(tmp_path: Path, apps: tuple[AppConfig, ...]) -> Config:
    """A validated-looking config for in-process daemons: no admin listener, 10 s passive pace."""
    return Config(
        path=tmp_path / "config.yaml",
        output_dir=tmp_path / "tokens",
        file_mode=0o640,
        file_gid=None,
        api_base="https://api.weixin.qq.com",
        proxy=None,
        max_concurrency=16,
        stable_renew_window=300,
        request_timeout=10,
        apps=apps,
        admin=AdminConfig(listen=None, passive_min_interval=10),
    )
