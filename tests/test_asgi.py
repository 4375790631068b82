"""Listening addresses and sockets for the admin API."""

from __future__ import annotations

import asyncio
import socket
import stat
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from wxtokend.asgi import Limits, Listen, bind, connection_cap, parse_listen, serve
from wxtokend.guard import RequestGuard


class TestParseListen:
    """The address forms admin.listen accepts."""

    @pytest.mark.parametrize(
        ("text", "expected", "loopback"),
        [
            ("127.0.0.1:9735", Listen(host="127.0.0.1", port=9735), True),
            ("[::1]:9735", Listen(host="::1", port=9735), True),
            ("localhost:1", Listen(host="localhost", port=1), True),
            ("0.0.0.0:9736", Listen(host="0.0.0.0", port=9736), False),
            ("unix:/run/wxtoken/admin.sock", Listen(path=Path("/run/wxtoken/admin.sock")), True),
        ],
    )
    def test_accepted(self, text: str, expected: Listen, loopback: bool) -> None:
        """Each form parses, knows whether it is loopback and prints back as written."""
        parsed = parse_listen(text)
        assert parsed == expected
        assert parsed.is_loopback is loopback
        assert str(parsed) == text

    @pytest.mark.parametrize("text", ["9735", ":9735", "host:", "host:99999", "unix:rel.sock"])
    def test_refused(self, text: str) -> None:
        """Anything else is refused with the accepted forms in the message."""
        with pytest.raises(ValueError, match="host:port"):
            parse_listen(text)


class TestEveryAddress:
    """[::] listens on every address, IPv4 and IPv6, so one probe_listen fits every cluster."""

    @pytest.mark.skipif(not socket.has_ipv6, reason="no IPv6 on this host")
    def test_dual_stack(self) -> None:
        """Both 127.0.0.1 and ::1 reach a [::] listener (IPV6_V6ONLY off)."""
        sock = bind(parse_listen("[::]:0"))
        try:
            port = sock.getsockname()[1]
            assert sock.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == 0
            for host in ("127.0.0.1", "::1"):
                socket.create_connection((host, port), timeout=2).close()
        finally:
            sock.close()

    def test_ipv4_only_host_falls_back(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Where IPv6 is off (EAFNOSUPPORT) it becomes 0.0.0.0, not a failed start."""
        real = socket.create_server

        def no_ipv6(address: tuple[str, int], **kwargs: object) -> socket.socket:
            if kwargs.get("family") == socket.AF_INET6:
                raise OSError(97, "Address family not supported by protocol")
            return real(address, **kwargs)  # type: ignore[arg-type]

        monkeypatch.setattr(socket, "create_server", no_ipv6)
        sock = bind(parse_listen("[::]:0"))
        try:
            assert sock.family == socket.AF_INET
            socket.create_connection(("127.0.0.1", sock.getsockname()[1]), timeout=2).close()
        finally:
            sock.close()


class TestUnixSocket:
    """The admin unix socket: its mode, a stale one, a live one."""

    def test_mode_0660(self, tmp_path: Path) -> None:
        """The socket is 0660 whatever the umask, so the consumers' group can connect."""
        path = tmp_path / "admin.sock"
        sock = bind(Listen(path=path))
        try:
            assert stat.S_IMODE(path.stat().st_mode) == 0o660
        finally:
            sock.close()

    def test_stale_socket_is_replaced(self, tmp_path: Path) -> None:
        """A socket file left by a dead process is removed and bound again."""
        path = tmp_path / "admin.sock"
        bind(Listen(path=path)).close()  # closed: nobody listens, the file stays
        assert path.is_socket()
        bind(Listen(path=path)).close()

    def test_live_socket_is_not_stolen(self, tmp_path: Path) -> None:
        """A socket another daemon listens on is refused, not unlinked under it."""
        path = tmp_path / "admin.sock"
        live = bind(Listen(path=path))
        try:
            with pytest.raises(OSError, match="another process"):
                bind(Listen(path=path))
            client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            client.connect(str(path))  # the first daemon still answers
            client.close()
        finally:
            live.close()


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def _ok(_: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def _echo(request: Request) -> Response:
    return JSONResponse({"bytes": len(await request.body())})


SMALL = Limits(max_connections=4, header_timeout=0.5, shed_timeout=0.5, keep_alive=30)


class Served:
    """A real uvicorn server in this process, on loopback, within ``SMALL`` limits."""

    def __init__(self, port: int) -> None:
        self.port = port

    async def connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection("127.0.0.1", self.port)

    async def request(self, raw: bytes) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        reader, writer = await self.connect()
        writer.write(raw)
        await writer.drain()
        return reader, writer


def get(path: str, *, close: bool = False) -> bytes:
    connection = b"Connection: close\r\n" if close else b""
    return b"GET " + path.encode() + b" HTTP/1.1\r\nHost: x\r\n" + connection + b"\r\n"


async def status_of(reader: asyncio.StreamReader) -> int:
    """The status of the next response on ``reader`` (its body is read too)."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=10)
    lengths = [
        int(line.split(b":", 1)[1])
        for line in head.lower().split(b"\r\n")
        if line.startswith(b"content-length:")
    ]
    if lengths:  # else the body runs to the close
        await asyncio.wait_for(reader.readexactly(lengths[0]), timeout=10)
    return int(head.split(b" ", 2)[1])


async def closed(reader: asyncio.StreamReader) -> bool:
    """True once the server has closed the connection (whatever it wrote before)."""
    try:
        while await asyncio.wait_for(reader.read(65536), timeout=10):
            pass
    except ConnectionResetError:
        pass
    return True


@pytest.fixture
async def served() -> AsyncIterator[Served]:
    app = Starlette(
        routes=[
            Route("/healthz", _ok),
            Route("/other", _ok),
            Route("/echo", _echo, methods=["POST"]),
        ],
        middleware=[Middleware(RequestGuard, limit=lambda _: 1024, timeout=0.5)],
    )
    sock = socket.create_server(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    ready = asyncio.Event()
    task = asyncio.create_task(serve(app, [sock], ready=ready.set, limits=SMALL))
    await asyncio.wait_for(ready.wait(), timeout=10)
    yield Served(port)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


@pytest.mark.anyio
class TestSlowClients:
    """A client that never finishes its request loses its connection, with a 408."""

    async def test_silent_connection_is_closed(self, served: Served) -> None:
        """A connection that sends nothing is answered 408 and closed after header_timeout."""
        reader, _ = await served.connect()
        assert await status_of(reader) == 408
        assert await closed(reader)

    async def test_headers_a_byte_at_a_time(self, served: Served) -> None:
        """Bytes trickling in do not extend the deadline (uvicorn's own timer would restart)."""
        reader, writer = await served.connect()

        async def trickle() -> None:
            for byte in get("/healthz"):
                writer.write(bytes([byte]))
                await asyncio.sleep(0.1)

        trickling = asyncio.create_task(trickle())
        assert await status_of(reader) == 408
        assert not trickling.done()  # answered while the request was still unfinished
        trickling.cancel()

    async def test_idle_keep_alive_then_half_a_request(self, served: Served) -> None:
        """After a response, the next request's headers are held to the same deadline."""
        reader, writer = await served.request(get("/healthz"))
        assert await status_of(reader) == 200
        writer.write(b"GET /healthz HTTP/1.1\r\nHo")
        assert await status_of(reader) == 408
        assert await closed(reader)

    async def test_body_never_finished(self, served: Served) -> None:
        """A body that stops arriving is answered 408 by the body guard's deadline."""
        reader, _ = await served.request(
            b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n0123456789"
        )
        assert await status_of(reader) == 408
        assert await closed(reader)


@pytest.mark.anyio
class TestConnectionCap:
    """Beyond max_connections a client gets a fast 503, except for the probes."""

    async def test_over_the_cap(self, served: Served) -> None:
        """With the cap's connections held open, others get 503 + Retry-After; /healthz answers."""
        held = [await served.request(get("/healthz")) for _ in range(SMALL.max_connections)]
        for reader, _ in held:
            assert await status_of(reader) == 200
        reader, _ = await served.request(get("/other"))
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=10)
        assert head.startswith(b"HTTP/1.1 503")
        assert b"retry-after: 1" in head.lower()
        assert await closed(reader)
        reader, _ = await served.request(get("/healthz"))
        assert await status_of(reader) == 200
        for _, writer in held:
            writer.close()
        await asyncio.sleep(0.2)  # the server sees the closes
        reader, _ = await served.request(get("/other"))
        assert await status_of(reader) == 200

    async def test_over_the_cap_and_silent(self, served: Served) -> None:
        """A connection over the cap that sends nothing is closed after shed_timeout."""
        held = [await served.request(get("/healthz")) for _ in range(SMALL.max_connections)]
        for reader, _ in held:
            assert await status_of(reader) == 200
        reader, _ = await served.connect()
        assert await closed(reader)

    def test_cap_follows_the_open_file_limit(self) -> None:
        """Half the file limit less a reserve, never above max_connections, at least 16."""
        assert connection_cap(Limits(), 1_048_576) == 10_000
        assert connection_cap(Limits(), 20_000) == 9_872
        assert connection_cap(Limits(), 1024) == 384
        assert connection_cap(Limits(), 100) == 16
        assert connection_cap(Limits(max_connections=4), 1024) == 4


@pytest.mark.anyio
class TestBrokenRequests:
    """Requests h11 or uvicorn choke on get a 400 and the server carries on."""

    @pytest.mark.parametrize(
        "raw",
        [
            b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: " + b"9" * 5000 + b"\r\n\r\n",
            b"GET /\xff\xfe HTTP/1.1\r\nHost: x\r\n\r\n",
            b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03" + b"\x00" * 64,  # TLS hello
        ],
        ids=["5000-digit-length", "non-ascii-target", "tls"],
    )
    async def test_answered_400(self, served: Served, raw: bytes) -> None:
        """A 400 and a close; the next client is served."""
        reader, _ = await served.request(raw)
        assert await status_of(reader) == 400
        assert await closed(reader)
        reader, _ = await served.request(get("/healthz"))
        assert await status_of(reader) == 200

    async def test_huge_headers_arriving_whole(self, served: Served) -> None:
        """20 KB of headers in one piece (h11's own cap sees only incomplete ones) is 431."""
        reader, _ = await served.request(
            b"GET /healthz HTTP/1.1\r\nHost: x\r\nX: " + b"a" * 20_000 + b"\r\n\r\n"
        )
        assert await status_of(reader) == 431
        assert await closed(reader)

    async def test_huge_headers_trickling_in(self, served: Served) -> None:
        """Headers that pass 16 KB before they end are refused by h11 with a 400."""
        reader, writer = await served.request(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX: ")
        for _ in range(20):
            writer.write(b"a" * 1024)
            await writer.drain()
        assert await status_of(reader) == 400
