"""The access_token of an Official Account or Mini Program: classic GET or stable POST.

Classic (``/cgi-bin/token``): each fetch invalidates the previous token after a
5-minute overlap. Stable (``/cgi-bin/stable_token``): normal mode returns the
current token while it is valid; ``force_refresh`` (20 a day, 30 s apart)
replaces it. :data:`ERRCODES` is what every errcode of these endpoints means.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from wxtokend.config import AppConfig, Grant
from wxtokend.credential import Token
from wxtokend.errcodes import Errcode
from wxtokend.errors import (
    AdminWaitError,
    DailyQuotaError,
    FatalConfigError,
    FetchError,
    MinuteQuotaError,
    TransientError,
)
from wxtokend.kinds.base import Attempt, Call, parse_token
from wxtokend.store import TOKEN

__all__ = ["ERRCODES", "OFFICIAL_TOKEN", "OfficialToken"]

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


class OfficialToken:
    """An app's access_token; its grant (classic or stable) says how it is renewed."""

    __slots__ = ()
    name: Final = TOKEN  # its files: <name> and <name>.json
    depends_on: Final = None
    # WeChat repeating the current token (stable normal mode, WeCom within its
    # lifetime) means it is still valid with the expiry already known.
    repeat_keeps_times: Final = True

    def label(self, app: AppConfig) -> str:
        return app.grant

    def renewal(self, app: AppConfig) -> Grant:
        return app.grant

    def fleet_key(self, app: AppConfig) -> str:
        return f"{app.appid}:{app.grant}"

    def log_context(self) -> dict[str, str]:
        return {}

    async def fetch(self, attempt: Attempt, *, force: bool) -> Token:
        async with attempt.on_wire():
            return await attempt.upstream.fetch_token(attempt.app, force=force)

    def call(self, app: AppConfig, *, force: bool, using: str | None = None) -> Call:
        secret = app.secret.reveal()
        if app.grant == "classic":
            params = {"grant_type": "client_credential", "appid": app.appid, "secret": secret}
            return Call(method="GET", endpoint="/cgi-bin/token", params=params)
        payload = {
            "grant_type": "client_credential",
            "appid": app.appid,
            "secret": secret,
            "force_refresh": force,
        }
        return Call(method="POST", endpoint="/cgi-bin/stable_token", body=payload)

    def errcodes(self, app: AppConfig) -> Mapping[int, Errcode]:
        return ERRCODES

    def reply_error(self, body: Any) -> FetchError | None:
        return None

    def parse(self, body: Any, *, fetched_at: float) -> Token:
        return parse_token(body, fetched_at=fetched_at)


OFFICIAL_TOKEN: Final = OfficialToken()
