"""The proxy's side towards WeChat: its own connection pool, and the reading of replies.

Its own pool, not the token client's: a consumer's slow media upload must never hold a
connection a token refresh is waiting for. It goes out through the same ``proxy:``.
A reply is looked into only when it can be a WeChat JSON answer of reasonable size
(:data:`PEEK_BYTES`); media and large listings stream through unread.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterable
from dataclasses import dataclass
from typing import Final

import aiohttp
from yarl import URL

__all__ = ["PEEK_BYTES", "Peeked", "Upstream", "errcode_of", "peek"]

PEEK_BYTES: Final = 64 * 1024
_JSON_TYPES: Final = ("application/json", "text/plain", "text/json")
_CHUNK: Final = 64 * 1024


@dataclass(frozen=True, slots=True)
class Peeked:
    """The start of a reply: all of it when ``complete``; its errcode if it has one."""

    held: bytes
    complete: bool
    errcode: int | None = None


class Upstream:
    """One aiohttp session for every proxied call, made on first use (it needs the loop)."""

    def __init__(self, *, max_connections: int, proxy: str | None, read_timeout: float) -> None:
        self._limit = max_connections
        self._proxy = proxy
        self._timeout = aiohttp.ClientTimeout(total=None, sock_connect=10.0, sock_read=read_timeout)
        self._session: aiohttp.ClientSession | None = None

    def _pool(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self._limit, limit_per_host=0),
                cookie_jar=aiohttp.DummyCookieJar(),  # cookies are the consumer's business
                auto_decompress=False,
                trust_env=False,  # the egress proxy is configured, never inherited
                read_bufsize=_CHUNK,
                timeout=self._timeout,
                # Only the client's own headers go on: no User-Agent, Accept or
                # Content-Type of aiohttp's making.
                skip_auto_headers=("User-Agent", "Accept", "Content-Type"),
            )
        return self._session

    async def send(
        self,
        method: str,
        url: str,
        headers: list[tuple[str, str]],
        body: bytes | AsyncIterable[bytes] | None,
    ) -> aiohttp.ClientResponse:
        """Send one call; the reply's body is left on the socket for the caller."""
        return await self._pool().request(
            method,
            URL(url, encoded=True),  # as the client encoded it: never re-encoded
            headers=headers,
            data=body,
            allow_redirects=False,
            proxy=self._proxy,
        )

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


async def peek(reply: aiohttp.ClientResponse) -> Peeked:
    """Read a JSON-looking reply up to :data:`PEEK_BYTES`; anything else is not read."""
    kind = reply.headers.get("Content-Type", "").lower()
    length = reply.content_length
    if not kind.startswith(_JSON_TYPES) or (length is not None and length > PEEK_BYTES):
        return Peeked(held=b"", complete=False)
    held = bytearray()
    while len(held) <= PEEK_BYTES:
        chunk = await reply.content.readany()
        if not chunk:
            return Peeked(held=bytes(held), complete=True, errcode=errcode_of(bytes(held)))
        held += chunk
    return Peeked(held=bytes(held), complete=False)


def errcode_of(body: bytes) -> int | None:
    """The top-level ``errcode`` of a WeChat JSON reply, if it is one."""
    if b"errcode" not in body:
        return None
    try:
        parsed = json.loads(body)
    except ValueError:
        return None
    code = parsed.get("errcode") if isinstance(parsed, dict) else None
    return code if isinstance(code, int) and not isinstance(code, bool) else None
