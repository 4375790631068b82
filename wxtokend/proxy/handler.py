"""One proxied call: route it, put the app's token in, forward it, recover a rejection.

When WeChat rejects the token the proxy put in (40001, 40014, 42001), the app's loop is
told (:meth:`~wxtokend.service.Loop.report_rejected`: compare-and-refresh, one fetch for
every concurrent caller, within the passive budgets) and the call is sent once more with
the new token, if its body was held (up to ``replay_body_limit``). Any other errcode,
and any call whose body streamed through, gets WeChat's own answer.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Final, Protocol

import aiohttp
from aiohttp import web

from wxtokend.proxy.accounts import account_target
from wxtokend.proxy.metrics import ProxyMetrics
from wxtokend.proxy.route import (
    PLACEHOLDER_TOKEN,
    TOKEN_PATHS,
    USER_TOKEN_ROOTS,
    Refused,
    Target,
    allowed,
    request_headers,
    response_headers,
    target,
    with_token,
)
from wxtokend.proxy.upstream import Peeked, Upstream, peek
from wxtokend.transport import describe_failure

if TYPE_CHECKING:
    from wxtokend.config import ApiProxyConfig, AppConfig
    from wxtokend.service import Service
    from wxtokend.store import Record

__all__ = ["REJECTED_TOKEN", "ApiProxy"]

REJECTED_TOKEN: Final = frozenset({40001, 40014, 42001})
_METHODS: Final = frozenset({"GET", "POST"})
_UNREACHABLE: Final = (aiohttp.ClientError, TimeoutError, OSError)

Body = bytes | AsyncIterator[bytes]


class Proxied(Protocol):
    """What a call is made for: an app's loop, or a platform account (accounts.py)."""

    @property
    def app(self) -> AppConfig: ...

    @property
    def record(self) -> Record | None: ...

    def has_valid_token(self) -> bool: ...

    async def report_rejected(self, *, token: str) -> object: ...


class ApiProxy:
    """The request handler of the proxy listener, over the daemon's loops."""

    def __init__(
        self,
        service: Service,
        config: ApiProxyConfig,
        *,
        metrics: ProxyMetrics,
        egress_proxy: str | None,
    ) -> None:
        self._service = service
        self._limit = config.replay_body_limit
        self._metrics = metrics
        self.upstream = Upstream(
            max_connections=config.max_connections,
            proxy=egress_proxy,
            read_timeout=config.request_timeout,
        )

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        """Answer one call; never raises (a failure is an answer in WeChat's shape)."""
        try:
            return await self._handle(request)
        except (ConnectionError, asyncio.CancelledError):
            raise  # the client went away: nobody to answer
        except Exception:  # a bug must not become a traceback quoting the URL
            return _wechat_error(500, -1, "wxtokend proxy: internal error")

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        if request.method not in _METHODS:
            # No TRACE (it would echo the token-bearing request line), no HEAD: WeChat's
            # API is GET and POST.
            return self._refused(Refused(405, 43002, "the WeChat API takes GET and POST"), app="")
        raw_path, _, raw_query = request.raw_path.partition("?")
        found = target(raw_path.encode("latin-1"))
        if isinstance(found, Refused):
            return self._refused(found, app="")
        loop: Proxied | None = self._service.find(found.name)
        if loop is None:
            account = account_target(self._service, found, self._service.clock)
            if account is None:
                return self._refused(
                    Refused(404, 40013, f"no app named {found.name[:64]!r} in wxtokend's config"),
                    app="",
                )
            if isinstance(account, Refused):
                return self._refused(account, app="")
            loop, found = account
        app = loop.app
        refusal = allowed(found, app.kind) or _expectation(request)
        if refusal is not None:
            return self._refused(refusal, app=app.name)
        if found.path in TOKEN_PATHS[app.kind]:
            self._metrics.request(app.name, found.root, "token")
            return _placeholder(app.kind)
        if loop.record is None or not loop.has_valid_token():
            return self._refused(
                Refused(503, -1, "wxtokend has no valid token for this app yet: retry shortly"),
                app=app.name,
                retry_after=1,
            )
        if "expect" in request.headers:  # 100-continue: the client waits for this to send
            await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        # A fragment is never part of a request; sent anyway it would swallow the token.
        return await self._forward(request, loop, found, raw_query.partition("#")[0])

    async def _forward(
        self, request: web.BaseRequest, loop: Proxied, found: Target, raw_query: str
    ) -> web.StreamResponse:
        body = await _request_body(request, self._limit)
        headers = request_headers(list(request.headers.items()))
        if not isinstance(body, bytes) and request.content_length is not None:
            headers.append(("Content-Length", str(request.content_length)))
        url_head = f"{loop.app.api_base.rstrip('/')}/{found.path}?"
        app = loop.app.name
        # sns calls carry the user's token (web login) or the secret: never the app's.
        token = (
            loop.record.access_token if loop.record and found.root not in USER_TOKEN_ROOTS else None
        )
        for attempt in (1, 2):
            try:
                reply = await self._send(
                    request.method, url_head, raw_query, token, headers, body, app
                )
            except _UNREACHABLE as exc:
                return self._unreachable(exc, app, found)
            try:
                peeked = await peek(reply)
            except _UNREACHABLE as exc:
                reply.close()
                return self._unreachable(exc, app, found)
            try:
                if token is not None and peeked.errcode in REJECTED_TOKEN and attempt == 1:
                    fresh = await self._recover(loop, token, replayable=isinstance(body, bytes))
                    if fresh is not None:
                        token = fresh
                        continue
                self._metrics.request(app, found.root, peeked.errcode)
                return await _relay(request, reply, peeked)
            finally:
                reply.close()
        raise AssertionError("unreachable")  # pragma: no cover - the loop always returns

    def _unreachable(self, exc: BaseException, app: str, found: Target) -> web.Response:
        self._metrics.request(app, found.root, "unreachable")
        status = 504 if isinstance(exc, TimeoutError | aiohttp.ServerTimeoutError) else 502
        return _wechat_error(status, -1, f"wxtokend proxy: {describe_failure(exc)}")

    async def _send(
        self,
        method: str,
        url_head: str,
        raw_query: str,
        token: str | None,
        headers: list[tuple[str, str]],
        body: Body,
        app: str,
    ) -> aiohttp.ClientResponse:
        started = time.monotonic()
        data = (
            body if not isinstance(body, bytes) or body or method not in ("GET", "HEAD") else None
        )
        query = raw_query if token is None else with_token(raw_query, token)
        reply = await self.upstream.send(method, url_head + query, headers, data)
        self._metrics.upstream(app, time.monotonic() - started)
        return reply

    async def _recover(self, loop: Proxied, rejected: str, *, replayable: bool) -> str | None:
        """The token to replay with, or None to return WeChat's answer."""
        name = loop.app.name
        if not replayable:
            await loop.report_rejected(token=rejected)  # still worth replacing for the next call
            self._metrics.recovery(name, "not_replayable")
            return None
        await loop.report_rejected(token=rejected)
        record = loop.record
        if record is None or record.access_token == rejected or not loop.has_valid_token():
            self._metrics.recovery(name, "kept")
            return None
        self._metrics.recovery(name, "replayed")
        return record.access_token

    def _refused(
        self, refused: Refused, *, app: str, retry_after: int | None = None
    ) -> web.Response:
        self._metrics.request(app, "", "refused")
        return _wechat_error(refused.status, refused.errcode, refused.errmsg, retry_after)

    async def aclose(self) -> None:
        await self.upstream.aclose()


async def _request_body(request: web.BaseRequest, limit: int) -> Body:
    """The body, held whole if it is at most ``limit`` bytes, else a stream of it."""
    if not request.body_exists:
        return b""
    length = request.content_length
    if length is not None and length > limit:
        return _stream(request, b"")
    held = bytearray()
    while chunk := await request.content.readany():
        held += chunk
        if len(held) > limit:
            return _stream(request, bytes(held))
    return bytes(held)


async def _stream(request: web.BaseRequest, head: bytes) -> AsyncIterator[bytes]:
    if head:
        yield head
    async for chunk in request.content.iter_any():
        yield chunk


async def _relay(
    request: web.BaseRequest, reply: aiohttp.ClientResponse, peeked: Peeked
) -> web.StreamResponse:
    headers = response_headers(list(reply.headers.items()))
    if peeked.complete:
        return web.Response(status=reply.status, headers=headers, body=peeked.held)
    response = web.StreamResponse(status=reply.status, headers=headers)
    if reply.content_length is not None:
        response.content_length = reply.content_length
    await response.prepare(request)
    try:
        if peeked.held:
            await response.write(peeked.held)
        async for chunk in reply.content.iter_any():
            await response.write(chunk)
    except Exception:
        # The head is sent: all that is left is to cut the body short, so the client
        # sees a broken reply rather than a complete-looking one.
        raise ConnectionResetError("upstream failed mid-body") from None
    await response.write_eof()
    return response


def _expectation(request: web.BaseRequest) -> Refused | None:
    expect = request.headers.get("Expect")
    if expect is None or expect.lower() == "100-continue":
        return None
    return Refused(417, -1, "the only expectation this proxy meets is 100-continue")


def _placeholder(kind: str) -> web.Response:
    reply: dict[str, object] = {"access_token": PLACEHOLDER_TOKEN, "expires_in": 7200}
    if kind == "wecom":
        reply = {"errcode": 0, "errmsg": "ok", **reply}
    return web.json_response(reply)


def _wechat_error(
    status: int, errcode: int, errmsg: str, retry_after: int | None = None
) -> web.Response:
    headers = {"Retry-After": str(retry_after)} if retry_after is not None else None
    return web.Response(
        status=status,
        body=json.dumps({"errcode": errcode, "errmsg": errmsg}, ensure_ascii=False),
        content_type="application/json",
        headers=headers,
    )
