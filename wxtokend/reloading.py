"""Hot reload: on SIGHUP or a changed config or secret file, apply the config as it is now.

Requests coalesce (editors and kubelet write in bursts); an unchanged content
fingerprint skips even the parse; an invalid config keeps the running one. A
reload adds, removes and refetches apps and retunes their tickets; the global
settings only a restart changes stay as they run.
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Literal

from wxtokend.config import load_config
from wxtokend.errors import ConfigError
from wxtokend.memory import settle_memory
from wxtokend.watch import content_fingerprint

if TYPE_CHECKING:
    from wxtokend.announce import Announcer
    from wxtokend.config import AppConfig, Config
    from wxtokend.loopset import LoopSet
    from wxtokend.metrics import Metrics
    from wxtokend.notify import Notifier
    from wxtokend.schedule import Policy
    from wxtokend.store import TokenStore
    from wxtokend.watch import ConfigWatcher

__all__ = [
    "RESTART_ONLY",
    "ReloadOutcome",
    "Reloader",
    "apply_apps",
    "restart_only_changes",
    "with_runtime_settings",
]

_RELOAD_SETTLE = 0.3  # editors and kubelet write in bursts: reload once per burst
# Global settings a running daemon cannot change in place.
RESTART_ONLY = (
    "output_dir",
    "proxy",
    "request_timeout",
    "max_concurrency",
    "admin",
    "fleet",
    "platforms",  # third-party platforms are set up at start
    "state_dir",
    "callback_listen",
    "api_proxy",  # its listener is bound at start
)

Changes = dict[str, list[str]]


@dataclass(frozen=True, kw_only=True)
class ReloadOutcome:
    """What one reload cycle did: for ``wxtokend reload`` and ``POST /v1/reload``."""

    result: Literal["applied", "unchanged", "failed"]
    problems: tuple[str, ...] = ()
    changes: Changes = field(default_factory=dict)


class Reloader:
    """Reload requests, the config watcher's hookup, and one reload at a time."""

    def __init__(
        self,
        *,
        current: Callable[[], Config],
        apply: Callable[[Config], Awaitable[Changes]],
        notifier: Notifier,
        announcer: Announcer,
        log: Any,
    ) -> None:
        self._current, self._apply = current, apply
        self._notifier, self._announcer, self._log = notifier, announcer, log
        self._requested = asyncio.Event()
        self._forced = False
        self.applying = False  # a reload is replacing loops (no gc.freeze meanwhile)
        self._fingerprint = content_fingerprint(current().watched_files())
        # Until a reload succeeds, what made the last one fail: STATUS= keeps saying it.
        self.failed: str | None = None
        self._waiters: list[asyncio.Future[ReloadOutcome]] = []
        self._outcome = ReloadOutcome(result="unchanged")

    def request(self, *, forced: bool = False) -> None:
        """From the file watcher, or SIGHUP (``forced``: always a full reload cycle)."""
        self._forced = self._forced or forced
        self._requested.set()

    async def reload_and_wait(self) -> ReloadOutcome:
        """Request a full reload and wait for the cycle that reads the files after now."""
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        self.request(forced=True)
        return await asyncio.shield(waiter)

    async def run(self, watcher: ConfigWatcher) -> None:
        while True:
            await self._requested.wait()
            await asyncio.sleep(_RELOAD_SETTLE)  # bursts of events coalesce into one reload
            self._requested.clear()
            forced, self._forced = self._forced, False
            # Only those waiting before this cycle reads the files get its outcome.
            waiting, self._waiters = self._waiters, []
            try:
                await self.reload(watcher, forced=forced)
            except Exception:
                # A reload must never take reloading down with it: SIGHUP still works.
                self._log.exception("reload crashed; the running config stays in force")
                self._failed(("reload crashed: see the log",))
            for waiter in waiting:
                if not waiter.done():
                    waiter.set_result(self._outcome)

    def status_line(self, line: str) -> str:
        """``line``, led by what made the last reload fail until one succeeds."""
        failed = self.failed
        return f"reload failed, running on the old config: {failed}; {line}" if failed else line

    def _failed(self, problems: tuple[str, ...]) -> None:
        self.failed = problems[0] if problems else "unknown problem"
        self._outcome = ReloadOutcome(result="failed", problems=problems)
        self._notifier.status(f"reload failed, running on the old config: {self.failed}")

    def watch(self, watcher: ConfigWatcher, config: Config) -> None:
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
        self._outcome = ReloadOutcome(result="unchanged")
        fingerprint = content_fingerprint(self._current().watched_files())
        if fingerprint == self._fingerprint and not forced:
            return False  # nothing we read changed: no need to even parse the config
        try:
            new = load_config(self._current().path)
        except ConfigError as exc:
            self._log.error("reload failed: keeping the old config", problems=exc.problems)
            self._failed(tuple(exc.problems))
            self._fingerprint = fingerprint
            return False
        new_fingerprint = content_fingerprint(new.watched_files())
        if new_fingerprint == self._fingerprint and not forced:
            return False  # an unrelated file in a watched directory changed
        self._notifier.reloading()
        for warning in new.warnings:
            self._log.warning("config", problem=warning)
        changes = await self._applied(new)
        self._announcer.loops_changed()
        self._fingerprint = new_fingerprint
        if watcher is not None:
            self.watch(watcher, new)
        self._log.info("reloaded", **changes)
        self.failed = None
        self._outcome = ReloadOutcome(result="applied", changes=changes)
        self._announcer.reannounce()
        return True

    async def _applied(self, new: Config) -> Changes:
        gc.unfreeze()  # removed apps' loops are cyclic garbage: let the collector see them
        self.applying = True
        try:
            return await self._apply(new)
        finally:
            self.applying = False
            settle_memory()


def restart_only_changes(old: Config, new: Config) -> list[str]:
    """The settings that differ but only take effect after a restart."""
    return [k for k in RESTART_ONLY if getattr(old, k) != getattr(new, k)]


def with_runtime_settings(new: Config, old: Config) -> Config:
    """The new config, but with the settings only a restart changes kept as they run."""
    return replace(new, **{k: getattr(old, k) for k in RESTART_ONLY})


async def apply_apps(
    loops: LoopSet,
    old: Config,
    new: Config,
    *,
    policy: Policy,
    store: TokenStore,
    metrics: Metrics,
) -> Changes:
    """Remove, refetch, add and reconfigure the apps of ``old`` to become those of ``new``."""
    old_apps = {a.name: a for a in old.apps}
    new_apps = {a.name: a for a in new.apps}
    removed = [n for n in old_apps if n not in new_apps]
    added = [n for n in new_apps if n not in old_apps]
    changed = [n for n in new_apps if n in old_apps and not new_apps[n].fetches_like(old_apps[n])]
    for name in removed:
        await loops.remove(name, delete_files=new.remove_files_on_removal)
        metrics.forget(name)
    for name in changed:
        await _refetch(loops, old_apps[name], new_apps[name], store=store, metrics=metrics)
    for name in added:
        for loop in loops.add(new_apps[name]):
            loop.adopt_stored()
            loops.spawn(loop)
    tickets_changed: list[str] = []
    for name, app in new_apps.items():
        if name not in added and name not in changed:
            tickets_changed += await _reconfigure(loops, app, policy)
    return {"added": added, "removed": removed, "refetched": changed, "tickets": tickets_changed}


async def _refetch(
    loops: LoopSet, old: AppConfig, new: AppConfig, *, store: TokenStore, metrics: Metrics
) -> None:
    """An app whose fetch changed: new loops, serving the old token until the refetch lands."""
    appid_changed = old.appid != new.appid
    await loops.remove(new.name, delete_files=appid_changed)
    dropped = tuple(k for k in old.tickets if k not in new.tickets)
    if dropped:
        store.remove(new.name, dropped)
        for kind in dropped:
            metrics.forget_ticket(new.name, kind)
    token, *tickets = loops.add(new)
    # Keep serving the old token (same appid: still valid) until the refetch lands.
    token.adopt_stored(refetch=True)
    for loop in (token, *tickets):
        if loop is not token:
            loop.adopt_stored()
        loops.spawn(loop)


async def _reconfigure(loops: LoopSet, app: AppConfig, policy: Policy) -> list[str]:
    """A kept app: its loops take the new settings; returns the tickets started or stopped."""
    for loop in (loops.refreshers[app.name], *loops.tickets[app.name].values()):
        loop.reconfigure(app, policy=policy)
    if set(app.tickets) != set(loops.tickets[app.name]):
        return await loops.retune_tickets(app)
    return []
