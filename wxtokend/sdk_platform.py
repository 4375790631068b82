"""WeChat's Open Platform token endpoints, answered from the daemon's managed tokens.

An SDK for third-party platforms (WxJava's ``WxOpenComponentService``,
wechatpy's ``WeChatComponent``, EasyWeChat's OpenPlatform) pointed here keeps
its code: ``api_component_token`` answers with the platform's component token
(the component secret must match; the ticket it sends is not needed — the
daemon holds the pushed one), and ``api_authorizer_token`` answers with the
authorizer's managed token for a caller holding the current component token. It
never fetches and never hands out the daemon's refresh tokens: the caller's own
``authorizer_refresh_token`` is echoed back.
"""

from __future__ import annotations

import hmac
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from wxtokend.guard import BadBody, json_object
from wxtokend.ratelimit import FailureLimiter
from wxtokend.sdk import _DUMMY_SECRET, FAILURES_PER_MINUTE, _error, _limited, _secret_matches

if TYPE_CHECKING:
    from wxtokend.service import Service

__all__ = ["platform_sdk_routes"]


def platform_sdk_routes(daemon: Service) -> list[Route]:
    limiter = FailureLimiter(limit=FAILURES_PER_MINUTE, window=60.0)  # guessers wait, as in sdk

    async def component_token(request: Request) -> Response:
        body = await _body(request)
        if isinstance(body, Response):
            return body
        appid, secret = body.get("component_appid"), body.get("component_appsecret")
        if not isinstance(appid, str) or not isinstance(secret, str) or not secret:
            return _error(41002, "component_appid or component_appsecret missing")
        platform = daemon.platforms.by_component(appid)
        if platform is None:
            _secret_matches(secret, _DUMMY_SECRET)
            return _error(40013, "invalid appid")
        if not platform.secret_matches(secret):
            return _error(40125, "invalid appsecret")
        held = platform.component_token(daemon.clock.now())
        if held is None:
            return _error(-1, "system error: wxtokend has no valid component token yet")
        token, expires_in = held
        return JSONResponse({"component_access_token": token, "expires_in": expires_in})

    async def authorizer_token(request: Request) -> Response:
        body = await _body(request)
        if isinstance(body, Response):
            return body
        appid, authorizer = body.get("component_appid"), body.get("authorizer_appid")
        if not isinstance(appid, str) or not isinstance(authorizer, str):
            return _error(41002, "component_appid or authorizer_appid missing")
        platform = daemon.platforms.by_component(appid)
        given = request.query_params.get("component_access_token", "")
        now = daemon.clock.now()
        held = platform.component_token(now) if platform is not None else None
        if platform is None or held is None or not hmac.compare_digest(given, held[0]):
            return _error(40001, "invalid credential, access_token is invalid or not latest")
        answer = platform.authorizer_token(authorizer, now)
        if isinstance(answer, int):
            return _error(answer, _MESSAGES.get(answer, "system error"))
        token, expires_in = answer
        return JSONResponse(
            {
                "authorizer_access_token": token,
                "expires_in": expires_in,
                "authorizer_refresh_token": body.get("authorizer_refresh_token", ""),
            }
        )

    return [
        Route(
            "/cgi-bin/component/api_component_token",
            _limited(daemon, limiter, component_token),
            methods=["POST"],
        ),
        Route(
            "/cgi-bin/component/api_authorizer_token",
            _limited(daemon, limiter, authorizer_token),
            methods=["POST"],
        ),
    ]


_MESSAGES = {
    61003: "component is not authorized by this account",
    61023: "refresh_token is invalid",
    -1: "system error: wxtokend has no valid token for this authorizer yet",
}


async def _body(request: Request) -> dict[str, Any] | Response:
    try:
        return json_object(await request.body())
    except BadBody:
        return _error(47001, "data format error")
