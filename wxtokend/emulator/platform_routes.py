"""The Open Platform's HTTP side: its endpoints, its pushes, and its control endpoints.

Pushes go to each platform's ``callback_url`` as WeChat sends them: the message
sealed with the platform's crypto, POSTed with ``timestamp``, ``nonce``,
``msg_signature`` and ``encrypt_type=aes``. A push that fails is counted
(``push_failures``), never fatal. Control endpoints (JSON bodies):

- ``POST /emulator/platforms/<component_appid>/push-ticket``: push a new ticket now.
- ``POST /emulator/platforms/<component_appid>/authorize``: ``{"authorizer_appid"?,
  "update"?}`` pushes ``authorized`` (or ``updateauthorized``); answers the appid and code.
- ``POST /emulator/platforms/<component_appid>/unauthorize``: ``{"authorizer_appid"}``.
- ``POST /emulator/platforms/<component_appid>/revoke-refresh-token``: ``{"authorizer_appid"}``.
- ``POST /emulator/platforms/<component_appid>/revoke-token``: ``{"authorizer_appid"}``: its
  access tokens die (40001), its refresh token lives.
- ``GET /emulator/platforms``: counters per endpoint and refreshes per authorizer.
"""

from __future__ import annotations

import asyncio
import re
import secrets
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import httpx
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from wxtokend.callback.crypto import MessageCrypto
from wxtokend.emulator.control import parse_object
from wxtokend.emulator.core import Core
from wxtokend.emulator.faults import hijack, roll
from wxtokend.emulator.openplatform import OpenPlatform
from wxtokend.emulator.replies import Reply, error

__all__ = ["Pushed", "Pusher", "platform_routes"]

_WXID = re.compile(r"wx[0-9a-f]{16}")


class _Receiver(Protocol):
    """A platform or suite as the pusher sees it."""

    @property
    def config(self) -> Any: ...  # its callback_url and ticket_push_interval

    @property
    def crypto(self) -> MessageCrypto: ...


class Pushed(Protocol):
    """Open Platform platforms or WeCom suites: the receivers, and a new ticket's message."""

    @property
    def platforms(self) -> Mapping[str, _Receiver]: ...

    def new_ticket(self, receiver: str, now: float) -> bytes: ...


class Pusher:
    """Sends sealed messages to platforms' callback URLs; pushes tickets on a timer."""

    def __init__(self, open_platform: Pushed, *, clock: Callable[[], float]) -> None:
        self._open = open_platform
        self._clock = clock
        self.failures = 0
        self.sent = 0

    async def run(self) -> None:
        """Push a ticket to every platform at once, then every ``ticket_push_interval``."""
        async with httpx.AsyncClient(timeout=5.0, trust_env=False) as http:
            due = dict.fromkeys(self._open.platforms, 0.0)
            while True:
                now = self._clock()
                for component, at in due.items():
                    if at <= now:
                        message = self._open.new_ticket(component, now)
                        await self.push(http, component, message)
                        interval = self._open.platforms[component].config.ticket_push_interval
                        due[component] = now + interval
                await asyncio.sleep(max(0.05, min(due.values(), default=now + 60) - self._clock()))

    async def push(self, http: httpx.AsyncClient, component: str, message: bytes) -> bool:
        platform = self._open.platforms[component]
        url = platform.config.callback_url
        if not url:
            return False
        timestamp, nonce = str(int(self._clock())), secrets.token_hex(8)
        body, signature = platform.crypto.seal(message, timestamp=timestamp, nonce=nonce)
        query = {
            "timestamp": timestamp,
            "nonce": nonce,
            "msg_signature": signature,
            "encrypt_type": "aes",
        }
        try:
            response = await http.post(url, params=query, content=body)
            ok = response.status_code == 200 and response.text.strip() == "success"
        except httpx.HTTPError:
            ok = False
        self.sent += ok
        self.failures += not ok
        return ok

    async def push_once(self, component: str, message: bytes) -> bool:
        async with httpx.AsyncClient(timeout=5.0, trust_env=False) as http:
            return await self.push(http, component, message)


def platform_routes(open_platform: OpenPlatform, core: Core, pusher: Pusher) -> list[Route]:
    """WeChat's component endpoints and the ``/emulator/platforms`` controls."""

    def endpoint(answer: Callable[[str, dict[str, object], float], Reply]) -> Callable[..., object]:
        async def handle(request: Request) -> Response:
            body = parse_object(await request.body())
            if body is None:
                return JSONResponse(error(47001, "data format error"))
            component = body.get("component_appid")
            fault = roll(core.rng, core.faults_for(component if isinstance(component, str) else ""))
            if fault is not None:
                hijacked = await hijack(fault, core.faults_for(str(component)), core.rng)
                if hijacked is not None:
                    return hijacked
            upper = request.query_params.get("component_access_token", "")
            return JSONResponse(answer(upper, body, core.clock()))

        return handle

    async def component_token(request: Request) -> Response:
        body = parse_object(await request.body())
        if body is None:
            return JSONResponse(error(47001, "data format error"))
        return JSONResponse(open_platform.component_token(body, core.clock()))

    async def control(request: Request) -> Response:
        component, action = request.path_params["component"], request.path_params["action"]
        if component not in open_platform.platforms:
            return JSONResponse({"error": f"no platform {component[:32]!r}"}, status_code=404)
        body = parse_object(await request.body() or b"{}")
        if body is None:
            return JSONResponse({"error": "body must be a JSON object"}, status_code=400)
        appid = body.get("authorizer_appid")
        if appid is not None and (not isinstance(appid, str) or not _WXID.fullmatch(appid)):
            return JSONResponse({"error": "authorizer_appid must be wx+16 hex"}, status_code=400)
        now = core.clock()
        if action == "push-ticket":
            return JSONResponse(
                {
                    "pushed": await pusher.push_once(
                        component, open_platform.new_ticket(component, now)
                    )
                }
            )
        if action == "authorize":
            message = open_platform.authorize(
                component, appid, now, update=body.get("update") is True
            )
            pushed = await pusher.push_once(component, message)
            text = message.decode()
            return JSONResponse(
                {
                    "pushed": pushed,
                    "authorizer_appid": _between(text, "AuthorizerAppid"),
                    "authorization_code": _between(text, "AuthorizationCode"),
                }
            )
        if appid is None:
            return JSONResponse({"error": "authorizer_appid is required"}, status_code=400)
        if action == "unauthorize":
            return JSONResponse(
                {
                    "pushed": await pusher.push_once(
                        component, open_platform.unauthorize(component, appid, now)
                    )
                }
            )
        if action == "revoke-refresh-token":
            open_platform.revoke_refresh_token(component, appid)
            return JSONResponse({"ok": True})
        if action == "revoke-token":
            open_platform.revoke_tokens(component, appid)
            return JSONResponse({"ok": True})
        return JSONResponse({"error": f"no action {action[:32]!r}"}, status_code=404)

    async def stats(_: Request) -> Response:
        return JSONResponse(
            {
                "platforms": open_platform.stats(),
                "pushed": pusher.sent,
                "push_failures": pusher.failures,
            }
        )

    return [
        Route("/cgi-bin/component/api_component_token", component_token, methods=["POST"]),
        Route(
            "/cgi-bin/component/api_query_auth",
            endpoint(open_platform.query_auth),
            methods=["POST"],
        ),
        Route(
            "/cgi-bin/component/api_authorizer_token",
            endpoint(open_platform.authorizer_token),
            methods=["POST"],
        ),
        Route(
            "/cgi-bin/component/api_get_authorizer_list",
            endpoint(open_platform.authorizer_list),
            methods=["POST"],
        ),
        Route("/emulator/platforms", stats, methods=["GET"]),
        Route("/emulator/platforms/{component}/{action}", control, methods=["POST"]),
    ]


def _between(xml: str, tag: str) -> str:
    start = xml.index(f"<{tag}><![CDATA[") + len(tag) + 11
    return xml[start : xml.index("]]>", start)]
