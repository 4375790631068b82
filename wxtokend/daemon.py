"""Wiring: config → store + client → one refresher task per app, until told to stop."""

from __future__ import annotations

import asyncio
import random
import signal
from collections.abc import Iterable

from wxtokend.clock import Clock, SystemClock
from wxtokend.config import AppConfig, Config
from wxtokend.errors import OutputDirError
from wxtokend.logs import REDACTOR, get_logger
from wxtokend.refresher import Refresher, TokenSource
from wxtokend.schedule import Policy, Rng
from wxtokend.store import TokenStore
from wxtokend.wechat import WeChatClient

__all__ = ["Daemon", "run_daemon"]

_CRASH_PAUSE = 5.0


class Daemon:
    """All refreshers of one config, sharing a store, a client and a concurrency limit."""

    def __init__(
        self,
        config: Config,
        *,
        source: TokenSource | None = None,
        clock: Clock | None = None,
        rng: Rng | None = None,
    ) -> None:
        self.config = config
        self.clock = clock or SystemClock()
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
            )
            source = self._client
        self._source = source
        self._rng = rng or random.Random()
        self._policy = Policy(stable_window=config.stable_renew_window)
        self._semaphore = asyncio.Semaphore(config.max_concurrency)
        self._log = get_logger()
        self.refreshers = {app.name: self._refresher(app) for app in config.apps}
        for app in config.apps:
            REDACTOR.register(f"secret:{app.name}", app.secret.reveal(), label="<secret>")

    def _refresher(self, app: AppConfig) -> Refresher:
        return Refresher(
            app,
            source=self._source,
            store=self.store,
            clock=self.clock,
            rng=self._rng,
            policy=self._policy,
            semaphore=self._semaphore,
        )

    def start(self) -> list[Refresher]:
        """Prepare the directory and adopt valid tokens left by an earlier run."""
        try:
            removed = self.store.prepare()
        except OSError as exc:
            raise OutputDirError(
                f"output_dir {self.config.output_dir}: {exc.strerror} — create it writable for"
                " the user wxtokend runs as (systemd: RuntimeDirectory=wxtoken)"
            ) from None
        if removed:
            self._log.info("removed temp files left by a crash", files=removed)
        for refresher in self.refreshers.values():
            refresher.adopt_stored()
        return list(self.refreshers.values())

    async def run(self, stop: asyncio.Event) -> None:
        """Refresh every app until ``stop`` is set."""
        refreshers = self.start()
        self._log.info(
            "started",
            apps=len(refreshers),
            output_dir=str(self.config.output_dir),
            api_base=self.config.api_base,
        )
        tasks = [asyncio.create_task(self._supervise(r), name=r.app.name) for r in refreshers]
        try:
            await stop.wait()
        finally:
            await _cancel(tasks)
            await self.aclose()
            self._log.info("stopped")

    async def once(self) -> bool:
        """Make sure every app has a valid token on disk; True if all do."""
        refreshers = self.start()
        try:
            results = await asyncio.gather(*(r.ensure() for r in refreshers))
        finally:
            await self.aclose()
        for refresher, ok in zip(refreshers, results, strict=True):
            if not ok:
                status = refresher.status()
                self._log.error(
                    "no valid token", app=status.name, error=status.last_error, hint=status.hint
                )
        return all(results)

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()

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


async def _cancel(tasks: Iterable[asyncio.Task[None]]) -> None:
    tasks = list(tasks)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def run_daemon(config: Config, *, once: bool = False) -> int:
    """The ``wxtokend run`` entry point: returns the process exit code."""
    daemon = Daemon(config)
    if once:
        return 0 if await daemon.once() else 1
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await daemon.run(stop)
    return 0
