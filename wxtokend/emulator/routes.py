"""The HTTP side: WeChat's endpoints and the control endpoints on one Starlette app.

Handlers read the request, let a fault hijack the call, and hand the rest straight to the
product part of the state (official, WeCom): no facade call on the request path.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from wxtokend.asgi import base_url, serve, tcp_listener
from wxtokend.emulator.api import api_routes
from wxtokend.emulator.config import EmulatorConfig
from wxtokend.emulator.control import control_routes, parse_object
from wxtokend.emulator.core import Endpoint
from wxtokend.emulator.faults import held, hijack
from wxtokend.emulator.platform_routes import Pusher, platform_routes
from wxtokend.emulator.replies import error
from wxtokend.emulator.state import WeChatState
from wxtokend.emulator.suite_routes import suite_routes

__all__ = ["Emulator"]


def _client_ip(request: Request) -> str:
    host = request.client.host if request.client else ""
    # A dual-stack listener reports IPv4 peers as ::ffff:a.b.c.d; the whitelist holds a.b.c.d.
    return host.removeprefix("::ffff:") if "." in host else host


def _text_field(body: dict[str, object], key: str) -> str:
    """A string parameter; anything else counts as missing, as a lenient server would."""
    value = body.get(key)
    return value if isinstance(value, str) else ""


class Emulator:
    """The state behind a Starlette app, served by uvicorn on loopback.

    Control endpoints (JSON bodies; ``{"ok": true}`` or HTTP 400 with ``{"error": ...}``):

    - ``GET /emulator/stats``: ``{"apps": {appid or corpid: {counter: n}}, "now": t}``.
    - ``POST /emulator/reset-stats``.
    - ``POST /emulator/apps``: ``{"appid", "secret"}`` adds an app or changes its secret;
      ``{"kind": "wecom", "corpid", "secret"}`` adds an application to a WeCom corp.
    - ``POST /emulator/faults``: ``{"appid"?, "secret"?, "faults": {...} | null}``: one app's
      faults (WeCom: ``appid`` is the corpid; with ``secret``, one application only), or the
      default without ``appid``; null clears.
    - ``POST /emulator/revoke``: ``{"appid", "grant": "classic" | "stable"}``, or
      ``{"appid": corpid, "grant": "wecom"}`` for the tokens of every application of the corp,
      with ``"secret"`` for one application's only.
    - ``GET /emulator/check-ticket?ticket=T``: ``{"valid": true, "appid", "type"}`` or
      ``{"valid": false, "reason": "expired" | "invalidated" | "unknown"}``.
    """

    def __init__(self, config: EmulatorConfig, *, clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.state = WeChatState(config, clock=clock)
        self.pusher = Pusher(self.state.open_platform, clock=clock)
        self.suite_pusher = Pusher(self.state.wecom_suites, clock=clock)
        self.app = Starlette(
            routes=[
                Route("/cgi-bin/token", held(self._token), methods=["GET", "POST"]),
                Route("/cgi-bin/stable_token", held(self._stable_token), methods=["GET", "POST"]),
                Route("/cgi-bin/gettoken", held(self._gettoken), methods=["GET"]),
                Route("/cgi-bin/getcallbackip", self._getcallbackip, methods=["GET"]),
                Route("/cgi-bin/ticket/getticket", held(self._getticket), methods=["GET"]),
                Route("/cgi-bin/get_jsapi_ticket", held(self._get_jsapi_ticket), methods=["GET"]),
                Route("/cgi-bin/ticket/get", held(self._ticket_get), methods=["GET"]),
                *control_routes(self.state),
                *platform_routes(self.state.open_platform, self.state.core, self.pusher),
                *suite_routes(self.state.wecom_suites, clock, self.suite_pusher.push_once),
                *api_routes(self.state),  # last: they answer any path under an API root
            ]
        )

    async def serve(
        self, *, sock: socket.socket | None = None, ready: Callable[[str], None] | None = None
    ) -> None:
        """Serve until cancelled; ``ready`` gets the base URL once connections are accepted.

        Listens on ``sock`` when given (serve owns it from then on and closes it), otherwise
        binds ``config.host:config.port``.
        """
        listener = tcp_listener(
            sock if sock is not None else await _bind(self.config.host, self.config.port)
        )
        url = base_url(listener)
        pushes = [
            asyncio.create_task(pusher.run())
            for pusher, wanted in (
                (self.pusher, self.config.platforms),
                (self.suite_pusher, self.config.suites),
            )
            if wanted
        ]
        try:
            await serve(self.app, [listener], ready=(lambda: ready(url)) if ready else None)
        finally:
            for task in pushes:
                task.cancel()

    async def _token(self, request: Request) -> Response:
        query = request.query_params
        appid = query.get("appid", "")
        if request.method != "GET":
            self.state.core.count(appid, "token")
            return JSONResponse(error(43002, "require GET method"))
        hijacked = await self._inject_fault("token", appid, force=False)
        if hijacked is not None:
            return hijacked
        reply = self.state.official.classic_token(
            grant_type=query.get("grant_type", ""),
            appid=appid,
            secret=query.get("secret", ""),
            client_ip=_client_ip(request),
        )
        return JSONResponse(reply)

    async def _stable_token(self, request: Request) -> Response:
        if request.method != "POST":
            self.state.core.count(request.query_params.get("appid", ""), "stable_token")
            return JSONResponse(error(43002, "require POST method"))
        body = parse_object(await request.body())
        fields = body if body is not None else {}
        appid = _text_field(fields, "appid")
        force = fields.get("force_refresh") is True
        hijacked = await self._inject_fault("stable_token", appid, force=force)
        if hijacked is not None:
            return hijacked
        if body is None:
            return JSONResponse(error(47001, "data format error"))
        reply = self.state.official.stable_token(
            grant_type=_text_field(body, "grant_type"),
            appid=appid,
            secret=_text_field(body, "secret"),
            force=force,
            client_ip=_client_ip(request),
        )
        return JSONResponse(reply)

    async def _gettoken(self, request: Request) -> Response:
        query = request.query_params
        corpid, corpsecret = query.get("corpid", ""), query.get("corpsecret", "")
        hijacked = await self._inject_fault("gettoken", corpid, secret=corpsecret)
        if hijacked is not None:
            return hijacked
        reply = self.state.wecom.gettoken(
            corpid=corpid, corpsecret=corpsecret, client_ip=_client_ip(request)
        )
        return JSONResponse(reply)

    async def _getticket(self, request: Request) -> Response:
        access_token = request.query_params.get("access_token", "")
        hijacked = await self._inject_ticket_fault("getticket", access_token)
        if hijacked is not None:
            return hijacked
        ticket_type = request.query_params.get("type", "")
        return JSONResponse(
            self.state.official.getticket(access_token=access_token, ticket_type=ticket_type)
        )

    async def _get_jsapi_ticket(self, request: Request) -> Response:
        access_token = request.query_params.get("access_token", "")
        hijacked = await self._inject_ticket_fault("get_jsapi_ticket", access_token)
        if hijacked is not None:
            return hijacked
        reply = self.state.wecom.jsapi_ticket(
            access_token=access_token, client_ip=_client_ip(request)
        )
        return JSONResponse(reply)

    async def _ticket_get(self, request: Request) -> Response:
        access_token = request.query_params.get("access_token", "")
        hijacked = await self._inject_ticket_fault("ticket_get", access_token)
        if hijacked is not None:
            return hijacked
        reply = self.state.wecom.ticket(
            access_token=access_token,
            ticket_type=request.query_params.get("type", ""),
            client_ip=_client_ip(request),
        )
        return JSONResponse(reply)

    async def _inject_ticket_fault(self, endpoint: Endpoint, access_token: str) -> Response | None:
        # A ticket call names its app only through the token: its owner's faults apply.
        appid, secret = self.state.core.tokens.owner_of(access_token)
        return await self._inject_fault(endpoint, appid, secret=secret)

    async def _inject_fault(
        self, endpoint: Endpoint, appid: str, *, force: bool = False, secret: str = ""
    ) -> Response | None:
        """The response a fault replaces the real answer with; None to answer normally."""
        core = self.state.core
        fault = core.admit(endpoint, appid, force=force, secret=secret)
        if fault is None:
            return None
        return await hijack(fault, core.faults_for(appid, secret), core.rng)

    async def _getcallbackip(self, request: Request) -> Response:
        access_token = request.query_params.get("access_token", "")
        now = self.state.core.clock()
        for third_party in (
            self.state.open_platform.check_authorizer_token,
            self.state.wecom_suites.check_corp_token,
        ):
            answer = third_party(access_token, now)
            if answer is not None:
                return JSONResponse(answer)
        return JSONResponse(self.state.official.check_token(access_token))


async def _bind(host: str, port: int) -> socket.socket:
    infos = await asyncio.get_running_loop().getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )
    family, *_, address = infos[0]
    # A deep backlog: the tests open a thousand connections at once.
    return socket.create_server(address[:2], family=family, backlog=4096)
