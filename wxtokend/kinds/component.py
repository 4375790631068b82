"""Open Platform (开放平台) third-party platforms: the component token and its errcodes.

The component_access_token is fetched with the platform's secret and the newest
``component_verify_ticket`` WeChat pushed to its callback, so its loop depends
on the ticket (:class:`~wxtokend.platforms.verify.VerifyTicket`). A refused
ticket (61005 expired, 61006 invalid) is dropped: the loop then waits for the
next push, costing no calls meanwhile. Authorizer tokens are fetched with the
component token: their calls are here too, for the authorizer book.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any, Final

from wxtokend.config import AppConfig, Grant
from wxtokend.credential import Token
from wxtokend.errcodes import Errcode
from wxtokend.errors import (
    FatalConfigError,
    FetchError,
    MalformedResponse,
    ReauthorizationNeeded,
    TransientError,
)
from wxtokend.kinds.base import Attempt, Call, parse_token
from wxtokend.kinds.official import ERRCODES
from wxtokend.store import TOKEN

__all__ = [
    "COMPONENT_TOKEN",
    "PLATFORM_ERRCODES",
    "TICKET_REFUSED",
    "WITH_COMPONENT_ERRCODES",
    "ComponentToken",
    "authorizer_list_call",
    "authorizer_token_call",
    "parse_token_field",
    "query_auth_call",
]

TICKET_REFUSED: Final = (61005, 61006)
_WAIT_FOR_PUSH = "waiting for WeChat's next component_verify_ticket push (every 10 minutes)"
_REAUTHORIZE = (
    "the account's administrator must authorize the platform again (your authorization page);"
    " until then it has no token, and it is not asked for one"
)
PLATFORM_ERRCODES: Final[dict[int, Errcode]] = {
    **ERRCODES,
    61003: Errcode(
        kind=ReauthorizationNeeded,
        meaning="the account has not authorized this platform",
        fix=_REAUTHORIZE,
    ),
    61004: Errcode(
        kind=FatalConfigError,
        meaning="this IP is not on the platform's whitelist",
        fix="add {ip} to the platform's IP whitelist (open.weixin.qq.com → 第三方平台 → 开发资料"
        " → 白名单IP)",
    ),
    61005: Errcode(
        kind=TransientError,
        meaning="component_verify_ticket expired",
        fix="check that WeChat's pushes reach the callback listener",
        retry=_WAIT_FOR_PUSH,
    ),
    61006: Errcode(
        kind=TransientError,
        meaning="component_verify_ticket invalid",
        fix="check that WeChat's pushes reach the callback listener",
        retry=_WAIT_FOR_PUSH,
    ),
    61023: Errcode(
        kind=ReauthorizationNeeded,
        meaning="authorizer_refresh_token invalid",
        fix=_REAUTHORIZE,
    ),
}


# Calls made *with* the component token: 40001/42001 are about that token, not a secret.
WITH_COMPONENT_ERRCODES: Final[dict[int, Errcode]] = {
    **PLATFORM_ERRCODES,
    40001: Errcode(
        kind=TransientError,
        meaning="component_access_token rejected",
        fix="another system may be refreshing this platform's component token",
        retry="refreshing the component token, then asking again",
    ),
    42001: Errcode(
        kind=TransientError,
        meaning="component_access_token expired",
        fix="",
        retry="refreshing the component token, then asking again",
    ),
}


class ComponentToken:
    """A platform's component_access_token, fetched with its pushed verify ticket."""

    __slots__ = ()
    name: Final = TOKEN  # its files: output_dir/<platform>/component_access_token(.json)
    depends_on: Final = "component_verify_ticket"
    repeat_keeps_times: Final = False

    def label(self, app: AppConfig) -> str:
        return "component"

    def renewal(self, app: AppConfig) -> Grant:
        # Whether a new component token ends the previous one is not documented:
        # replace it well ahead, like a classic token.
        return "classic"

    def fleet_key(self, app: AppConfig) -> str:
        return f"{app.appid}:component"

    def log_context(self) -> dict[str, str]:
        return {"credential": "component_access_token"}

    async def fetch(self, attempt: Attempt, *, force: bool) -> Token:
        ticket = attempt.dependency
        held = ticket.record if ticket is not None else None
        if ticket is None or held is None or not ticket.has_valid_token():
            raise TransientError("no component_verify_ticket yet", retry=_WAIT_FOR_PUSH)
        try:
            async with attempt.on_wire():
                return await attempt.upstream.fetch(self, attempt.app, using=held.access_token)
        except TransientError as exc:
            if exc.errcode in TICKET_REFUSED:
                attempt.off_wire()
                await ticket.report_rejected(token=held.access_token, internal=True)
            raise

    def call(self, app: AppConfig, *, force: bool, using: str | None) -> Call:
        assert using is not None, "the component token is fetched with the verify ticket"
        body = {
            "component_appid": app.appid,
            "component_appsecret": app.secret.reveal(),
            "component_verify_ticket": using,
        }
        return Call(
            method="POST",
            endpoint="/cgi-bin/component/api_component_token",
            body=body,
            sent=(using,),
        )

    def errcodes(self, app: AppConfig) -> Mapping[int, Errcode]:
        return PLATFORM_ERRCODES

    def reply_error(self, body: Any) -> FetchError | None:
        return None

    def parse(self, body: Any, *, fetched_at: float) -> Token:
        return parse_token_field(body, "component_access_token", fetched_at=fetched_at)


COMPONENT_TOKEN: Final = ComponentToken()


def parse_token_field(body: Any, field: str, *, fetched_at: float) -> Token:
    """A token WeChat names ``field`` (with its ``expires_in``), checked like every token."""
    if not isinstance(body, dict) or not isinstance(body.get(field), str):
        raise MalformedResponse(f"reply has no {field}")
    return parse_token(
        {"access_token": body[field], "expires_in": body.get("expires_in")}, fetched_at=fetched_at
    )


def _with_component(endpoint: str, component_token: str, body: Mapping[str, object]) -> Call:
    return Call(
        method="POST",
        endpoint=f"/cgi-bin/component/{endpoint}",
        params={"component_access_token": component_token},
        body=body,
        sent=(component_token,),
    )


def query_auth_call(app: AppConfig, component_token: str, code: str) -> Call:
    """``api_query_auth``: an authorization code (from an ``authorized`` event) for its tokens."""
    body = {"component_appid": app.appid, "authorization_code": code}
    call = _with_component("api_query_auth", component_token, body)
    return replace(call, sent=(component_token, code))


def authorizer_token_call(
    app: AppConfig, component_token: str, authorizer_appid: str, refresh_token: str
) -> Call:
    """``api_authorizer_token``: a new authorizer token (and refresh token) for a refresh token."""
    body = {
        "component_appid": app.appid,
        "authorizer_appid": authorizer_appid,
        "authorizer_refresh_token": refresh_token,
    }
    call = _with_component("api_authorizer_token", component_token, body)
    return replace(call, sent=(component_token, refresh_token))


def authorizer_list_call(app: AppConfig, component_token: str, offset: int, count: int) -> Call:
    """``api_get_authorizer_list``: a page of the accounts that authorized the platform."""
    body = {"component_appid": app.appid, "offset": offset, "count": count}
    return _with_component("api_get_authorizer_list", component_token, body)
