"""The aiohttp transport against real sockets on loopback: what arrives, and every failure
raised as the httpx error the WeChat client handles."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import tracemalloc
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from urllib.parse import parse_qs

import aiohttp
import httpx
import pytest

from wxtokend.config import AppConfig
from wxtokend.kinds import Call
from wxtokend.redact import Secret
from wxtokend.transport import (
    MAX_BODY_BYTES,
    AiohttpTransport,
    BodyTooLarge,
    UnsupportedEncoding,
    _translated,
    read_body,
)
from wxtokend.wechat import WeChatClient

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


async def exchange(
    url: str, *, method: str = "GET", body: bytes | None = None, limit: float = 2.0
) -> tuple[int, bytes]:
    """One call on the WeChat client's own path (no httpx objects)."""
    transport = AiohttpTransport(max_connections=2)
    try:
        return await transport.exchange(
            method, url, headers={"User-Agent": "wxtokend/t"}, body=body, phase_timeout=limit
        )
    finally:
        await transport.aclose()


async def via_httpx(url: str, limit: float = 2.0) -> tuple[int, bytes]:
    """One call through httpx's interface, the body read by read_body."""
    async with client(limit) as c:
        response = await c.send(c.build_request("GET", url), stream=True)
        try:
            return response.status_code, await read_body(response)
        finally:
            await response.aclose()


@pytest.fixture(params=["httpx", "exchange"])
def fetch(request: pytest.FixtureRequest) -> Callable[..., Awaitable[tuple[int, bytes]]]:
    """Both ways through the transport: each must fail and cap alike."""
    return via_httpx if request.param == "httpx" else exchange


class TestExchange:
    """The client's own path: what the server gets, and what comes back."""

    async def test_query_sent_as_encoded_and_body_as_given(self) -> None:
        """The URL is not re-encoded; the body and headers arrive unchanged."""
        body = json.dumps({"component_appid": "wx1"}).encode()
        url_query = "?component_access_token=a%2Bb%2F%3D&x=%E4%B8%AD"
        async with server(reply(b'{"ok":1}')) as (base, heads):
            status, answer = await exchange(
                f"{base}/cgi-bin/x{url_query}", method="POST", body=body
            )
        assert (status, answer) == (200, b'{"ok":1}')
        head, sent = requests(heads)
        assert head.startswith(b"POST /cgi-bin/x" + url_query.encode() + b" HTTP/1.1")
        assert b"user-agent: wxtokend/t" in head.lower()
        assert sent == body

    async def test_gzip_body_is_decoded(self) -> None:
        """A gzip Content-Encoding is decoded within the cap."""
        handler = reply(gzip.compress(b'{"errcode":0}'), extra=b"Content-Encoding: gzip\r\n")
        async with server(handler) as (base, _):
            assert await exchange(f"{base}/x") == (200, b'{"errcode":0}')

    async def test_other_statuses_come_back_unread(self) -> None:
        """A 502 is returned with no body read, and the connection is not pooled."""
        async with server(head_only(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 9\r\n\r\n")) as (
            base,
            _,
        ):
            assert await asyncio.wait_for(exchange(f"{base}/x"), timeout=1.5) == (502, b"")

    async def test_keep_alive_reuses_one_connection(self) -> None:
        """Sequential calls share one connection."""
        transport = AiohttpTransport(max_connections=1)
        async with server(reply(b"{}")) as (base, seen):
            for _ in range(5):
                await transport.exchange(
                    "GET", f"{base}/x", headers={}, body=None, phase_timeout=2.0
                )
            await transport.aclose()
        assert seen.count(b"<connection>") == 1

    async def test_proxy_gets_the_absolute_url(self) -> None:
        """With proxy: set, the request goes to the proxy in absolute form, still encoded."""
        async with server(reply(b"{}")) as (proxy, heads):
            transport = AiohttpTransport(max_connections=1, proxy=proxy)
            url = "http://api.weixin.example/cgi-bin/token?appid=wx1&secret=a%2Bb"
            await transport.exchange("GET", url, headers={}, body=None, phase_timeout=2.0)
            await transport.aclose()
        assert requests(heads)[0].startswith(b"GET " + url.encode() + b" ")


class TestClientOnTheRealTransport:
    """WeChatClient's own path (no httpx objects) sends what httpx's would."""

    async def test_query_body_and_base_on_the_wire(self) -> None:
        """A secret with + / = % & arrives exactly, a path-prefixed base is kept, and a
        POST carries its query and its JSON body."""
        secret = "a+b/c=d%e&f" + "0" * 21
        app = AppConfig(
            appid="wx0000000000000001",
            name="shop",
            grant="classic",
            secret=Secret(secret),
            secret_source="test",
            api_base="",
        )
        token = json.dumps({"access_token": "T" * 40, "expires_in": 7200}).encode()
        async with server(reply(token)) as (base, heads):
            client = WeChatClient(api_base=f"{base}/prefix/")
            try:
                await client.fetch_token(app)
                post = Call(
                    method="POST",
                    endpoint="/cgi-bin/component/api_query_auth",
                    params={"component_access_token": "C+/="},
                    body={"component_appid": "wx1", "note": "中"},
                )
                assert await client.send(app, post, {}) == json.loads(token)
            finally:
                await client.aclose()
        get_head, post_head, post_body = requests(heads)
        target = get_head.split(b" ")[1].decode()
        path, _, query = target.partition("?")
        assert path == "/prefix/cgi-bin/token"
        assert parse_qs(query) == {
            "grant_type": ["client_credential"],
            "appid": ["wx0000000000000001"],
            "secret": [secret],
        }
        assert post_head.startswith(
            b"POST /prefix/cgi-bin/component/api_query_auth?component_access_token=C%2B%2F%3D "
        )
        assert b"content-type: application/json" in post_head.lower()
        assert json.loads(post_body) == {"component_appid": "wx1", "note": "中"}

    async def test_base_is_normalised_as_httpx_would(self) -> None:
        """An IDN host goes out in punycode, a path percent-encoded, dot segments resolved."""
        client = WeChatClient(api_base="https://例子.example/a/../b/中/")
        app = AppConfig(
            appid="wx1",
            name="x",
            grant="classic",
            secret=Secret("s"),
            secret_source="t",
            api_base="",  # the client's own base
        )
        assert client._wire_base(app) == "https://xn--fsqu00a.example/b/%E4%B8%AD"
        await client.aclose()

    async def test_a_url_yarl_refuses_is_a_transport_error(self) -> None:
        """An api_base no URL parser accepts fails as a network error, not a ValueError."""
        transport = AiohttpTransport(max_connections=1)
        try:
            with pytest.raises(httpx.NetworkError, match="invalid URL"):
                await transport.exchange(
                    "GET", "http://[::1/x?secret=" + SECRET, headers={}, body=None, phase_timeout=1
                )
        finally:
            await transport.aclose()

    async def test_repeated_content_encodings_are_read_together(self) -> None:
        """identity, then gzip (two headers): decoded, as httpx reads them."""
        extra = b"Content-Encoding: identity\r\nContent-Encoding: gzip\r\n"
        async with server(reply(gzip.compress(b'{"errcode":0}'), extra=extra)) as (base, _):
            assert await exchange(f"{base}/x") == (200, b'{"errcode":0}')


class TestFailures:
    """Every failure is an httpx error, and its text never quotes the URL (both paths)."""

    @pytest.fixture(autouse=True)
    def _path(self, fetch: Callable[..., Awaitable[tuple[int, bytes]]]) -> None:
        self.fetch = fetch

    async def check(self, base: str, expected: type[Exception], limit: float = 2.0) -> None:
        with pytest.raises(expected) as info:
            await self.fetch(token_url(base), limit=limit)
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
            (
                # What aiohttp raises when a streamed upload's source fails mid-body.
                aiohttp.ClientOSError(
                    None, f"Can not write request body for http://x/m?type=a&access_token={SECRET}"
                ),
                httpx.NetworkError,
            ),
            (
                aiohttp.ClientPayloadError(
                    f"Response payload is not completed: <ContentLengthError: 400, message="
                    f"Not enough data for http://x/y?secret={SECRET}>"
                ),
                httpx.ReadError,
            ),
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


def head_only(head: bytes, *, then_stall: bool = True) -> Handler:
    """A reply head (with whatever body framing it announces), then nothing more."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(head)
        await writer.drain()
        if then_stall:
            await reader.read()  # until the client hangs up

    return handler


def plain(body: bytes, **kw: bytes) -> Handler:
    return reply(body, extra=kw.get("extra", b""))


class TestBodyCap:
    """The body is read from the socket only up to the cap, however it is framed."""

    async def test_body_of_exactly_the_cap_is_read(
        self, fetch: Callable[..., Awaitable[tuple[int, bytes]]]
    ) -> None:
        """MAX_BODY_BYTES bytes arrive whole."""
        body = b" " * (MAX_BODY_BYTES - 2) + b"{}"
        async with server(plain(body)) as (base, _):
            assert await fetch(f"{base}/x") == (200, body)

    @pytest.mark.parametrize("framing", ["content-length", "close-delimited", "chunked"])
    async def test_one_byte_over_is_refused(
        self, framing: str, fetch: Callable[..., Awaitable[tuple[int, bytes]]]
    ) -> None:
        """One byte over the cap is BodyTooLarge, whether announced, close-delimited or chunked."""
        body = b" " * (MAX_BODY_BYTES + 1)
        if framing == "content-length":
            handler = plain(body)
        elif framing == "close-delimited":
            handler = head_only(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n" + body)
        else:
            chunks = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in (body[:40000], body[40000:]))
            handler = head_only(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + chunks)
        async with server(handler) as (base, _):
            with pytest.raises(BodyTooLarge):
                await fetch(f"{base}/x")

    async def test_announced_length_over_the_cap_is_refused_unread(
        self, fetch: Callable[..., Awaitable[tuple[int, bytes]]]
    ) -> None:
        """A Content-Length over the cap is refused at once: no wait for a body never sent."""
        head = b"HTTP/1.1 200 OK\r\nContent-Length: 209715200\r\n\r\n"
        async with server(head_only(head)) as (base, _):
            with pytest.raises(BodyTooLarge, match="announces 209715200 bytes"):
                await asyncio.wait_for(fetch(f"{base}/x"), timeout=1.5)

    async def test_status_arrives_before_the_body(self) -> None:
        """The transport returns at the head; a stalled body is the reader's business."""
        head = b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 100\r\n\r\n"
        transport = AiohttpTransport(max_connections=1)
        async with server(head_only(head)) as (base, _):
            response = await asyncio.wait_for(
                transport.handle_async_request(httpx.Request("GET", f"{base}/x")), timeout=1.5
            )
            assert response.status_code == 502
            await response.aclose()
            await transport.aclose()

    async def test_cut_off_connection_is_not_reused(self) -> None:
        """A connection left mid-body is closed, not pooled; the next call gets a new one."""
        big, small = b" " * (MAX_BODY_BYTES * 2), b"{}"
        answers = iter([plain(big), plain(small)])

        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await next(answers)(reader, writer)

        transport = AiohttpTransport(max_connections=1)
        async with server(handler) as (base, seen):
            bodies = []
            for _ in range(2):
                response = await transport.handle_async_request(httpx.Request("GET", f"{base}/x"))
                try:
                    bodies.append(await read_body(response))
                except BodyTooLarge:
                    bodies.append(b"<too large>")
                finally:
                    await response.aclose()
            await transport.aclose()
        assert bodies == [b"<too large>", small]
        assert seen.count(b"<connection>") == 2


class ChunkStream(httpx.AsyncByteStream):
    """``count`` chunks of ``data``, counting how many the reader pulled."""

    def __init__(self, data: bytes, count: int) -> None:
        self.data, self.count, self.pulled = data, count, 0

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for _ in range(self.count):
            self.pulled += 1
            yield self.data


def in_memory(stream: httpx.AsyncByteStream, content_encoding: str = "") -> httpx.Response:
    headers = {"Content-Encoding": content_encoding} if content_encoding else {}
    return httpx.Response(200, headers=headers, stream=stream)


class TestReadBody:
    """read_body decodes gzip/deflate itself, bounded, and stops pulling at the cap."""

    async def test_stops_pulling_at_the_cap(self) -> None:
        """An endless stream is pulled for at most the cap plus one chunk."""
        stream = ChunkStream(b" " * 16384, count=10**6)
        with pytest.raises(BodyTooLarge):
            await read_body(in_memory(stream))
        assert stream.pulled == MAX_BODY_BYTES // 16384 + 1

    @pytest.mark.parametrize(
        ("encoding", "compress"),
        [
            ("gzip", gzip.compress),
            ("x-gzip", gzip.compress),
            ("deflate", zlib.compress),
            ("identity", bytes),
            ("GZIP, identity", gzip.compress),
        ],
    )
    async def test_decodes_up_to_exactly_the_cap(
        self, encoding: str, compress: Callable[[bytes], bytes]
    ) -> None:
        """Each encoding it asks for decodes; exactly MAX_BODY_BYTES decoded is accepted."""
        body = b"{}" + b" " * (MAX_BODY_BYTES - 2)
        stream = httpx.ByteStream(compress(body))
        assert await read_body(in_memory(stream, content_encoding=encoding)) == body

    async def test_decoded_one_byte_over_is_refused(self) -> None:
        """MAX_BODY_BYTES + 1 decoded bytes are BodyTooLarge, though few arrived."""
        packed = gzip.compress(b" " * (MAX_BODY_BYTES + 1))
        with pytest.raises(BodyTooLarge, match="decoded"):
            await read_body(in_memory(httpx.ByteStream(packed), content_encoding="gzip"))

    async def test_gzip_bomb_never_inflates_in_memory(self) -> None:
        """A 60 KB gzip of 60 MB: refused with a peak of well under 1 MB allocated."""
        packed = gzip.compress(b" " * (60 * 1024 * 1024), compresslevel=9)
        assert len(packed) < MAX_BODY_BYTES
        tracemalloc.start()
        try:
            with pytest.raises(BodyTooLarge):
                await read_body(in_memory(httpx.ByteStream(packed), content_encoding="gzip"))
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert peak < 1024 * 1024

    @pytest.mark.parametrize(
        ("encoding", "data", "error"),
        [
            ("br", b"\x0b\x02\x80{}\x03", UnsupportedEncoding),
            ("zstd", b"(\xb5/\xfd", UnsupportedEncoding),
            ("gzip, gzip", gzip.compress(gzip.compress(b"{}")), UnsupportedEncoding),
            ("gzip", b"not gzip", httpx.DecodingError),
            ("gzip", gzip.compress(b'{"access_token": "x"}')[:-12], httpx.DecodingError),
            ("gzip", b"", httpx.DecodingError),
        ],
        ids=["br", "zstd", "double-gzip", "garbage", "truncated", "empty"],
    )
    async def test_undecodable_bodies(
        self, encoding: str, data: bytes, error: type[Exception]
    ) -> None:
        """Encodings not asked for, garbage and truncated gzip are decoding errors."""
        with pytest.raises(error):
            await read_body(in_memory(httpx.ByteStream(data), content_encoding=encoding))
