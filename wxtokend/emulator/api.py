"""Generic WeChat API endpoints: every call checks its token, as WeChat's APIs do.

What a proxy in front of WeChat needs to be tested for real: ``POST
/cgi-bin/media/upload`` reads any size of body as a stream and answers its size and
SHA-256; ``GET /cgi-bin/media/get?size=N`` streams N bytes of media (``X-Media-SHA256``
names them); any other path under an API root echoes the method, path, query (without
``access_token``), body size and JSON body, or answers ``emulator_errcode=N`` if the query
asks for that errcode (an API's own error). Each call counts ``api_calls`` for the
token's app, and ``api_rejected`` when the token was not valid.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterator
from typing import Final

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from wxtokend.emulator.replies import Reply, error
from wxtokend.emulator.state import WeChatState

__all__ = ["MAX_ECHO_BYTES", "MAX_MEDIA_BYTES", "api_routes", "media_bytes"]

MAX_ECHO_BYTES: Final = 1024 * 1024
MAX_MEDIA_BYTES: Final = 256 * 1024 * 1024
_ROOTS: Final = ("cgi-bin", "wxa", "sns", "datacube", "card", "customservice", "merchant")
_PATTERN: Final = bytes(range(256)) * 256  # 64 KiB: media are this, repeated
_METHODS: Final = ["GET", "POST", "PUT", "DELETE", "PATCH"]


def media_bytes(size: int) -> AsyncIterator[bytes]:
    """The ``size`` bytes ``media/get`` sends: the 256 byte values over and over."""

    async def chunks() -> AsyncIterator[bytes]:
        left = size
        while left > 0:
            piece = _PATTERN[: min(left, len(_PATTERN))]
            left -= len(piece)
            yield piece

    return chunks()


def _media_sha256(size: int) -> str:
    digest = hashlib.sha256()
    whole, rest = divmod(size, len(_PATTERN))
    for _ in range(whole):
        digest.update(_PATTERN)
    digest.update(_PATTERN[:rest])
    return digest.hexdigest()


def api_routes(state: WeChatState) -> list[Route]:
    """The generic endpoints; mount them after every specific route."""

    def rejection(request: Request) -> Reply | None:
        token = request.query_params.get("access_token", "")
        appid, _ = state.token_owner(token)
        state.core.count(appid, "api_calls")
        now = state.core.clock()
        answer = (
            state.open_platform.check_authorizer_token(token, now)
            or state.wecom_suites.check_corp_token(token, now)
            or state.official.check_token(token, counted=False)
        )
        if answer.get("errcode", 0) == 0:
            return None
        state.core.count(appid, "api_rejected")
        return answer

    async def upload(request: Request) -> Response:
        rejected = rejection(request)
        if rejected is not None:
            return JSONResponse(rejected)
        digest, size = hashlib.sha256(), 0
        async for chunk in request.stream():
            digest.update(chunk)
            size += len(chunk)
        media_type = request.query_params.get("type", "")
        return JSONResponse(
            {
                "type": media_type,
                "media_id": f"media-{digest.hexdigest()[:16]}-{size}",
                "created_at": int(state.core.clock()),
                "size": size,
                "sha256": digest.hexdigest(),
            }
        )

    async def download(request: Request) -> Response:
        rejected = rejection(request)
        if rejected is not None:
            # WeChat answers a failed media/get in JSON labelled text/plain.
            return Response(json.dumps(rejected), media_type="text/plain")
        size_text = request.query_params.get("size", "1024")
        if not size_text.isdigit() or int(size_text) > MAX_MEDIA_BYTES:
            return JSONResponse(error(40007, "invalid media_id"))
        size = int(size_text)
        return StreamingResponse(
            media_bytes(size),
            media_type="image/jpeg",
            headers={
                "Content-Length": str(size),
                "Content-Disposition": 'attachment; filename="media.jpg"',
                "X-Media-SHA256": _media_sha256(size),
            },
        )

    async def echo(request: Request) -> Response:
        rejected = rejection(request)
        if rejected is not None:
            return JSONResponse(rejected)
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_ECHO_BYTES:
                return JSONResponse(error(44002, "post data too large"), status_code=413)
        try:
            parsed = json.loads(body) if body else None
        except ValueError:
            parsed = None
        query = {k: v for k, v in request.query_params.items() if k != "access_token"}
        wanted = query.get("emulator_errcode", "")
        if wanted.lstrip("-").isdigit():
            return JSONResponse(error(int(wanted), "the errcode this call asked for"))
        return JSONResponse(
            {
                "errcode": 0,
                "errmsg": "ok",
                "method": request.method,
                "path": request.url.path,
                "query": query,
                "size": len(body),
                "sha256": hashlib.sha256(body).hexdigest(),
                "json": parsed,
                "headers": {k: v for k, v in request.headers.items() if k.startswith("x-")},
            }
        )

    return [
        Route("/cgi-bin/media/upload", upload, methods=["POST"]),
        Route("/cgi-bin/media/get", download, methods=["GET"]),
        *(Route(f"/{root}/{{rest:path}}", echo, methods=_METHODS) for root in _ROOTS),
    ]
