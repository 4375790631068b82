"""The HTTP transport under the WeChat client: aiohttp's connection pool behind httpx's API.

The client speaks httpx (requests, responses, error types, and pytest-httpx in
its unit tests); this transport moves the bytes. httpx's own transport
(httpcore over anyio) spent ~1.4 ms of CPU per call on the benchmark machine,
much of it re-checking every pooled connection with system calls on each
request; aiohttp spends ~0.3 ms. At 10,000 apps that is most of the start-up.

Every aiohttp failure is raised as the httpx error the client already handles::

    ConnectionTimeoutError            -> httpx.ConnectTimeout
    ServerTimeoutError, TimeoutError  -> httpx.ReadTimeout
    ClientProxyConnectionError,
    ClientHttpProxyError              -> httpx.ProxyError
    ClientConnectorError, OSError     -> httpx.ConnectError
    ClientPayloadError                -> httpx.ReadError
    ClientResponseError (bad HTTP)    -> httpx.RemoteProtocolError
    any other ClientError             -> httpx.NetworkError
"""

from __future__ import annotations

import asyncio

import aiohttp
import httpx

__all__ = ["AiohttpTransport"]

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
            )
        return self._session

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        timeout = request.extensions.get("timeout", {})
        try:
            async with self._pool().request(
                request.method,
                str(request.url),
                headers=dict(request.headers),
                data=request.content or None,
                allow_redirects=False,
                proxy=self._proxy,
                timeout=aiohttp.ClientTimeout(
                    total=None,
                    connect=timeout.get("pool"),
                    sock_connect=timeout.get("connect"),
                    sock_read=timeout.get("read"),
                ),
            ) as reply:
                body = await reply.read()
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise _translated(exc) from None
        return httpx.Response(
            reply.status,
            headers=list(reply.raw_headers),
            stream=httpx.ByteStream(body),
            request=request,
        )

    async def aclose(self) -> None:
        self._closed = True
        if self._session is not None:
            await self._session.close()
            self._session = None


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
    if isinstance(exc, aiohttp.ClientResponseError):
        return exc.message
    return str(exc) or "no detail"
