"""The admin HTTP API: health, readiness, metrics, status and passive refresh.

Two Starlette apps over one daemon: :func:`admin_app` (everything, including
the SDK drop-in endpoints of :mod:`wxtokend.sdk`) for ``admin.listen``, which
defaults to loopback; and :func:`probe_app` (health, readiness, metrics only)
for ``admin.probe_listen``, which may face a pod network. No endpoint of
either shows a token; status pages show fingerprints.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from wxtokend.config import AppConfig, Ticket
from wxtokend.guard import DEFAULT_BODY_LIMIT, BadBody, RequestGuard, json_object
from wxtokend.jssdk import jssdk_config
from wxtokend.metrics import CONTENT_TYPE
from wxtokend.platform_api import platform_routes
from wxtokend.sdk import sdk_routes
from wxtokend.sdk_platform import platform_sdk_routes
from wxtokend.status import Passive, describe

if TYPE_CHECKING:
    from wxtokend.service import Service

__all__ = [
    "SigningError",
    "admin_app",
    "describe",
    "probe_app",
    "sign_page",
    "signed_fields",
    "signing_ticket",
]

_PASSIVE_STATUS = {
    "refreshed": 200,
    "newer": 200,
    "rate_limited": 429,
    "force_budget_spent": 429,
    "failed": 502,
    "no_token": 503,
}


# What an SDK's stable_token body needs is ~120 bytes; the admin's JSON bodies, a URL or a token.
_SDK_BODY_LIMIT = 4 * 1024
_PROBE_PATHS = "/healthz, /readyz, /metrics"


def probe_app(daemon: Service) -> Starlette:
    return _hardened(_probe_routes(daemon), f"this listener serves only {_PROBE_PATHS}")


def admin_app(daemon: Service) -> Starlette:
    routes = [
        *_probe_routes(daemon),
        *_api_routes(daemon),
        *platform_routes(daemon),
        *sdk_routes(daemon),
        *platform_sdk_routes(daemon),
    ]
    return _hardened(routes, f"use {_PROBE_PATHS}, /v1/apps or the SDK's /cgi-bin/ paths")


def _hardened(routes: list[Route], endpoints: str) -> Starlette:
    """The routes behind the body guard, with JSON answers for unknown paths and methods."""

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        if exc.status_code == 404:
            message = f"no endpoint {_quoted(request.url.path)}: {endpoints}"
        else:
            message = f"{request.method} {_quoted(request.url.path)}: {exc.detail}"
        return JSONResponse({"error": message}, status_code=exc.status_code, headers=exc.headers)

    return Starlette(
        routes=routes,
        middleware=[Middleware(RequestGuard, limit=_body_limit)],
        exception_handlers={HTTPException: http_error},
    )


def _body_limit(path: str) -> int:
    return _SDK_BODY_LIMIT if path.startswith("/cgi-bin/") else DEFAULT_BODY_LIMIT


def _quoted(text: str, limit: int = 64) -> str:
    """``text`` for an error message: repr'd (so NULs and controls show) and cut short."""
    return repr(text[:limit]) + ("..." if len(text) > limit else "")


def _probe_routes(daemon: Service) -> list[Route]:
    async def healthz(_: Request) -> Response:
        problems = daemon.health()
        if problems:
            return JSONResponse({"status": "unhealthy", "problems": problems}, status_code=503)
        return JSONResponse({"status": "ok"})

    async def readyz(_: Request) -> Response:
        missing = daemon.readiness()
        fleet: dict[str, Any] = {}
        if daemon.fleet is not None and not daemon.fleet.up:
            # Still ready while the tokens on disk are valid; but say it loudly.
            fleet = {"fleet": f"Redis unreachable: {daemon.fleet.last_error}"}
        if missing:
            body = {"status": "not ready", "apps": missing, **fleet}
            return JSONResponse(body, status_code=503)
        return JSONResponse({"status": "ready", "apps": len(daemon.refreshers), **fleet})

    async def metrics(_: Request) -> Response:
        daemon.update_gauges()
        return Response(daemon.metrics.render(), media_type=CONTENT_TYPE)

    return [
        Route("/healthz", healthz, methods=["GET", "HEAD"]),
        Route("/readyz", readyz, methods=["GET", "HEAD"]),
        Route("/metrics", metrics, methods=["GET"]),
    ]


def _api_routes(daemon: Service) -> list[Route]:
    async def apps(_: Request) -> Response:
        now = daemon.clock.now()
        return JSONResponse({"apps": [_describe_app(daemon, n, now) for n in daemon.refreshers]})

    async def one_app(request: Request) -> Response:
        refresher = daemon.find(request.path_params["name"])
        if refresher is None:
            return _unknown_app(daemon, request.path_params["name"])
        return JSONResponse(_describe_app(daemon, refresher.app.name, daemon.clock.now()))

    async def jssdk_signature(request: Request) -> Response:
        refresher = daemon.find(request.path_params["name"])
        if refresher is None:
            return _unknown_app(daemon, request.path_params["name"])
        usage = 'send JSON {"url": "<the page URL>"}'
        try:
            body = json_object(await request.body())
        except BadBody as exc:
            return JSONResponse({"error": f"{exc}: {usage}"}, status_code=400)
        if not isinstance(body.get("url"), str):
            return JSONResponse({"error": usage}, status_code=400)
        try:
            fields = sign_page(
                daemon, refresher.app.name, body["url"], agent=body.get("agent") is True
            )
        except SigningError as exc:
            return JSONResponse({"error": str(exc)}, status_code=exc.status)
        return JSONResponse(fields)

    async def refresh(request: Request) -> Response:
        refresher = daemon.find(request.path_params["name"])
        if refresher is None:
            return _unknown_app(daemon, request.path_params["name"])
        report = await _read_report(request)
        if isinstance(report, Response):
            return report
        token, token_fingerprint = report
        answer = await refresher.report_rejected(token=token, token_fingerprint=token_fingerprint)
        return passive_response(answer, daemon.clock.now())

    async def reload(_: Request) -> Response:
        """A full reload, answered when it is done: 200 applied or unchanged, 422 failed."""
        outcome = await daemon.reload_and_wait()
        return JSONResponse(
            {
                "result": outcome.result,
                "problems": list(outcome.problems),
                "changes": outcome.changes,
            },
            status_code=422 if outcome.result == "failed" else 200,
        )

    async def no_such_app(request: Request) -> Response:
        """Any other path under /v1/apps/ (``..%2F..``, a slash in a name) names no app."""
        return _unknown_app(daemon, request.path_params["rest"])

    return [
        Route("/v1/apps", apps, methods=["GET"]),
        Route("/v1/apps/{name}", one_app, methods=["GET"]),
        Route("/v1/apps/{name}/refresh", refresh, methods=["POST"]),
        Route("/v1/apps/{name}/jssdk-signature", jssdk_signature, methods=["POST"]),
        Route("/v1/apps/{rest:path}", no_such_app, methods=["GET", "POST"]),
        Route("/v1/reload", reload, methods=["POST"]),
    ]


def _describe_app(daemon: Service, name: str, now: float) -> dict[str, Any]:
    data = describe(daemon.refreshers[name].status(), now)
    tickets = daemon.tickets.get(name, {})
    if tickets:
        data["tickets"] = {kind: describe(t.status(), now) for kind, t in tickets.items()}
    return data


class SigningError(Exception):
    """Why a page cannot be signed now; ``status`` is the HTTP answer."""

    def __init__(self, message: str, status: int) -> None:
        self.status = status
        super().__init__(message)


def sign_page(daemon: Service, name: str, url: str, *, agent: bool = False) -> dict[str, object]:
    """wx.config (or, for WeCom with ``agent``, wx.agentConfig) fields for ``url``."""
    app = daemon.refreshers[name].app
    kind = signing_ticket(app, agent=agent, flag='"agent": true')
    ticket = daemon.tickets.get(name, {}).get(kind)
    if ticket is None:  # a reload is adding it right now
        raise SigningError(f"{name} has no {kind} ticket yet: it is being added", 503)
    if ticket.record is None or not ticket.has_valid_token():
        raise SigningError(f"{name} has no valid {kind} ticket yet: {ticket.status().state}", 503)
    return signed_fields(app, ticket.record.access_token, url, int(daemon.clock.now()), agent)


def signing_ticket(app: AppConfig, *, agent: bool, flag: str) -> Ticket:
    """The ticket that signs ``app``'s pages (``agent``: wx.agentConfig), or why there is none.

    ``flag`` is how the caller asked for wx.agentConfig (``--agent``, ``"agent": true``).
    """
    if agent and app.kind != "wecom":
        raise SigningError(
            f"{app.name} is not a WeCom app: {flag} (wx.agentConfig) is for WeCom apps only;"
            " sign wx.config without it",
            409,
        )
    kind: Ticket = "agent_config" if agent else "jsapi"
    if kind not in app.tickets:
        fix = f"add tickets: [{kind}] to it"
        if agent and app.agentid is None:
            fix += " and agentid: (the application's AgentId)"
        raise SigningError(f"{app.name} keeps no {kind} ticket: {fix}", 409)
    return kind


def signed_fields(
    app: AppConfig, ticket: str, url: str, timestamp: int, agent: bool
) -> dict[str, object]:
    try:
        fields = jssdk_config(app_id=app.appid, ticket=ticket, url=url, timestamp=timestamp)
    except ValueError as exc:
        raise SigningError(str(exc), 400) from None
    if agent:  # wx.agentConfig names the corp and the application
        fields = {"corpid": fields.pop("appId"), "agentid": app.agentid, **fields}
    return fields


def passive_response(answer: Passive, now: float) -> Response:
    body: dict[str, Any] = {
        "result": answer.result,
        "detail": answer.detail,
        "app": describe(answer.status, now),
    }
    headers = {}
    if answer.retry_after is not None:
        body["retry_after"] = round(answer.retry_after, 1)
        headers["Retry-After"] = str(max(1, round(answer.retry_after)))
    return JSONResponse(body, status_code=_PASSIVE_STATUS[answer.result], headers=headers)


async def _read_report(request: Request) -> tuple[str | None, str | None] | Response:
    """(token, fingerprint) from the body, or the 400 answer saying what is wrong."""
    usage = (
        'send JSON {"access_token": "<the rejected token>"} or {"fingerprint": "<its 8 hex'
        ' digits>"}'
    )
    try:
        body = json_object(await request.body())
    except BadBody as exc:
        return JSONResponse({"error": f"{exc}: {usage}"}, status_code=400)
    token, token_fingerprint = body.get("access_token"), body.get("fingerprint")
    if isinstance(token, str) and token:
        return token, None
    if isinstance(token_fingerprint, str) and len(token_fingerprint) == 8:
        return None, token_fingerprint.lower()
    return JSONResponse({"error": usage}, status_code=400)


def _unknown_app(daemon: Service, name: str) -> Response:
    known = sorted(daemon.refreshers)[:20]
    return JSONResponse({"error": f"no app named {_quoted(name)}", "apps": known}, status_code=404)
