"""The WeChat API on the wire: any credential kind's call, one HTTP exchange each.

:class:`WeChatClient` sends a kind's :class:`~wxtokend.kinds.Call` and turns the
reply into either a :class:`~wxtokend.credential.Token` or a
:class:`~wxtokend.errors.FetchError` subclass chosen from the kind's errcode
table (:mod:`wxtokend.kinds`). It never retries: when to try again is the
scheduler's decision.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import quote, quote_plus, urlencode

import httpx

from wxtokend import __version__
from wxtokend.clock import Clock, SystemClock
from wxtokend.config import AppConfig, Ticket
from wxtokend.credential import MAX_TOKEN_LENGTH, Token, is_valid_token
from wxtokend.errcodes import Errcode
from wxtokend.errcodes import error_for as _error_for
from wxtokend.errors import (
    FatalConfigError,
    FetchError,
    MalformedResponse,
    TransientError,
)
from wxtokend.kinds import Call, Kind, parse_token, ticket_kind, token_kind
from wxtokend.kinds.official import ERRCODES
from wxtokend.kinds.wecom import WECOM_ERRCODES
from wxtokend.redact import Redactor
from wxtokend.transport import (
    ACCEPT_ENCODING,
    MAX_BODY_BYTES,
    AiohttpTransport,
    BodyTooLarge,
    read_body,
)

__all__ = [
    "ERRCODES",
    "MAX_TOKEN_LENGTH",
    "WECOM_ERRCODES",
    "Errcode",
    "Token",
    "WeChatClient",
    "error_for",
    "is_valid_token",
    "parse_token",
]

_NETWORK_FIX = "if it persists, check that this host reaches api_base (and proxy, if set)"


def error_for(errcode: int, errmsg: str, app: AppConfig) -> FetchError:
    """The error a WeChat errcode stands for on ``app``'s token endpoint."""
    return _error_for(errcode, errmsg, app, token_kind(app).errcodes(app))


class WeChatClient:
    """Fetches tokens from WeChat (or anything speaking its API, like the emulator)."""

    def __init__(
        self,
        *,
        api_base: str,
        timeout: float = 10.0,
        proxy: str | None = None,
        max_connections: int = 16,
        transport: httpx.AsyncBaseTransport | None = None,
        clock: Clock | None = None,
        redactor: Redactor | None = None,
        on_request: Callable[[str, str, float], None] | None = None,
    ) -> None:
        self._base = api_base.rstrip("/")
        self._timeout = timeout
        self._clock = clock or SystemClock()
        self._redactor = redactor or Redactor()
        self._on_request = on_request
        if transport is None:
            transport = AiohttpTransport(max_connections=max_connections, proxy=proxy)
        self._transport = transport
        self._headers = {
            "User-Agent": f"wxtokend/{__version__}",
            "Accept-Encoding": ACCEPT_ENCODING,
        }
        self._json_headers = {**self._headers, "Content-Type": "application/json"}
        self._wire_bases: dict[str, str] = {}
        self._http = httpx.AsyncClient(
            timeout=httpx.Timeout(timeout),
            transport=transport,
            headers=self._headers,
            trust_env=False,
            follow_redirects=False,
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    async def fetch_token(self, app: AppConfig, *, force: bool = False) -> Token:
        """One call to the app's token endpoint: classic GET, stable POST or WeCom gettoken."""
        return await self.fetch(token_kind(app), app, force=force)

    async def fetch_ticket(self, app: AppConfig, kind: Ticket, access_token: str) -> Token:
        """One ticket fetch with ``access_token``; the ticket comes back as ``access_token``.

        40001/40014/42001 here mean the token was rejected: TokenRejectedError,
        so the caller can have the token refreshed (compare-and-refresh) first.
        """
        return await self.fetch(ticket_kind(app, kind), app, using=access_token)

    async def fetch(
        self, kind: Kind, app: AppConfig, *, force: bool = False, using: str | None = None
    ) -> Token:
        """One call for any credential kind; ``using`` is the value of what it depends on."""
        fetched_at = self._clock.now()
        call = kind.call(app, force=force, using=using)
        body = await self.send(app, call, kind.errcodes(app), refused=kind.reply_error)
        return kind.parse(body, fetched_at=fetched_at)

    async def send(
        self,
        app: AppConfig,
        call: Call,
        table: Mapping[int, Errcode],
        *,
        refused: Callable[[Any], FetchError | None] | None = None,
    ) -> Any:
        """One call on the wire: its JSON reply once no errcode (read in ``table``) refused it."""
        body = await self._exchange(app, call)
        error = refused(body) if refused is not None else None
        if error is not None:
            raise error
        self._raise_errcode(body, app, table, *call.sent)
        return body

    def _raise_errcode(
        self, body: Any, app: AppConfig, table: Mapping[int, Errcode], *extra: str
    ) -> None:
        errcode = body.get("errcode") if isinstance(body, dict) else None
        if errcode is None:
            return
        if isinstance(errcode, bool) or not isinstance(errcode, int):
            raise MalformedResponse("errcode is not an integer")
        if errcode != 0:
            errmsg = self._scrub(str(body.get("errmsg", "")), app, *extra)
            raise _error_for(errcode, errmsg, app, table)

    def _wire_base(self, app: AppConfig) -> str:
        """The app's base as httpx would send it (an IDN host in punycode, its path
        percent-encoded and dot segments resolved): worked out once per distinct base."""
        base = app.api_base.rstrip("/") if app.api_base else self._base
        wire = self._wire_bases.get(base)
        if wire is None:
            try:
                wire = str(httpx.URL(base)).rstrip("/")
            except httpx.InvalidURL:
                wire = base  # the transport refuses it as an invalid URL
            self._wire_bases[base] = wire
        return wire

    def _url(self, app: AppConfig, endpoint: str) -> str:
        """The app's own api_base (a reload may change it), else the client's default."""
        base = app.api_base.rstrip("/") if app.api_base else self._base
        return base + endpoint

    async def _exchange(self, app: AppConfig, call: Call) -> Any:
        started = self._clock.now()
        extra, endpoint = call.sent, call.endpoint
        error: FetchError
        try:
            # The transport's timeout bounds each phase; this bounds the whole exchange,
            # body included, so a reply dripping in cannot hold a concurrency slot for long.
            async with asyncio.timeout(self._timeout):
                status, body = await self._send(app, call)
        except TimeoutError:
            error = TransientError("timed out (whole request)", fix=_NETWORK_FIX)
        except httpx.TimeoutException as exc:
            error = TransientError(f"timed out ({type(exc).__name__})", fix=_NETWORK_FIX)
        except httpx.ProxyError as exc:
            error = TransientError(
                f"proxy error: {self._safe(exc, app, *extra)}",
                fix="check that proxy: is reachable",
            )
        except httpx.TransportError as exc:
            error = TransientError(
                f"connection failed: {self._safe(exc, app, *extra)}", fix=_NETWORK_FIX
            )
        except BodyTooLarge:
            error = MalformedResponse(
                f"reply body over {MAX_BODY_BYTES // 1024} KiB: cut off unread",
                fix="a token reply is a few hundred bytes, so api_base (or proxy) leads to"
                " something that is not the WeChat API",
            )
        except httpx.HTTPError as exc:  # e.g. a body that fails its Content-Encoding
            error = MalformedResponse(f"unreadable reply: {self._safe(exc, app, *extra)}")
        else:
            return self._decode(status, body)
        finally:
            if self._on_request is not None:
                self._on_request(app.name, endpoint, self._clock.now() - started)
        # Raised outside the except blocks so no httpx exception (whose text may
        # quote the URL with the secret) is chained as __context__.
        raise error

    async def _send(self, app: AppConfig, call: Call) -> tuple[int, bytes]:
        """The reply's status and (for a 200 only) its body, read within the cap."""
        if isinstance(self._transport, AiohttpTransport):  # production: no httpx objects
            url = self._wire_base(app) + call.endpoint
            body = None if call.body is None else _json_body(call.body)
            if call.params:
                url += "?" + urlencode(call.params)
            headers = self._json_headers if body is not None else self._headers
            return await self._transport.exchange(
                call.method, url, headers=headers, body=body, phase_timeout=self._timeout
            )
        # Any other transport (a test's) through httpx: built by the client, so with its
        # headers and timeouts, then straight to the transport (the client's send() adds
        # auth, redirects and a cookie jar, none of which WeChat calls use).
        url = self._url(app, call.endpoint)
        if call.body is not None:  # a POST may carry a query too (component_access_token=)
            request = self._http.build_request(call.method, url, params=call.params, json=call.body)
        else:
            request = self._http.build_request(call.method, url, params=call.params)
        response = await self._transport.handle_async_request(request)
        try:
            # Any other status is judged by its number alone: its body is never read.
            body = await read_body(response) if response.status_code == 200 else b""
        finally:
            await response.aclose()
        return response.status_code, body

    def _decode(self, status: int, body: bytes) -> Any:
        if status >= 500 or status in (408, 429):
            raise TransientError(f"HTTP {status} from WeChat", fix=_NETWORK_FIX)
        if 300 <= status < 400:
            raise FatalConfigError(
                f"HTTP {status} redirect from {self._base} (redirects are never followed)",
                fix="api_base or proxy does not lead to the WeChat API: check both",
            )
        if status != 200:
            raise FatalConfigError(
                f"HTTP {status} from {self._base}",
                fix="api_base or proxy does not lead to the WeChat API: check both",
            )
        try:
            return json.loads(body)
        except (ValueError, UnicodeDecodeError, RecursionError):
            pass
        raise MalformedResponse("reply is not JSON (truncated or garbage)")

    def _safe(self, exc: Exception, app: AppConfig, *extra: str) -> str:
        """Exception text without secrets: httpx messages can quote the URL."""
        return self._scrub(f"{type(exc).__name__}: {exc}", app, *extra)

    def _scrub(self, text: str, app: AppConfig, *extra: str) -> str:
        """Wire text made safe for messages: the secret, a token sent, known tokens removed."""
        for value in (app.secret.reveal(), *extra):
            if value:
                for form in (value, quote(value, safe=""), quote_plus(value)):
                    text = text.replace(form, "********")
        return self._redactor.scrub(text)[:300]


def _json_body(body: Mapping[str, object]) -> bytes:
    """A call's JSON body as httpx would encode it (compact UTF-8, no NaN)."""
    return json.dumps(body, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()
