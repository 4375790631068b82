"""Requests from outside: headers and bodies capped in size and time; one JSON validator.

:class:`RequestGuard` wraps an ASGI app. A request line and headers over
:data:`HEADER_LIMIT` bytes in all are answered 431 (h11 caps only headers still
arriving; a block that arrives in one piece is parsed whatever its size). A
declared ``Content-Length`` over the limit is answered 413 before a byte of the
body is read; a chunked body is counted while it arrives and cut off the same
way; a body not finished within the deadline is answered 408. Either way the
connection is closed, so the rest of a body is never read. The app then
receives the whole body at once.

:func:`json_object` is the one parser for JSON bodies: whatever is wrong with
one (not UTF-8, not JSON, nested past reason, a number of thousands of digits,
not an object) becomes a :class:`BadBody` with a sentence, never a traceback.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import anyio
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = [
    "DEFAULT_BODY_LIMIT",
    "HEADER_LIMIT",
    "BadBody",
    "RequestGuard",
    "json_object",
    "refuse",
]

DEFAULT_BODY_LIMIT = 16 * 1024
HEADER_LIMIT = 16 * 1024


class BadBody(ValueError):
    """A request body that cannot be used; the message says why, for the client."""


def json_object(raw: bytes) -> dict[str, Any]:
    """The JSON object in ``raw``; BadBody saying what is wrong otherwise."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise BadBody("body is not UTF-8") from None
    try:
        value = json.loads(text, parse_constant=_refuse_constant)
    except RecursionError:
        raise BadBody("body is JSON nested too deeply") from None
    except BadBody:
        raise
    except ValueError as exc:  # also a number past int's digit limit
        raise BadBody(f"body is not JSON ({_first_line(exc)})") from None
    if not isinstance(value, dict):
        raise BadBody(f"body is JSON {type(value).__name__}, not an object")
    return value


def _refuse_constant(name: str) -> float:
    raise BadBody(f"body is not JSON ({name} is not a JSON number)")


def _first_line(exc: Exception) -> str:
    return str(exc).splitlines()[0][:120]


class RequestGuard:
    """An ASGI middleware holding headers to HEADER_LIMIT, bodies to ``limit(path)`` bytes and
    ``timeout`` s."""

    def __init__(self, app: ASGIApp, *, limit: Callable[[str], int], timeout: float = 10.0) -> None:
        self.app = app
        self.limit = limit
        self.timeout = timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if _header_bytes(scope) > HEADER_LIMIT:
            await refuse(send, 431, f"request line and headers over {HEADER_LIMIT} bytes")
            return
        if not _has_body(scope):
            await self.app(scope, receive, send)
            return
        limit = self.limit(scope["path"])
        declared = _header(scope, b"content-length")
        if declared is not None and (not declared.isdigit() or len(declared) > 12):
            await refuse(send, 400, "Content-Length is not a number of bytes")
            return
        if declared is not None and int(declared) > limit:
            await refuse(send, 413, f"request body over {limit} bytes")
            return
        try:
            with anyio.fail_after(self.timeout):
                body = await _read(receive, limit)
        except TimeoutError:
            await refuse(send, 408, f"request body not received within {self.timeout:g} s")
            return
        if body is None:
            await refuse(send, 413, f"request body over {limit} bytes")
            return
        await self.app(scope, _replay(body, receive), send)


def _header_bytes(scope: Scope) -> int:
    headers = sum(len(name) + len(value) + 4 for name, value in scope["headers"])
    return headers + len(scope.get("raw_path", b"")) + len(scope.get("query_string", b""))


def _has_body(scope: Scope) -> bool:
    return any(name in (b"content-length", b"transfer-encoding") for name, _ in scope["headers"])


def _header(scope: Scope, wanted: bytes) -> str | None:
    for name, value in scope["headers"]:
        if name == wanted:
            return bytes(value).decode("latin-1").strip()
    return None


async def _read(receive: Receive, limit: int) -> bytes | None:
    """The whole body, or None as soon as it passes ``limit`` bytes."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":  # the client went away
            return b""
        chunk = bytes(message.get("body", b""))
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    """A receive that hands the app the body once, then waits for the disconnect."""
    sent = False

    async def replayed() -> Message:
        nonlocal sent
        if sent:
            return await receive()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replayed


async def refuse(send: Send, status: int, message: str, *, retry_after: int | None = None) -> None:
    """Answer ``{"error": message}`` and close: whatever the client sends next is never read."""
    payload = json.dumps({"error": message}).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(payload)).encode()),
        (b"connection", b"close"),
    ]
    if retry_after is not None:
        headers.append((b"retry-after", str(retry_after).encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})
