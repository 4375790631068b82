"""The daemon with its HTTP listeners: what ``wxtokend run`` (and ``demo``) start.

The composition root: the daemon knows nothing of the HTTP apps, the apps know
the daemon only through :mod:`wxtokend.service`; here the two meet.
"""

from __future__ import annotations

import asyncio
import signal

from wxtokend.config import Config
from wxtokend.daemon import Daemon
from wxtokend.listeners import bind_listeners
from wxtokend.notify import Notifier

__all__ = ["run_daemon", "serve"]


async def serve(daemon: Daemon, stop: asyncio.Event) -> None:
    """Bind the admin listeners, then run ``daemon`` and serve them until ``stop``."""
    await daemon.run(stop, bind_listeners(daemon))


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
    await serve(daemon, stop)
    return 0
