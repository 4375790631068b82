"""WeCom suites' HTTP side: the service endpoints and the ``/emulator/suites`` controls.

See :mod:`wxtokend.emulator.wecom_suite` for what is modelled; pushes go through
the same pusher as the Open Platform's.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from wxtokend.emulator.control import parse_object
from wxtokend.emulator.openplatform import text
from wxtokend.emulator.replies import Reply, error
from wxtokend.emulator.wecom_suite import ID, SuiteState, WeComSuites

__all__ = ["suite_routes"]

Push = Callable[[str, bytes], Any]  # (suite_id, inner XML) → awaitable "was it accepted"


def suite_routes(suites: WeComSuites, clock: Callable[[], float], push: Push) -> list[Route]:
    """WeCom's service endpoints and the ``/emulator/suites`` controls."""

    def with_suite(answer: Callable[[SuiteState, dict[str, object], float], Reply]) -> Any:
        async def handle(request: Request) -> Response:
            body = parse_object(await request.body())
            if body is None:
                return JSONResponse(error(47001, "data format error"))
            now = clock()
            suite, refused = suites.suite_error(
                request.query_params.get("suite_access_token", ""), now
            )
            return JSONResponse(refused if suite is None else answer(suite, body, now))

        return handle

    def plain(answer: Callable[[dict[str, object], float], Reply]) -> Any:
        async def handle(request: Request) -> Response:
            body = parse_object(await request.body())
            return JSONResponse(
                error(47001, "data format error") if body is None else answer(body, clock())
            )

        return handle

    async def control(request: Request) -> Response:
        suite_id, action = request.path_params["suite"], request.path_params["action"]
        if suite_id not in suites.platforms:
            return JSONResponse({"error": f"no suite {suite_id[:32]!r}"}, status_code=404)
        body = parse_object(await request.body() or b"{}") or {}
        now = clock()
        if action == "push-ticket":
            return JSONResponse({"pushed": await push(suite_id, suites.new_ticket(suite_id, now))})
        if action == "create-auth":
            corpid, code, message = suites.create_auth(suite_id, now)
            pushed = await push(suite_id, message)
            return JSONResponse({"pushed": pushed, "corpid": corpid, "auth_code": code})
        corpid = text(body, "corpid")
        if not ID.fullmatch(corpid):
            return JSONResponse({"error": "corpid is required"}, status_code=400)
        if action == "cancel-auth":
            return JSONResponse(
                {"pushed": await push(suite_id, suites.cancel_auth(suite_id, corpid, now))}
            )
        if action == "revoke-permanent-code":
            suites.revoke_permanent_code(suite_id, corpid)
            return JSONResponse({"ok": True})
        return JSONResponse({"error": f"no action {action[:32]!r}"}, status_code=404)

    async def stats(_: Request) -> Response:
        return JSONResponse({"suites": suites.stats()})

    service = "/cgi-bin/service"
    return [
        Route(f"{service}/get_suite_token", plain(suites.suite_token), methods=["POST"]),
        Route(f"{service}/get_provider_token", plain(suites.provider_token), methods=["POST"]),
        Route(f"{service}/get_permanent_code", with_suite(suites.permanent_code), methods=["POST"]),
        Route(f"{service}/get_corp_token", with_suite(suites.corp_token), methods=["POST"]),
        Route("/emulator/suites", stats, methods=["GET"]),
        Route("/emulator/suites/{suite}/{action}", control, methods=["POST"]),
    ]
