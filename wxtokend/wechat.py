"""The WeChat token endpoints, and what every errcode means for us.

:class:`WeChatClient` turns one HTTP exchange into either a :class:`Token` or a
:class:`~wxtokend.errors.FetchError` subclass chosen from :data:`ERRCODES`.
It never retries: when to try again is the scheduler's decision.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import quote, quote_plus

import httpx

from wxtokend import __version__
from wxtokend.clock import Clock, SystemClock
from wxtokend.config import AppConfig, Ticket
from wxtokend.credential import MAX_TOKEN_LENGTH, InvalidCredential, check, is_valid_token
from wxtokend.errors import (
    AdminWaitError,
    DailyQuotaError,
    FatalConfigError,
    FetchError,
    MalformedResponse,
    MinuteQuotaError,
    TokenRejectedError,
    TransientError,
    UnknownErrcodeError,
)
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

_WHITELIST_IP = re.compile(r"invalid ip ([0-9a-fA-F.:]+)")
_CONSOLE = "mp.weixin.qq.com"
_NETWORK_FIX = "if it persists, check that this host reaches api_base (and proxy, if set)"


@dataclass(frozen=True, kw_only=True)
class Token:
    """A token as WeChat gave it; ``fetched_at`` is when the request was sent."""

    access_token: str = field(repr=False)
    expires_in: int
    fetched_at: float

    @property
    def expires_at(self) -> float:
        return self.fetched_at + self.expires_in


@dataclass(frozen=True, kw_only=True)
class Errcode:
    """One row of the errcode table: what it means, what to do, what the daemon does.

    ``retry`` is empty where the error kind's own default says it.
    """

    kind: type[FetchError]
    meaning: str
    fix: str
    retry: str = ""
    wait: float = 0.0


_COPY_FROM_CONSOLE = (
    "copy the current AppSecret from the WeChat console ({console}: 设置与开发 → 基本配置,"
    " or 开发管理 → 开发设置 for Mini Programs) into {source}; if someone reset it, every"
    " copy of the old one is dead"
)

ERRCODES: Final[dict[int, Errcode]] = {
    -1: Errcode(kind=TransientError, meaning="WeChat system busy", fix=""),
    40001: Errcode(
        kind=FatalConfigError,
        meaning="AppSecret wrong (invalid credential)",
        fix=_COPY_FROM_CONSOLE,
    ),
    40002: Errcode(
        kind=FatalConfigError,
        meaning="invalid grant_type",
        fix="this is a wxtokend bug or an api_base that is not WeChat: please report it",
    ),
    40013: Errcode(
        kind=FatalConfigError,
        meaning="invalid appid",
        fix="check appid: it must be this account's AppID (wx + 16 hex digits) from the console",
    ),
    40125: Errcode(kind=FatalConfigError, meaning="invalid AppSecret", fix=_COPY_FROM_CONSOLE),
    40164: Errcode(
        kind=FatalConfigError,
        meaning="caller IP not in the IP whitelist",
        fix="add {ip} to the IP whitelist ({console}: 设置与开发 → 基本配置 → IP白名单; Mini"
        " Programs: 开发管理 → 开发设置 → IP白名单), or set proxy: to an egress proxy whose"
        " IP is already whitelisted",
    ),
    40243: Errcode(
        kind=FatalConfigError,
        meaning="AppSecret frozen",
        fix="unfreeze or reset the AppSecret in the console, then update {source}",
    ),
    41002: Errcode(kind=FatalConfigError, meaning="appid missing", fix="set appid for this app"),
    41004: Errcode(
        kind=FatalConfigError, meaning="AppSecret missing", fix="put the AppSecret in {source}"
    ),
    43002: Errcode(
        kind=FatalConfigError,
        meaning="wrong HTTP method",
        fix="a proxy or api_base rewrote the request method: check api_base and proxy",
    ),
    45009: Errcode(
        kind=DailyQuotaError,
        meaning="daily quota reached",
        fix="if another system fetches this appid, stop it; to reset now, use clear_quota in"
        " the console (10 a month)",
    ),
    45011: Errcode(
        kind=MinuteQuotaError,
        meaning="per-minute quota reached",
        fix="if it recurs, something else is calling for this appid: stop it",
    ),
    50004: Errcode(
        kind=FatalConfigError,
        meaning="token API forbidden for this account",
        fix="the account may not call this API: check its status in the console",
    ),
    50007: Errcode(
        kind=FatalConfigError,
        meaning="account frozen",
        fix="the account is frozen: resolve it in the console",
    ),
    61024: Errcode(
        kind=FatalConfigError,
        meaning="third-party platform must use its own token",
        fix="this appid is managed by a third-party platform: get its token from the platform",
    ),
    89501: Errcode(
        kind=AdminWaitError,
        meaning="waiting for an administrator to confirm this IP",
        fix="ask the account administrator to confirm the call in WeChat",
        wait=600.0,
    ),
    89503: Errcode(
        kind=AdminWaitError,
        meaning="risky call: an administrator must confirm",
        fix="ask the account administrator to confirm in WeChat (one refusal blocks this IP"
        " for an hour)",
        wait=600.0,
    ),
    89506: Errcode(
        kind=AdminWaitError,
        meaning="an administrator refused this IP for 24 h",
        fix="the administrator refused twice: this IP is blocked for 24 h (or call from another"
        " egress IP)",
        wait=86400.0,
    ),
    89507: Errcode(
        kind=AdminWaitError,
        meaning="an administrator refused this IP for 1 h",
        fix="the administrator refused: this IP is blocked for 1 h (or call from another egress"
        " IP)",
        wait=3600.0,
    ),
}


_WECOM_COPY_FROM_CONSOLE = (
    "copy this application's Secret from the WeCom admin console (work.weixin.qq.com:"
    " 应用管理 → the application → Secret) into {source}"
)

# WeCom reuses some numbers with its own meaning; its own table wins for WeCom apps.
WECOM_ERRCODES: Final[dict[int, Errcode]] = {
    40001: Errcode(kind=FatalConfigError, meaning="invalid secret", fix=_WECOM_COPY_FROM_CONSOLE),
    40013: Errcode(
        kind=FatalConfigError,
        meaning="invalid corpid",
        fix="check corpid: it is the CorpID from the WeCom admin console (我的企业 → 企业信息)",
    ),
    40091: Errcode(
        kind=FatalConfigError, meaning="secret is invalid", fix=_WECOM_COPY_FROM_CONSOLE
    ),
    45009: Errcode(
        kind=DailyQuotaError,
        meaning="API call frequency limit reached",
        fix="WeCom limits how often a token may be fetched: if another system fetches with"
        " this application's secret, stop it",
        retry="no fetch until the reset",
    ),
}

_TOKEN_REJECTED = (40001, 40014, 42001)
_TICKET_ENDPOINTS: Final[dict[tuple[str, str], tuple[str, dict[str, str]]]] = {
    ("official", "jsapi"): ("/cgi-bin/ticket/getticket", {"type": "jsapi"}),
    ("official", "wx_card"): ("/cgi-bin/ticket/getticket", {"type": "wx_card"}),
    ("wecom", "jsapi"): ("/cgi-bin/get_jsapi_ticket", {}),
    ("wecom", "agent_config"): ("/cgi-bin/ticket/get", {"type": "agent_config"}),
}


def error_for(errcode: int, errmsg: str, app: AppConfig) -> FetchError:
    """The error a WeChat errcode stands for, with the operator's fix filled in."""
    row = (WECOM_ERRCODES.get(errcode) if app.kind == "wecom" else None) or ERRCODES.get(errcode)
    if row is None:
        return UnknownErrcodeError(
            f"errcode {errcode}: {errmsg}",
            errcode=errcode,
            fix="unknown errcode: look it up by the rid in its message",
        )
    ip = m.group(1) if (m := _WHITELIST_IP.search(errmsg)) else "this server's egress IP"
    fix = row.fix.format(source=app.secret_source, console=_CONSOLE, ip=ip)
    message = f"errcode {errcode} ({row.meaning}): {errmsg}"
    if row.kind is AdminWaitError:
        return AdminWaitError(message, errcode=errcode, fix=fix, retry=row.retry, wait=row.wait)
    return row.kind(message, errcode=errcode, fix=fix, retry=row.retry)


def parse_token(body: Any, *, fetched_at: float) -> Token:
    """Accept only a non-empty visible-ASCII token ≤ 512 chars with a lifetime of 1 s to a day."""
    if not isinstance(body, dict):
        raise MalformedResponse("reply is JSON but not an object")
    token, expires_in = body.get("access_token"), body.get("expires_in")
    if not isinstance(token, str) or not token:
        raise MalformedResponse("reply has no access_token")
    if isinstance(expires_in, bool) or not isinstance(expires_in, int) or expires_in <= 0:
        raise MalformedResponse("expires_in is not a positive integer")
    try:
        check(token, fetched_at=fetched_at, expires_at=fetched_at + expires_in, now=fetched_at)
    except InvalidCredential as exc:
        # Named as WeChat spells them: the operator compares this with the reply.
        wire = {"token": "access_token", "lifetime": "expires_in"}.get(exc.field, exc.field)
        raise MalformedResponse(f"reply refused: {wire}: {exc}") from None
    return Token(access_token=token, expires_in=expires_in, fetched_at=fetched_at)


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
        self._http = httpx.AsyncClient(
            timeout=httpx.Timeout(timeout),
            transport=transport,
            headers={"User-Agent": f"wxtokend/{__version__}", "Accept-Encoding": ACCEPT_ENCODING},
            trust_env=False,
            follow_redirects=False,
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    async def fetch_token(self, app: AppConfig, *, force: bool = False) -> Token:
        """One call to the app's token endpoint: classic GET, stable POST or WeCom gettoken."""
        fetched_at = self._clock.now()
        secret = app.secret.reveal()
        if app.grant == "classic":
            endpoint = "/cgi-bin/token"
            params = {"grant_type": "client_credential", "appid": app.appid, "secret": secret}
            request = self._http.build_request("GET", self._url(app, endpoint), params=params)
        elif app.grant == "wecom":
            endpoint = "/cgi-bin/gettoken"
            params = {"corpid": app.appid, "corpsecret": secret}
            request = self._http.build_request("GET", self._url(app, endpoint), params=params)
        else:
            endpoint = "/cgi-bin/stable_token"
            payload = {
                "grant_type": "client_credential",
                "appid": app.appid,
                "secret": secret,
                "force_refresh": force,
            }
            request = self._http.build_request("POST", self._url(app, endpoint), json=payload)
        body = await self._exchange(request, app, endpoint)
        self._raise_errcode(body, app)
        return parse_token(body, fetched_at=fetched_at)

    async def fetch_ticket(self, app: AppConfig, kind: Ticket, access_token: str) -> Token:
        """One ticket fetch with ``access_token``; the ticket comes back as ``access_token``.

        40001/40014/42001 here mean the token was rejected: TokenRejectedError,
        so the caller can have the token refreshed (compare-and-refresh) first.
        """
        fetched_at = self._clock.now()
        endpoint, params = _TICKET_ENDPOINTS[(app.kind, kind)]
        request = self._http.build_request(
            "GET", self._url(app, endpoint), params={"access_token": access_token, **params}
        )
        body = await self._exchange(request, app, endpoint, access_token)
        errcode = body.get("errcode") if isinstance(body, dict) else None
        if errcode in _TOKEN_REJECTED:
            raise TokenRejectedError(
                f"errcode {errcode}: the access_token was rejected fetching the {kind} ticket",
                errcode=errcode,
                retry="refreshing the token, then the ticket",
            )
        self._raise_errcode(body, app, access_token)
        if not isinstance(body, dict) or not isinstance(body.get("ticket"), str):
            raise MalformedResponse("reply has no ticket")
        return parse_token(
            {"access_token": body["ticket"], "expires_in": body.get("expires_in")},
            fetched_at=fetched_at,
        )

    def _raise_errcode(self, body: Any, app: AppConfig, *extra: str) -> None:
        errcode = body.get("errcode") if isinstance(body, dict) else None
        if errcode is None:
            return
        if isinstance(errcode, bool) or not isinstance(errcode, int):
            raise MalformedResponse("errcode is not an integer")
        if errcode != 0:
            errmsg = self._scrub(str(body.get("errmsg", "")), app, *extra)
            raise error_for(errcode, errmsg, app)

    def _url(self, app: AppConfig, endpoint: str) -> str:
        """The app's own api_base (a reload may change it), else the client's default."""
        base = app.api_base.rstrip("/") if app.api_base else self._base
        return base + endpoint

    async def _exchange(
        self, request: httpx.Request, app: AppConfig, endpoint: str, *extra: str
    ) -> Any:
        started = self._clock.now()
        error: FetchError
        try:
            # httpx's timeout bounds each phase; this bounds the whole exchange, body
            # included, so a reply dripping in cannot hold a concurrency slot for long.
            async with asyncio.timeout(self._timeout):
                status, body = await self._send(request)
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

    async def _send(self, request: httpx.Request) -> tuple[int, bytes]:
        """The reply's status and (for a 200 only) its body, read within the cap."""
        # Straight to the transport: the client's send() adds auth, redirects and a cookie
        # jar, none of which WeChat calls use, and cost ~10 % of the loop at 10,000 apps.
        # The request was built by the client, so it carries its headers and timeouts.
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
