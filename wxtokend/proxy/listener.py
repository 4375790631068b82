"""The proxy's listener: bound before the daemon starts, served by aiohttp's server.

aiohttp's server rather than uvicorn's: its C parser keeps the proxy's own cost per
call near a tenth of a millisecond, and its request bodies stream. Access logs are off
(the query is the consumer's, and may hold anything); limits on the request head are
aiohttp's (8 KiB lines, 128 headers).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from typing import TYPE_CHECKING

from aiohttp import web

from wxtokend import asgi
from wxtokend.errors import ListenError
from wxtokend.proxy.handler import ApiProxy
from wxtokend.proxy.metrics import ProxyMetrics

if TYPE_CHECKING:
    from wxtokend.service import Service

__all__ = ["ProxyListener", "bind_proxy"]

_KEEPALIVE = 75.0  # longer than SDK pools keep idle connections, so they close first
_QUIET = logging.getLogger("wxtokend.proxy.server")
_QUIET.propagate = False  # aiohttp's own error lines would quote the request
_QUIET.addHandler(logging.NullHandler())


class ProxyListener:
    """A bound socket and the proxy to serve on it (the daemon's :class:`Listener`)."""

    role = "api_proxy"

    def __init__(self, sock: socket.socket, proxy: ApiProxy) -> None:
        self.sock = sock
        self.proxy = proxy

    @property
    def url(self) -> str:
        return asgi.base_url(self.sock)

    async def serve(self) -> None:
        server = web.Server(
            self.proxy.handle,
            access_log=None,
            logger=_QUIET,
            keepalive_timeout=_KEEPALIVE,
            auto_decompress=False,  # a compressed upload is forwarded as it came
        )
        loop = asyncio.get_running_loop()
        if self.sock.family == socket.AF_UNIX:
            listening = await loop.create_unix_server(server, sock=self.sock)
        else:
            listening = await loop.create_server(server, sock=self.sock)
        try:
            await asyncio.Future()  # until cancelled
        finally:
            listening.close()
            await asyncio.shield(_shutdown(server, listening, self.proxy, self.sock))


async def _shutdown(
    server: web.Server, listening: asyncio.Server, proxy: ApiProxy, sock: socket.socket
) -> None:
    with contextlib.suppress(Exception):
        await server.shutdown(1.0)
        await proxy.aclose()
    if sock.family == socket.AF_UNIX and isinstance(sock.getsockname(), str):
        with contextlib.suppress(OSError):
            os.unlink(sock.getsockname())


def bind_proxy(service: Service) -> ProxyListener | None:
    """The proxy's listener if ``api_proxy:`` is set; a taken address fails the start."""
    config = service.config.api_proxy
    if config is None:
        return None
    try:
        sock = asgi.bind(config.listen)
    except OSError as exc:
        raise ListenError(
            f"api_proxy.listen {config.listen}: {exc.strerror} — pick another address"
        ) from None
    proxy = ApiProxy(
        service,
        config,
        metrics=ProxyMetrics(service.metrics.registry),
        egress_proxy=service.config.proxy,
    )
    return ProxyListener(sock, proxy)
