"""Serving a Starlette app with uvicorn inside an event loop we own.

uvicorn's ``Server.serve()`` installs its own SIGINT/SIGTERM handlers; the
daemon and the emulator decide what signals mean, so the server's steps are
driven here directly, on sockets bound by the caller.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import uvicorn

__all__ = ["Listen", "base_url", "bind", "parse_listen", "serve", "tcp_listener"]


@dataclass(frozen=True, kw_only=True)
class Listen:
    """Where to listen: ``host:port``, ``[v6]:port`` or ``unix:/path``."""

    host: str = ""
    port: int = 0
    path: Path | None = None

    @property
    def is_loopback(self) -> bool:
        if self.path is not None:
            return True
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False

    def __str__(self) -> str:
        if self.path is not None:
            return f"unix:{self.path}"
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_listen(text: str) -> Listen:
    """Parse an address; ValueError with the accepted forms if it is none of them."""
    forms = "use host:port (e.g. 127.0.0.1:9735, [::1]:9735) or unix:/absolute/path.sock"
    if text.startswith("unix:"):
        path = Path(text.removeprefix("unix:"))
        if not path.is_absolute():
            raise ValueError(f"a unix socket path must be absolute — {forms}")
        return Listen(path=path)
    host, sep, port = text.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ValueError(forms)
    return Listen(host=host, port=int(port))


def bind(listen: Listen, *, unix_mode: int = 0o660) -> socket.socket:
    """A listening socket for ``listen``; a stale unix socket file is replaced."""
    if listen.path is not None:
        if listen.path.is_socket():
            if _answers(listen.path):
                raise OSError(errno.EADDRINUSE, "another process is listening on it")
            listen.path.unlink()  # left behind by a process that died
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(str(listen.path))
        os.chmod(listen.path, unix_mode)
        sock.listen(1024)
        return sock
    family = socket.AF_INET6 if ":" in listen.host else socket.AF_INET
    return tcp_listener(
        socket.create_server((listen.host, listen.port), family=family, backlog=4096)
    )


def tcp_listener(sock: socket.socket) -> socket.socket:
    """The same socket, reporting proto IPPROTO_TCP as the kernel knows it is.

    asyncio sets TCP_NODELAY only on connections whose listener says IPPROTO_TCP, and
    socket.create_server() says 0: without NODELAY each keep-alive reply waits ~40 ms
    for a delayed ACK.
    """
    return (
        sock if sock.proto or sock.family == socket.AF_UNIX else socket.socket(fileno=sock.detach())
    )


def _answers(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(str(path))
        except OSError:
            return False
        return True


def base_url(sock: socket.socket) -> str:
    if sock.family == socket.AF_UNIX:
        return f"unix:{sock.getsockname()}"
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


async def serve(
    app: Any,
    sockets: list[socket.socket],
    *,
    ready: Callable[[], None] | None = None,
    proxy_headers: bool = False,
) -> None:
    """Serve ``app`` on ``sockets`` until cancelled; then close them."""
    config = uvicorn.Config(
        app,
        log_config=None,  # leave the embedding process's logging setup alone
        log_level="warning",
        access_log=False,
        lifespan="off",
        ws="none",
        proxy_headers=proxy_headers,
        timeout_graceful_shutdown=1,
    )
    config.load()
    server = uvicorn.Server(config)
    server.lifespan = config.lifespan_class(config)
    await server.startup(sockets=sockets)
    try:
        if ready is not None:
            ready()
        await server.main_loop()
    finally:
        with anyio.CancelScope(shield=True):
            await server.shutdown(sockets=sockets)
        for sock in sockets:
            if sock.family == socket.AF_UNIX and isinstance(sock.getsockname(), str):
                with contextlib.suppress(OSError):
                    os.unlink(sock.getsockname())
            sock.close()
