"""An attacker's upstream: WeChatClient (with the daemon's own aiohttp transport) against a
hostile server over real loopback, and the real daemon process against it.

Every hostile reply must end as a FetchError subclass with a clear, secret-free message,
never as a token; the daemon keeps the valid token it had and takes the next good one.
"""

from __future__ import annotations

import asyncio
import json
import time
import traceback
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from conftest import DaemonFactory
from harness import TestApp, wait_for
from hostile import (
    MB,
    Behaviour,
    HostileServer,
    drip,
    endless,
    gzip_bomb,
    header_flood,
    raw,
    redirect,
    respond,
    short_body,
    silent,
    stalled_chunked,
    token_reply,
)

from wxtokend.config import AppConfig, Grant
from wxtokend.errors import FatalConfigError, FetchError, MalformedResponse, TransientError
from wxtokend.redact import Secret
from wxtokend.wechat import WeChatClient

APPID = "wx00000000000000aa"
SECRET = "5ecret0000000000000000000000beef"
GOOD = "GOOD_token_0123456789abcdef"
REQUEST_TIMEOUT = 0.5
CAP = "over 64 KiB"
NOT_JSON = "not JSON"
TIMED_OUT = "timed out"

# name -> (behaviour, the error class, a fragment its message must hold)
CASES: dict[str, tuple[Behaviour, type[FetchError], str]] = {
    "html-200": (
        respond(b"<html><body>502 Bad Gateway</body></html>", content_type="text/html"),
        MalformedResponse,
        NOT_JSON,
    ),
    "truncated-json": (
        respond(b'{"access_token": "abc", "expires_in": 72'),
        MalformedResponse,
        NOT_JSON,
    ),
    "empty-200": (respond(b""), MalformedResponse, NOT_JSON),
    "huge-announced": (endless(announce=100 * MB, offer=100 * MB), MalformedResponse, CAP),
    "huge-close-delimited": (endless(), MalformedResponse, CAP),
    "chunked-never-ends": (endless(chunked=True), MalformedResponse, CAP),
    "chunked-stalls": (stalled_chunked(), TransientError, TIMED_OUT),
    "dripping": (
        drip(json.dumps({"access_token": GOOD, "expires_in": 7200}).encode()),
        TransientError,
        TIMED_OUT,
    ),
    "content-length-over-body-hang-up": (
        short_body(claimed=1000, body=b'{"access_token"', hang_up=True),
        TransientError,
        "connection failed",
    ),
    "content-length-over-body-held": (
        short_body(claimed=1000, body=b'{"access_token"', hang_up=False),
        TransientError,
        TIMED_OUT,
    ),
    "gzip-bomb": (gzip_bomb(64 * MB), MalformedResponse, CAP),
    "gzip-garbage": (
        respond(b"not gzip at all", headers=[("Content-Encoding", "gzip")]),
        MalformedResponse,
        "unreadable reply",
    ),
    "brotli-unasked": (
        respond(b"\x0b\x02\x80{}\x03", headers=[("Content-Encoding", "br")]),
        MalformedResponse,
        "not gzip or deflate",
    ),
    "headers-flood": (header_flood(count=10_000), TransientError, "connection failed"),
    "header-line-huge": (header_flood(count=1, size=1 * MB), TransientError, "connection failed"),
    "token-space": (token_reply("abc def"), MalformedResponse, "access_token"),
    "token-newline": (token_reply("abc\ndef"), MalformedResponse, "access_token"),
    "token-unicode": (token_reply("abc\u00e9\u4e2d"), MalformedResponse, "access_token"),
    "token-600-chars": (token_reply("A" * 600), MalformedResponse, "access_token"),
    "expires_in-0": (token_reply(GOOD, 0), MalformedResponse, "expires_in"),
    "expires_in-negative": (token_reply(GOOD, -5), MalformedResponse, "expires_in"),
    "expires_in-string": (token_reply(GOOD, "7200"), MalformedResponse, "expires_in"),
    "expires_in-1e12": (token_reply(GOOD, 10**12), MalformedResponse, "expires_in"),
    "expires_in-float-1e12": (
        respond(b'{"access_token": "' + GOOD.encode() + b'", "expires_in": 1e12}'),
        MalformedResponse,
        "expires_in",
    ),
    "errcode-string": (
        respond({"errcode": "40001", "errmsg": "invalid credential"}),
        MalformedResponse,
        "errcode",
    ),
    "not-http": (raw(b"SSH-2.0-OpenSSH_9.6\r\n\r\n"), TransientError, "connection failed"),
    "hang-up-without-reply": (raw(b""), TransientError, "connection failed"),
    "speaks-nothing": (silent(), TransientError, TIMED_OUT),
}


def make_app(grant: Grant = "classic", api_base: str | None = None) -> AppConfig:
    return AppConfig(
        appid=APPID,
        name="shop",
        grant=grant,
        secret=Secret(SECRET),
        secret_source="secret_file /etc/x",
        api_base=api_base,
    )


def error_text(exc: BaseException) -> str:
    return "\n".join(
        [str(exc), repr(exc), getattr(exc, "hint", ""), *traceback.format_exception(exc)]
    )


def expected_calls(case: str, grant: Grant) -> int:
    """One request per fetch; aiohttp resends an idempotent GET once when the connection
    drops before any reply (RFC 9112 9.3.1), which the classic grant's GET then gets."""
    return 2 if case == "hang-up-without-reply" and grant == "classic" else 1


@pytest.fixture(scope="module")
def elsewhere() -> Iterator[HostileServer]:
    """Where the redirects point: it would hand out a token, if anyone came."""
    good = token_reply("FROM_ELSEWHERE_0123")
    with HostileServer({"token": good}) as server:
        yield server


@pytest.fixture(scope="module")
def hostile(elsewhere: HostileServer) -> Iterator[HostileServer]:
    redirects = {
        f"redirect-{code}": redirect(f"{elsewhere.url}/cgi-bin/token", f"{code} Moved")
        for code in (301, 302, 307, 308)
    }
    behaviours = {name: case[0] for name, case in CASES.items()}
    with HostileServer({**behaviours, **redirects}) as server:
        yield server


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def fetch_error(api_base: str, grant: Grant = "classic") -> tuple[FetchError, float]:
    client = WeChatClient(api_base=api_base, timeout=REQUEST_TIMEOUT)
    started = time.monotonic()
    try:
        with pytest.raises(FetchError) as info:
            await client.fetch_token(make_app(grant))
    finally:
        await client.aclose()
    return info.value, time.monotonic() - started


class TestHostileReplies:
    """Each hostile reply is one request and one FetchError, clear and free of the secret."""

    @pytest.mark.parametrize("grant", ["classic", "stable"])
    @pytest.mark.parametrize("case", list(CASES))
    @pytest.mark.anyio
    async def test_reply_is_a_clear_fetch_error(
        self, hostile: HostileServer, case: str, grant: Grant
    ) -> None:
        """The error class and message are the table's; one call; no secret in any text."""
        _, kind, fragment = CASES[case]
        hostile.behave(case)
        before = hostile.calls[case]
        exc, took = await fetch_error(hostile.url, grant)
        assert type(exc) is kind, str(exc)
        assert fragment in str(exc)
        assert "\n" not in str(exc)  # one line, whatever bytes the server sent
        assert hostile.calls[case] == before + expected_calls(case, grant)
        text = error_text(exc)
        assert SECRET not in text
        assert GOOD not in text
        assert took < REQUEST_TIMEOUT + 5  # bounded: never left hanging

    @pytest.mark.anyio
    async def test_dripping_server_is_cut_at_request_timeout(self, hostile: HostileServer) -> None:
        """One byte per 100 ms: the whole call is a timeout, bounded by request_timeout."""
        hostile.behave("dripping")
        exc, took = await fetch_error(hostile.url)
        assert type(exc) is TransientError
        assert "whole request" in str(exc)
        assert took < REQUEST_TIMEOUT * 4

    @pytest.mark.parametrize(
        "case", ["huge-announced", "huge-close-delimited", "chunked-never-ends"]
    )
    @pytest.mark.anyio
    async def test_endless_body_is_cut_early(self, hostile: HostileServer, case: str) -> None:
        """Of 100-200 MB offered, the server gets to send only socket buffers' worth."""
        hostile.behave(case)
        before = hostile.sent[case]
        await fetch_error(hostile.url)
        await asyncio.sleep(0.3)  # let the server notice the hang-up and stop
        assert 0 < hostile.sent[case] - before < 16 * MB

    @pytest.mark.parametrize("code", [301, 302, 307, 308])
    @pytest.mark.anyio
    async def test_redirect_is_never_followed(
        self, hostile: HostileServer, elsewhere: HostileServer, code: int
    ) -> None:
        """A 3xx to elsewhere is a FatalConfigError naming the redirect; nobody follows it."""
        hostile.behave(f"redirect-{code}")
        exc, _ = await fetch_error(hostile.url)
        assert type(exc) is FatalConfigError
        assert "redirect" in str(exc)
        assert "api_base" in exc.hint
        assert hostile.calls[f"redirect-{code}"] == 1
        assert elsewhere.calls["token"] == 0


class TestWrongProtocol:
    """TLS spoken to a plain-HTTP port fails as a transient connection error or timeout."""

    @pytest.mark.parametrize(
        ("behaviour", "fragment"),
        [
            (
                raw(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}", speaks_first=True),
                "connection failed",
            ),
            (silent(), TIMED_OUT),
        ],
        ids=["answers-in-plain-http", "waits-for-http"],
    )
    @pytest.mark.anyio
    async def test_tls_to_plain_port(self, behaviour: Behaviour, fragment: str) -> None:
        """https:// to a port that speaks plain HTTP: never a token, never the secret."""
        with HostileServer({"plain": behaviour}) as server:
            base = server.url.replace("http://", "https://")
            exc, _ = await fetch_error(base)
        assert isinstance(exc, TransientError)
        assert fragment in str(exc)
        assert SECRET not in error_text(exc)


GOOD_FIRST = "GOOD_first_0123456789abcdefghij"
GOOD_NEXT = "GOOD_next_0123456789abcdefghijk"
# Fatal answers (redirects) are retried only every 10 minutes: the unit tests cover them.
DAEMON_SETTINGS: dict[str, Any] = {"request_timeout": 1.0, "retry": {"min": 0.05, "max": 0.2}}


def daemon_app() -> TestApp:
    return TestApp(appid=APPID, secret=SECRET, name="shop", grant="stable")


def called_twice(server: HostileServer, case: str) -> bool:
    return server.calls[case] >= 2


def vm_hwm_kib(pid: int) -> int:
    """The process's peak resident set size (VmHWM), in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM in /proc/PID/status")


@pytest.mark.e2e
class TestDaemonAgainstHostileUpstream:
    """The real daemon keeps its valid token through every hostile reply, then takes a good one."""

    def test_token_survives_every_hostile_reply(self, daemon: DaemonFactory) -> None:
        """Token file unchanged, daemon up, error reported per case; then the next good token."""
        behaviours = {
            "first": token_reply(GOOD_FIRST, 2),
            **{name: case[0] for name, case in CASES.items()},
            "next": token_reply(GOOD_NEXT, 3600),
        }
        with HostileServer(behaviours) as server:
            d = daemon([daemon_app()], server.url, **DAEMON_SETTINGS).start()
            d.wait_for_tokens(["shop"])
            assert d.token("shop") == GOOD_FIRST
            with d.admin() as admin:
                for case, (_, _, fragment) in CASES.items():
                    server.behave(case)
                    # A second call means the first one has failed and been judged.
                    wait_for(partial(called_twice, server, case), timeout=30, what=case)
                    assert d.token("shop") == GOOD_FIRST, case
                    assert d.process is not None
                    assert d.process.poll() is None, case
                    status = admin.get("/v1/apps/shop").json()
                    assert status["consecutive_failures"] >= 1, case
                    assert fragment in status["last_error"], (case, status["last_error"])
                    ready = admin.get("/readyz")
                    if ready.status_code == 503:  # once the first token has expired
                        assert fragment in ready.json()["apps"]["shop"], case
                server.behave("next")
                wait_for(lambda: d.token("shop") == GOOD_NEXT, timeout=30, what="the next token")
                assert admin.get("/readyz").status_code == 200
                assert admin.get("/v1/apps/shop").json()["last_error"] is None
        assert server.calls["first"] == 1
        failures = [
            e for e in d.events() if e.get("event") == "refresh" and e.get("outcome") != "ok"
        ]
        hostile_calls = {case: server.calls[case] for case in CASES}
        print(f"calls per hostile case: {hostile_calls}")
        assert len(failures) == sum(hostile_calls.values())
        assert {e["outcome"] for e in failures} <= {"transient", "malformed"}
        text = d.log_text()
        assert SECRET not in text
        assert GOOD_FIRST not in text
        assert GOOD_NEXT not in text

    @pytest.mark.parametrize(
        "behaviour",
        [endless(offer=200 * MB), endless(chunked=True, offer=200 * MB), gzip_bomb(200 * MB)],
        ids=["close-delimited", "chunked", "gzip-bomb"],
    )
    def test_memory_stays_bounded_under_endless_bodies(
        self, daemon: DaemonFactory, behaviour: Behaviour
    ) -> None:
        """With 200 MB offered per reply, the daemon's peak RSS stays under 100 MB."""
        with HostileServer({"good": token_reply(GOOD_FIRST, 2), "endless": behaviour}) as server:
            d = daemon([daemon_app()], server.url, **DAEMON_SETTINGS).start()
            d.wait_for_tokens(["shop"])
            server.behave("endless")
            wait_for(lambda: server.calls["endless"] >= 20, timeout=60, what="20 endless replies")
            peak = vm_hwm_kib(d.pid)
            sent = server.sent["endless"] / server.calls["endless"]
            assert d.token("shop") == GOOD_FIRST
        print(f"daemon VmHWM {peak / 1024:.1f} MiB; {sent / MB:.2f} MB sent per reply of 200 MB")
        assert peak < 100 * 1024
