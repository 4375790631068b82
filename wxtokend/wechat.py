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
from wxtokend.config import AppConfig
from wxtokend.errors import (
    AdminWaitError,
    DailyQuotaError,
    FatalConfigError,
    FetchError,
    MalformedResponse,
    MinuteQuotaError,
    TransientError,
    UnknownErrcodeError,
)
from wxtokend.redact import Redactor

__all__ = [
    "ERRCODES",
    "MAX_TOKEN_LENGTH",
    "Errcode",
    "Token",
    "WeChatClient",
    "error_for",
    "is_valid_token",
    "parse_token",
]

MAX_TOKEN_LENGTH: Final = 512
# WeChat says "within 7200 s"; a lifetime beyond a day is a broken reply, and
# trusting it would park the refresh loop for years.
MAX_EXPIRES_IN: Final = 86400
_VISIBLE_ASCII = re.compile(r"[\x21-\x7e]+")
_WHITELIST_IP = re.compile(r"invalid ip ([0-9a-fA-F.:]+)")
_CONSOLE = "mp.weixin.qq.com"
_NETWORK_HINT = (
    "retrying with backoff; if it persists, check that this host reaches api_base"
    " (and proxy, if set)"
)


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
    """One row of the errcode table: what it means and what to do."""

    kind: type[FetchError]
    meaning: str
    hint: str
    wait: float = 0.0


_COPY_FROM_CONSOLE = (
    "copy the current AppSecret from the WeChat console ({console}: 设置与开发 → 基本配置,"
    " or 开发管理 → 开发设置 for Mini Programs) into {source}; if someone reset it, every"
    " copy of the old one is dead"
)

ERRCODES: Final[dict[int, Errcode]] = {
    -1: Errcode(kind=TransientError, meaning="WeChat system busy", hint="retrying with backoff"),
    40001: Errcode(
        kind=FatalConfigError,
        meaning="AppSecret wrong (invalid credential)",
        hint=_COPY_FROM_CONSOLE,
    ),
    40002: Errcode(
        kind=FatalConfigError,
        meaning="invalid grant_type",
        hint="this is a wxtokend bug or an api_base that is not WeChat: please report it",
    ),
    40013: Errcode(
        kind=FatalConfigError,
        meaning="invalid appid",
        hint="check appid: it must be this account's AppID (wx + 16 hex digits) from the console",
    ),
    40125: Errcode(kind=FatalConfigError, meaning="invalid AppSecret", hint=_COPY_FROM_CONSOLE),
    40164: Errcode(
        kind=FatalConfigError,
        meaning="caller IP not in the IP whitelist",
        hint="add {ip} to the IP whitelist ({console}: 设置与开发 → 基本配置 → IP白名单; Mini"
        " Programs: 开发管理 → 开发设置 → IP白名单), or set proxy: to an egress proxy whose"
        " IP is already whitelisted",
    ),
    40243: Errcode(
        kind=FatalConfigError,
        meaning="AppSecret frozen",
        hint="unfreeze or reset the AppSecret in the console, then update {source}",
    ),
    41002: Errcode(kind=FatalConfigError, meaning="appid missing", hint="set appid for this app"),
    41004: Errcode(
        kind=FatalConfigError, meaning="AppSecret missing", hint="put the AppSecret in {source}"
    ),
    43002: Errcode(
        kind=FatalConfigError,
        meaning="wrong HTTP method",
        hint="a proxy or api_base rewrote the request method: check api_base and proxy",
    ),
    45009: Errcode(
        kind=DailyQuotaError,
        meaning="daily quota reached",
        hint="no fetch until the quota resets at 00:00 Beijing time; if another system fetches"
        " this appid, stop it; to reset now, use clear_quota in the console (10 a month)",
    ),
    45011: Errcode(
        kind=MinuteQuotaError,
        meaning="per-minute quota reached",
        hint="waiting for the next minute; something else may be calling for this appid",
    ),
    50004: Errcode(
        kind=FatalConfigError,
        meaning="token API forbidden for this account",
        hint="the account may not call this API: check its status in the console",
    ),
    50007: Errcode(
        kind=FatalConfigError,
        meaning="account frozen",
        hint="the account is frozen: resolve it in the console",
    ),
    61024: Errcode(
        kind=FatalConfigError,
        meaning="third-party platform must use its own token",
        hint="this appid is managed by a third-party platform: get its token from the platform",
    ),
    89501: Errcode(
        kind=AdminWaitError,
        meaning="waiting for an administrator to confirm this IP",
        hint="ask the account administrator to confirm the call in WeChat; retrying in 10 min",
        wait=600.0,
    ),
    89503: Errcode(
        kind=AdminWaitError,
        meaning="risky call: an administrator must confirm",
        hint="ask the account administrator to confirm in WeChat (one refusal blocks this IP"
        " for an hour); retrying in 10 min",
        wait=600.0,
    ),
    89506: Errcode(
        kind=AdminWaitError,
        meaning="an administrator refused this IP for 24 h",
        hint="the administrator refused twice: this IP is blocked for 24 h; retrying after",
        wait=86400.0,
    ),
    89507: Errcode(
        kind=AdminWaitError,
        meaning="an administrator refused this IP for 1 h",
        hint="the administrator refused: this IP is blocked for 1 h; retrying after",
        wait=3600.0,
    ),
}


def error_for(errcode: int, errmsg: str, app: AppConfig) -> FetchError:
    """The error a WeChat errcode stands for, with the operator's hint filled in."""
    row = ERRCODES.get(errcode)
    if row is None:
        return UnknownErrcodeError(
            f"errcode {errcode}: {errmsg}",
            errcode=errcode,
            hint="unknown errcode: look it up by the rid in its message; retrying slowly",
        )
    ip = m.group(1) if (m := _WHITELIST_IP.search(errmsg)) else "this server's egress IP"
    hint = row.hint.format(source=app.secret_source, console=_CONSOLE, ip=ip)
    message = f"errcode {errcode} ({row.meaning}): {errmsg}"
    if row.kind is AdminWaitError:
        return AdminWaitError(message, errcode=errcode, hint=hint, wait=row.wait)
    return row.kind(message, errcode=errcode, hint=hint)


def is_valid_token(token: str) -> bool:
    """1-512 visible ASCII characters: what a consumer can safely ``cat`` and send."""
    return len(token) <= MAX_TOKEN_LENGTH and bool(_VISIBLE_ASCII.fullmatch(token))


def parse_token(body: Any, *, fetched_at: float) -> Token:
    """Accept only a non-empty visible-ASCII token ≤ 512 chars with a lifetime of 1 s to a day."""
    if not isinstance(body, dict):
        raise MalformedResponse("reply is JSON but not an object")
    token, expires_in = body.get("access_token"), body.get("expires_in")
    if not isinstance(token, str) or not token:
        raise MalformedResponse("reply has no access_token")
    if not is_valid_token(token):
        raise MalformedResponse("access_token is not 1-512 visible ASCII characters")
    if isinstance(expires_in, bool) or not isinstance(expires_in, int) or expires_in <= 0:
        raise MalformedResponse("expires_in is not a positive integer")
    if expires_in > MAX_EXPIRES_IN:
        raise MalformedResponse(f"expires_in {expires_in} is longer than a day")
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
        self._http = httpx.AsyncClient(
            timeout=httpx.Timeout(timeout),
            proxy=proxy,
            transport=transport,
            limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=32),
            headers={"User-Agent": f"wxtokend/{__version__}"},
            trust_env=False,
            follow_redirects=False,
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    async def fetch_token(self, app: AppConfig, *, force: bool = False) -> Token:
        """One call to the app's token endpoint: classic GET or stable POST."""
        fetched_at = self._clock.now()
        if app.grant == "classic":
            endpoint = "/cgi-bin/token"
            request = self._http.build_request(
                "GET",
                self._url(app, endpoint),
                params={
                    "grant_type": "client_credential",
                    "appid": app.appid,
                    "secret": app.secret.reveal(),
                },
            )
        else:
            endpoint = "/cgi-bin/stable_token"
            payload = {
                "grant_type": "client_credential",
                "appid": app.appid,
                "secret": app.secret.reveal(),
                "force_refresh": force,
            }
            request = self._http.build_request("POST", self._url(app, endpoint), json=payload)
        body = await self._exchange(request, app, endpoint)
        errcode = body.get("errcode") if isinstance(body, dict) else None
        if errcode is not None:
            if isinstance(errcode, bool) or not isinstance(errcode, int):
                raise MalformedResponse("errcode is not an integer")
            if errcode != 0:
                errmsg = self._scrub(str(body.get("errmsg", "")), app)
                raise error_for(errcode, errmsg, app)
        return parse_token(body, fetched_at=fetched_at)

    def _url(self, app: AppConfig, endpoint: str) -> str:
        """The app's own api_base (a reload may change it), else the client's default."""
        base = app.api_base.rstrip("/") if app.api_base else self._base
        return base + endpoint

    async def _exchange(self, request: httpx.Request, app: AppConfig, endpoint: str) -> Any:
        started = self._clock.now()
        error: FetchError
        try:
            # httpx's timeout bounds each phase; this bounds the whole exchange, so a
            # reply trickling in cannot hold a concurrency slot indefinitely.
            async with asyncio.timeout(self._timeout):
                response = await self._http.send(request)
        except TimeoutError:
            error = TransientError("timed out (whole request)", hint=_NETWORK_HINT)
        except httpx.TimeoutException as exc:
            error = TransientError(f"timed out ({type(exc).__name__})", hint=_NETWORK_HINT)
        except httpx.ProxyError as exc:
            error = TransientError(
                f"proxy error: {self._safe(exc, app)}", hint="check that proxy: is reachable"
            )
        except httpx.TransportError as exc:
            error = TransientError(f"connection failed: {self._safe(exc, app)}", hint=_NETWORK_HINT)
        except httpx.HTTPError as exc:  # e.g. a body that fails its Content-Encoding
            error = MalformedResponse(f"unreadable reply: {self._safe(exc, app)}")
        else:
            return self._decode(response)
        finally:
            if self._on_request is not None:
                self._on_request(app.name, endpoint, self._clock.now() - started)
        # Raised outside the except blocks so no httpx exception (whose text may
        # quote the URL with the secret) is chained as __context__.
        raise error

    def _decode(self, response: httpx.Response) -> Any:
        status = response.status_code
        if status >= 500 or status in (408, 429):
            raise TransientError(f"HTTP {status} from WeChat", hint=_NETWORK_HINT)
        if status != 200:
            raise FatalConfigError(
                f"HTTP {status} from {self._base}",
                hint="api_base or proxy does not lead to the WeChat API: check both",
            )
        try:
            return json.loads(response.content)
        except (ValueError, UnicodeDecodeError, RecursionError):
            pass
        raise MalformedResponse("reply is not JSON (truncated or garbage)")

    def _safe(self, exc: Exception, app: AppConfig) -> str:
        """Exception text without secrets: httpx messages can quote the URL."""
        return self._scrub(f"{type(exc).__name__}: {exc}", app)

    def _scrub(self, text: str, app: AppConfig) -> str:
        """Wire text made safe for messages: this app's secret and known tokens removed."""
        secret = app.secret.reveal()
        for form in (secret, quote(secret, safe=""), quote_plus(secret)):
            text = text.replace(form, "********")
        return self._redactor.scrub(text)[:300]
