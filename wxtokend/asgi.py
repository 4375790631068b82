"""Serving a Starlette app with uvicorn inside an event loop we own.

uvicorn's ``Server.serve()`` installs its own SIGINT/SIGTERM handlers; the
daemon and the emulator decide what signals mean, so the server's steps are
driven here directly, on sockets bound by the caller.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import os
import resource
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import anyio
import h11
import uvicorn
from starlette.types import ASGIApp, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol

from wxtokend.guard import refuse

__all__ = [
    "Limits",
    "Listen",
    "base_url",
    "bind",
    "connection_cap",
    "parse_listen",
    "raise_open_file_limit",
    "serve",
    "tcp_listener",
]


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
    if listen.host == "::":
        return tcp_listener(_every_address(listen.port))
    family = socket.AF_INET6 if ":" in listen.host else socket.AF_INET
    return tcp_listener(
        socket.create_server((listen.host, listen.port), family=family, backlog=4096)
    )


def _every_address(port: int) -> socket.socket:
    """``[::]``: every IPv6 and IPv4 address (dual-stack), on an IPv4-only host every IPv4
    one, on an IPv6-only one every IPv6 one, so one setting fits every cluster."""
    try:
        return socket.create_server(
            ("::", port),
            family=socket.AF_INET6,
            backlog=4096,
            dualstack_ipv6=socket.has_dualstack_ipv6(),
        )
    except OSError as exc:
        if exc.errno not in (errno.EAFNOSUPPORT, errno.EADDRNOTAVAIL):
            raise
    return socket.create_server(("0.0.0.0", port), family=socket.AF_INET, backlog=4096)


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


@dataclass(frozen=True, kw_only=True)
class Limits:
    """What one listener grants a client that may be hostile.

    ``max_connections`` open connections are served normally (fewer if the
    open-file limit is low, see :func:`connection_cap`); each one beyond that
    gets ``shed_timeout`` s to send a request, answered 503 unless it is one
    of ``always_served`` (the probes). A request's headers must arrive within
    ``header_timeout`` s of the connection (or of the previous response) and
    within ``max_header_bytes``; an idle keep-alive connection is closed after
    ``keep_alive`` s.
    """

    max_connections: int = 10_000
    header_timeout: float = 10.0
    shed_timeout: float = 1.0
    keep_alive: int = 5
    max_header_bytes: int = 16 * 1024
    always_served: frozenset[str] = frozenset({"/healthz", "/readyz"})


def raise_open_file_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard one (a low soft limit caps connections)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 1 << 20 if hard == resource.RLIM_INFINITY else hard
    if soft != resource.RLIM_INFINITY and soft < wanted:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
            soft = wanted
    return int(soft)


def connection_cap(limits: Limits, open_files: int) -> int:
    """Connections one listener serves normally: half the file limit, less room for the rest."""
    return min(limits.max_connections, max(16, open_files // 2 - 128))


class _GuardedH11(H11Protocol):
    """uvicorn's h11 protocol with a deadline on request headers and a connection cap.

    uvicorn times out only an idle keep-alive connection, and any byte received
    cancels that: a client sending headers a byte at a time, or connecting and
    sending nothing, would hold its connection for ever.
    """

    limits: ClassVar[Limits] = Limits()
    cap: ClassVar[int] = Limits().max_connections
    _deadline: asyncio.TimerHandle | None = None
    _patience: float = 0.0  # for each request's headers on this connection

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._patience = self.limits.header_timeout
        if len(self.connections) > self.cap:
            self.app = _shed(self.app, self.limits.always_served)
            self._patience = self.limits.shed_timeout
        self._arm()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.conn.their_state is not h11.IDLE:  # the headers are in: the app's turn
            self._disarm()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing() and self.conn.their_state is h11.IDLE:
            self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(self._patience, self._expire)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expire(self) -> None:
        """Answer 408 and close, written raw: there is no request for h11 to answer."""
        self._deadline = None
        idle = self.conn.their_state is h11.IDLE and self.conn.our_state is h11.IDLE
        if not idle or self.transport.is_closing():
            return
        message = b"request headers not received in time"
        self.transport.write(
            b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain; charset=utf-8\r\n"
            b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(message), message)
        )
        self.transport.close()


def _shed(app: ASGIApp, always_served: frozenset[str]) -> ASGIApp:
    """``app`` for a connection over the cap: the probes still answer, nothing else does."""

    async def shed(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] in always_served:
            await app(scope, receive, send)
            return
        await refuse(send, 503, "too many connections: retry shortly", retry_after=1)

    return shed


def _protocol(limits: Limits) -> type[_GuardedH11]:
    cap = connection_cap(limits, raise_open_file_limit())
    return type("GuardedH11", (_GuardedH11,), {"limits": limits, "cap": cap})


async def serve(
    app: Any,
    sockets: list[socket.socket],
    *,
    ready: Callable[[], None] | None = None,
    proxy_headers: bool = False,
    limits: Limits | None = None,
) -> None:
    """Serve ``app`` on ``sockets`` until cancelled, within ``limits``; then close them."""
    limits = limits or Limits()
    config = uvicorn.Config(
        app,
        http=_protocol(limits),
        log_config=None,  # leave the embedding process's logging setup alone
        log_level="warning",
        access_log=False,
        lifespan="off",
        ws="none",
        proxy_headers=proxy_headers,
        timeout_graceful_shutdown=1,
        timeout_keep_alive=limits.keep_alive,
        h11_max_incomplete_event_size=limits.max_header_bytes,
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
