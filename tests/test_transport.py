"""The aiohttp transport against real sockets on loopback: what arrives, and every failure
raised as the httpx error the WeChat client handles."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
import httpx
import pytest

from wxtokend.transport import AiohttpTransport, _translated

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
SECRET = "s3cr3t0123456789abcdef0123456789"
pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@contextlib.asynccontextmanager
async def server(handler: Handler) -> AsyncIterator[tuple[str, list[bytes]]]:
    """A raw TCP server; yields its base URL and what it received: a ``<connection>``
    marker per connection, then each request's head (and body)."""
    heads: list[bytes] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        heads.append(b"<connection>")
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            while head := await reader.readuntil(b"\r\n\r\n"):
                heads.append(head)
                length = _content_length(head)
                if length:
                    heads.append(await reader.readexactly(length))
                await handler(reader, writer)
        writer.close()

    srv = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = srv.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}", heads
    finally:
        srv.close()


def requests(seen: list[bytes]) -> list[bytes]:
    return [item for item in seen if item != b"<connection>"]


def _content_length(head: bytes) -> int:
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    return 0


def reply(body: bytes, *, status: str = "200 OK", extra: bytes = b"") -> Handler:
    async def handler(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(
            b"HTTP/1.1 " + status.encode() + b"\r\nContent-Type: application/json\r\n" + extra
        )
        writer.write(b"Content-Length: %d\r\n\r\n" % len(body) + body)
        await writer.drain()

    return handler


def client(timeout: float = 2.0, proxy: str | None = None) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        transport=AiohttpTransport(max_connections=4, proxy=proxy), timeout=timeout
    )


def token_url(base: str) -> str:
    return f"{base}/cgi-bin/token?grant_type=client_credential&appid=wx1&secret={SECRET}"


class TestReplies:
    """What the server sends arrives as an httpx response."""

    async def test_status_headers_and_body(self) -> None:
        """Status, headers and JSON body come through unchanged."""
        body = json.dumps({"access_token": "T", "expires_in": 7200}).encode()
        async with server(reply(body, extra=b"X-Trace: 7\r\n")) as (base, heads), client() as c:
            response = await c.get(token_url(base))
        assert response.status_code == 200
        assert response.headers["x-trace"] == "7"
        assert response.json() == {"access_token": "T", "expires_in": 7200}
        assert requests(heads)[0].startswith(
            b"GET /cgi-bin/token?grant_type=client_credential&appid=wx1"
        )

    async def test_gzip_body_is_decoded_once(self) -> None:
        """A gzip Content-Encoding is decoded by httpx, not twice."""
        body = gzip.compress(b'{"errcode":0}')
        handler = reply(body, extra=b"Content-Encoding: gzip\r\n")
        async with server(handler) as (base, _), client() as c:
            response = await c.get(f"{base}/x")
        assert response.json() == {"errcode": 0}

    async def test_post_body_and_headers_reach_the_server(self) -> None:
        """A stable_token POST arrives with its JSON body and the client's headers."""
        async with server(reply(b"{}")) as (base, heads), client() as c:
            await c.post(
                f"{base}/cgi-bin/stable_token",
                json={"appid": "wx1"},
                headers={"User-Agent": "wxtokend/t"},
            )
        assert b"user-agent: wxtokend/t" in requests(heads)[0].lower()
        assert json.loads(requests(heads)[1]) == {"appid": "wx1"}

    async def test_error_statuses_are_responses(self) -> None:
        """A 502 is a response for the client to judge, not a transport error."""
        bad_gateway = reply(b"bad gateway", status="502 Bad Gateway")
        async with server(bad_gateway) as (base, _), client() as c:
            response = await c.get(f"{base}/x")
        assert response.status_code == 502

    async def test_keep_alive_reuses_one_connection(self) -> None:
        """Sequential calls share one connection (no reconnect per call)."""
        async with server(reply(b"{}")) as (base, seen), client() as c:
            for _ in range(5):
                await c.get(f"{base}/x")
        assert seen.count(b"<connection>") == 1
        assert sum(1 for item in seen if item.startswith(b"GET")) == 5

    async def test_proxy_gets_the_absolute_url(self) -> None:
        """With proxy: set, the request goes to the proxy in absolute form."""
        async with server(reply(b"{}")) as (proxy, heads), client(proxy=proxy) as c:
            await c.get("http://api.weixin.example/cgi-bin/token?appid=wx1")
        assert requests(heads)[0].startswith(
            b"GET http://api.weixin.example/cgi-bin/token?appid=wx1 "
        )


class TestFailures:
    """Every failure is an httpx error, and its text never quotes the URL."""

    async def check(self, base: str, expected: type[Exception], limit: float = 2.0) -> None:
        async with client(limit) as c:
            with pytest.raises(expected) as info:
                await c.get(token_url(base))
        assert SECRET not in str(info.value)
        assert info.value.__cause__ is None
        assert info.value.__suppress_context__  # no aiohttp text chained either

    async def test_refused_connection(self) -> None:
        """Nothing listening: httpx.ConnectError."""
        async with server(reply(b"{}")) as (base, _):
            pass  # closed: its port now refuses
        await self.check(base, httpx.ConnectError)

    async def test_stalled_reply_times_out(self) -> None:
        """No answer within the read timeout: httpx.ReadTimeout."""

        async def stall(_: asyncio.StreamReader, __: asyncio.StreamWriter) -> None:
            await asyncio.sleep(5)

        async with server(stall) as (base, _):
            await self.check(base, httpx.ReadTimeout, limit=0.2)

    async def test_garbage_instead_of_http(self) -> None:
        """Bytes that are not HTTP: httpx.RemoteProtocolError."""

        async def garbage(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.write(b"upstream connect error or disconnect/reset before headers\r\n\r\n")
            await writer.drain()
            writer.close()

        async with server(garbage) as (base, _):
            await self.check(base, httpx.RemoteProtocolError)

    async def test_connection_closed_mid_body(self) -> None:
        """The server hangs up before the promised body ends: a network error."""

        async def short(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.write(b'HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{"access')
            await writer.drain()
            writer.close()

        async with server(short) as (base, _):
            await self.check(base, httpx.TransportError)

    async def test_closed_without_reply(self) -> None:
        """The server closes without a byte: a network error, not a crash."""

        async def hang_up(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.close()

        async with server(hang_up) as (base, _):
            await self.check(base, httpx.TransportError)


class TestErrorTexts:
    """aiohttp texts that quote the URL are replaced: the query holds the AppSecret."""

    @pytest.mark.parametrize(
        ("exc", "expected"),
        [
            (
                aiohttp.ConnectionTimeoutError(f"Connection timeout to host {SECRET}"),
                httpx.ConnectTimeout,
            ),
            (
                aiohttp.SocketTimeoutError(f"Timeout on reading data from {SECRET}"),
                httpx.ReadTimeout,
            ),
            (aiohttp.InvalidURL(f"http://x/?secret={SECRET}"), httpx.NetworkError),
        ],
    )
    def test_no_url_in_text(self, exc: Exception, expected: type[Exception]) -> None:
        """The translated error has the right type and no trace of the URL."""
        translated = _translated(exc)
        assert isinstance(translated, expected)
        assert SECRET not in str(translated)

    async def test_closed_transport_refuses(self) -> None:
        """After aclose() a late request fails cleanly instead of opening a new session."""
        transport = AiohttpTransport(max_connections=1)
        await transport.aclose()
        with pytest.raises(httpx.NetworkError):
            await transport.handle_async_request(httpx.Request("GET", "http://127.0.0.1:9/"))
