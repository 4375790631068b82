"""The WeChat API proxy against the real daemon and emulator, over loopback HTTP."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import pytest
from conftest import DaemonFactory, EmulatorFactory
from harness import DaemonProcess, EmulatorProcess, TestApp, wait_for

from wxtokend.proxy.route import PLACEHOLDER_TOKEN
from wxtokend.redact import fingerprint

pytestmark = pytest.mark.e2e

SHOP = TestApp(appid="wx00000000000000p1", secret="p" * 32, name="shop", grant="classic")
CORP = TestApp(appid="wwcorp00000000p2", secret="q" * 43, name="desk", kind="wecom")
MB = 1024 * 1024


def start(
    emulator: EmulatorFactory, daemon: DaemonFactory, apps: list[TestApp], **proxy: Any
) -> tuple[EmulatorProcess, DaemonProcess, str]:
    emu = emulator(apps, lifetime=600)
    d = daemon(apps, emu.base_url, api_proxy={"listen": "127.0.0.1:0", **proxy}).start()
    d.wait_for_tokens([a.name for a in apps])
    return emu, d, d.proxy_url()


def revoke(emu: EmulatorProcess, app: TestApp) -> None:
    grant = "wecom" if app.kind == "wecom" else app.grant
    emu.post("/emulator/revoke", {"appid": app.appid, "grant": grant})


def peak_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")  # pragma: no cover


class TestCalls:
    """Consumers call WeChat through the proxy without any token."""

    def test_wechatpy_with_api_base_url(
        self, emulator: EmulatorFactory, daemon: DaemonFactory
    ) -> None:
        """wechatpy, API_BASE_URL at the proxy and a placeholder token, makes real calls."""
        from wechatpy import WeChatClient

        emu, d, proxy = start(emulator, daemon, [SHOP])
        client = WeChatClient(SHOP.appid, "not-needed", access_token="via-wxtokend")
        client.API_BASE_URL = f"{proxy}/shop/cgi-bin/"
        sent = client.message.send_text("openid-1", "你好")
        assert sent["errcode"] == 0
        assert sent["json"] == {
            "touser": "openid-1",
            "msgtype": "text",
            "text": {"content": "你好"},
        }
        user = client.user.get("openid-1")
        assert user["path"] == "/cgi-bin/user/info"
        assert user["query"]["openid"] == "openid-1"
        revoke(emu, SHOP)  # WeChat kills the token: wechatpy never hears of it
        assert client.user.get("openid-1")["errcode"] == 0
        assert d.token("shop") is not None
        assert emu.check(d.token("shop") or "") == 0

    def test_token_endpoints_answered_by_the_proxy(
        self, emulator: EmulatorFactory, daemon: DaemonFactory
    ) -> None:
        """SDKs that fetch a token through their API host get a placeholder: no upstream call."""
        emu, _, proxy = start(emulator, daemon, [SHOP, CORP])
        before = emu.stats()
        got = httpx.get(
            f"{proxy}/shop/cgi-bin/token",
            params={"grant_type": "client_credential", "appid": SHOP.appid, "secret": "x"},
        ).json()
        assert got == {"access_token": PLACEHOLDER_TOKEN, "expires_in": 7200}
        stable = httpx.post(f"{proxy}/shop/cgi-bin/stable_token", json={}).json()
        assert stable["access_token"] == PLACEHOLDER_TOKEN
        corp = httpx.get(f"{proxy}/desk/cgi-bin/gettoken", params={"corpid": CORP.appid}).json()
        assert corp["errcode"] == 0
        assert corp["access_token"] == PLACEHOLDER_TOKEN
        after = emu.stats()
        assert after[SHOP.appid]["token"] == before[SHOP.appid]["token"]
        assert after[CORP.appid]["gettoken"] == before[CORP.appid]["gettoken"]

    def test_wecom_app(self, emulator: EmulatorFactory, daemon: DaemonFactory) -> None:
        """A WeCom application's calls get its corp token, and recover a revoked one."""
        emu, d, proxy = start(emulator, daemon, [CORP])
        assert httpx.get(f"{proxy}/desk/cgi-bin/user/get?userid=u1").json()["errcode"] == 0
        stale = d.token("desk")
        revoke(emu, CORP)
        assert httpx.get(f"{proxy}/desk/cgi-bin/user/get?userid=u1").json()["errcode"] == 0
        assert d.token("desk") != stale

    def test_other_errcodes_never_replayed(
        self, emulator: EmulatorFactory, daemon: DaemonFactory
    ) -> None:
        """An API's own error (45009, 40003, ...) is WeChat's answer, sent once."""
        emu, _, proxy = start(emulator, daemon, [SHOP])
        for code in (45009, 40003, -1):
            before = emu.calls(SHOP.appid, "api_calls")
            got = httpx.post(f"{proxy}/shop/cgi-bin/message/custom/send?emulator_errcode={code}")
            assert got.json()["errcode"] == code
            assert emu.calls(SHOP.appid, "api_calls") == before + 1


class TestUserTokens:
    """sns calls carry the user's token or the secret: passed as sent, never recovered."""

    def test_sns_passes_the_clients_token(
        self, emulator: EmulatorFactory, daemon: DaemonFactory
    ) -> None:
        """A user's (here: unknown) token comes back rejected as WeChat said, and the app's
        token is not refreshed for it."""
        emu, d, proxy = start(emulator, daemon, [SHOP])
        stale = d.token("shop")
        before = emu.calls(SHOP.appid, "token")
        got = httpx.get(
            f"{proxy}/shop/sns/userinfo", params={"access_token": "USER-TOKEN", "openid": "o"}
        ).json()
        assert got["errcode"] == 40001
        got = httpx.get(f"{proxy}/shop/sns/userinfo", params={"access_token": stale}).json()
        assert got["errcode"] == 0  # the token the client sent is the one WeChat saw
        assert emu.calls(SHOP.appid, "token") == before
        assert d.token("shop") == stale
        metrics = httpx.get(f"{d.admin_url()}/metrics").text
        assert "wxtokend_proxy_recoveries_total{" not in metrics


class TestExpectContinue:
    """Clients that wait for 100 Continue before sending a body get it."""

    def test_100_continue(self, emulator: EmulatorFactory, daemon: DaemonFactory) -> None:
        """The 100 comes before the body is sent; an unknown expectation is 417."""
        _, _, proxy = start(emulator, daemon, [SHOP])
        body = b'{"touser": "o"}'
        head = (
            "POST /shop/cgi-bin/message/custom/send HTTP/1.1\r\nHost: x\r\n"
            f"Content-Length: {len(body)}\r\nExpect: 100-continue\r\n\r\n"
        )
        interim, status, answer = asyncio.run(_expect_continue(proxy, head, body))
        assert interim.startswith(b"HTTP/1.1 100")
        assert status == 200
        assert json.loads(answer)["json"] == {"touser": "o"}
        status, _ = asyncio.run(
            _raw(proxy, head.replace("100-continue", "something-else") + body.decode())
        )
        assert status == 417


class TestRecovery:
    """A token WeChat rejects is replaced once for everyone, and the calls replayed."""

    @pytest.mark.parametrize("grant", ["classic", "stable"])
    def test_500_concurrent_calls_one_fetch(
        self, emulator: EmulatorFactory, daemon: DaemonFactory, grant: str
    ) -> None:
        """Revoked mid-run: 500 concurrent calls, one upstream fetch, no client sees 40001."""
        app = TestApp(appid=SHOP.appid, secret=SHOP.secret, name="shop", grant=grant)
        emu, d, proxy = start(emulator, daemon, [app])
        stale = d.token("shop")
        revoke(emu, app)
        endpoint = "token" if grant == "classic" else "stable_token"
        before = emu.calls(app.appid, endpoint)
        answers = asyncio.run(_concurrent(proxy, "/shop/cgi-bin/message/custom/send", 500))
        assert [a for a in answers if a.get("errcode") != 0] == []
        assert emu.calls(app.appid, endpoint) - before == 1
        assert d.token("shop") != stale
        metrics = httpx.get(f"{d.admin_url()}/metrics").text
        assert 'wxtokend_proxy_recoveries_total{app="shop",result="replayed"}' in metrics

    def test_large_body_not_replayed(
        self, emulator: EmulatorFactory, daemon: DaemonFactory
    ) -> None:
        """A body over replay_body_limit streamed through: WeChat's 40001 comes back, once,
        the token is replaced all the same, and the next call succeeds."""
        emu, d, proxy = start(emulator, daemon, [SHOP], replay_body_limit=1024)
        stale = d.token("shop")
        revoke(emu, SHOP)
        body = json.dumps({"articles": "x" * 4096}).encode()
        first = httpx.post(f"{proxy}/shop/cgi-bin/material/add_news", content=body).json()
        assert first["errcode"] == 40001
        wait_for(lambda: d.token("shop") != stale, timeout=10, what="a new token")
        again = httpx.post(f"{proxy}/shop/cgi-bin/material/add_news", content=body).json()
        assert again["errcode"] == 0
        assert again["size"] == len(body)
        metrics = httpx.get(f"{d.admin_url()}/metrics").text
        assert 'wxtokend_proxy_recoveries_total{app="shop",result="not_replayable"}' in metrics


class TestStreaming:
    """Media uploads and downloads stream: the daemon never holds a whole body."""

    def test_10_mb_up_and_down_bounded_memory(
        self, emulator: EmulatorFactory, daemon: DaemonFactory
    ) -> None:
        """Three 10 MB uploads and downloads at once raise the daemon's peak RSS by less
        than one body."""
        _, d, proxy = start(emulator, daemon, [SHOP])
        asyncio.run(_transfers(proxy, size=256 * 1024, count=1))  # warm every code path
        before = peak_rss_kib(d.pid)
        uploads, downloads = asyncio.run(_transfers(proxy, size=10 * MB, count=3))
        grown_mib = (peak_rss_kib(d.pid) - before) / 1024
        for sent_sha, answer in uploads:
            assert answer["size"] == 10 * MB
            assert answer["sha256"] == sent_sha
        for header_sha, got_sha, size in downloads:
            assert size == 10 * MB
            assert got_sha == header_sha
        assert grown_mib < 10, f"peak RSS grew {grown_mib:.1f} MiB for 60 MB streamed"


class TestRefused:
    """Unknown names, escapes and smuggling attempts never reach WeChat."""

    def test_unknown_name_is_404_in_wechat_shape(
        self, emulator: EmulatorFactory, daemon: DaemonFactory
    ) -> None:
        """A name no app has: 404 with errcode and errmsg."""
        _, _, proxy = start(emulator, daemon, [SHOP])
        got = httpx.get(f"{proxy}/nobody/cgi-bin/user/info")
        assert got.status_code == 404
        assert got.json()["errcode"] == 40013
        assert "nobody" in got.json()["errmsg"]

    @pytest.mark.parametrize(
        "target",
        [
            "/shop/../emulator/stats",
            "/shop/cgi-bin/../../emulator/stats",
            "/shop/cgi-bin/%2e%2e/%2e%2e/emulator/stats",
            "/shop/cgi-bin/..%2f..%2femulator/stats",
            "/shop/emulator/stats",
            "http://127.0.0.1:1/shop/cgi-bin/user/info",
        ],
    )
    def test_path_escapes(
        self, emulator: EmulatorFactory, daemon: DaemonFactory, target: str
    ) -> None:
        """Nothing but the app's own API paths is reachable, however the path is spelt."""
        emu, _, proxy = start(emulator, daemon, [SHOP])
        before = emu.stats()
        status, body = asyncio.run(_raw(proxy, f"GET {target} HTTP/1.1\r\nHost: x\r\n\r\n"))
        assert status in (400, 404)
        assert json.loads(body)["errcode"] != 0
        assert emu.stats() == before

    def test_headers(self, emulator: EmulatorFactory, daemon: DaemonFactory) -> None:
        """Headers the client's Connection names, and proxy credentials, stay on the hop;
        a Host pointing elsewhere changes nothing; the client's own token is replaced."""
        _, _, proxy = start(emulator, daemon, [SHOP])
        got = httpx.get(
            f"{proxy}/shop/cgi-bin/user/info",
            params={"openid": "o", "access_token": "CLIENTS-OWN"},
            headers={
                "Host": "evil.example",
                "Connection": "keep-alive, X-Hop",
                "X-Hop": "secret",
                "X-Trace": "t1",
                "Proxy-Authorization": "Basic c2VjcmV0",
            },
        ).json()
        assert got["errcode"] == 0  # the emulator saw the app's token, not the client's
        assert got["headers"] == {"x-trace": "t1"}

    def test_methods_other_than_get_and_post(
        self, emulator: EmulatorFactory, daemon: DaemonFactory
    ) -> None:
        """TRACE (which would echo the token-bearing request line), PUT, HEAD: 405."""
        emu, _, proxy = start(emulator, daemon, [SHOP])
        before = emu.stats()
        for method in ("TRACE", "PUT", "DELETE", "HEAD", "OPTIONS"):
            status, _ = asyncio.run(
                _raw(
                    proxy,
                    f"{method} /shop/cgi-bin/user/info HTTP/1.1\r\nHost: x\r\n\r\n",
                    body=method != "HEAD",
                )
            )
            assert status == 405, method
        assert emu.stats() == before

    def test_fragment_cannot_swallow_the_token(
        self, emulator: EmulatorFactory, daemon: DaemonFactory
    ) -> None:
        """A raw '#' in the query is cut off, so the token is still sent."""
        _, _, proxy = start(emulator, daemon, [SHOP])
        status, body = asyncio.run(
            _raw(proxy, "GET /shop/cgi-bin/user/info?openid=o#x HTTP/1.1\r\nHost: x\r\n\r\n")
        )
        assert status == 200
        assert json.loads(body)["errcode"] == 0

    def test_request_smuggling(self, emulator: EmulatorFactory, daemon: DaemonFactory) -> None:
        """Content-Length with Transfer-Encoding, or a header with a bare CR: 400."""
        emu, _, proxy = start(emulator, daemon, [SHOP])
        before = emu.stats()
        for request in (
            "POST /shop/cgi-bin/x HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n"
            "Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            "GET /shop/cgi-bin/x HTTP/1.1\r\nHost: x\r\nX-A: a\rX-B: b\r\n\r\n",
        ):
            status, _ = asyncio.run(_raw(proxy, request))
            assert status == 400
        assert emu.stats() == before


class TestSecrecy:
    """The token never leaves through the proxy: not in logs, metrics or answers."""

    def test_no_token_in_logs_metrics_or_errors(
        self, emulator: EmulatorFactory, daemon: DaemonFactory
    ) -> None:
        """After calls, a recovery, refusals and an unreachable upstream."""
        emu, d, proxy = start(emulator, daemon, [SHOP])
        tokens = {d.token("shop") or ""}
        answers = [httpx.get(f"{proxy}/shop/cgi-bin/user/info?openid=o").text]
        revoke(emu, SHOP)
        answers.append(httpx.get(f"{proxy}/shop/cgi-bin/user/info?openid=o").text)
        tokens.add(d.token("shop") or "")
        answers.append(httpx.get(f"{proxy}/shop/sns/../x").text)
        answers.append(httpx.get(f"{proxy}/shop/cgi-bin/token").text)
        emu.close()  # WeChat unreachable: the error names the failure, not the URL
        unreachable = httpx.get(f"{proxy}/shop/cgi-bin/user/info?openid=o")
        assert unreachable.status_code == 502
        assert unreachable.json()["errcode"] == -1
        answers.append(unreachable.text)
        exposed = "\n".join([*answers, d.log_text(), httpx.get(f"{d.admin_url()}/metrics").text])
        for token in tokens:
            assert token
            assert token not in exposed
            assert fingerprint(token) not in "\n".join(answers)


async def _concurrent(base: str, path: str, n: int) -> list[dict[str, Any]]:
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def one(i: int) -> dict[str, Any]:
            async with session.post(f"{base}{path}", json={"touser": f"o{i}"}) as reply:
                return dict(await reply.json(content_type=None))

        return await asyncio.gather(*(one(i) for i in range(n)))


async def _transfers(
    base: str, *, size: int, count: int
) -> tuple[list[tuple[str, dict[str, Any]]], list[tuple[str, str, int]]]:
    async with aiohttp.ClientSession() as session:

        async def upload() -> tuple[str, dict[str, Any]]:
            digest = hashlib.sha256()

            async def chunks() -> AsyncIterator[bytes]:
                for _ in range(size // MB):
                    chunk = os.urandom(MB)
                    digest.update(chunk)
                    yield chunk
                rest = os.urandom(size % MB)
                digest.update(rest)
                yield rest

            url = f"{base}/shop/cgi-bin/media/upload?type=image"
            headers = {"Content-Length": str(size), "Content-Type": "application/octet-stream"}
            async with session.post(url, data=chunks(), headers=headers) as reply:
                return digest.hexdigest(), dict(await reply.json())

        async def download() -> tuple[str, str, int]:
            digest, got = hashlib.sha256(), 0
            url = f"{base}/shop/cgi-bin/media/get?media_id=m&size={size}"
            async with session.get(url) as reply:
                async for chunk in reply.content.iter_chunked(64 * 1024):
                    digest.update(chunk)
                    got += len(chunk)
                return reply.headers["X-Media-SHA256"], digest.hexdigest(), got

        ups = asyncio.gather(*(upload() for _ in range(count)))
        downs = asyncio.gather(*(download() for _ in range(count)))
        return list(await ups), list(await downs)


async def _expect_continue(base: str, head: str, body: bytes) -> tuple[bytes, int, bytes]:
    host, port = base.removeprefix("http://").rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(head.encode())
    await writer.drain()
    interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=5)
    writer.write(body)
    await writer.drain()
    status, answer = await _read_reply(reader)
    writer.close()
    return interim, status, answer


async def _raw(base: str, request: str, *, body: bool = True) -> tuple[int, bytes]:
    host, port = base.removeprefix("http://").rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(request.encode("latin-1"))
    await writer.drain()
    status, payload = await _read_reply(reader, body=body)
    writer.close()
    return status, payload


async def _read_reply(reader: asyncio.StreamReader, *, body: bool = True) -> tuple[int, bytes]:
    """One HTTP/1.1 answer's status and its Content-Length body (none if ``body`` is False)."""
    head = await reader.readuntil(b"\r\n\r\n")
    length = next(
        (
            int(x.split(b":")[1])
            for x in head.split(b"\r\n")
            if x.lower().startswith(b"content-length:")
        ),
        0,
    )
    payload = await reader.readexactly(length) if length and body else b""
    return int(head.split(b" ", 2)[1]), payload
