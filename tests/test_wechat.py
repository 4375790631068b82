"""WeChatClient against a mocked WeChat: requests, errcodes, HTTP and transport failures.

Every reply is served by pytest-httpx; nothing leaves the process and nothing sleeps.
"""

from __future__ import annotations

import dataclasses
import gzip
import json
import traceback
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from pytest_httpx import HTTPXMock

from wxtokend.config import AppConfig, Grant
from wxtokend.errors import (
    AdminWaitError,
    DailyQuotaError,
    FatalConfigError,
    FetchError,
    MalformedResponse,
    MinuteQuotaError,
    TokenRejectedError,
    TransientError,
    UnknownErrcodeError,
)
from wxtokend.redact import Redactor, Secret
from wxtokend.transport import MAX_BODY_BYTES
from wxtokend.wechat import (
    ERRCODES,
    MAX_TOKEN_LENGTH,
    Token,
    WeChatClient,
    is_valid_token,
    parse_token,
)

API_BASE = "https://api.weixin.qq.com"
CLASSIC_URL = f"{API_BASE}/cgi-bin/token"
STABLE_URL = f"{API_BASE}/cgi-bin/stable_token"
APPID = "wx0123456789abcdef"
SECRET = "s3cr3t-value-0123456789abcdef01"
SECRET_SOURCE = "secret_file /etc/x"
TOKEN = "83_AbCdEfGhIjKlMnOpQrStUvWxYz0123456789-tokenvalue_xyz"
NOW = 1_700_000_000.0
WHITELIST_ERRMSG = (
    "invalid ip 218.58.124.130 ipv6 ::ffff:218.58.124.130, not in whitelist"
    " rid: 611740a4-27f9a8ba-065da01b"
)
CLASSIC_PARAMS = {"grant_type": "client_credential", "appid": APPID, "secret": SECRET}
GRANTS: list[Grant] = ["classic", "stable"]

# Section 3 of the API notes, written out independently of wechat.ERRCODES so a
# wrong row in the table fails: errcode -> (error class, wait in seconds or None).
DOCUMENTED_ERRCODES: dict[int, tuple[type[FetchError], float | None]] = {
    -1: (TransientError, None),
    40001: (FatalConfigError, None),
    40002: (FatalConfigError, None),
    40013: (FatalConfigError, None),
    40125: (FatalConfigError, None),
    40164: (FatalConfigError, None),
    40243: (FatalConfigError, None),
    41002: (FatalConfigError, None),
    41004: (FatalConfigError, None),
    43002: (FatalConfigError, None),
    45009: (DailyQuotaError, None),
    45011: (MinuteQuotaError, None),
    50004: (FatalConfigError, None),
    50007: (FatalConfigError, None),
    61024: (FatalConfigError, None),
    89501: (AdminWaitError, 600.0),
    89503: (AdminWaitError, 600.0),
    89506: (AdminWaitError, 86400.0),
    89507: (AdminWaitError, 3600.0),
}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class FixedClock:
    """A clock that stands still unless a test moves it."""

    def __init__(self, now: float = NOW) -> None:
        self.time = now

    def now(self) -> float:
        return self.time

    async def sleep(self, seconds: float) -> None:
        self.time += seconds


def make_app(grant: Grant = "stable") -> AppConfig:
    return AppConfig(
        appid=APPID,
        name="shop",
        grant=grant,
        secret=Secret(SECRET),
        secret_source=SECRET_SOURCE,
    )


def matchers(grant: Grant) -> dict[str, Any]:
    """Exactly the request the grant must send: method, URL and (classic) query."""
    if grant == "classic":
        return {"method": "GET", "url": CLASSIC_URL, "match_params": CLASSIC_PARAMS}
    return {"method": "POST", "url": STABLE_URL}


def reply(httpx_mock: HTTPXMock, grant: Grant = "stable", **response: Any) -> None:
    httpx_mock.add_response(**matchers(grant), **response)


def fail_with(httpx_mock: HTTPXMock, exc: Exception, grant: Grant = "stable") -> None:
    httpx_mock.add_exception(exc, **matchers(grant))


def mockable() -> httpx.AsyncHTTPTransport:
    """httpx's own transport, which pytest-httpx intercepts (the daemon's is aiohttp's)."""
    return httpx.AsyncHTTPTransport()


async def fetch(
    app: AppConfig,
    *,
    force: bool = False,
    clock: FixedClock | None = None,
    api_base: str = API_BASE,
    **client_options: Any,
) -> Token:
    client = WeChatClient(
        api_base=api_base, clock=clock or FixedClock(), transport=mockable(), **client_options
    )
    try:
        return await client.fetch_token(app, force=force)
    finally:
        await client.aclose()


async def fetch_error(app: AppConfig, **client_options: Any) -> FetchError:
    with pytest.raises(FetchError) as info:
        await fetch(app, **client_options)
    return info.value


def token_reply(token: str = TOKEN, expires_in: int = 7200) -> dict[str, Any]:
    return {"access_token": token, "expires_in": expires_in}


def error_text(exc: BaseException) -> str:
    """Everything an operator or a log could see of an error."""
    hint = getattr(exc, "hint", "")
    return "\n".join([str(exc), repr(exc), hint, "".join(traceback.format_exception(exc))])


class TestRequests:
    @pytest.mark.anyio
    async def test_classic_sends_get_token_with_credentials_in_query(
        self, httpx_mock: HTTPXMock
    ) -> None:
        """Classic grant sends GET /cgi-bin/token with grant_type, appid and secret as query."""
        reply(httpx_mock, "classic", json=token_reply())
        await fetch(make_app("classic"))
        (request,) = httpx_mock.get_requests()
        assert request.method == "GET"
        assert request.url.path == "/cgi-bin/token"
        assert dict(request.url.params) == CLASSIC_PARAMS
        assert request.content == b""

    @pytest.mark.parametrize(("force", "expected"), [(False, False), (True, True)])
    @pytest.mark.anyio
    async def test_stable_posts_json_body(
        self, httpx_mock: HTTPXMock, force: bool, expected: bool
    ) -> None:
        """Stable grant POSTs /cgi-bin/stable_token with a JSON body; force sets force_refresh."""
        reply(httpx_mock, "stable", json=token_reply())
        await fetch(make_app("stable"), force=force)
        (request,) = httpx_mock.get_requests()
        assert request.method == "POST"
        assert request.url.path == "/cgi-bin/stable_token"
        assert not request.url.query
        assert request.headers["content-type"] == "application/json"
        body = json.loads(request.content)
        assert body == {
            "grant_type": "client_credential",
            "appid": APPID,
            "secret": SECRET,
            "force_refresh": expected,
        }
        assert body["force_refresh"] is expected  # a JSON boolean, not 0/1

    @pytest.mark.parametrize("grant", GRANTS)
    @pytest.mark.anyio
    async def test_trailing_slash_in_api_base_is_dropped(
        self, httpx_mock: HTTPXMock, grant: Grant
    ) -> None:
        """An api_base ending in / still yields /cgi-bin/... without a double slash."""
        reply(httpx_mock, grant, json=token_reply())
        await fetch(make_app(grant), api_base=API_BASE + "/")
        (request,) = httpx_mock.get_requests()
        assert "//cgi-bin" not in str(request.url)


class TestSuccess:
    @pytest.mark.parametrize("grant", GRANTS)
    @pytest.mark.parametrize(
        "body",
        [
            token_reply(expires_in=7200),
            {"access_token": TOKEN, "expires_in": 7200, "errcode": 0},
            {"access_token": TOKEN, "expires_in": 7200, "errcode": 0, "errmsg": "ok"},
        ],
        ids=["plain", "errcode-0", "errcode-0-errmsg-ok"],
    )
    @pytest.mark.anyio
    async def test_reply_becomes_token(
        self, httpx_mock: HTTPXMock, grant: Grant, body: dict[str, Any]
    ) -> None:
        """A token reply (with or without errcode 0) becomes a Token stamped with the clock."""
        reply(httpx_mock, grant, json=body)
        token = await fetch(make_app(grant), clock=FixedClock(NOW))
        assert token == Token(access_token=TOKEN, expires_in=7200, fetched_at=NOW)
        assert token.expires_at == NOW + 7200

    @pytest.mark.anyio
    async def test_short_lifetime_is_used_as_given(self, httpx_mock: HTTPXMock) -> None:
        """A stable reply with a short remaining lifetime is kept as is, not rounded to 7200."""
        reply(httpx_mock, json=token_reply(expires_in=345))
        token = await fetch(make_app(), clock=FixedClock(1000.0))
        assert (token.expires_in, token.expires_at) == (345, 1345.0)

    @pytest.mark.anyio
    async def test_token_of_max_length_is_accepted(self, httpx_mock: HTTPXMock) -> None:
        """A token of exactly 512 characters is accepted."""
        long_token = "A" * MAX_TOKEN_LENGTH
        reply(httpx_mock, json=token_reply(long_token))
        assert (await fetch(make_app())).access_token == long_token

    @pytest.mark.anyio
    async def test_fetched_at_is_when_the_request_was_sent(self, httpx_mock: HTTPXMock) -> None:
        """fetched_at is the time before the exchange, not after a slow reply."""
        clock = FixedClock(NOW)

        def slow(request: httpx.Request) -> httpx.Response:
            clock.time += 4.0
            return httpx.Response(200, json=token_reply())

        httpx_mock.add_callback(slow, **matchers("stable"))
        token = await fetch(make_app(), clock=clock)
        assert token.fetched_at == NOW
        assert token.expires_at == NOW + 7200


class TestErrcodeClasses:
    def test_table_holds_exactly_the_documented_errcodes(self) -> None:
        """wechat.ERRCODES has one row per errcode of the API notes, no more, no fewer."""
        assert sorted(ERRCODES) == sorted(DOCUMENTED_ERRCODES)

    @pytest.mark.parametrize(
        ("errcode", "kind", "wait"),
        [(code, kind, wait) for code, (kind, wait) in DOCUMENTED_ERRCODES.items()],
    )
    def test_table_row_matches_the_documentation(
        self, errcode: int, kind: type[FetchError], wait: float | None
    ) -> None:
        """Each table row has the class (and wait) the API notes call for, and a hint."""
        row = ERRCODES[errcode]
        assert row.kind is kind
        assert row.wait == (wait or 0.0)
        assert row.fix.strip() or row.kind is TransientError  # -1: nothing to fix
        assert row.meaning.strip()

    @pytest.mark.parametrize(("errcode", "row"), sorted(ERRCODES.items()))
    @pytest.mark.anyio
    async def test_every_table_row_raises_its_class(
        self, httpx_mock: HTTPXMock, errcode: int, row: Any
    ) -> None:
        """An errcode reply raises exactly the table's class with errcode, hint and wait."""
        reply(httpx_mock, json={"errcode": errcode, "errmsg": "some message rid: 1-2-3"})
        exc = await fetch_error(make_app())
        assert type(exc) is row.kind
        assert exc.errcode == errcode
        assert exc.hint.strip()
        assert exc.retry.strip()
        assert exc.hint == (f"{exc.fix}; {exc.retry}" if exc.fix else exc.retry)
        assert "retry" not in exc.fix  # check --online shows the fix alone: it retries nothing
        assert str(errcode) in str(exc)
        if row.kind is AdminWaitError:
            assert isinstance(exc, AdminWaitError)
            assert exc.wait == row.wait

    @pytest.mark.parametrize("grant", GRANTS)
    @pytest.mark.parametrize(
        ("errcode", "kind", "wait"),
        [(code, kind, wait) for code, (kind, wait) in DOCUMENTED_ERRCODES.items()],
    )
    @pytest.mark.anyio
    async def test_documented_errcode_raises_documented_class(
        self,
        httpx_mock: HTTPXMock,
        grant: Grant,
        errcode: int,
        kind: type[FetchError],
        wait: float | None,
    ) -> None:
        """Each errcode of the API notes raises the documented class on both endpoints."""
        reply(httpx_mock, grant, json={"errcode": errcode, "errmsg": "whatever"})
        exc = await fetch_error(make_app(grant))
        assert type(exc) is kind
        assert exc.errcode == errcode
        assert exc.hint.strip()
        if wait is not None:
            assert isinstance(exc, AdminWaitError)
            assert exc.wait == wait

    @pytest.mark.parametrize("errcode", [99999, -2, 1, 40014, 42001])
    @pytest.mark.anyio
    async def test_unknown_errcode(self, httpx_mock: HTTPXMock, errcode: int) -> None:
        """An errcode missing from the table raises UnknownErrcodeError carrying it."""
        reply(httpx_mock, json={"errcode": errcode, "errmsg": "new thing rid: abc"})
        exc = await fetch_error(make_app())
        assert type(exc) is UnknownErrcodeError
        assert exc.errcode == errcode
        assert exc.hint.strip()
        assert "new thing rid: abc" in str(exc)

    @pytest.mark.anyio
    async def test_errcode_wins_over_a_token_in_the_same_reply(self, httpx_mock: HTTPXMock) -> None:
        """A reply with a non-zero errcode is a failure even if it also carries a token."""
        reply(httpx_mock, json={"errcode": 40001, "errmsg": "bad", **token_reply()})
        exc = await fetch_error(make_app())
        assert type(exc) is FatalConfigError
        assert exc.errcode == 40001


class TestHints:
    @pytest.mark.anyio
    async def test_whitelist_hint_names_the_ip(self, httpx_mock: HTTPXMock) -> None:
        """40164's hint tells which IP to whitelist, taken from WeChat's message."""
        reply(httpx_mock, json={"errcode": 40164, "errmsg": WHITELIST_ERRMSG})
        exc = await fetch_error(make_app())
        assert "add 218.58.124.130 to the IP whitelist" in exc.hint

    @pytest.mark.anyio
    async def test_whitelist_hint_without_ip_in_message(self, httpx_mock: HTTPXMock) -> None:
        """40164 with an unexpected message still gives a usable hint, no placeholder."""
        reply(httpx_mock, json={"errcode": 40164, "errmsg": "not in whitelist"})
        exc = await fetch_error(make_app())
        assert "egress IP" in exc.hint
        assert "{" not in exc.hint

    @pytest.mark.parametrize("errcode", [40001, 40125, 40243, 41004])
    @pytest.mark.anyio
    async def test_secret_hints_name_the_secret_source(
        self, httpx_mock: HTTPXMock, errcode: int
    ) -> None:
        """Hints about a wrong, frozen or missing AppSecret name where this app's secret lives."""
        reply(httpx_mock, json={"errcode": errcode, "errmsg": "invalid credential"})
        exc = await fetch_error(make_app())
        assert SECRET_SOURCE in exc.hint

    @pytest.mark.parametrize("errcode", sorted(ERRCODES))
    @pytest.mark.anyio
    async def test_hint_has_no_unfilled_placeholder(
        self, httpx_mock: HTTPXMock, errcode: int
    ) -> None:
        """Every hint is fully formatted: no {source}, {console} or {ip} left over."""
        reply(httpx_mock, json={"errcode": errcode, "errmsg": WHITELIST_ERRMSG})
        exc = await fetch_error(make_app())
        assert "{" not in exc.hint
        assert "}" not in exc.hint

    @pytest.mark.anyio
    async def test_long_errmsg_is_cut(self, httpx_mock: HTTPXMock) -> None:
        """A huge errmsg is cut to 300 characters in the error message."""
        reply(httpx_mock, json={"errcode": 99999, "errmsg": "x" * 10_000})
        exc = await fetch_error(make_app())
        assert "x" * 300 in str(exc)
        assert "x" * 301 not in str(exc)


class TestHttpFailures:
    @pytest.mark.parametrize("status", [500, 502, 503, 504, 429, 408])
    @pytest.mark.anyio
    async def test_retryable_status_is_transient(self, httpx_mock: HTTPXMock, status: int) -> None:
        """5xx, 429 and 408 are transient, even when the body carries a token."""
        reply(httpx_mock, status_code=status, json=token_reply())
        exc = await fetch_error(make_app())
        assert type(exc) is TransientError
        assert exc.errcode is None
        assert str(status) in str(exc)

    @pytest.mark.parametrize("status", [404, 400, 403, 301, 302])
    @pytest.mark.anyio
    async def test_other_status_is_fatal(self, httpx_mock: HTTPXMock, status: int) -> None:
        """404 and other non-200 statuses mean api_base or proxy is wrong: fatal, with a hint."""
        reply(
            httpx_mock,
            status_code=status,
            headers={"Location": f"{API_BASE}/elsewhere"},
            json=token_reply(),
        )
        exc = await fetch_error(make_app())
        assert type(exc) is FatalConfigError
        assert exc.errcode is None
        assert "api_base" in exc.hint


class TestTransportFailures:
    @pytest.mark.parametrize("grant", GRANTS)
    @pytest.mark.parametrize(
        "error",
        [
            httpx.ReadTimeout("read timed out"),
            httpx.ConnectTimeout("connect timed out"),
            httpx.WriteTimeout("write timed out"),
            httpx.PoolTimeout("pool timed out"),
            httpx.ConnectError("connection refused"),
            httpx.ReadError("connection reset"),
            httpx.RemoteProtocolError("server disconnected"),
        ],
        ids=lambda e: type(e).__name__,
    )
    @pytest.mark.anyio
    async def test_network_failure_is_transient(
        self, httpx_mock: HTTPXMock, grant: Grant, error: Exception
    ) -> None:
        """Timeouts and connection errors become TransientError (no errcode)."""
        fail_with(httpx_mock, error, grant)
        exc = await fetch_error(make_app(grant))
        assert type(exc) is TransientError
        assert exc.errcode is None

    @pytest.mark.anyio
    async def test_proxy_error_points_at_the_proxy(self, httpx_mock: HTTPXMock) -> None:
        """A proxy failure is transient and its hint says to check proxy:."""
        fail_with(httpx_mock, httpx.ProxyError("407 Proxy Authentication Required"))
        exc = await fetch_error(make_app())
        assert type(exc) is TransientError
        assert "proxy" in exc.hint

    @pytest.mark.anyio
    async def test_undecodable_body_is_malformed(self, httpx_mock: HTTPXMock) -> None:
        """A body that fails Content-Encoding decoding is a MalformedResponse, not a crash."""
        reply(httpx_mock, headers={"Content-Encoding": "gzip"}, content=b"not gzip at all")
        client = WeChatClient(api_base=API_BASE, clock=FixedClock(), transport=mockable())
        try:
            with pytest.raises(MalformedResponse):
                await client.fetch_token(make_app())
        finally:
            await client.aclose()


class TestBodyCap:
    """Whatever the transport, a reply body is read only up to MAX_BODY_BYTES, decoded too."""

    @pytest.mark.parametrize("grant", GRANTS)
    @pytest.mark.anyio
    async def test_reply_of_exactly_the_cap_is_accepted(
        self, httpx_mock: HTTPXMock, grant: Grant
    ) -> None:
        """A token reply padded to exactly MAX_BODY_BYTES is a token."""
        body = json.dumps(token_reply()).encode()
        reply(httpx_mock, grant, content=body + b" " * (MAX_BODY_BYTES - len(body)))
        assert (await fetch(make_app(grant))).access_token == TOKEN

    @pytest.mark.parametrize("encoding", ["", "gzip"])
    @pytest.mark.parametrize("grant", GRANTS)
    @pytest.mark.anyio
    async def test_one_byte_over_is_malformed(
        self, httpx_mock: HTTPXMock, grant: Grant, encoding: str
    ) -> None:
        """One byte over, sent plain or gzip-inflated, is a MalformedResponse naming the cap."""
        body = json.dumps(token_reply()).encode()
        body += b" " * (MAX_BODY_BYTES + 1 - len(body))
        headers = {"Content-Encoding": encoding} if encoding else {}
        reply(httpx_mock, grant, content=gzip.compress(body) if encoding else body, headers=headers)
        exc = await fetch_error(make_app(grant))
        assert type(exc) is MalformedResponse
        assert "over 64 KiB" in str(exc)
        assert "api_base" in exc.hint
        assert TOKEN not in error_text(exc)

    @pytest.mark.anyio
    async def test_error_status_body_is_never_read(self, httpx_mock: HTTPXMock) -> None:
        """A 502 is judged by its status: its (huge, bomb) body does not matter."""
        bomb = gzip.compress(b" " * (32 * 1024 * 1024))
        reply(httpx_mock, status_code=502, content=bomb, headers={"Content-Encoding": "gzip"})
        exc = await fetch_error(make_app())
        assert type(exc) is TransientError
        assert "HTTP 502" in str(exc)

    @pytest.mark.anyio
    async def test_asks_only_for_encodings_it_can_bound(self, httpx_mock: HTTPXMock) -> None:
        """Accept-Encoding is gzip and deflate only: never br or zstd."""
        reply(httpx_mock, json=token_reply())
        await fetch(make_app())
        (request,) = httpx_mock.get_requests()
        assert request.headers["accept-encoding"] == "gzip, deflate"

    @pytest.mark.anyio
    async def test_brotli_reply_is_malformed(self, httpx_mock: HTTPXMock) -> None:
        """A Content-Encoding not asked for is a MalformedResponse that names it."""
        reply(httpx_mock, content=b"\x0b\x02\x80{}\x03", headers={"Content-Encoding": "br"})
        exc = await fetch_error(make_app())
        assert type(exc) is MalformedResponse
        assert "'br'" in str(exc)


MALFORMED_BODIES: list[Any] = [
    pytest.param(b"<html>502 Bad Gateway</html>", id="html"),
    pytest.param(b"", id="empty-body"),
    pytest.param(b'{"access_token": "abc", "expires_in": 72', id="truncated-json"),
    pytest.param(b"\xff\xfe\x00garbage", id="not-utf8"),
    pytest.param(json.dumps([token_reply()]).encode(), id="json-array"),
    pytest.param(b'"just a string"', id="json-string"),
    pytest.param(b"null", id="json-null"),
    pytest.param(json.dumps({"expires_in": 7200}).encode(), id="no-access_token"),
    pytest.param(json.dumps(token_reply("")).encode(), id="empty-token"),
    pytest.param(json.dumps({"access_token": None, "expires_in": 7200}).encode(), id="null-token"),
    pytest.param(json.dumps({"access_token": 12345, "expires_in": 7200}).encode(), id="int-token"),
    pytest.param(json.dumps(token_reply("A" * 513)).encode(), id="token-513-chars"),
    pytest.param(json.dumps(token_reply("abc def")).encode(), id="token-with-space"),
    pytest.param(json.dumps(token_reply("abc\ndef")).encode(), id="token-with-newline"),
    pytest.param(json.dumps(token_reply("abcdef\n")).encode(), id="token-trailing-newline"),
    pytest.param(json.dumps(token_reply("abc\u00e9def")).encode(), id="token-non-ascii"),
    pytest.param(json.dumps(token_reply("abc\x00def")).encode(), id="token-nul"),
    pytest.param(json.dumps({"access_token": TOKEN}).encode(), id="no-expires_in"),
    pytest.param(json.dumps(token_reply(expires_in=0)).encode(), id="expires_in-0"),
    pytest.param(json.dumps(token_reply(expires_in=-5)).encode(), id="expires_in-negative"),
    pytest.param(
        json.dumps({"access_token": TOKEN, "expires_in": "7200"}).encode(), id="expires_in-str"
    ),
    pytest.param(
        json.dumps({"access_token": TOKEN, "expires_in": 7200.5}).encode(), id="expires_in-float"
    ),
    pytest.param(
        json.dumps({"access_token": TOKEN, "expires_in": True}).encode(), id="expires_in-true"
    ),
    pytest.param(
        json.dumps({"access_token": TOKEN, "expires_in": None}).encode(), id="expires_in-null"
    ),
    pytest.param(json.dumps({**token_reply(), "errcode": "40001"}).encode(), id="errcode-string"),
    pytest.param(json.dumps({**token_reply(), "errcode": 40001.0}).encode(), id="errcode-float"),
    pytest.param(json.dumps({**token_reply(), "errcode": True}).encode(), id="errcode-true"),
    pytest.param(json.dumps({**token_reply(), "errcode": [40001]}).encode(), id="errcode-list"),
    pytest.param(
        json.dumps({"errcode": "-1", "errmsg": "busy"}).encode(), id="errcode-string-no-token"
    ),
]


class TestMalformedReplies:
    @pytest.mark.parametrize("grant", GRANTS)
    @pytest.mark.parametrize("content", MALFORMED_BODIES)
    @pytest.mark.anyio
    async def test_unusable_reply_is_malformed(
        self, httpx_mock: HTTPXMock, grant: Grant, content: bytes
    ) -> None:
        """A 200 reply that is not a usable token raises MalformedResponse, a TransientError."""
        reply(httpx_mock, grant, content=content)
        exc = await fetch_error(make_app(grant))
        assert type(exc) is MalformedResponse
        assert isinstance(exc, TransientError)
        assert exc.errcode is None

    @pytest.mark.anyio
    async def test_deeply_nested_json_is_malformed(self, httpx_mock: HTTPXMock) -> None:
        """A pathologically nested JSON reply is a MalformedResponse, not a RecursionError."""
        reply(httpx_mock, content=b"[" * 100_000 + b"]" * 100_000)
        client = WeChatClient(api_base=API_BASE, clock=FixedClock(), transport=mockable())
        try:
            with pytest.raises(MalformedResponse):
                await client.fetch_token(make_app())
        finally:
            await client.aclose()


def secret_url() -> str:
    return f"{CLASSIC_URL}?grant_type=client_credential&appid={APPID}&secret={SECRET}"


# Every error path, as (how the mock answers, expected class). Replies that could
# carry a token do, so the token must not leak either.
ERROR_PATHS: list[Any] = [
    *[
        pytest.param(
            {"json": {"errcode": code, "errmsg": WHITELIST_ERRMSG, **token_reply()}},
            row.kind,
            id=f"errcode-{code}",
        )
        for code, row in sorted(ERRCODES.items())
    ],
    pytest.param({"json": {"errcode": 99999, "errmsg": "?"}}, UnknownErrcodeError, id="unknown"),
    *[
        pytest.param({"status_code": status, "json": token_reply()}, kind, id=f"http-{status}")
        for status, kind in [
            (500, TransientError),
            (502, TransientError),
            (503, TransientError),
            (429, TransientError),
            (404, FatalConfigError),
        ]
    ],
    pytest.param(
        {"content": b'{"access_token": "' + TOKEN.encode()}, MalformedResponse, id="trunc"
    ),
    pytest.param(
        {"json": {"access_token": TOKEN, "expires_in": "7200"}},
        MalformedResponse,
        id="expires_in-str",
    ),
    pytest.param(
        {"json": {"access_token": TOKEN + " x", "expires_in": 7200}},
        MalformedResponse,
        id="token-space",
    ),
    pytest.param(
        {"json": {**token_reply(), "errcode": "40001"}}, MalformedResponse, id="errcode-str"
    ),
    pytest.param({"json": [token_reply()]}, MalformedResponse, id="json-array"),
    pytest.param(
        {"exception": httpx.ReadTimeout(f"timed out on {secret_url()}")},
        TransientError,
        id="ReadTimeout",
    ),
    pytest.param(
        {"exception": httpx.ConnectTimeout(f"timed out on {secret_url()}")},
        TransientError,
        id="ConnectTimeout",
    ),
    pytest.param(
        {"exception": httpx.ConnectError(f"failed {secret_url()}")},
        TransientError,
        id="ConnectError",
    ),
    pytest.param(
        {"exception": httpx.ProxyError(f"proxy refused CONNECT for {secret_url()}")},
        TransientError,
        id="ProxyError",
    ),
    pytest.param(
        {"exception": httpx.ReadError(f"reset while reading {secret_url()}")},
        TransientError,
        id="ReadError",
    ),
]


class TestSecretsNeverLeak:
    @pytest.mark.parametrize("grant", GRANTS)
    @pytest.mark.parametrize(("answer", "kind"), ERROR_PATHS)
    @pytest.mark.anyio
    async def test_error_text_holds_neither_secret_nor_token(
        self,
        httpx_mock: HTTPXMock,
        grant: Grant,
        answer: dict[str, Any],
        kind: type[FetchError],
    ) -> None:
        """No error path shows the secret or a token in str, repr, hint or traceback."""
        if "exception" in answer:
            fail_with(httpx_mock, answer["exception"], grant)
        else:
            reply(httpx_mock, grant, **answer)
        exc = await fetch_error(make_app(grant))
        assert type(exc) is kind
        text = error_text(exc)
        assert SECRET not in text
        assert TOKEN not in text

    @pytest.mark.anyio
    async def test_connect_error_quoting_the_url_is_masked(self, httpx_mock: HTTPXMock) -> None:
        """A ConnectError whose message holds the full URL keeps the URL but masks the secret."""
        fail_with(httpx_mock, httpx.ConnectError(f"failed {secret_url()}"), "classic")
        exc = await fetch_error(make_app("classic"))
        assert SECRET not in str(exc)
        assert "connection failed" in str(exc)
        assert "secret=********" in str(exc)

    @pytest.mark.anyio
    async def test_registered_values_are_scrubbed_from_errmsg(self, httpx_mock: HTTPXMock) -> None:
        """With a redactor holding a token, an errmsg quoting it is scrubbed."""
        token = "T" * 40
        redactor = Redactor()
        redactor.register("token:shop", token, label="<token>")
        reply(httpx_mock, json={"errcode": 40001, "errmsg": f"token {token} is not latest"})
        exc = await fetch_error(make_app(), redactor=redactor)
        assert token not in error_text(exc)
        assert "<token>" in str(exc)

    @pytest.mark.anyio
    async def test_errmsg_quoting_the_secret_is_masked_without_redactor(
        self, httpx_mock: HTTPXMock
    ) -> None:
        """An errmsg that echoes the AppSecret does not leak it, even with no redactor."""
        reply(httpx_mock, json={"errcode": 40125, "errmsg": f"invalid appsecret {SECRET}"})
        exc = await fetch_error(make_app())
        assert SECRET not in error_text(exc)

    def test_app_repr_hides_the_secret(self) -> None:
        """The AppConfig handed to the client never shows its secret in repr or str."""
        app = make_app()
        assert SECRET not in repr(app)
        assert SECRET not in str(app)
        assert SECRET not in repr(dataclasses.asdict(app))


class TestParseToken:
    @pytest.mark.parametrize(
        ("body", "token", "expires_in"),
        [
            ({"access_token": "a", "expires_in": 1}, "a", 1),
            (token_reply(), TOKEN, 7200),
            ({"access_token": "A" * 512, "expires_in": 7200}, "A" * 512, 7200),
            ({"access_token": "!~", "expires_in": 300, "errcode": 0}, "!~", 300),
            ({"access_token": TOKEN, "expires_in": 7200, "extra": [1]}, TOKEN, 7200),
            ({"access_token": TOKEN, "expires_in": 86400}, TOKEN, 86400),
        ],
    )
    def test_valid_body(self, body: dict[str, Any], token: str, expires_in: int) -> None:
        """A usable body becomes a Token carrying the given fetched_at."""
        parsed = parse_token(body, fetched_at=123.5)
        assert parsed == Token(access_token=token, expires_in=expires_in, fetched_at=123.5)
        assert parsed.expires_at == 123.5 + expires_in

    @pytest.mark.parametrize(
        "body",
        [
            None,
            [],
            [token_reply()],
            "token",
            7200,
            {},
            {"expires_in": 7200},
            {"access_token": TOKEN},
            {"access_token": "", "expires_in": 7200},
            {"access_token": b"bytes", "expires_in": 7200},
            {"access_token": ["x"], "expires_in": 7200},
            {"access_token": "A" * 513, "expires_in": 7200},
            {"access_token": "a b", "expires_in": 7200},
            {"access_token": "a\tb", "expires_in": 7200},
            {"access_token": "ab\n", "expires_in": 7200},
            {"access_token": "\u00e9", "expires_in": 7200},
            {"access_token": "a\x7f", "expires_in": 7200},
            {"access_token": TOKEN, "expires_in": 0},
            {"access_token": TOKEN, "expires_in": -1},
            {"access_token": TOKEN, "expires_in": "7200"},
            {"access_token": TOKEN, "expires_in": 7200.0},
            {"access_token": TOKEN, "expires_in": 7200.5},
            {"access_token": TOKEN, "expires_in": True},
            {"access_token": TOKEN, "expires_in": None},
            {"access_token": TOKEN, "expires_in": 86401},
            {"access_token": TOKEN, "expires_in": 10**12},
        ],
    )
    def test_invalid_body(self, body: Any) -> None:
        """Anything but a 1-512 visible-ASCII token with a positive int lifetime is refused."""
        with pytest.raises(MalformedResponse):
            parse_token(body, fetched_at=0.0)


class TestIsValidToken:
    @pytest.mark.parametrize(
        ("token", "valid"),
        [
            ("a", True),
            (TOKEN, True),
            ("!" + "~" * 10, True),
            ("A" * 511, True),
            ("A" * 512, True),
            ("A" * 513, False),
            ("", False),
            (" ", False),
            ("a b", False),
            ("ab ", False),
            (" ab", False),
            ("a\nb", False),
            ("ab\n", False),
            ("a\tb", False),
            ("a\rb", False),
            ("a\x00b", False),
            ("a\x7fb", False),
            ("caf\u00e9", False),
            ("\uff21", False),  # fullwidth A
        ],
    )
    def test_is_valid_token(self, token: str, valid: bool) -> None:
        """Only 1-512 visible ASCII characters make a valid token."""
        assert is_valid_token(token) is valid


class TestOnRequest:
    @pytest.mark.parametrize(
        ("grant", "endpoint"), [("classic", "/cgi-bin/token"), ("stable", "/cgi-bin/stable_token")]
    )
    @pytest.mark.anyio
    async def test_called_with_app_endpoint_and_duration(
        self, httpx_mock: HTTPXMock, grant: Grant, endpoint: str
    ) -> None:
        """on_request gets (app name, endpoint, seconds the exchange took) once per fetch."""
        clock = FixedClock(NOW)
        calls: list[tuple[str, str, float]] = []

        def slow(request: httpx.Request) -> httpx.Response:
            clock.time += 2.5
            return httpx.Response(200, json=token_reply())

        httpx_mock.add_callback(slow, **matchers(grant))
        await fetch(make_app(grant), clock=clock, on_request=record(calls))
        assert calls == [("shop", endpoint, 2.5)]

    @pytest.mark.parametrize(
        "outcome",
        [
            pytest.param(httpx.ConnectError("refused"), id="ConnectError"),
            pytest.param(httpx.ReadTimeout("slow"), id="ReadTimeout"),
            pytest.param(httpx.Response(503), id="http-503"),
            pytest.param(httpx.Response(200, json={"errcode": 45011}), id="errcode"),
        ],
    )
    @pytest.mark.anyio
    async def test_called_on_failures_too(
        self, httpx_mock: HTTPXMock, outcome: httpx.Response | Exception
    ) -> None:
        """on_request also reports exchanges that failed, with their duration."""
        clock = FixedClock(NOW)
        calls: list[tuple[str, str, float]] = []

        def answer(request: httpx.Request) -> httpx.Response:
            clock.time += 1.25
            if isinstance(outcome, Exception):
                raise outcome
            return outcome

        httpx_mock.add_callback(answer, **matchers("stable"))
        await fetch_error(make_app(), clock=clock, on_request=record(calls))
        assert calls == [("shop", "/cgi-bin/stable_token", 1.25)]


def record(calls: list[tuple[str, str, float]]) -> Callable[[str, str, float], None]:
    def on_request(name: str, endpoint: str, duration: float) -> None:
        calls.append((name, endpoint, duration))

    return on_request


QY_BASE = "https://qyapi.weixin.qq.com"
CORPID = "ww0123456789abcdef"


def make_wecom() -> AppConfig:
    return AppConfig(
        appid=CORPID,
        name="hr",
        grant="wecom",
        kind="wecom",
        api_base=QY_BASE,
        secret=Secret(SECRET),
        secret_source=SECRET_SOURCE,
    )


async def ticket(app: AppConfig, kind: Any, token: str = TOKEN) -> Token:
    client = WeChatClient(api_base=API_BASE, clock=FixedClock(), transport=mockable())
    try:
        return await client.fetch_ticket(app, kind, token)
    finally:
        await client.aclose()


class TestWeComToken:
    """GET /cgi-bin/gettoken on the WeCom base, and WeCom's own errcodes."""

    @pytest.mark.anyio
    async def test_gettoken(self, httpx_mock: HTTPXMock) -> None:
        """corpid and corpsecret go in the query; the reply's errcode 0 is a success."""
        httpx_mock.add_response(
            method="GET",
            url=f"{QY_BASE}/cgi-bin/gettoken",
            match_params={"corpid": CORPID, "corpsecret": SECRET},
            json={"errcode": 0, "errmsg": "ok", "access_token": TOKEN, "expires_in": 7200},
        )
        client = WeChatClient(api_base=API_BASE, clock=FixedClock(), transport=mockable())
        token = await client.fetch_token(make_wecom())
        await client.aclose()
        assert (token.access_token, token.expires_in) == (TOKEN, 7200)

    @pytest.mark.anyio
    @pytest.mark.parametrize(
        ("errcode", "kind", "words"),
        [
            (40013, FatalConfigError, "CorpID"),
            (40001, FatalConfigError, "WeCom admin console"),
            (40091, FatalConfigError, "WeCom admin console"),
            (45009, DailyQuotaError, "WeCom limits"),
        ],
    )
    async def test_errcodes(
        self, httpx_mock: HTTPXMock, errcode: int, kind: type[FetchError], words: str
    ) -> None:
        """WeCom's errcodes map to their own meaning and a WeCom-specific hint."""
        httpx_mock.add_response(
            url=f"{QY_BASE}/cgi-bin/gettoken?corpid={CORPID}&corpsecret={SECRET}",
            json={"errcode": errcode, "errmsg": "x"},
        )
        client = WeChatClient(api_base=API_BASE, clock=FixedClock(), transport=mockable())
        with pytest.raises(kind) as info:
            await client.fetch_token(make_wecom())
        await client.aclose()
        assert words in info.value.hint
        assert SECRET not in str(info.value)


class TestTickets:
    """getticket (official), get_jsapi_ticket and ticket/get (WeCom)."""

    @pytest.mark.anyio
    @pytest.mark.parametrize(
        ("wecom", "kind", "path", "params"),
        [
            (False, "jsapi", "/cgi-bin/ticket/getticket", {"type": "jsapi"}),
            (False, "wx_card", "/cgi-bin/ticket/getticket", {"type": "wx_card"}),
            (True, "jsapi", "/cgi-bin/get_jsapi_ticket", {}),
            (True, "agent_config", "/cgi-bin/ticket/get", {"type": "agent_config"}),
        ],
    )
    async def test_endpoints(
        self, httpx_mock: HTTPXMock, wecom: bool, kind: str, path: str, params: dict[str, str]
    ) -> None:
        """Each ticket has its endpoint; the token goes in the query; errcode 0 is success."""
        app = make_wecom() if wecom else make_app()
        base = QY_BASE if wecom else API_BASE
        httpx_mock.add_response(
            method="GET",
            url=f"{base}{path}",
            match_params={"access_token": TOKEN, **params},
            json={"errcode": 0, "errmsg": "ok", "ticket": "TICKET-1", "expires_in": 7200},
        )
        got = await ticket(app, kind)
        assert (got.access_token, got.expires_in, got.fetched_at) == ("TICKET-1", 7200, NOW)

    @pytest.mark.anyio
    @pytest.mark.parametrize("errcode", [40001, 40014, 42001])
    async def test_token_rejected(self, httpx_mock: HTTPXMock, errcode: int) -> None:
        """40001/40014/42001 mean the token was rejected: TokenRejectedError, token not shown."""
        httpx_mock.add_response(json={"errcode": errcode, "errmsg": f"bad {TOKEN}"})
        with pytest.raises(TokenRejectedError) as info:
            await ticket(make_app(), "jsapi")
        assert info.value.errcode == errcode
        assert TOKEN not in str(info.value)

    @pytest.mark.anyio
    @pytest.mark.parametrize(
        "body",
        [
            {"errcode": 0, "errmsg": "ok", "expires_in": 7200},
            {"errcode": 0, "ticket": "", "expires_in": 7200},
            {"errcode": 0, "ticket": "T", "expires_in": 0},
            {"errcode": 0, "ticket": ["T"], "expires_in": 7200},
        ],
    )
    async def test_malformed(self, httpx_mock: HTTPXMock, body: dict[str, Any]) -> None:
        """A reply without a usable ticket is malformed, never written."""
        httpx_mock.add_response(json=body)
        with pytest.raises(MalformedResponse):
            await ticket(make_app(), "jsapi")

    @pytest.mark.anyio
    async def test_token_never_in_transport_errors(self, httpx_mock: HTTPXMock) -> None:
        """A connection error quoting the URL does not carry the token into the message."""
        httpx_mock.add_exception(httpx.ConnectError(f"failed ?access_token={TOKEN}&type=jsapi"))
        with pytest.raises(TransientError) as info:
            await ticket(make_app(), "jsapi")
        assert TOKEN not in str(info.value)
