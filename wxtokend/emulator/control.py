"""The operator's control endpoints under ``/emulator/``: counters, apps, faults, revocation.

Each takes a JSON object and answers ``{"ok": true}``, or HTTP 400 with ``{"error": ...}``.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping
from typing import Literal

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from wxtokend.emulator.config import Grant, faults_from
from wxtokend.emulator.state import WeChatState

__all__ = ["control_routes", "parse_object"]


def parse_object(raw: bytes) -> dict[str, object] | None:
    try:
        data = json.loads(raw)
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


def _required_text(body: Mapping[str, object], key: str) -> str:
    value = body.get(key)
    if not isinstance(value, str) or not value:
        raise ValueError(f"{key} must be a non-empty string")
    return value


def _optional_text(body: Mapping[str, object], key: str) -> str | None:
    value = body.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise ValueError(f"{key} must be a non-empty string or absent")
    return value


def _grant_from(value: object) -> Grant | Literal["wecom"]:
    if value == "classic":
        return "classic"
    if value == "stable":
        return "stable"
    if value == "wecom":
        return "wecom"
    raise ValueError('grant must be "classic", "stable" or "wecom"')


def _control(
    action: Callable[[dict[str, object]], None],
) -> Callable[[Request], Awaitable[Response]]:
    """Wrap an operator action: JSON object in, ``{"ok": true}`` or HTTP 400 out."""

    async def endpoint(request: Request) -> Response:
        raw = await request.body()
        body = parse_object(raw) if raw.strip() else {}
        try:
            if body is None:
                raise ValueError("body must be a JSON object")
            action(body)
        except ValueError as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        return JSONResponse({"ok": True})

    return endpoint


def control_routes(state: WeChatState) -> list[Route]:
    """The ``/emulator/`` routes acting on ``state``."""

    async def stats(request: Request) -> Response:
        return JSONResponse({"apps": state.stats(), "now": state.now()})

    async def check_ticket(request: Request) -> Response:
        ticket = request.query_params.get("ticket", "")
        if not ticket:
            return JSONResponse({"error": "ticket is required"}, status_code=400)
        return JSONResponse(state.check_ticket(ticket))

    def reset_stats(body: dict[str, object]) -> None:
        state.reset_stats()

    def set_app(body: dict[str, object]) -> None:
        kind = body.get("kind", "official")
        if kind == "wecom":
            state.set_wecom_app(_required_text(body, "corpid"), _required_text(body, "secret"))
        elif kind == "official":
            state.set_app(_required_text(body, "appid"), _required_text(body, "secret"))
        else:
            raise ValueError('kind must be "official" or "wecom"')

    def set_faults(body: dict[str, object]) -> None:
        appid = body.get("appid")
        if appid is not None and not isinstance(appid, str):
            raise ValueError("appid must be a string or absent")
        if "faults" not in body:
            raise ValueError("faults is required: an object, or null to clear")
        raw = body["faults"]
        faults = None if raw is None else faults_from(raw, "faults")
        secret = _optional_text(body, "secret")
        if secret is not None and appid is None:
            raise ValueError("secret needs appid (the corpid)")
        state.set_faults(appid, faults, secret=secret or "")

    def revoke(body: dict[str, object]) -> None:
        appid, grant = _required_text(body, "appid"), _grant_from(body.get("grant"))
        state.revoke(appid, grant, secret=_optional_text(body, "secret"))

    return [
        Route("/emulator/stats", stats, methods=["GET"]),
        Route("/emulator/check-ticket", check_ticket, methods=["GET"]),
        Route("/emulator/reset-stats", _control(reset_stats), methods=["POST"]),
        Route("/emulator/apps", _control(set_app), methods=["POST"]),
        Route("/emulator/faults", _control(set_faults), methods=["POST"]),
        Route("/emulator/revoke", _control(revoke), methods=["POST"]),
    ]
