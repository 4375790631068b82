"""Wiring: config → store + client → one refresher task per app, until told to stop.

Around the refreshers: the admin listeners, systemd notification (READY once
every app has a token, WATCHDOG while the loops are healthy, STATUS for
``systemctl status``) and hot reload on SIGHUP or when the config or a secret
file changes.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import random
import signal
import socket
from collections.abc import Iterable
from dataclasses import replace
from typing import Any
from urllib.parse import unquote, urlsplit

from starlette.applications import Starlette

from wxtokend import asgi
from wxtokend.admin import admin_app, probe_app
from wxtokend.clock import Clock, SystemClock, iso
from wxtokend.config import AppConfig, Config, Ticket, load_config
from wxtokend.errors import ConfigError, ListenError, OutputDirError, StateFileError
from wxtokend.fleet import Fleet
from wxtokend.logs import REDACTOR, get_logger
from wxtokend.metrics import Metrics
from wxtokend.notify import Notifier
from wxtokend.refresher import Refresher, TicketRefresher, Upstream
from wxtokend.schedule import Policy, Rng
from wxtokend.store import TICKET_KINDS, TOKEN, Record, TokenStore, file_name
from wxtokend.watch import ConfigWatcher, content_fingerprint
from wxtokend.wechat import WeChatClient

__all__ = ["Daemon", "run_daemon"]

_CRASH_PAUSE = 5.0
_STATUS_EVERY = 30.0
_RELOAD_SETTLE = 0.3  # editors and kubelet write in bursts: reload once per burst
_CLOCK_CHECK_EVERY = 1.0
# How far the wall clock may move against the monotonic one between two checks
# before it counts as a step (NTP slewing moves it by under a millisecond a second).
_CLOCK_STEP = 2.0
# Global settings a running daemon cannot change in place.
_RESTART_ONLY = ("output_dir", "proxy", "request_timeout", "max_concurrency", "admin", "fleet")


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
            REDACTOR.register("fleet:redis", config.fleet.redis_url, label="<redis url>")
            REDACTOR.register("fleet:key", config.fleet.key.reveal(), label="<fleet key>")
            password = urlsplit(config.fleet.redis_url).password
            if password:  # redis-py decodes %xx: hide both spellings
                REDACTOR.register("fleet:password", password, label="<redis password>")
                REDACTOR.register("fleet:password:raw", unquote(password), label="<redis password>")
        self._fleet_keys: dict[str, Refresher] = {}
        self._policy = _policy(config)
        self._semaphore = asyncio.Semaphore(config.max_concurrency)
        self._log = get_logger()
        self.refreshers: dict[str, Refresher] = {}  # each app's token, by app name
        self.tickets: dict[str, dict[str, TicketRefresher]] = {}  # its tickets, by type
        self._loops: dict[str, Refresher] = {}  # every loop: "shop", "shop/jsapi", ...
        self._reloads = 0  # applied reloads: the READY wait re-reads the loops when it moves
        self._applying = False  # a reload is replacing loops (no gc.freeze meanwhile)
        self._by_appid: dict[str, Refresher] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._reload_requested = asyncio.Event()
        self._reload_forced = False
        self._written = asyncio.Event()
        self._following: set[str] = set()
        self._follow_tasks: set[asyncio.Task[bool]] = set()
        self._ready_sent = False
        # Files no loop keeps any more (a removed app's), each deleted when it expires.
        self._retiring: dict[tuple[str, str], asyncio.Task[None]] = {}
        self._fingerprint = content_fingerprint(config.watched_files())
        for app in config.apps:
            self._add(app)

    # -- lookups for the admin API -------------------------------------------

    def find(self, key: str) -> Refresher | None:
        """The refresher of the app named ``key`` (or whose appid it is)."""
        return self.refreshers.get(key) or self._by_appid.get(key)

    def find_appid(self, appid: str) -> Refresher | None:
        return self._by_appid.get(appid)

    def wecom_applications(self, corpid: str) -> list[Refresher]:
        """Every configured WeCom application of ``corpid``."""
        return [
            r for r in self.refreshers.values() if r.app.kind == "wecom" and r.app.appid == corpid
        ]

    def readiness(self) -> dict[str, str]:
        """Apps without a valid token (or one of their tickets) on disk, and why."""
        missing = {}
        for name in self.refreshers:
            for loop in self._loops_of(name):
                if not _ready(loop):
                    status = loop.status()
                    what = "" if loop.kind == TOKEN else f"{loop.kind} ticket: "
                    missing[name] = what + (status.last_error or status.state)
                    break
        return missing

    def _loops_of(self, name: str) -> list[Refresher]:
        return [self.refreshers[name], *self.tickets.get(name, {}).values()]

    def health(self) -> list[str]:
        """Why the refresh machinery is unhealthy (dead or stuck loops); empty if fine."""
        limit = self.config.request_timeout
        problems = []
        for name, task in self._tasks.items():
            if task.done():
                problems.append(f"{name}: its refresh loop has stopped")
                continue
            why = self._loops[name].stuck(fetch_limit=limit)
            if why:
                problems.append(f"{name}: {why}")
        return problems

    def update_gauges(self) -> None:
        ready = len(self.refreshers) - len(self.readiness())
        self.metrics.apps(configured=len(self.refreshers), ready=ready)
        if self.fleet is not None:
            self.metrics.fleet_up(self.fleet.up)

    def status_line(self) -> str:
        """One line for ``systemctl status``."""
        total, missing = len(self.refreshers), self.readiness()
        if not missing:
            soonest = min(self.refreshers.values(), key=lambda r: r.next_at, default=None)
            if soonest is None:
                return "no apps configured"
            wait = max(0, int(soonest.next_at - self.clock.now()))
            return f"{total} apps, all tokens valid; next refresh: {soonest.app.name} in {wait} s"
        names = sorted(missing)
        shown = ", ".join(f"{n} ({missing[n]})" for n in names[:3])
        more = f" and {len(names) - 3} more" if len(names) > 3 else ""
        return f"{total - len(missing)}/{total} apps have a valid token; waiting for {shown}{more}"

    # -- start and stop ------------------------------------------------------

    def start(self) -> list[Refresher]:
        """Prepare the directory and adopt valid tokens left by an earlier run."""
        try:
            self.store.ensure_directory()
            warnings = self.store.check_directory()
            removed = self.store.prepare()
        except OutputDirError as exc:  # unusable or unsafe: a config error, exit 2
            raise self.config.output_dir_error(exc) from None
        except OSError as exc:
            raise OutputDirError(
                f"output_dir {self.config.output_dir}: {exc.strerror} — create it writable for"
                " the user wxtokend runs as (systemd: RuntimeDirectory=wxtoken)"
            ) from None
        for warning in warnings:
            self._log.warning("output_dir", problem=warning)
        if removed:
            self._log.info("removed temp files left by a crash", files=removed)
        for loop in self._loops.values():
            loop.adopt_stored()
        return list(self._loops.values())

    async def run(self, stop: asyncio.Event) -> None:
        """Refresh every app, serve the admin API and follow the config until ``stop``."""
        listeners = self._bind_listeners()
        refreshers = self.start()
        self._log.info(
            "started",
            apps=len(self.refreshers),
            tickets=len(refreshers) - len(self.refreshers),
            output_dir=str(self.config.output_dir),
            api_base=self.config.api_base,
            admin=[asgi.base_url(sock) for sock, _ in listeners],
        )
        self._sweep_leftovers()
        await self._follow_fleet_once()
        for refresher in refreshers:
            self._spawn(refresher)
        _settle_memory()
        watcher = ConfigWatcher(asyncio.get_running_loop(), self.request_reload)
        self._watch(watcher, self.config)
        helpers = [
            *(
                asyncio.create_task(asgi.serve(app, [sock]), name="admin")
                for sock, app in listeners
            ),
            asyncio.create_task(self._announce(), name="notify"),
            asyncio.create_task(self._reloader(watcher), name="reload"),
            asyncio.create_task(self._watch_clock(), name="clock"),
            *self._fleet_tasks(),
        ]
        try:
            await stop.wait()
        finally:
            self.notifier.stopping()
            watcher.stop()
            await _cancel([*helpers, *self._tasks.values(), *self._retiring.values()])
            await self.aclose()
            self._log.info("stopped")

    async def once(self) -> bool:
        """Make sure every app has a valid token (and tickets) on disk; True if all do."""
        self.start()
        self._sweep_leftovers(wait=False)  # no timers: this process ends in a moment
        tokens = list(self.refreshers.values())
        tickets = [t for kinds in self.tickets.values() for t in kinds.values()]
        refreshers = tokens + tickets
        try:
            # Tickets are fetched with the tokens: tokens first.
            results = await asyncio.gather(*(r.ensure() for r in tokens))
            results += await asyncio.gather(*(t.ensure() for t in tickets))
        finally:
            await self.aclose()
        for refresher, ok in zip(refreshers, results, strict=True):
            if not ok:
                status = refresher.status()
                what = "token" if refresher.kind == TOKEN else f"{refresher.kind} ticket"
                self._log.error(
                    f"no valid {what}",
                    app=status.name,
                    error=status.last_error,
                    hint=status.hint,
                )
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
            "on_written": self._written.set,
        }

    def _add(self, app: AppConfig) -> list[Refresher]:
        """The loops of a new app: its token, then each of its tickets."""
        refresher = Refresher(
            app,
            source=self._source,
            passive_min_interval=self.config.admin.passive_min_interval,
            passive_daily_limit=self.config.admin.passive_daily_limit,
            **self._loop_parts(),
        )
        self.refreshers[app.name] = refresher
        self._loops[app.name] = refresher
        self._unretire(app.name, TOKEN)
        self._fleet_keys[refresher.fleet_key] = refresher
        if app.kind == "official":  # a WeCom corpid names several applications: not a key
            self._by_appid[app.appid] = refresher
        REDACTOR.register(f"secret:{app.name}", app.secret.reveal(), label="<secret>")
        self.tickets[app.name] = {}
        return [refresher, *(self._add_ticket(app, kind) for kind in app.tickets)]

    def _add_ticket(self, app: AppConfig, kind: Ticket) -> TicketRefresher:
        ticket = TicketRefresher(
            app, kind, tokens=self.refreshers[app.name], tickets=self._source, **self._loop_parts()
        )
        self.tickets[app.name][kind] = ticket
        self._loops[f"{app.name}/{kind}"] = ticket
        self._unretire(app.name, kind)
        self._fleet_keys[ticket.fleet_key] = ticket
        return ticket

    def _spawn(self, loop: Refresher) -> None:
        key = loop.app.name if loop.kind == TOKEN else f"{loop.app.name}/{loop.kind}"
        self._tasks[key] = asyncio.create_task(self._supervise(loop), name=key)

    async def _stop_loop(self, key: str) -> None:
        loop = self._loops.pop(key)
        if self._fleet_keys.get(loop.fleet_key) is loop:
            del self._fleet_keys[loop.fleet_key]
        task = self._tasks.pop(key, None)
        if task is not None:
            await _cancel([task])
        await loop.close()  # lets an in-flight fetch finish; then it writes nothing

    async def _remove(self, name: str, *, delete_files: bool) -> None:
        refresher = self.refreshers.pop(name)
        if self._by_appid.get(refresher.app.appid) is refresher:  # appids may swap names
            del self._by_appid[refresher.app.appid]
        for kind in self.tickets.pop(name, {}):
            await self._stop_loop(f"{name}/{kind}")
        await self._stop_loop(name)
        if delete_files:
            self.store.remove(name)
            self.metrics.forget(name)
        REDACTOR.forget(f"secret:{name}")
        for kind in (TOKEN, *TICKET_KINDS):
            REDACTOR.forget(f"{kind}:{name}")

    # -- files of removed apps -------------------------------------------------

    def _unretire(self, name: str, kind: str) -> None:
        """A loop keeps these files again (the app came back), or they go now: no timer."""
        task = self._retiring.pop((name, kind), None)
        if task is not None:
            task.cancel()

    def _keeps(self, name: str, kind: str) -> bool:
        return (name if kind == TOKEN else f"{name}/{kind}") in self._loops

    def _sweep_leftovers(self, *, wait: bool = True) -> None:
        """Our records in output_dir that no loop keeps: a removed app's, maybe before a restart.

        Consumers may still read them, and a removal may be a mistaken edit: each is
        deleted once it expires (at once with remove_files_on_removal, or if its name now
        belongs to another appid, whose consumers must never get this account's token).
        """
        try:
            records = self.store.records(now=self.clock.now())
        except OSError as exc:
            self._log.warning("cannot list output_dir for leftover files", error=exc.strerror)
            return
        for record in records:
            key = (record.name, record.kind)
            owner = self.refreshers.get(record.name)
            foreign = owner is not None and owner.app.appid != record.appid
            at_once = self.config.remove_files_on_removal
            if self._keeps(*key) or (key in self._retiring and not (foreign or at_once)):
                continue
            self._unretire(*key)
            if foreign:
                self._delete_leftover(record, "its name now belongs to another appid")
            elif at_once:
                self._delete_leftover(record, "remove_files_on_removal is set")
            elif self.clock.now() >= record.expires_at:
                self._delete_leftover(record, "it has expired")
            elif wait:
                self._retiring[key] = asyncio.create_task(self._retire(record))
                self._log.info(
                    "files no longer configured stay until they expire",
                    app=record.name,
                    files=_files_of(record),
                    expires_at=iso(record.expires_at),
                    fix="set remove_files_on_removal: true to delete them at once",
                )

    async def _retire(self, record: Record) -> None:
        """Delete ``record``'s files once expired, unless a loop has taken them back."""
        key = (record.name, record.kind)
        try:
            while True:
                await self.clock.sleep(record.expires_at - self.clock.now())
                if self._keeps(*key):
                    return
                try:
                    current = self.store.load(*key, now=self.clock.now())
                except StateFileError:
                    return  # not our record any more: never touch it
                if current is None:
                    return
                if self.clock.now() < current.expires_at:  # rewritten meanwhile: wait again
                    record = current
                    continue
                self._delete_leftover(current, "it has expired")
                return
        finally:
            if self._retiring.get(key) is asyncio.current_task():
                del self._retiring[key]

    def _delete_leftover(self, record: Record, why: str) -> None:
        try:
            self.store.remove(record.name, (record.kind,))
        except OSError as exc:
            self._log.warning(
                "cannot delete files no longer configured",
                app=record.name,
                files=_files_of(record),
                error=exc.strerror,
            )
            return
        self._log.info(
            "deleted files no longer configured",
            app=record.name,
            files=_files_of(record),
            reason=why,
        )

    async def _retune_tickets(self, app: AppConfig) -> list[str]:
        """A kept app whose ticket list changed: start new ticket loops, stop dropped ones."""
        current = self.tickets[app.name]
        dropped = [k for k in current if k not in app.tickets]
        for kind in dropped:
            del current[kind]
            await self._stop_loop(f"{app.name}/{kind}")
            self.store.remove(app.name, (kind,))
            self.metrics.forget_ticket(app.name, kind)
        started = [k for k in app.tickets if k not in current]
        for kind in started:
            ticket = self._add_ticket(app, kind)
            ticket.adopt_stored()
            self._spawn(ticket)
        return [f"{app.name}/{k}" for k in (*dropped, *started)]

    async def _supervise(self, refresher: Refresher) -> None:
        """Keep a refresher alive: a bug in one app's loop must not stop the others."""
        while True:
            try:
                await refresher.run()
            except asyncio.CancelledError:
                raise
            except Exception:
                self._log.exception("refresh loop crashed; restarting", app=refresher.app.name)
                await self.clock.sleep(_CRASH_PAUSE)

    async def _watch_clock(self) -> None:
        """Tell every loop when the wall clock is stepped (by hand, NTP, a VM resume).

        Sleeps run on the monotonic clock, so without this a step forward past a
        token's expiry would go unnoticed until the loop's next wake-up.
        """
        offset = self.clock.now() - self.clock.monotonic()
        while True:
            await self.clock.sleep(_CLOCK_CHECK_EVERY)
            stepped = self.clock.now() - self.clock.monotonic() - offset
            offset += stepped
            if abs(stepped) >= _CLOCK_STEP:
                self._log.warning("the wall clock was stepped", by_seconds=round(stepped, 1))
                for loop in self._loops.values():
                    loop.clock_stepped(stepped)

    # -- fleet ---------------------------------------------------------------

    def _fleet_tasks(self) -> list[asyncio.Task[None]]:
        if self.fleet is None:
            return []
        return [
            asyncio.create_task(self.fleet.listen(self._on_fleet_update), name="fleet-listen"),
            asyncio.create_task(self._reconcile(self.fleet), name="fleet-reconcile"),
        ]

    async def _follow_fleet_once(self) -> None:
        """At start, before any loop runs: take what the fleet refreshed while we were away."""
        if self.fleet is None:
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(10):  # Redis away must not hold the start back
                for loop in list(self._loops.values()):
                    await loop.follow_fleet()

    def _on_fleet_update(self, credential: str) -> None:
        """Pushed by pub/sub: a credential changed somewhere in the fleet; follow it."""
        loop = self._fleet_keys.get(credential)
        if loop is None or credential in self._following:
            return  # one pending follow per credential: a flood of messages coalesces
        self._following.add(credential)
        task = asyncio.create_task(loop.follow_fleet())
        task.add_done_callback(lambda _: self._following.discard(credential))
        self._follow_tasks.add(task)
        task.add_done_callback(self._follow_tasks.discard)

    async def _reconcile(self, fleet: Fleet) -> None:
        """Re-read every shared record now and then: pub/sub messages can be lost."""
        was_up = True
        while True:
            await asyncio.sleep(fleet.settings.reconcile_interval)
            for loop in list(self._loops.values()):
                await loop.follow_fleet()
            if fleet.up != was_up:
                log = self._log.info if fleet.up else self._log.error
                log(
                    "Redis is back: following the fleet again"
                    if fleet.up
                    else "Redis unreachable: serving the tokens on disk, retrying",
                    error=fleet.last_error,
                )
                was_up = fleet.up

    # -- admin listeners -----------------------------------------------------

    def _bind_listeners(self) -> list[tuple[socket.socket, Starlette]]:
        """Bind before anything starts, so a taken port fails the start with a clear line."""
        admin = self.config.admin
        wanted = [
            (admin.listen, "listen", admin_app),
            (admin.probe_listen, "probe_listen", probe_app),
        ]
        bound: list[tuple[socket.socket, Starlette]] = []
        for listen, key, make_app in wanted:
            if listen is None:
                continue
            try:
                bound.append((asgi.bind(listen), make_app(self)))
            except OSError as exc:
                for sock, _ in bound:
                    sock.close()
                raise ListenError(
                    f"admin.{key} {listen}: {exc.strerror} — pick another address, or set"
                    f" admin.{key}: null to turn it off"
                ) from None
            if key == "listen" and not listen.is_loopback:
                self._log.warning(
                    "the admin API (passive refresh, SDK endpoints) listens beyond loopback",
                    listen=str(listen),
                    fix="keep it on loopback and use admin.probe_listen for probes",
                )
        return bound

    # -- systemd -------------------------------------------------------------

    async def _announce(self) -> None:
        """READY=1 once every app has a token (or after start_timeout), then STATUS and WATCHDOG."""
        await self._wait_until_ready(self.clock.now() + self.config.admin.start_timeout)
        self.notifier.ready(self.status_line())
        self._ready_sent = True
        self._log.info("ready", status=self.status_line())
        if not self._applying:  # a reload in progress settles memory when it ends
            _settle_memory()  # the first tokens' records and tasks are long-lived too
        ping = self.notifier.watchdog_interval
        step = min(ping, _STATUS_EVERY) if ping else _STATUS_EVERY
        since_status = 0.0
        while True:
            await asyncio.sleep(step)
            since_status += step
            problems = self.health()
            if ping and not problems:
                self.notifier.watchdog()  # withheld while a loop is stuck: systemd restarts us
            if problems:
                self._log.error("unhealthy", problems=problems)
            if since_status >= _STATUS_EVERY:
                since_status = 0.0
                self.notifier.status(self.status_line())

    async def _wait_until_ready(self, deadline: float) -> None:
        """Until every app has a token, woken by each token written, or until ``deadline``."""
        # Cheap checks, each loop passed once: at 10,000 apps a full readiness() report
        # per written token cost more than the fetches.
        seen, waiting, first = -1, [], 0
        while True:
            if seen != self._reloads:  # apps added or replaced: wait for the current loops
                seen, waiting, first = self._reloads, list(self._loops.values()), 0
            # Loops get their tokens roughly in order: skip past the ready ones and stop at
            # the first still waiting, so each loop is passed once, not at every wake-up.
            while first < len(waiting) and _ready(waiting[first]):
                first += 1
            if first == len(waiting):
                return
            left = deadline - self.clock.now()
            if left <= 0:
                return
            self._written.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._written.wait(), timeout=left)
            # Let a burst of first tokens land before checking again.
            await asyncio.sleep(0.05)

    # -- reload --------------------------------------------------------------

    def request_reload(self, *, forced: bool = False) -> None:
        """From the file watcher, or SIGHUP (``forced``: always a full reload cycle)."""
        self._reload_forced = self._reload_forced or forced
        self._reload_requested.set()

    async def _reloader(self, watcher: ConfigWatcher) -> None:
        while True:
            await self._reload_requested.wait()
            await asyncio.sleep(_RELOAD_SETTLE)  # bursts of events coalesce into one reload
            self._reload_requested.clear()
            forced, self._reload_forced = self._reload_forced, False
            try:
                await self.reload(watcher, forced=forced)
            except Exception:
                # A reload must never take reloading down with it: SIGHUP still works.
                self._log.exception("reload crashed; the running config stays in force")

    def _watch(self, watcher: ConfigWatcher, config: Config) -> None:
        try:
            watcher.watch(config.watched_files())
        except OSError as exc:
            self._log.warning(
                "cannot watch the config and secret files; SIGHUP still reloads",
                error=exc.strerror,
                fix="raise fs.inotify.max_user_watches / max_user_instances",
            )

    async def reload(self, watcher: ConfigWatcher | None = None, *, forced: bool = False) -> bool:
        """Apply the config file as it is now; keep running on the old one if it is invalid."""
        fingerprint = content_fingerprint(self.config.watched_files())
        if fingerprint == self._fingerprint and not forced:
            return False  # nothing we read changed: no need to even parse the config
        try:
            new = load_config(self.config.path)
        except ConfigError as exc:
            self._log.error("reload failed: keeping the old config", problems=exc.problems)
            self.notifier.status("reload failed, running on the old config: " + exc.problems[0])
            self._fingerprint = fingerprint
            return False
        new_fingerprint = content_fingerprint(new.watched_files())
        if new_fingerprint == self._fingerprint and not forced:
            return False  # an unrelated file in a watched directory changed
        self.notifier.reloading()
        for warning in new.warnings:
            self._log.warning("config", problem=warning)
        gc.unfreeze()  # removed apps' loops are cyclic garbage: let the collector see them
        self._applying = True
        try:
            changes = await self._apply(new)
        finally:
            self._applying = False
            _settle_memory()
        self._reloads += 1
        self._written.set()  # a READY wait in progress looks at the new set of loops
        self._fingerprint = new_fingerprint
        if watcher is not None:
            self._watch(watcher, new)
        self._log.info("reloaded", **changes)
        if self._ready_sent:  # before the first READY, READY still waits for the tokens
            self.notifier.ready(self.status_line())
        return True

    async def _apply(self, new: Config) -> dict[str, list[str]]:
        old = self.config
        kept = [k for k in _RESTART_ONLY if getattr(old, k) != getattr(new, k)]
        if kept:
            self._log.warning("these settings need a restart to change", keys=kept)
        self.store.file_mode, self.store.gid = new.file_mode, new.file_gid
        self._policy = _policy(new)
        self.config = _with_runtime_settings(new, old)
        old_apps = {a.name: a for a in old.apps}
        new_apps = {a.name: a for a in new.apps}
        removed = [n for n in old_apps if n not in new_apps]
        added = [n for n in new_apps if n not in old_apps]
        changed = [
            n for n in new_apps if n in old_apps and not new_apps[n].fetches_like(old_apps[n])
        ]
        for name in removed:
            await self._remove(name, delete_files=new.remove_files_on_removal)
            self.metrics.forget(name)
        for name in changed:
            appid_changed = old_apps[name].appid != new_apps[name].appid
            await self._remove(name, delete_files=appid_changed)
            dropped = tuple(k for k in old_apps[name].tickets if k not in new_apps[name].tickets)
            if dropped:
                self.store.remove(name, dropped)
                for kind in dropped:
                    self.metrics.forget_ticket(name, kind)
            token, *tickets = self._add(new_apps[name])
            # Keep serving the old token (same appid: still valid) until the refetch lands.
            token.adopt_stored(refetch=True)
            for loop in (token, *tickets):
                if loop is not token:
                    loop.adopt_stored()
                self._spawn(loop)
        for name in added:
            for loop in self._add(new_apps[name]):
                loop.adopt_stored()
                self._spawn(loop)
        tickets_changed: list[str] = []
        for name, app in new_apps.items():
            if name not in added and name not in changed:
                for loop in (self.refreshers[name], *self.tickets[name].values()):
                    loop.reconfigure(app, policy=self._policy)
                if set(app.tickets) != set(self.tickets[name]):
                    tickets_changed += await self._retune_tickets(app)
        self._sweep_leftovers()
        return {
            "added": added,
            "removed": removed,
            "refetched": changed,
            "tickets": tickets_changed,
        }


def _files_of(record: Record) -> list[str]:
    name = file_name(record.name, record.kind)
    return [name, f"{name}.json"]


def _settle_memory() -> None:
    """Collect, then move everything alive now out of the cyclic collector's way.

    With 10,000 apps the collector's full passes (each over every object of every
    loop, longer each time) took ~2 s of a 16 s start; objects that live as long as
    the daemon need not be traversed again (gc.freeze, as large long-running Python
    services do). Reference counting still frees them; cyclic garbage among them (a
    removed app's loop) waits for the next reload, which unfreezes first.
    """
    gc.collect()
    gc.freeze()


def _policy(config: Config) -> Policy:
    return Policy(
        stable_window=config.stable_renew_window,
        backoff_floor=config.retry_min,
        backoff_base=config.retry_min,
        backoff_cap=config.retry_max,
    )


def _ready(loop: Refresher) -> bool:
    """A valid token (or ticket) that is also on disk."""
    return loop.on_disk()


def _with_runtime_settings(new: Config, old: Config) -> Config:
    """The new config, but with the settings only a restart changes kept as they run."""
    return replace(new, **{k: getattr(old, k) for k in _RESTART_ONLY})


async def _cancel(tasks: Iterable[asyncio.Task[None]]) -> None:
    tasks = list(tasks)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def run_daemon(config: Config, *, once: bool = False) -> int:
    """The ``wxtokend run`` entry point: returns the process exit code."""
    daemon = Daemon(config, notifier=Notifier.from_environ())
    if once:
        return 0 if await daemon.once() else 1
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, lambda: daemon.request_reload(forced=True))
    await daemon.run(stop)
    return 0
