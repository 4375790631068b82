"""The running refresh loops of a daemon: one per app token and ticket, each in a task.

Found by app name, by appid (the SDK endpoints) and by fleet key (pub/sub
messages); added, started and stopped as the config says. How a loop is built
is the daemon's business: it hands in the factories.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from wxtokend.logs import REDACTOR
from wxtokend.store import TICKET_KINDS, TOKEN
from wxtokend.supervise import cancel, supervise

if TYPE_CHECKING:
    from wxtokend.clock import Clock
    from wxtokend.config import AppConfig, Ticket
    from wxtokend.metrics import Metrics
    from wxtokend.refresher import Refresher, TicketRefresher
    from wxtokend.store import TokenStore

__all__ = ["LoopSet", "TicketFactory", "TokenFactory"]

TokenFactory = Callable[["AppConfig"], "Refresher"]
TicketFactory = Callable[["AppConfig", "Ticket", "Refresher"], "TicketRefresher"]


class LoopSet:
    """Every refresh loop of one daemon, its task, and the lookups the admin API needs."""

    def __init__(
        self,
        *,
        new_token: TokenFactory,
        new_ticket: TicketFactory,
        store: TokenStore,
        metrics: Metrics,
        clock: Clock,
        log: Any,
        on_added: Callable[[str, str], None],
    ) -> None:
        self._new_token, self._new_ticket = new_token, new_ticket
        self._store, self._metrics, self._clock, self._log = store, metrics, clock, log
        self._on_added = on_added  # a loop keeps (name, kind)'s files from now on
        self.refreshers: dict[str, Refresher] = {}  # each app's token, by app name
        self.tickets: dict[str, dict[str, TicketRefresher]] = {}  # its tickets, by type
        self.loops: dict[str, Refresher] = {}  # every loop: "shop", "shop/jsapi", ...
        self.by_appid: dict[str, Refresher] = {}
        self.fleet_keys: dict[str, Refresher] = {}
        self.tasks: dict[str, asyncio.Task[None]] = {}

    # -- lookups -------------------------------------------------------------

    def find(self, key: str) -> Refresher | None:
        """The refresher of the app named ``key`` (or whose appid it is)."""
        return self.refreshers.get(key) or self.by_appid.get(key)

    def find_appid(self, appid: str) -> Refresher | None:
        return self.by_appid.get(appid)

    def wecom_applications(self, corpid: str) -> list[Refresher]:
        """Every configured WeCom application of ``corpid``."""
        return [
            r for r in self.refreshers.values() if r.app.kind == "wecom" and r.app.appid == corpid
        ]

    def keeps(self, name: str, kind: str) -> bool:
        """Whether a loop keeps app ``name``'s ``kind`` files."""
        return (name if kind == TOKEN else f"{name}/{kind}") in self.loops

    # -- adding, starting, stopping ------------------------------------------

    def add(self, app: AppConfig) -> list[Refresher]:
        """The loops of a new app: its token, then each of its tickets."""
        refresher = self._new_token(app)
        self.refreshers[app.name] = refresher
        self.loops[app.name] = refresher
        self._on_added(app.name, TOKEN)
        self.fleet_keys[refresher.fleet_key] = refresher
        if app.kind == "official":  # a WeCom corpid names several applications: not a key
            self.by_appid[app.appid] = refresher
        REDACTOR.register(f"secret:{app.name}", app.secret.reveal(), label="<secret>")
        self.tickets[app.name] = {}
        return [refresher, *(self.add_ticket(app, kind) for kind in app.tickets)]

    def add_ticket(self, app: AppConfig, kind: Ticket) -> TicketRefresher:
        ticket = self._new_ticket(app, kind, self.refreshers[app.name])
        self.tickets[app.name][kind] = ticket
        self.loops[f"{app.name}/{kind}"] = ticket
        self._on_added(app.name, kind)
        self.fleet_keys[ticket.fleet_key] = ticket
        return ticket

    def spawn(self, loop: Refresher) -> None:
        key = loop.app.name if loop.kind == TOKEN else f"{loop.app.name}/{loop.kind}"
        self.tasks[key] = asyncio.create_task(
            supervise(loop, clock=self._clock, log=self._log), name=key
        )

    async def stop(self, key: str) -> None:
        loop = self.loops.pop(key)
        if self.fleet_keys.get(loop.fleet_key) is loop:
            del self.fleet_keys[loop.fleet_key]
        task = self.tasks.pop(key, None)
        if task is not None:
            await cancel([task])
        await loop.close()  # lets an in-flight fetch finish; then it writes nothing

    async def remove(self, name: str, *, delete_files: bool) -> None:
        refresher = self.refreshers.pop(name)
        if self.by_appid.get(refresher.app.appid) is refresher:  # appids may swap names
            del self.by_appid[refresher.app.appid]
        for kind in self.tickets.pop(name, {}):
            await self.stop(f"{name}/{kind}")
        await self.stop(name)
        if delete_files:
            self._store.remove(name)
            self._metrics.forget(name)
        REDACTOR.forget(f"secret:{name}")
        for kind in (TOKEN, *TICKET_KINDS):
            REDACTOR.forget(f"{kind}:{name}")

    async def retune_tickets(self, app: AppConfig) -> list[str]:
        """A kept app whose ticket list changed: start new ticket loops, stop dropped ones."""
        current = self.tickets[app.name]
        dropped = [k for k in current if k not in app.tickets]
        for kind in dropped:
            del current[kind]
            await self.stop(f"{app.name}/{kind}")
            self._store.remove(app.name, (kind,))
            self._metrics.forget_ticket(app.name, kind)
        started = [k for k in app.tickets if k not in current]
        for kind in started:
            ticket = self.add_ticket(app, kind)
            ticket.adopt_stored()
            self.spawn(ticket)
        return [f"{app.name}/{k}" for k in (*dropped, *started)]
