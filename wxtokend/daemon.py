"""Wiring: config → store + client → one refresher task per app, until told to stop.

Around the refreshers: systemd notification (READY once every app has a token,
WATCHDOG while the loops are healthy, STATUS for ``systemctl status``), the
fleet follower, the removed apps' files and hot reload on SIGHUP or when the
config or a secret file changes — each in a module of its own, wired here. The
HTTP listeners are bound outside (:mod:`wxtokend.serve`) and handed in.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Coroutine, Sequence
from typing import Any
from urllib.parse import unquote, urlsplit

from wxtokend import readiness
from wxtokend.announce import Announcer
from wxtokend.clock import Clock, SystemClock
from wxtokend.config import AppConfig, Config, Ticket
from wxtokend.errors import OutputDirError
from wxtokend.fleet import Fleet, FleetSettings
from wxtokend.follower import Follower
from wxtokend.logs import REDACTOR, get_logger
from wxtokend.loopset import LoopSet
from wxtokend.memory import settle_memory
from wxtokend.metrics import Metrics
from wxtokend.notify import Notifier
from wxtokend.platforms import PlatformSet
from wxtokend.refresher import Refresher, TicketRefresher, Upstream
from wxtokend.reloading import (
    Reloader,
    ReloadOutcome,
    apply_apps,
    restart_only_changes,
    with_runtime_settings,
)
from wxtokend.retire import Retirer
from wxtokend.schedule import Policy, Rng
from wxtokend.service import Listener
from wxtokend.store import TOKEN, TokenStore
from wxtokend.supervise import cancel, watch_clock
from wxtokend.watch import ConfigWatcher
from wxtokend.wechat import WeChatClient

__all__ = ["Daemon"]


class Daemon:
    """All refreshers of one config, sharing a store, a client and a concurrency limit."""

    def __init__(
        self,
        config: Config,
        *,
        source: Upstream | None = None,
        clock: Clock | None = None,
        rng: Rng | None = None,
        notifier: Notifier | None = None,
    ) -> None:
        self.config = config
        self.clock = clock or SystemClock()
        self.metrics = Metrics()
        self.notifier = notifier or Notifier(None)
        self.store = TokenStore(
            directory=config.output_dir, file_mode=config.file_mode, gid=config.file_gid
        )
        self._client: WeChatClient | None = None
        if source is None:
            self._client = WeChatClient(
                api_base=config.api_base,
                timeout=config.request_timeout,
                proxy=config.proxy,
                max_connections=config.max_concurrency,
                clock=self.clock,
                redactor=REDACTOR,
                on_request=self.metrics.upstream,
            )
            source = self._client
        self._source = source
        self._rng = rng or random.Random()
        self.fleet: Fleet | None = None
        if config.fleet is not None:
            self.fleet = Fleet(config.fleet, clock_now=self.clock.now, metrics=self.metrics)
            _register_fleet_secrets(config.fleet)
        self._policy = _policy(config)
        self._semaphore = asyncio.Semaphore(config.max_concurrency)
        self._log = get_logger()
        parts = (self.clock, self._rng, self._policy, self._semaphore, self.metrics)
        self.platforms = PlatformSet(config, source, *parts, fleet=self.fleet)
        self._wire_parts()
        for app in config.apps:
            self._loopset.add(app)

    def _wire_parts(self) -> None:
        """The parts around the loops, each given the pieces of this daemon it works on."""
        self._retirer = Retirer(store=self.store, clock=self.clock, log=self._log)
        self._retiring = self._retirer.tasks
        self._loopset = LoopSet(
            new_token=self._new_token,
            new_ticket=self._new_ticket,
            store=self.store,
            metrics=self.metrics,
            clock=self.clock,
            log=self._log,
            on_added=self._retirer.unretire,
        )
        self.refreshers = self._loopset.refreshers  # each app's token, by app name
        self.tickets = self._loopset.tickets  # its tickets, by type
        self._loops = self._loopset.loops  # every loop: "shop", "shop/jsapi", ...
        self._tasks = self._loopset.tasks
        self._follower = Follower(
            self.fleet, loops=self._loops, fleet_keys=self._loopset.fleet_keys, log=self._log
        )
        self._follower.also = self.platforms.on_fleet_update
        self._announcer = Announcer(
            notifier=self.notifier,
            clock=self.clock,
            loops=self._loops,
            status_line=self.status_line,
            health=self.health,
            applying=lambda: self._reloader.applying,
            log=self._log,
        )
        self._reloader = Reloader(
            current=lambda: self.config,
            apply=self._apply,
            notifier=self.notifier,
            announcer=self._announcer,
            log=self._log,
        )

    # -- lookups for the admin API -------------------------------------------

    def find(self, key: str) -> Refresher | None:
        """The refresher of the app named ``key`` (or whose appid it is)."""
        return self._loopset.find(key)

    def find_appid(self, appid: str) -> Refresher | None:
        return self._loopset.find_appid(appid)

    def wecom_applications(self, corpid: str) -> list[Refresher]:
        """Every configured WeCom application of ``corpid``."""
        return self._loopset.wecom_applications(corpid)

    def readiness(self) -> dict[str, str]:
        """Apps without a valid token (or one of their tickets) on disk, and why."""
        return readiness.missing(self.refreshers, self.tickets) | self.platforms.readiness()

    def health(self) -> list[str]:
        """Why the refresh machinery is unhealthy (dead or stuck loops); empty if fine."""
        loops = readiness.health(self._tasks, self._loops, fetch_limit=self.config.request_timeout)
        return loops + self.platforms.health()

    def update_gauges(self) -> None:
        readiness.update_gauges(self.metrics, self.refreshers, self.readiness(), self.fleet)
        self.platforms.update_gauges(self.metrics)

    def status_line(self) -> str:
        """One line for ``systemctl status``; a failed reload leads it until one succeeds."""
        line = readiness.status_line(self.refreshers, self.readiness(), self.clock.now())
        return self._reloader.status_line(line)

    # -- start and stop ------------------------------------------------------

    def start(self) -> list[Refresher]:
        """Prepare the directory and adopt valid tokens left by an earlier run."""
        _prepare_output_dir(self.store, self.config, self._log)
        self.platforms.start()
        for loop in self._loops.values():
            loop.adopt_stored()
        return list(self._loops.values())

    async def run(self, stop: asyncio.Event, listeners: Sequence[Listener] = ()) -> None:
        """Refresh every app, serve ``listeners`` and follow the config until ``stop``."""
        refreshers = self.start()
        _log_started(self._log, self.config, len(self.refreshers), len(refreshers), listeners)
        self._sweep_leftovers()
        await self._follower.follow_once()
        for refresher in refreshers:
            self._loopset.spawn(refresher)
        settle_memory()
        watcher = ConfigWatcher(asyncio.get_running_loop(), self.request_reload)
        self._reloader.watch(watcher, self.config)
        helpers = [
            *(asyncio.create_task(listener.serve(), name="admin") for listener in listeners),
            asyncio.create_task(
                self._announcer.run(self.config.admin.start_timeout), name="notify"
            ),
            asyncio.create_task(self._reloader.run(watcher), name="reload"),
            asyncio.create_task(self._watch_clock(), name="clock"),
            *self._follower.tasks(),
            *self.platforms.tasks(),
        ]
        try:
            await stop.wait()
        finally:
            self.notifier.stopping()
            watcher.stop()
            await cancel([*helpers, *self._tasks.values(), *self._retiring.values()])
            await self.aclose()
            self._log.info("stopped")

    async def once(self) -> bool:
        """Make sure every app has a valid token (and tickets) on disk; True if all do."""
        self.start()
        self._sweep_leftovers(wait=False)  # no timers: this process ends in a moment
        tokens = list(self.refreshers.values())
        tickets = [t for kinds in self.tickets.values() for t in kinds.values()]
        try:
            # Tickets are fetched with the tokens: tokens first.
            results = await asyncio.gather(*(r.ensure() for r in tokens))
            results += await asyncio.gather(*(t.ensure() for t in tickets))
        finally:
            await self.aclose()
        for refresher, ok in zip([*tokens, *tickets], results, strict=True):
            if not ok:
                _log_missing(self._log, refresher)
        return all(results)

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
        if self.fleet is not None:
            await self.fleet.aclose()
        self.notifier.close()

    # -- refreshers ----------------------------------------------------------

    def _loop_parts(self) -> dict[str, Any]:
        """What every refresh loop of this daemon shares."""
        return {
            "store": self.store,
            "clock": self.clock,
            "rng": self._rng,
            "policy": self._policy,
            "semaphore": self._semaphore,
            "metrics": self.metrics,
            "fleet": self.fleet,
            "on_written": self._announcer.written.set,
        }

    def _new_token(self, app: AppConfig) -> Refresher:
        return Refresher(
            app,
            source=self._source,
            passive_min_interval=self.config.admin.passive_min_interval,
            passive_daily_limit=self.config.admin.passive_daily_limit,
            **self._loop_parts(),
        )

    def _new_ticket(self, app: AppConfig, kind: Ticket, tokens: Refresher) -> TicketRefresher:
        return TicketRefresher(app, kind, tokens=tokens, tickets=self._source, **self._loop_parts())

    async def _remove(self, name: str, *, delete_files: bool) -> None:
        await self._loopset.remove(name, delete_files=delete_files)

    def _watch_clock(self) -> Coroutine[Any, Any, None]:
        return watch_clock(self.clock, self._loops, log=self._log)

    def _sweep_leftovers(self, *, wait: bool = True) -> None:
        at_once = self.config.remove_files_on_removal
        self._retirer.sweep(self.refreshers, self._loopset.keeps, at_once=at_once, wait=wait)

    # -- reload --------------------------------------------------------------

    def request_reload(self, *, forced: bool = False) -> None:
        """From the file watcher, or SIGHUP (``forced``: always a full reload cycle)."""
        self._reloader.request(forced=forced)

    async def reload_and_wait(self) -> ReloadOutcome:
        """A full reload, answered once it is done (``wxtokend reload``)."""
        return await self._reloader.reload_and_wait()

    async def reload(self, watcher: ConfigWatcher | None = None, *, forced: bool = False) -> bool:
        """Apply the config file as it is now; keep running on the old one if it is invalid."""
        return await self._reloader.reload(watcher, forced=forced)

    async def _apply(self, new: Config) -> dict[str, list[str]]:
        old = self.config
        kept = restart_only_changes(old, new)
        if kept:
            self._log.warning("these settings need a restart to change", keys=kept)
        self.store.file_mode, self.store.gid = new.file_mode, new.file_gid
        self._policy = _policy(new)
        self.config = with_runtime_settings(new, old)
        changes = await apply_apps(
            self._loopset, old, new, policy=self._policy, store=self.store, metrics=self.metrics
        )
        self._sweep_leftovers()
        return changes


def _register_fleet_secrets(fleet: FleetSettings) -> None:
    """Keep the Redis URL, its password and the fleet key out of every log line."""
    REDACTOR.register("fleet:redis", fleet.redis_url, label="<redis url>")
    REDACTOR.register("fleet:key", fleet.key.reveal(), label="<fleet key>")
    password = urlsplit(fleet.redis_url).password
    if password:  # redis-py decodes %xx: hide both spellings
        REDACTOR.register("fleet:password", password, label="<redis password>")
        REDACTOR.register("fleet:password:raw", unquote(password), label="<redis password>")


def _log_started(
    log: Any, config: Config, apps: int, loops: int, listeners: Sequence[Listener]
) -> None:
    """The "started" event: what runs, and where each listener is (tests read it)."""

    def urls(role: str) -> list[str] | None:
        return [x.url for x in listeners if x.role == role] or None

    log.info(
        "started",
        apps=apps,
        tickets=loops - apps,
        output_dir=str(config.output_dir),
        api_base=config.api_base,
        admin=urls("admin") or [],
        callback=urls("callback"),
        api_proxy=urls("api_proxy"),
    )


def _policy(config: Config) -> Policy:
    return Policy(
        stable_window=config.stable_renew_window,
        backoff_floor=config.retry_min,
        backoff_base=config.retry_min,
        backoff_cap=config.retry_max,
    )


def _prepare_output_dir(store: TokenStore, config: Config, log: Any) -> None:
    """Create and check the output directory, and clear what a crash left in it."""
    try:
        store.ensure_directory()
        warnings = store.check_directory()
        removed = store.prepare()
    except OutputDirError as exc:  # unusable or unsafe: a config error, exit 2
        raise config.output_dir_error(exc) from None
    except OSError as exc:
        raise OutputDirError(
            f"output_dir {config.output_dir}: {exc.strerror} — create it writable for"
            " the user wxtokend runs as (systemd: RuntimeDirectory=wxtoken)"
        ) from None
    for warning in warnings:
        log.warning("output_dir", problem=warning)
    if removed:
        log.info("removed temp files left by a crash", files=removed)


def _log_missing(log: Any, refresher: Refresher) -> None:
    status = refresher.status()
    what = "token" if refresher.kind == TOKEN else f"{refresher.kind} ticket"
    log.error(f"no valid {what}", app=status.name, error=status.last_error, hint=status.hint)
