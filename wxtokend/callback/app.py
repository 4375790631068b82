"""The callback listener: the one address meant to face WeChat, serving nothing else.

``POST /callback/<name>`` takes a platform's (or suite's) encrypted callback,
answers ``success`` once it is checked and its event handed on, and refuses
anything else: an unknown name 404, a forged, replayed or foreign callback 403,
a malformed one 400 — each with a short reason, never a secret, and logged once.
:func:`handle_callback` is the same for the admin API's forwarding endpoint.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from wxtokend.callback.crypto import Forged
from wxtokend.callback.events import Event
from wxtokend.callback.intake import Intake
from wxtokend.errors import BadCallback
from wxtokend.guard import RequestGuard
from wxtokend.logs import get_logger

__all__ = ["CALLBACK_BODY_LIMIT", "Count", "Deliver", "callback_app", "handle_callback"]

CALLBACK_BODY_LIMIT = 64 * 1024  # a callback is well under 2 KiB
Deliver = Callable[[str, Event], Awaitable[None]]
Count = Callable[[str, str], None]  # (platform, result) for the callbacks metric


def _uncounted(platform: str, result: str) -> None:
    return None


async def handle_callback(
    request: Request, name: str, intake: Intake, deliver: Deliver, count: Count = _uncounted
) -> Response:
    """Open one callback and hand its event on; the answer WeChat expects, or a refusal."""
    body = await request.body()
    try:
        event = intake.open(body, request.query_params)
    except BadCallback as exc:
        get_logger().warning("callback refused", platform=name, reason=str(exc))
        forged = isinstance(exc, Forged)
        count(name, "forged" if forged else "malformed")
        return PlainTextResponse(f"refused: {exc}\n", status_code=403 if forged else 400)
    count(name, "accepted")
    if event is not None:
        await deliver(name, event)
    return PlainTextResponse("success")


def callback_app(
    *, intakes: Mapping[str, Intake], deliver: Deliver, count: Count = _uncounted
) -> Starlette:
    async def callback(request: Request) -> Response:
        name = request.path_params["name"]
        intake = intakes.get(name)
        if intake is None:
            return PlainTextResponse("no such callback\n", status_code=404)
        return await handle_callback(request, name, intake, deliver, count)

    async def nothing(_: Request) -> Response:
        return PlainTextResponse("not found\n", status_code=404)

    return Starlette(
        routes=[
            Route("/callback/{name}", callback, methods=["POST"]),
            Route("/{rest:path}", nothing, methods=["GET", "POST", "PUT", "DELETE", "HEAD"]),
        ],
        middleware=[Middleware(RequestGuard, limit=lambda _: CALLBACK_BODY_LIMIT)],
    )
