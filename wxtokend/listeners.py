"""The admin, probe, callback and API proxy listeners: bound first, served while it runs.

Binding first makes a taken port fail the start with a clear line, before any
token is fetched. The apps are :mod:`wxtokend.admin`'s, over the daemon's
narrow :class:`~wxtokend.service.Service` interface.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from typing import TYPE_CHECKING

from starlette.applications import Starlette

from wxtokend import asgi
from wxtokend.admin import admin_app, probe_app
from wxtokend.callback.app import callback_app
from wxtokend.errors import ListenError
from wxtokend.logs import get_logger
from wxtokend.proxy import ProxyListener, bind_proxy

if TYPE_CHECKING:
    from wxtokend.service import Service

__all__ = ["Bound", "bind_listeners"]


@dataclass(frozen=True)
class Bound:
    """A bound socket and the app to serve on it."""

    sock: socket.socket
    app: Starlette
    role: str = "admin"  # or "callback": the one facing WeChat

    @property
    def url(self) -> str:
        return asgi.base_url(self.sock)

    async def serve(self) -> None:
        await asgi.serve(self.app, [self.sock])


def bind_listeners(daemon: Service) -> list[Bound | ProxyListener]:
    """Bind before anything starts, so a taken port fails the start with a clear line."""
    admin = daemon.config.admin
    wanted = [
        (admin.listen, "listen", admin_app),
        (admin.probe_listen, "probe_listen", probe_app),
    ]
    bound: list[Bound | ProxyListener] = []
    for listen, key, make_app in wanted:
        if listen is None:
            continue
        try:
            bound.append(Bound(asgi.bind(listen), make_app(daemon)))
        except OSError as exc:
            for listener in bound:
                listener.sock.close()
            raise ListenError(
                f"admin.{key} {listen}: {exc.strerror} — pick another address, or set"
                f" admin.{key}: null to turn it off"
            ) from None
        if key == "listen" and listen is not None and not listen.is_loopback:
            get_logger().warning(
                "the admin API (passive refresh, SDK endpoints) listens beyond loopback",
                listen=str(listen),
                fix="keep it on loopback and use admin.probe_listen for probes",
            )
    callback = daemon.config.callback_listen
    if callback is not None:
        app = callback_app(
            intakes=daemon.platforms.intakes(),
            deliver=daemon.platforms.deliver,
            count=daemon.metrics.callback,
        )
        try:
            bound.append(Bound(asgi.bind(callback), app, role="callback"))
        except OSError as exc:
            for listener in bound:
                listener.sock.close()
            raise ListenError(
                f"callback.listen {callback}: {exc.strerror} — pick another address"
            ) from None
    try:
        proxy = bind_proxy(daemon)
    except ListenError:
        for listener in bound:
            listener.sock.close()
        raise
    return [*bound, proxy] if proxy is not None else bound
