"""The admin API's view of third-party platforms: listings, paged, and no token in them."""

from __future__ import annotations

from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from wxtokend.callback.app import handle_callback

if TYPE_CHECKING:
    from wxtokend.service import Service

__all__ = ["MAX_PAGE", "platform_routes"]

MAX_PAGE = 1000  # authorizers per page of /v1/platforms/<name>/authorizers


def platform_routes(daemon: Service) -> list[Route]:
    async def platforms(_: Request) -> Response:
        now, found = daemon.clock.now(), daemon.platforms
        views = [v for n in found.names() if (v := found.get(n)) is not None]
        return JSONResponse({"platforms": [v.summary(now) for v in views]})

    async def one_platform(request: Request) -> Response:
        platform = daemon.platforms.get(request.path_params["name"])
        if platform is None:
            return _unknown(daemon, request.path_params["name"])
        return JSONResponse(platform.summary(daemon.clock.now()))

    async def authorizers(request: Request) -> Response:
        platform = daemon.platforms.get(request.path_params["name"])
        if platform is None:
            return _unknown(daemon, request.path_params["name"])
        try:
            offset = int(request.query_params.get("offset", "0"))
            limit = int(request.query_params.get("limit", "100"))
        except ValueError:
            offset = limit = -1
        if offset < 0 or not 1 <= limit <= MAX_PAGE:
            return JSONResponse(
                {"error": f"offset must be ≥ 0 and limit 1 to {MAX_PAGE}"}, status_code=400
            )
        return JSONResponse(platform.page(offset, limit, daemon.clock.now()))

    async def forwarded(request: Request) -> Response:
        """A platform's own callback server forwards WeChat's raw body and query here."""
        name = request.path_params["name"]
        intake = daemon.platforms.intakes().get(name)
        if intake is None:
            return _unknown(daemon, name)
        return await handle_callback(
            request, name, intake, daemon.platforms.deliver, daemon.metrics.callback
        )

    return [
        Route("/v1/platforms", platforms, methods=["GET"]),
        Route("/v1/platforms/{name}/callback", forwarded, methods=["POST"]),
        Route("/v1/platforms/{name}", one_platform, methods=["GET"]),
        Route("/v1/platforms/{name}/authorizers", authorizers, methods=["GET"]),
    ]


def _unknown(daemon: Service, name: str) -> Response:
    known = ", ".join(daemon.platforms.names()) or "none"
    return JSONResponse(
        {"error": f"no platform named {name[:64]!r} (platforms: {known})"}, status_code=404
    )
