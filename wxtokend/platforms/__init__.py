"""Third-party platforms (开放平台 第三方平台): each a chain ticket → component → authorizers.

:class:`PlatformSet` is what the daemon holds: every configured
:class:`~wxtokend.platforms.platform.Platform`, started, run and reported together.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

from wxtokend.callback.events import (
    Authorized,
    CorpAuthorized,
    CorpCancelled,
    Event,
    Unauthorized,
    VerifyTicket,
)
from wxtokend.callback.intake import Intake
from wxtokend.clock import Clock
from wxtokend.config import Config
from wxtokend.fleet import Fleet
from wxtokend.metrics import Metrics
from wxtokend.platforms.platform import Platform
from wxtokend.platforms.rejections import Rejections
from wxtokend.schedule import Policy, Rng

__all__ = ["Platform", "PlatformSet"]


class PlatformSet:
    """The daemon's platforms, by name."""

    def __init__(
        self,
        config: Config,
        client: Any,
        clock: Clock,
        rng: Rng,
        policy: Policy,
        semaphore: asyncio.Semaphore,
        metrics: Metrics,
        *,
        fleet: Fleet | None = None,
    ) -> None:
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._pending: set[asyncio.Task[None]] = set()
        self._clock = clock
        self._intakes: dict[str, Intake] | None = None
        self.platforms = {
            p.name: Platform(
                p,
                daemon_config=config,
                client=client,
                clock=clock,
                rng=rng,
                policy=policy,
                semaphore=semaphore,
                metrics=metrics,
                fleet=fleet,
            )
            for p in config.platforms
        }
        self._rejections = {
            name: Rejections(p.book, clock=clock) for name, p in self.platforms.items()
        }

    def intakes(self) -> dict[str, Intake]:
        """Each platform's callback intake, by name: one each, so replays are caught on
        the callback listener and the admin API's forwarding endpoint alike."""
        if self._intakes is None:
            self._intakes = {
                name: Intake(p.crypto, product=p.config.product, clock=self._clock)
                for name, p in self.platforms.items()
            }
        return self._intakes

    async def deliver(self, name: str, event: Event) -> None:
        """A checked callback's event, to its platform (slow work goes on in the background)."""
        platform = self.platforms[name]
        if isinstance(event, VerifyTicket):
            await platform.accept_ticket(event.ticket, event.created_at)
        elif isinstance(event, Authorized):
            self._background(platform.authorized(event.authorizer_appid, event.authorization_code))
        elif isinstance(event, CorpAuthorized):
            self._background(platform.authorized(None, event.auth_code))
        elif isinstance(event, Unauthorized | CorpCancelled):
            gone = event.authorizer_appid if isinstance(event, Unauthorized) else event.corpid
            await platform.unauthorized(gone)

    async def rejected(self, name: str, appid: str, token: str) -> str | None:
        """The API proxy's compare-and-refresh of an account's token (see rejections.py)."""
        rejections = self._rejections.get(name)
        return None if rejections is None else await rejections.rejected(appid, token)

    def _background(self, work: Coroutine[Any, Any, None]) -> None:
        # WeChat wants "success" within 5 s: trading a code for tokens may take longer.
        task = asyncio.create_task(work)
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    def on_fleet_update(self, credential: str) -> bool:
        """A pub/sub hint from the fleet: followed if it is a platform's (True then)."""
        for platform in self.platforms.values():
            work = platform.in_fleet.follow(credential) if platform.in_fleet else None
            if work is not None:
                self._background(work)
                return True
        return False

    def __bool__(self) -> bool:
        return bool(self.platforms)

    def get(self, name: str) -> Platform | None:
        return self.platforms.get(name)

    def names(self) -> list[str]:
        return list(self.platforms)

    def by_component(self, component_appid: str) -> Platform | None:
        return next(
            (p for p in self.platforms.values() if p.config.component_appid == component_appid),
            None,
        )

    def start(self) -> None:
        for platform in self.platforms.values():
            platform.start()

    def tasks(self) -> list[asyncio.Task[None]]:
        self._tasks = {
            name: asyncio.create_task(p.run(), name=f"platform/{name}")
            for name, p in self.platforms.items()
        }
        return list(self._tasks.values())

    def health(self) -> list[str]:
        """A platform whose task stopped is unhealthy (its parts restart themselves)."""
        return [f"platform/{n}: its task has stopped" for n, t in self._tasks.items() if t.done()]

    def update_gauges(self, metrics: Metrics) -> None:
        for name, platform in self.platforms.items():
            metrics.authorizers(name, platform.book.counts())

    def readiness(self) -> dict[str, str]:
        """``platform/<name>``: why it is not ready, for every platform that is not."""
        return {
            f"platform/{name}": "; ".join(problems)
            for name, p in self.platforms.items()
            if (problems := p.problems())
        }
