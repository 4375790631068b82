"""WeChat's own token endpoints, answered from the daemon's managed tokens.

Teams on WxJava, wechatpy, EasyWeChat or co-wechat-api point the SDK's token
URL here and keep their code. ``GET /cgi-bin/token`` and ``POST
/cgi-bin/stable_token`` answer exactly like WeChat (same fields, same
errcodes) but never fetch a new classic token: the daemon owns that. The
secret must match the configured one. ``force_refresh: true`` — what an SDK
sends after WeChat rejected its token — becomes a debounced compare-and-refresh.
"""

from __future__ import annotations

import hmac
import json
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from wxtokend.credential import InvalidCredential, check

if TYPE_CHECKING:
    from wxtokend.daemon import Daemon
    from wxtokend.refresher import Refresher

__all__ = ["sdk_routes"]

# WeChat keeps the previous classic token working ~300 s after a new fetch; a
# minute of that is kept as margin for clocks and SDK refresh slack.
_CLASSIC_SAFE_OVERLAP = 240


def _error(errcode: int, errmsg: str) -> JSONResponse:
    return JSONResponse({"errcode": errcode, "errmsg": errmsg})


def sdk_routes(daemon: Daemon) -> list[Route]:
    async def token(request: Request) -> Response:
        if request.method != "GET":
            return _error(43002, "require GET method")
        q = request.query_params
        return await _answer(
            daemon, q.get("grant_type", ""), q.get("appid", ""), q.get("secret", ""), force=False
        )

    async def stable_token(request: Request) -> Response:
        if request.method != "POST":
            return _error(43002, "require POST method")
        try:
            body: Any = json.loads(await request.body())
        except (ValueError, UnicodeDecodeError):
            body = None
        if not isinstance(body, dict):
            return _error(47001, "data format error")
        return await _answer(
            daemon,
            str(body.get("grant_type", "")),
            str(body.get("appid", "")),
            str(body.get("secret", "")),
            force=body.get("force_refresh") is True,
        )

    async def gettoken(request: Request) -> Response:
        """WeCom: one corp, several applications, told apart by their secrets."""
        q = request.query_params
        corpid, secret = q.get("corpid", ""), q.get("corpsecret", "")
        if not corpid:
            return _error(41002, "corpid missing")
        if not secret:
            return _error(41004, "corpsecret missing")
        candidates = daemon.wecom_applications(corpid)
        if not candidates:
            return _error(40013, "invalid corpid")
        # Compare against every application, so timing says nothing about which matched.
        matches = [
            r
            for r in candidates
            if hmac.compare_digest(secret.encode(), r.app.secret.reveal().encode())
        ]
        if not matches:
            return _error(40001, "invalid credential")
        refresher, now = matches[0], daemon.clock.now()
        record = refresher.record
        if record is None or not _servable(refresher, now):
            return _error(-1, "system busy: wxtokend has no valid token for this application yet")
        return JSONResponse(
            {
                "errcode": 0,
                "errmsg": "ok",
                "access_token": record.access_token,
                "expires_in": _lifetime(refresher, now),
            }
        )

    return [
        Route("/cgi-bin/token", token, methods=["GET", "POST"]),
        Route("/cgi-bin/stable_token", stable_token, methods=["GET", "POST"]),
        Route("/cgi-bin/gettoken", gettoken, methods=["GET"]),
    ]


async def _answer(
    daemon: Daemon, grant_type: str, appid: str, secret: str, *, force: bool
) -> Response:
    if grant_type != "client_credential":
        return _error(40002, "invalid grant_type")
    if not appid:
        return _error(41002, "appid missing")
    if not secret:
        return _error(41004, "appsecret missing")
    refresher = daemon.find_appid(appid)
    if refresher is None or refresher.app.kind != "official":
        return _error(40013, "invalid appid")
    expected = refresher.app.secret.reveal().encode()
    if not hmac.compare_digest(secret.encode(), expected):
        return _error(40125, "invalid appsecret")
    if force:
        await _debounced_refresh(refresher, window=daemon.config.admin.passive_min_interval)
    record, now = refresher.record, daemon.clock.now()
    if record is None or not _servable(refresher, now):
        return _error(-1, "system error: wxtokend has no valid token for this appid yet")
    return JSONResponse(
        {"access_token": record.access_token, "expires_in": _lifetime(refresher, now)}
    )


def _servable(refresher: Refresher, now: float) -> bool:
    """A token an SDK may be handed: valid for a second more, and passing the one check
    every token passes where it enters (so a bug upstream can never reach an SDK)."""
    record = refresher.record
    if record is None or not refresher.has_valid_token() or record.expires_at - now < 1:
        return False
    try:
        check(
            record.access_token, fetched_at=record.fetched_at, expires_at=record.expires_at, now=now
        )
    except InvalidCredential:
        return False
    return True


def _lifetime(refresher: Refresher, now: float) -> int:
    """The expires_in to hand out: how long an SDK may cache this token.

    Stable tokens live to their own expiry. A classic token dies ~300 s after
    the daemon's next refresh, long before its expiry: an SDK caching it for the
    full lifetime would meet 40001 every cycle, so classic answers stop earlier.
    """
    record = refresher.record
    assert record is not None
    remaining = record.expires_at - now
    if refresher.app.grant == "classic":
        remaining = min(remaining, refresher.next_at - now + _CLASSIC_SAFE_OVERLAP)
    return max(1, int(remaining))


async def _debounced_refresh(refresher: Refresher, *, window: float) -> None:
    """force_refresh from an SDK: a compare-and-refresh of the current token.

    An SDK cannot say which token it saw rejected, so: a token younger than
    ``window`` is returned as it is (every instance that saw the old one asks at
    once; the first refresh serves them all), and a stable app gets a normal-mode
    call only: force_refresh, which kills the token every other caller holds and
    has a budget of 20 a day, needs a report naming the token (/v1/apps/.../refresh).
    """
    record = refresher.record
    if record is None:
        return
    if refresher.clock_now() - record.fetched_at < window:
        return
    await refresher.report_rejected(token=record.access_token, allow_force=False)
