"""WeChat's own token endpoints, answered from the daemon's managed tokens.

Teams on WxJava, wechatpy, EasyWeChat or co-wechat-api point the SDK's token
URL here and keep their code. ``GET /cgi-bin/token`` and ``POST
/cgi-bin/stable_token`` answer exactly like WeChat (same fields, same
errcodes) but never fetch a new classic token: the daemon owns that. The
secret must match the configured one. ``force_refresh: true`` — what an SDK
sends after WeChat rejected its token — becomes a debounced compare-and-refresh.

A client (peer address; every unix-socket peer is one client) that sent
:data:`FAILURES_PER_MINUTE` wrong credentials within a minute is answered
45011, WeChat's minute quota, until the oldest of them is a minute old. A wrong
secret costs the same time whether the appid is known or not.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from wxtokend.credential import InvalidCredential, check
from wxtokend.guard import BadBody, json_object
from wxtokend.ratelimit import FailureLimiter

if TYPE_CHECKING:
    from wxtokend.service import Loop, Service

__all__ = ["FAILURES_PER_MINUTE", "sdk_routes"]

FAILURES_PER_MINUTE = 10
# Errcodes that mean "that credential is wrong": what a guesser gets, and is counted for.
_WRONG_CREDENTIAL = frozenset({40001, 40013, 40125})
# Compared against when the appid or corpid is unknown, so that costs what a wrong secret does.
_DUMMY_SECRET = secrets.token_hex(16)

# WeChat keeps the previous classic token working ~300 s after a new fetch; a
# minute of that is kept as margin for clocks and SDK refresh slack.
_CLASSIC_SAFE_OVERLAP = 240


class _WeChatError(JSONResponse):
    """A WeChat-style error answer that remembers its errcode (for the failure count)."""

    def __init__(self, errcode: int, errmsg: str, headers: dict[str, str] | None = None) -> None:
        self.errcode = errcode
        super().__init__({"errcode": errcode, "errmsg": errmsg}, headers=headers)


def _error(errcode: int, errmsg: str) -> _WeChatError:
    return _WeChatError(errcode, errmsg)


def _secret_matches(given: str, expected: str) -> bool:
    """Constant time, and over digests: not even the secret's length shows in the timing."""
    digest = [
        hashlib.sha256(s.encode("utf-8", "surrogatepass")).digest() for s in (given, expected)
    ]
    return hmac.compare_digest(digest[0], digest[1])


def _client(request: Request) -> str:
    """Whose failures these are: the peer address; unix-socket peers have none and share one."""
    return request.client.host if request.client is not None else "unix"


Handler = Callable[[Request], Awaitable[Response]]


def _limited(daemon: Service, limiter: FailureLimiter, handler: Handler) -> Handler:
    """``handler`` refusing a client with too many recent wrong credentials, counting new ones."""

    async def limited(request: Request) -> Response:
        client = _client(request)
        wait = limiter.retry_after(client, daemon.clock.monotonic())
        if wait is not None:
            seconds = str(max(1, round(wait)))
            return _WeChatError(
                45011,
                "api minute-quota reach limit mustslower retry next minute",
                headers={"Retry-After": seconds},
            )
        response = await handler(request)
        if isinstance(response, _WeChatError) and response.errcode in _WRONG_CREDENTIAL:
            limiter.failed(client, daemon.clock.monotonic())
        return response

    return limited


def sdk_routes(daemon: Service) -> list[Route]:
    limiter = FailureLimiter(limit=FAILURES_PER_MINUTE, window=60.0)

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
            body = json_object(await request.body())
        except BadBody:
            return _error(47001, "data format error")
        fields = [body.get(key, "") for key in ("grant_type", "appid", "secret")]
        if not all(isinstance(value, str) for value in fields):
            return _error(47001, "data format error")
        grant_type, appid, secret = (str(value) for value in fields)
        return await _answer(
            daemon, grant_type, appid, secret, force=body.get("force_refresh") is True
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
            _secret_matches(secret, _DUMMY_SECRET)
            return _error(40013, "invalid corpid")
        # Compare against every application, so timing says nothing about which matched.
        matches = [r for r in candidates if _secret_matches(secret, r.app.secret.reveal())]
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
        Route("/cgi-bin/token", _limited(daemon, limiter, token), methods=["GET", "POST"]),
        Route(
            "/cgi-bin/stable_token",
            _limited(daemon, limiter, stable_token),
            methods=["GET", "POST"],
        ),
        Route("/cgi-bin/gettoken", _limited(daemon, limiter, gettoken), methods=["GET"]),
    ]


async def _answer(
    daemon: Service, grant_type: str, appid: str, secret: str, *, force: bool
) -> Response:
    if grant_type != "client_credential":
        return _error(40002, "invalid grant_type")
    if not appid:
        return _error(41002, "appid missing")
    if not secret:
        return _error(41004, "appsecret missing")
    refresher = daemon.find_appid(appid)
    if refresher is None or refresher.app.kind != "official":
        _secret_matches(secret, _DUMMY_SECRET)
        return _error(40013, "invalid appid")
    if not _secret_matches(secret, refresher.app.secret.reveal()):
        return _error(40125, "invalid appsecret")
    if force:
        await _debounced_refresh(refresher, window=daemon.config.admin.passive_min_interval)
    record, now = refresher.record, daemon.clock.now()
    if record is None or not _servable(refresher, now):
        return _error(-1, "system error: wxtokend has no valid token for this appid yet")
    return JSONResponse(
        {"access_token": record.access_token, "expires_in": _lifetime(refresher, now)}
    )


def _servable(refresher: Loop, now: float) -> bool:
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


def _lifetime(refresher: Loop, now: float) -> int:
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


async def _debounced_refresh(refresher: Loop, *, window: float) -> None:
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
