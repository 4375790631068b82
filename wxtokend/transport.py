"""The HTTP transport under the WeChat client: aiohttp's connection pool behind httpx's API.

The client speaks httpx (requests, responses, error types, and pytest-httpx in
its unit tests); this transport moves the bytes. httpx's own transport
(httpcore over anyio) spent ~1.4 ms of CPU per call on the benchmark machine,
much of it re-checking every pooled connection with system calls on each
request; aiohttp spends ~0.3 ms. At 10,000 apps that is most of the start-up.
The WeChat client goes further and calls :meth:`AiohttpTransport.exchange`, which
builds no httpx objects at all; any other transport (a test's) is driven through
httpx's interface, and both paths share the request code and the capped reader.

Every aiohttp failure is raised as the httpx error the client already handles::

    ConnectionTimeoutError            -> httpx.ConnectTimeout
    ServerTimeoutError, TimeoutError  -> httpx.ReadTimeout
    ClientProxyConnectionError,
    ClientHttpProxyError              -> httpx.ProxyError
    ClientConnectorError, OSError     -> httpx.ConnectError
    ClientPayloadError                -> httpx.ReadError
    ClientResponseError (bad HTTP)    -> httpx.RemoteProtocolError
    any other ClientError             -> httpx.NetworkError

Nothing from upstream is trusted to be small: the body comes back as a stream, and
:func:`read_body` is the one reader of it, refusing more than :data:`MAX_BODY_BYTES`
on the wire or after Content-Encoding decoding (a gzip bomb inflates ~1000 times), and
never holding more than that plus one chunk. A reply head is at most 128 lines of 8 KiB.
Redirects are never followed.
"""

from __future__ import annotations

import asyncio
import re
import zlib
from collections.abc import AsyncIterator, Mapping
from typing import Final

import aiohttp
import httpx
from yarl import URL

__all__ = [
    "ACCEPT_ENCODING",
    "MAX_BODY_BYTES",
    "AiohttpTransport",
    "BodyTooLarge",
    "UnsupportedEncoding",
    "describe_failure",
    "read_body",
    "read_chunks",
]

# Token and ticket replies are ~200 bytes; 64 KiB leaves room for any error page
# worth reading while a 100 MB or endless reply costs at most this much memory.
MAX_BODY_BYTES: Final = 64 * 1024
# What read_body can decode within the cap; asked for explicitly so a brotli or zstd
# module installed beside httpx never widens what upstream may send.
ACCEPT_ENCODING: Final = "gzip, deflate"
_CHUNK: Final = 16 * 1024
_MAX_HEADERS: Final = 128  # WeChat sends about ten
_MAX_LINE: Final = 8190
_QUERY: Final = re.compile(r"(\S*)\?\S*")
_ZLIB_WBITS: Final = {"gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS, "deflate": 15}


class BodyTooLarge(httpx.DecodingError):
    """The reply body (as sent, or once decoded) is over the cap: cut off, never buffered."""


class UnsupportedEncoding(httpx.DecodingError):
    """A Content-Encoding wxtokend did not ask for and cannot decode within the cap."""


_ERRORS: tuple[tuple[type[BaseException], type[httpx.TransportError]], ...] = (
    # Most specific first: aiohttp's timeout errors are also connection errors.
    (aiohttp.ConnectionTimeoutError, httpx.ConnectTimeout),
    (aiohttp.ServerTimeoutError, httpx.ReadTimeout),
    (asyncio.TimeoutError, httpx.ReadTimeout),
    (aiohttp.ClientProxyConnectionError, httpx.ProxyError),
    (aiohttp.ClientHttpProxyError, httpx.ProxyError),
    (aiohttp.ClientConnectorError, httpx.ConnectError),
    (aiohttp.ClientPayloadError, httpx.ReadError),
    (aiohttp.ClientResponseError, httpx.RemoteProtocolError),
    (aiohttp.ClientError, httpx.NetworkError),
    (OSError, httpx.ConnectError),
)


class AiohttpTransport(httpx.AsyncBaseTransport):
    """Plain HTTP/1.1 with keep-alive; ``max_connections`` bounds the pool."""

    def __init__(
        self, *, max_connections: int, proxy: str | None = None, keepalive: float = 30.0
    ) -> None:
        self._limit = max_connections
        self._proxy = proxy
        self._keepalive = keepalive
        self._session: aiohttp.ClientSession | None = None
        self._closed = False

    def _pool(self) -> aiohttp.ClientSession:
        if self._closed:  # a late call at shutdown must not open a session nobody closes
            raise httpx.NetworkError("the transport is closed")
        # Made on first use: a session belongs to the event loop that runs it.
        if self._session is None:
            connector = aiohttp.TCPConnector(
                limit=self._limit, limit_per_host=0, keepalive_timeout=self._keepalive
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                cookie_jar=aiohttp.DummyCookieJar(),  # WeChat sets none; keep no state
                auto_decompress=False,  # httpx decodes per Content-Encoding
                trust_env=False,  # a proxy is configured explicitly, never inherited
                # aiohttp reads ahead up to twice this before pausing the socket: one chunk.
                read_bufsize=_CHUNK,
                # A head is at most this many lines of this size; more is a protocol error.
                max_headers=_MAX_HEADERS,
                max_line_size=_MAX_LINE,
                max_field_size=_MAX_LINE,
            )
        return self._session

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        timeout = request.extensions.get("timeout", {})
        reply = await self._open(
            request.method,
            str(request.url),
            dict(request.headers),
            request.content or None,
            aiohttp.ClientTimeout(
                total=None,
                connect=timeout.get("pool"),
                sock_connect=timeout.get("connect"),
                sock_read=timeout.get("read"),
            ),
        )
        # The body stays on the socket until someone reads it, so a caller can stop
        # reading at a cap (or not read at all) instead of getting it all buffered.
        return httpx.Response(
            reply.status,
            headers=list(reply.raw_headers),
            stream=_ReplyStream(reply),
            request=request,
        )

    async def exchange(
        self,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str],
        body: bytes | None,
        phase_timeout: float,
        limit: int = MAX_BODY_BYTES,
    ) -> tuple[int, bytes]:
        """One call without httpx objects: the status and, for a 200 only, the body
        (capped and decoded as :func:`read_body` does); another status's body is never read.

        The WeChat client's own path. Building an httpx request and response around
        aiohttp's cost about as much CPU as aiohttp itself (~0.3 ms a call), which at a
        platform's cold start of 100,000 accounts was a third of the daemon's time.
        ``url`` is sent as encoded: its query must be encoded already.
        ``phase_timeout`` bounds the connection and each read (the caller bounds the whole).
        """
        reply = await self._open(
            method,
            _encoded(url),
            headers,
            body,
            aiohttp.ClientTimeout(
                total=None,
                connect=phase_timeout,
                sock_connect=phase_timeout,
                sock_read=phase_timeout,
            ),
        )
        stream = _ReplyStream(reply)
        try:
            if reply.status != 200:
                return reply.status, b""
            return 200, await read_chunks(
                stream.__aiter__(),
                # Repeated headers joined, as httpx reads them (identity, then gzip).
                declared=", ".join(reply.headers.getall("Content-Length", ())),
                encoding=", ".join(reply.headers.getall("Content-Encoding", ())),
                limit=limit,
            )
        finally:
            await stream.aclose()

    async def _open(
        self,
        method: str,
        url: str | URL,
        headers: Mapping[str, str],
        body: bytes | None,
        phases: aiohttp.ClientTimeout,
    ) -> aiohttp.ClientResponse:
        """The reply, its head read; every failure raised as its httpx error."""
        try:
            return await self._pool().request(
                method,
                url,
                headers=headers,
                data=body,
                allow_redirects=False,  # a 3xx is an answer to judge, never a place to go
                proxy=self._proxy,
                timeout=phases,
            )
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise _translated(exc) from None

    async def aclose(self) -> None:
        self._closed = True
        if self._session is not None:
            await self._session.close()
            self._session = None


class _ReplyStream(httpx.AsyncByteStream):
    """An aiohttp reply body read chunk by chunk, its failures raised as httpx errors."""

    def __init__(self, reply: aiohttp.ClientResponse) -> None:
        self._reply = reply

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._reply.content.iter_chunked(_CHUNK):
                yield chunk
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise _translated(exc) from None

    async def aclose(self) -> None:
        if self._reply.content.is_eof():
            self._reply.release()  # read to the end: the connection goes back to the pool
        else:
            self._reply.close()  # left unread (cut off at the cap): never drain it


async def read_body(response: httpx.Response, limit: int = MAX_BODY_BYTES) -> bytes:
    """``response``'s body, decoded per its Content-Encoding; :class:`BodyTooLarge` as
    soon as more than ``limit`` bytes arrive or would come out of the decoder.

    httpx's own decoders inflate a whole chunk at once, so a 16 KiB gzip chunk can
    become 16 MB; here zlib is told how much output it may produce.
    """
    return await read_chunks(
        response.aiter_raw(),
        declared=response.headers.get("content-length", ""),
        encoding=response.headers.get("content-encoding", ""),
        limit=limit,
    )


async def read_chunks(
    chunks: AsyncIterator[bytes], *, declared: str, encoding: str, limit: int = MAX_BODY_BYTES
) -> bytes:
    """:func:`read_body` for any source of raw body chunks, given its Content-Length
    (``declared``) and Content-Encoding headers: the one capped reader of both paths."""
    if declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge(f"reply announces {int(declared)} bytes, over the {limit}-byte cap")
    decoder = _decoder(encoding)
    body = bytearray()
    received = 0
    async for chunk in chunks:
        received += len(chunk)
        if received > limit:
            raise BodyTooLarge(f"reply body is over the {limit}-byte cap")
        body += _inflate(decoder, chunk, limit - len(body), limit) if decoder else chunk
    if decoder is not None and not decoder.eof:
        raise httpx.DecodingError("compressed reply body ends early")
    return bytes(body)


def _decoder(header: str) -> zlib._Decompress | None:
    encodings = [e.strip().lower() for e in header.split(",") if e.strip()]
    encodings = [e for e in encodings if e != "identity"]
    if not encodings:
        return None
    if len(encodings) > 1 or encodings[0] not in _ZLIB_WBITS:
        raise UnsupportedEncoding(
            f"reply has Content-Encoding {header[:40]!r}, not gzip or deflate"
        )
    return zlib.decompressobj(_ZLIB_WBITS[encodings[0]])


def _inflate(decoder: zlib._Decompress, data: bytes, room: int, limit: int) -> bytes:
    """At most ``room`` bytes decoded from ``data``; BodyTooLarge if there is more.

    zlib stops at ``room + 1`` bytes of output, so more than that never exists in memory.
    """
    try:
        out = decoder.decompress(data, room + 1)
    except zlib.error:
        raise httpx.DecodingError("reply body is not valid gzip/deflate") from None
    if len(out) > room:
        raise BodyTooLarge(f"decoded reply body is over the {limit}-byte cap")
    return out


def _encoded(url: str) -> URL:
    """``url`` as sent, never re-encoded; one yarl cannot parse is an httpx error."""
    try:
        return URL(url, encoded=True)
    except ValueError:  # e.g. "Invalid IPv6 URL": the text never quotes the URL
        raise _translated(aiohttp.InvalidURL("")) from None


def describe_failure(exc: BaseException) -> str:
    """One line naming an aiohttp (or socket) failure, never its URL: for error bodies."""
    return str(_translated(exc))


def _translated(exc: BaseException) -> httpx.TransportError:
    """The httpx error for ``exc``; its text names the failure, not the URL (the query
    holds the secret, and the client scrubs what is left anyway)."""
    for source, target in _ERRORS:
        if isinstance(exc, source):
            return target(f"{type(exc).__name__}: {_reason(exc)}")
    return httpx.NetworkError(type(exc).__name__)  # pragma: no cover - _ERRORS ends in OSError


def _reason(exc: BaseException) -> str:
    # Fixed texts where aiohttp's would quote the URL, query (and secret) included.
    if isinstance(exc, aiohttp.InvalidURL):
        return "invalid URL"
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, aiohttp.ClientConnectorError):
        return f"cannot connect to {exc.host}:{exc.port} ({exc.os_error.strerror or exc.os_error})"
    text = exc.message if isinstance(exc, aiohttp.ClientResponseError) else str(exc)
    if isinstance(exc, aiohttp.ClientOSError) and exc.strerror:
        text = exc.strerror  # may be "Can not write request body for <url>"
    # Any URL aiohttp quotes loses its query (the token or the secret is there).
    text = _QUERY.sub(r"\1?...", text)
    # One line, however many the server's bytes (quoted by the parser) would span.
    return " ".join(text.split())[:200] or "no detail"
