"""The narrow interface between the daemon and its HTTP layer.

:mod:`wxtokend.admin` and :mod:`wxtokend.sdk` serve a running daemon, but need
only a little of it: its loops (read, and told of rejected tokens), its lookups,
readiness and health, and its metrics. They depend on these protocols, not on
:class:`wxtokend.daemon.Daemon`, so the daemon never sits in an import circle
with the apps that serve it. :class:`Listener` is the other direction: what the
daemon needs of a bound listener it runs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from wxtokend.callback.events import Event
    from wxtokend.callback.intake import Intake
    from wxtokend.clock import Clock
    from wxtokend.config import AppConfig, Config
    from wxtokend.metrics import Metrics
    from wxtokend.reloading import ReloadOutcome
    from wxtokend.status import AppStatus, Passive
    from wxtokend.store import Record

__all__ = ["FleetState", "Listener", "Loop", "PlatformView", "Platforms", "Service"]


class Loop(Protocol):
    """One refresh loop (an app's token, or one of its tickets) as the HTTP layer sees it."""

    @property
    def app(self) -> AppConfig: ...

    @property
    def record(self) -> Record | None: ...

    @property
    def next_at(self) -> float: ...

    def clock_now(self) -> float: ...

    def has_valid_token(self) -> bool: ...

    def status(self) -> AppStatus: ...

    async def report_rejected(
        self,
        *,
        token: str | None = None,
        token_fingerprint: str | None = None,
        allow_force: bool = True,
    ) -> Passive: ...


class PlatformView(Protocol):
    """A third-party platform as the admin API shows it (never a token)."""

    def summary(self, now: float) -> dict[str, Any]: ...

    def page(self, offset: int, limit: int, now: float) -> dict[str, Any]: ...

    def secret_matches(self, given: str) -> bool: ...

    def component_token(self, now: float) -> tuple[str, int] | None:
        """The component token and its expires_in, if it is valid."""
        ...

    def authorizer_token(self, appid: str, now: float) -> tuple[str, int] | int:
        """An authorizer's token and its expires_in, or the errcode to answer instead."""
        ...


class Platforms(Protocol):
    """The daemon's platforms, by name."""

    def get(self, name: str) -> PlatformView | None: ...

    def names(self) -> list[str]: ...

    def by_component(self, component_appid: str) -> PlatformView | None: ...

    def intakes(self) -> Mapping[str, Intake]: ...

    async def deliver(self, name: str, event: Event) -> None: ...

    async def rejected(self, name: str, appid: str, token: str) -> str | None:
        """WeChat refused an account's token in a proxied call: its next one, or None."""
        ...


class FleetState(Protocol):
    """Whether the fleet's Redis answers, and if not, why."""

    @property
    def up(self) -> bool: ...

    @property
    def last_error(self) -> str | None: ...


class Service(Protocol):
    """What the admin API and the SDK endpoints read of a running daemon."""

    @property
    def config(self) -> Config: ...

    @property
    def clock(self) -> Clock: ...

    @property
    def metrics(self) -> Metrics: ...

    @property
    def fleet(self) -> FleetState | None: ...

    @property
    def refreshers(self) -> Mapping[str, Loop]: ...

    @property
    def platforms(self) -> Platforms: ...

    @property
    def tickets(self) -> Mapping[str, Mapping[str, Loop]]: ...

    def find(self, key: str) -> Loop | None: ...

    def find_appid(self, appid: str) -> Loop | None: ...

    def wecom_applications(self, corpid: str) -> Sequence[Loop]: ...

    def health(self) -> list[str]: ...

    def readiness(self) -> dict[str, str]: ...

    def update_gauges(self) -> None: ...

    async def reload_and_wait(self) -> ReloadOutcome:
        """Reload the config now; the outcome once it is applied (or refused)."""
        ...


class Listener(Protocol):
    """An HTTP listener, bound before the daemon starts, served while it runs."""

    @property
    def url(self) -> str: ...

    @property
    def role(self) -> str:
        """``admin`` (the admin or probe API) or ``callback`` (the one facing WeChat)."""
        ...

    async def serve(self) -> None: ...
