"""A hostile HTTP server for tests: loopback only, a scripted misbehaviour per request.

It runs an asyncio server in a background thread, so async unit tests and a real daemon
subprocess can both talk to it. :meth:`HostileServer.behave` picks what every following
request gets; ``calls`` counts the requests served per behaviour and ``sent`` the bytes
written for it, so a test can assert what the client asked for and how much it took.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import threading
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

__all__ = [
    "Behaviour",
    "HostileServer",
    "drip",
    "endless",
    "gzip_bomb",
    "header_flood",
    "raw",
    "redirect",
    "respond",
    "short_body",
    "silent",
    "stalled_chunked",
    "token_reply",
]

MB = 1024 * 1024
Send = Callable[[bytes], Awaitable[None]]


@dataclass(frozen=True)
class Behaviour:
    """How to answer one connection: ``act(send, reader)``; ``speaks_first`` writes
    before reading any request (a banner, as a non-HTTP service on the port would)."""

    act: Callable[[Send, asyncio.StreamReader], Awaitable[None]]
    speaks_first: bool = False


def _head(status: str, headers: list[tuple[str, str]]) -> bytes:
    lines = [f"HTTP/1.1 {status}", *(f"{k}: {v}" for k, v in headers), "Connection: close"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def respond(
    body: bytes | dict[str, Any],
    *,
    status: str = "200 OK",
    headers: list[tuple[str, str]] | None = None,
    content_type: str = "application/json",
) -> Behaviour:
    """A well-formed reply (whatever its body says)."""
    data = json.dumps(body).encode() if isinstance(body, dict) else body
    extra = [("Content-Type", content_type), ("Content-Length", str(len(data))), *(headers or [])]

    async def act(send: Send, _: asyncio.StreamReader) -> None:
        await send(_head(status, extra) + data)

    return Behaviour(act)


def token_reply(access_token: Any, expires_in: Any = 7200) -> Behaviour:
    return respond({"access_token": access_token, "expires_in": expires_in})


def raw(data: bytes, *, speaks_first: bool = False) -> Behaviour:
    """Exactly ``data`` on the socket, then hang up."""

    async def act(send: Send, _: asyncio.StreamReader) -> None:
        await send(data)

    return Behaviour(act, speaks_first=speaks_first)


async def _until_hung_up(reader: asyncio.StreamReader) -> None:
    with contextlib.suppress(ConnectionError):
        while await reader.read(4096):
            pass


def silent() -> Behaviour:
    """Accept, read the request, never say a thing until the client gives up."""

    async def act(_: Send, reader: asyncio.StreamReader) -> None:
        await _until_hung_up(reader)

    return Behaviour(act)


def drip(body: bytes, *, interval: float = 0.1) -> Behaviour:
    """A valid reply, one byte every ``interval`` seconds."""
    data = respond(body)

    async def act(send: Send, reader: asyncio.StreamReader) -> None:
        chunks: list[bytes] = []

        async def collect(b: bytes) -> None:
            chunks.append(b)

        await data.act(collect, reader)
        for byte in b"".join(chunks):
            await send(bytes([byte]))
            await asyncio.sleep(interval)

    return Behaviour(act)


def endless(
    *, chunked: bool = False, announce: int | None = None, offer: int = 200 * MB
) -> Behaviour:
    """A 200 whose body goes on (up to ``offer`` bytes): close-delimited, chunked, or
    with a Content-Length of ``announce``."""
    piece = b" " * 65536
    headers = [("Content-Type", "application/json")]
    if chunked:
        headers.append(("Transfer-Encoding", "chunked"))
    elif announce is not None:
        headers.append(("Content-Length", str(announce)))

    async def act(send: Send, _: asyncio.StreamReader) -> None:
        await send(_head("200 OK", headers))
        for _ in range(offer // len(piece)):
            await send(b"10000\r\n" + piece + b"\r\n" if chunked else piece)

    return Behaviour(act)


def stalled_chunked() -> Behaviour:
    """A chunked 200 that sends a first chunk and then neither data nor its end."""

    async def act(send: Send, reader: asyncio.StreamReader) -> None:
        head = _head("200 OK", [("Transfer-Encoding", "chunked")])
        await send(head + b'5\r\n{"acc\r\n')
        await _until_hung_up(reader)

    return Behaviour(act)


def short_body(*, claimed: int, body: bytes, hang_up: bool) -> Behaviour:
    """A Content-Length larger than the body sent; then hang up or hold the line open."""

    async def act(send: Send, reader: asyncio.StreamReader) -> None:
        await send(_head("200 OK", [("Content-Length", str(claimed))]) + body)
        if not hang_up:
            await _until_hung_up(reader)

    return Behaviour(act)


def gzip_bomb(decoded: int) -> Behaviour:
    """``Content-Encoding: gzip`` whose few KiB inflate to ``decoded`` bytes of spaces."""
    compressed = gzip.compress(b" " * decoded, compresslevel=9)
    return respond(compressed, headers=[("Content-Encoding", "gzip")])


def header_flood(*, count: int, size: int = 100) -> Behaviour:
    """A 200 head with ``count`` headers of ``size`` bytes each (or one huge one)."""

    async def act(send: Send, reader: asyncio.StreamReader) -> None:
        await send(b"HTTP/1.1 200 OK\r\n")
        for n in range(count):
            await send(b"X-Flood-%d: %s\r\n" % (n, b"a" * size))
        await send(b"Content-Length: 2\r\n\r\n{}")

    return Behaviour(act)


def redirect(location: str, status: str = "302 Found") -> Behaviour:
    return respond(b"", status=status, headers=[("Location", location)])


class HostileServer:
    """The server; use as a context manager. ``url`` is its ``http://127.0.0.1:PORT``."""

    def __init__(self, behaviours: dict[str, Behaviour]) -> None:
        self.behaviours = behaviours
        self.current = next(iter(behaviours))
        self.calls: Counter[str] = Counter()
        self.sent: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def behave(self, name: str) -> None:
        """Every request from now on gets behaviour ``name``."""
        assert name in self.behaviours, name
        with self._lock:
            self.current = name

    def __enter__(self) -> HostileServer:
        self._thread.start()
        future = asyncio.run_coroutine_threadsafe(self._start(), self._loop)
        self.port = future.result(timeout=10)
        return self

    def __exit__(self, *_: object) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    async def _start(self) -> int:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return int(self._server.sockets[0].getsockname()[1])

    async def _stop(self) -> None:
        assert self._server is not None
        self._server.close()
        for task in asyncio.all_tasks():
            if task is not asyncio.current_task():
                task.cancel()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with self._lock:
            name = self.current
        behaviour = self.behaviours[name]

        async def send(data: bytes) -> None:
            writer.write(data)
            self.sent[name] += len(data)
            await writer.drain()

        try:
            if not behaviour.speaks_first:
                await _read_request(reader)
            self.calls[name] += 1
            await behaviour.act(send, reader)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass  # the client hung up (or sent no HTTP): both are its right
        finally:
            writer.close()


async def _read_request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return head + await reader.readexactly(int(value))
    return head
